//! Malformed NFSv3 calls, generated from the codec, for fortification tests: every one must
//! be answered by the router with the error a server would give (or, when not even the RPC
//! header decodes, dropped and counted), and none may reach a server.
//!
//! Each starts from a valid call of one of the 21 procedures (built here, checked with
//! [`nfs3::walk_call`]) on a file and a directory handle of the virtual server, and breaks it
//! one way: a truncation inside the arguments or inside the header, bytes after the arguments,
//! a flipped bit in a handle, a handle or name length beyond the limit or the datagram, a name
//! a server cannot hold (empty, with `/` or NUL, above 255 bytes) or a symlink target above
//! PATH_MAX, a WRITE count above its data, an unknown procedure, a wrong NFS version.

use crate::wire::nfs3::{self, stat, Proc};
use crate::wire::rpc::{self, Writer};

/// What the router must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// An accepted reply with this accept_stat (GARBAGE_ARGS, PROC_UNAVAIL, PROG_MISMATCH).
    Accept(u32),
    /// An accepted, successful RPC reply whose nfsstat3 is this.
    Status(u32),
    /// No reply: the RPC header itself does not decode (dropped and counted).
    Silent,
}

pub const GARBAGE_ARGS: u32 = 4;
pub const PROC_UNAVAIL: u32 = 3;
pub const PROG_MISMATCH: u32 = 2;

/// One malformed call.
#[derive(Debug, Clone)]
pub struct Malformed {
    pub kind: &'static str,
    pub proc_: u32,
    pub msg: Vec<u8>,
    pub expect: Expect,
}

/// Every kind of breakage, in the order they are cycled through.
pub const KINDS: [&str; 10] = [
    "truncated-args",
    "trailing-bytes",
    "handle-bit-flip",
    "handle-length",
    "bad-name",
    "name-length",
    "write-count",
    "unknown-procedure",
    "wrong-version",
    "truncated-header",
];

/// splitmix64: reproducible from the seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in lo..hi (hi > lo).
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// sattr3 with nothing set.
fn no_sattr(w: &mut Writer) {
    w.bool(false)
        .bool(false)
        .bool(false)
        .bool(false)
        .u32(0)
        .u32(0);
}

/// The arguments of a valid call of `p` on `file` and `dir`, with `name` wherever the
/// procedure takes one and `target` as a symlink's. Also: the offset (in the arguments) of
/// the first name's length word, if any.
fn args(p: Proc, file: &[u8], dir: &[u8], name: &[u8], target: &[u8]) -> (Vec<u8>, Option<usize>) {
    let mut w = Writer::new();
    let mut name_at = None;
    let mut dirop = |w: &mut Writer, h: &[u8]| {
        w.opaque(h);
        name_at = name_at.or(Some(w.buf.len()));
        w.opaque(name);
    };
    match p {
        Proc::Null => {}
        Proc::Getattr | Proc::Readlink | Proc::Fsstat | Proc::Fsinfo | Proc::Pathconf => {
            w.opaque(file);
        }
        Proc::Setattr => {
            w.opaque(file);
            no_sattr(&mut w);
            w.bool(false);
        }
        Proc::Lookup | Proc::Remove | Proc::Rmdir => dirop(&mut w, dir),
        Proc::Access => {
            w.opaque(file).u32(0x3f);
        }
        Proc::Read | Proc::Commit => {
            w.opaque(file).u64(0).u32(4096);
        }
        Proc::Write => {
            w.opaque(file).u64(0).u32(8).u32(2).opaque(b"corpus!\n");
        }
        Proc::Create => {
            dirop(&mut w, dir);
            w.u32(0);
            no_sattr(&mut w);
        }
        Proc::Mkdir => {
            dirop(&mut w, dir);
            no_sattr(&mut w);
        }
        Proc::Symlink => {
            dirop(&mut w, dir);
            no_sattr(&mut w);
            w.opaque(target);
        }
        Proc::Mknod => {
            dirop(&mut w, dir);
            w.u32(7); // NF3FIFO
            no_sattr(&mut w);
        }
        Proc::Rename => {
            dirop(&mut w, dir);
            dirop(&mut w, dir);
        }
        Proc::Link => {
            w.opaque(file);
            dirop(&mut w, dir);
        }
        Proc::Readdir => {
            w.opaque(dir).u64(0).fixed(&[0; 8]).u32(4096);
        }
        Proc::Readdirplus => {
            w.opaque(dir).u64(0).fixed(&[0; 8]).u32(1024).u32(4096);
        }
    }
    (w.buf, name_at)
}

/// The procedures with a handle first (all but NULL) and those with a name.
const WITH_NAME: [Proc; 9] = [
    Proc::Lookup,
    Proc::Create,
    Proc::Mkdir,
    Proc::Symlink,
    Proc::Mknod,
    Proc::Remove,
    Proc::Rmdir,
    Proc::Rename,
    Proc::Link,
];

/// A call header (AUTH_SYS, uid 0) for `p` of NFS version `vers`; the arguments follow.
fn header(xid: u32, vers: u32, proc_: u32) -> Vec<u8> {
    let mut w = Writer::new();
    w.call_sys(xid, rpc::program::NFS, vers, proc_, 0, 0);
    w.buf
}

/// `n` malformed calls on the virtual server's `file` and `dir` handles, xids from `xid0` on,
/// reproducible from `seed`. Names and symlink targets that are too long are kept within
/// `max_msg` bytes of message (a UDP test without IP fragments: one datagram per call); a
/// symlink target above PATH_MAX needs more than 4 KiB, so below that it is a long name.
pub fn generate(
    file: &[u8],
    dir: &[u8],
    n: usize,
    seed: u64,
    xid0: u32,
    max_msg: usize,
) -> Vec<Malformed> {
    // The header (≤ 100 bytes) and two handles leave this much for one target or two names
    // (RENAME).
    let target_room = max_msg.saturating_sub(200).min(8192);
    let name_room = (target_room / 2).clamp(nfs3::NAME_MAX + 2, 2048);
    let mut rng = Rng(seed);
    let procs: Vec<Proc> = Proc::ALL
        .iter()
        .copied()
        .filter(|p| *p != Proc::Null)
        .collect();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let xid = xid0.wrapping_add(i as u32);
        let kind = KINDS[i % KINDS.len()];
        let mut p = procs[rng.range(0, procs.len())];
        if matches!(kind, "bad-name" | "name-length") {
            p = WITH_NAME[rng.range(0, WITH_NAME.len())];
        } else if kind == "write-count" {
            p = Proc::Write;
        }
        let mut head = header(xid, 3, p as u32);
        let args_at = head.len();
        let (mut a, name_at) = args(p, file, dir, b"corpus-name", b"corpus-target");
        debug_assert_eq!(
            nfs3::walk_call(p, &[&head[..], &a[..]].concat(), args_at, |_| {}),
            Ok(args_at + a.len()),
            "{p:?}: the base call must be valid"
        );
        let expect = match kind {
            "truncated-args" => {
                a.truncate(rng.range(0, a.len()));
                Expect::Accept(GARBAGE_ARGS)
            }
            "trailing-bytes" => {
                a.extend(std::iter::repeat_n(0, 4 * rng.range(1, 4)));
                Expect::Accept(GARBAGE_ARGS)
            }
            "handle-bit-flip" => {
                let bit = rng.range(0, 40 * 8);
                a[4 + bit / 8] ^= 1 << (bit % 8);
                Expect::Status(stat::BADHANDLE)
            }
            "handle-length" => {
                // Beyond FHSIZE3 (64) or beyond the datagram.
                let len = if rng.next().is_multiple_of(2) {
                    rng.range(65, 4096) as u32
                } else {
                    u32::MAX - rng.range(0, 1 << 16) as u32
                };
                a[..4].copy_from_slice(&len.to_be_bytes());
                Expect::Accept(GARBAGE_ARGS)
            }
            "bad-name" => {
                let (name, st): (Vec<u8>, u32) = match rng.range(0, 6) {
                    0 => (Vec::new(), stat::INVAL),
                    1 => (b"a/b".to_vec(), stat::INVAL),
                    2 => (b"/".to_vec(), stat::INVAL),
                    3 => (b"nul\0byte".to_vec(), stat::INVAL),
                    4 => (vec![b'n'; rng.range(256, name_room)], stat::NAMETOOLONG),
                    _ => (b"ok".to_vec(), stat::NAMETOOLONG), // a symlink target too long
                };
                let (name, target) = if name != b"ok" {
                    (name, b"corpus-target".to_vec())
                } else if target_room > nfs3::PATH_MAX + 1 {
                    p = Proc::Symlink;
                    (name, vec![b't'; rng.range(nfs3::PATH_MAX + 1, target_room)])
                } else {
                    (
                        vec![b'n'; rng.range(256, name_room)],
                        b"corpus-target".to_vec(),
                    )
                };
                head = header(xid, 3, p as u32);
                a = args(p, file, dir, &name, &target).0;
                Expect::Status(st)
            }
            "name-length" => {
                // The name's length word beyond the datagram.
                let at = name_at.unwrap_or(0);
                let len = (a.len() - at + rng.range(1, 1 << 20)) as u32;
                a[at..at + 4].copy_from_slice(&len.to_be_bytes());
                Expect::Accept(GARBAGE_ARGS)
            }
            "write-count" => {
                // count (after the handle and the offset) above the 8 bytes of data.
                let at = 4 + file.len().next_multiple_of(4) + 8;
                let count = 8 + rng.range(1, 1 << 20) as u32;
                a[at..at + 4].copy_from_slice(&count.to_be_bytes());
                Expect::Accept(GARBAGE_ARGS)
            }
            "unknown-procedure" => {
                head = header(xid, 3, rng.range(22, 1 << 16) as u32);
                Expect::Accept(PROC_UNAVAIL)
            }
            "wrong-version" => {
                head = header(xid, [1, 2, 4, 5][rng.range(0, 4)], p as u32);
                Expect::Accept(PROG_MISMATCH)
            }
            _ => {
                // truncated-header: the call header (48 bytes with this credential) cut
                // short; no xid can be trusted, nothing answers.
                head.truncate(rng.range(4, args_at));
                a.clear();
                Expect::Silent
            }
        };
        head.extend_from_slice(&a);
        out.push(Malformed {
            kind,
            proc_: p as u32,
            msg: head,
            expect,
        });
    }
    out
}

/// Whether `reply` (an RPC reply message) is what `expect` asks of the call with `xid`.
pub fn answered_right(reply: &[u8], xid: u32, expect: Expect) -> bool {
    let Ok(rpc::Message::Reply(rpc::Reply::Accepted { xid: x, stat, .. })) = rpc::parse(reply)
    else {
        return false;
    };
    if x != xid {
        return false;
    }
    match (expect, stat) {
        (Expect::Accept(GARBAGE_ARGS), rpc::AcceptStat::GarbageArgs)
        | (Expect::Accept(PROC_UNAVAIL), rpc::AcceptStat::ProcUnavail)
        | (Expect::Accept(PROG_MISMATCH), rpc::AcceptStat::ProgMismatch { .. }) => true,
        (Expect::Status(st), rpc::AcceptStat::Success { results_at }) => {
            reply.get(results_at..results_at + 4) == Some(&st.to_be_bytes()[..])
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Outcome, Peer};
    use std::net::Ipv4Addr;

    /// Every malformed call, decided by the controller (the code the UDP and TCP virtual
    /// server both go through), gets its expected answer and is never forwarded.
    #[test]
    fn every_malformed_call_gets_its_error_and_none_is_forwarded() {
        let mut k = crate::control::tests::controller();
        let key = k.shared().key;
        let mch = key.mount_checksum(1, b"/srv/a");
        let vfh = |pin| {
            crate::vfh::VirtualHandle::for_object(&key, 1, mch, 9, pin, b"physical").encode(&key)
        };
        let (file, dir) = (vfh(100), vfh(2));
        let corpus = generate(&file, &dir, 20_000, 7, 1000, usize::MAX);
        let mut by_kind = std::collections::BTreeMap::<&str, usize>::new();
        let limits = k.shared().limits;
        for m in &corpus {
            let xid = u32::from_be_bytes(m.msg.get(..4).map_or([0; 4], |b| b.try_into().unwrap()));
            let peer = Peer::Udp(Ipv4Addr::new(10, 0, 1, 2), 700);
            match (k.decide(&m.msg, peer, 0, limits), m.expect) {
                (Outcome::Nothing, Expect::Silent) => {}
                (Outcome::Reply(r), e) if e != Expect::Silent => {
                    assert!(
                        answered_right(&r, xid, e),
                        "{}: {e:?}, answered {r:?}",
                        m.kind
                    )
                }
                (o, e) => panic!("{} ({:?}): expected {e:?}, got {o:?}", m.kind, m.proc_),
            }
            *by_kind.entry(m.kind).or_default() += 1;
        }
        assert_eq!(by_kind.len(), KINDS.len(), "{by_kind:?}");
        assert!(by_kind.values().all(|n| *n >= 1000));
        // Reproducible.
        let again = generate(&file, &dir, 100, 7, 1000, usize::MAX);
        assert!(again.iter().zip(&corpus).all(|(a, b)| a.msg == b.msg));
        // Within one datagram when asked.
        let small = generate(&file, &dir, 2000, 7, 1000, 1400);
        assert!(small.iter().all(|m| m.msg.len() <= 1400));
    }
}
