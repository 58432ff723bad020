//! The NFS rewrite stage (fast path), for NFSv3 over UDP. The router's IPv4 input hands it the
//! packets it claims ([`NfsStage::claims`]: calls to the virtual server, replies from a server's
//! NFS port), their IPv4 headers already checked; routing sends on what it leaves undecided:
//!
//! - a call to the virtual server (`virtual_addr:nfs_port`): its VFHs become the physical
//!   handles of the server named by their SID, the IP destination and UDP port become that
//!   server's, the transaction is recorded (client address, port, xid), lengths and checksums
//!   are fixed; then routing sends it on. The client's source address is kept: servers route
//!   their replies to clients through the router, which is their gateway;
//! - a reply from a server's NFS port to a recorded transaction: physical handles and
//!   attributes become virtual, the source becomes the virtual server;
//! - everything the fast path cannot finish — MOUNT and portmap, the virtual root, refusals
//!   that need an NFS error reply, unknown handles to recover, replies to calls the management
//!   core forwarded itself, replies too big to rewrite in the buffer — is punted to the
//!   management core, and so are IP fragments of NFS traffic (it reassembles them).
//!
//! New handle id → PFH mappings learned from replies are queued in [`NfsStage::take_events`] for
//! the handle table's single writer, with the transactions of replies that arrive fragmented.

use crate::admission::{Admission, Limit};
use crate::policy::{self, Network, Policy, Squash};
use crate::rewrite::{
    devirtualize_call, virtualize_reply, CallVerdict, Context, Exports, Limits, ReplyVerdict,
};
use crate::tables::{HandleTable, TransactionTable, TxKey, PFH_MAX};
use crate::vfh::{HandleKey, MacMemo};
use crate::wire::nfs3::Proc;
use crate::wire::{rpc, Field};
use packet::checksum::{self, Adjust};
use packet::claim::{Claim, Claimed, ClaimingStage};
use packet::ipv4::{protocol, Ipv4Packet};
use packet::udp::UdpPacket;
use packet::{drop_reasons, Buffer, DropReason, PuntReason, Stage, Verdict};
use std::net::Ipv4Addr;
use std::sync::Arc;

drop_reasons! {
    /// Why the NFS stage drops a packet.
    pub enum NfsDrop {
        Malformed = "malformed",
        TransactionsFull = "transactions-full",
        NoRoom = "no-room",
        /// The client has its share of calls at servers already (fairness).
        ClientLimit = "client-limit",
        /// The client's rate limit.
        RateLimited = "rate-limited",
    }
}

/// An aggregated server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub sid: u16,
    /// Its export's name in the virtual root.
    pub name: String,
    pub addr: Ipv4Addr,
    pub nfs_port: u16,
    pub mount_port: u16,
    pub export: String,
    /// Mount checksum of (sid, export).
    pub mch: u32,
    /// The server has no UDP: UDP clients' calls for it go to the management core, which
    /// sends them over its TCP connection and answers the client by UDP (the slow path).
    pub bridge: bool,
    /// The client networks that may use this export (empty: every client).
    pub clients: Vec<Network>,
    /// Whose ids are squashed before a call leaves for this server.
    pub squash: Squash,
    /// Replication: this server's export has a backup, or this server is one.
    pub pair: Pair,
}

/// A server's part in replication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pair {
    #[default]
    None,
    /// Its export is replicated to server `backup`: the calls that change it (and LOOKUPs,
    /// whose names the backup's handles are found by) go through the management core.
    Primary { backup: u16 },
    /// The backup of server `primary`'s export: mounted by the router, not in the virtual
    /// root, its handles never given to clients.
    Backup { primary: u16 },
}

impl Server {
    /// Whether its export is an entry of the virtual root (a backup's is not).
    #[inline]
    pub fn listed(&self) -> bool {
        !matches!(self.pair, Pair::Backup { .. })
    }

    /// Whether `client` may use this export.
    #[inline]
    pub fn admits(&self, client: Ipv4Addr) -> bool {
        self.clients.is_empty() || self.clients.iter().any(|n| n.contains(client))
    }
}

/// What every worker's stage shares.
#[derive(Debug)]
pub struct NfsShared {
    pub key: HandleKey,
    pub handles: Arc<HandleTable>,
    pub virtual_addr: Ipv4Addr,
    pub nfs_port: u16,
    pub virtual_fsid: u64,
    pub limits: Limits,
    pub servers: Vec<Server>,
    /// The export policy (open by default).
    pub policy: Policy,
    /// The SIDs of replicated exports (their primaries).
    pub replicated: Vec<u16>,
    /// A replicated export failed over to its backup: the workers hand all its calls to the
    /// management core, which sends them to the backup.
    pub diverted: std::sync::atomic::AtomicBool,
}

/// The exports as one client sees them: their mount checksums, and which it may use.
#[derive(Debug, Clone, Copy)]
pub struct ClientExports<'a> {
    shared: &'a NfsShared,
    client: Ipv4Addr,
}

impl Exports for ClientExports<'_> {
    #[inline]
    fn mch(&self, sid: u16) -> Option<u32> {
        self.shared.server(sid).map(|s| s.mch)
    }
    #[inline]
    fn permits(&self, sid: u16) -> bool {
        self.shared
            .server(sid)
            .is_some_and(|s| s.admits(self.client))
    }
}

impl NfsShared {
    /// What the rewrite functions need (`memo`: the calling worker's, or an empty one).
    pub fn ctx<'a>(&'a self, memo: &'a MacMemo) -> Context<'a> {
        Context {
            key: &self.key,
            memo,
            handles: &self.handles,
            virtual_fsid: self.virtual_fsid,
            limits: self.limits,
        }
    }
    /// The exports as `client` sees them (for [`devirtualize_call`]).
    pub fn exports_for(&self, client: Ipv4Addr) -> ClientExports<'_> {
        ClientExports {
            shared: self,
            client,
        }
    }
    /// The configured server `sid`.
    pub fn server(&self, sid: u16) -> Option<&Server> {
        self.servers.iter().find(|s| s.sid == sid)
    }
    /// The server whose NFS service is at `addr:port`.
    pub fn server_at(&self, addr: Ipv4Addr, port: u16) -> Option<&Server> {
        self.servers
            .iter()
            .find(|s| s.addr == addr && s.nfs_port == port)
    }
}

/// What a reply's rewrite needs from its call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transaction {
    pub proc_: u8,
    pub sid: u16,
    /// A replicated call's entry with the management core's replication (0: none).
    pub token: u32,
    pub dir_pfs: u64,
}

/// Counters of the stage (one worker's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NfsCounters {
    /// Calls seen, by procedure (index = procedure number).
    pub calls: [u64; 22],
    /// Replies matched to a call, by procedure.
    pub replies: [u64; 22],
    /// Calls rewritten and forwarded to a server.
    pub calls_rewritten: u64,
    /// Replies rewritten and forwarded to a client.
    pub replies_rewritten: u64,
    /// Fragments of other traffic, routed untouched.
    pub fragments_passed: u64,
    /// Fragments of NFS traffic, reassembled by the management core.
    pub fragments_punted: u64,
    pub mappings_dropped: u64,
    /// Calls a host sent to a server's own address (not the virtual server's), and their
    /// replies: routed untouched.
    pub direct_calls: u64,
    pub direct_replies: u64,
    /// Calls whose credential the export policy squashed to the anonymous ids.
    pub squashed: u64,
}

impl NfsCounters {
    /// Number of values in [`NfsCounters::values`].
    pub const WIDTH: usize = 22 + 22 + 8;

    /// Every counter in one flat array: calls by procedure, replies by procedure,
    /// calls rewritten, replies rewritten, fragments passed, mappings (and transaction
    /// hand-overs) dropped, fragments punted, direct calls and replies, squashed calls.
    pub fn values(&self) -> [u64; Self::WIDTH] {
        let mut v = [0u64; Self::WIDTH];
        v[..22].copy_from_slice(&self.calls);
        v[22..44].copy_from_slice(&self.replies);
        v[44] = self.calls_rewritten;
        v[45] = self.replies_rewritten;
        v[46] = self.fragments_passed;
        v[47] = self.mappings_dropped;
        v[48] = self.fragments_punted;
        v[49] = self.direct_calls;
        v[50] = self.direct_replies;
        v[51] = self.squashed;
        v
    }

    /// The inverse of [`NfsCounters::values`] (sums over workers are built this way).
    pub fn from_values(v: &[u64]) -> Self {
        let g = |i: usize| v.get(i).copied().unwrap_or(0);
        let mut c = NfsCounters::default();
        for i in 0..22 {
            c.calls[i] = g(i);
            c.replies[i] = g(22 + i);
        }
        c.calls_rewritten = g(44);
        c.replies_rewritten = g(45);
        c.fragments_passed = g(46);
        c.mappings_dropped = g(47);
        c.fragments_punted = g(48);
        c.direct_calls = g(49);
        c.direct_replies = g(50);
        c.squashed = g(51);
        c
    }
}

/// What a worker tells the management core besides punting packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NfsEvent {
    /// A handle id → physical handle mapping learned from a reply (for the handle table's
    /// writer).
    Mapping {
        hid: u64,
        pfh: [u8; PFH_MAX],
        len: u8,
    },
    /// A call's transaction, handed over with the first fragment of its reply: the management
    /// core reassembles the reply and rewrites it.
    Transaction { key: TxKey, tx: Transaction },
}

/// Events a worker queues per burst before the engine drains them.
pub const MAPPING_QUEUE: usize = 256;

/// Client addresses a worker's admission table follows (40 bytes each).
const ADMISSION_CLIENTS: usize = 4096;

/// Entries of a worker's [`MacMemo`] (48 bytes each: 48 KiB, most of it stays in L2).
const MAC_MEMO: usize = 1024;

/// The per-worker NFS stage (each worker clones its own: the transaction table is private).
#[derive(Debug, Clone)]
pub struct NfsStage {
    shared: Arc<NfsShared>,
    tx: TransactionTable<Transaction>,
    scratch: Box<[Field]>,
    events: Vec<NfsEvent>,
    /// MACs this worker computed lately (handles in calls and replies, VINs).
    memo: MacMemo,
    /// Per-client admission (fairness), this worker's share.
    admission: Admission,
    now: u64,
    pub counters: NfsCounters,
}

impl NfsStage {
    /// `transactions` calls in flight at most, each kept `ttl` ticks (see [`NfsStage::set_now`]).
    pub fn new(shared: Arc<NfsShared>, transactions: usize, ttl: u64) -> Self {
        NfsStage {
            tx: TransactionTable::new(transactions, ttl),
            scratch: vec![Field::FileId { at: 0 }; 256].into_boxed_slice(),
            events: Vec::with_capacity(MAPPING_QUEUE),
            memo: MacMemo::new(MAC_MEMO),
            admission: Admission::new(ADMISSION_CLIENTS, shared.policy.admission),
            shared,
            now: 0,
            counters: NfsCounters::default(),
        }
    }

    /// The current time in ticks (the engine sets it once per burst).
    pub fn set_now(&mut self, now: u64) {
        self.now = now;
    }

    /// The shared configuration.
    pub fn shared(&self) -> &Arc<NfsShared> {
        &self.shared
    }

    /// Events since the last call (for the management core).
    pub fn take_events(&mut self, f: impl FnMut(NfsEvent)) {
        self.events.drain(..).for_each(f);
    }

    /// The transaction table's counters.
    pub fn transactions(&self) -> &TransactionTable<Transaction> {
        &self.tx
    }
}

/// The new address and port of a datagram: the call's destination, or the reply's source.
#[derive(Clone, Copy)]
enum Readdress {
    Dst(Ipv4Addr, u16),
    Src(Ipv4Addr, u16),
}

/// Finish a rewritten datagram: the new address and port, IP total length and UDP length after
/// the payload changed by `delta`, and both checksums updated incrementally (RFC 1624): the IP
/// header's with the fields changed here, the UDP one with `csum` (the payload's edits) and the
/// header edits here. Nothing is summed again (that would also read back the fields just
/// written, a store-forwarding stall). A datagram sent without a UDP checksum (zero) stays
/// without one.
fn finish<B: Buffer>(
    pkt: &mut B,
    ip_at: usize,
    delta: isize,
    to: Readdress,
    mut csum: Adjust,
) -> Option<()> {
    let f = pkt.data_mut();
    let mut ip = Ipv4Packet::new_unchecked(f.get_mut(ip_at..)?);
    let hl = usize::from(ip.header_len());
    let old_tl = ip.total_len();
    let tl = usize::try_from(isize::try_from(old_tl).ok()? + delta).ok()?;
    let new_tl = u16::try_from(tl).ok()?;
    let mut ip_csum = Adjust::default();
    ip_csum.field16(old_tl, new_tl);
    ip.set_total_len(new_tl);
    // The address is in the UDP pseudo-header too; the total length is not.
    let port = match to {
        Readdress::Dst(addr, port) => {
            let (old, new) = (u32::from(ip.dst_addr()), u32::from(addr));
            ip_csum.field32(old, new);
            csum.field32(old, new);
            ip.set_dst_addr(addr);
            port
        }
        Readdress::Src(addr, port) => {
            let (old, new) = (u32::from(ip.src_addr()), u32::from(addr));
            ip_csum.field32(old, new);
            csum.field32(old, new);
            ip.set_src_addr(addr);
            port
        }
    };
    let hc = ip.checksum();
    ip.set_checksum(ip_csum.apply(hc));
    let mut udp = UdpPacket::new_unchecked(f.get_mut(ip_at + hl..ip_at + tl)?);
    match to {
        Readdress::Dst(..) => {
            csum.field16(udp.dst_port(), port);
            udp.set_dst_port(port);
        }
        Readdress::Src(..) => {
            csum.field16(udp.src_port(), port);
            udp.set_src_port(port);
        }
    }
    let (old_len, len) = (udp.len(), u16::try_from(tl - hl).ok()?);
    // The length is summed twice: in the pseudo-header and in the UDP header.
    csum.field16(old_len, len);
    csum.field16(old_len, len);
    udp.set_len(len);
    let hc = udp.checksum();
    if hc != 0 {
        udp.set_checksum(checksum::udp_nonzero(csum.apply(hc)));
    }
    Some(())
}

/// The server id of a transaction that is a host's call to a server's own address (server ids
/// start at 1).
const DIRECT: u16 = 0;

impl NfsStage {
    /// A call to a server's own address, from a host talking to it directly (through the
    /// router, not through the virtual server): remembered so its reply is known for what it
    /// is, and routed untouched.
    fn direct_call<B: Buffer>(
        &mut self,
        pkt: &mut B,
        msg_at: usize,
        client: (Ipv4Addr, u16),
    ) -> Verdict {
        let Some(m) = pkt.data().get(msg_at..msg_at + 8) else {
            return Verdict::Next;
        };
        if m[4..8] != [0, 0, 0, 0] {
            return Verdict::Next; // not a CALL
        }
        let key = TxKey {
            client: u32::from(client.0),
            port: client.1,
            xid: u32::from_be_bytes([m[0], m[1], m[2], m[3]]),
        };
        let direct = Transaction {
            proc_: 0,
            sid: DIRECT,
            token: 0,
            dir_pfs: 0,
        };
        if self.tx.insert(key, direct, self.now) {
            self.counters.direct_calls += 1;
        }
        Verdict::Next
    }

    fn call<B: Buffer>(
        &mut self,
        pkt: &mut B,
        ip_at: usize,
        msg_at: usize,
        client: (Ipv4Addr, u16),
    ) -> Verdict {
        let Some(msg) = pkt.data().get(msg_at..) else {
            return NfsDrop::Malformed.drop();
        };
        let Ok(rpc::Message::Call(c)) = rpc::parse(msg) else {
            return NfsDrop::Malformed.drop();
        };
        if c.prog != rpc::program::NFS || c.vers != 3 {
            return Verdict::Punt(PuntReason::Application);
        }
        let Some(p) = Proc::from_u32(c.proc_) else {
            return Verdict::Punt(PuntReason::Application);
        };
        let (xid, args_at) = (c.xid, c.args_at);
        self.counters.calls[p as usize] += 1;
        let shared: &NfsShared = &self.shared; // a borrow, not a clone: no atomic per packet
        if p != Proc::Null && shared.policy.admit(client.0, c.cred.flavor).is_err() {
            // The management core answers the refusal and counts it.
            return Verdict::Punt(PuntReason::Application);
        }
        // A replicated export's changes (and LOOKUPs) are ordered and logged by the management
        // core. The SID is read unverified: a punt is always safe, the core verifies.
        if !shared.replicated.is_empty()
            && (crate::replica::tracked(p)
                || shared.diverted.load(std::sync::atomic::Ordering::Relaxed))
        {
            let sid = msg
                .get(args_at + 6..args_at + 8)
                .map(|b| u16::from_be_bytes([b[0], b[1]]));
            if sid.is_some_and(|s| shared.replicated.contains(&s)) {
                return Verdict::Punt(PuntReason::Application);
            }
        }
        let ctx = shared.ctx(&self.memo);
        match devirtualize_call(pkt, msg_at, p, args_at, &ctx, shared.exports_for(client.0)) {
            CallVerdict::Forward {
                sid,
                delta,
                dir_pfs,
                mut csum,
            } => {
                let Some(server) = shared.server(sid) else {
                    return NfsDrop::Malformed.drop();
                };
                if server.squash != Squash::None {
                    let anon = (shared.policy.anonymous_uid, shared.policy.anonymous_gid);
                    let Some(m) = pkt.data_mut().get_mut(msg_at..) else {
                        return NfsDrop::Malformed.drop();
                    };
                    if policy::squash(m, server.squash, anon, &mut csum) {
                        self.counters.squashed += 1;
                    }
                }
                let key = TxKey {
                    client: u32::from(client.0),
                    port: client.1,
                    xid,
                };
                let tx = Transaction {
                    proc_: p as u8,
                    sid,
                    token: 0,
                    dir_pfs,
                };
                // Fairness: the client's share of calls at servers, and its rate. (Calls
                // bridged to a TCP-only server are bounded by the management core's TCP side.)
                if !server.bridge && self.admission.enabled() {
                    if let Err(l) = self.admission.admit(key.client, self.now) {
                        return match l {
                            Limit::Inflight => NfsDrop::ClientLimit.drop(),
                            Limit::Rate => NfsDrop::RateLimited.drop(),
                        };
                    }
                }
                if server.bridge {
                    // A server without UDP: the management core carries the rewritten call
                    // over TCP, with this transaction.
                    if self.events.len() >= MAPPING_QUEUE {
                        self.counters.mappings_dropped += 1;
                        return NfsDrop::TransactionsFull.drop();
                    }
                    self.events.push(NfsEvent::Transaction { key, tx });
                    let to = Readdress::Dst(server.addr, server.nfs_port);
                    return match finish(pkt, ip_at, delta, to, csum) {
                        Some(()) => {
                            self.counters.calls_rewritten += 1;
                            Verdict::Punt(PuntReason::Application)
                        }
                        None => NfsDrop::Malformed.drop(),
                    };
                }
                let replaced = self.tx.stats.replaced;
                let inserted = self.tx.insert(key, tx, self.now);
                if !inserted || self.tx.stats.replaced != replaced {
                    // Not in flight, or a retransmission of a call counted already.
                    self.admission.done(key.client, self.now);
                }
                if !inserted {
                    return NfsDrop::TransactionsFull.drop();
                }
                let to = Readdress::Dst(server.addr, server.nfs_port);
                match finish(pkt, ip_at, delta, to, csum) {
                    Some(()) => {
                        self.counters.calls_rewritten += 1;
                        Verdict::Next
                    }
                    None => NfsDrop::Malformed.drop(),
                }
            }
            // Arguments that do not decode (or a call without room in its buffer for the
            // physical handles): the management core answers GARBAGE_ARGS, or rewrites it
            // in a larger buffer.
            CallVerdict::Malformed
            // NULL, the virtual root, refusals and recoveries are the management core's.
            | CallVerdict::NoHandle
            | CallVerdict::Virtual
            | CallVerdict::Refuse(_)
            | CallVerdict::Recover(_) => Verdict::Punt(PuntReason::Application),
        }
    }

    fn reply<B: Buffer>(
        &mut self,
        pkt: &mut B,
        ip_at: usize,
        msg_at: usize,
        sid: u16,
        client: (Ipv4Addr, u16),
    ) -> Verdict {
        let Some(msg) = pkt.data().get(msg_at..) else {
            return NfsDrop::Malformed.drop();
        };
        let Ok(rpc::Message::Reply(r)) = rpc::parse(msg) else {
            return NfsDrop::Malformed.drop();
        };
        let results_at = match r {
            rpc::Reply::Accepted {
                stat: rpc::AcceptStat::Success { results_at },
                ..
            } => Some(results_at),
            _ => None,
        };
        let key = TxKey {
            client: u32::from(client.0),
            port: client.1,
            xid: r.xid(),
        };
        let Some(t) = self.tx.take(key, self.now) else {
            // Not this worker's call: the management core may have forwarded it (a call that
            // waited for its handle's recovery). It drops what is nobody's.
            return Verdict::Punt(PuntReason::Application);
        };
        if t.sid == DIRECT {
            // A host's own conversation with the server: not the virtual server's business.
            self.counters.direct_replies += 1;
            return Verdict::Next;
        }
        self.admission.done(key.client, self.now);
        if let Some(n) = self.counters.replies.get_mut(usize::from(t.proc_)) {
            *n += 1;
        }
        let shared: &NfsShared = &self.shared; // a borrow, not a clone: no atomic per packet
        let Some(server) = shared.server(sid) else {
            return NfsDrop::Malformed.drop();
        };
        let (mut delta, mut csum) = (0, Adjust::default());
        if let Some(results_at) = results_at {
            let Some(p) = Proc::from_u32(u32::from(t.proc_)) else {
                return NfsDrop::Malformed.drop();
            };
            let ctx = shared.ctx(&self.memo);
            let (events, counters) = (&mut self.events, &mut self.counters);
            let v = virtualize_reply(
                pkt,
                msg_at,
                p,
                results_at,
                sid,
                server.mch,
                t.dir_pfs,
                &ctx,
                &mut self.scratch,
                |hid, pfh| {
                    if events.len() < MAPPING_QUEUE {
                        let mut b = [0u8; PFH_MAX];
                        b[..pfh.len()].copy_from_slice(pfh);
                        events.push(NfsEvent::Mapping {
                            hid,
                            pfh: b,
                            len: pfh.len() as u8,
                        });
                    } else {
                        counters.mappings_dropped += 1;
                    }
                },
            );
            match v {
                ReplyVerdict::Rewritten { delta: d, csum: c } => (delta, csum) = (d, c),
                ReplyVerdict::SlowPath => return Verdict::Punt(PuntReason::Application),
                ReplyVerdict::Malformed => return NfsDrop::Malformed.drop(),
            }
        }
        let to = Readdress::Src(shared.virtual_addr, shared.nfs_port);
        match finish(pkt, ip_at, delta, to, csum) {
            Some(()) => {
                self.counters.replies_rewritten += 1;
                Verdict::Next
            }
            None => NfsDrop::Malformed.drop(),
        }
    }
}

impl NfsStage {
    /// An IP fragment. Those of NFS traffic (to the virtual server, or UDP from a server) go
    /// to the management core, which reassembles them; with the first fragment of a server's
    /// reply goes the call's transaction (the management core rewrites the whole reply).
    /// Other fragments are routed untouched.
    fn fragment<T: AsRef<[u8]>>(
        &mut self,
        ip: &Ipv4Packet<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Verdict {
        let sh: &NfsShared = &self.shared;
        let from_server = sh.servers.iter().any(|s| s.addr == src);
        if dst != sh.virtual_addr && !from_server {
            self.counters.fragments_passed += 1;
            return Verdict::Next;
        }
        let p = ip.payload();
        if ip.frag_offset() == 0 && dst != sh.virtual_addr && p.len() >= 12 {
            let sport = u16::from_be_bytes([p[0], p[1]]);
            let dport = u16::from_be_bytes([p[2], p[3]]);
            if sh.server_at(src, sport).is_some() {
                let key = TxKey {
                    client: u32::from(dst),
                    port: dport,
                    xid: u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
                };
                if let Some(tx) = self.tx.take(key, self.now) {
                    if tx.sid != DIRECT {
                        self.admission.done(key.client, self.now);
                    }
                    if self.events.len() < MAPPING_QUEUE {
                        self.events.push(NfsEvent::Transaction { key, tx });
                    } else {
                        self.counters.mappings_dropped += 1;
                    }
                }
            }
        }
        self.counters.fragments_punted += 1;
        Verdict::Punt(PuntReason::Application)
    }
}

impl NfsStage {
    /// Hint what processing `frame` will need from the big tables — the transaction slot of
    /// a call or reply, the handle slot of a call's first VFH — found with a few loads from
    /// fixed offsets (an AUTH_SYS or AUTH_NONE call; anything else hints less).
    #[inline]
    fn prefetch<B: Buffer>(&self, f: &[u8], c: &Claimed) {
        let be16 = |at: usize| {
            f.get(at..at + 2)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
        };
        let be32 = |at: usize| {
            f.get(at..at + 4)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        if c.fragment {
            return;
        }
        let (ip, udp) = (usize::from(c.ip_at), usize::from(c.l4_at));
        let msg = udp + 8;
        let (src, dst) = (Ipv4Addr::from(be32(ip + 12)), Ipv4Addr::from(be32(ip + 16)));
        let (sport, dport) = (be16(udp), be16(udp + 2));
        let sh: &NfsShared = &self.shared;
        if dst == sh.virtual_addr && dport == sh.nfs_port {
            let key = TxKey {
                client: u32::from(src),
                port: sport,
                xid: be32(msg),
            };
            let cred = (be32(msg + 28) as usize + 3) & !3;
            let verf = (be32(msg + 32 + cred + 4) as usize + 3) & !3;
            let args = msg + 32 + cred + 8 + verf;
            self.tx.prefetch(key, B::prefetch);
            if be32(args) as usize == crate::vfh::VFH_LEN {
                let hid = u64::from(be32(args + 4 + 24)) << 32 | u64::from(be32(args + 4 + 28));
                sh.handles.prefetch(hid, B::prefetch);
            }
        } else if sh.server_at(src, sport).is_some() {
            let key = TxKey {
                client: u32::from(dst),
                port: dport,
                xid: be32(msg),
            };
            self.tx.prefetch(key, B::prefetch);
        }
    }
}

impl NfsStage {
    /// Which of `workers` workers keeps a claimed packet's transaction: a call (to an NFS
    /// port: the virtual server's or a server's own) and its reply (from a server's NFS port)
    /// both name the client's address and port and the xid, so both map to one worker. Later
    /// fragments carry no UDP header: `None` (any worker; they go to the management core).
    pub fn owner(&self, f: &[u8], c: &Claimed, workers: usize) -> Option<usize> {
        let (ip, udp) = (usize::from(c.ip_at), usize::from(c.l4_at));
        let h = f.get(ip..ip + 20)?;
        if c.fragment && u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
            return None;
        }
        let u = f.get(udp..udp + 12)?;
        let (sport, dport) = (
            u16::from_be_bytes([u[0], u[1]]),
            u16::from_be_bytes([u[2], u[3]]),
        );
        let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
        let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
        let sh: &NfsShared = &self.shared;
        let (client, port) = if sh.server_at(src, sport).is_some() {
            (dst, dport)
        } else {
            (src, sport)
        };
        let xid = u32::from_be_bytes([u[8], u[9], u[10], u[11]]);
        let h =
            (u32::from(client) ^ u32::from(port).rotate_left(16) ^ xid).wrapping_mul(0x9e37_79b1);
        Some(((u64::from(h) * workers as u64) >> 32) as usize)
    }
}

impl ClaimingStage for NfsStage {
    /// Calls to the virtual server's NFS port, and what servers send from theirs (replies to
    /// clients); calls hosts send to a server's own NFS port (a direct conversation, whose
    /// replies are told apart from the virtual server's); the IP fragments to the virtual
    /// address and from the servers. MOUNT and portmap calls to the virtual address are not
    /// claimed: they are the management core's, delivered locally.
    fn claims(&self) -> Vec<Claim> {
        let sh = &self.shared;
        let mut v = vec![Claim::udp_to(sh.virtual_addr, sh.nfs_port).with_fragments()];
        for s in &sh.servers {
            v.push(Claim::udp_from(s.addr, s.nfs_port).with_fragments());
            v.push(Claim::udp_to(s.addr, s.nfs_port));
        }
        v
    }

    /// Two passes: first every packet's table slots are hinted (their cache misses overlap),
    /// then each packet is processed.
    fn process_claimed<B: Buffer>(
        &mut self,
        pkts: &mut [B],
        claimed: &[Claimed],
        verdicts: &mut [Verdict],
    ) {
        for c in claimed {
            if let Some(p) = pkts.get(usize::from(c.index)) {
                self.prefetch::<B>(p.data(), c);
            }
        }
        packet::claim::for_each_claimed(pkts, claimed, verdicts, |p, c| self.claimed(p, c));
    }
}

impl NfsStage {
    /// One claimed packet (its IPv4 header checked by the input).
    fn claimed<B: Buffer>(&mut self, pkt: &mut B, c: &Claimed) -> Verdict {
        let ip_at = usize::from(c.ip_at);
        let Some(Ok(ip)) = pkt.data().get(ip_at..).map(Ipv4Packet::new_checked) else {
            return Verdict::Next;
        };
        if ip.protocol() != protocol::UDP {
            return Verdict::Next;
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        if ip.is_fragment() {
            return self.fragment(&ip, src, dst);
        }
        let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
            return Verdict::Next;
        };
        let (sport, dport) = (udp.src_port(), udp.dst_port());
        let is_call = dst == self.shared.virtual_addr && dport == self.shared.nfs_port;
        let msg_at = usize::from(c.l4_at) + packet::udp::HEADER_LEN;
        if !is_call && self.shared.server_at(dst, dport).is_some() {
            return self.direct_call(pkt, msg_at, (src, sport));
        }
        let server = self.shared.server_at(src, sport).map(|s| s.sid);
        // Replies to the router's own client (mounts, recovery walks) are the management
        // core's: routing delivers them locally.
        if !is_call && (server.is_none() || dst == self.shared.virtual_addr) {
            return Verdict::Next;
        }
        match server {
            Some(sid) if !is_call => self.reply(pkt, ip_at, msg_at, sid, (dst, dport)),
            _ => self.call(pkt, ip_at, msg_at, (src, sport)),
        }
    }
}

impl Stage for NfsStage {
    type Reason = NfsDrop;
    const NAME: &'static str = "nfs";

    /// A packet that has not been through the router's IPv4 input (tests, benchmarks, fuzzing).
    fn process<B: Buffer>(&mut self, pkt: &mut B) -> Verdict {
        self.process_unclaimed(pkt)
    }
}
