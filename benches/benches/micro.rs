//! Micro-benchmarks: LPM lookup at 1M routes, IPv4 forwarding of a burst, checksum updates.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use packet::ethernet::EthernetAddress;
use packet::{Buffer, HeapBuffer, Stage};
use router::fib::{Fib, FibSizes, NextHopKind};
use router::ipv4::{Ipv4Stage, PortInfo};
use router::qsbr::Qsbr;
use router_bench::{ipv4_workload, route_prefixes, Rng};
use std::net::Ipv4Addr;
use std::sync::Arc;

fn fib_with(n: usize) -> (Fib, Vec<(Ipv4Addr, u8)>) {
    let mut fib = Fib::new(
        FibSizes {
            tbl8_groups: 131_072,
            max_routes: 2_000_000,
            max_next_hops: 1024,
        },
        Arc::new(Qsbr::new(0)),
    );
    let pre = route_prefixes(n, 42);
    for (i, (p, l)) in pre.iter().enumerate() {
        let nh = fib
            .next_hop_ref(
                NextHopKind::Gateway,
                1,
                Ipv4Addr::new(10, 0, 2, 2 + (i % 8) as u8),
            )
            .unwrap();
        fib.add(*p, *l, nh).unwrap();
    }
    for g in 0..8u8 {
        fib.resolve(
            1,
            Ipv4Addr::new(10, 0, 2, 2 + g),
            Some(EthernetAddress([2, 0, 0, 0, 9, g])),
        );
    }
    (fib, pre)
}

fn lpm(c: &mut Criterion) {
    let mut g = c.benchmark_group("lpm");
    for n in [1_000usize, 100_000, 1_000_000] {
        let (fib, pre) = fib_with(n);
        let view = fib.view();
        let mut rng = Rng::new(9);
        let addrs: Vec<u32> = (0..4096)
            .map(|_| {
                let (p, l) = pre[rng.below(pre.len() as u64) as usize];
                u32::from(p) | (rng.next_u64() as u32 & !packet::ipv4::mask(l))
            })
            .collect();
        g.throughput(Throughput::Elements(addrs.len() as u64));
        g.bench_function(format!("lookup/{n}-routes"), |b| {
            b.iter(|| {
                let mut acc = 0u32;
                for a in &addrs {
                    acc = acc.wrapping_add(view.lpm.lookup(black_box(*a)).unwrap_or(0));
                }
                acc
            })
        });
    }
    g.finish();
}

fn ipv4_forward(c: &mut Criterion) {
    let (fib, pre) = fib_with(100_000);
    let mac = EthernetAddress([2, 0, 0, 0, 0, 1]);
    let ports: Arc<[PortInfo]> = vec![
        PortInfo {
            name: "in".into(),
            mac,
            mtu: 1500,
            addrs: vec![("10.0.1.1".parse().unwrap(), 24)],
            forward_directed_broadcast: false,
        },
        PortInfo {
            name: "out".into(),
            mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            mtu: 1500,
            addrs: vec![("10.0.2.1".parse().unwrap(), 24)],
            forward_directed_broadcast: false,
        },
    ]
    .into();
    let mut stage = Ipv4Stage::new(fib.view(), ports);
    let frames = ipv4_workload(&pre, 32, mac, 3);
    let mut burst: Vec<HeapBuffer> = frames.iter().map(|f| HeapBuffer::from_bytes(f)).collect();
    let mut verdicts = [packet::Verdict::Next; 32];
    let mut g = c.benchmark_group("ipv4");
    g.throughput(Throughput::Elements(32));
    // Each round restores the 60 bytes the stage rewrote (TTL, checksum, MACs), as fresh RX would.
    g.bench_function("forward-burst-32", |b| {
        b.iter(|| {
            for (buf, f) in burst.iter_mut().zip(&frames) {
                buf.data_mut().copy_from_slice(f);
            }
            verdicts.fill(packet::Verdict::Next); // undecided, as the engine hands them over
            stage.process_burst(black_box(&mut burst[..]), &mut verdicts);
            black_box(&verdicts);
        })
    });
    g.bench_function("restore-only-burst-32", |b| {
        b.iter(|| {
            for (buf, f) in burst.iter_mut().zip(&frames) {
                buf.data_mut().copy_from_slice(f);
            }
            black_box(&mut burst);
        })
    });
    g.finish();
}

fn checksum(c: &mut Criterion) {
    let mut hdr = [
        0x45u8, 0, 0, 50, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 1, 2, 20, 1, 1, 1,
    ];
    let ck = packet::checksum::checksum(&hdr);
    hdr[10..12].copy_from_slice(&ck.to_be_bytes());
    let mut g = c.benchmark_group("checksum");
    g.bench_function("ttl-incremental-rfc1624", |b| {
        b.iter(|| {
            let mut ip = packet::ipv4::Ipv4Packet::new_unchecked(black_box(hdr));
            ip.decrement_ttl();
            ip.checksum()
        })
    });
    g.bench_function("ttl-full-recompute", |b| {
        b.iter(|| {
            let mut ip = packet::ipv4::Ipv4Packet::new_unchecked(black_box(hdr));
            ip.set_ttl(ip.ttl() - 1);
            ip.fill_checksum();
            ip.checksum()
        })
    });
    let data = vec![0xa5u8; 1460];
    g.throughput(Throughput::Bytes(1460));
    g.bench_function("full-1460-bytes", |b| {
        b.iter(|| packet::checksum::checksum(black_box(&data)))
    });
    g.finish();
}

criterion_group!(benches, lpm, ipv4_forward, checksum);
criterion_main!(benches);
