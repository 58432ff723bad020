//! The codec and the stage against real bytes of the original Serval stack (copies of
//! `shared/reference/captures/serval-*.pcap` in `tests/fixtures`).

use packet::ipv4::Ipv4Packet;
use packet::DropReason;
use packet::{Buffer, HeapBuffer, Stage, Verdict};
use sal_forward::id::{Prefix, ServiceId};
use sal_forward::stage::{SalDrop, SalShared, SalStage};
use sal_forward::table::{Action, Mode, Rules, ServiceTable, Target};
use sal_forward::wire::{self, flags, SalRepr};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

fn capture(name: &str) -> Vec<Vec<u8>> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    packet::pcap::read_file(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .into_iter()
        .map(|r| r.data)
        .collect()
}

/// The SAL header of a frame (IPv4 protocol 144).
fn sal(frame: &[u8]) -> Option<&[u8]> {
    let ip = Ipv4Packet::new_checked(&frame[14..]).ok()?;
    (ip.protocol() == wire::PROTOCOL)
        .then(|| &frame[14 + usize::from(ip.header_len())..14 + usize::from(ip.total_len())])
}

/// Every Serval packet of every capture parses, verifies, and is emitted again byte for byte.
#[test]
fn every_sal_header_roundtrips() {
    let mut n = 0;
    let (mut syn, mut source, mut rsyn) = (0, 0, 0);
    for name in [
        "serval-sr-client-side.pcap",
        "serval-sr-server-side.pcap",
        "serval-migration-rsyn.pcap",
    ] {
        for f in capture(name) {
            let Some(b) = sal(&f) else { continue };
            let (r, len) = SalRepr::parse(b).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let mut out = vec![0u8; len];
            assert_eq!(r.emit(&mut out).unwrap(), len);
            assert_eq!(out, b[..len], "{name}: re-emitted header differs");
            let flags = r.control.map_or(0, |c| c.flags);
            syn += usize::from(flags & flags::SYN != 0 && r.service.is_some());
            source += usize::from(!r.source.is_empty());
            rsyn += usize::from(flags & flags::RSYN != 0);
            n += 1;
        }
    }
    eprintln!("{n} SAL headers ({syn} SYNs with SERVICE, {source} with SOURCE, {rsyn} RSYN)");
    assert!(n > 40 && syn >= 1 && source >= 2 && rsyn >= 1);
}

#[test]
fn the_syn_as_the_original_sent_it() {
    let f = &capture("serval-sr-client-side.pcap")[0];
    let b = sal(f).unwrap();
    let (r, len) = SalRepr::parse(b).unwrap();
    assert_eq!(len, 68);
    assert_eq!(r.service, Some(ServiceId::from_u32(16385)));
    assert_eq!(r.control.unwrap().flags, flags::SYN);
    assert_eq!((r.src_flow, r.dst_flow, r.protocol), (8, 0, 6));
    assert!(r.source.is_empty());
}

fn stage_with(to: Ipv4Addr, router: Ipv4Addr) -> (Rules, SalStage) {
    let table = Arc::new(ServiceTable::new(64));
    let mut rules = Rules::new(table.clone());
    rules
        .add(
            "16385".parse::<Prefix>().unwrap(),
            0,
            Mode::Anycast,
            &[Target {
                action: Action::Forward,
                addr: to,
                weight: 1,
            }],
        )
        .unwrap();
    let stage = SalStage::new(Arc::new(SalShared::new(table, vec![router], 1)), 0);
    (rules, stage)
}

/// Packet 1 of the client-side capture through the stage (FORWARD to 10.77.2.2), then the TTL
/// decrement routing does, gives packet 1 of the server-side capture from the IP header on.
#[test]
fn golden_forward() {
    let client = capture("serval-sr-client-side.pcap");
    let server = capture("serval-sr-server-side.pcap");
    let (_rules, mut stage) = stage_with(Ipv4Addr::new(10, 77, 2, 2), Ipv4Addr::new(10, 77, 1, 1));
    let mut b = HeapBuffer::from_bytes(&client[0]);
    assert_eq!(stage.process(&mut b), Verdict::Next);
    let mut out = b.data().to_vec();
    Ipv4Packet::new_unchecked(&mut out[14..]).decrement_ttl();
    assert_eq!(out[14..], server[0][14..], "from the IP header on");
    assert_eq!(stage.counters.forwarded, 1);
    assert_eq!(stage.hits().get(0), 1);
}

/// The SYN-ACK and the data after it are plain IP to the stage (and not even addressed to
/// the router); a SYN whose SOURCE already lists the router is a loop.
#[test]
fn after_the_handshake_and_loops() {
    let client = capture("serval-sr-client-side.pcap");
    let server = capture("serval-sr-server-side.pcap");
    let router = Ipv4Addr::new(10, 77, 1, 1);
    let (_rules, mut stage) = stage_with(Ipv4Addr::new(10, 77, 2, 2), router);
    for f in client.iter().skip(1) {
        let mut b = HeapBuffer::from_bytes(f);
        assert_eq!(stage.process(&mut b), Verdict::Next);
        assert_eq!(b.data(), &f[..], "untouched");
    }
    // The forwarded SYN sent back at the router (as if routed in a circle).
    let mut looped = server[0].clone();
    Ipv4Packet::new_unchecked(&mut looped[14..]).rewrite_dst(router);
    let mut b = HeapBuffer::from_bytes(&looped);
    assert_eq!(stage.process(&mut b), SalDrop::Loop.drop());
    // A bad SAL checksum is dropped.
    let mut bad = client[0].clone();
    bad[14 + 20 + 40] ^= 1;
    let mut b = HeapBuffer::from_bytes(&bad);
    assert_eq!(stage.process(&mut b), SalDrop::BadChecksum.drop());
}

/// A second service router on the path adds its address to the SOURCE extension the first
/// one appended; every checksum still verifies.
#[test]
fn a_second_router_extends_source() {
    let server = capture("serval-sr-server-side.pcap");
    let second = Ipv4Addr::new(10, 77, 2, 1);
    let to = Ipv4Addr::new(10, 77, 3, 3);
    let (_rules, mut stage) = stage_with(to, second);
    // The first router's output, addressed to the second router instead of the instance.
    let mut f = server[0].clone();
    Ipv4Packet::new_unchecked(&mut f[14..]).rewrite_dst(second);
    // (the TCP checksum covers the destination too: SAL of 80 bytes, checksum at 16)
    let at = 34 + 80 + 16;
    let old = u16::from_be_bytes([f[at], f[at + 1]]);
    let new = packet::checksum::update32(
        old,
        u32::from(Ipv4Addr::new(10, 77, 2, 2)),
        u32::from(second),
    );
    f[at..at + 2].copy_from_slice(&new.to_be_bytes());
    let mut b = HeapBuffer::from_bytes(&f);
    assert_eq!(stage.process(&mut b), Verdict::Next);
    let out = b.data();
    let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(
        (ip.dst_addr(), usize::from(ip.total_len())),
        (to, f.len() - 14 + 4)
    );
    let body = &out[34..];
    let (r, len) = SalRepr::parse(body).expect("SAL checksum verifies");
    assert_eq!(
        r.source.as_slice(),
        [
            Ipv4Addr::new(10, 77, 1, 2),
            Ipv4Addr::new(10, 77, 1, 1),
            second
        ]
    );
    let tcp = &body[len..];
    assert_eq!(
        packet::checksum::transport_sum(ip.src_addr().octets(), to.octets(), 6, tcp),
        0xffff,
        "TCP checksum verifies"
    );
}
