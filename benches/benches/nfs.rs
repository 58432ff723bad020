//! The NFS handle rewrite per message, on real bytes (GETATTR/READ calls and LOOKUP replies of
//! the libnfs capture rebuilt the way the rewrite sees them).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use nfs_rewrite::rewrite::{
    devirtualize_call, virtualize_reply, CallVerdict, Context, Limits, ReplyVerdict,
};
use nfs_rewrite::tables::HandleTable;
use nfs_rewrite::vfh::{HandleKey, MacMemo, VirtualHandle};
use nfs_rewrite::wire::nfs3::Proc;
use nfs_rewrite::wire::{rpc, Field};
use packet::{Buffer, HeapBuffer};

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
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
