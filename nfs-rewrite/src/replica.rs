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
//! - **Failover:** the active server is probed (NFS NULL, every tenth of `failover_ms`); when
//!   it has answered none for `failover_ms` and the other server has every logged change, the
//!   other server becomes the active one: the workers hand every call of the export to the
//!   management core, which translates its handles through that server's table (the handles
//!   clients hold keep working) and sends it there; a TCP client's calls in flight on the
//!   dead server's connection are decided again from the calls as the client sent them. The
//!   log then flows the other way: when the old server answers again, it gets every change
//!   made without it, and stays the passive one (roles do not switch back by themselves).
//! - Everything a restarted router needs — the log's entries, what the backup acknowledged,
//!   the backup's handles and the names — is appended to a **journal** on the management
//!   core's disk as it happens (one `write` per record, not synced: it survives the router
//!   process, not the machine), compacted into a snapshot when it grows, and read at start.

use crate::datapath::{NfsShared, Pair};
use crate::rewrite::{devirtualize_call, CallVerdict, Context, Limits};
use crate::tables::{HandleTable, PFH_MAX};
use crate::vfh::{MacMemo, VFH_LEN};
use crate::wire::nfs3::{self, stat, Proc};
use crate::wire::rpc::{self, Writer};
use crate::wire::{Cursor, Field};
use packet::{Buffer, HeapBuffer};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

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
/// Calls at the primary whose replies are awaited at most this long, and how many.
const PENDING_MS: u64 = 60_000;
const PENDING_MAX: usize = 1 << 16;
/// Bytes of calls kept only to be sent again after a failover (TCP clients' reads), at most.
const PENDING_SPARE_BYTES: usize = 64 << 20;
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
    /// Failovers (the active server stopped answering, the other took over), and how long
    /// the last one took from the first unanswered probe (ms).
    pub failovers: u64,
    pub failover_ms: u64,
    /// Probes of the active server unanswered in a row now.
    pub misses: u64,
    /// Handles of client calls found on the active server by name (after a failover).
    pub recovered: u64,
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
    /// The server it went to.
    dst: (Ipv4Addr, u16),
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
    /// The server that takes the export's calls now (the primary until a failover), the
    /// other gets the log.
    pub active: u16,
    probe: Option<(u32, u64)>,
    last_probe: u64,
    first_miss: Option<u64>,
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
    pub active: u16,
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

/// Probes go to the active server this often (a tenth of `failover_ms`, at least 100 ms).
fn probe_every(failover_ms: u64) -> u64 {
    (failover_ms / 10).max(100)
}

struct Pending {
    export: usize,
    proc_: Proc,
    msg: Vec<u8>,
    at: u64,
}

/// Journal record kinds.
mod rec {
    /// sid u16, seq u64, proc u8, created u64 (0: none), then the call.
    pub const ENTRY: u8 = b'E';
    /// sid u16, seq u64: the backup answered every entry up to seq.
    pub const ACK: u8 = b'A';
    /// sid u16, hid u64, then the backup's handle.
    pub const HANDLE: u8 = b'H';
    /// obj u64, dir u64, then the name.
    pub const NAME: u8 = b'N';
    /// obj u64: its name is gone.
    pub const UNNAME: u8 = b'R';
    /// sid u16, next_seq u64, acked u64 (a snapshot's).
    pub const SEQ: u8 = b'S';
    /// sid u16, active u16: the server that takes the export's calls (a failover).
    pub const ACTIVE: u8 = b'F';
}

/// The journal is compacted when it holds twice its last snapshot (and at least this).
const JOURNAL_COMPACT: u64 = 64 << 20;

/// The journal file (see the module's text).
#[derive(Debug)]
pub struct Journal {
    pub path: PathBuf,
    file: Option<std::fs::File>,
    /// Bytes in the file, and in it after the last compaction (the snapshot).
    pub bytes: u64,
    pub snapshot: u64,
    pub records: u64,
    /// Records loaded at start, compactions, write failures.
    pub loaded: u64,
    pub compactions: u64,
    pub failed: u64,
    pub last_error: Option<String>,
}

impl Journal {
    fn append(&mut self, kind: u8, body: &[u8]) {
        let Some(f) = self.file.as_mut() else {
            return;
        };
        let mut r = Vec::with_capacity(body.len() + 5);
        r.push(kind);
        r.extend_from_slice(&(body.len() as u32).to_be_bytes());
        r.extend_from_slice(body);
        match f.write_all(&r) {
            Ok(()) => {
                self.bytes += r.len() as u64;
                self.records += 1;
            }
            Err(e) => {
                self.failed += 1;
                self.last_error = Some(format!("{}: {e}", self.path.display()));
            }
        }
    }
}

/// The records of a journal file, in order (a torn last one left out).
fn records(bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let kind = *bytes.get(at)?;
        let len = u32::from_be_bytes(bytes.get(at + 1..at + 5)?.try_into().ok()?) as usize;
        let body = bytes.get(at + 5..at + 5 + len)?;
        at += 5 + len;
        Some((kind, body))
    })
}

/// Big-endian fields of a journal record.
struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    }
}

/// Replication of every replicated export (the management core's).
#[derive(Default)]
pub struct Replication {
    pub exports: Vec<Replicated>,
    pending: HashMap<u32, Pending>,
    /// Bytes of the pending calls.
    pending_bytes: usize,
    next_token: u32,
    xid: u32,
    outbox: Vec<((Ipv4Addr, u16), Vec<u8>)>,
    /// Object handle id → (directory handle id, name), and back.
    names: HashMap<u64, (u64, Vec<u8>)>,
    by_name: HashMap<(u64, Vec<u8>), u64>,
    pub journal: Option<Journal>,
    /// Fail over after the active server left probes unanswered this long (ms); 0: never.
    pub failover_ms: u64,
    /// Client calls' handles looked up on the active server: xid → (export, the handle id
    /// looked up, the one the held calls wait for).
    lookups: HashMap<u32, (usize, u64, u64)>,
    /// Handle ids a lookup on the active server did not find (stale to clients).
    lost: std::collections::HashSet<u64>,
    /// Handle ids found for client calls since the last [`Replication::take_recovered`].
    recovered: Vec<u64>,
    /// Servers failed over from since the last [`Replication::take_failovers`].
    failed: Vec<u16>,
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

impl Replicated {
    /// The server the log goes to.
    pub fn passive(&self) -> u16 {
        if self.active == self.sid {
            self.backup
        } else {
            self.sid
        }
    }

    /// The handle table of `member` (the primary's is the workers' table).
    fn table<'a>(&'a self, shared: &'a NfsShared, member: u16) -> &'a HandleTable {
        if member == self.sid {
            &shared.handles
        } else {
            &self.handles
        }
    }
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
                    active: s.sid,
                    probe: None,
                    last_probe: 0,
                    first_miss: None,
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

    /// Whether `xid` is the reply to one of replication's calls (to a backup, a probe, a
    /// lookup).
    pub fn owns(&self, xid: u32) -> bool {
        xid & 0xff00_0000 == XID_TAG
            && (self.lookups.contains_key(&xid)
                || self.exports.iter().any(|x| {
                    x.inflight.as_ref().is_some_and(|i| i.xid == xid)
                        || x.probe.is_some_and(|(p, _)| p == xid)
                }))
    }

    /// The server export `sid`'s calls go to now, and its handle table, if it is replicated
    /// and failed over (None: the primary, through the workers' table).
    pub fn diverted(&self, sid: u16) -> Option<(u16, &HandleTable)> {
        self.exports
            .iter()
            .find(|x| x.sid == sid && x.active != x.sid)
            .map(|x| (x.active, &x.handles))
    }

    /// For a reply from server `from`: the export's SID, and the table its handles go in if
    /// it is not the workers' (a backup serving after a failover).
    pub fn reply_route(&self, from: u16) -> Option<(u16, &HandleTable)> {
        self.exports
            .iter()
            .find(|x| x.backup == from)
            .map(|x| (x.sid, &x.handles))
    }

    /// A client's call on export `sid` needs the active (backup) server's copy of `hid`: look
    /// it up by name. False when its name is not known (the handle is stale to the client).
    pub fn want(&mut self, sid: u16, hid: u64, shared: &NfsShared) -> bool {
        let Some(e) = self.exports.iter().position(|x| x.sid == sid) else {
            return false;
        };
        if self.lost.contains(&hid) {
            return false;
        }
        if self.lookups.values().any(|&(x, _, w)| x == e && w == hid) {
            return true;
        }
        let x = &self.exports[e];
        let Some(server) = shared.server(x.active) else {
            return false;
        };
        let dst = (server.addr, server.nfs_port);
        let Some((h, mut call)) = self.nearest(x.table(shared, x.active), hid) else {
            return false;
        };
        let xid = self.next_xid();
        call[..4].copy_from_slice(&xid.to_be_bytes());
        self.outbox.push((dst, call));
        // The nearest missing ancestor first; the handle itself is asked again when that one
        // is found (the held call is decided again).
        self.lookups.insert(xid, (e, h, hid));
        true
    }

    /// Walking up the recorded names from `hid`: the first handle id whose directory's copy
    /// `table` has, and the LOOKUP call for it there (its xid to be set).
    fn nearest(&self, table: &HandleTable, hid: u64) -> Option<(u64, Vec<u8>)> {
        let mut h = hid;
        for _ in 0..256 {
            let (dir, name) = self.names.get(&h)?;
            let mut pfh = [0u8; PFH_MAX];
            if let Some(len) = table.get(*dir, &mut pfh) {
                let mut w = Writer::new();
                w.call_sys(0, rpc::program::NFS, 3, Proc::Lookup as u32, 0, 0)
                    .opaque(&pfh[..len])
                    .opaque(name);
                return Some((h, w.buf));
            }
            h = *dir;
        }
        None
    }

    /// Handle ids found for client calls (their held calls can be decided again).
    pub fn take_recovered(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.recovered)
    }

    /// Servers that were failed over from (their calls in flight are to be sent again).
    pub fn take_failovers(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.failed)
    }

    /// A call `msg` of procedure `p` on export `sid`, about to be forwarded to the primary:
    /// the token its transaction carries to [`Replication::replied`] (0: not replicated).
    /// `any`: any procedure (a TCP client's call: sent again from here after a failover).
    pub fn track(&mut self, p: Proc, sid: u16, msg: &[u8], now: u64, any: bool) -> u32 {
        let Some(export) = self.exports.iter().position(|x| x.sid == sid) else {
            return 0;
        };
        let spare = any
            && self.pending.len() < PENDING_MAX
            && self.pending_bytes + msg.len() <= PENDING_SPARE_BYTES;
        if !(tracked(p) || spare) {
            return 0;
        }
        self.next_token = self.next_token.wrapping_add(1).max(1);
        self.pending_bytes += msg.len();
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

    /// The call of `token` as the client sent it (for sending it again elsewhere), taken out.
    pub fn take_call(&mut self, token: u32) -> Option<Vec<u8>> {
        self.take_pending(token).map(|p| p.msg)
    }

    fn take_pending(&mut self, token: u32) -> Option<Pending> {
        let p = self.pending.remove(&token)?;
        self.pending_bytes -= p.msg.len();
        Some(p)
    }

    /// The primary's reply (made virtual) to the call of `token`: names recorded, a change
    /// logged.
    pub fn replied(&mut self, token: u32, reply: &[u8], now: u64) {
        let Some(pd) = self.take_pending(token) else {
            return;
        };
        if !tracked(pd.proc_) {
            return;
        }
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
                    self.record(rec::UNNAME, &o.to_be_bytes());
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
        let created = if created { obj } else { None };
        let mut body = Vec::with_capacity(pd.msg.len() + 19);
        body.extend_from_slice(&x.sid.to_be_bytes());
        body.extend_from_slice(&x.next_seq.to_be_bytes());
        body.push(pd.proc_ as u8);
        body.extend_from_slice(&created.unwrap_or(0).to_be_bytes());
        body.extend_from_slice(&pd.msg);
        x.log.push_back(Entry {
            seq: x.next_seq,
            proc_: pd.proc_,
            msg: pd.msg,
            created,
            logged_at: now,
        });
        x.next_seq += 1;
        x.stats.logged += 1;
        x.stats.depth_max = x.stats.depth_max.max(x.log.len() as u64);
        self.record(rec::ENTRY, &body);
    }

    fn record(&mut self, kind: u8, body: &[u8]) {
        if let Some(j) = self.journal.as_mut() {
            j.append(kind, body);
        }
    }

    fn record_ack(&mut self, e: usize) {
        let x = &self.exports[e];
        let mut b = x.sid.to_be_bytes().to_vec();
        b.extend_from_slice(&x.acked.to_be_bytes());
        self.record(rec::ACK, &b);
    }

    fn record_handle(&mut self, e: usize, hid: u64, pfh: &[u8]) {
        let mut b = self.exports[e].sid.to_be_bytes().to_vec();
        b.extend_from_slice(&hid.to_be_bytes());
        b.extend_from_slice(pfh);
        self.record(rec::HANDLE, &b);
    }

    /// Open (or create) the journal at `path`: what it holds is loaded (entries not yet
    /// acknowledged, the backups' handles, the names), then it is compacted. Call before any
    /// traffic.
    pub fn open_journal(&mut self, path: &Path) -> Result<u64, String> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut loaded = 0;
        for (kind, body) in records(&bytes) {
            if self.load_record(kind, body).is_some() {
                loaded += 1;
            }
        }
        self.journal = Some(Journal {
            path: path.to_path_buf(),
            file: None,
            bytes: 0,
            snapshot: 0,
            records: 0,
            loaded,
            compactions: 0,
            failed: 0,
            last_error: None,
        });
        self.compact()?;
        Ok(loaded)
    }

    fn load_record(&mut self, kind: u8, body: &[u8]) -> Option<()> {
        let mut r = Rd(body);
        let export = |s: &Self, sid: u16| s.exports.iter().position(|x| x.sid == sid);
        match kind {
            rec::ENTRY => {
                let e = export(self, r.u16()?)?;
                let (seq, p, created) = (r.u64()?, Proc::from_u32(u32::from(r.u8()?))?, r.u64()?);
                let x = &mut self.exports[e];
                if seq > x.acked && x.log.back().is_none_or(|b| b.seq < seq) {
                    x.log_bytes += r.0.len();
                    x.log.push_back(Entry {
                        seq,
                        proc_: p,
                        msg: r.0.to_vec(),
                        created: (created != 0).then_some(created),
                        logged_at: 0,
                    });
                }
                x.next_seq = x.next_seq.max(seq + 1);
            }
            rec::ACK => {
                let e = export(self, r.u16()?)?;
                let seq = r.u64()?;
                let x = &mut self.exports[e];
                while x.log.front().is_some_and(|f| f.seq <= seq) {
                    if let Some(f) = x.log.pop_front() {
                        x.log_bytes -= f.msg.len();
                    }
                }
                x.acked = x.acked.max(seq);
                x.next_seq = x.next_seq.max(seq + 1);
            }
            rec::SEQ => {
                let e = export(self, r.u16()?)?;
                let (next, acked) = (r.u64()?, r.u64()?);
                let x = &mut self.exports[e];
                x.next_seq = x.next_seq.max(next);
                x.acked = x.acked.max(acked);
            }
            rec::ACTIVE => {
                let e = export(self, r.u16()?)?;
                let a = r.u16()?;
                let x = &mut self.exports[e];
                if a == x.sid || a == x.backup {
                    x.active = a;
                }
            }
            rec::HANDLE => {
                let e = export(self, r.u16()?)?;
                let hid = r.u64()?;
                self.exports[e].handles.insert(hid, r.0);
            }
            rec::NAME => {
                let (obj, dir) = (r.u64()?, r.u64()?);
                self.name(obj, dir, r.0.to_vec());
            }
            rec::UNNAME => {
                let obj = r.u64()?;
                if let Some((d, n)) = self.names.remove(&obj) {
                    self.by_name.remove(&(d, n));
                }
            }
            _ => return None,
        }
        Some(())
    }

    /// Write the state as a fresh journal (atomically) and append to it from now on.
    fn compact(&mut self) -> Result<(), String> {
        let Some(path) = self.journal.as_ref().map(|j| j.path.clone()) else {
            return Ok(());
        };
        let mut out = Vec::new();
        let mut put = |kind: u8, body: &[u8]| {
            out.push(kind);
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(body);
        };
        for x in &self.exports {
            let mut b = x.sid.to_be_bytes().to_vec();
            b.extend_from_slice(&x.next_seq.to_be_bytes());
            b.extend_from_slice(&x.acked.to_be_bytes());
            put(rec::SEQ, &b);
            let mut b = x.sid.to_be_bytes().to_vec();
            b.extend_from_slice(&x.active.to_be_bytes());
            put(rec::ACTIVE, &b);
            x.handles.for_each(|hid, pfh| {
                let mut b = x.sid.to_be_bytes().to_vec();
                b.extend_from_slice(&hid.to_be_bytes());
                b.extend_from_slice(pfh);
                put(rec::HANDLE, &b);
            });
            for en in &x.log {
                let mut b = x.sid.to_be_bytes().to_vec();
                b.extend_from_slice(&en.seq.to_be_bytes());
                b.push(en.proc_ as u8);
                b.extend_from_slice(&en.created.unwrap_or(0).to_be_bytes());
                b.extend_from_slice(&en.msg);
                put(rec::ENTRY, &b);
            }
        }
        for (obj, (dir, name)) in &self.names {
            let mut b = obj.to_be_bytes().to_vec();
            b.extend_from_slice(&dir.to_be_bytes());
            b.extend_from_slice(name);
            put(rec::NAME, &b);
        }
        let len = out.len() as u64;
        let opened = crate::checkpoint::write_atomic(&path, &out)
            .and_then(|()| std::fs::OpenOptions::new().append(true).open(&path));
        let j = self.journal.as_mut().ok_or("no journal")?;
        match opened {
            Ok(f) => {
                j.file = Some(f);
                j.bytes = len;
                j.snapshot = len;
                j.compactions += 1;
                Ok(())
            }
            Err(e) => {
                j.file = None;
                j.failed += 1;
                let msg = format!("{}: {e}", path.display());
                j.last_error = Some(msg.clone());
                Err(msg)
            }
        }
    }

    fn name(&mut self, obj: u64, dir: u64, name: Vec<u8>) {
        if let Some(old) = self.names.get(&obj) {
            self.by_name.remove(&(old.0, old.1.clone()));
        } else if self.names.len() >= NAMES_MAX {
            return;
        }
        let mut b = obj.to_be_bytes().to_vec();
        b.extend_from_slice(&dir.to_be_bytes());
        b.extend_from_slice(&name);
        self.record(rec::NAME, &b);
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
        let bytes = &mut self.pending_bytes;
        self.pending.retain(|_, p| {
            let keep = now.saturating_sub(p.at) < PENDING_MS;
            if !keep {
                *bytes -= p.msg.len();
            }
            keep
        });
        if self
            .journal
            .as_ref()
            .is_some_and(|j| j.bytes > j.snapshot.max(JOURNAL_COMPACT) * 2)
        {
            let _ = self.compact(); // a failure is counted and shown
        }
        for e in 0..self.exports.len() {
            self.probe(e, shared, now);
            let x = &mut self.exports[e];
            if let Some(i) = x.inflight.as_mut() {
                if now.saturating_sub(i.sent_at) >= RESEND_MS {
                    i.sent_at = now;
                    i.tries += 1;
                    x.stats.resends += 1;
                    self.outbox.push((i.dst, i.payload.clone()));
                }
            }
            self.next(e, shared, now);
        }
    }

    /// Probe export `e`'s active server (NFS NULL); fail over when it has not answered for
    /// `failover_ms` and the other server has every logged change.
    fn probe(&mut self, e: usize, shared: &NfsShared, now: u64) {
        if self.failover_ms == 0 || self.exports[e].root.is_none() {
            return;
        }
        let every = probe_every(self.failover_ms);
        let x = &mut self.exports[e];
        if now.saturating_sub(x.last_probe) < every {
            return;
        }
        x.last_probe = now;
        if let Some((_, sent)) = x.probe {
            if now.saturating_sub(sent) >= every {
                let first = *x.first_miss.get_or_insert(sent);
                x.stats.misses += 1;
                let drained = x.log.is_empty() && x.inflight.is_none();
                if now.saturating_sub(first) >= self.failover_ms && drained {
                    let dead = x.active;
                    x.active = x.passive();
                    x.stats.failovers += 1;
                    x.stats.failover_ms = now.saturating_sub(first);
                    x.last_error = Some(format!(
                        "failed over from server {dead} to {} after {} ms without an answer",
                        x.active, x.stats.failover_ms
                    ));
                    x.probe = None;
                    x.first_miss = None;
                    x.stats.misses = 0;
                    shared
                        .diverted
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    self.failed.push(dead);
                    let mut b = x.sid.to_be_bytes().to_vec();
                    b.extend_from_slice(&x.active.to_be_bytes());
                    self.record(rec::ACTIVE, &b);
                    return;
                }
            }
        }
        let Some(server) = shared.server(self.exports[e].active) else {
            return;
        };
        let xid = self.next_xid();
        let mut w = Writer::new();
        w.call_sys(xid, rpc::program::NFS, 3, Proc::Null as u32, 0, 0);
        self.outbox.push(((server.addr, server.nfs_port), w.buf));
        let x = &mut self.exports[e];
        let sent = x.probe.map_or(now, |(_, s)| s);
        x.probe = Some((xid, sent));
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
            let (Some(primary), Some(backup)) = (shared.server(x.sid), shared.server(x.passive()))
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
                handles: x.table(shared, x.passive()),
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
                    if !self.resolve(e, v.hid, shared, (backup.addr, backup.nfs_port), now) {
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
            self.record_ack(e);
        }
    }

    /// Look up the backup's copy of `hid` (the nearest ancestor whose copy is known first);
    /// false when its name chain is not known.
    fn resolve(
        &mut self,
        e: usize,
        hid: u64,
        shared: &NfsShared,
        dst: (Ipv4Addr, u16),
        now: u64,
    ) -> bool {
        let x = &self.exports[e];
        let Some((h, mut call)) = self.nearest(x.table(shared, x.passive()), hid) else {
            return false;
        };
        let xid = self.next_xid();
        call[..4].copy_from_slice(&xid.to_be_bytes());
        self.send(e, dst, xid, Work::Resolve(h), call, now);
        true
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
            dst,
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
        if let Some(x) = self
            .exports
            .iter_mut()
            .find(|x| x.probe.is_some_and(|(p, _)| p == xid))
        {
            // The active server answered its probe.
            x.probe = None;
            x.first_miss = None;
            x.stats.misses = 0;
            return;
        }
        if let Some((e, hid, wanted)) = self.lookups.remove(&xid) {
            if let Some((stat::OK, Some(h))) = reply_parts(Proc::Lookup, msg) {
                let x = &mut self.exports[e];
                x.table(shared, x.active).insert(hid, &h);
                x.stats.recovered += 1;
                if x.active != x.sid {
                    self.record_handle(e, hid, &h);
                }
            } else if self.lost.len() < 65_536 {
                self.lost.insert(wanted);
            }
            // Found or not: the held calls are decided again (the next name down is asked
            // then, or the handle is stale).
            self.recovered.push(wanted);
            return;
        }
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
                            x.table(shared, x.passive()).insert(c, &h);
                            if x.passive() != x.sid {
                                self.record_handle(e, c, &h);
                            }
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
                self.record_ack(e);
            }
            Work::Resolve(hid) => match reply_parts(Proc::Lookup, msg) {
                Some((stat::OK, Some(h))) => {
                    let x = &mut self.exports[e];
                    x.table(shared, x.passive()).insert(hid, &h);
                    x.stats.resolved += 1;
                    if x.passive() != x.sid {
                        self.record_handle(e, hid, &h);
                    }
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
                active: x.active,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::Server;
    use crate::vfh::{HandleKey, VirtualHandle};

    fn shared() -> NfsShared {
        let server = |sid: u16, pair| Server {
            sid,
            name: format!("s{sid}"),
            addr: Ipv4Addr::new(10, 0, 2, sid as u8),
            nfs_port: 2049,
            mount_port: 20048,
            export: "/x".into(),
            mch: 7,
            bridge: false,
            clients: vec![],
            squash: crate::policy::Squash::None,
            pair,
        };
        NfsShared {
            key: HandleKey::new(1, 2),
            handles: std::sync::Arc::new(HandleTable::new(64)),
            virtual_addr: Ipv4Addr::new(10, 0, 1, 1),
            nfs_port: 2049,
            virtual_fsid: 9,
            limits: Limits::UNLIMITED,
            servers: vec![
                server(1, Pair::Primary { backup: 2 }),
                server(2, Pair::Backup { primary: 1 }),
            ],
            policy: Default::default(),
            replicated: vec![1],
            diverted: Default::default(),
        }
    }

    /// A WRITE of one byte on a handle of export 1, and the primary's NFS3_OK to it.
    fn write_call(sh: &NfsShared, xid: u32) -> (Vec<u8>, Vec<u8>) {
        let vfh = VirtualHandle::for_object(&sh.key, 1, 7, 3, 4, b"pfh").encode(&sh.key);
        let mut c = Writer::new();
        c.call_sys(xid, rpc::program::NFS, 3, Proc::Write as u32, 0, 0)
            .opaque(&vfh)
            .u64(0)
            .u32(1)
            .u32(2)
            .opaque(b"x");
        let mut r = Writer::new();
        r.accepted_reply(xid, 0)
            .u32(stat::OK)
            .bool(false)
            .bool(false)
            .u32(1)
            .u32(2)
            .fixed(&[0; 8]);
        (c.buf, r.buf)
    }

    #[test]
    fn the_journal_keeps_the_log_the_names_and_the_handles() {
        let dir = std::env::temp_dir().join(format!("nfs-repl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j.replication");
        let _ = std::fs::remove_file(&path);
        let sh = shared();
        let mut r = Replication::new(&sh, 1);
        assert_eq!(r.open_journal(&path), Ok(0));
        for xid in [10, 11] {
            let (call, reply) = write_call(&sh, xid);
            let t = r.track(Proc::Write, 1, &call, 5, false);
            assert_ne!(t, 0);
            r.replied(t, &reply, 6);
        }
        // Not replicated, or not a change: not logged.
        assert_eq!(r.track(Proc::Write, 2, &[], 5, false), 0);
        assert_eq!(r.track(Proc::Read, 1, &[], 5, false), 0);
        // A TCP client's read is kept (to be sent again after a failover), never logged.
        let (call, reply) = write_call(&sh, 12);
        let t = r.track(Proc::Read, 1, &call, 5, true);
        assert_ne!(t, 0);
        assert_eq!(r.take_call(t).as_deref(), Some(&call[..]));
        let t = r.track(Proc::Read, 1, &call, 5, true);
        r.replied(t, &reply, 6);
        r.name(50, 40, b"file".to_vec());
        r.exports[0].handles.insert(40, b"backup-dir");
        r.record_handle(0, 40, b"backup-dir");
        assert_eq!(r.exports[0].log.len(), 2);
        // A restarted router: all of it back.
        let mut again = Replication::new(&sh, 1);
        assert!(again.open_journal(&path).unwrap() >= 4);
        let x = &again.exports[0];
        assert_eq!((x.log.len(), x.next_seq, x.acked), (2, 3, 0));
        assert_eq!(x.log[1].proc_, Proc::Write);
        let mut pfh = [0u8; PFH_MAX];
        assert_eq!(x.handles.get(40, &mut pfh), Some(10));
        assert_eq!(again.names.get(&50), Some(&(40, b"file".to_vec())));
        // One entry acknowledged (here: skipped), another restart: one left, numbering on.
        again.skip(0, "test");
        let mut third = Replication::new(&sh, 1);
        third.open_journal(&path).unwrap();
        let x = &third.exports[0];
        assert_eq!(
            (x.log.len(), x.log[0].seq, x.acked, x.next_seq),
            (1, 2, 1, 3)
        );
        // A torn last record (a crash mid-write) is left out, the rest loads.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[rec::ENTRY, 0, 0, 1]);
        std::fs::write(&path, &bytes).unwrap();
        let mut torn = Replication::new(&sh, 1);
        assert!(torn.open_journal(&path).is_ok());
        assert_eq!(torn.exports[0].log.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
