//! The rewrite on real traffic: every NFS reply of the captures is virtualized (physical
//! handles → VFHs, fsid → the virtual fsid, fileid → VIN), and every call — as a client of the
//! virtual server would send it, with the VFHs it was given — is devirtualized back to exactly
//! the bytes the real client sent. Plus the refusals: forged, stale, cross-server, unknown.

mod common;

use common::{capture, messages, Endpoint};
use nfs_rewrite::rewrite::{
    devirtualize_call, virtualize_reply, CallVerdict, Context, Limits, ReplyVerdict,
};
use nfs_rewrite::tables::HandleTable;
use nfs_rewrite::vfh::{HandleKey, MacMemo, VirtualHandle, VFH_LEN};
use nfs_rewrite::wire::nfs3::{self, stat, Proc};
use nfs_rewrite::wire::{rpc, Field};
use packet::{Buffer, HeapBuffer};
use std::collections::HashMap;

const VFSID: u64 = 0x5649_5254_0000_0001;
const SID: u16 = 1;

fn key() -> HandleKey {
    HandleKey::from_hex("0f0e0d0c0b0a09080706050403020100").unwrap()
}

/// `msg` with every handle field replaced through `map` (an independent, allocating rebuild).
fn replace_handles(
    msg: &[u8],
    fields: &[(usize, usize)],
    map: impl Fn(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0;
    for &(at, len) in fields {
        out.extend_from_slice(&msg[pos..at]);
        let new = map(&msg[at + 4..at + 4 + len]);
        out.extend_from_slice(&(new.len() as u32).to_be_bytes());
        out.extend_from_slice(&new);
        out.resize(out.len() + (4 - new.len() % 4) % 4, 0);
        pos = at + 4 + ((len + 3) & !3);
    }
    out.extend_from_slice(&msg[pos..]);
    out
}

fn call_handles(p: Proc, msg: &[u8], args_at: usize) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    nfs3::walk_call(p, msg, args_at, |f| {
        if let Field::Handle { at, len } = f {
            v.push((at, len))
        }
    })
    .unwrap();
    v
}

struct World {
    key: HandleKey,
    /// A worker's memo, as the fast path has one (small: entries evict each other).
    memo: MacMemo,
    handles: HandleTable,
    mch: u32,
    /// What clients of the virtual server hold for each physical handle.
    vfh_of: HashMap<Vec<u8>, [u8; VFH_LEN]>,
}

impl World {
    fn new() -> Self {
        let key = key();
        let mch = key.mount_checksum(SID, b"/export");
        World {
            key,
            memo: MacMemo::new(8),
            handles: HandleTable::new(4096),
            mch,
            vfh_of: HashMap::new(),
        }
    }
    fn ctx(&self) -> Context<'_> {
        Context {
            key: &self.key,
            memo: &self.memo,
            handles: &self.handles,
            virtual_fsid: VFSID,
            limits: Limits::UNLIMITED,
        }
    }
    /// A handle the capture's client got from MNT (no attributes in the reply): the management
    /// core would GETATTR it; any stable identity does here.
    fn adopt(&mut self, pfh: &[u8]) {
        if self.vfh_of.contains_key(pfh) {
            return;
        }
        let pin = pfh
            .iter()
            .fold(7u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let v = VirtualHandle::for_object(&self.key, SID, self.mch, 0xfeed, pin, pfh);
        self.handles.insert(v.hid, pfh);
        self.vfh_of.insert(pfh.to_vec(), v.encode(&self.key));
    }
}

fn roundtrip(name: &str) -> (usize, usize) {
    let frames = capture(name).unwrap();
    let mut w = World::new();
    let mut pending: HashMap<(Endpoint, u32), (Proc, u64)> = HashMap::new();
    let (mut calls, mut replies) = (0, 0);
    let mut scratch = [Field::FileId { at: 0 }; 256];
    for m in messages(&frames) {
        match rpc::parse(&m.bytes).unwrap() {
            rpc::Message::Call(c) if c.prog == rpc::program::NFS => {
                let p = Proc::from_u32(c.proc_).unwrap();
                let hs = call_handles(p, &m.bytes, c.args_at);
                for &(at, len) in &hs {
                    w.adopt(&m.bytes[at + 4..at + 4 + len]);
                }
                let virt = replace_handles(&m.bytes, &hs, |pfh| w.vfh_of[pfh].to_vec());
                let dir_pfs = hs.first().map_or(0, |&(at, _)| {
                    VirtualHandle::decode(&w.key, &virt[at + 4..at + 4 + VFH_LEN], |_| Some(w.mch))
                        .unwrap()
                        .pfs
                });
                pending.insert((m.src, c.xid), (p, dir_pfs));
                let mut buf = HeapBuffer::from_bytes(&virt);
                let v = devirtualize_call(&mut buf, 0, p, c.args_at, &w.ctx(), |s| {
                    (s == SID).then_some(w.mch)
                });
                if hs.is_empty() {
                    assert_eq!(v, CallVerdict::NoHandle);
                } else {
                    assert!(
                        matches!(v, CallVerdict::Forward { sid: SID, delta, .. }
                            if delta == m.bytes.len() as isize - virt.len() as isize),
                        "{name} {}: {v:?}",
                        p.name()
                    );
                }
                assert_eq!(
                    buf.data(),
                    &m.bytes[..],
                    "{name}: {} call not restored byte for byte",
                    p.name()
                );
                calls += 1;
            }
            rpc::Message::Reply(r) => {
                let Some((p, dir_pfs)) = pending.remove(&(m.dst, r.xid())) else {
                    continue;
                };
                let rpc::Reply::Accepted {
                    stat: rpc::AcceptStat::Success { results_at },
                    ..
                } = r
                else {
                    continue;
                };
                // Room to grow, as the TCP reassembly buffer has (an mbuf may not: see below).
                let mut buf = HeapBuffer::with_capacity(m.bytes.len() + 8192, 128);
                buf.append(m.bytes.len()).unwrap();
                buf.data_mut().copy_from_slice(&m.bytes);
                let mut maps = Vec::new();
                let v = virtualize_reply(
                    &mut buf,
                    0,
                    p,
                    results_at,
                    SID,
                    w.mch,
                    dir_pfs,
                    &w.ctx(),
                    &mut scratch,
                    |vin, pfh| maps.push((vin, pfh.to_vec())),
                );
                let ReplyVerdict::Rewritten { delta, .. } = v else {
                    panic!("{name}: {} reply: {v:?}", p.name())
                };
                let out = buf.data().to_vec();
                assert_eq!(out.len() as isize, m.bytes.len() as isize + delta);
                // Walk the original and the rewritten reply side by side.
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let (st, end) = nfs3::walk_reply(p, &m.bytes, results_at, |f| a.push(f)).unwrap();
                let (st2, end2) = nfs3::walk_reply(p, &out, results_at, |f| b.push(f)).unwrap();
                assert_eq!(
                    (st, end2),
                    (st2, out.len()),
                    "{name}: rewritten {} reply is well formed",
                    p.name()
                );
                assert_eq!(end, m.bytes.len());
                assert_eq!(a.len(), b.len());
                let be64 =
                    |x: &[u8], at: usize| u64::from_be_bytes(x[at..at + 8].try_into().unwrap());
                for (fa, fb) in a.iter().zip(&b) {
                    match (*fa, *fb) {
                        (Field::Fattr { at: x }, Field::Fattr { at: y }) => {
                            assert_eq!(be64(&out, y + 44), VFSID);
                            let (pfs, pin) = (be64(&m.bytes, x + 44), be64(&m.bytes, x + 52));
                            assert_eq!(
                                be64(&out, y + 52),
                                nfs_rewrite::vfh::virtual_inode(&w.key, SID, pfs, pin)
                            );
                        }
                        (Field::Handle { at: x, len }, Field::Handle { at: y, len: 40 }) => {
                            let vfh: [u8; VFH_LEN] = out[y + 4..y + 44].try_into().unwrap();
                            let v = VirtualHandle::decode(&w.key, &vfh, |_| Some(w.mch)).unwrap();
                            let pfh = m.bytes[x + 4..x + 4 + len].to_vec();
                            assert!(maps.contains(&(v.hid, pfh.clone())));
                            w.handles.insert(v.hid, &pfh);
                            w.vfh_of.insert(pfh, vfh);
                        }
                        (Field::FileId { .. }, Field::FileId { .. })
                        | (Field::FsinfoSizes { .. }, Field::FsinfoSizes { .. }) => {}
                        (x, y) => panic!("{name}: fields differ: {x:?} vs {y:?}"),
                    }
                }
                replies += 1;
            }
            _ => {}
        }
    }
    eprintln!("{name}: {calls} calls restored, {replies} replies virtualized");
    assert!(calls > 5 && replies > 5);
    (calls, replies)
}

#[test]
fn udp_ganesha_roundtrip() {
    roundtrip("nfs3-udp-ganesha.pcap");
}

#[test]
fn tcp_captures_roundtrip() {
    for c in [
        "nfs3-tcp-libnfs-ganesha.pcap",
        "nfs3-tcp-libnfs-pipelined.pcap",
        "nfs3-tcp-unfs3-varlen-handles.pcap",
    ] {
        roundtrip(c);
    }
}

fn getattr_call(vfh: &[u8]) -> Vec<u8> {
    let mut w = rpc::Writer::new();
    w.call(77, rpc::program::NFS, 3, Proc::Getattr as u32)
        .opaque(vfh);
    w.buf
}

#[test]
fn refusals() {
    let w = World::new();
    let mch = w.mch;
    let v = VirtualHandle::for_object(&w.key, SID, mch, 5, 6, &[9; 28]);
    w.handles.insert(v.hid, &[9; 28]);
    let good = v.encode(&w.key);
    let run = |msg: Vec<u8>| {
        let mut b = HeapBuffer::from_bytes(&msg);
        let r = devirtualize_call(&mut b, 0, Proc::Getattr, 40, &w.ctx(), |s| {
            (s == SID).then_some(mch)
        });
        (r, b.data().to_vec())
    };
    // Good: forwarded with the physical handle.
    let (r, out) = run(getattr_call(&good));
    assert!(
        matches!(
            r,
            CallVerdict::Forward {
                sid: SID,
                delta: -12,
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(&out[44..72], &[9; 28]);
    // One bit flipped: BADHANDLE, packet untouched.
    for bit in [0, 17, 100, 319] {
        let mut f = good;
        f[bit / 8] ^= 1 << (bit % 8);
        let msg = getattr_call(&f);
        let (r, out) = run(msg.clone());
        assert_eq!(r, CallVerdict::Refuse(stat::BADHANDLE), "bit {bit}");
        assert_eq!(out, msg);
    }
    // A physical handle sent straight to the virtual server: BADHANDLE.
    assert_eq!(
        run(getattr_call(&[9; 28])).0,
        CallVerdict::Refuse(stat::BADHANDLE)
    );
    // A server no longer configured: STALE.
    let gone = VirtualHandle::for_object(&w.key, 7, mch, 5, 6, &[9; 28]).encode(&w.key);
    assert_eq!(run(getattr_call(&gone)).0, CallVerdict::Refuse(stat::STALE));
    // Unknown physical handle (router restarted with an empty table): recovery.
    let fresh = VirtualHandle::for_object(&w.key, SID, mch, 5, 99, &[8; 28]);
    assert_eq!(
        run(getattr_call(&fresh.encode(&w.key))).0,
        CallVerdict::Recover(fresh)
    );
    // RENAME between two servers: XDEV.
    let other_mch = 0x1234;
    let v2 = VirtualHandle::for_object(&w.key, 2, other_mch, 5, 6, &[7; 28]);
    let mut m = rpc::Writer::new();
    m.call(5, rpc::program::NFS, 3, Proc::Rename as u32)
        .opaque(&good)
        .opaque(b"a")
        .opaque(&v2.encode(&w.key))
        .opaque(b"b");
    let mut b = HeapBuffer::from_bytes(&m.buf);
    let r = devirtualize_call(&mut b, 0, Proc::Rename, 40, &w.ctx(), |s| match s {
        SID => Some(mch),
        2 => Some(other_mch),
        _ => None,
    });
    assert_eq!(r, CallVerdict::Refuse(stat::XDEV));
    // The virtual root: the management core answers.
    let root = VirtualHandle {
        flags: nfs_rewrite::vfh::FLAG_VIRTUAL_DIR,
        sid: 0,
        mch: 0,
        pfs: 0,
        pin: 0,
        hid: 1,
    };
    assert_eq!(
        run(getattr_call(&root.encode(&w.key))).0,
        CallVerdict::Virtual
    );
}

#[test]
fn reply_without_room_goes_to_the_slow_path_untouched() {
    // A LOOKUP reply whose 24-byte handle grows to 40 in a buffer with no spare room.
    let w = World::new();
    let mut m = rpc::Writer::new();
    m.accepted_reply(3, 0)
        .u32(0)
        .opaque(&[5; 24])
        .bool(true)
        .fixed(&[0; 84])
        .bool(false);
    let mut b = HeapBuffer::with_capacity(m.buf.len() + 8, 0);
    b.append(m.buf.len()).unwrap();
    b.data_mut().copy_from_slice(&m.buf);
    let mut scratch = [Field::FileId { at: 0 }; 8];
    let v = virtualize_reply(
        &mut b,
        0,
        Proc::Lookup,
        24,
        SID,
        w.mch,
        0,
        &w.ctx(),
        &mut scratch,
        |_, _| {},
    );
    assert_eq!(v, ReplyVerdict::SlowPath);
    assert_eq!(b.data(), &m.buf[..]);
    // With room it is rewritten.
    let mut b = HeapBuffer::from_bytes(&m.buf);
    let v = virtualize_reply(
        &mut b,
        0,
        Proc::Lookup,
        24,
        SID,
        w.mch,
        0,
        &w.ctx(),
        &mut scratch,
        |_, _| {},
    );
    assert!(
        matches!(v, ReplyVerdict::Rewritten { delta: 16, .. }),
        "{v:?}"
    );
}

/// Found by the nfs_wire fuzz target: a server's "handle" of length 0 must not become a VFH.
#[test]
fn empty_physical_handle_is_refused() {
    let w = World::new();
    let mut m = rpc::Writer::new();
    m.accepted_reply(3, 0)
        .u32(0)
        .opaque(&[])
        .bool(true)
        .fixed(&[0; 84])
        .bool(false);
    let mut b = HeapBuffer::from_bytes(&m.buf);
    let mut scratch = [Field::FileId { at: 0 }; 8];
    let mut mapped = false;
    let v = virtualize_reply(
        &mut b,
        0,
        Proc::Lookup,
        24,
        SID,
        w.mch,
        0,
        &w.ctx(),
        &mut scratch,
        |_, _| mapped = true,
    );
    assert_eq!(v, ReplyVerdict::Malformed);
    assert!(!mapped);
    assert_eq!(b.data(), &m.buf[..]);
}

#[test]
fn transfer_sizes_are_clamped_to_the_mtu() {
    let l = Limits::for_mtu(1500);
    assert_eq!((l.max_io, l.max_dir), (1024, 1086));
    let w = World::new();
    let pfh = [9u8; 28];
    let v = VirtualHandle::for_object(&w.key, SID, w.mch, 5, 6, &pfh);
    w.handles.insert(v.hid, &pfh);
    let vfh = v.encode(&w.key);
    let ctx = Context {
        limits: l,
        ..w.ctx()
    };
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    // Calls: READ count, READDIR count, READDIRPLUS dircount and maxcount, lowered when above
    // the limits and left alone below them. (40 bytes of call header, then the arguments; the
    // handle shrinks from 40 to 28 bytes.)
    for (p, tail, want) in [
        (
            Proc::Read,
            vec![0u64.to_be_bytes().to_vec(), 65536u32.to_be_bytes().to_vec()],
            vec![1024],
        ),
        (
            Proc::Read,
            vec![0u64.to_be_bytes().to_vec(), 512u32.to_be_bytes().to_vec()],
            vec![512],
        ),
        (
            Proc::Readdir,
            vec![vec![0; 16], 8192u32.to_be_bytes().to_vec()],
            vec![1086],
        ),
        (
            Proc::Readdirplus,
            vec![
                vec![0; 16],
                8192u32.to_be_bytes().to_vec(),
                32768u32.to_be_bytes().to_vec(),
            ],
            vec![1086, 1086],
        ),
    ] {
        let mut m = rpc::Writer::new();
        m.call(9, rpc::program::NFS, 3, p as u32).opaque(&vfh);
        for t in &tail {
            m.fixed(t);
        }
        let mut b = HeapBuffer::from_bytes(&m.buf);
        let r = devirtualize_call(&mut b, 0, p, 40, &ctx, |_| Some(w.mch));
        assert!(matches!(r, CallVerdict::Forward { .. }), "{r:?}");
        let out = b.data();
        let got: Vec<u32> = (0..want.len())
            .map(|i| be32(out, out.len() - 4 * (want.len() - i)))
            .collect();
        assert_eq!(got, want, "{}", p.name());
    }
    // A server's FSINFO reply: rtmax, rtpref, wtmax, wtpref, dtpref lowered; the multiples not.
    let mut attrs = [0u8; 84];
    attrs[44..52].copy_from_slice(&5u64.to_be_bytes());
    attrs[52..60].copy_from_slice(&6u64.to_be_bytes());
    let mut r = rpc::Writer::new();
    r.accepted_reply(9, 0).u32(0).bool(true).fixed(&attrs);
    let sizes_at = r.buf.len();
    for v in [1u32 << 20, 1 << 20, 4096, 1 << 20, 1 << 20, 4096, 65536] {
        r.u32(v);
    }
    r.u64(u64::MAX).u32(0).u32(1).u32(0x1b);
    let mut b = HeapBuffer::from_bytes(&r.buf);
    let mut scratch = [Field::FileId { at: 0 }; 16];
    let v = virtualize_reply(
        &mut b,
        0,
        Proc::Fsinfo,
        24,
        SID,
        w.mch,
        0,
        &ctx,
        &mut scratch,
        |_, _| {},
    );
    assert!(
        matches!(v, ReplyVerdict::Rewritten { delta: 0, .. }),
        "{v:?}"
    );
    let got: Vec<u32> = (0..7).map(|i| be32(b.data(), sizes_at + 4 * i)).collect();
    assert_eq!(got, [1024, 1024, 4096, 1024, 1024, 4096, 1086]);
}

#[test]
fn reply_rewrite_never_panics_on_garbage() {
    let w = World::new();
    let mut scratch = [Field::FileId { at: 0 }; 8];
    let mut rng = 0x1234_5678_u64;
    for n in 0..3000 {
        let len = (n % 300) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % 7) as u8 // small values: plausible lengths and booleans
            })
            .collect();
        for p in Proc::ALL {
            let mut b = HeapBuffer::from_bytes(&bytes);
            let _ = virtualize_reply(
                &mut b,
                0,
                p,
                0,
                SID,
                w.mch,
                0,
                &w.ctx(),
                &mut scratch,
                |_, _| {},
            );
            let mut b = HeapBuffer::from_bytes(&bytes);
            let _ = devirtualize_call(&mut b, 0, p, 0, &w.ctx(), |_| Some(w.mch));
        }
    }
}

mod stage {
    use super::*;
    use nfs_rewrite::datapath::{NfsDrop, NfsShared, NfsStage, Server};
    use packet::ethernet::EthernetAddress;
    use packet::ipv4::Ipv4Packet;
    use packet::udp::UdpPacket;
    use packet::{DropReason, PuntReason, Stage, Verdict};
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 0, 1, 2), 800);
    const VIRTUAL: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 0, 0, 100), 2049);
    const SERVER: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 0, 2, 2), 2049);

    fn frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
        let (a, b) = (
            EthernetAddress([2, 0, 0, 0, 0, 1]),
            EthernetAddress([2, 0, 0, 0, 0, 2]),
        );
        packet::udp::frame(a, b, src.0, dst.0, src.1, dst.1, payload)
    }

    /// (src, dst, UDP payload) of a frame, checking both checksums.
    fn open(f: &[u8]) -> ((Ipv4Addr, u16), (Ipv4Addr, u16), Vec<u8>) {
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(ip.src_addr(), ip.dst_addr()));
        (
            (ip.src_addr(), udp.src_port()),
            (ip.dst_addr(), udp.dst_port()),
            udp.payload().to_vec(),
        )
    }

    /// The stage's shared state: the capture's server as SID 1, no transfer limits.
    fn shared(handles: Arc<HandleTable>, mch: u32) -> Arc<NfsShared> {
        shared_with(handles, mch, |_| {})
    }

    /// The same, changed by `f` first (the export policy's tests).
    fn shared_with(
        handles: Arc<HandleTable>,
        mch: u32,
        f: impl FnOnce(&mut NfsShared),
    ) -> Arc<NfsShared> {
        let mut s = NfsShared {
            key: key(),
            handles,
            virtual_addr: VIRTUAL.0,
            nfs_port: VIRTUAL.1,
            virtual_fsid: VFSID,
            limits: Limits::UNLIMITED,
            servers: vec![Server {
                sid: SID,
                name: "a".into(),
                addr: SERVER.0,
                nfs_port: SERVER.1,
                mount_port: 20048,
                export: "/export".into(),
                mch,
                bridge: false,
                clients: vec![],
                squash: nfs_rewrite::policy::Squash::None,
                pair: Default::default(),
            }],
            policy: Default::default(),
            replicated: vec![],
            diverted: Default::default(),
        };
        f(&mut s);
        Arc::new(s)
    }

    /// The capture's calls with handles, as a client of the virtual server sends them (the
    /// handles virtual, known to `handles`), each with the physical call.
    fn virtual_calls(w: &mut World, handles: &HandleTable) -> Vec<(Proc, Vec<u8>, Vec<u8>)> {
        let frames = capture("nfs3-udp-ganesha.pcap").unwrap();
        let mut out = Vec::new();
        for m in messages(&frames) {
            let rpc::Message::Call(c) = rpc::parse(&m.bytes).unwrap() else {
                continue;
            };
            if c.prog != rpc::program::NFS {
                continue;
            }
            let p = Proc::from_u32(c.proc_).unwrap();
            let hs = call_handles(p, &m.bytes, c.args_at);
            if hs.is_empty() {
                continue;
            }
            for &(at, len) in &hs {
                let pfh = &m.bytes[at + 4..at + 4 + len];
                w.adopt(pfh);
                let v = VirtualHandle::verify(&w.key, &w.vfh_of[pfh]).unwrap();
                handles.insert(v.hid, pfh);
            }
            let virt = replace_handles(&m.bytes, &hs, |pfh| w.vfh_of[pfh].to_vec());
            out.push((p, virt, m.bytes.clone()));
        }
        out
    }

    /// The fortification corpus on the fast path: no malformed call is forwarded; each goes
    /// to the management core (which answers it) or, when its RPC header does not decode, is
    /// dropped and counted.
    #[test]
    fn no_malformed_call_passes_the_fast_path() {
        use nfs_rewrite::corpus::{generate, Expect};
        let mut w = World::new();
        let handles = Arc::new(HandleTable::new(4096));
        let calls = virtual_calls(&mut w, &handles);
        let vfhs: Vec<[u8; VFH_LEN]> = w.vfh_of.values().copied().collect();
        let mut stage = NfsStage::new(shared(handles, w.mch), 1024, 1000);
        let (mut punted, mut dropped) = (0, 0);
        for m in generate(&vfhs[0], &vfhs[1], 10_000, 11, 1, 1400) {
            let f = frame(CLIENT, VIRTUAL, &m.msg);
            let mut b = HeapBuffer::from_bytes(&f);
            match stage.process(&mut b) {
                Verdict::Punt(PuntReason::Application) if m.expect != Expect::Silent => {
                    assert_eq!(b.data(), &f[..], "{}: punted as it came", m.kind);
                    punted += 1;
                }
                v if m.expect == Expect::Silent => {
                    assert_eq!(v, NfsDrop::Malformed.drop(), "{}", m.kind);
                    dropped += 1;
                }
                v => panic!("{} ({:?}): {v:?}", m.kind, m.expect),
            }
        }
        assert_eq!(stage.counters.calls_rewritten, 0);
        assert!(punted >= 8000 && dropped >= 900, "{punted} {dropped}");
        assert!(!calls.is_empty());
    }

    /// Fairness on the fast path: a client with its share of calls at servers has the next
    /// one dropped (counted), another client is not affected, an answer makes room, a
    /// retransmission is not counted twice.
    #[test]
    fn a_client_over_its_share_is_held_back() {
        use nfs_rewrite::admission::Limits;
        let mut w = World::new();
        let handles = Arc::new(HandleTable::new(4096));
        let (_, virt, _) = virtual_calls(&mut w, &handles).remove(0);
        let shared = shared_with(handles, w.mch, |s| {
            s.policy.admission = Limits {
                max_inflight: 2,
                rate: 0,
                burst: 0,
                ttl_ms: 1000,
            };
        });
        let mut stage = NfsStage::new(shared, 1024, 1000);
        let other = (Ipv4Addr::new(10, 0, 1, 3), 801);
        let send = |stage: &mut NfsStage, from: (Ipv4Addr, u16), xid: u32| {
            let mut m = virt.clone();
            m[..4].copy_from_slice(&xid.to_be_bytes());
            stage.process(&mut HeapBuffer::from_bytes(&frame(from, VIRTUAL, &m)))
        };
        let reply = |stage: &mut NfsStage, to: (Ipv4Addr, u16), xid: u32| {
            let mut r = rpc::Writer::new();
            r.accepted_reply(xid, 5); // SYSTEM_ERR: no results to rewrite
            stage.process(&mut HeapBuffer::from_bytes(&frame(SERVER, to, &r.buf)))
        };
        assert_eq!(send(&mut stage, CLIENT, 1), Verdict::Next);
        assert_eq!(
            send(&mut stage, CLIENT, 1),
            Verdict::Next,
            "a retransmission"
        );
        assert_eq!(send(&mut stage, CLIENT, 2), Verdict::Next);
        assert_eq!(send(&mut stage, CLIENT, 3), NfsDrop::ClientLimit.drop());
        assert_eq!(send(&mut stage, other, 1), Verdict::Next, "another client");
        assert_eq!(reply(&mut stage, CLIENT, 1), Verdict::Next);
        assert_eq!(
            send(&mut stage, CLIENT, 3),
            Verdict::Next,
            "an answer made room"
        );
        assert_eq!(send(&mut stage, CLIENT, 4), NfsDrop::ClientLimit.drop());
    }

    /// The export policy on the fast path: squashed credentials (checksums right), calls of
    /// a network outside the export's and of unmounted addresses left to the management core
    /// untouched.
    #[test]
    fn export_policy_on_the_fast_path() {
        use nfs_rewrite::policy::{self, Squash};
        let mut w = World::new();
        let handles = Arc::new(HandleTable::new(4096));
        let calls = virtual_calls(&mut w, &handles);
        assert!(calls.len() >= 8);
        let anon = (65534, 65533);
        let squashing = shared_with(handles.clone(), w.mch, |s| {
            s.servers[0].squash = Squash::All;
            (s.policy.anonymous_uid, s.policy.anonymous_gid) = anon;
        });
        let mut stage = NfsStage::new(squashing, 1024, 1000);
        for (p, virt, phys) in &calls {
            let mut b = HeapBuffer::from_bytes(&frame(CLIENT, VIRTUAL, virt));
            assert_eq!(stage.process(&mut b), Verdict::Next, "{}", p.name());
            let (_, dst, payload) = open(b.data());
            assert_eq!(dst, SERVER);
            let mut want = phys.clone();
            policy::squash(&mut want, Squash::All, anon, &mut Default::default());
            assert_ne!(&want, phys, "the capture's client is not anonymous");
            assert_eq!(payload, want, "{}: the physical call, squashed", p.name());
        }
        assert_eq!(stage.counters.squashed, calls.len() as u64);
        // Outside the export's networks, or not mounted: punted as they came.
        let elsewhere = shared_with(handles.clone(), w.mch, |s| {
            s.servers[0].clients = vec!["192.0.2.0/24".parse().unwrap()];
        });
        let unmounted = shared_with(handles.clone(), w.mch, |s| {
            s.policy.require_mount = true;
        });
        for shared in [elsewhere, unmounted.clone()] {
            let mut stage = NfsStage::new(shared, 1024, 1000);
            for (p, virt, _) in &calls {
                let f = frame(CLIENT, VIRTUAL, virt);
                let mut b = HeapBuffer::from_bytes(&f);
                let v = stage.process(&mut b);
                assert_eq!(v, Verdict::Punt(PuntReason::Application), "{}", p.name());
                assert_eq!(b.data(), &f[..]);
            }
        }
        // Once the client mounted, its calls go.
        unmounted.policy.mounted.insert(CLIENT.0);
        let mut stage = NfsStage::new(unmounted, 1024, 1000);
        for (_, virt, phys) in &calls {
            let mut b = HeapBuffer::from_bytes(&frame(CLIENT, VIRTUAL, virt));
            assert_eq!(stage.process(&mut b), Verdict::Next);
            assert_eq!(&open(b.data()).2, phys);
        }
    }

    #[test]
    fn calls_and_replies_through_the_stage() {
        let frames = capture("nfs3-udp-ganesha.pcap").unwrap();
        let mut w = World::new();
        let handles = Arc::new(HandleTable::new(4096));
        let mut stage = NfsStage::new(shared(handles.clone(), w.mch), 1024, 1000);
        let mut probe = NfsStage::new(shared(handles.clone(), w.mch), 1024, 1000);
        let (mut calls, mut replies, mut checked) = (0, 0, 0);
        let mut procs = HashMap::new();
        for m in messages(&frames) {
            match rpc::parse(&m.bytes).unwrap() {
                rpc::Message::Call(c) if c.prog == rpc::program::NFS => {
                    let p = Proc::from_u32(c.proc_).unwrap();
                    let hs = call_handles(p, &m.bytes, c.args_at);
                    if hs.is_empty() {
                        continue;
                    }
                    for &(at, len) in &hs {
                        w.adopt(&m.bytes[at + 4..at + 4 + len]);
                        let vfh = w.vfh_of[&m.bytes[at + 4..at + 4 + len]];
                        let v = VirtualHandle::verify(&w.key, &vfh).unwrap();
                        handles.insert(v.hid, &m.bytes[at + 4..at + 4 + len]);
                    }
                    let virt = replace_handles(&m.bytes, &hs, |pfh| w.vfh_of[pfh].to_vec());
                    procs.insert(c.xid, p);
                    let mut b = HeapBuffer::from_bytes(&frame(CLIENT, VIRTUAL, &virt));
                    assert_eq!(stage.process(&mut b), Verdict::Next, "{}", p.name());
                    let (src, dst, payload) = open(b.data());
                    assert_eq!(
                        (src, dst),
                        (CLIENT, SERVER),
                        "to the server, from the client"
                    );
                    assert_eq!(payload, m.bytes, "{}: the physical call", p.name());
                    calls += 1;
                    // The UDP checksum is updated, not recomputed: a datagram corrupted on
                    // the way in still fails it on the way out, and one sent without a
                    // checksum goes on without one.
                    let mut bad = frame(CLIENT, VIRTUAL, &virt);
                    bad[14 + 20 + 8] ^= 0x10; // the xid's top byte
                    let mut b = HeapBuffer::from_bytes(&bad);
                    assert_eq!(probe.process(&mut b), Verdict::Next);
                    let ip = Ipv4Packet::new_checked(&b.data()[14..]).unwrap();
                    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
                    assert!(!udp.verify_checksum(ip.src_addr(), ip.dst_addr()));
                    let mut none = frame(CLIENT, VIRTUAL, &virt);
                    none[14 + 20 + 6..14 + 20 + 8].fill(0);
                    let mut b = HeapBuffer::from_bytes(&none);
                    assert_eq!(probe.process(&mut b), Verdict::Next);
                    assert_eq!(b.data()[14 + 20 + 6..14 + 20 + 8], [0, 0]);
                }
                rpc::Message::Reply(_) => {
                    let mut b = HeapBuffer::with_capacity(m.bytes.len() + 4096, 128);
                    let f = frame(SERVER, CLIENT, &m.bytes);
                    b.append(f.len()).unwrap();
                    b.data_mut().copy_from_slice(&f);
                    let v = stage.process(&mut b);
                    if v == Verdict::Punt(PuntReason::Application) {
                        continue; // a reply to a call the test did not send (MOUNT, no handle)
                    }
                    assert_eq!(v, Verdict::Next);
                    let (src, dst, payload) = open(b.data());
                    assert_eq!((src, dst), (VIRTUAL, CLIENT), "from the virtual server");
                    // Every handle the client now sees is a VFH of ours, every fattr3 virtual.
                    let rpc::Message::Reply(r) = rpc::parse(&payload).unwrap() else {
                        panic!("not a reply")
                    };
                    let p = procs[&r.xid()];
                    if let rpc::Reply::Accepted {
                        stat: rpc::AcceptStat::Success { results_at },
                        ..
                    } = r
                    {
                        let (mut vfhs, mut fattrs) = (0, 0);
                        nfs3::walk_reply(p, &payload, results_at, |f| match f {
                            Field::Handle { at, len } => {
                                assert_eq!(len, VFH_LEN);
                                VirtualHandle::decode(&w.key, &payload[at + 4..at + 44], |_| {
                                    Some(w.mch)
                                })
                                .unwrap();
                                vfhs += 1;
                            }
                            Field::Fattr { at } => {
                                assert_eq!(payload[at + 44..at + 52], VFSID.to_be_bytes());
                                fattrs += 1;
                            }
                            _ => {}
                        })
                        .unwrap();
                        checked += vfhs + fattrs;
                    }
                    replies += 1;
                }
                _ => {}
            }
        }
        let mut learned = 0;
        stage.take_events(|e| {
            if let nfs_rewrite::datapath::NfsEvent::Mapping { hid, pfh, len } = e {
                assert!(len > 0);
                handles.insert(hid, &pfh[..usize::from(len)]);
                learned += 1;
            }
        });
        eprintln!("stage: {calls} calls, {replies} replies ({checked} handles and attributes checked), {learned} mappings learned");
        assert!(calls >= 8 && replies >= 8 && learned > 0 && checked > 20);
        assert_eq!(stage.counters.calls.iter().sum::<u64>(), calls);
        assert_eq!(stage.counters.calls_rewritten, calls);
        assert_eq!(stage.counters.replies_rewritten, replies);
    }

    /// A call (to the virtual server, or straight to the server) and its reply name the same
    /// worker, whatever the number of workers; calls spread over the workers; a later
    /// fragment (no UDP header) names none.
    #[test]
    fn a_call_and_its_reply_have_one_owner() {
        use packet::claim::Claimed;
        let w = World::new();
        let stage = NfsStage::new(shared(Arc::new(HandleTable::new(64)), w.mch), 64, 1000);
        let owner = |f: &[u8], n: usize| stage.owner(f, &Claimed::validate(f, 0).unwrap(), n);
        for workers in [1, 2, 3, 8] {
            let mut seen = vec![0u32; workers];
            for k in 0..512u32 {
                let client = (
                    Ipv4Addr::new(10, 0, 1, 2 + (k % 7) as u8),
                    600 + (k % 300) as u16,
                );
                let mut call = rpc::Writer::new();
                call.call(0x100 + k * 13, rpc::program::NFS, 3, 1)
                    .opaque(&[0; 40]);
                let mut reply = rpc::Writer::new();
                reply.accepted_reply(0x100 + k * 13, 0).u32(0);
                let via_virtual = owner(&frame(client, VIRTUAL, &call.buf), workers).unwrap();
                let direct = owner(&frame(client, SERVER, &call.buf), workers).unwrap();
                let back = owner(&frame(SERVER, client, &reply.buf), workers).unwrap();
                assert_eq!(
                    (via_virtual, direct),
                    (back, back),
                    "call {k}, {workers} workers"
                );
                assert!(back < workers);
                seen[back] += 1;
            }
            assert!(
                seen.iter().all(|&c| c > 512 / workers as u32 / 2),
                "{workers} workers: {seen:?}"
            );
        }
        let mut reply = rpc::Writer::new();
        reply.accepted_reply(7, 0).fixed(&[0; 64]);
        let mut later = frame(SERVER, CLIENT, &reply.buf);
        later[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes()); // offset 128 bytes
        let ip = Ipv4Packet::new_checked(&mut later[14..]).unwrap();
        let mut ip = ip;
        ip.fill_checksum();
        let c = Claimed::validate(&later, 0).unwrap();
        assert!(c.fragment);
        assert_eq!(stage.owner(&later, &c, 4), None);
    }

    #[test]
    fn what_the_fast_path_leaves_alone_or_hands_over() {
        let w = World::new();
        let mut stage = NfsStage::new(shared(Arc::new(HandleTable::new(64)), w.mch), 64, 1000);
        // Other UDP traffic: untouched.
        let other = frame(CLIENT, (SERVER.0, 53), b"dns");
        let mut b = HeapBuffer::from_bytes(&other);
        assert_eq!(stage.process(&mut b), Verdict::Next);
        assert_eq!(b.data(), &other[..]);
        // MOUNT to the virtual server's NFS port, NULL: the management core's.
        let mut m = rpc::Writer::new();
        m.call(1, rpc::program::MOUNT, 3, 1).opaque(b"/");
        assert_eq!(
            stage.process(&mut HeapBuffer::from_bytes(&frame(CLIENT, VIRTUAL, &m.buf))),
            Verdict::Punt(PuntReason::Application)
        );
        let mut m = rpc::Writer::new();
        m.call(2, rpc::program::NFS, 3, 0);
        assert_eq!(
            stage.process(&mut HeapBuffer::from_bytes(&frame(CLIENT, VIRTUAL, &m.buf))),
            Verdict::Punt(PuntReason::Application)
        );
        // A forged handle: the management core answers NFS3ERR_BADHANDLE.
        let mut m = rpc::Writer::new();
        m.call(3, rpc::program::NFS, 3, 1).opaque(&[7; 40]);
        assert_eq!(
            stage.process(&mut HeapBuffer::from_bytes(&frame(CLIENT, VIRTUAL, &m.buf))),
            Verdict::Punt(PuntReason::Application)
        );
        // A server reply this worker did not see the call of: the management core's (it may
        // have forwarded the call itself).
        let mut r = rpc::Writer::new();
        r.accepted_reply(99, 0).u32(0);
        assert_eq!(
            stage.process(&mut HeapBuffer::from_bytes(&frame(SERVER, CLIENT, &r.buf))),
            Verdict::Punt(PuntReason::Application)
        );
        // Garbage to the virtual server: dropped as malformed (no RPC header to answer).
        assert_eq!(
            stage.process(&mut HeapBuffer::from_bytes(&frame(CLIENT, VIRTUAL, b"xx"))),
            NfsDrop::Malformed.drop()
        );
        // A call whose arguments stop short: the management core's, for GARBAGE_ARGS.
        let mut m = rpc::Writer::new();
        m.call(4, rpc::program::NFS, 3, Proc::Lookup as u32).u32(40);
        assert_eq!(
            stage.process(&mut HeapBuffer::from_bytes(&frame(CLIENT, VIRTUAL, &m.buf))),
            Verdict::Punt(PuntReason::Application)
        );
    }
}
