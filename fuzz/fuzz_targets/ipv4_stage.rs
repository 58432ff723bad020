//! Arbitrary frames through the IPv4 router stage (single packets and bursts).
#![no_main]
use libfuzzer_sys::fuzz_target;
use packet::ethernet::EthernetAddress;
use packet::{Buffer, HeapBuffer, Stage, Verdict};
use router::fib::{Fib, FibSizes, NextHopKind};
use router::ipv4::{Ipv4Stage, PortInfo};
use router::qsbr::Qsbr;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, OnceLock};

fn stage() -> &'static Mutex<(Fib, Ipv4Stage)> {
    static S: OnceLock<Mutex<(Fib, Ipv4Stage)>> = OnceLock::new();
    S.get_or_init(|| {
        let mut fib = Fib::new(
            FibSizes {
                tbl8_groups: 16,
                max_routes: 100,
                max_next_hops: 64,
            },
            Arc::new(Qsbr::new(0)),
        );
        let gw = fib
            .next_hop_ref(NextHopKind::Gateway, 1, Ipv4Addr::new(10, 0, 2, 2))
            .unwrap();
        fib.add(Ipv4Addr::UNSPECIFIED, 0, gw).unwrap();
        fib.resolve(
            1,
            Ipv4Addr::new(10, 0, 2, 2),
            Some(EthernetAddress([2, 0, 0, 0, 9, 9])),
        );
        let local = fib
            .next_hop_ref(NextHopKind::Local, 0, Ipv4Addr::UNSPECIFIED)
            .unwrap();
        fib.add(Ipv4Addr::new(10, 0, 1, 1), 32, local).unwrap();
        let ports: Arc<[PortInfo]> = vec![
            PortInfo {
                name: "a".into(),
                mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
                mtu: 1500,
                addrs: vec![(Ipv4Addr::new(10, 0, 1, 1), 24)],
            },
            PortInfo {
                name: "b".into(),
                mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
                mtu: 576,
                addrs: vec![(Ipv4Addr::new(10, 0, 2, 1), 24)],
            },
        ]
        .into();
        let s = Ipv4Stage::new(fib.view(), ports);
        Mutex::new((fib, s))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut g = stage().lock().unwrap();
    let s = &mut g.1;
    let mut one = HeapBuffer::from_bytes(data);
    let v1 = s.process(&mut one);
    // The same bytes as a burst, split at arbitrary points, must give the same verdicts.
    let mut burst: Vec<HeapBuffer> = data
        .chunks(64.max(data.len() / 3 + 1))
        .map(HeapBuffer::from_bytes)
        .collect();
    let mut v = [Verdict::Next; 8];
    let n = burst.len().min(8);
    s.process_burst(&mut burst[..n], &mut v);
    if burst.len() == 1 {
        assert_eq!(v1, v[0]);
        assert_eq!(one.data(), burst[0].data());
    }
});
