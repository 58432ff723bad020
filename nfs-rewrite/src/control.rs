//! The management core's side of NFS virtualization (slow path; may allocate): answers for
//! the virtual server itself.
//!
//! - portmap (NULL, GETPORT), so a client that knows only the virtual address finds the ports;
//! - MOUNT v3 (NULL, MNT of "/" → the virtual root's handle, EXPORT, UMNT, UMNTALL, DUMP);
//! - the virtual root directory, whose entries are the servers' exports under their names:
//!   GETATTR, LOOKUP, ACCESS, READDIR, READDIRPLUS, FSSTAT (the servers' sums), FSINFO,
//!   PATHCONF; changes to it are refused with NFS3ERR_ROFS;
//! - NFS error replies for calls whose handles the fast path refused (forged →
//!   NFS3ERR_BADHANDLE, export gone → NFS3ERR_STALE, two servers in one call → NFS3ERR_XDEV);
//! - handles to recover: handed to [`Upstream`], which mounts the servers and walks them.

use crate::datapath::{NfsShared, Transaction};
use crate::policy::{self, Refusal};
use crate::replica::{self, Replication};
use crate::rewrite::{devirtualize_call, virtualize_reply, CallVerdict, Limits, ReplyVerdict};
use crate::tables::{TransactionTable, TxKey};
use crate::upstream::{Upstream, Want, CLIENT_PORT};
use crate::vfh::{self, MacMemo, VirtualHandle};
use crate::web::Web;
use crate::wire::nfs3::{self, stat, Proc};
use crate::wire::rpc::{self, Writer};
use crate::wire::{mount, Cursor, Field};
use packet::{Buffer, HeapBuffer};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// A UDP datagram the management core is to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub payload: Vec<u8>,
}

/// Who a call to the virtual server came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A UDP client: its address and port (its replies go back as datagrams).
    Udp(Ipv4Addr, u16),
    /// A client connection of the stream (TCP) proxy, by its id, and the client's address.
    Stream(u64, Ipv4Addr),
}

impl Peer {
    /// The client's address.
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Peer::Udp(a, _) | Peer::Stream(_, a) => a,
        }
    }
}

/// What became of a call to the virtual server ([`Controller::decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answer the client with this reply.
    Reply(Vec<u8>),
    /// Rewritten for server `tx.sid`: send `msg` to it; its reply is rewritten back with `tx`.
    Forward { msg: Vec<u8>, tx: Transaction },
    /// No answer now: held while its handle is recovered (it comes back through
    /// [`Controller::take_released`] for a stream peer), or dropped and counted.
    Nothing,
}

/// A call held during a recovery: the client and the message.
type HeldCall = (Peer, Vec<u8>);

/// Calls the management core forwards itself, in flight at once.
const MGMT_TRANSACTIONS: usize = 4096;
/// How long such a call waits for its reply (ms).
const MGMT_TX_TTL: u64 = 10_000;
/// Calls held while their handle is recovered: per handle, and in all.
const HOLD_PER_HANDLE: usize = 8;
const HOLD_TOTAL: usize = 4096;

/// A buffer copy of `msg` with room to grow on both sides (slow-path rewrites).
fn roomy(msg: &[u8]) -> HeapBuffer {
    let mut b = HeapBuffer::with_capacity(2 * msg.len() + 8192, msg.len() + 4096);
    if b.append(msg.len()).is_ok() {
        b.data_mut().copy_from_slice(msg);
    }
    b
}

/// Portmap protocol (RFC 1833, version 2).
pub mod portmap {
    pub const VERSION: u32 = 2;
    pub const NULL: u32 = 0;
    pub const GETPORT: u32 = 3;
    pub const IPPROTO_UDP: u32 = 17;
    pub const IPPROTO_TCP: u32 = 6;
}

/// accept_stat values.
mod accept {
    pub const SUCCESS: u32 = 0;
    pub const PROG_UNAVAIL: u32 = 1;
    pub const PROG_MISMATCH: u32 = 2;
    pub const PROC_UNAVAIL: u32 = 3;
    pub const GARBAGE_ARGS: u32 = 4;
}

/// mountstat3 values.
mod mountstat {
    pub const OK: u32 = 0;
    pub const NOENT: u32 = 2;
    pub const ACCES: u32 = 13;
    pub const SERVERFAULT: u32 = 10006;
}

/// auth_stat: rejected for security reasons (a flavor the policy does not take).
const AUTH_TOOWEAK: u32 = 5;

/// Mounts the management core records at most (addresses × paths).
const MOUNTS_MAX: usize = 65_536;

/// What the controller answered, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlStats {
    pub portmap: u64,
    pub mount: u64,
    pub nfs_null: u64,
    pub bad_handles: u64,
    pub stale_handles: u64,
    pub xdev: u64,
    /// Calls left unanswered while their handle is recovered (the client retransmits).
    pub recover_waiting: u64,
    /// Calls on the virtual root, answered here.
    pub virtual_root: u64,
    /// Calls on web exports' handles, answered here (see [`Web`]).
    pub web: u64,
    pub unanswered: u64,
    /// Calls rewritten and sent to a server from here (their handle was learned or recovered
    /// after the fast path punted them), and their replies rewritten back.
    pub forwarded: u64,
    pub replies_forwarded: u64,
    /// Of those, calls that had been held during a recovery.
    pub released: u64,
    /// Calls not held for lack of room (the client's retransmission is served instead).
    pub hold_full: u64,
    /// Server replies to no call of a worker's or of ours (late duplicates): dropped.
    pub unmatched_replies: u64,
    /// Transactions taken over from workers (fragmented replies).
    pub adopted: u64,
    /// Calls whose arguments did not decode, answered GARBAGE_ARGS (as a server would: the
    /// client fails at once instead of retransmitting until its timeout).
    pub garbage_args: u64,
    /// Calls refused for a name the server could not hold: empty, `/` or NUL in it
    /// (NFS3ERR_INVAL), above 255 bytes or a symlink target above 4096 (NFS3ERR_NAMETOOLONG).
    pub bad_names: u64,
    pub long_names: u64,
    /// Calls to a program, version or procedure the virtual server does not have
    /// (PROG_UNAVAIL, PROG_MISMATCH, PROC_UNAVAIL).
    pub prog_unavail: u64,
    pub prog_mismatch: u64,
    pub proc_unavail: u64,
    /// The export policy's refusals: a credential flavor it does not take (AUTH_TOOWEAK), a
    /// handle of an export the client's network may not use (NFS3ERR_ACCES), a call from an
    /// address that did not mount through the router (NFS3ERR_ACCES), a MNT refused
    /// (MNT3ERR_ACCES), a MNT not recorded for lack of room (MNT3ERR_SERVERFAULT).
    pub refused_flavor: u64,
    pub refused_network: u64,
    pub refused_unmounted: u64,
    pub mount_refused: u64,
    pub mount_table_full: u64,
    /// Calls forwarded from here whose credential was squashed (the workers count theirs).
    pub squashed: u64,
}

/// Answers for the virtual server.
#[derive(Debug)]
pub struct Controller {
    shared: Arc<NfsShared>,
    mount_port: u16,
    /// The virtual root's times (seconds since the epoch: when the router started).
    epoch_secs: u32,
    /// The client to the servers: mounts and recovery.
    pub upstream: Upstream,
    /// Calls forwarded from here, awaiting their replies.
    tx: TransactionTable<Transaction>,
    /// Calls waiting for their handle's recovery, by handle id: (client, message).
    held: HashMap<u64, Vec<HeldCall>>,
    held_total: usize,
    outbox: Vec<Datagram>,
    /// Held calls of stream peers whose handle was recovered: the proxy takes them again.
    released: Vec<(u64, Vec<u8>)>,
    /// Whether the virtual server listens on TCP (portmap answers port 0 for TCP otherwise).
    pub tcp: bool,
    /// Field scratch for rewriting replies here (allocated once).
    scratch: Box<[Field]>,
    /// What each client address mounted through the router (the MOUNT paths): the workers see
    /// the addresses in the policy's [`MountedSet`](crate::policy::MountedSet).
    mounts: BTreeMap<Ipv4Addr, BTreeSet<String>>,
    mounts_total: usize,
    /// The mounts changed since [`Controller::take_mounts_changed`].
    mounts_changed: bool,
    /// The web exports (answered here, from their origins).
    pub web: Web,
    /// Replicated exports: their logs and backups.
    pub repl: Replication,
    /// The time of the last call decided or timer (ms).
    now: u64,
    pub stats: ControlStats,
}

impl Controller {
    /// `epoch_secs`: wall-clock seconds at start (the virtual root's times; also seeds xids).
    pub fn new(shared: Arc<NfsShared>, mount_port: u16, epoch_secs: u32) -> Self {
        let web = Web::none(
            shared.key,
            shared.virtual_fsid,
            vfh::root_handle(&shared.key, shared.virtual_fsid),
        );
        let repl = Replication::new(&shared, epoch_secs.rotate_left(8));
        Controller {
            upstream: Upstream::new(shared.clone(), epoch_secs.rotate_left(16)),
            shared,
            mount_port,
            epoch_secs,
            tx: TransactionTable::new(MGMT_TRANSACTIONS, MGMT_TX_TTL),
            held: HashMap::new(),
            held_total: 0,
            outbox: Vec::new(),
            released: Vec::new(),
            tcp: true,
            scratch: vec![Field::FileId { at: 0 }; 8192].into_boxed_slice(),
            mounts: BTreeMap::new(),
            mounts_total: 0,
            mounts_changed: false,
            web,
            repl,
            now: 0,
            stats: ControlStats::default(),
        }
    }

    /// Take what the web exports' origins answered: the calls held for them are decided
    /// again (UDP replies queued for [`Controller::drain`], stream calls for
    /// [`Controller::take_released`]). Returns how many.
    pub fn poll_web(&mut self, now: u64) -> usize {
        if self.web.is_empty() {
            return 0;
        }
        let ready = self.web.poll(now);
        let n = ready.len();
        for (peer, msg) in ready {
            self.decide_again(peer, msg, now);
        }
        n
    }

    /// Take over a worker's transaction (its reply arrives fragmented: it is reassembled and
    /// rewritten here).
    pub fn adopt(&mut self, key: TxKey, tx: Transaction, now: u64) {
        if self.tx.insert(key, tx, now) {
            self.stats.adopted += 1;
        }
    }

    /// The transaction of a call forwarded from here, or handed over by a worker, taken out
    /// (the caller carries the call itself: over TCP to a server that has no UDP).
    pub fn take_transaction(&mut self, key: TxKey, now: u64) -> Option<Transaction> {
        self.tx.take(key, now)
    }

    /// Calls held while their handles are recovered.
    pub fn held(&self) -> usize {
        self.held_total
    }

    /// Datagrams to send: calls to servers (the management core's own, and clients' calls
    /// forwarded from here).
    pub fn drain(&mut self) -> Vec<Datagram> {
        let src = (self.shared.virtual_addr, CLIENT_PORT);
        let mut out = std::mem::take(&mut self.outbox);
        out.extend(self.upstream.drain().into_iter().map(|o| Datagram {
            src,
            dst: o.dst,
            payload: o.payload,
        }));
        out.extend(
            self.repl
                .drain()
                .into_iter()
                .map(|(dst, payload)| Datagram { src, dst, payload }),
        );
        out
    }

    /// Whether calls or replies wait in [`Controller::drain`].
    pub fn has_output(&self) -> bool {
        !self.outbox.is_empty() || self.repl.has_output()
    }

    /// Timers (every ~100 ms): the client's, expiry of forwarded calls.
    pub fn poll(&mut self, now: u64) {
        self.now = now;
        self.upstream.poll(now);
        self.tx.sweep(now);
        self.release(now);
        if !self.repl.is_empty() {
            // A replicated export's backup can take calls once both roots are known.
            for i in 0..self.repl.exports.len() {
                let (sid, backup) = (self.repl.exports[i].sid, self.repl.exports[i].backup);
                if self.repl.has_root(sid) {
                    continue;
                }
                let (Some(p), Some(b), Some(s)) = (
                    self.upstream.mounted(sid),
                    self.upstream.mounted(backup),
                    self.shared.server(sid),
                ) else {
                    continue;
                };
                let root = VirtualHandle::for_object(
                    &self.shared.key,
                    sid,
                    s.mch,
                    p.root_pfs,
                    p.root_pin,
                    &p.root_pfh,
                );
                let pfh = b.root_pfh.clone();
                self.repl.set_root(sid, root.hid, &pfh);
            }
            let shared = self.shared.clone();
            self.repl.poll(&shared, now);
        }
    }

    /// A datagram that arrived at the management core's client port.
    pub fn upstream_reply(&mut self, msg: &[u8], now: u64) {
        let xid = msg
            .get(..4)
            .map_or(0, |x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]));
        if self.repl.owns(xid) {
            let shared = self.shared.clone();
            self.repl.reply(msg, &shared, now);
            return;
        }
        self.upstream.reply(msg, now);
        self.release(now);
    }

    /// Forward the calls held for handles that were just recovered.
    fn release(&mut self, now: u64) {
        let mut found = self.upstream.take_recovered();
        found.extend(self.repl.take_recovered());
        for hid in found {
            for (peer, msg) in self.held.remove(&hid).unwrap_or_default() {
                self.held_total -= 1;
                self.stats.released += 1;
                self.decide_again(peer, msg, now);
            }
        }
    }

    /// A call that was held, decided again: a UDP client's answer (or forward) is queued for
    /// [`Controller::drain`], a stream call goes back to the proxy
    /// ([`Controller::take_released`]).
    fn decide_again(&mut self, peer: Peer, msg: Vec<u8>, now: u64) {
        match peer {
            Peer::Udp(a, p) => {
                if let Some(reply) = self.answer(&msg, (a, p), now) {
                    self.outbox.push(Datagram {
                        src: (self.shared.virtual_addr, self.shared.nfs_port),
                        dst: (a, p),
                        payload: reply,
                    });
                }
            }
            Peer::Stream(conn, _) => self.released.push((conn, msg)),
        }
    }

    /// Hold `msg` from `peer` until handle `hid` is found (bounded: the client's
    /// retransmission is served instead).
    fn hold(&mut self, hid: u64, peer: Peer, msg: &[u8]) {
        self.stats.recover_waiting += 1;
        let q = self.held.entry(hid).or_default();
        if q.len() < HOLD_PER_HANDLE && self.held_total < HOLD_TOTAL {
            q.push((peer, msg.to_vec()));
            self.held_total += 1;
        } else {
            self.stats.hold_full += 1;
        }
    }

    /// Held calls of stream peers whose handles were recovered since the last call: the
    /// proxy decides them again.
    pub fn take_released(&mut self) -> Vec<(u64, Vec<u8>)> {
        std::mem::take(&mut self.released)
    }

    /// A reply from server `sid` to `client` that no worker had the call of: ours if we
    /// forwarded the call. Returns the rewritten reply, to send from the virtual server.
    pub fn server_reply(
        &mut self,
        msg: &[u8],
        sid: u16,
        client: (Ipv4Addr, u16),
        now: u64,
    ) -> Option<Vec<u8>> {
        let Ok(rpc::Message::Reply(r)) = rpc::parse(msg) else {
            self.stats.unmatched_replies += 1;
            return None;
        };
        let key = TxKey {
            client: u32::from(client.0),
            port: client.1,
            xid: r.xid(),
        };
        let Some(t) = self.tx.take(key, now) else {
            self.stats.unmatched_replies += 1;
            return None;
        };
        if t.sid != sid {
            self.stats.unmatched_replies += 1;
            return None;
        }
        let limits = self.shared.limits;
        self.rewrite_reply(msg, t, limits)
    }

    /// The reply `msg` to a call forwarded with transaction `t`, made virtual (handles,
    /// attributes; FSINFO sizes clamped to `limits`). None when it cannot be rewritten
    /// (counted): the client's retransmission is served instead.
    pub fn rewrite_reply(&mut self, msg: &[u8], t: Transaction, limits: Limits) -> Option<Vec<u8>> {
        self.rewrite_reply_owned(msg.to_vec(), t, limits)
    }

    /// [`Controller::rewrite_reply`] on a reply the caller gives up: rewritten in place when
    /// nothing in it grows (READ, WRITE, GETATTR: no copy), in a copy with room otherwise.
    pub fn rewrite_reply_owned(
        &mut self,
        msg: Vec<u8>,
        t: Transaction,
        limits: Limits,
    ) -> Option<Vec<u8>> {
        let results_at = match rpc::parse(&msg) {
            Ok(rpc::Message::Reply(rpc::Reply::Accepted {
                stat: rpc::AcceptStat::Success { results_at },
                ..
            })) => results_at,
            Ok(rpc::Message::Reply(_)) => {
                self.stats.replies_forwarded += 1;
                return Some(msg);
            }
            _ => {
                self.stats.unmatched_replies += 1;
                return None;
            }
        };
        let mut buf = HeapBuffer::from_vec(msg);
        let mut out = match self.virtualize(&mut buf, results_at, t, limits) {
            ReplyVerdict::Rewritten { .. } => Some(buf.into_vec()),
            // No room to grow in place (the checks come before any edit): again with room.
            ReplyVerdict::SlowPath => {
                let mut room = roomy(buf.data());
                match self.virtualize(&mut room, results_at, t, limits) {
                    ReplyVerdict::Rewritten { .. } => Some(room.data().to_vec()),
                    _ => None,
                }
            }
            ReplyVerdict::Malformed => None,
        };
        match &mut out {
            Some(r) => {
                self.stats.replies_forwarded += 1;
                if t.token != 0 {
                    self.repl.replied(t.token, r, self.now);
                }
            }
            None => self.stats.unmatched_replies += 1,
        }
        out
    }

    fn virtualize(
        &mut self,
        buf: &mut HeapBuffer,
        results_at: usize,
        t: Transaction,
        limits: Limits,
    ) -> ReplyVerdict {
        // A backup serving a replicated export after a failover: its handles are the
        // export's (the primary's SID) and go in the backup's table.
        let (sid, table) = match self.repl.reply_route(t.sid) {
            Some((sid, table)) => (sid, Some(table)),
            None => (t.sid, None),
        };
        let (Some(p), Some(server)) = (Proc::from_u32(u32::from(t.proc_)), self.shared.server(sid))
        else {
            return ReplyVerdict::Malformed;
        };
        let mch = server.mch;
        let shared = self.shared.clone();
        let memo = MacMemo::default();
        let mut ctx = shared.ctx(&memo);
        ctx.limits = limits;
        virtualize_reply(
            buf,
            0,
            p,
            results_at,
            sid,
            mch,
            t.dir_pfs,
            &ctx,
            &mut self.scratch,
            |hid, pfh| {
                table.unwrap_or(&shared.handles).insert(hid, pfh);
            },
        )
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<NfsShared> {
        &self.shared
    }

    /// The virtual root directory's handle.
    pub fn root_handle(&self) -> [u8; vfh::VFH_LEN] {
        vfh::root_handle(&self.shared.key, self.shared.virtual_fsid)
    }

    /// The RPC reply (UDP payload) to `msg`, a call from `client` to the virtual server at
    /// time `now` (ms); None when there is no answer from here: the call was forwarded to its
    /// server (see [`Controller::drain`]), is held while its handle is recovered, or is not a
    /// call.
    pub fn answer(&mut self, msg: &[u8], client: (Ipv4Addr, u16), now: u64) -> Option<Vec<u8>> {
        let limits = self.shared.limits;
        match self.decide(msg, Peer::Udp(client.0, client.1), now, limits) {
            Outcome::Reply(r) => Some(r),
            Outcome::Nothing => None,
            Outcome::Forward { msg: fwd, tx } => {
                let xid = u32::from_be_bytes(msg.get(..4)?.try_into().ok()?);
                let server = self.shared.server(tx.sid)?;
                let key = TxKey {
                    client: u32::from(client.0),
                    port: client.1,
                    xid,
                };
                if !self.tx.insert(key, tx, now) {
                    self.stats.unanswered += 1;
                    return None;
                }
                self.outbox.push(Datagram {
                    src: client,
                    dst: (server.addr, server.nfs_port),
                    payload: fwd,
                });
                None
            }
        }
    }

    /// What to do with `msg`, a call from `peer` to the virtual server at time `now` (ms),
    /// with transfer sizes clamped to `limits` (the UDP path's MTU limits, or the stream
    /// proxy's). The UDP and the TCP virtual server both come through here.
    pub fn decide(&mut self, msg: &[u8], peer: Peer, now: u64, limits: Limits) -> Outcome {
        self.now = now;
        match self.decide_call(msg, peer, now, limits) {
            Some(Outcome::Reply(r)) => {
                if let Ok(rpc::Message::Reply(rpc::Reply::Accepted {
                    stat: rpc::AcceptStat::GarbageArgs,
                    ..
                })) = rpc::parse(&r)
                {
                    self.stats.garbage_args += 1;
                }
                Outcome::Reply(r)
            }
            Some(o) => o,
            None => Outcome::Nothing,
        }
    }

    fn decide_call(&mut self, msg: &[u8], peer: Peer, now: u64, limits: Limits) -> Option<Outcome> {
        let reply = |w: Writer| Some(Outcome::Reply(w.buf));
        let rpc::Message::Call(c) = rpc::parse(msg).ok()? else {
            return None;
        };
        let mut w = Writer::new();
        match c.prog {
            rpc::program::PORTMAP => {
                self.stats.portmap += 1;
                if c.vers != portmap::VERSION {
                    self.stats.prog_mismatch += 1;
                    w.accepted_reply(c.xid, accept::PROG_MISMATCH)
                        .u32(portmap::VERSION)
                        .u32(portmap::VERSION);
                    return reply(w);
                }
                match c.proc_ {
                    portmap::NULL => {
                        w.accepted_reply(c.xid, accept::SUCCESS);
                    }
                    portmap::GETPORT => {
                        let mut cur = crate::wire::Cursor::at(msg, c.args_at);
                        let (Ok(prog), Ok(vers), Ok(prot)) = (cur.u32(), cur.u32(), cur.u32())
                        else {
                            w.accepted_reply(c.xid, accept::GARBAGE_ARGS);
                            return reply(w);
                        };
                        let udp_or_tcp = prot == portmap::IPPROTO_UDP
                            || (prot == portmap::IPPROTO_TCP && self.tcp);
                        let port = match (prog, vers) {
                            (rpc::program::NFS, 3) if udp_or_tcp => u32::from(self.shared.nfs_port),
                            (rpc::program::MOUNT, 3) if udp_or_tcp => u32::from(self.mount_port),
                            _ => 0,
                        };
                        w.accepted_reply(c.xid, accept::SUCCESS).u32(port);
                    }
                    _ => {
                        self.stats.proc_unavail += 1;
                        w.accepted_reply(c.xid, accept::PROC_UNAVAIL);
                    }
                }
                reply(w)
            }
            rpc::program::MOUNT => {
                self.stats.mount += 1;
                if c.vers != 3 {
                    self.stats.prog_mismatch += 1;
                    w.accepted_reply(c.xid, accept::PROG_MISMATCH).u32(3).u32(3);
                    return reply(w);
                }
                let Ok((path, _)) = mount::walk_call(c.proc_, msg, c.args_at) else {
                    let unavail = c.proc_ > mount::proc_::EXPORT;
                    self.stats.proc_unavail += u64::from(unavail);
                    w.accepted_reply(
                        c.xid,
                        if unavail {
                            accept::PROC_UNAVAIL
                        } else {
                            accept::GARBAGE_ARGS
                        },
                    );
                    return reply(w);
                };
                if c.proc_ != mount::proc_::NULL && !self.shared.policy.accepts(c.cred.flavor) {
                    self.stats.refused_flavor += 1;
                    w.auth_error(c.xid, AUTH_TOOWEAK);
                    return reply(w);
                }
                w.accepted_reply(c.xid, accept::SUCCESS);
                let client = peer.addr();
                match c.proc_ {
                    mount::proc_::MNT => {
                        let path = String::from_utf8_lossy(path.unwrap_or_default()).into_owned();
                        match self.mount(client, &path) {
                            Ok(root) => {
                                w.u32(mountstat::OK)
                                    .opaque(&root)
                                    .u32(1)
                                    .u32(rpc::auth::SYS);
                            }
                            Err(st) => {
                                w.u32(st);
                            }
                        }
                    }
                    mount::proc_::EXPORT => self.exports(&mut w),
                    mount::proc_::DUMP => {
                        for (a, paths) in &self.mounts {
                            for path in paths {
                                w.bool(true)
                                    .opaque(a.to_string().as_bytes())
                                    .opaque(path.as_bytes());
                            }
                        }
                        w.bool(false);
                    }
                    mount::proc_::UMNT => {
                        let path = String::from_utf8_lossy(path.unwrap_or_default()).into_owned();
                        self.unmount(client, Some(&path));
                    }
                    mount::proc_::UMNTALL => self.unmount(client, None),
                    _ => {} // NULL: void
                }
                reply(w)
            }
            rpc::program::NFS => self.nfs(&c, msg, peer, now, limits),
            _ => {
                self.stats.prog_unavail += 1;
                w.accepted_reply(c.xid, accept::PROG_UNAVAIL);
                reply(w)
            }
        }
    }

    fn nfs(
        &mut self,
        c: &rpc::Call<'_>,
        msg: &[u8],
        peer: Peer,
        now: u64,
        limits: Limits,
    ) -> Option<Outcome> {
        let reply = |w: Writer| Some(Outcome::Reply(w.buf));
        let mut w = Writer::new();
        if c.vers != 3 {
            self.stats.prog_mismatch += 1;
            w.accepted_reply(c.xid, accept::PROG_MISMATCH).u32(3).u32(3);
            return reply(w);
        }
        let Some(p) = Proc::from_u32(c.proc_) else {
            self.stats.proc_unavail += 1;
            w.accepted_reply(c.xid, accept::PROC_UNAVAIL);
            return reply(w);
        };
        if p == Proc::Null {
            self.stats.nfs_null += 1;
            w.accepted_reply(c.xid, accept::SUCCESS);
            return reply(w);
        }
        match self.shared.policy.admit(peer.addr(), c.cred.flavor) {
            Ok(()) => {}
            Err(Refusal::Flavor) => {
                self.stats.refused_flavor += 1;
                w.auth_error(c.xid, AUTH_TOOWEAK);
                return reply(w);
            }
            Err(Refusal::NotMounted) => {
                self.stats.refused_unmounted += 1;
                w.accepted_reply(c.xid, accept::SUCCESS).u32(stat::ACCES);
                failure_body(&mut w, p);
                return reply(w);
            }
        }
        // Classify the handles the way the fast path does, on a copy (the rewritten copy is
        // what a forwarded call sends).
        let shared = self.shared.clone();
        let memo = MacMemo::default();
        let mut ctx = shared.ctx(&memo);
        ctx.limits = limits;
        let mut copy = roomy(msg);
        let exports = shared.exports_for(peer.addr());
        // A replicated export that failed over: its calls go to the backup, through the
        // backup's handles.
        let first_sid = msg
            .get(c.args_at + 6..c.args_at + 8)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        let diverted = self.repl.diverted(first_sid);
        if let Some((_, table)) = diverted {
            ctx.handles = table;
        }
        let active = diverted.map(|(a, _)| a);
        let status = match devirtualize_call(&mut copy, 0, p, c.args_at, &ctx, exports) {
            CallVerdict::Refuse(st) => st,
            CallVerdict::Malformed => {
                w.accepted_reply(c.xid, accept::GARBAGE_ARGS);
                return reply(w);
            }
            // After a failover the handle is looked up on the server that took over, by name.
            CallVerdict::Recover(v) if active.is_some() => {
                if self.repl.want(v.sid, v.hid, &shared) {
                    self.hold(v.hid, peer, msg);
                    return None;
                }
                stat::STALE
            }
            CallVerdict::Recover(v) => match self.upstream.want(&v, now) {
                Want::Wait => {
                    self.hold(v.hid, peer, msg);
                    return None;
                }
                Want::Stale => stat::STALE,
            },
            // The handle is known (for a UDP call: learned since the fast path punted it):
            // forward the rewritten copy; its reply is rewritten here too.
            CallVerdict::Forward { sid, dir_pfs, .. } => {
                let export = sid;
                let sid = active.unwrap_or(sid);
                let server = shared.server(sid)?;
                let anon = (shared.policy.anonymous_uid, shared.policy.anonymous_gid);
                let mut csum = packet::checksum::Adjust::default(); // sent from here: summed anew
                if policy::squash(copy.data_mut(), server.squash, anon, &mut csum) {
                    self.stats.squashed += 1;
                }
                self.stats.forwarded += 1;
                // A replicated export's change is logged when the primary has answered it.
                let stream = matches!(peer, Peer::Stream(..));
                let token =
                    if shared.replicated.contains(&export) && (replica::tracked(p) || stream) {
                        self.repl.track(p, export, msg, now, stream)
                    } else {
                        0
                    };
                let tx = Transaction {
                    proc_: p as u8,
                    sid,
                    token,
                    dir_pfs,
                };
                return Some(Outcome::Forward {
                    msg: copy.data().to_vec(),
                    tx,
                });
            }
            CallVerdict::Virtual => {
                let first = Cursor::at(msg, c.args_at)
                    .opaque_var(crate::wire::xdr::FHSIZE3)
                    .ok()
                    .and_then(|(_, h)| VirtualHandle::verify(&shared.key, h).ok())
                    .filter(|v| v.flags & vfh::FLAG_WEB != 0);
                if let Some(v) = first {
                    self.stats.web += 1;
                    return self
                        .web
                        .call(c.xid, p, msg, c.args_at, &v, peer, now, limits)
                        .map(Outcome::Reply);
                }
                self.stats.virtual_root += 1;
                return Some(Outcome::Reply(self.virtual_root(
                    c,
                    msg,
                    peer.addr(),
                    p,
                    limits,
                )));
            }
            CallVerdict::NoHandle => {
                self.stats.unanswered += 1;
                return None;
            }
        };
        match status {
            nfs3::stat::BADHANDLE => self.stats.bad_handles += 1,
            nfs3::stat::STALE => self.stats.stale_handles += 1,
            nfs3::stat::XDEV => self.stats.xdev += 1,
            nfs3::stat::INVAL => self.stats.bad_names += 1,
            nfs3::stat::NAMETOOLONG => self.stats.long_names += 1,
            nfs3::stat::ACCES => self.stats.refused_network += 1,
            _ => {}
        }
        w.accepted_reply(c.xid, accept::SUCCESS).u32(status);
        failure_body(&mut w, p);
        reply(w)
    }
}

impl Controller {
    /// Whether `client` may mount `path` ("/" for the virtual root, "/NAME" for an export):
    /// Err is the mountstat3 to answer.
    fn may_mount(&self, client: Ipv4Addr, path: &str) -> Result<Option<u16>, u32> {
        let name = path.trim_end_matches('/').trim_start_matches('/');
        if name.is_empty() {
            // The virtual root: for a client that may use at least one export.
            let servers = &self.shared.servers;
            return if servers.is_empty() || servers.iter().any(|s| s.admits(client)) {
                Ok(None)
            } else {
                Err(mountstat::ACCES)
            };
        }
        match self
            .shared
            .servers
            .iter()
            .find(|s| s.name == name && s.listed())
        {
            None => Err(mountstat::NOENT),
            Some(s) if !s.admits(client) => Err(mountstat::ACCES),
            Some(s) => Ok(Some(s.sid)),
        }
    }

    /// MNT of `path` from `client`: the handle of the virtual root or of the export's root,
    /// and the mount recorded; Err is the mountstat3 to answer.
    fn mount(&mut self, client: Ipv4Addr, path: &str) -> Result<[u8; vfh::VFH_LEN], u32> {
        let web = self
            .web
            .mount(path.trim_end_matches('/').trim_start_matches('/'));
        let root = match self.may_mount(client, path) {
            Err(mountstat::NOENT) if web.is_some() => web.unwrap_or([0; vfh::VFH_LEN]),
            Ok(None) => self.root_handle(),
            Ok(Some(sid)) => match self.export_entry(sid) {
                Some(e) => e.handle,
                // Configured, but the router has not mounted it yet.
                None => return Err(mountstat::SERVERFAULT),
            },
            Err(st) => {
                self.stats.mount_refused += u64::from(st == mountstat::ACCES);
                return Err(st);
            }
        };
        if !self.record_mount(client, path) && self.shared.policy.require_mount {
            self.stats.mount_table_full += 1;
            return Err(mountstat::SERVERFAULT);
        }
        Ok(root)
    }

    /// Remember that `client` mounted `path`; false if there was no room (the workers would
    /// not know the address).
    fn record_mount(&mut self, client: Ipv4Addr, path: &str) -> bool {
        let paths = self.mounts.entry(client).or_default();
        if !paths.contains(path) && self.mounts_total < MOUNTS_MAX {
            paths.insert(path.to_string());
            self.mounts_total += 1;
            self.mounts_changed = true;
        }
        let known = !paths.is_empty();
        if !known {
            self.mounts.remove(&client);
        }
        known && self.shared.policy.mounted.insert(client)
    }

    /// UMNT of `path` (None: UMNTALL) from `client`.
    fn unmount(&mut self, client: Ipv4Addr, path: Option<&str>) {
        let Some(paths) = self.mounts.get_mut(&client) else {
            return;
        };
        let before = paths.len();
        match path {
            Some(p) => {
                paths.remove(p);
            }
            None => paths.clear(),
        }
        self.mounts_total -= before - paths.len();
        self.mounts_changed |= before != paths.len();
        if paths.is_empty() {
            self.mounts.remove(&client);
            self.shared.policy.mounted.remove(client);
        }
    }

    /// EXPORT: "/" and every export by name, each with the client networks that may mount it
    /// (none listed: every client).
    fn exports(&self, w: &mut Writer) {
        let servers = &self.shared.servers;
        let open = servers.is_empty() || servers.iter().any(|s| s.clients.is_empty());
        let mut all = Vec::new();
        for n in servers.iter().flat_map(|s| s.clients.iter()) {
            if !all.contains(n) {
                all.push(*n);
            }
        }
        let entry = |w: &mut Writer, dir: &str, groups: &[crate::policy::Network]| {
            w.bool(true).opaque(dir.as_bytes());
            for g in groups {
                w.bool(true).opaque(g.to_string().as_bytes());
            }
            w.bool(false);
        };
        entry(w, "/", if open { &[] } else { &all });
        for s in servers.iter().filter(|s| s.listed()) {
            entry(w, &format!("/{}", s.name), &s.clients);
        }
        for name in self.web.names() {
            entry(w, &format!("/{name}"), &[]);
        }
        w.bool(false);
    }

    /// Mounts recorded (address, path), in order.
    pub fn mounts(&self) -> impl Iterator<Item = (Ipv4Addr, &str)> {
        self.mounts
            .iter()
            .flat_map(|(a, ps)| ps.iter().map(move |p| (*a, p.as_str())))
    }

    /// The mount table as text for the management core's disk (the router's rmtab): one
    /// `ADDRESS PATH` line per mount.
    pub fn mounts_text(&self) -> String {
        self.mounts().map(|(a, p)| format!("{a} {p}\n")).collect()
    }

    /// Whether the mounts changed since the last call (they are to be saved).
    pub fn take_mounts_changed(&mut self) -> bool {
        std::mem::take(&mut self.mounts_changed)
    }

    /// A saved mount table, at start: the mounts the policy still allows are recorded again.
    /// Returns (kept, dropped); a line that does not parse is dropped.
    pub fn load_mounts(&mut self, text: &str) -> (usize, usize) {
        let (mut kept, mut dropped) = (0, 0);
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let parsed = line
                .split_once(' ')
                .and_then(|(a, p)| Some((a.parse::<Ipv4Addr>().ok()?, p.trim())));
            match parsed {
                Some((a, p))
                    if (self.may_mount(a, p).is_ok()
                        || self.web.mount(p.trim_matches('/')).is_some())
                        && self.record_mount(a, p) =>
                {
                    kept += 1
                }
                _ => dropped += 1,
            }
        }
        self.mounts_changed = dropped > 0;
        (kept, dropped)
    }
}

/// ACCESS3 bits the virtual root grants (it is read-only): READ, LOOKUP, EXECUTE.
const ROOT_ACCESS: u32 = 0x01 | 0x02 | 0x20;
const NF3DIR: u32 = 2;

/// One entry of the virtual root.
struct Entry {
    name: Vec<u8>,
    fileid: u64,
    attr: [u8; Field::FATTR_LEN],
    handle: [u8; vfh::VFH_LEN],
}

impl Controller {
    /// The virtual root's attributes.
    fn root_attr(&self) -> [u8; Field::FATTR_LEN] {
        let mut w = Writer::new();
        let n = self
            .upstream
            .servers
            .iter()
            .filter(|s| {
                s.mounted.is_some() && self.shared.server(s.sid).is_some_and(|x| x.listed())
            })
            .count()
            + self.web.names().count();
        w.u32(NF3DIR)
            .u32(0o555)
            .u32(2 + n as u32)
            .u32(0)
            .u32(0)
            .u64(4096)
            .u64(4096)
            .u32(0)
            .u32(0)
            .u64(self.shared.virtual_fsid)
            .u64(vfh::ROOT_VIN);
        for _ in 0..3 {
            w.u32(self.epoch_secs).u32(0);
        }
        let mut a = [0u8; Field::FATTR_LEN];
        a.copy_from_slice(&w.buf);
        a
    }

    /// The entries of the virtual root `client` sees: ".", "..", then every mounted export
    /// the policy lets it use.
    fn root_entries(&self, client: Ipv4Addr) -> Vec<Entry> {
        let (attr, handle) = (self.root_attr(), self.root_handle());
        let dot = |name: &[u8]| Entry {
            name: name.to_vec(),
            fileid: vfh::ROOT_VIN,
            attr,
            handle,
        };
        let mut v = vec![dot(b"."), dot(b"..")];
        for s in self
            .shared
            .servers
            .iter()
            .filter(|s| s.admits(client) && s.listed())
        {
            if let Some(e) = self.export_entry(s.sid) {
                v.push(e);
            }
        }
        for (name, fileid, attr, handle) in self.web.root_entries() {
            v.push(Entry {
                name,
                fileid,
                attr,
                handle,
            });
        }
        v
    }

    /// A mounted export as an entry of the virtual root (its root's VFH and attributes).
    fn export_entry(&self, sid: u16) -> Option<Entry> {
        let m = self.upstream.mounted(sid)?;
        let s = self.shared.server(sid)?;
        let h = VirtualHandle::for_object(
            &self.shared.key,
            sid,
            s.mch,
            m.root_pfs,
            m.root_pin,
            &m.root_pfh,
        );
        let vin = vfh::virtual_inode(&self.shared.key, sid, m.root_pfs, m.root_pin);
        let mut attr = m.root_attr;
        attr[Field::FATTR_FSID..Field::FATTR_FSID + 8]
            .copy_from_slice(&self.shared.virtual_fsid.to_be_bytes());
        attr[Field::FATTR_FILEID..Field::FATTR_FILEID + 8].copy_from_slice(&vin.to_be_bytes());
        Some(Entry {
            name: s.name.as_bytes().to_vec(),
            fileid: vin,
            attr,
            handle: h.encode(&self.shared.key),
        })
    }

    /// Answer a call on the virtual root directory.
    fn virtual_root(
        &mut self,
        c: &rpc::Call<'_>,
        msg: &[u8],
        client: Ipv4Addr,
        p: Proc,
        l: Limits,
    ) -> Vec<u8> {
        let mut w = Writer::new();
        let mut args = Cursor::at(msg, c.args_at);
        let garbage = |xid| {
            let mut w = Writer::new();
            w.accepted_reply(xid, accept::GARBAGE_ARGS);
            w.buf
        };
        // Every read-only procedure names the root first.
        if args.opaque_var(crate::wire::xdr::FHSIZE3).is_err() {
            return garbage(c.xid);
        }
        let attr = self.root_attr();
        w.accepted_reply(c.xid, accept::SUCCESS);
        match p {
            Proc::Getattr => {
                w.u32(stat::OK).fixed(&attr);
            }
            Proc::Access => {
                let Ok(want) = args.u32() else {
                    return garbage(c.xid);
                };
                w.u32(stat::OK)
                    .bool(true)
                    .fixed(&attr)
                    .u32(want & ROOT_ACCESS);
            }
            Proc::Lookup => {
                let Ok(name) = args.string(nfs3::NAME_MAX) else {
                    return garbage(c.xid);
                };
                let found = self
                    .root_entries(client)
                    .into_iter()
                    .find(|e| e.name == name);
                match found {
                    Some(e) => {
                        w.u32(stat::OK)
                            .opaque(&e.handle)
                            .bool(true)
                            .fixed(&e.attr)
                            .bool(true)
                            .fixed(&attr);
                    }
                    None => {
                        // A configured server not mounted yet: "try again later"; one the
                        // client may not use: "permission denied".
                        let configured = self
                            .shared
                            .servers
                            .iter()
                            .find(|s| s.name.as_bytes() == name && s.listed());
                        w.u32(match configured {
                            Some(s) if !s.admits(client) => {
                                self.stats.refused_network += 1;
                                stat::ACCES
                            }
                            Some(_) => stat::JUKEBOX,
                            None => stat::NOENT,
                        })
                        .bool(true)
                        .fixed(&attr);
                    }
                }
            }
            Proc::Readdir | Proc::Readdirplus => {
                let plus = p == Proc::Readdirplus;
                let (Ok(cookie), Ok(_verf)) = (args.u64(), args.opaque_fixed(8)) else {
                    return garbage(c.xid);
                };
                let limit = if plus {
                    args.u32().and_then(|_dircount| args.u32())
                } else {
                    args.u32()
                };
                let Ok(limit) = limit else {
                    return garbage(c.xid);
                };
                let entries = self.root_entries(client);
                dir_reply(&mut w, &attr, limit, cookie, entries.len(), |i, one| {
                    let e = &entries[i];
                    one.u64(e.fileid).opaque(&e.name);
                    if plus {
                        one.u64(i as u64 + 1)
                            .bool(true)
                            .fixed(&e.attr)
                            .bool(true)
                            .opaque(&e.handle);
                    } else {
                        one.u64(i as u64 + 1);
                    }
                });
            }
            Proc::Fsstat => {
                let mut sums = [0u64; 6];
                for s in &self.upstream.servers {
                    if let Some(f) = s.mounted.as_ref().and_then(|m| m.fsstat) {
                        for (t, v) in sums.iter_mut().zip(f) {
                            *t = t.saturating_add(v);
                        }
                    }
                }
                w.u32(stat::OK).bool(true).fixed(&attr);
                for v in sums {
                    w.u64(v);
                }
                w.u32(0); // invarsec
            }
            Proc::Fsinfo => {
                w.u32(stat::OK)
                    .bool(true)
                    .fixed(&attr)
                    .u32(l.max_io) // rtmax
                    .u32(l.max_io) // rtpref
                    .u32(512) // rtmult
                    .u32(l.max_io) // wtmax
                    .u32(l.max_io) // wtpref
                    .u32(512) // wtmult
                    .u32(l.max_dir) // dtpref
                    .u64(u64::MAX >> 1) // maxfilesize
                    .u32(0)
                    .u32(1) // time_delta
                    .u32(0x1b); // LINK | SYMLINK | HOMOGENEOUS | CANSETTIME
            }
            Proc::Pathconf => {
                w.u32(stat::OK)
                    .bool(true)
                    .fixed(&attr)
                    .u32(1) // linkmax
                    .u32(nfs3::NAME_MAX as u32)
                    .bool(true) // no_trunc
                    .bool(true) // chown_restricted
                    .bool(false) // case_insensitive
                    .bool(true); // case_preserving
            }
            _ => {
                let st = match p {
                    Proc::Read | Proc::Write | Proc::Commit => stat::ISDIR,
                    Proc::Readlink => stat::INVAL,
                    _ => stat::ROFS,
                };
                w.u32(st);
                failure_body(&mut w, p);
            }
        }
        w.buf
    }
}

/// A READDIR/READDIRPLUS result in `w` (after the reply header): NFS3_OK, the directory's
/// attributes, a zero cookie verifier, the entries from `cookie` on (of `count`) that fit in
/// `limit` bytes — `entry(i, w)` writes entry `i`'s fields after its "value follows" word —,
/// the end and eof words; NFS3ERR_TOOSMALL when not even one fits.
pub(crate) fn dir_reply(
    w: &mut Writer,
    attr: &[u8; Field::FATTR_LEN],
    limit: u32,
    cookie: u64,
    count: usize,
    mut entry: impl FnMut(usize, &mut Writer),
) {
    // status, post_op_attr, cookieverf, the final "no more" and eof words.
    let fixed = 4 + 4 + Field::FATTR_LEN + 8 + 8;
    let mut body = Writer::new();
    let (mut n, mut eof) = (0, true);
    for i in (cookie as usize)..count {
        let mut one = Writer::new();
        one.bool(true);
        entry(i, &mut one);
        if fixed + body.buf.len() + one.buf.len() > limit as usize {
            eof = false;
            break;
        }
        body.buf.extend_from_slice(&one.buf);
        n += 1;
    }
    if n == 0 && !eof {
        w.u32(stat::TOOSMALL).bool(true).fixed(attr);
        return;
    }
    w.u32(stat::OK).bool(true).fixed(attr).fixed(&[0; 8]);
    w.buf.extend_from_slice(&body.buf);
    w.bool(false).bool(eof);
}

/// The rest of a failed result (RFC 1813 `*3resfail`) with no attributes.
pub(crate) fn failure_body(w: &mut Writer, p: Proc) {
    let wcc = |w: &mut Writer| {
        w.bool(false).bool(false);
    };
    match p {
        Proc::Null | Proc::Getattr => {}
        Proc::Setattr
        | Proc::Write
        | Proc::Create
        | Proc::Mkdir
        | Proc::Symlink
        | Proc::Mknod
        | Proc::Remove
        | Proc::Rmdir
        | Proc::Commit => wcc(w),
        Proc::Rename => {
            wcc(w);
            wcc(w);
        }
        Proc::Link => {
            w.bool(false);
            wcc(w);
        }
        Proc::Lookup
        | Proc::Access
        | Proc::Readlink
        | Proc::Read
        | Proc::Readdir
        | Proc::Readdirplus
        | Proc::Fsstat
        | Proc::Fsinfo
        | Proc::Pathconf => {
            w.bool(false);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::datapath::Server;
    use crate::rewrite::Limits;
    use crate::tables::HandleTable;
    use crate::vfh::HandleKey;
    use crate::wire::Field;
    use std::net::Ipv4Addr;

    /// A controller for one server (sid 1, "a", 10.0.2.2, export /srv/a) under key (3, 4),
    /// virtual address 10.0.1.1 (the stream proxy's tests use it too).
    pub(crate) fn controller() -> Controller {
        controller_with(|_| {})
    }

    /// The same, its shared state changed by `f` first (the export policy's tests).
    fn controller_with(f: impl FnOnce(&mut NfsShared)) -> Controller {
        let key = HandleKey::new(3, 4);
        let mch = key.mount_checksum(1, b"/srv/a");
        let mut shared = NfsShared {
            key,
            handles: Arc::new(HandleTable::new(64)),
            virtual_addr: Ipv4Addr::new(10, 0, 1, 1),
            nfs_port: 2049,
            virtual_fsid: 77,
            limits: Limits::for_mtu(1500),
            servers: vec![Server {
                sid: 1,
                name: "a".into(),
                addr: Ipv4Addr::new(10, 0, 2, 2),
                nfs_port: 2049,
                mount_port: 20048,
                export: "/srv/a".into(),
                mch,
                bridge: false,
                clients: vec![],
                squash: crate::policy::Squash::None,
                pair: Default::default(),
            }],
            policy: Default::default(),
            replicated: vec![],
            diverted: Default::default(),
        };
        f(&mut shared);
        Controller::new(Arc::new(shared), 20048, 1_700_000_000)
    }

    /// The MNT reply's status (and handle) for `path` from `client`.
    fn mnt(k: &mut Controller, client: Ipv4Addr, path: &str) -> (u32, Option<Vec<u8>>) {
        let mut w = Writer::new();
        w.call_sys(5, rpc::program::MOUNT, 3, mount::proc_::MNT, 0, 0)
            .opaque(path.as_bytes());
        let r = k.answer(&w.buf, (client, 700), 0).unwrap();
        let at = success_results(&r, 5);
        let mut handle = None;
        let (st, _) = mount::walk_reply(mount::proc_::MNT, &r, at, |f| {
            if let Field::Handle { at, len } = f {
                handle = Some(r[at + 4..at + 4 + len].to_vec());
            }
        })
        .unwrap();
        (st, handle)
    }

    #[test]
    fn export_policy_at_the_border() {
        let inside = Ipv4Addr::new(10, 0, 1, 2);
        let outside = Ipv4Addr::new(192, 0, 2, 9);
        let mut k = controller_with(|s| {
            s.servers[0].clients = vec!["10.0.1.0/24".parse().unwrap()];
            s.policy.auth_none = false;
            s.policy.require_mount = true;
        });
        // MNT: from outside the export's networks, refused; the root and the export by name
        // from inside (the export is not mounted by the router yet: SERVERFAULT).
        assert_eq!(mnt(&mut k, outside, "/").0, mountstat::ACCES);
        assert_eq!(mnt(&mut k, outside, "/a").0, mountstat::ACCES);
        assert_eq!(mnt(&mut k, inside, "/nope").0, mountstat::NOENT);
        assert_eq!(mnt(&mut k, inside, "/a").0, mountstat::SERVERFAULT);
        let (st, root) = mnt(&mut k, inside, "/");
        assert_eq!(
            (st, root.map(|h| h.len())),
            (mountstat::OK, Some(vfh::VFH_LEN))
        );
        assert_eq!(k.stats.mount_refused, 2);
        assert!(k.shared.policy.mounted.contains(inside));
        assert!(k.take_mounts_changed());
        assert_eq!(k.mounts_text(), "10.0.1.2 /\n");
        // An AUTH_NONE MNT: AUTH_TOOWEAK.
        let mut w = Writer::new();
        w.call(6, rpc::program::MOUNT, 3, mount::proc_::MNT)
            .opaque(b"/");
        let denied = |r: Vec<u8>| match rpc::parse(&r).unwrap() {
            rpc::Message::Reply(rpc::Reply::Denied { stat, .. }) => stat,
            m => panic!("{m:?}"),
        };
        assert_eq!(
            denied(k.answer(&w.buf, (inside, 700), 0).unwrap()),
            rpc::RejectStat::AuthError(AUTH_TOOWEAK)
        );
        // NFS calls: AUTH_NONE refused; from an address that did not mount, ACCES in the
        // procedure's shape; NULL always answered.
        let root = k.root_handle();
        let getattr = |cred_sys: bool| {
            let mut w = Writer::new();
            if cred_sys {
                w.call_sys(9, rpc::program::NFS, 3, 1, 0, 0);
            } else {
                w.call(9, rpc::program::NFS, 3, 1);
            }
            w.opaque(&root);
            w.buf
        };
        assert_eq!(
            denied(k.answer(&getattr(false), (inside, 700), 0).unwrap()),
            rpc::RejectStat::AuthError(AUTH_TOOWEAK)
        );
        let r = k
            .answer(&getattr(true), (Ipv4Addr::new(10, 0, 1, 3), 700), 0)
            .unwrap();
        let at = success_results(&r, 9);
        assert_eq!(&r[at..], &[0, 0, 0, 13], "GETATTR's failure: ACCES alone");
        let r = k.answer(&getattr(true), (inside, 700), 0).unwrap();
        let at = success_results(&r, 9);
        assert_eq!(
            &r[at..at + 4],
            &[0, 0, 0, 0],
            "the mounted client gets the root's attributes"
        );
        let mut w = Writer::new();
        w.call(10, rpc::program::NFS, 3, 0);
        success_results(&k.answer(&w.buf, (outside, 700), 0).unwrap(), 10);
        assert_eq!((k.stats.refused_flavor, k.stats.refused_unmounted), (2, 1));
        // DUMP lists the mount; EXPORT lists "/" and "/a" with the network.
        let mut w = Writer::new();
        w.call_sys(11, rpc::program::MOUNT, 3, mount::proc_::DUMP, 0, 0);
        let r = k.answer(&w.buf, (inside, 700), 0).unwrap();
        let at = success_results(&r, 11);
        let mut d = Writer::new();
        d.bool(true).opaque(b"10.0.1.2").opaque(b"/").bool(false);
        assert_eq!(&r[at..], &d.buf[..]);
        let mut w = Writer::new();
        w.call_sys(12, rpc::program::MOUNT, 3, mount::proc_::EXPORT, 0, 0);
        let r = k.answer(&w.buf, (inside, 700), 0).unwrap();
        let at = success_results(&r, 12);
        assert_eq!(
            mount::walk_reply(mount::proc_::EXPORT, &r, at, |_| {})
                .unwrap()
                .1,
            r.len()
        );
        let mut e = Writer::new();
        for dir in [&b"/"[..], b"/a"] {
            e.bool(true)
                .opaque(dir)
                .bool(true)
                .opaque(b"10.0.1.0/24")
                .bool(false);
        }
        e.bool(false);
        assert_eq!(&r[at..], &e.buf[..]);
        // UMNTALL forgets the address; the saved table brings it back, minus what the policy
        // no longer allows.
        let mut w = Writer::new();
        w.call_sys(13, rpc::program::MOUNT, 3, mount::proc_::UMNTALL, 0, 0);
        k.answer(&w.buf, (inside, 700), 0).unwrap();
        assert!(!k.shared.policy.mounted.contains(inside));
        assert_eq!(k.mounts_text(), "");
        assert_eq!(
            k.load_mounts("10.0.1.2 /\n192.0.2.9 /a\n10.0.1.7 /a\ngarbage\n"),
            (2, 2)
        );
        assert!(k.shared.policy.mounted.contains(Ipv4Addr::new(10, 0, 1, 7)));
        assert!(!k.shared.policy.mounted.contains(outside));
        assert!(
            k.take_mounts_changed(),
            "dropped lines: the file is rewritten"
        );
    }

    fn success_results(reply: &[u8], xid: u32) -> usize {
        match rpc::parse(reply).unwrap() {
            rpc::Message::Reply(rpc::Reply::Accepted {
                xid: x,
                stat: rpc::AcceptStat::Success { results_at },
                ..
            }) => {
                assert_eq!(x, xid);
                results_at
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn portmap_getport() {
        let mut k = controller();
        let getport = |k: &mut Controller, prog: u32, prot: u32| {
            let mut w = Writer::new();
            w.call(5, rpc::program::PORTMAP, 2, portmap::GETPORT)
                .u32(prog)
                .u32(3)
                .u32(prot)
                .u32(0);
            let r = k
                .answer(&w.buf, (Ipv4Addr::new(10, 0, 1, 2), 800), 0)
                .unwrap();
            let at = success_results(&r, 5);
            u32::from_be_bytes(r[at..at + 4].try_into().unwrap())
        };
        for prot in [portmap::IPPROTO_UDP, portmap::IPPROTO_TCP] {
            for (prog, want) in [
                (rpc::program::NFS, 2049),
                (rpc::program::MOUNT, 20048),
                (100_021, 0),
            ] {
                assert_eq!(getport(&mut k, prog, prot), want);
            }
        }
        // With TCP off, TCP is not offered (a client would find nothing listening).
        k.tcp = false;
        assert_eq!(getport(&mut k, rpc::program::NFS, portmap::IPPROTO_TCP), 0);
        assert_eq!(
            getport(&mut k, rpc::program::NFS, portmap::IPPROTO_UDP),
            2049
        );
    }

    #[test]
    fn mount_root_export_and_others() {
        let mut k = controller();
        let mut w = Writer::new();
        w.call(6, rpc::program::MOUNT, 3, mount::proc_::MNT)
            .opaque(b"/");
        let r = k
            .answer(&w.buf, (Ipv4Addr::new(10, 0, 1, 2), 800), 0)
            .unwrap();
        let at = success_results(&r, 6);
        let mut handle = None;
        let (st, end) = mount::walk_reply(mount::proc_::MNT, &r, at, |f| {
            if let Field::Handle { at, len } = f {
                handle = Some(r[at + 4..at + 4 + len].to_vec());
            }
        })
        .unwrap();
        assert_eq!((st, end), (0, r.len()));
        let v = VirtualHandle::verify(&k.shared.key, &handle.unwrap()).unwrap();
        assert_eq!(
            (v.sid, v.hid, v.flags),
            (0, vfh::ROOT_VIN, vfh::FLAG_VIRTUAL_DIR)
        );
        // Anything else: NOENT.
        let mut w = Writer::new();
        w.call(7, rpc::program::MOUNT, 3, mount::proc_::MNT)
            .opaque(b"/elsewhere");
        let r = k
            .answer(&w.buf, (Ipv4Addr::new(10, 0, 1, 2), 800), 0)
            .unwrap();
        let at = success_results(&r, 7);
        assert_eq!(
            mount::walk_reply(mount::proc_::MNT, &r, at, |_| {}).unwrap(),
            (mountstat::NOENT, r.len())
        );
        // EXPORT lists "/".
        let mut w = Writer::new();
        w.call(8, rpc::program::MOUNT, 3, mount::proc_::EXPORT);
        let r = k
            .answer(&w.buf, (Ipv4Addr::new(10, 0, 1, 2), 800), 0)
            .unwrap();
        let at = success_results(&r, 8);
        assert_eq!(
            mount::walk_reply(mount::proc_::EXPORT, &r, at, |_| {})
                .unwrap()
                .1,
            r.len()
        );
        assert_eq!(&r[at + 8..at + 9], b"/");
        // Wrong version.
        let mut w = Writer::new();
        w.call(9, rpc::program::MOUNT, 1, mount::proc_::NULL);
        assert!(matches!(
            rpc::parse(
                &k.answer(&w.buf, (Ipv4Addr::new(10, 0, 1, 2), 800), 0)
                    .unwrap()
            )
            .unwrap(),
            rpc::Message::Reply(rpc::Reply::Accepted {
                stat: rpc::AcceptStat::ProgMismatch { low: 3, high: 3 },
                ..
            })
        ));
    }

    #[test]
    fn refused_handles_get_nfs_errors_in_the_procedures_shape() {
        let mut k = controller();
        let good =
            VirtualHandle::for_object(&k.shared.key, 1, k.shared.servers[0].mch, 1, 2, &[3; 24])
                .encode(&k.shared.key);
        let mut forged = good;
        forged[20] ^= 4;
        for p in [
            Proc::Getattr,
            Proc::Lookup,
            Proc::Read,
            Proc::Write,
            Proc::Readdirplus,
        ] {
            let mut w = Writer::new();
            w.call(10, rpc::program::NFS, 3, p as u32).opaque(&forged);
            match p {
                Proc::Lookup => {
                    w.opaque(b"x");
                }
                Proc::Read => {
                    w.u64(0).u32(10);
                }
                Proc::Write => {
                    w.u64(0).u32(1).u32(0).opaque(b"z");
                }
                Proc::Readdirplus => {
                    w.u64(0).u64(0).u32(100).u32(1000);
                }
                _ => {}
            }
            let r = k
                .answer(&w.buf, (Ipv4Addr::new(10, 0, 1, 2), 800), 0)
                .unwrap();
            let at = success_results(&r, 10);
            // The error reply is a well-formed result of that procedure.
            assert_eq!(
                nfs3::walk_reply(p, &r, at, |_| {}).unwrap(),
                (nfs3::stat::BADHANDLE, r.len()),
                "{}",
                p.name()
            );
        }
        assert_eq!(k.stats.bad_handles, 5);
        // A genuine handle whose physical handle is unknown: no answer yet (recovery).
        let mut w = Writer::new();
        w.call(11, rpc::program::NFS, 3, Proc::Getattr as u32)
            .opaque(&good);
        assert_eq!(k.answer(&w.buf, (Ipv4Addr::new(10, 0, 1, 2), 800), 0), None);
        assert_eq!(k.stats.recover_waiting, 1);
        // NFS NULL.
        let mut w = Writer::new();
        w.call(12, rpc::program::NFS, 3, 0);
        success_results(
            &k.answer(&w.buf, (Ipv4Addr::new(10, 0, 1, 2), 800), 0)
                .unwrap(),
            12,
        );
    }
}
