//! The NFS handle rewrite per message, on real bytes (GETATTR/READ calls and LOOKUP replies of
//! the libnfs capture rebuilt the way the rewrite sees them); next to it, what the border adds:
//! the full decode of a call's arguments alone, and the export policy (flavor, mount table,
//! the export's networks, root squash) on top of the rewrite.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use nfs_rewrite::admission::{Admission, Limits as AdmissionLimits};
use nfs_rewrite::datapath::{NfsShared, Server};
use nfs_rewrite::policy::{self, MountedSet, Policy, Squash};
use nfs_rewrite::rewrite::{
    devirtualize_call, virtualize_reply, CallVerdict, Context, Limits, ReplyVerdict,
};
use nfs_rewrite::tables::HandleTable;
use nfs_rewrite::vfh::{HandleKey, MacMemo, VirtualHandle};
use nfs_rewrite::wire::nfs3;
use nfs_rewrite::wire::nfs3::Proc;
use nfs_rewrite::wire::{rpc, Field};
use packet::{Buffer, HeapBuffer};
use std::net::Ipv4Addr;

fn bench(c: &mut Criterion) {
    let key = HandleKey::new(1, 2);
    let handles = HandleTable::new(1 << 16);
    let mch = key.mount_checksum(1, b"/export");
    // 50k handles in the table, as a busy router would hold.
    for i in 0..50_000u64 {
        let pfh = i.to_be_bytes().repeat(3);
        let v = VirtualHandle::for_object(&key, 1, mch, 9, i, &pfh);
        handles.insert(v.hid, &pfh);
    }
    // A worker's memo, as the stage has one.
    let memo = MacMemo::new(1024);
    let ctx = Context {
        key: &key,
        memo: &memo,
        handles: &handles,
        virtual_fsid: 7,
        limits: Limits::for_mtu(1500),
    };
    let v = VirtualHandle::for_object(&key, 1, mch, 9, 4242, &4242u64.to_be_bytes().repeat(3));
    let mut call = rpc::Writer::new();
    call.call(1, rpc::program::NFS, 3, Proc::Read as u32)
        .opaque(&v.encode(&key))
        .u64(0)
        .u32(4096);
    let call = call.buf;
    let mut reply = rpc::Writer::new();
    let mut attrs = [0u8; 84];
    attrs[44..52].copy_from_slice(&9u64.to_be_bytes());
    attrs[52..60].copy_from_slice(&4243u64.to_be_bytes());
    reply
        .accepted_reply(1, 0)
        .u32(0)
        .opaque(&[3; 28])
        .bool(true)
        .fixed(&attrs)
        .bool(true)
        .fixed(&attrs);
    let reply = reply.buf;

    let mut g = c.benchmark_group("nfs");
    g.throughput(Throughput::Elements(1));
    // With the worker's memo warm (a client repeating one handle) and without one (every MAC
    // computed: a handle seen for the first time).
    let cold = MacMemo::default();
    for (name, memo) in [("", &memo), ("-no-memo", &cold)] {
        let ctx = Context { memo, ..ctx };
        // Each iteration starts from a fresh 2 KiB heap buffer (included in the time).
        g.bench_function(format!("call-read-vfh-to-pfh{name}"), |b| {
            b.iter(|| {
                let mut buf = HeapBuffer::from_bytes(&call);
                let r = devirtualize_call(&mut buf, 0, Proc::Read, 40, &ctx, |_| Some(mch));
                assert!(matches!(r, CallVerdict::Forward { .. }));
                black_box(buf.len())
            })
        });
        let mut scratch = [Field::FileId { at: 0 }; 64];
        g.bench_function(format!("reply-lookup-pfh-to-vfh{name}"), |b| {
            b.iter(|| {
                let mut buf = HeapBuffer::from_bytes(&reply);
                let r = virtualize_reply(
                    &mut buf,
                    0,
                    Proc::Lookup,
                    24,
                    1,
                    mch,
                    9,
                    &ctx,
                    &mut scratch,
                    |_, _| {},
                );
                assert!(matches!(r, ReplyVerdict::Rewritten { .. }));
                black_box(buf.len())
            })
        });
    }
    // The border's share: the complete decode of a call's arguments (the rewrite does it
    // too, before touching the packet), for a READ and for a CREATE (a name, a sattr3).
    let mut create = rpc::Writer::new();
    create
        .call_sys(2, rpc::program::NFS, 3, Proc::Create as u32, 1000, 1000)
        .opaque(&v.encode(&key))
        .opaque(b"a-new-file.txt")
        .u32(0)
        .bool(true)
        .u32(0o644)
        .bool(false)
        .bool(false)
        .bool(false)
        .u32(0)
        .u32(0);
    let create = create.buf;
    for (name, p, msg, at) in [
        ("read", Proc::Read, &call, 40),
        ("create", Proc::Create, &create, 60),
    ] {
        g.bench_function(format!("decode-call-{name}"), |b| {
            b.iter(|| {
                black_box(nfs3::walk_call(p, black_box(msg), at, |f| {
                    black_box(f);
                }))
            })
        });
    }
    // The export policy: AUTH_SYS as uid 0, a mount table of 1000 clients, the export open to
    // two networks, root squash — on top of the READ rewrite.
    let mut sys_call = rpc::Writer::new();
    sys_call
        .call_sys(3, rpc::program::NFS, 3, Proc::Read as u32, 0, 0)
        .opaque(&v.encode(&key))
        .u64(0)
        .u32(4096);
    let sys_call = sys_call.buf;
    let shared = NfsShared {
        key,
        handles: std::sync::Arc::new(HandleTable::new(16)),
        virtual_addr: Ipv4Addr::new(10, 0, 1, 1),
        nfs_port: 2049,
        virtual_fsid: 7,
        limits: Limits::for_mtu(1500),
        servers: vec![Server {
            sid: 1,
            name: "a".into(),
            addr: Ipv4Addr::new(10, 0, 2, 2),
            nfs_port: 2049,
            mount_port: 20048,
            export: "/export".into(),
            mch,
            bridge: false,
            clients: vec![
                "192.0.2.0/24".parse().unwrap(),
                "10.0.0.0/16".parse().unwrap(),
            ],
            squash: Squash::Root,
            pair: Default::default(),
        }],
        policy: Policy {
            require_mount: true,
            mounted: MountedSet::new(4096),
            ..Policy::default()
        },
        replicated: vec![],
        diverted: Default::default(),
    };
    let client = Ipv4Addr::new(10, 0, 1, 77);
    for i in 0..1000u32 {
        shared
            .policy
            .mounted
            .insert(Ipv4Addr::from(0x0a00_0000 + i * 7));
    }
    shared.policy.mounted.insert(client);
    let ctx = Context { memo: &memo, ..ctx };
    let anon = (shared.policy.anonymous_uid, shared.policy.anonymous_gid);
    g.bench_function("call-read-vfh-to-pfh-with-policy", |b| {
        b.iter(|| {
            let mut buf = HeapBuffer::from_bytes(&sys_call);
            assert!(shared.policy.admit(client, rpc::auth::SYS).is_ok());
            let r = devirtualize_call(
                &mut buf,
                0,
                Proc::Read,
                60,
                &ctx,
                shared.exports_for(client),
            );
            let CallVerdict::Forward { mut csum, .. } = r else {
                panic!("{r:?}")
            };
            assert!(policy::squash(
                buf.data_mut(),
                Squash::Root,
                anon,
                &mut csum
            ));
            black_box(buf.len())
        })
    });
    g.bench_function("policy-admit-and-squash", |b| {
        let mut msg = sys_call.clone();
        b.iter(|| {
            assert!(shared
                .policy
                .admit(black_box(client), rpc::auth::SYS)
                .is_ok());
            msg[40..48].fill(0); // uid, gid back to 0
            let mut csum = packet::checksum::Adjust::default();
            black_box(policy::squash(&mut msg, Squash::Root, anon, &mut csum))
        })
    });
    // Fairness: one call admitted and its answer counted back, among 4096 clients (the
    // table a worker keeps), with a share and a rate limit set.
    let mut adm = Admission::new(
        4096,
        AdmissionLimits {
            max_inflight: 64,
            rate: 1_000_000,
            burst: 1000,
            ttl_ms: 10_000,
        },
    );
    let mut i = 0u32;
    g.bench_function("admission-admit-and-done", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let client = 0x0a00_0000 + (i.wrapping_mul(2_654_435_761) >> 20); // 4096 clients
            let now = u64::from(i >> 10);
            assert!(adm.admit(black_box(client), now).is_ok());
            adm.done(client, now);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
