//! NetChain: the query codec round trip, and any frame through a three-node chain in one
//! appliance (with a failover rule): no panic, and what the stage passes on is a well-formed
//! IPv4/UDP datagram whose checksums are valid — the UDP one when it was on the way in (the
//! stage updates it, RFC 1624, rather than recomputing it).
#![no_main]

use chain_switch::node::{role, FailoverRule};
use chain_switch::stage::{ChainShared, ChainStage};
use chain_switch::wire::{self, key_from_u128, QueryRepr};
use libfuzzer_sys::fuzz_target;
use packet::{Buffer, HeapBuffer, Stage, Verdict};
use std::net::Ipv4Addr;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    if data.len() > 42 {
        if let Ok(q) = QueryRepr::parse(&data[42..], 16) {
            let back = QueryRepr::parse(&q.emit(!q.list.is_empty() || q.sc != 1), 16);
            assert!(back.is_ok());
        }
    }
    let addrs: Vec<_> = (1..=3).map(|n| Ipv4Addr::new(10, 0, 100, n)).collect();
    let shared = ChainShared::new(&addrs, 16, 16);
    for (i, n) in shared.nodes.iter().enumerate() {
        let bits = match i {
            0 => role::HEAD,
            2 => role::TAIL,
            _ => 0,
        };
        n.roles.set(0, role::MEMBER | bits, 0);
        n.store.insert(&key_from_u128(2018)).unwrap();
    }
    shared
        .failover
        .replace(&[FailoverRule { dst: Ipv4Addr::new(10, 0, 100, 9), next: Ipv4Addr::UNSPECIFIED, vgroup: None, to: Ipv4Addr::UNSPECIFIED }])
        .unwrap();
    let mut st = ChainStage::new(Arc::new(shared));
    let mut b = HeapBuffer::from_bytes(data);
    let udp_ok = (|| {
        let ipb = data.get(14..)?;
        let ip = packet::ipv4::Ipv4Packet::new_checked(ipb).ok()?;
        let total = usize::from(ip.total_len()).min(ipb.len());
        let ip = packet::ipv4::Ipv4Packet::new_checked(&ipb[..total]).ok()?;
        let u = packet::udp::UdpPacket::new_checked(ip.payload()).ok()?;
        Some(usize::from(u.len()) == ip.payload().len() && u.verify_checksum(ip.src_addr(), ip.dst_addr()))
    })()
    .unwrap_or(false);
    let before = st.counters;
    if st.process(&mut b) == Verdict::Next && st.counters.replies + st.counters.chained + st.counters.failovers
        > before.replies + before.chained + before.failovers
    {
        let d = b.data();
        let ip = packet::ipv4::Ipv4Packet::new_checked(&d[14..]).unwrap();
        assert!(ip.verify_checksum());
        let udp = packet::udp::UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(!udp_ok || udp.verify_checksum(ip.src_addr(), ip.dst_addr()));
        assert!(wire::parse(udp.payload(), 16).is_ok());
    }
});
