//! The handle rewrite itself, on a packet buffer holding one RPC message at `msg_at`:
//!
//! - calls: every VFH argument is verified (HVC, MCH), mapped to its physical handle through
//!   the [`HandleTable`], and spliced in (the message changes length: 40 → n bytes); handles of
//!   two servers in one call (RENAME, LINK) are refused with NFS3ERR_XDEV;
//! - replies: every `fattr3` gets the virtual fsid and `fileid` → VIN; every physical handle
//!   becomes the VFH computed from its own attributes (paired by adjacency, which XDR makes
//!   exact: LOOKUP/CREATE put the object's `post_op_attr` right after its handle, READDIRPLUS
//!   puts the entry's `post_op_fh3` right after its attributes); READDIR file ids → VINs. New
//!   handle id → PFH mappings go to `on_mapping` (the worker forwards them to the management core,
//!   the table's single writer).
//!
//! Every edit is recorded in a checksum [`Adjust`]ment that comes back with the verdict: XDR
//! keeps fields 4-byte aligned and handles padded to 4 bytes, so edits sit at even offsets of the
//! UDP datagram and spliced data moves by even amounts — the caller updates the UDP checksum
//! incrementally (RFC 1624) instead of summing the datagram again, and a datagram that arrived
//! corrupted stays detectably corrupted.
//!
//! Nothing here allocates: fields are collected into caller-provided scratch ([`Fields`]); a
//! reply with more fields than the scratch holds is handed to the slow path.

use crate::tables::{HandleTable, PFH_MAX};
use crate::vfh::{self, HandleKey, MacMemo, VfhError, VirtualHandle, VFH_LEN};
use crate::wire::nfs3::{self, stat, Proc};
use crate::wire::Field;
use packet::checksum::Adjust;
use packet::{Buffer, BufferError};

/// What the rewrite needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub key: &'a HandleKey,
    /// The worker's memo of MACs (an empty one on the management core).
    pub memo: &'a MacMemo,
    pub handles: &'a HandleTable,
    /// The fsid every client sees.
    pub virtual_fsid: u64,
    /// Transfer limits that keep every datagram under the MTU.
    pub limits: Limits,
}

/// Transfer sizes the router imposes so that no call or reply of a UDP client needs IP
/// fragmentation: READ counts and FSINFO's rtmax/wtmax/dtpref are clamped to `max_io`; READDIR
/// `count` and READDIRPLUS `dircount`/`maxcount` to `max_dir` (the rewritten reply grows: VFHs
/// are longer than most physical handles, so `max_dir` leaves room for that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_io: u32,
    pub max_dir: u32,
}

impl Limits {
    /// No clamping (tests that compare with captures of unclamped traffic).
    pub const UNLIMITED: Limits = Limits {
        max_io: u32::MAX,
        max_dir: u32::MAX,
    };

    /// Limits for a path MTU: the IP and UDP headers, the RPC reply header and the largest
    /// fixed part of a READ reply (status, post_op_attr, count, eof, length) come off; the data
    /// size is rounded down to 512 bytes. READDIR replies get three quarters of the datagram
    /// (a VFH adds up to 36 bytes to an entry of at least ~120).
    pub fn for_mtu(mtu: u16) -> Self {
        const OVERHEAD: u32 = 20 + 8 + 24 + 4 + 4 + 84 + 4 + 4 + 4;
        let room = u32::from(mtu).saturating_sub(OVERHEAD);
        Limits {
            max_io: (room & !511).max(512),
            max_dir: (u32::from(mtu).saturating_sub(20 + 8 + 24) * 3 / 4).max(512),
        }
    }
}

/// Scratch for the fields of one message.
#[derive(Debug)]
pub struct Fields<'s> {
    items: &'s mut [Field],
    n: usize,
    overflow: bool,
}

impl<'s> Fields<'s> {
    pub fn new(items: &'s mut [Field]) -> Self {
        Fields {
            items,
            n: 0,
            overflow: false,
        }
    }
    fn push(&mut self, f: Field) {
        match self.items.get_mut(self.n) {
            Some(slot) => {
                *slot = f;
                self.n += 1;
            }
            None => self.overflow = true,
        }
    }
    fn as_slice(&self) -> &[Field] {
        &self.items[..self.n]
    }
}

/// What to do with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallVerdict {
    /// Rewritten: send to server `sid`; the message grew by `delta` bytes (negative: shrank).
    /// Transfer sizes above the [`Limits`] were lowered. `dir_pfs`: the physical file
    /// system of the first handle (READDIR file ids of the reply are relative to it).
    Forward {
        sid: u16,
        delta: isize,
        dir_pfs: u64,
        csum: Adjust,
    },
    /// No handle in the arguments (NULL).
    NoHandle,
    /// A handle of the router's virtual tree: the management core answers.
    Virtual,
    /// Answer the client with this nfsstat3 (BADHANDLE, STALE, XDEV).
    Refuse(u32),
    /// The physical handle of this VFH is not known: the management core recovers it.
    Recover(VirtualHandle),
    /// Not decodable, or the buffer could not grow: drop and count.
    Malformed,
}

/// What happened to a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyVerdict {
    /// Rewritten in place; the message grew by `delta` bytes.
    Rewritten {
        delta: isize,
        csum: Adjust,
    },
    /// A handle without attributes to derive its VFH from (e.g. MNT), or more fields than the
    /// scratch holds: the management core finishes it.
    SlowPath,
    Malformed,
}

#[inline]
fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Whether `growth` bytes of splices fit: when the total fits in the larger of headroom and
/// tailroom, every single splice finds room on some side, whichever it picks first.
fn fits<B: Buffer>(pkt: &B, growth: usize) -> bool {
    growth <= pkt.headroom().max(pkt.tailroom())
}

/// Replace the opaque handle at `at` (length word included, `old_len` data bytes) by `new`.
fn replace_handle<B: Buffer>(
    pkt: &mut B,
    at: usize,
    old_len: usize,
    new: &[u8],
    csum: &mut Adjust,
) -> Result<isize, BufferError> {
    let old = 4 + pad4(old_len);
    let want = 4 + pad4(new.len());
    csum.remove(
        pkt.data()
            .get(at..at + old)
            .ok_or(BufferError::OutOfRange)?,
    );
    pkt.splice(at, old, want)?;
    let d = pkt.data_mut();
    let slot = d.get_mut(at..at + want).ok_or(BufferError::OutOfRange)?;
    slot[..4].copy_from_slice(&(new.len() as u32).to_be_bytes());
    slot[4..4 + new.len()].copy_from_slice(new);
    slot[4 + new.len()..].fill(0);
    csum.add(slot);
    Ok(want as isize - old as isize)
}

/// Overwrite `m[at..at + new.len()]` (in bounds: the caller read it), recording the edit.
fn put(m: &mut [u8], at: usize, new: &[u8], csum: &mut Adjust) {
    let slot = &mut m[at..at + new.len()];
    csum.remove(slot);
    slot.copy_from_slice(new);
    csum.add(new);
}

/// The longest symlink target a call may carry: POSIX's PATH_MAX, what Linux and ganesha
/// take. (RFC 1813's 1024-byte MNTPATHLEN bounds MOUNT paths, which the MOUNT decoder holds to.)
pub const PATH_LIMIT: usize = nfs3::PATH_MAX;

/// What a server answers a call naming `name` with when the name is not one it could hold.
fn name_refusal(name: &[u8]) -> Option<u32> {
    if name.len() > nfs3::NAME_MAX {
        Some(stat::NAMETOOLONG)
    } else if name.is_empty() || name.iter().any(|&b| b == b'/' || b == 0) {
        Some(stat::INVAL)
    } else {
        None
    }
}

/// What the call rewrite asks about the configured servers' exports.
pub trait Exports {
    /// The current mount checksum of server `sid`; None: not configured (its handles are
    /// stale).
    fn mch(&self, sid: u16) -> Option<u32>;
    /// Whether the caller may use server `sid`'s export (the export policy's client
    /// networks); a handle of one it may not gets NFS3ERR_ACCES.
    fn permits(&self, _sid: u16) -> bool {
        true
    }
}

/// A bare mount-checksum lookup: every export permitted.
impl<F: Fn(u16) -> Option<u32>> Exports for F {
    fn mch(&self, sid: u16) -> Option<u32> {
        self(sid)
    }
}

/// Turn the VFHs of a call into physical handles. `exports` knows the current mount checksum
/// of every configured server and whether the caller may use it.
///
/// Names and paths are checked first, as the border: an empty name, or one with `/` or NUL,
/// is refused with NFS3ERR_INVAL, one above 255 bytes (or a symlink target above
/// [`PATH_LIMIT`]) with NFS3ERR_NAMETOOLONG.
pub fn devirtualize_call<B: Buffer>(
    pkt: &mut B,
    msg_at: usize,
    proc_: Proc,
    args_at: usize,
    ctx: &Context<'_>,
    exports: impl Exports,
) -> CallVerdict {
    let mut found = [(0usize, 0usize); 2];
    let mut n = 0;
    let mut extra = false;
    // The first name or path the server would refuse: faulty requests never reach it.
    let mut refused = None;
    let Some(msg) = pkt.data().get(msg_at..) else {
        return CallVerdict::Malformed;
    };
    let walked = nfs3::walk_call(proc_, msg, args_at, |f| match f {
        Field::Handle { at, len } => match found.get_mut(n) {
            Some(s) => {
                *s = (at, len);
                n += 1;
            }
            None => extra = true,
        },
        Field::Name { at, len } => {
            refused = refused.or(name_refusal(msg.get(at + 4..at + 4 + len).unwrap_or(&[])));
        }
        Field::Path { len, .. } if len > PATH_LIMIT => {
            refused = refused.or(Some(stat::NAMETOOLONG));
        }
        _ => {}
    });
    let Ok(args_end) = walked else {
        return CallVerdict::Malformed;
    };
    // Bytes after the arguments: a length that disagrees with the message. (On the fast path
    // a frame's Ethernet padding would count too; calls are never that short, and the
    // management core, which sees the exact datagram, decides then.)
    if extra || args_end != msg.len() {
        return CallVerdict::Malformed;
    }
    if let Some(st) = refused {
        return CallVerdict::Refuse(st);
    }
    if n == 0 {
        return CallVerdict::NoHandle;
    }
    let mut vfhs = [None; 2];
    let mut sid = None;
    for (i, &(at, len)) in found[..n].iter().enumerate() {
        if len != VFH_LEN {
            return CallVerdict::Refuse(stat::BADHANDLE);
        }
        let bytes = &msg[at + 4..at + 4 + len];
        let v = match VirtualHandle::decode_memo(ctx.key, ctx.memo, bytes, |s| exports.mch(s)) {
            Ok(v) => v,
            Err(VfhError::BadHandle) => return CallVerdict::Refuse(stat::BADHANDLE),
            Err(VfhError::Stale) => return CallVerdict::Refuse(stat::STALE),
        };
        if v.sid == 0 || v.flags & vfh::FLAG_VIRTUAL_DIR != 0 {
            return CallVerdict::Virtual;
        }
        match sid {
            None if !exports.permits(v.sid) => return CallVerdict::Refuse(stat::ACCES),
            None => sid = Some(v.sid),
            Some(s) if s != v.sid => return CallVerdict::Refuse(stat::XDEV),
            Some(_) => {}
        }
        vfhs[i] = Some(v);
    }
    // Look every handle up before touching the packet.
    let mut pfh = [[0u8; PFH_MAX]; 2];
    let mut plen = [0usize; 2];
    for i in 0..n {
        let Some(v) = vfhs[i] else {
            return CallVerdict::Malformed;
        };
        match ctx.handles.get(v.hid, &mut pfh[i]) {
            Some(l) => plen[i] = l,
            None => return CallVerdict::Recover(v),
        }
    }
    let growth = (0..n).map(|i| pad4(plen[i]).saturating_sub(VFH_LEN)).sum();
    if !fits(pkt, growth) {
        return CallVerdict::Malformed;
    }
    let mut delta = 0;
    let mut csum = Adjust::default();
    for i in (0..n).rev() {
        match replace_handle(
            pkt,
            msg_at + found[i].0,
            VFH_LEN,
            &pfh[i][..plen[i]],
            &mut csum,
        ) {
            Ok(d) => delta += d,
            Err(_) => return CallVerdict::Malformed,
        }
    }
    // Transfer sizes sit at the end of the arguments, after every handle.
    let end = args_end as isize + delta;
    let l = ctx.limits;
    let clamps: &[(isize, u32)] = match proc_ {
        Proc::Read | Proc::Readdir => &[(
            4,
            if proc_ == Proc::Read {
                l.max_io
            } else {
                l.max_dir
            },
        )],
        Proc::Readdirplus => &[(8, l.max_dir), (4, l.max_dir)],
        _ => &[],
    };
    for &(back, max) in clamps {
        let Some(slot) = usize::try_from(end - back)
            .ok()
            .and_then(|at| pkt.data_mut().get_mut(msg_at + at..msg_at + at + 4))
        else {
            return CallVerdict::Malformed;
        };
        let v = u32::from_be_bytes([slot[0], slot[1], slot[2], slot[3]]);
        if v > max {
            put(slot, 0, &max.to_be_bytes(), &mut csum);
        }
    }
    CallVerdict::Forward {
        sid: sid.unwrap_or(0),
        delta,
        dir_pfs: vfhs[0].map_or(0, |v| v.pfs),
        csum,
    }
}

/// Turn the physical handles and attributes of a reply from server `sid` into virtual ones.
/// `dir_pfs` is the file system of the directory the call named (READDIR file ids carry no fsid).
#[allow(clippy::too_many_arguments)]
pub fn virtualize_reply<B: Buffer>(
    pkt: &mut B,
    msg_at: usize,
    proc_: Proc,
    results_at: usize,
    sid: u16,
    mch: u32,
    dir_pfs: u64,
    ctx: &Context<'_>,
    scratch: &mut [Field],
    mut on_mapping: impl FnMut(u64, &[u8]),
) -> ReplyVerdict {
    let mut fields = Fields::new(scratch);
    let Some(msg) = pkt.data().get(msg_at..) else {
        return ReplyVerdict::Malformed;
    };
    if nfs3::walk_reply(proc_, msg, results_at, |f| fields.push(f)).is_err() {
        return ReplyVerdict::Malformed;
    }
    if fields.overflow {
        return ReplyVerdict::SlowPath;
    }
    let list = fields.as_slice();
    // Which attributes belong to the handle at index i: the object's post_op_attr right after
    // it (LOOKUP, CREATE, MKDIR, SYMLINK, MKNOD), or the READDIRPLUS entry's attributes right
    // before its post_op_fh3.
    let paired = |i: usize| -> Option<usize> {
        let Field::Handle { at, len } = list[i] else {
            return None;
        };
        let end = at + 4 + pad4(len);
        match (i.checked_sub(1).map(|j| list[j]), list.get(i + 1)) {
            (_, Some(&Field::Fattr { at: a })) if a == end + 4 => Some(a),
            (Some(Field::Fattr { at: a }), _) if a + Field::FATTR_LEN + 4 == at => Some(a),
            _ => None,
        }
    };
    // Read-only checks first, so a slow-path exit leaves the packet untouched: every handle
    // has its attributes, and the message's growth fits the buffer.
    let mut growth = 0usize;
    for (i, f) in list.iter().enumerate() {
        if let Field::Handle { len, .. } = *f {
            // An empty handle is valid XDR but names nothing: it could never be mapped back.
            if len == 0 {
                return ReplyVerdict::Malformed;
            }
            if paired(i).is_none() {
                return ReplyVerdict::SlowPath;
            }
            growth += (4 + VFH_LEN).saturating_sub(4 + pad4(len));
        }
    }
    if !fits(pkt, growth) {
        return ReplyVerdict::SlowPath;
    }
    // One backward pass: a splice never moves the bytes before it, so every field still to be
    // visited sits at its walked offset, and a handle's attributes are still physical when it
    // is visited (those after it were read before being rewritten: kept in `after`).
    let vfsid = ctx.virtual_fsid.to_be_bytes();
    let mut after: Option<(usize, u64, u64)> = None;
    let mut delta = 0isize;
    let mut csum = Adjust::default();
    for i in (0..list.len()).rev() {
        match list[i] {
            Field::Fattr { at } => {
                let d = pkt.data_mut();
                let Some(m) = d.get_mut(msg_at..) else {
                    return ReplyVerdict::Malformed;
                };
                let (Some(pfs), Some(pin)) = (
                    be64(m, at + Field::FATTR_FSID),
                    be64(m, at + Field::FATTR_FILEID),
                ) else {
                    return ReplyVerdict::Malformed;
                };
                let vin = vfh::virtual_inode_memo(ctx.key, ctx.memo, sid, pfs, pin);
                put(m, at + Field::FATTR_FSID, &vfsid, &mut csum);
                put(m, at + Field::FATTR_FILEID, &vin.to_be_bytes(), &mut csum);
                after = Some((at, pfs, pin));
            }
            Field::FileId { at } => {
                let d = pkt.data_mut();
                let Some(m) = d.get_mut(msg_at..) else {
                    return ReplyVerdict::Malformed;
                };
                let Some(pin) = be64(m, at) else {
                    return ReplyVerdict::Malformed;
                };
                let vin = vfh::virtual_inode_memo(ctx.key, ctx.memo, sid, dir_pfs, pin);
                put(m, at, &vin.to_be_bytes(), &mut csum);
            }
            Field::Handle { at, len } => {
                let Some(a) = paired(i) else {
                    return ReplyVerdict::SlowPath;
                };
                let (pfs, pin) = match after {
                    Some((fa, pfs, pin)) if fa == a => (pfs, pin),
                    _ => {
                        let m = &pkt.data()[msg_at..];
                        match (
                            be64(m, a + Field::FATTR_FSID),
                            be64(m, a + Field::FATTR_FILEID),
                        ) {
                            (Some(pfs), Some(pin)) => (pfs, pin),
                            _ => return ReplyVerdict::Malformed,
                        }
                    }
                };
                let mut pfh = [0u8; PFH_MAX];
                let Some(phys) = pkt.data().get(msg_at + at + 4..msg_at + at + 4 + len) else {
                    return ReplyVerdict::Malformed;
                };
                pfh[..len].copy_from_slice(phys);
                let v = VirtualHandle::for_object(ctx.key, sid, mch, pfs, pin, &pfh[..len]);
                on_mapping(v.hid, &pfh[..len]);
                match replace_handle(
                    pkt,
                    msg_at + at,
                    len,
                    &v.encode_memo(ctx.key, ctx.memo),
                    &mut csum,
                ) {
                    Ok(d) => delta += d,
                    Err(_) => return ReplyVerdict::Malformed,
                }
            }
            // Names and paths are reported for calls only.
            Field::Name { .. } | Field::Path { .. } => {}
            Field::FsinfoSizes { at } => {
                // rtmax, rtpref, wtmax, wtpref, dtpref.
                let Some(m) = pkt.data_mut().get_mut(msg_at + at..msg_at + at + 28) else {
                    return ReplyVerdict::Malformed;
                };
                for (off, max) in [
                    (0, ctx.limits.max_io),
                    (4, ctx.limits.max_io),
                    (12, ctx.limits.max_io),
                    (16, ctx.limits.max_io),
                    (24, ctx.limits.max_dir),
                ] {
                    let v = u32::from_be_bytes([m[off], m[off + 1], m[off + 2], m[off + 3]]);
                    if v > max {
                        put(m, off, &max.to_be_bytes(), &mut csum);
                    }
                }
            }
        }
    }
    ReplyVerdict::Rewritten { delta, csum }
}
