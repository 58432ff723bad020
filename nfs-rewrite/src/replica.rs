//! Replication (Mirage: "2+ servers → 1 more reliable server: unmodified primary, logging"):
//! an export whose server has a **backup** gets every change applied to the backup too, in
//! the primary's order.
//!
//! - The calls that change an export (SETATTR, WRITE, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE,
//!   RMDIR, RENAME, LINK, COMMIT), and its LOOKUPs, come to the management core (the fast path
//!   punts them; TCP calls are here anyway). They go to the primary as any call does; the
//!   client's reply is the primary's.
//! - When the primary has answered a change with NFS3_OK, the call — as the client sent it,
//!   with virtual handles — is appended to the export's **log** under the next sequence
//!   number, in the order the primary answered (for calls of one client on one file, the order
//!   it sent them; calls that were at the primary at the same time carry no order a client
//!   could rely on either).
//! - The log is applied to the backup one entry at a time, in sequence order: each call's
//!   virtual handles become the backup's physical handles, and it is sent with the client's
//!   credential; an entry leaves the log when the backup has answered it. A backup that is
//!   slow or down falls behind (the log grows, bounded) and catches up when it answers again.
//! - The backup's handle of a file is learned from its replies to the applied calls (CREATE,
//!   MKDIR, SYMLINK, MKNOD), or found by name: every LOOKUP and every creation the primary
//!   answered records the file's (directory, name), and a handle the backup's table lacks is
//!   looked up on the backup along that chain from the export's root.

use crate::datapath::{NfsShared, Pair};
use crate::rewrite::{devirtualize_call, CallVerdict, Context, Limits};
use crate::tables::{HandleTable, PFH_MAX};
use crate::vfh::{MacMemo, VFH_LEN};
use crate::wire::nfs3::{self, stat, Proc};
use crate::wire::rpc::{self, Writer};
use crate::wire::{Cursor, Field};
use packet::{Buffer, HeapBuffer};
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

/// Whether the calls of procedure `p` on a replicated export go through the management core.
#[inline]
pub fn tracked(p: Proc) -> bool {
    mutates(p) || p == Proc::Lookup
}

/// Whether procedure `p` changes the export.
#[inline]
pub fn mutates(p: Proc) -> bool {
    matches!(
        p,
        Proc::Setattr
            | Proc::Write
            | Proc::Create
            | Proc::Mkdir
            | Proc::Symlink
            | Proc::Mknod
            | Proc::Remove
            | Proc::Rmdir
            | Proc::Rename
            | Proc::Link
            | Proc::Commit
    )
}

/// Log bounds: entries, and bytes of calls.
const LOG_MAX_ENTRIES: usize = 1 << 16;
const LOG_MAX_BYTES: usize = 256 << 20;
/// An applied call not answered for this long is sent again (same xid: the backup's
/// duplicate request cache answers a repeat).
const RESEND_MS: u64 = 1000;
/// Calls at the primary whose replies are awaited at most this long.
const PENDING_MS: u64 = 60_000;
/// (directory, name) records kept at most.
const NAMES_MAX: usize = 1 << 20;
/// The backup's handle table.
const BACKUP_HANDLES: usize = 1 << 18;
/// The xids of replication's own calls: this byte on top.
const XID_TAG: u32 = 0x5e00_0000;

/// Counters of one replicated export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplStats {
    /// Changes logged (answered NFS3_OK by the primary), applied to the backup.
    pub logged: u64,
    pub applied: u64,
    /// Applied calls the backup answered with an error (the copies differ from then on).
    pub conflicts: u64,
    /// Entries that could not be applied: a handle the backup's copy of which was not found.
    pub unresolved: u64,
    /// Backup handles found by LOOKUP along a name chain.
    pub resolved: u64,
    /// Calls to the backup sent again after `RESEND_MS`.
    pub resends: u64,
    /// Changes not logged for lack of room (the backup needs a resynchronisation).
    pub overflow: u64,
    /// The most entries the log held, and the longest an entry waited for the backup (ms).
    pub depth_max: u64,
    pub lag_ms_max: u64,
}

struct Entry {
    seq: u64,
    proc_: Proc,
    /// The call as the client sent it (virtual handles).
    msg: Vec<u8>,
    /// The handle id of the object the call created, as the primary's reply named it.
    created: Option<u64>,
    logged_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// Entry `seq` sent to the backup.
    Apply(u64),
    /// A LOOKUP on the backup for the copy of handle `hid`.
    Resolve(u64),
}

struct Inflight {
    xid: u32,
    work: Work,
    payload: Vec<u8>,
    sent_at: u64,
    tries: u32,
}

/// One replicated export.
pub struct Replicated {
    /// The primary's SID (the export's, in every handle clients hold) and the backup's.
    pub sid: u16,
    pub backup: u16,
    /// The backup's handles, by handle id.
    handles: HandleTable,
    root: Option<u64>,
    log: VecDeque<Entry>,
    log_bytes: usize,
    next_seq: u64,
    /// The last sequence number the backup answered.
    pub acked: u64,
    inflight: Option<Inflight>,
    pub stats: ReplStats,
    pub last_error: Option<String>,
}

impl std::fmt::Debug for Replicated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicated")
            .field("sid", &self.sid)
            .field("backup", &self.backup)
            .field("log", &self.log.len())
            .field("acked", &self.acked)
            .finish()
    }
}

/// A replicated export as `routerctl nfs replication` shows it.
#[derive(Debug, Clone)]
pub struct ReplReport {
    pub sid: u16,
    pub backup: u16,
    pub backup_ready: bool,
    pub depth: usize,
    pub log_bytes: usize,
    pub logged_seq: u64,
    pub acked: u64,
    /// How long the oldest entry has waited (ms).
    pub lag_ms: u64,
    /// What is at the backup now ("apply 17", "lookup"), and how many times it was sent.
    pub inflight: Option<(String, u32)>,
    pub backup_handles: usize,
    pub stats: ReplStats,
    pub last_error: Option<String>,
}

struct Pending {
    export: usize,
    proc_: Proc,
    msg: Vec<u8>,
    at: u64,
}

/// Replication of every replicated export (the management core's).
#[derive(Default)]
pub struct Replication {
    pub exports: Vec<Replicated>,
    pending: HashMap<u32, Pending>,
    next_token: u32,
    xid: u32,
    outbox: Vec<((Ipv4Addr, u16), Vec<u8>)>,
    /// Object handle id → (directory handle id, name), and back.
    names: HashMap<u64, (u64, Vec<u8>)>,
    by_name: HashMap<(u64, Vec<u8>), u64>,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("exports", &self.exports)
            .field("pending", &self.pending.len())
            .field("names", &self.names.len())
            .finish()
    }
}

/// The handle ids of a call's handles and its first name.
fn call_parts(p: Proc, msg: &[u8]) -> Option<(Vec<u64>, Vec<Vec<u8>>)> {
    let rpc::Message::Call(c) = rpc::parse(msg).ok()? else {
        return None;
    };
    let (mut hids, mut names) = (Vec::new(), Vec::new());
    nfs3::walk_call(p, msg, c.args_at, |f| match f {
        Field::Handle { at, len } if len == VFH_LEN => {
            if let Some(b) = msg.get(at + 4..at + 4 + len) {
                // Verified when the call was decided; only the id is read here.
                let hid = u64::from_be_bytes(b[24..32].try_into().unwrap_or([0; 8]));
                hids.push(hid);
            }
        }
        Field::Name { at, len } => {
            if let Some(n) = msg.get(at + 4..at + 4 + len) {
                names.push(n.to_vec());
            }
        }
        _ => {}
    })
    .ok()?;
    Some((hids, names))
}

/// The status of an accepted reply and its first handle's bytes (the object of LOOKUP,
/// CREATE, …).
fn reply_parts(p: Proc, msg: &[u8]) -> Option<(u32, Option<Vec<u8>>)> {
    let Ok(rpc::Message::Reply(rpc::Reply::Accepted {
        stat: rpc::AcceptStat::Success { results_at },
        ..
    })) = rpc::parse(msg)
    else {
        return None;
    };
    let mut handle = None;
    let (st, _) = nfs3::walk_reply(p, msg, results_at, |f| {
        if let (Field::Handle { at, len }, None) = (f, &handle) {
            handle = msg.get(at + 4..at + 4 + len).map(<[u8]>::to_vec);
        }
    })
    .ok()
    .or_else(|| Some((Cursor::at(msg, results_at).u32().ok()?, 0)))?;
    Some((st, handle))
}

impl Replication {
    /// The replicated exports of `shared` (servers with a backup).
    pub fn new(shared: &NfsShared, xid_seed: u32) -> Self {
        let exports = shared
            .servers
            .iter()
            .filter_map(|s| match s.pair {
                Pair::Primary { backup } => Some(Replicated {
                    sid: s.sid,
                    backup,
                    handles: HandleTable::new(BACKUP_HANDLES),
                    root: None,
                    log: VecDeque::new(),
                    log_bytes: 0,
                    next_seq: 1,
                    acked: 0,
                    inflight: None,
                    stats: ReplStats::default(),
                    last_error: None,
                }),
                _ => None,
            })
            .collect();
        Replication {
            exports,
            xid: xid_seed & 0x00ff_ffff,
            ..Replication::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exports.is_empty()
    }

    /// Whether there are calls to send.
    pub fn has_output(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Calls for the backups.
    pub fn drain(&mut self) -> Vec<((Ipv4Addr, u16), Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    /// Whether `xid` is the reply to replication's call at a backup now.
    pub fn owns(&self, xid: u32) -> bool {
        xid & 0xff00_0000 == XID_TAG
            && self
                .exports
                .iter()
                .any(|x| x.inflight.as_ref().is_some_and(|i| i.xid == xid))
    }

    /// A call `msg` of procedure `p` on export `sid`, about to be forwarded to the primary:
    /// the token its transaction carries to [`Replication::replied`] (0: not replicated).
    pub fn track(&mut self, p: Proc, sid: u16, msg: &[u8], now: u64) -> u32 {
        let Some(export) = self.exports.iter().position(|x| x.sid == sid) else {
            return 0;
        };
        if !tracked(p) {
            return 0;
        }
        self.next_token = self.next_token.wrapping_add(1).max(1);
        self.pending.insert(
            self.next_token,
            Pending {
                export,
                proc_: p,
                msg: msg.to_vec(),
                at: now,
            },
        );
        self.next_token
    }

    /// The primary's reply (made virtual) to the call of `token`: names recorded, a change
    /// logged.
    pub fn replied(&mut self, token: u32, reply: &[u8], now: u64) {
        let Some(pd) = self.pending.remove(&token) else {
            return;
        };
        let Some((st, obj)) = reply_parts(pd.proc_, reply) else {
            return;
        };
        if st != stat::OK {
            return;
        }
        let obj = obj
            .filter(|h| h.len() == VFH_LEN)
            .map(|h| u64::from_be_bytes(h[24..32].try_into().unwrap_or([0; 8])));
        let Some((hids, names)) = call_parts(pd.proc_, &pd.msg) else {
            return;
        };
        let created = matches!(
            pd.proc_,
            Proc::Create | Proc::Mkdir | Proc::Symlink | Proc::Mknod
        );
        match (pd.proc_, hids.as_slice(), names.as_slice()) {
            (
                Proc::Lookup | Proc::Create | Proc::Mkdir | Proc::Symlink | Proc::Mknod,
                [dir],
                [name],
            ) => {
                if let Some(o) = obj {
                    self.name(o, *dir, name.clone());
                }
            }
            (Proc::Remove | Proc::Rmdir, [dir], [name]) => {
                if let Some(o) = self.by_name.remove(&(*dir, name.clone())) {
                    self.names.remove(&o);
                }
            }
            (Proc::Rename, [from, to], [fname, tname]) => {
                if let Some(o) = self.by_name.remove(&(*from, fname.clone())) {
                    self.name(o, *to, tname.clone());
                }
            }
            _ => {}
        }
        if !mutates(pd.proc_) {
            return;
        }
        let x = &mut self.exports[pd.export];
        if x.log.len() >= LOG_MAX_ENTRIES || x.log_bytes + pd.msg.len() > LOG_MAX_BYTES {
            x.stats.overflow += 1;
            x.last_error = Some("log full: the backup needs a resynchronisation".into());
            return;
        }
        x.log_bytes += pd.msg.len();
        x.log.push_back(Entry {
            seq: x.next_seq,
            proc_: pd.proc_,
            msg: pd.msg,
            created: if created { obj } else { None },
            logged_at: now,
        });
        x.next_seq += 1;
        x.stats.logged += 1;
        x.stats.depth_max = x.stats.depth_max.max(x.log.len() as u64);
    }

    fn name(&mut self, obj: u64, dir: u64, name: Vec<u8>) {
        if let Some(old) = self.names.get(&obj) {
            self.by_name.remove(&(old.0, old.1.clone()));
        } else if self.names.len() >= NAMES_MAX {
            return;
        }
        self.by_name.insert((dir, name.clone()), obj);
        self.names.insert(obj, (dir, name));
    }

    /// Both servers of export `sid` are mounted: `root_hid` (the export root's handle id)
    /// is the backup's `root_pfh`.
    pub fn set_root(&mut self, sid: u16, root_hid: u64, root_pfh: &[u8]) {
        if let Some(x) = self.exports.iter_mut().find(|x| x.sid == sid) {
            if x.root != Some(root_hid) {
                x.handles.insert(root_hid, root_pfh);
                x.root = Some(root_hid);
            }
        }
    }

    /// Whether export `sid` knows its backup's root.
    pub fn has_root(&self, sid: u16) -> bool {
        self.exports
            .iter()
            .any(|x| x.sid == sid && x.root.is_some())
    }

    /// Timers: calls to the backups sent again, the next entries sent, old pending calls
    /// dropped.
    pub fn poll(&mut self, shared: &NfsShared, now: u64) {
        self.pending
            .retain(|_, p| now.saturating_sub(p.at) < PENDING_MS);
        for e in 0..self.exports.len() {
            let x = &mut self.exports[e];
            if let Some(i) = x.inflight.as_mut() {
                if now.saturating_sub(i.sent_at) >= RESEND_MS {
                    i.sent_at = now;
                    i.tries += 1;
                    x.stats.resends += 1;
                    if let Some(s) = shared.server(x.backup) {
                        self.outbox.push(((s.addr, s.nfs_port), i.payload.clone()));
                    }
                }
            }
            self.next(e, shared, now);
        }
    }

    /// Send export `e`'s next call to its backup, if none is there.
    fn next(&mut self, e: usize, shared: &NfsShared, now: u64) {
        loop {
            let x = &mut self.exports[e];
            if x.inflight.is_some() || x.root.is_none() {
                return;
            }
            let Some(entry) = x.log.front() else {
                return;
            };
            let (seq, proc_, msg) = (entry.seq, entry.proc_, entry.msg.clone());
            x.stats.lag_ms_max = x.stats.lag_ms_max.max(now.saturating_sub(entry.logged_at));
            let (Some(primary), Some(backup)) = (shared.server(x.sid), shared.server(x.backup))
            else {
                return;
            };
            let mut buf = HeapBuffer::with_capacity(msg.len() * 2 + 4096, 1024);
            if buf.append(msg.len()).is_err() {
                return;
            }
            buf.data_mut().copy_from_slice(&msg);
            let Ok(rpc::Message::Call(c)) = rpc::parse(&msg) else {
                self.skip(e, "an undecodable entry");
                continue;
            };
            let memo = MacMemo::default();
            let ctx = Context {
                key: &shared.key,
                memo: &memo,
                handles: &x.handles,
                virtual_fsid: shared.virtual_fsid,
                limits: Limits::UNLIMITED,
            };
            let mch = primary.mch;
            let sid = x.sid;
            let exports = move |s: u16| (s == sid).then_some(mch);
            match devirtualize_call(&mut buf, 0, proc_, c.args_at, &ctx, exports) {
                CallVerdict::Forward { .. } => {
                    let anon = (shared.policy.anonymous_uid, shared.policy.anonymous_gid);
                    let mut csum = packet::checksum::Adjust::default();
                    crate::policy::squash(buf.data_mut(), primary.squash, anon, &mut csum);
                    let xid = self.next_xid();
                    let mut payload = buf.data().to_vec();
                    payload[..4].copy_from_slice(&xid.to_be_bytes());
                    self.send(
                        e,
                        (backup.addr, backup.nfs_port),
                        xid,
                        Work::Apply(seq),
                        payload,
                        now,
                    );
                    return;
                }
                CallVerdict::Recover(v) => {
                    if !self.resolve(e, v.hid, (backup.addr, backup.nfs_port), now) {
                        self.skip(e, "a handle whose name is not known");
                        continue;
                    }
                    return;
                }
                _ => {
                    self.skip(e, "a call that does not translate");
                    continue;
                }
            }
        }
    }

    /// Drop export `e`'s first entry as not applicable.
    fn skip(&mut self, e: usize, why: &str) {
        let x = &mut self.exports[e];
        if let Some(entry) = x.log.pop_front() {
            x.log_bytes -= entry.msg.len();
            x.acked = entry.seq;
            x.stats.unresolved += 1;
            x.last_error = Some(format!(
                "entry {} ({}) not applied: {why}",
                entry.seq,
                entry.proc_.name()
            ));
        }
    }

    /// Look up the backup's copy of `hid` (the nearest ancestor whose copy is known first);
    /// false when its name chain is not known.
    fn resolve(&mut self, e: usize, hid: u64, dst: (Ipv4Addr, u16), now: u64) -> bool {
        let mut h = hid;
        for _ in 0..256 {
            let Some((dir, name)) = self.names.get(&h).cloned() else {
                return false;
            };
            let mut pfh = [0u8; PFH_MAX];
            match self.exports[e].handles.get(dir, &mut pfh) {
                Some(len) => {
                    let xid = self.next_xid();
                    let mut w = Writer::new();
                    w.call_sys(xid, rpc::program::NFS, 3, Proc::Lookup as u32, 0, 0)
                        .opaque(&pfh[..len])
                        .opaque(&name);
                    self.send(e, dst, xid, Work::Resolve(h), w.buf, now);
                    return true;
                }
                None => h = dir,
            }
        }
        false
    }

    fn next_xid(&mut self) -> u32 {
        self.xid = (self.xid + 1) & 0x00ff_ffff;
        XID_TAG | self.xid
    }

    fn send(
        &mut self,
        e: usize,
        dst: (Ipv4Addr, u16),
        xid: u32,
        work: Work,
        payload: Vec<u8>,
        now: u64,
    ) {
        self.outbox.push((dst, payload.clone()));
        self.exports[e].inflight = Some(Inflight {
            xid,
            work,
            payload,
            sent_at: now,
            tries: 1,
        });
    }

    /// A backup's reply to replication's call.
    pub fn reply(&mut self, msg: &[u8], shared: &NfsShared, now: u64) {
        let Ok(rpc::Message::Reply(r)) = rpc::parse(msg) else {
            return;
        };
        let xid = r.xid();
        let Some(e) = self
            .exports
            .iter()
            .position(|x| x.inflight.as_ref().is_some_and(|i| i.xid == xid))
        else {
            return;
        };
        let Some(work) = self.exports[e].inflight.take().map(|i| i.work) else {
            return;
        };
        match work {
            Work::Apply(seq) => {
                let x = &mut self.exports[e];
                let Some(entry) = x.log.pop_front() else {
                    return;
                };
                x.log_bytes -= entry.msg.len();
                x.acked = seq;
                x.stats.applied += 1;
                match reply_parts(entry.proc_, msg) {
                    Some((stat::OK, handle)) => {
                        if let (Some(c), Some(h)) = (entry.created, handle) {
                            x.handles.insert(c, &h);
                        }
                    }
                    other => {
                        x.stats.conflicts += 1;
                        x.last_error = Some(format!(
                            "entry {seq} ({}): the backup answered {}",
                            entry.proc_.name(),
                            match other {
                                Some((st, _)) => format!("status {st}"),
                                None => "an RPC error".into(),
                            }
                        ));
                    }
                }
            }
            Work::Resolve(hid) => match reply_parts(Proc::Lookup, msg) {
                Some((stat::OK, Some(h))) => {
                    let x = &mut self.exports[e];
                    x.handles.insert(hid, &h);
                    x.stats.resolved += 1;
                }
                _ => self.skip(e, "its name is not on the backup"),
            },
        }
        self.next(e, shared, now);
    }

    /// Each export's state.
    pub fn report(&self, now: u64) -> Vec<ReplReport> {
        self.exports
            .iter()
            .map(|x| ReplReport {
                sid: x.sid,
                backup: x.backup,
                backup_ready: x.root.is_some(),
                depth: x.log.len(),
                log_bytes: x.log_bytes,
                logged_seq: x.next_seq - 1,
                acked: x.acked,
                lag_ms: x.log.front().map_or(0, |e| now.saturating_sub(e.logged_at)),
                inflight: x.inflight.as_ref().map(|i| {
                    (
                        match i.work {
                            Work::Apply(s) => format!("apply {s}"),
                            Work::Resolve(_) => "lookup".to_string(),
                        },
                        i.tries,
                    )
                }),
                backup_handles: x.handles.len(),
                stats: x.stats,
                last_error: x.last_error.clone(),
            })
            .collect()
    }

    /// (directory, name) records known.
    pub fn names(&self) -> usize {
        self.names.len()
    }
}
