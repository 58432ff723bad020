//! Golden tests on real captures of NFSv3 peers (`tests/fixtures/nfs3-*.pcap`, copied from
//! `../shared/reference/captures/`):
//! every RPC message — UDP datagrams, and TCP streams reassembled and split at record marks —
//! is decoded and walked to exactly its last byte, calls matched to replies by (client
//! address, port, xid) since real clients reuse xids, and every handle a client sends was
//! handed out earlier by a server reply (MNT, LOOKUP, CREATE, READDIRPLUS …).

use nfs_rewrite::wire::{mount, nfs3, rpc, Field};
use std::collections::{BTreeSet, HashMap, HashSet};

mod common;
use common::{capture, messages, Endpoint};

#[derive(Default, Debug)]
struct Seen {
    calls: usize,
    replies: usize,
    procs: BTreeSet<String>,
    handle_lens: BTreeSet<usize>,
    fattrs: usize,
}

fn check(name: &str) -> Seen {
    let frames = capture(name).unwrap_or_else(|| panic!("tests/fixtures/{name} is missing"));
    let mut seen = Seen::default();
    let mut pending: HashMap<(Endpoint, u32), (u32, u32)> = HashMap::new();
    let mut handed_out: HashSet<Vec<u8>> = HashSet::new();
    for m in messages(&frames) {
        let msg = rpc::parse(&m.bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        match msg {
            rpc::Message::Call(c) => {
                seen.calls += 1;
                pending.insert((m.src, c.xid), (c.prog, c.proc_));
                let end = match c.prog {
                    rpc::program::NFS => {
                        let p = nfs3::Proc::from_u32(c.proc_).unwrap();
                        seen.procs.insert(format!("nfs.{}.call", p.name()));
                        nfs3::walk_call(p, &m.bytes, c.args_at, |f| {
                            if let Field::Handle { at, len } = f {
                                let h = m.bytes[at + 4..at + 4 + len].to_vec();
                                assert!(
                                    handed_out.contains(&h),
                                    "{name}: client sent a handle no reply gave it"
                                );
                                seen.handle_lens.insert(len);
                            }
                        })
                        .unwrap_or_else(|e| panic!("{name}: {} call: {e}", p.name()))
                    }
                    rpc::program::MOUNT => {
                        seen.procs.insert(format!("mount.{}.call", c.proc_));
                        mount::walk_call(c.proc_, &m.bytes, c.args_at).unwrap().1
                    }
                    other => panic!("{name}: program {other}"),
                };
                assert_eq!(
                    end,
                    m.bytes.len(),
                    "{name}: call {} not walked to its end",
                    c.proc_
                );
            }
            rpc::Message::Reply(r) => {
                seen.replies += 1;
                let (prog, proc_) = pending
                    .remove(&(m.dst, r.xid()))
                    .unwrap_or_else(|| panic!("{name}: reply to no call"));
                let rpc::Reply::Accepted {
                    stat: rpc::AcceptStat::Success { results_at },
                    ..
                } = r
                else {
                    continue;
                };
                let mut record = |f: Field| match f {
                    Field::Handle { at, len } => {
                        handed_out.insert(m.bytes[at + 4..at + 4 + len].to_vec());
                        seen.handle_lens.insert(len);
                    }
                    Field::Fattr { .. } => seen.fattrs += 1,
                    _ => {}
                };
                let end = if prog == rpc::program::NFS {
                    let p = nfs3::Proc::from_u32(proc_).unwrap();
                    seen.procs.insert(format!("nfs.{}.reply", p.name()));
                    nfs3::walk_reply(p, &m.bytes, results_at, &mut record)
                        .unwrap_or_else(|e| panic!("{name}: {} reply: {e}", p.name()))
                        .1
                } else {
                    seen.procs.insert(format!("mount.{proc_}.reply"));
                    mount::walk_reply(proc_, &m.bytes, results_at, &mut record)
                        .unwrap()
                        .1
                };
                assert_eq!(
                    end,
                    m.bytes.len(),
                    "{name}: reply to {prog}/{proc_} not walked to its end"
                );
            }
        }
    }
    eprintln!("{name}: {seen:?}");
    assert!(seen.calls > 0 && seen.replies > 0);
    seen
}

#[test]
fn udp_ganesha() {
    let s = check("nfs3-udp-ganesha.pcap");
    for p in [
        "mount.1.call",
        "mount.1.reply",
        "nfs.lookup.reply",
        "nfs.read.call",
        "nfs.create.reply",
        "nfs.write.call",
        "nfs.readdirplus.reply",
    ] {
        assert!(s.procs.contains(p), "missing {p}");
    }
    assert!(s.fattrs > 10);
}

#[test]
fn tcp_libnfs_ganesha() {
    let s = check("nfs3-tcp-libnfs-ganesha.pcap");
    for p in [
        "mount.5.reply",
        "nfs.fsinfo.reply",
        "nfs.getattr.reply",
        "nfs.access.reply",
    ] {
        assert!(s.procs.contains(p), "missing {p}");
    }
}

#[test]
fn tcp_libnfs_pipelined() {
    let s = check("nfs3-tcp-libnfs-pipelined.pcap");
    assert!(s.calls >= 10, "{s:?}");
}

#[test]
fn tcp_unfs3_variable_length_handles() {
    let s = check("nfs3-tcp-unfs3-varlen-handles.pcap");
    assert!(
        s.handle_lens.len() > 1,
        "handle lengths vary with depth: {:?}",
        s.handle_lens
    );
    assert!(s.handle_lens.iter().all(|&l| (1..=64).contains(&l)));
}
