//! Web exports (mutation, after the Gecko NFS web proxy): entries of the virtual root whose
//! files are the HTTP resources of an origin server, answered by the router itself, so that
//! programs that only know open/read/stat/readdir use the web unchanged.
//!
//! - LOOKUP of `a/b/c` under an export is `BASE/a/b/c`. A name is a directory when the origin
//!   answers with an index page: its link ends in `/` in the parent's listing, or the origin
//!   redirects `name` to `name/`. READDIR(PLUS) lists a directory's links ([`listing`]).
//! - Attributes come from the response: size from Content-Length (or the body), mtime from
//!   Last-Modified (for an index page without one: when its content last changed), a stable
//!   fileid per URL (keyed, like every VIN), mode read-only. Handles are VFHs with
//!   [`FLAG_WEB`](crate::vfh::FLAG_WEB), SID 0 and the export's id as PFS, and PIN = HID = a keyed
//!   hash of the path: the same after a restart, when an unknown one is found again by
//!   walking the export's listings from its root.
//! - READ goes through a bounded LRU cache of 64 KiB blocks filled with `Range:` requests
//!   (with read-ahead); after the export's lifetime a resource is revalidated (If-None-Match /
//!   If-Modified-Since; `If-Range` on ranges), a changed one gets its new size and mtime and
//!   its blocks dropped, a vanished one (404/410) is NFS3ERR_STALE. Writes are NFS3ERR_ROFS.
//! - The HTTP side is a thread pool per origin ([`fetch`]): calls that need the origin are
//!   held (the client retransmits meanwhile) and answered when their request finishes; an
//!   origin that fails or times out gets them NFS3ERR_IO, counted, and no other export waits.

pub mod fetch;
pub mod listing;

use crate::control::Peer;
use crate::rewrite::Limits;
use crate::vfh::{self, HandleKey, VirtualHandle, VFH_LEN};
use crate::wire::nfs3::{self, stat, Proc};
use crate::wire::rpc::Writer;
use crate::wire::{Cursor, Field};
use fetch::{Answer, FetchError, Fetched, Job, Pool, PoolConfig, Validators, Want};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Cache block size, and the alignment of every range asked for.
pub const BLOCK: u64 = 64 * 1024;
/// Blocks fetched ahead of a READ that misses (one request: 512 KiB).
const READAHEAD: u64 = 8;
/// Calls held per resource, and in all.
const HOLD_PER_NODE: usize = 64;
const HOLD_TOTAL: usize = 4096;
/// Resources known at most, over all web exports.
const NODES_MAX: usize = 1 << 18;
/// Index pages a walk for unknown handles reads at most.
const WALK_MAX: u64 = 100_000;
/// After a failed request, calls on the resource get NFS3ERR_IO for this long (ms) before
/// the origin is asked again.
const FAIL_HOLD_MS: u64 = 1000;

/// ACCESS3 bits: READ, LOOKUP, EXECUTE.
const ACCESS_DIR: u32 = 0x01 | 0x02 | 0x20;
const ACCESS_FILE: u32 = 0x01;

/// A web export as an entry of the virtual root: name, fileid, attributes, handle.
pub type RootEntry = (Vec<u8>, u64, [u8; Field::FATTR_LEN], [u8; VFH_LEN]);

/// One web export of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSpec {
    /// Its name in the virtual root.
    pub name: String,
    /// The origin base URL, `http://host:port/path/` (ends in `/`).
    pub base: String,
    /// Bytes of file blocks cached.
    pub cache_bytes: usize,
    /// How long a response is used before it is revalidated (ms).
    pub lifetime_ms: u64,
    /// Whole-request timeout (ms): a call waits at most about this long for the origin.
    pub timeout_ms: u64,
    /// Request threads and keep-alive connections to the origin.
    pub connections: usize,
}

/// Counters of one web export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebStats {
    /// NFS calls on its handles.
    pub calls: u64,
    /// READs answered from the cache, and READs that waited for the origin.
    pub hits: u64,
    pub misses: u64,
    /// Requests sent, bytes of body received, and how long they took in all (ms).
    pub fetches: u64,
    pub fetched_bytes: u64,
    pub fetch_ms: u64,
    /// Revalidations: unchanged (304 or the same validators), changed.
    pub not_modified: u64,
    pub changed: u64,
    /// Resources the origin no longer has (404/410).
    pub gone: u64,
    /// Failed requests, by cause.
    pub timeouts: u64,
    pub connect_errors: u64,
    pub status_errors: u64,
    pub other_errors: u64,
    /// Calls answered NFS3ERR_IO (origin failed), NFS3ERR_STALE, NFS3ERR_ROFS (any change).
    pub io_errors: u64,
    pub stale: u64,
    pub rofs: u64,
    /// Calls not held for lack of room, requests not queued (the pool's queue full).
    pub hold_full: u64,
    pub queue_full: u64,
    /// Index pages read to find handles not known (after a restart), and handles found.
    pub walk_pages: u64,
    pub walk_found: u64,
    /// Cache blocks evicted.
    pub evicted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Listed without a `/`: a file, unless the origin redirects it.
    Unknown,
    File,
    Dir,
}

/// A resource of a web export.
#[derive(Debug)]
struct Node {
    export: usize,
    /// Decoded names joined by `/`; empty for the export's root.
    path: Vec<u8>,
    parent: u64,
    kind: Kind,
    size: u64,
    /// Seconds since the epoch.
    mtime: u64,
    validators: Validators,
    /// When the origin last confirmed the attributes (ms); None: never.
    checked: Option<u64>,
    /// A directory: its index page's digest and entries.
    digest: u64,
    children: Vec<u64>,
    gone: bool,
    failed_until: u64,
    meta_busy: bool,
}

impl Node {
    /// A resource not asked about yet.
    fn new(export: usize, path: Vec<u8>, parent: u64, kind: Kind, mtime: u64) -> Self {
        Node {
            export,
            path,
            parent,
            kind,
            size: if kind == Kind::Dir { 4096 } else { 0 },
            mtime,
            validators: Validators::default(),
            checked: None,
            digest: 0,
            children: Vec::new(),
            gone: false,
            failed_until: 0,
            meta_busy: false,
        }
    }

    fn name(&self) -> &[u8] {
        match self.path.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.path[i + 1..],
            None => &self.path,
        }
    }

    fn depth(&self) -> usize {
        self.path.iter().filter(|&&b| b == b'/').count()
    }
}

/// A bounded LRU of file blocks, by (resource, block number).
#[derive(Debug, Default)]
struct BlockCache {
    max: usize,
    used: usize,
    seq: u64,
    map: HashMap<(u64, u64), (u64, Vec<u8>)>,
    lru: BTreeMap<u64, (u64, u64)>,
}

impl BlockCache {
    fn contains(&self, k: (u64, u64)) -> bool {
        self.map.contains_key(&k)
    }

    fn touch(&mut self, k: (u64, u64)) -> Option<&[u8]> {
        self.seq += 1;
        let seq = self.seq;
        let e = self.map.get_mut(&k)?;
        self.lru.remove(&e.0);
        self.lru.insert(seq, k);
        e.0 = seq;
        Some(&e.1)
    }

    /// Store a block; returns how many were evicted for room.
    fn put(&mut self, k: (u64, u64), data: Vec<u8>) -> u64 {
        self.remove(k);
        let mut evicted = 0;
        while self.used + data.len() > self.max {
            let Some((_, old)) = self.lru.pop_first() else {
                break;
            };
            if let Some((_, d)) = self.map.remove(&old) {
                self.used -= d.len();
                evicted += 1;
            }
        }
        if self.used + data.len() <= self.max {
            self.seq += 1;
            self.used += data.len();
            self.lru.insert(self.seq, k);
            self.map.insert(k, (self.seq, data));
        }
        evicted
    }

    fn remove(&mut self, k: (u64, u64)) {
        if let Some((seq, d)) = self.map.remove(&k) {
            self.lru.remove(&seq);
            self.used -= d.len();
        }
    }

    /// Drop the blocks of a file of `size` bytes.
    fn drop_file(&mut self, pin: u64, size: u64) {
        for b in 0..size.div_ceil(BLOCK) {
            self.remove((pin, b));
        }
    }
}

/// One web export at run time.
#[derive(Debug)]
struct Export {
    spec: WebSpec,
    /// The PFS and MCH of its handles.
    id: u64,
    mch: u32,
    root: u64,
    pool: Result<Pool, String>,
    cache: BlockCache,
    /// Blocks being fetched.
    inflight: HashSet<(u64, u64)>,
    /// Handles not known, looked for by walking the listings; the walk's page in flight,
    /// pages read in this walk, and handles a whole walk did not find.
    wanted: HashSet<u64>,
    walking: Option<u64>,
    walk_pages: u64,
    not_found: HashSet<u64>,
    stats: WebStats,
    last_error: Option<String>,
}

/// What a call needs of a resource.
enum Ready {
    Yes,
    /// Held: the origin is asked.
    Wait,
    /// Answer with this nfsstat3.
    Fail(u32),
}

/// The web exports.
#[derive(Debug)]
pub struct Web {
    key: HandleKey,
    /// The fsid clients see.
    fsid: u64,
    /// The virtual root's handle (`..` of an export's root).
    root_handle: [u8; VFH_LEN],
    /// The router's start (the times of resources not seen yet).
    epoch_secs: u64,
    exports: Vec<Export>,
    nodes: HashMap<u64, Node>,
    held: HashMap<u64, Vec<(Peer, Vec<u8>)>>,
    held_total: usize,
    /// Held calls whose resource is ready: decided again by the controller.
    ready: Vec<(Peer, Vec<u8>)>,
    /// Resources not recorded for lack of room.
    pub nodes_full: u64,
}

fn wall_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Web {
    /// No web exports.
    pub fn none(key: HandleKey, fsid: u64, root_handle: [u8; VFH_LEN]) -> Self {
        Web {
            key,
            fsid,
            root_handle,
            epoch_secs: wall_secs(),
            exports: Vec::new(),
            nodes: HashMap::new(),
            held: HashMap::new(),
            held_total: 0,
            ready: Vec::new(),
            nodes_full: 0,
        }
    }

    /// Add a web export and start its request threads (an export whose threads cannot start
    /// answers NFS3ERR_IO, and says why in its stats).
    pub fn add(&mut self, spec: WebSpec) {
        let (id, mch) = self
            .key
            .web_export(spec.name.as_bytes(), spec.base.as_bytes());
        let root = self.key.web_pin(id, b"");
        let pool = Pool::start(
            &spec.name,
            PoolConfig {
                connections: spec.connections.max(1),
                queue: 1024,
                timeout: Duration::from_millis(spec.timeout_ms.max(1)),
                body_max: (spec.cache_bytes as u64).max(64 << 20),
            },
        )
        .map_err(|e| format!("starting the request threads: {e}"));
        let export = self.exports.len();
        self.nodes.insert(
            root,
            Node::new(export, Vec::new(), 0, Kind::Dir, self.epoch_secs),
        );
        self.exports.push(Export {
            cache: BlockCache {
                max: spec.cache_bytes,
                ..BlockCache::default()
            },
            spec,
            id,
            mch,
            root,
            pool,
            inflight: HashSet::new(),
            wanted: HashSet::new(),
            walking: None,
            walk_pages: 0,
            not_found: HashSet::new(),
            stats: WebStats::default(),
            last_error: None,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.exports.is_empty()
    }

    /// Calls held for the origins.
    pub fn held(&self) -> usize {
        self.held_total
    }

    fn handle(&self, e: usize, pin: u64) -> [u8; VFH_LEN] {
        let x = &self.exports[e];
        VirtualHandle {
            flags: vfh::FLAG_WEB,
            sid: 0,
            mch: x.mch,
            pfs: x.id,
            pin,
            hid: pin,
        }
        .encode(&self.key)
    }

    fn vin(&self, e: usize, pin: u64) -> u64 {
        vfh::virtual_inode(&self.key, 0, self.exports[e].id, pin)
    }

    fn attr(&self, pin: u64) -> [u8; Field::FATTR_LEN] {
        let mut w = Writer::new();
        let Some(n) = self.nodes.get(&pin) else {
            return [0; Field::FATTR_LEN];
        };
        let dir = n.kind == Kind::Dir;
        let size = if dir { 4096 } else { n.size };
        w.u32(if dir { 2 } else { 1 })
            .u32(if dir { 0o555 } else { 0o444 })
            .u32(if dir { 2 } else { 1 })
            .u32(0)
            .u32(0)
            .u64(size)
            .u64(size.div_ceil(4096) * 4096)
            .u32(0)
            .u32(0)
            .u64(self.fsid)
            .u64(self.vin(n.export, pin));
        for _ in 0..3 {
            w.u32(n.mtime as u32).u32(0);
        }
        let mut a = [0u8; Field::FATTR_LEN];
        a.copy_from_slice(&w.buf);
        a
    }

    /// The exports as entries of the virtual root: (name, fileid, attributes, handle).
    pub fn root_entries(&self) -> Vec<RootEntry> {
        (0..self.exports.len())
            .map(|e| {
                let root = self.exports[e].root;
                (
                    self.exports[e].spec.name.as_bytes().to_vec(),
                    self.vin(e, root),
                    self.attr(root),
                    self.handle(e, root),
                )
            })
            .collect()
    }

    /// The root handle of the export `name` (MNT of `/NAME`).
    pub fn mount(&self, name: &str) -> Option<[u8; VFH_LEN]> {
        let e = self.exports.iter().position(|x| x.spec.name == name)?;
        Some(self.handle(e, self.exports[e].root))
    }

    /// The names of the exports.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.exports.iter().map(|x| x.spec.name.as_str())
    }

    /// The URL of a resource.
    fn url(&self, pin: u64) -> Option<String> {
        let n = self.nodes.get(&pin)?;
        let mut u = self.exports.get(n.export)?.spec.base.clone();
        for (i, seg) in n.path.split(|&b| b == b'/').enumerate() {
            if i > 0 {
                u.push('/');
            }
            listing::percent_encode(seg, &mut u);
        }
        if n.kind == Kind::Dir && !n.path.is_empty() {
            u.push('/');
        }
        Some(u)
    }

    fn submit(&mut self, e: usize, job: Job) -> bool {
        let x = &mut self.exports[e];
        let ok = x.pool.as_ref().is_ok_and(|p| p.submit(job));
        if ok {
            x.stats.fetches += 1;
        } else {
            x.stats.queue_full += 1;
        }
        ok
    }

    /// Whether the attributes (and a directory's entries) of `pin` are current; if not, the
    /// origin is asked.
    fn ready(&mut self, pin: u64, now: u64) -> Ready {
        let Some(n) = self.nodes.get(&pin) else {
            return Ready::Fail(stat::STALE);
        };
        let e = n.export;
        if n.gone {
            return Ready::Fail(stat::STALE);
        }
        if now < n.failed_until {
            return Ready::Fail(stat::IO);
        }
        if self.exports[e].pool.is_err() {
            return Ready::Fail(stat::IO);
        }
        let lifetime = self.exports[e].spec.lifetime_ms;
        let fresh = n
            .checked
            .is_some_and(|t| now.saturating_sub(t) < lifetime && n.kind != Kind::Unknown);
        if fresh {
            return Ready::Yes;
        }
        if n.meta_busy {
            return Ready::Wait;
        }
        let dir = n.kind == Kind::Dir;
        let validators = if n.checked.is_some() {
            n.validators.clone()
        } else {
            Validators::default()
        };
        let Some(url) = self.url(pin) else {
            return Ready::Fail(stat::STALE);
        };
        if self.submit(
            e,
            Job {
                pin,
                url,
                want: Want::Meta { dir },
                validators,
            },
        ) {
            if let Some(n) = self.nodes.get_mut(&pin) {
                n.meta_busy = true;
            }
        }
        Ready::Wait
    }

    fn hold(&mut self, pin: u64, peer: Peer, msg: &[u8], e: usize) {
        let q = self.held.entry(pin).or_default();
        let xid = msg.get(..4);
        if q.iter().any(|(p, m)| *p == peer && m.get(..4) == xid) {
            return; // a retransmission of a call already held
        }
        if q.len() < HOLD_PER_NODE && self.held_total < HOLD_TOTAL {
            q.push((peer, msg.to_vec()));
            self.held_total += 1;
        } else {
            self.exports[e].stats.hold_full += 1;
        }
    }

    fn release(&mut self, pin: u64) {
        if let Some(q) = self.held.remove(&pin) {
            self.held_total -= q.len();
            self.ready.extend(q);
        }
    }

    /// The reply to an NFS call on web handle `v` (the first of the call), None when it is
    /// held for the origin (it comes back through [`Web::poll`]).
    #[allow(clippy::too_many_arguments)]
    pub fn call(
        &mut self,
        xid: u32,
        p: Proc,
        msg: &[u8],
        args_at: usize,
        v: &VirtualHandle,
        peer: Peer,
        now: u64,
        limits: Limits,
    ) -> Option<Vec<u8>> {
        let mut w = Writer::new();
        w.accepted_reply(xid, 0);
        let Some(e) = self
            .exports
            .iter()
            .position(|x| x.id == v.pfs && x.mch == v.mch)
        else {
            // An export no longer configured (or moved to another origin).
            w.u32(stat::STALE);
            crate::control::failure_body(&mut w, p);
            return Some(w.buf);
        };
        self.exports[e].stats.calls += 1;
        let pin = v.hid;
        if !self.nodes.contains_key(&pin) {
            // Not known (a restarted router): walk the listings for it.
            if self.exports[e].not_found.contains(&pin) {
                self.exports[e].stats.stale += 1;
                w.u32(stat::STALE);
                crate::control::failure_body(&mut w, p);
                return Some(w.buf);
            }
            self.hold(pin, peer, msg, e);
            self.exports[e].wanted.insert(pin);
            self.walk(e, now);
            return None;
        }
        let mut args = Cursor::at(msg, args_at);
        let _ = args.opaque_var(crate::wire::xdr::FHSIZE3);
        let status = match p {
            Proc::Getattr
            | Proc::Access
            | Proc::Lookup
            | Proc::Read
            | Proc::Readdir
            | Proc::Readdirplus => match self.ready(pin, now) {
                Ready::Yes => self.answer(e, p, pin, &mut args, &mut w, peer, msg, now, limits)?,
                Ready::Wait => {
                    self.hold(pin, peer, msg, e);
                    return None;
                }
                Ready::Fail(st) => st,
            },
            Proc::Readlink => stat::INVAL,
            Proc::Fsstat => {
                let attr = self.attr(pin);
                let x = &self.exports[e];
                w.u32(stat::OK).bool(true).fixed(&attr);
                let total = x.cache.max as u64;
                let files = self.nodes.values().filter(|n| n.export == e).count() as u64;
                w.u64(total).u64(0).u64(0).u64(files).u64(0).u64(0).u32(0);
                return Some(w.buf);
            }
            Proc::Fsinfo => {
                let attr = self.attr(pin);
                w.u32(stat::OK)
                    .bool(true)
                    .fixed(&attr)
                    .u32(limits.max_io)
                    .u32(limits.max_io)
                    .u32(512)
                    .u32(limits.max_io)
                    .u32(limits.max_io)
                    .u32(512)
                    .u32(limits.max_dir)
                    .u64(u64::MAX >> 1)
                    .u32(1)
                    .u32(0) // time_delta: 1 s (HTTP dates)
                    .u32(0x08); // HOMOGENEOUS
                return Some(w.buf);
            }
            Proc::Pathconf => {
                let attr = self.attr(pin);
                w.u32(stat::OK)
                    .bool(true)
                    .fixed(&attr)
                    .u32(1)
                    .u32(nfs3::NAME_MAX as u32)
                    .bool(true)
                    .bool(true)
                    .bool(false)
                    .bool(true);
                return Some(w.buf);
            }
            // Every procedure that changes something: the web export is read-only.
            _ => {
                self.exports[e].stats.rofs += 1;
                stat::ROFS
            }
        };
        if status == stat::OK {
            return Some(w.buf);
        }
        match status {
            stat::IO => self.exports[e].stats.io_errors += 1,
            stat::STALE => self.exports[e].stats.stale += 1,
            _ => {}
        }
        let mut w = Writer::new();
        w.accepted_reply(xid, 0).u32(status);
        match p {
            // The object's attributes where the failure shape has them and they are known.
            Proc::Getattr => {}
            Proc::Access | Proc::Read | Proc::Readlink | Proc::Readdir | Proc::Readdirplus
                if status != stat::STALE =>
            {
                // (each of these failure shapes is the object's post_op_attr)
                let attr = self.attr(pin);
                w.bool(true).fixed(&attr);
            }
            Proc::Lookup if status != stat::STALE => {
                let attr = self.attr(pin);
                w.bool(true).fixed(&attr);
            }
            _ => crate::control::failure_body(&mut w, p),
        }
        Some(w.buf)
    }

    /// The success reply of a read-only procedure on a current resource, in `w` (its header
    /// written): Some(OK), Some(error status) for `w` to be dropped, None when held.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &mut self,
        e: usize,
        p: Proc,
        pin: u64,
        args: &mut Cursor<'_>,
        w: &mut Writer,
        peer: Peer,
        msg: &[u8],
        now: u64,
        limits: Limits,
    ) -> Option<u32> {
        let kind = self.nodes.get(&pin).map(|n| n.kind)?;
        let attr = self.attr(pin);
        match p {
            Proc::Getattr => {
                w.u32(stat::OK).fixed(&attr);
            }
            Proc::Access => {
                let Ok(want) = args.u32() else {
                    return Some(stat::INVAL);
                };
                let bits = if kind == Kind::Dir {
                    ACCESS_DIR
                } else {
                    ACCESS_FILE
                };
                w.u32(stat::OK).bool(true).fixed(&attr).u32(want & bits);
            }
            Proc::Lookup => {
                if kind != Kind::Dir {
                    return Some(stat::NOTDIR);
                }
                let Ok(name) = args.string(nfs3::NAME_MAX) else {
                    return Some(stat::INVAL);
                };
                let (parent, children) = self
                    .nodes
                    .get(&pin)
                    .map(|n| (n.parent, n.children.clone()))?;
                let target = match name {
                    b"." => Some(pin),
                    b".." => None,
                    _ => children
                        .iter()
                        .copied()
                        .find(|c| self.nodes.get(c).is_some_and(|n| n.name() == name)),
                };
                if name == b".." {
                    // The export's root: its parent is the virtual root.
                    let (h, a) = match self.nodes.get(&parent) {
                        Some(_) if parent != 0 => (self.handle(e, parent), Some(self.attr(parent))),
                        _ => (self.root_handle, None),
                    };
                    w.u32(stat::OK).opaque(&h);
                    match a {
                        Some(a) => w.bool(true).fixed(&a),
                        None => w.bool(false),
                    };
                    w.bool(true).fixed(&attr);
                    return Some(stat::OK);
                }
                let Some(child) = target else {
                    return Some(stat::NOENT);
                };
                match self.ready(child, now) {
                    Ready::Yes => {}
                    Ready::Wait => {
                        self.hold(child, peer, msg, e);
                        return None;
                    }
                    Ready::Fail(stat::STALE) => return Some(stat::NOENT),
                    Ready::Fail(st) => return Some(st),
                }
                let h = self.handle(e, child);
                let ca = self.attr(child);
                w.u32(stat::OK)
                    .opaque(&h)
                    .bool(true)
                    .fixed(&ca)
                    .bool(true)
                    .fixed(&attr);
            }
            Proc::Read => {
                if kind == Kind::Dir {
                    return Some(stat::ISDIR);
                }
                let (Ok(offset), Ok(count)) = (args.u64(), args.u32()) else {
                    return Some(stat::INVAL);
                };
                return self.read(e, pin, offset, count.min(limits.max_io), w, peer, msg);
            }
            Proc::Readdir | Proc::Readdirplus => {
                if kind != Kind::Dir {
                    return Some(stat::NOTDIR);
                }
                let plus = p == Proc::Readdirplus;
                let (Ok(cookie), Ok(_verf)) = (args.u64(), args.opaque_fixed(8)) else {
                    return Some(stat::INVAL);
                };
                let limit = if plus {
                    args.u32().and_then(|_dircount| args.u32())
                } else {
                    args.u32()
                };
                let Ok(limit) = limit else {
                    return Some(stat::INVAL);
                };
                self.readdir(
                    e,
                    pin,
                    cookie,
                    limit.min(limits.max_dir.max(1024)),
                    plus,
                    &attr,
                    w,
                );
            }
            _ => return Some(stat::INVAL),
        }
        Some(stat::OK)
    }

    #[allow(clippy::too_many_arguments)]
    fn readdir(
        &self,
        e: usize,
        pin: u64,
        cookie: u64,
        limit: u32,
        plus: bool,
        attr: &[u8; Field::FATTR_LEN],
        w: &mut Writer,
    ) {
        let Some(n) = self.nodes.get(&pin) else {
            return;
        };
        let parent_vin = match self.nodes.get(&n.parent) {
            Some(_) if n.parent != 0 => self.vin(e, n.parent),
            _ => vfh::ROOT_VIN,
        };
        let me = self.vin(e, pin);
        let mut entries: Vec<(u64, &[u8], Option<u64>)> =
            vec![(me, b".", None), (parent_vin, b"..", None)];
        for c in &n.children {
            if let Some(cn) = self.nodes.get(c) {
                if !cn.gone {
                    entries.push((self.vin(e, *c), cn.name(), Some(*c)));
                }
            }
        }
        crate::control::dir_reply(w, attr, limit, cookie, entries.len(), |i, one| {
            let (fileid, name, child) = entries[i];
            one.u64(fileid).opaque(name).u64(i as u64 + 1);
            if !plus {
                return;
            }
            match child {
                Some(c) => {
                    let known = self
                        .nodes
                        .get(&c)
                        .is_some_and(|cn| cn.checked.is_some() && cn.kind != Kind::Unknown);
                    if known {
                        one.bool(true).fixed(&self.attr(c));
                    } else {
                        one.bool(false);
                    }
                    one.bool(true).opaque(&self.handle(e, c));
                }
                None => {
                    one.bool(false).bool(false);
                }
            }
        });
    }

    /// READ of `count` bytes at `offset` of a current file: from the cache, or held while
    /// the missing blocks (and some ahead) are fetched.
    #[allow(clippy::too_many_arguments)]
    fn read(
        &mut self,
        e: usize,
        pin: u64,
        offset: u64,
        count: u32,
        w: &mut Writer,
        peer: Peer,
        msg: &[u8],
    ) -> Option<u32> {
        let size = self.nodes.get(&pin)?.size;
        let attr = self.attr(pin);
        let end = offset.saturating_add(u64::from(count)).min(size);
        if offset >= end {
            w.u32(stat::OK)
                .bool(true)
                .fixed(&attr)
                .u32(0)
                .bool(offset >= size)
                .opaque(&[]);
            return Some(stat::OK);
        }
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        let x = &mut self.exports[e];
        let missing = (first..=last).find(|&b| !x.cache.contains((pin, b)));
        if let Some(m0) = missing {
            x.stats.misses += 1;
            let last_block = (size - 1) / BLOCK;
            let mut m1 = m0;
            while m1 < last_block
                && m1 + 1 < m0 + READAHEAD.max(last - m0 + 1)
                && !x.cache.contains((pin, m1 + 1))
                && !x.inflight.contains(&(pin, m1 + 1))
            {
                m1 += 1;
            }
            if !x.inflight.contains(&(pin, m0)) {
                let validators = self.nodes.get(&pin)?.validators.clone();
                let url = self.url(pin)?;
                let job = Job {
                    pin,
                    url,
                    want: Want::Range {
                        start: m0 * BLOCK,
                        end: ((m1 + 1) * BLOCK).min(size) - 1,
                    },
                    validators,
                };
                if self.submit(e, job) {
                    let x = &mut self.exports[e];
                    for b in m0..=m1 {
                        x.inflight.insert((pin, b));
                    }
                }
            }
            self.hold(pin, peer, msg, e);
            return None;
        }
        x.stats.hits += 1;
        let mut data = Vec::with_capacity((end - offset) as usize);
        for b in first..=last {
            let block = x.cache.touch((pin, b)).unwrap_or(&[]);
            let from = offset.saturating_sub(b * BLOCK) as usize;
            let to = ((end - b * BLOCK) as usize).min(BLOCK as usize);
            data.extend_from_slice(block.get(from..to.min(block.len())).unwrap_or(&[]));
        }
        let eof = offset + data.len() as u64 >= size;
        w.u32(stat::OK)
            .bool(true)
            .fixed(&attr)
            .u32(data.len() as u32)
            .bool(eof)
            .opaque(&data);
        Some(stat::OK)
    }

    /// Look for unknown handles of export `e`: read the next index page not read yet,
    /// breadth first; when none is left, the handles still wanted are stale.
    fn walk(&mut self, e: usize, now: u64) {
        if self.exports[e].walking.is_some() || self.exports[e].wanted.is_empty() {
            return;
        }
        let next = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.export == e
                    && n.kind == Kind::Dir
                    && n.checked.is_none()
                    && !n.gone
                    && !n.meta_busy
                    && now >= n.failed_until
            })
            .min_by_key(|(_, n)| n.depth())
            .map(|(p, _)| *p);
        match next {
            Some(pin) if self.exports[e].walk_pages < WALK_MAX => {
                let Some(url) = self.url(pin) else {
                    return;
                };
                let job = Job {
                    pin,
                    url,
                    want: Want::Meta { dir: true },
                    validators: Validators::default(),
                };
                if self.submit(e, job) {
                    if let Some(n) = self.nodes.get_mut(&pin) {
                        n.meta_busy = true;
                    }
                    let x = &mut self.exports[e];
                    x.walking = Some(pin);
                    x.walk_pages += 1;
                    x.stats.walk_pages += 1;
                }
            }
            _ => {
                // Every page read: what is still wanted does not exist (any more).
                let x = &mut self.exports[e];
                let wanted: Vec<u64> = x.wanted.drain().collect();
                x.walk_pages = 0;
                for pin in wanted {
                    if x.not_found.len() < 65_536 {
                        x.not_found.insert(pin);
                    }
                    if let Some(q) = self.held.remove(&pin) {
                        self.held_total -= q.len();
                        self.ready.extend(q);
                    }
                }
            }
        }
    }

    /// Take the finished requests; returns the held calls that can be decided again.
    pub fn poll(&mut self, now: u64) -> Vec<(Peer, Vec<u8>)> {
        for e in 0..self.exports.len() {
            while let Some(f) = self.exports[e].pool.as_ref().ok().and_then(Pool::try_done) {
                self.done(e, f, now);
            }
        }
        std::mem::take(&mut self.ready)
    }

    fn done(&mut self, e: usize, f: Fetched, now: u64) {
        let x = &mut self.exports[e];
        x.stats.fetched_bytes += f.bytes;
        x.stats.fetch_ms += f.elapsed.as_millis() as u64;
        let pin = f.pin;
        let walked = x.walking == Some(pin);
        if walked {
            x.walking = None;
        }
        if let Want::Range { start, end } = f.want {
            for b in start / BLOCK..=end / BLOCK {
                x.inflight.remove(&(pin, b));
            }
        }
        if matches!(f.want, Want::Meta { .. }) {
            if let Some(n) = self.nodes.get_mut(&pin) {
                n.meta_busy = false;
            }
        }
        match f.result {
            Ok(a) => self.answered(e, pin, a, now),
            Err(err) => {
                let x = &mut self.exports[e];
                match err {
                    FetchError::Timeout => x.stats.timeouts += 1,
                    FetchError::Connect(_) => x.stats.connect_errors += 1,
                    FetchError::Status(_) => x.stats.status_errors += 1,
                    FetchError::TooBig | FetchError::Other(_) => x.stats.other_errors += 1,
                }
                let url = self.url(pin).unwrap_or_default();
                self.exports[e].last_error = Some(format!("{url}: {err}"));
                if let Some(n) = self.nodes.get_mut(&pin) {
                    if err == FetchError::Status(416) {
                        n.checked = None; // the file shrank: its size is asked again
                    } else {
                        n.failed_until = now + FAIL_HOLD_MS;
                    }
                }
            }
        }
        self.release(pin);
        // Handles a walk found.
        if !self.exports[e].wanted.is_empty() {
            let found: Vec<u64> = self.exports[e]
                .wanted
                .iter()
                .copied()
                .filter(|p| self.nodes.contains_key(p))
                .collect();
            for p in found {
                self.exports[e].wanted.remove(&p);
                self.exports[e].stats.walk_found += 1;
                self.release(p);
            }
            if walked || self.exports[e].walking.is_none() {
                self.walk(e, now);
            }
        }
    }

    fn answered(&mut self, e: usize, pin: u64, a: Answer, now: u64) {
        let Some(n) = self.nodes.get_mut(&pin) else {
            return;
        };
        let x = &mut self.exports[e];
        match a {
            Answer::NotModified => {
                x.stats.not_modified += 1;
                n.checked = Some(now);
                n.failed_until = 0;
            }
            Answer::Gone(_) => {
                x.stats.gone += 1;
                n.gone = true;
                x.cache.drop_file(pin, n.size);
            }
            Answer::Dir {
                links,
                validators,
                mtime,
                digest,
            } => {
                let first = n.checked.is_none();
                let changed = digest != n.digest;
                if !first {
                    if changed {
                        x.stats.changed += 1;
                    } else {
                        x.stats.not_modified += 1;
                    }
                }
                if n.kind != Kind::Dir {
                    x.cache.drop_file(pin, n.size);
                }
                n.kind = Kind::Dir;
                n.checked = Some(now);
                n.failed_until = 0;
                n.gone = false;
                n.validators = validators;
                n.mtime = match mtime {
                    Some(t) => t,
                    None if changed && !first => wall_secs(),
                    None => n.mtime,
                };
                if changed {
                    n.digest = digest;
                    x.not_found.clear();
                    let path = n.path.clone();
                    let mut children = Vec::with_capacity(links.len());
                    for l in links {
                        let mut p = path.clone();
                        if !p.is_empty() {
                            p.push(b'/');
                        }
                        p.extend_from_slice(&l.name);
                        let c = self.key.web_pin(x.id, &p);
                        let full = self.nodes.len() >= NODES_MAX;
                        match self.nodes.get_mut(&c) {
                            Some(cn) => {
                                cn.gone = false;
                                if l.dir && cn.kind != Kind::Dir {
                                    cn.kind = Kind::Dir;
                                    cn.checked = None;
                                }
                            }
                            None if full => {
                                self.nodes_full += 1;
                                continue;
                            }
                            None => {
                                self.nodes.insert(
                                    c,
                                    Node::new(
                                        e,
                                        p,
                                        pin,
                                        if l.dir { Kind::Dir } else { Kind::Unknown },
                                        self.epoch_secs,
                                    ),
                                );
                            }
                        }
                        children.push(c);
                    }
                    if let Some(n) = self.nodes.get_mut(&pin) {
                        n.children = children;
                    }
                }
            }
            Answer::File {
                size,
                validators,
                mtime,
                body,
            } => {
                let first = n.checked.is_none();
                let changed = n.kind != Kind::File || size != n.size || validators != n.validators;
                if changed {
                    x.cache.drop_file(pin, n.size);
                }
                if !first {
                    if changed {
                        x.stats.changed += 1;
                    } else {
                        x.stats.not_modified += 1;
                    }
                }
                n.kind = Kind::File;
                n.size = size;
                n.validators = validators;
                n.mtime = match mtime {
                    Some(t) => t,
                    None if changed && !first => wall_secs(),
                    None => n.mtime,
                };
                n.checked = Some(now);
                n.failed_until = 0;
                n.gone = false;
                if let Some(body) = body {
                    Self::store(x, pin, 0, &body, size);
                }
            }
            Answer::Range { start, data } => {
                let size = n.size;
                Self::store(x, pin, start, &data, size);
            }
        }
    }

    /// Cache the bytes from `start` (block aligned) of a file of `size`: whole blocks, and the
    /// file's last one.
    fn store(x: &mut Export, pin: u64, start: u64, data: &[u8], size: u64) {
        if !start.is_multiple_of(BLOCK) {
            return;
        }
        for (i, chunk) in data.chunks(BLOCK as usize).enumerate() {
            let b = start / BLOCK + i as u64;
            let whole = chunk.len() as u64 == BLOCK || b * BLOCK + chunk.len() as u64 == size;
            if whole {
                x.stats.evicted += x.cache.put((pin, b), chunk.to_vec());
            }
        }
    }

    /// Each export's settings, cache and counters (for `routerctl nfs web`).
    pub fn report(&self) -> Vec<WebReport> {
        self.exports
            .iter()
            .enumerate()
            .map(|(e, x)| WebReport {
                name: x.spec.name.clone(),
                base: x.spec.base.clone(),
                cache_bytes: x.cache.used,
                cache_max: x.cache.max,
                cache_blocks: x.cache.map.len(),
                resources: self.nodes.values().filter(|n| n.export == e).count(),
                held: self
                    .held
                    .iter()
                    .filter(|(p, _)| self.nodes.get(p).is_none_or(|n| n.export == e))
                    .map(|(_, q)| q.len())
                    .sum(),
                requests_running: x.pool.as_ref().map_or(0, Pool::busy),
                lifetime_ms: x.spec.lifetime_ms,
                timeout_ms: x.spec.timeout_ms,
                connections: x.spec.connections,
                stats: x.stats,
                last_error: x
                    .pool
                    .as_ref()
                    .err()
                    .cloned()
                    .or_else(|| x.last_error.clone()),
            })
            .collect()
    }
}

/// One web export as `routerctl nfs web` shows it.
#[derive(Debug, Clone)]
pub struct WebReport {
    pub name: String,
    pub base: String,
    pub cache_bytes: usize,
    pub cache_max: usize,
    pub cache_blocks: usize,
    pub resources: usize,
    pub held: usize,
    pub requests_running: usize,
    pub lifetime_ms: u64,
    pub timeout_ms: u64,
    pub connections: usize,
    pub stats: WebStats,
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_cache_is_bounded_and_lru() {
        let mut c = BlockCache {
            max: 3 * BLOCK as usize,
            ..BlockCache::default()
        };
        let block = |b: u8| vec![b; BLOCK as usize];
        for b in 0..3u8 {
            assert_eq!(c.put((1, u64::from(b)), block(b)), 0);
        }
        // Block 0 used last: block 1 is the one evicted for block 3.
        assert_eq!(c.touch((1, 0)).map(|d| d[0]), Some(0));
        assert_eq!(c.put((1, 3), block(3)), 1);
        assert!(c.contains((1, 0)) && !c.contains((1, 1)) && c.contains((1, 3)));
        assert_eq!(c.used, 3 * BLOCK as usize);
        // A file's last, short block; replacing a block does not count it twice.
        c.put((2, 0), vec![9; 10]);
        c.put((2, 0), vec![8; 20]);
        assert!(c.used <= c.max && c.map.len() == c.lru.len());
        c.drop_file(1, 4 * BLOCK);
        assert_eq!((c.map.len(), c.used), (1, 20));
        // A block larger than the whole cache is not stored.
        let mut tiny = BlockCache {
            max: 100,
            ..BlockCache::default()
        };
        assert_eq!(tiny.put((1, 0), vec![0; 200]), 0);
        assert!(tiny.map.is_empty() && tiny.used == 0);
    }
}
