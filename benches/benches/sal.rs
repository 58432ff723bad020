//! The service table at 100K prefixes: this router's lookup against the original's one-bit
//! trie, on the same prefixes and serviceIDs; and the whole stage on the original's SYN.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use packet::{Buffer, HeapBuffer, Stage};
use router_bench::{id_under, service_prefixes, Rng};
use sal_forward::stage::{SalShared, SalStage};
use sal_forward::table::{Action, BitTrie, Mode, Rules, ServiceTable, Target};
use std::net::Ipv4Addr;
use std::sync::Arc;

fn bench(c: &mut Criterion) {
    let n = 100_000;
    let prefixes = service_prefixes(n, 7);
    let table = Arc::new(ServiceTable::new(n + 16));
    let mut rules = Rules::new(table.clone());
    let mut trie = BitTrie::new();
    for (i, p) in prefixes.iter().enumerate() {
        let t = Target {
            action: Action::Forward,
            addr: Ipv4Addr::from(i as u32),
            weight: 1,
        };
        rules.add(*p, 0, Mode::Anycast, &[t]).unwrap();
        trie.insert(p, i as u32);
    }
    let mut rng = Rng::new(11);
    let ids: Vec<_> = (0..4096)
        .map(|_| id_under(&prefixes[rng.below(n as u64) as usize], &mut rng))
        .collect();
    // Both shapes find the same prefix for every id.
    for id in &ids {
        assert_eq!(
            table.lookup(id).map(|m| m.prefix_len),
            trie.lookup(id).map(|(l, _)| l)
        );
    }
    let mut g = c.benchmark_group("service-table-100k");
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_with_input(
        BenchmarkId::new("lookup", "hash-by-length"),
        &ids,
        |b, ids| {
            b.iter(|| {
                for id in ids {
                    black_box(table.lookup(black_box(id)));
                }
            })
        },
    );
    g.bench_with_input(
        BenchmarkId::new("lookup", "bit-trie (original)"),
        &ids,
        |b, ids| {
            b.iter(|| {
                for id in ids {
                    black_box(trie.lookup(black_box(id)));
                }
            })
        },
    );
    g.finish();

    // The stage on the original client's SYN (FORWARD rewrite), with the 100K rules present.
    let syn = packet::pcap::read_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sal-forward/tests/fixtures/serval-sr-client-side.pcap"
    ))
    .unwrap()[0]
        .data
        .clone();
    rules
        .add(
            "16385".parse().unwrap(),
            0,
            Mode::Anycast,
            &[Target {
                action: Action::Forward,
                addr: Ipv4Addr::new(10, 77, 2, 2),
                weight: 1,
            }],
        )
        .unwrap();
    let mut stage = SalStage::new(
        Arc::new(SalShared::new(table, vec![Ipv4Addr::new(10, 77, 1, 1)], 1)),
        0,
    );
    let mut g = c.benchmark_group("sal-stage");
    g.throughput(Throughput::Elements(1));
    g.bench_function("syn-forward", |b| {
        let mut buf = HeapBuffer::with_capacity(256, 64);
        b.iter(|| {
            buf.trim(buf.len()).unwrap();
            buf.append(syn.len()).unwrap();
            buf.data_mut().copy_from_slice(&syn);
            black_box(stage.process(&mut buf));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
