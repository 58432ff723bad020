//! The management core's own NFS client to the aggregated servers. Sans I/O: it produces
//! datagrams ([`Upstream::drain`]) and consumes the replies ([`Upstream::reply`]); the router
//! sends them from the virtual address, port [`CLIENT_PORT`], and hands back what arrives there.
//!
//! - **Mounting**: each server's export is mounted (MOUNT MNT), the export root's attributes
//!   are read (GETATTR) and its capacity (FSSTAT, refreshed every 30 s); the root's handle id →
//!   physical handle enters the handle table. A server that does not answer is retried every
//!   2 s; until then its name is missing from the virtual root.
//! - **Recovery**: a verified VFH whose physical handle the table lacks (a restarted router, an
//!   evicted entry) names (SID, PFS, PIN). The server's tree is walked breadth first with
//!   READDIRPLUS (as root, AUTH_SYS uid 0) until an entry with that fsid, fileid and handle
//!   (the VFH's handle id covers the physical handle) shows up;
//!   every entry seen on the way enters the table too, so one walk serves all the handles a
//!   client holds. The calls wait meanwhile: they are not answered, and UDP clients retransmit.
//!   A walk that covers the whole tree without finding a target makes it stale (NFS3ERR_STALE
//!   for 30 s: the file is gone).
//!   RFC 1813 lets a server refuse READDIRPLUS (NFS3ERR_NOTSUPP), and user-space servers do:
//!   then the directory is listed again with READDIR and each entry looked up (LOOKUP gives
//!   its handle and attributes, [`LOOKUP_WINDOW`] at a time), and the server is remembered as
//!   one to walk that way ([`WalkMethod`]) for the router's lifetime.

use crate::datapath::NfsShared;
use crate::vfh::{self, VirtualHandle};
use crate::wire::nfs3::{self, Proc};
use crate::wire::rpc::{self, Writer};
use crate::wire::{mount, Cursor, Field, XdrError};
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// The port the management core's client uses on the virtual address (reserved, below 1024,
/// for servers that insist on privileged ports).
pub const CLIENT_PORT: u16 = 1001;
/// Retransmit a call after this long without a reply (ms).
const RETRY_MS: u64 = 400;
/// Give up a call after this many transmissions.
const TRIES: u32 = 8;
/// Wait before mounting a server again after a failure (ms).
const MOUNT_RETRY_MS: u64 = 2_000;
/// Refresh a mounted server's FSSTAT this often (ms).
const REFRESH_MS: u64 = 30_000;
/// How long a handle a walk did not find stays stale (ms).
const NEGATIVE_MS: u64 = 30_000;
/// Handles waiting for recovery at most (further calls wait without being recorded).
const MAX_TARGETS: usize = 4096;
/// Directories queued by one walk at most.
const MAX_QUEUE: usize = 1 << 16;
/// NF3DIR.
const NF3DIR: u32 = 2;
/// LOOKUPs in flight at once in a READDIR walk.
pub const LOOKUP_WINDOW: usize = 16;

/// How a server's directories are listed when walking it for recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalkMethod {
    /// READDIRPLUS: names, attributes and handles in one reply (tried first).
    #[default]
    Readdirplus,
    /// READDIR, then a LOOKUP per entry (the server answered READDIRPLUS with NOTSUPP).
    ReaddirLookup,
}

impl WalkMethod {
    /// As `routerctl nfs servers` shows it.
    pub fn name(self) -> &'static str {
        match self {
            WalkMethod::Readdirplus => "readdirplus",
            WalkMethod::ReaddirLookup => "readdir+lookup",
        }
    }
}

/// A datagram for a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub dst: (Ipv4Addr, u16),
    pub payload: Vec<u8>,
}

/// A mounted export.
#[derive(Debug, Clone)]
pub struct Mounted {
    pub root_pfh: Vec<u8>,
    /// The root's fsid and fileid on the server.
    pub root_pfs: u64,
    pub root_pin: u64,
    /// The root's attributes as the server gave them.
    pub root_attr: [u8; Field::FATTR_LEN],
    /// tbytes, fbytes, abytes, tfiles, ffiles, afiles.
    pub fsstat: Option<[u64; 6]>,
    /// The server's transfer sizes (FSINFO): rtmax, wtmax, dtpref.
    pub fsinfo: Option<[u32; 3]>,
    /// When it was mounted (ms).
    pub since_ms: u64,
}

/// A server as the management core sees it.
#[derive(Debug, Clone)]
pub struct ServerState {
    pub sid: u16,
    pub mounted: Option<Mounted>,
    pub last_error: Option<String>,
    pub mounts: u64,
    /// How its directories are walked (learned from its answers).
    pub walk_method: WalkMethod,
    next_try: u64,
    mounting: bool,
    refresh_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Purpose {
    Mnt {
        sid: u16,
    },
    RootAttr {
        sid: u16,
        pfh: Vec<u8>,
    },
    Fsstat {
        sid: u16,
    },
    Fsinfo {
        sid: u16,
    },
    /// A directory listing of walk `walk`: READDIRPLUS when `plus`, else READDIR.
    Walk {
        sid: u16,
        walk: u64,
        plus: bool,
    },
    /// A LOOKUP of an entry a READDIR listed.
    WalkLookup {
        sid: u16,
        walk: u64,
    },
}

#[derive(Debug, Clone)]
struct Pending {
    purpose: Purpose,
    dst: (Ipv4Addr, u16),
    payload: Vec<u8>,
    sent: u64,
    tries: u32,
}

#[derive(Debug, Clone, Copy)]
struct Target {
    sid: u16,
    first: u64,
}

#[derive(Debug, Clone)]
struct Walk {
    /// Tells this walk's replies from those of a walk given up before it.
    id: u64,
    queue: VecDeque<Vec<u8>>,
    cur: Option<Vec<u8>>,
    cookie: u64,
    verf: [u8; 8],
    /// READDIR walks: the current directory's names still to look up, LOOKUPs in flight, and
    /// whether its listing is complete.
    names: VecDeque<Vec<u8>>,
    lookups: usize,
    listed: bool,
}

/// Counters of mounting and recovery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamStats {
    /// Calls that arrived with a handle the table lacked (each retransmission counts).
    pub recovery_calls: u64,
    /// Handles recovered by walking a server.
    pub recovered: u64,
    /// Handles a whole walk did not find (now stale).
    pub recovery_failed: u64,
    /// Time from a handle's first call to its recovery (ms): total and worst.
    pub wait_ms_total: u64,
    pub wait_ms_max: u64,
    pub walks: u64,
    pub walk_dirs: u64,
    pub walk_entries: u64,
    /// LOOKUPs sent by walks of servers without READDIRPLUS.
    pub walk_lookups: u64,
    /// Servers found to refuse READDIRPLUS (then walked with READDIR and LOOKUP).
    pub readdirplus_refused: u64,
    /// Calls to servers sent again, and given up.
    pub retransmits: u64,
    pub timeouts: u64,
    /// Replies that matched no call of ours, or could not be decoded.
    pub stray_replies: u64,
}

/// What to do with a call whose handle needs recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Leave it unanswered: recovery is under way (the client retransmits).
    Wait,
    /// The file is gone: answer NFS3ERR_STALE.
    Stale,
}

/// The client.
#[derive(Debug)]
pub struct Upstream {
    shared: Arc<NfsShared>,
    pub servers: Vec<ServerState>,
    pending: HashMap<u32, Pending>,
    xid: u32,
    targets: HashMap<u64, Target>,
    negative: HashMap<u64, u64>,
    walks: HashMap<u16, Walk>,
    walk_ids: u64,
    outbox: Vec<Outgoing>,
    /// Handle ids found since the last [`Upstream::take_recovered`].
    recovered: Vec<u64>,
    pub stats: UpstreamStats,
}

fn be64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

impl Upstream {
    /// `xid_seed` should differ between runs (replies to a previous run's calls are ignored).
    pub fn new(shared: Arc<NfsShared>, xid_seed: u32) -> Self {
        let servers = shared
            .servers
            .iter()
            .map(|s| ServerState {
                sid: s.sid,
                mounted: None,
                last_error: None,
                mounts: 0,
                walk_method: WalkMethod::default(),
                next_try: 0,
                mounting: false,
                refresh_at: 0,
            })
            .collect();
        Upstream {
            shared,
            servers,
            pending: HashMap::new(),
            xid: xid_seed,
            targets: HashMap::new(),
            negative: HashMap::new(),
            walks: HashMap::new(),
            walk_ids: 0,
            outbox: Vec::new(),
            recovered: Vec::new(),
            stats: UpstreamStats::default(),
        }
    }

    /// Datagrams to send now.
    pub fn drain(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outbox)
    }

    /// The handle ids recovered since the last call (their waiting calls can go now).
    pub fn take_recovered(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.recovered)
    }

    /// Handles waiting for recovery.
    pub fn waiting(&self) -> usize {
        self.targets.len()
    }

    /// Walks in progress.
    pub fn walking(&self) -> usize {
        self.walks.len()
    }

    fn state(&mut self, sid: u16) -> Option<&mut ServerState> {
        self.servers.iter_mut().find(|s| s.sid == sid)
    }

    /// The export root of a mounted server.
    pub fn mounted(&self, sid: u16) -> Option<&Mounted> {
        self.servers
            .iter()
            .find(|s| s.sid == sid)
            .and_then(|s| s.mounted.as_ref())
    }

    fn send(
        &mut self,
        purpose: Purpose,
        dst: (Ipv4Addr, u16),
        build: impl FnOnce(&mut Writer),
        now: u64,
    ) {
        self.xid = self.xid.wrapping_add(1);
        let xid = self.xid;
        let (prog, vers, proc_) = match &purpose {
            Purpose::Mnt { .. } => (rpc::program::MOUNT, 3, mount::proc_::MNT),
            Purpose::RootAttr { .. } => (rpc::program::NFS, 3, Proc::Getattr as u32),
            Purpose::Fsstat { .. } => (rpc::program::NFS, 3, Proc::Fsstat as u32),
            Purpose::Fsinfo { .. } => (rpc::program::NFS, 3, Proc::Fsinfo as u32),
            Purpose::Walk { plus: true, .. } => (rpc::program::NFS, 3, Proc::Readdirplus as u32),
            Purpose::Walk { plus: false, .. } => (rpc::program::NFS, 3, Proc::Readdir as u32),
            Purpose::WalkLookup { .. } => (rpc::program::NFS, 3, Proc::Lookup as u32),
        };
        let mut w = Writer::new();
        w.call_sys(xid, prog, vers, proc_, 0, 0);
        build(&mut w);
        self.outbox.push(Outgoing {
            dst,
            payload: w.buf.clone(),
        });
        self.pending.insert(
            xid,
            Pending {
                purpose,
                dst,
                payload: w.buf,
                sent: now,
                tries: 1,
            },
        );
    }

    fn nfs_dst(&self, sid: u16) -> Option<(Ipv4Addr, u16)> {
        self.shared.server(sid).map(|s| (s.addr, s.nfs_port))
    }

    /// Timers: mounts to (re)try, FSSTAT refreshes, retransmissions, walks to start.
    pub fn poll(&mut self, now: u64) {
        for i in 0..self.servers.len() {
            let s = &self.servers[i];
            let sid = s.sid;
            let Some(cfg) = self.shared.server(sid) else {
                continue;
            };
            let (dst_mount, export) = ((cfg.addr, cfg.mount_port), cfg.export.clone());
            let nfs = (cfg.addr, cfg.nfs_port);
            if s.mounted.is_none() && !s.mounting && s.next_try <= now {
                self.servers[i].mounting = true;
                self.send(
                    Purpose::Mnt { sid },
                    dst_mount,
                    |w| {
                        w.opaque(export.as_bytes());
                    },
                    now,
                );
            } else if let Some(m) = &s.mounted {
                if s.refresh_at <= now {
                    let pfh = m.root_pfh.clone();
                    self.servers[i].refresh_at = now + REFRESH_MS;
                    self.send(
                        Purpose::Fsstat { sid },
                        nfs,
                        |w| {
                            w.opaque(&pfh);
                        },
                        now,
                    );
                }
            }
        }
        let due: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_sub(p.sent) >= RETRY_MS)
            .map(|(x, _)| *x)
            .collect();
        for xid in due {
            let Some(p) = self.pending.get_mut(&xid) else {
                continue;
            };
            if p.tries >= TRIES {
                let purpose = p.purpose.clone();
                self.pending.remove(&xid);
                self.stats.timeouts += 1;
                self.failed(purpose, "no reply", now);
            } else {
                p.tries += 1;
                p.sent = now;
                self.stats.retransmits += 1;
                let out = Outgoing {
                    dst: p.dst,
                    payload: p.payload.clone(),
                };
                self.outbox.push(out);
            }
        }
        self.negative.retain(|_, until| *until > now);
        // One walk per server that has handles to find.
        let mut sids: Vec<u16> = self.targets.values().map(|t| t.sid).collect();
        sids.sort_unstable();
        sids.dedup();
        for sid in sids {
            if self.walks.contains_key(&sid) {
                continue;
            }
            let Some(root) = self.mounted(sid).map(|m| m.root_pfh.clone()) else {
                continue; // mounts first
            };
            self.stats.walks += 1;
            self.walk_ids += 1;
            self.walks.insert(
                sid,
                Walk {
                    id: self.walk_ids,
                    queue: VecDeque::from([root]),
                    cur: None,
                    cookie: 0,
                    verf: [0; 8],
                    names: VecDeque::new(),
                    lookups: 0,
                    listed: false,
                },
            );
            self.walk_step(sid, now);
        }
    }

    fn failed(&mut self, purpose: Purpose, why: &str, now: u64) {
        match purpose {
            Purpose::Mnt { sid } | Purpose::RootAttr { sid, .. } => {
                if let Some(s) = self.state(sid) {
                    s.mounting = false;
                    s.next_try = now + MOUNT_RETRY_MS;
                    s.last_error = Some(why.to_string());
                }
            }
            Purpose::Fsstat { .. } | Purpose::Fsinfo { .. } => {}
            // The walk starts over at the next poll (the targets are still wanted).
            Purpose::Walk { sid, walk, .. } => {
                if self.walks.get(&sid).is_some_and(|w| w.id == walk) {
                    self.walks.remove(&sid);
                }
            }
            // One entry not looked up (gone since it was listed, or no answer): the walk
            // carries on without it.
            Purpose::WalkLookup { sid, walk } => {
                if let Some(w) = self.walks.get_mut(&sid).filter(|w| w.id == walk) {
                    w.lookups = w.lookups.saturating_sub(1);
                    self.walk_step(sid, now);
                }
            }
        }
    }

    /// A call arrived with the verified handle `v` whose physical handle is unknown.
    pub fn want(&mut self, v: &VirtualHandle, now: u64) -> Want {
        self.stats.recovery_calls += 1;
        if self.negative.get(&v.hid).is_some_and(|&until| until > now) {
            return Want::Stale;
        }
        if self.shared.server(v.sid).is_none() {
            return Want::Stale;
        }
        if self.targets.len() < MAX_TARGETS || self.targets.contains_key(&v.hid) {
            self.targets.entry(v.hid).or_insert(Target {
                sid: v.sid,
                first: now,
            });
        }
        Want::Wait
    }

    /// A datagram that arrived at [`CLIENT_PORT`].
    pub fn reply(&mut self, msg: &[u8], now: u64) {
        let Ok(rpc::Message::Reply(r)) = rpc::parse(msg) else {
            self.stats.stray_replies += 1;
            return;
        };
        let Some(p) = self.pending.remove(&r.xid()) else {
            self.stats.stray_replies += 1;
            return;
        };
        let results_at = match r {
            rpc::Reply::Accepted {
                stat: rpc::AcceptStat::Success { results_at },
                ..
            } => results_at,
            other => {
                let why = format!("RPC refused: {other:?}");
                self.failed(p.purpose, &why, now);
                return;
            }
        };
        let done = match p.purpose.clone() {
            Purpose::Mnt { sid } => self.on_mnt(sid, msg, results_at, now),
            Purpose::RootAttr { sid, pfh } => self.on_root_attr(sid, pfh, msg, results_at, now),
            Purpose::Fsstat { sid } => self.on_fsstat(sid, msg, results_at),
            Purpose::Fsinfo { sid } => self.on_fsinfo(sid, msg, results_at),
            Purpose::Walk { sid, walk, plus } => {
                if self.walks.get(&sid).is_some_and(|w| w.id == walk) {
                    self.on_walk(sid, plus, msg, results_at, now)
                } else {
                    Ok(()) // a walk given up since
                }
            }
            Purpose::WalkLookup { sid, walk } => {
                if self.walks.get(&sid).is_some_and(|w| w.id == walk) {
                    self.on_lookup(sid, msg, results_at, now)
                } else {
                    Ok(())
                }
            }
        };
        if let Err(why) = done {
            self.stats.stray_replies += 1;
            self.failed(p.purpose, &why, now);
        }
    }

    fn on_mnt(&mut self, sid: u16, msg: &[u8], at: usize, now: u64) -> Result<(), String> {
        let mut fh = None;
        let (status, _) = mount::walk_reply(mount::proc_::MNT, msg, at, |f| {
            if let Field::Handle { at, len } = f {
                fh = msg.get(at + 4..at + 4 + len).map(<[u8]>::to_vec);
            }
        })
        .map_err(|e| format!("MNT reply: {e}"))?;
        let Some(pfh) = fh.filter(|_| status == 0) else {
            return Err(format!("MNT refused: mountstat3 {status}"));
        };
        let dst = self.nfs_dst(sid).ok_or("server gone")?;
        self.send(
            Purpose::RootAttr {
                sid,
                pfh: pfh.clone(),
            },
            dst,
            |w| {
                w.opaque(&pfh);
            },
            now,
        );
        Ok(())
    }

    fn on_root_attr(
        &mut self,
        sid: u16,
        pfh: Vec<u8>,
        msg: &[u8],
        at: usize,
        now: u64,
    ) -> Result<(), String> {
        let mut attr = None;
        let (status, _) = nfs3::walk_reply(Proc::Getattr, msg, at, |f| {
            if let Field::Fattr { at } = f {
                attr = msg.get(at..at + Field::FATTR_LEN);
            }
        })
        .map_err(|e| format!("GETATTR reply: {e}"))?;
        let Some(a) = attr.filter(|_| status == nfs3::stat::OK) else {
            return Err(format!("GETATTR of the export root: nfsstat3 {status}"));
        };
        let mut root_attr = [0u8; Field::FATTR_LEN];
        root_attr.copy_from_slice(a);
        let (pfs, pin) = (be64(a, Field::FATTR_FSID), be64(a, Field::FATTR_FILEID));
        let hid = vfh::handle_id(&self.shared.key, sid, pfs, pin, &pfh);
        self.shared.handles.insert(hid, &pfh);
        if self.targets.remove(&hid).is_some() {
            self.recovered.push(hid);
        }
        let dst = self.nfs_dst(sid).ok_or("server gone")?;
        if let Some(s) = self.state(sid) {
            s.mounting = false;
            s.last_error = None;
            s.mounts += 1;
            s.refresh_at = now + REFRESH_MS;
            s.mounted = Some(Mounted {
                root_pfh: pfh.clone(),
                root_pfs: pfs,
                root_pin: pin,
                root_attr,
                fsstat: None,
                fsinfo: None,
                since_ms: now,
            });
        }
        for purpose in [Purpose::Fsstat { sid }, Purpose::Fsinfo { sid }] {
            self.send(
                purpose,
                dst,
                |w| {
                    w.opaque(&pfh);
                },
                now,
            );
        }
        Ok(())
    }

    fn on_fsinfo(&mut self, sid: u16, msg: &[u8], at: usize) -> Result<(), String> {
        let mut c = Cursor::at(msg, at);
        let e = |e: XdrError| format!("FSINFO reply: {e}");
        if c.u32().map_err(e)? != nfs3::stat::OK {
            return Ok(());
        }
        if c.bool().map_err(e)? {
            c.skip(Field::FATTR_LEN).map_err(e)?;
        }
        let mut v = [0u32; 7]; // rtmax rtpref rtmult wtmax wtpref wtmult dtpref
        for x in &mut v {
            *x = c.u32().map_err(e)?;
        }
        if let Some(m) = self.state(sid).and_then(|s| s.mounted.as_mut()) {
            m.fsinfo = Some([v[0], v[3], v[6]]);
        }
        Ok(())
    }

    /// The largest READ and WRITE every mounted server takes (the smallest of their FSINFO
    /// rtmax and wtmax), once at least one server has told.
    pub fn transfer_max(&self) -> Option<u32> {
        self.servers
            .iter()
            .filter_map(|s| s.mounted.as_ref()?.fsinfo)
            .map(|[r, w, _]| r.min(w))
            .filter(|&m| m > 0)
            .min()
    }

    fn on_fsstat(&mut self, sid: u16, msg: &[u8], at: usize) -> Result<(), String> {
        let mut c = Cursor::at(msg, at);
        let e = |e: XdrError| format!("FSSTAT reply: {e}");
        if c.u32().map_err(e)? != nfs3::stat::OK {
            return Ok(()); // keep what we had
        }
        if c.bool().map_err(e)? {
            c.skip(Field::FATTR_LEN).map_err(e)?;
        }
        let mut v = [0u64; 6];
        for x in &mut v {
            *x = c.u64().map_err(e)?;
        }
        if let Some(m) = self.state(sid).and_then(|s| s.mounted.as_mut()) {
            m.fsstat = Some(v);
        }
        Ok(())
    }

    /// An entry a walk found (its attributes `a` and handle `fh`): into the handle table, a
    /// target recovered, a subdirectory queued.
    fn found(&mut self, sid: u16, a: &[u8], fh: &[u8], now: u64) {
        if fh.is_empty() || a.len() < Field::FATTR_LEN {
            return;
        }
        self.stats.walk_entries += 1;
        let (pfs, pin) = (be64(a, Field::FATTR_FSID), be64(a, Field::FATTR_FILEID));
        let hid = vfh::handle_id(&self.shared.key, sid, pfs, pin, fh);
        self.shared.handles.insert(hid, fh);
        if let Some(t) = self.targets.remove(&hid) {
            self.recovered.push(hid);
            let waited = now.saturating_sub(t.first);
            self.stats.recovered += 1;
            self.stats.wait_ms_total += waited;
            self.stats.wait_ms_max = self.stats.wait_ms_max.max(waited);
        }
        if u32::from_be_bytes([a[0], a[1], a[2], a[3]]) == NF3DIR {
            if let Some(w) = self.walks.get_mut(&sid) {
                if w.queue.len() < MAX_QUEUE {
                    w.queue.push_back(fh.to_vec());
                }
            }
        }
    }

    /// A listing of the walk's current directory: READDIRPLUS (`plus`) or READDIR.
    fn on_walk(
        &mut self,
        sid: u16,
        plus: bool,
        msg: &[u8],
        at: usize,
        now: u64,
    ) -> Result<(), String> {
        let e = |e: XdrError| {
            format!(
                "{} reply: {e}",
                if plus { "READDIRPLUS" } else { "READDIR" }
            )
        };
        let mut c = Cursor::at(msg, at);
        let status = c.u32().map_err(e)?;
        if c.bool().map_err(e)? {
            c.skip(Field::FATTR_LEN).map_err(e)?;
        }
        if status == nfs3::stat::NOTSUPP && plus {
            // No READDIRPLUS here: list this directory again with READDIR, and every later
            // one of this server.
            if let Some(s) = self.state(sid) {
                s.walk_method = WalkMethod::ReaddirLookup;
            }
            self.stats.readdirplus_refused += 1;
            if let Some(w) = self.walks.get_mut(&sid) {
                w.cookie = 0;
                w.verf = [0; 8];
            }
            self.walk_step(sid, now);
            return Ok(());
        }
        if status != nfs3::stat::OK {
            // Unreadable directory (or gone since): skip it.
            if let Some(w) = self.walks.get_mut(&sid) {
                w.cur = None;
                w.names.clear();
            }
            self.walk_step(sid, now);
            return Ok(());
        }
        let mut verf = [0u8; 8];
        verf.copy_from_slice(c.opaque_fixed(8).map_err(e)?);
        let mut last_cookie = 0;
        let mut names = Vec::new();
        while c.bool().map_err(e)? {
            c.u64().map_err(e)?; // fileid (the attributes carry it too)
            let name = c.string(nfs3::NAME_MAX).map_err(e)?;
            last_cookie = c.u64().map_err(e)?;
            if !plus {
                if name != b"." && name != b".." {
                    names.push(name.to_vec());
                }
                continue;
            }
            let attr = if c.bool().map_err(e)? {
                Some(c.opaque_fixed(Field::FATTR_LEN).map_err(e)?)
            } else {
                None
            };
            let fh = if c.bool().map_err(e)? {
                Some(c.opaque_var(crate::wire::xdr::FHSIZE3).map_err(e)?.1)
            } else {
                None
            };
            if name == b"." || name == b".." {
                continue;
            }
            if let (Some(a), Some(fh)) = (attr, fh) {
                self.found(sid, a, fh, now);
            }
        }
        let eof = c.bool().map_err(e)?;
        if let Some(w) = self.walks.get_mut(&sid) {
            w.names.extend(names);
            if eof {
                w.listed = true;
            } else {
                w.cookie = last_cookie;
                w.verf = verf;
            }
        }
        self.walk_step(sid, now);
        Ok(())
    }

    /// A LOOKUP of a listed entry: its handle and attributes.
    fn on_lookup(&mut self, sid: u16, msg: &[u8], at: usize, now: u64) -> Result<(), String> {
        if let Some(w) = self.walks.get_mut(&sid) {
            w.lookups = w.lookups.saturating_sub(1);
        }
        let e = |e: XdrError| format!("LOOKUP reply: {e}");
        let mut c = Cursor::at(msg, at);
        let entry = (|| {
            if c.u32()? != nfs3::stat::OK {
                return Ok(None); // gone since the listing
            }
            let fh = c.opaque_var(crate::wire::xdr::FHSIZE3)?.1;
            let attr = if c.bool()? {
                Some(c.opaque_fixed(Field::FATTR_LEN)?)
            } else {
                None
            };
            Ok(attr.map(|a| (a, fh)))
        })()
        .map_err(e);
        if let Ok(Some((a, fh))) = entry {
            self.found(sid, a, fh, now);
        }
        self.walk_step(sid, now);
        entry.map(|_| ())
    }

    /// Send the walk's next calls (a listing, or LOOKUPs of what a READDIR listed), or end it.
    fn walk_step(&mut self, sid: u16, now: u64) {
        let wanted = self.targets.values().any(|t| t.sid == sid);
        let method = self
            .servers
            .iter()
            .find(|s| s.sid == sid)
            .map_or(WalkMethod::Readdirplus, |s| s.walk_method);
        let Some(dst) = self.nfs_dst(sid) else {
            return;
        };
        let Some(w) = self.walks.get_mut(&sid) else {
            return;
        };
        if !wanted {
            self.walks.remove(&sid);
            return;
        }
        let walk = w.id;
        // The current directory's entries first, a window at a time.
        if let Some(dir) = w.cur.clone() {
            let mut batch = Vec::new();
            while w.lookups < LOOKUP_WINDOW {
                let Some(name) = w.names.pop_front() else {
                    break;
                };
                w.lookups += 1;
                batch.push(name);
            }
            let busy = w.lookups > 0;
            if w.listed && !busy {
                w.cur = None;
            }
            for name in batch {
                self.stats.walk_lookups += 1;
                let lookup = Purpose::WalkLookup { sid, walk };
                self.send(
                    lookup,
                    dst,
                    |c| {
                        c.opaque(&dir).opaque(&name);
                    },
                    now,
                );
            }
            if busy {
                return;
            }
        }
        let Some(w) = self.walks.get_mut(&sid) else {
            return;
        };
        if w.cur.is_none() {
            match w.queue.pop_front() {
                Some(d) => {
                    w.cur = Some(d);
                    w.cookie = 0;
                    w.verf = [0; 8];
                    w.listed = false;
                    self.stats.walk_dirs += 1;
                }
                None => {
                    // The whole tree, and not found: those files are gone.
                    self.walks.remove(&sid);
                    let gone: Vec<u64> = self
                        .targets
                        .iter()
                        .filter(|(_, t)| t.sid == sid)
                        .map(|(v, _)| *v)
                        .collect();
                    for hid in gone {
                        self.targets.remove(&hid);
                        self.negative.insert(hid, now + NEGATIVE_MS);
                        self.stats.recovery_failed += 1;
                    }
                    return;
                }
            }
        }
        let (Some(dir), cookie, verf) = (w.cur.clone(), w.cookie, w.verf) else {
            return;
        };
        let max = self.shared.limits.max_dir;
        let plus = method == WalkMethod::Readdirplus;
        self.send(
            Purpose::Walk { sid, walk, plus },
            dst,
            |w| {
                w.opaque(&dir).u64(cookie).fixed(&verf).u32(max);
                if plus {
                    w.u32(max);
                }
            },
            now,
        );
    }
}
