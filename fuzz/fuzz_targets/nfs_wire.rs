//! ONC RPC, MOUNT and NFSv3 decoding over arbitrary bytes: every message the walkers accept
//! reports fields inside the buffer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nfs_rewrite::wire::{mount, nfs3, rpc, Field};

fuzz_target!(|data: &[u8]| {
    let inside = |f: Field| {
        let end = match f {
            Field::Handle { at, len } => at + 4 + len,
            Field::Fattr { at } => at + Field::FATTR_LEN,
            Field::FileId { at } => at + 8,
            Field::FsinfoSizes { at } => at + 20,
        };
        assert!(end <= data.len());
    };
    match rpc::parse(data) {
        Ok(rpc::Message::Call(c)) => {
            if let Some(p) = nfs3::Proc::from_u32(c.proc_) {
                let _ = nfs3::walk_call(p, data, c.args_at, inside);
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
            for p in nfs3::Proc::ALL {
                let _ = nfs3::walk_reply(p, data, results_at, inside);
            }
            for p in 0..6 {
                let _ = mount::walk_reply(p, data, results_at, inside);
            }
        }
        _ => {}
    }
});
