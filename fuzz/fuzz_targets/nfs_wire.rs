//! ONC RPC, MOUNT and NFSv3 decoding and the handle rewrite over arbitrary bytes: every message
//! the walkers accept reports fields inside the buffer; the rewrite never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nfs_rewrite::rewrite::{devirtualize_call, virtualize_reply, Context, Limits};
use nfs_rewrite::tables::HandleTable;
use nfs_rewrite::vfh::{HandleKey, MacMemo};
use nfs_rewrite::wire::{mount, nfs3, rpc, Field};
use packet::HeapBuffer;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    let inside = |f: Field| assert!(f.end() <= data.len());
    match rpc::parse(data) {
        Ok(rpc::Message::Call(c)) => {
            if let Some(p) = nfs3::Proc::from_u32(c.proc_) {
                let _ = nfs3::walk_call(p, data, c.args_at, inside);
                let mut b = HeapBuffer::from_bytes(data);
                let _ = devirtualize_call(&mut b, 0, p, c.args_at, &ctx(), |_| Some(0));
            }
            let _ = mount::walk_call(c.proc_, data, c.args_at);
            let _ = rpc::AuthSys::parse(c.cred.body);
        }
        Ok(rpc::Message::Reply(rpc::Reply::Accepted {
            stat: rpc::AcceptStat::Success { results_at },
            ..
        })) => {
            // The procedure is not in a reply: try them all, as the rewrite stage would with a
            // wrong transaction-table entry.
            let mut scratch = [Field::FileId { at: 0 }; 32];
            for p in nfs3::Proc::ALL {
                let _ = nfs3::walk_reply(p, data, results_at, inside);
                let mut b = HeapBuffer::from_bytes(data);
                let _ = virtualize_reply(
                    &mut b,
                    0,
                    p,
                    results_at,
                    1,
                    0,
                    0,
                    &ctx(),
                    &mut scratch,
                    |_, pfh| assert!(!pfh.is_empty() && pfh.len() <= 64),
                );
            }
            for p in 0..6 {
                let _ = mount::walk_reply(p, data, results_at, inside);
            }
        }
        _ => {}
    }
});

fn ctx() -> Context<'static> {
    static KEY: OnceLock<HandleKey> = OnceLock::new();
    static TABLE: OnceLock<HandleTable> = OnceLock::new();
    thread_local! {
        // Leaked once per thread: a worker's memo lives as long as the worker.
        static MEMO: &'static MacMemo = Box::leak(Box::new(MacMemo::new(64)));
    }
    Context {
        key: KEY.get_or_init(|| HandleKey::new(1, 2)),
        memo: MEMO.with(|m| *m),
        handles: TABLE.get_or_init(|| HandleTable::new(1024)),
        virtual_fsid: 7,
        limits: Limits::for_mtu(1500),
    }
}
