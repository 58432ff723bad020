//! The virtual server over TCP, sans I/O: record streams in, record streams out.
//!
//! The router is the TCP endpoint of the virtual address. Each client connection's stream is
//! split into RPC calls ([`RecordReader`]); every call goes through the same
//! [`Controller::decide`] as a UDP call (portmap, MOUNT and the virtual root answered here;
//! forged, stale and cross-server handles refused; unknown handles recovered while the call
//! waits), and a call for a server is rewritten by the same rewrite code and sent on the
//! router's own connection to that server — a *leg* — with an xid of the leg's own, so calls
//! of many clients (and the router's own mount and recovery calls) share one connection. A
//! reply is matched by its leg xid, rewritten back, given the client's xid and queued on the
//! client's connection, in whatever order the server answers.
//!
//! The caller (the management core's TCP stack) moves bytes: it feeds what a connection
//! received, writes out what [`StreamProxy::client_output`] / [`StreamProxy::leg_output`]
//! hold, opens the legs [`StreamProxy::legs_wanted`] names and reports them up or down. A leg
//! that goes down has its calls in flight queued again, in their order, for its next
//! connection (a reconnect retransmits, as NFS over TCP does).
//!
//! Bounds: a record is at most `max_record` bytes (a longer claim closes the connection before
//! anything is buffered); a client has at most `max_inflight` calls at servers and
//! `max_output` bytes of replies queued — past either its stream is not read (TCP's window
//! closes on it) until replies drain; legs queue at most `max_leg_output` bytes before every
//! client waits; connections are limited in total and per client address. Every limit hit is
//! counted.

use crate::control::{Controller, Outcome, Peer};
use crate::datapath::Transaction;
use crate::rewrite::Limits;
use crate::wire::record::{frame, RecordError, RecordReader};
use crate::wire::rpc;
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

/// Why a connection's stream cannot go on (the caller closes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("bad record: {0}")]
    Record(#[from] RecordError),
    #[error("no such connection")]
    UnknownConnection,
}

/// A client connection's id (the caller's).
pub type ConnId = u64;
/// A leg: the server endpoint (address, port) the router connects to.
pub type LegKey = (Ipv4Addr, u16);

/// Bounds and sizes of the TCP virtual server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Transfer sizes offered and clamped to over TCP.
    pub limits: Limits,
    /// The longest record taken from a client or a server.
    pub max_record: usize,
    /// Calls of one client at servers at once.
    pub max_inflight: usize,
    /// Bytes of replies queued for one client before its stream is no longer read.
    pub max_output: usize,
    /// Bytes queued on one leg before clients' streams are no longer read.
    pub max_leg_output: usize,
    /// Client connections in all, and per client address.
    pub max_connections: usize,
    pub max_per_client: usize,
    /// A client connection with no whole record for this long and nothing in flight is
    /// closed (ms).
    pub idle_ms: u64,
    /// A call unanswered this long is given up (ms); the client's own timeout retransmits.
    pub call_timeout_ms: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            limits: Limits {
                max_io: 1 << 20,
                max_dir: 1 << 20,
            },
            max_record: (1 << 20) + 64 * 1024,
            max_inflight: 64,
            max_output: 4 << 20,
            max_leg_output: 8 << 20,
            max_connections: 1024,
            max_per_client: 64,
            idle_ms: 120_000,
            call_timeout_ms: 120_000,
        }
    }
}

/// Counters of the TCP virtual server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub accepted: u64,
    pub refused_total: u64,
    pub refused_per_client: u64,
    pub closed: u64,
    pub idle_closed: u64,
    /// Streams closed for a record over the bound or an empty fragment.
    pub bad_records: u64,
    /// Records that were not RPC calls (or replies on a leg that were not replies).
    pub garbage: u64,
    pub calls: u64,
    pub answered: u64,
    pub forwarded: u64,
    pub replies: u64,
    /// Replies for a client connection that had closed.
    pub orphan_replies: u64,
    /// Replies on a leg with an xid of no call in flight on it.
    pub unmatched_replies: u64,
    /// Replies that could not be rewritten (dropped; the client retransmits).
    pub rewrite_failed: u64,
    /// Times a client's stream was left unread: too many calls in flight, too much output,
    /// a full leg.
    pub paused_inflight: u64,
    pub paused_output: u64,
    pub paused_leg: u64,
    pub leg_connects: u64,
    pub leg_failures: u64,
    /// Calls queued again after their leg went down.
    pub resent: u64,
    pub timed_out: u64,
    /// The router's own calls (mounts, recovery walks) sent on legs.
    pub upstream_calls: u64,
    /// The router's own calls sent again while the same call was in flight on its leg: not
    /// queued twice (the leg sends what it has in flight again when it reconnects).
    pub upstream_repeats: u64,
    /// Clients' calls in flight on a failed-over server's leg that could not be sent again
    /// (no copy kept: over the bound of copies); those clients time out and retry.
    pub abandoned: u64,
    /// UDP clients' calls carried on legs (servers without UDP).
    pub datagram_calls: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A reply that leaves the proxy some other way than on a client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// For the router's own client: [`Controller::upstream_reply`].
    Upstream(Vec<u8>),
    /// For a UDP client of the virtual server (rewritten, its xid restored): send it from
    /// the virtual server's NFS port.
    Datagram {
        client: (Ipv4Addr, u16),
        msg: Vec<u8>,
    },
}

/// Records waiting to be written on a connection.
#[derive(Debug, Default)]
pub struct Output {
    queue: VecDeque<Vec<u8>>,
    /// Bytes of the front record already written.
    sent: usize,
    bytes: usize,
}

impl Output {
    fn push(&mut self, rec: Vec<u8>) {
        self.bytes += rec.len();
        self.queue.push_back(rec);
    }
    /// `msg` as one record: its mark, then the message itself (not copied).
    fn push_record(&mut self, msg: Vec<u8>) {
        self.push((0x8000_0000 | msg.len() as u32).to_be_bytes().to_vec());
        self.push(msg);
    }
    /// Bytes queued, not yet written.
    pub fn len(&self) -> usize {
        self.bytes - self.sent
    }
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
    /// The bytes to write next (a part of the front record).
    pub fn front(&self) -> &[u8] {
        self.queue.front().map_or(&[], |r| &r[self.sent..])
    }
    /// `n` bytes of [`Output::front`] were written.
    pub fn advance(&mut self, n: usize) {
        self.sent += n;
        if let Some(r) = self.queue.front() {
            if self.sent >= r.len() {
                self.bytes -= r.len();
                self.sent = 0;
                self.queue.pop_front();
            }
        }
    }
    fn clear(&mut self) {
        self.queue.clear();
        self.sent = 0;
        self.bytes = 0;
    }
}

/// One client connection.
#[derive(Debug)]
struct Client {
    peer: (Ipv4Addr, u16),
    local_port: u16,
    reader: RecordReader,
    out: Output,
    inflight: usize,
    opened: u64,
    last_record: u64,
    calls: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// Whether a leg has a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegState {
    Down,
    Connecting,
    Up,
}

/// The router's connection to one server endpoint.
#[derive(Debug)]
struct Leg {
    sid: u16,
    state: LegState,
    reader: RecordReader,
    out: Output,
    /// Leg xids of the calls written on the current connection or queued, in order.
    order: VecDeque<u32>,
    since: u64,
    connects: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// Who a call on a leg is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Client {
        conn: ConnId,
        xid: u32,
    },
    /// The router's own client ([`crate::upstream::Upstream`]): the reply goes to it with
    /// its own xid.
    Upstream {
        xid: u32,
    },
    /// A UDP client's call for a server without UDP: the reply goes back by UDP.
    Datagram {
        client: (Ipv4Addr, u16),
        xid: u32,
    },
}

#[derive(Debug)]
struct InFlight {
    origin: Origin,
    leg: LegKey,
    tx: Option<Transaction>,
    /// The call as written on the leg (framed, leg xid), kept to send again.
    framed: Vec<u8>,
    sent: u64,
}

/// A connection as the admin socket shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub kind: &'static str,
    pub peer: (Ipv4Addr, u16),
    /// A client's: the virtual server port it connected to; a leg's: 0.
    pub local_port: u16,
    /// A leg's server id (0 for clients).
    pub sid: u16,
    pub state: &'static str,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub inflight: usize,
    pub queued: usize,
    pub age_ms: u64,
    /// A client's calls; a leg's: how many times it connected.
    pub calls: u64,
}

/// The TCP virtual server's state (see the module documentation).
#[derive(Debug)]
pub struct StreamProxy {
    pub cfg: StreamConfig,
    clients: HashMap<ConnId, Client>,
    per_addr: HashMap<Ipv4Addr, usize>,
    legs: HashMap<LegKey, Leg>,
    inflight: HashMap<u32, InFlight>,
    next_xid: u32,
    pub stats: StreamStats,
}

impl StreamProxy {
    /// `xid_seed` starts the legs' xids (from the clock: a restarted router does not reuse
    /// the xids of its previous life on a server's duplicate-request cache).
    pub fn new(cfg: StreamConfig, xid_seed: u32) -> Self {
        StreamProxy {
            cfg,
            clients: HashMap::new(),
            per_addr: HashMap::new(),
            legs: HashMap::new(),
            inflight: HashMap::new(),
            next_xid: xid_seed,
            stats: StreamStats::default(),
        }
    }

    /// Calls sent (or queued) on legs and not answered yet.
    pub fn calls_in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Client connections open.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Whether a new connection from `addr` is within the limits.
    pub fn may_accept(&self, addr: Ipv4Addr) -> bool {
        self.clients.len() < self.cfg.max_connections
            && self.per_addr.get(&addr).copied().unwrap_or(0) < self.cfg.max_per_client
    }

    /// Count a connection refused before it was opened (by the caller, on
    /// [`StreamProxy::may_accept`]'s word).
    pub fn refused(&mut self) {
        if self.clients.len() >= self.cfg.max_connections {
            self.stats.refused_total += 1;
        } else {
            self.stats.refused_per_client += 1;
        }
    }

    /// A client connected to `local_port` of the virtual address from `peer`. False: refused
    /// (a connection limit; counted): the caller resets the connection.
    pub fn client_opened(
        &mut self,
        conn: ConnId,
        peer: (Ipv4Addr, u16),
        local_port: u16,
        now: u64,
    ) -> bool {
        if self.clients.len() >= self.cfg.max_connections {
            self.stats.refused_total += 1;
            return false;
        }
        let n = self.per_addr.entry(peer.0).or_default();
        if *n >= self.cfg.max_per_client {
            self.stats.refused_per_client += 1;
            return false;
        }
        *n += 1;
        self.stats.accepted += 1;
        self.clients.insert(
            conn,
            Client {
                peer,
                local_port,
                reader: RecordReader::new(self.cfg.max_record),
                out: Output::default(),
                inflight: 0,
                opened: now,
                last_record: now,
                calls: 0,
                bytes_in: 0,
                bytes_out: 0,
            },
        );
        true
    }

    /// A client connection is gone (closed, reset, or closed here). Replies still to come for
    /// it are dropped when they arrive.
    pub fn client_closed(&mut self, conn: ConnId) {
        if let Some(c) = self.clients.remove(&conn) {
            self.stats.closed += 1;
            if let Some(n) = self.per_addr.get_mut(&c.peer.0) {
                *n -= 1;
                if *n == 0 {
                    self.per_addr.remove(&c.peer.0);
                }
            }
        }
    }

    /// Whether `conn`'s stream may be read now (see the bounds in the module documentation).
    pub fn client_can_take(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.clients.get(&conn) else {
            return false;
        };
        if c.inflight >= self.cfg.max_inflight {
            self.stats.paused_inflight += 1;
            return false;
        }
        if c.out.len() >= self.cfg.max_output {
            self.stats.paused_output += 1;
            return false;
        }
        if self
            .legs
            .values()
            .any(|l| l.out.len() >= self.cfg.max_leg_output)
        {
            self.stats.paused_leg += 1;
            return false;
        }
        true
    }

    /// Whether `conn` has calls at servers or replies not yet written.
    pub fn client_busy(&self, conn: ConnId) -> bool {
        self.clients
            .get(&conn)
            .is_some_and(|c| c.inflight > 0 || !c.out.is_empty())
    }

    /// Bytes `conn` received. Returns how many were taken (fewer when a bound was reached:
    /// the rest stays in the connection for later), or an error when the stream is bad and
    /// the connection is to be closed (counted).
    pub fn client_data(
        &mut self,
        conn: ConnId,
        data: &[u8],
        ctl: &mut Controller,
        now: u64,
    ) -> Result<usize, StreamError> {
        let max_inflight = self.cfg.max_inflight;
        let Some(c) = self.clients.get_mut(&conn) else {
            return Err(StreamError::UnknownConnection);
        };
        let mut records = Vec::new();
        let inflight = c.inflight;
        let r = c.reader.feed(data, |rec| {
            records.push(rec);
            inflight + records.len() < max_inflight
        });
        if !records.is_empty() {
            c.last_record = now;
        }
        let taken = match r {
            Ok(n) => n,
            Err(e) => {
                self.stats.bad_records += 1;
                return Err(e.into());
            }
        };
        c.bytes_in += taken as u64;
        self.stats.bytes_in += taken as u64;
        for rec in records {
            self.call(conn, &rec, ctl, now);
        }
        Ok(taken)
    }

    /// One call from a client connection.
    fn call(&mut self, conn: ConnId, msg: &[u8], ctl: &mut Controller, now: u64) {
        if !matches!(rpc::parse(msg), Ok(rpc::Message::Call(_))) {
            self.stats.garbage += 1;
            return;
        }
        self.stats.calls += 1;
        if let Some(c) = self.clients.get_mut(&conn) {
            c.calls += 1;
        }
        let limits = self.cfg.limits;
        match ctl.decide(
            msg,
            Peer::Stream(
                conn,
                self.clients
                    .get(&conn)
                    .map_or(Ipv4Addr::UNSPECIFIED, |c| c.peer.0),
            ),
            now,
            limits,
        ) {
            Outcome::Reply(r) => {
                self.stats.answered += 1;
                self.queue_reply(conn, r);
            }
            Outcome::Forward { msg: fwd, tx } => {
                let Some(server) = ctl.shared().server(tx.sid) else {
                    return;
                };
                let key = (server.addr, server.nfs_port);
                let xid = u32::from_be_bytes([msg[0], msg[1], msg[2], msg[3]]);
                self.stats.forwarded += 1;
                if let Some(c) = self.clients.get_mut(&conn) {
                    c.inflight += 1;
                }
                self.send_on_leg(
                    key,
                    tx.sid,
                    Origin::Client { conn, xid },
                    Some(tx),
                    fwd,
                    now,
                );
            }
            Outcome::Nothing => {}
        }
    }

    /// Queue a message for a client as one record.
    fn queue_reply(&mut self, conn: ConnId, msg: Vec<u8>) {
        match self.clients.get_mut(&conn) {
            Some(c) => c.out.push_record(msg),
            None => self.stats.orphan_replies += 1,
        }
    }

    /// Send `msg` (an RPC call) on the leg to `key`, under a leg xid of its own.
    fn send_on_leg(
        &mut self,
        key: LegKey,
        sid: u16,
        origin: Origin,
        tx: Option<Transaction>,
        mut msg: Vec<u8>,
        now: u64,
    ) {
        if msg.len() < 4 {
            return;
        }
        self.next_xid = self.next_xid.wrapping_add(1);
        while self.inflight.contains_key(&self.next_xid) {
            self.next_xid = self.next_xid.wrapping_add(1);
        }
        let xid = self.next_xid;
        msg[..4].copy_from_slice(&xid.to_be_bytes());
        let framed = frame(&msg);
        let max_record = self.cfg.max_record;
        let leg = self.legs.entry(key).or_insert_with(|| Leg {
            sid,
            state: LegState::Down,
            reader: RecordReader::new(max_record),
            out: Output::default(),
            order: VecDeque::new(),
            since: now,
            connects: 0,
            bytes_in: 0,
            bytes_out: 0,
        });
        if leg.state == LegState::Up {
            leg.out.push(framed.clone());
        }
        leg.order.push_back(xid);
        self.inflight.insert(
            xid,
            InFlight {
                origin,
                leg: key,
                tx,
                framed,
                sent: now,
            },
        );
    }

    /// A call of the router's own client (a mount, a recovery walk) for the server endpoint
    /// `dst`; its reply is given back by [`StreamProxy::leg_data`] for
    /// [`Controller::upstream_reply`].
    pub fn upstream_call(&mut self, dst: LegKey, sid: u16, msg: Vec<u8>, now: u64) {
        let Some(x) = msg.get(..4) else {
            return;
        };
        let xid = u32::from_be_bytes([x[0], x[1], x[2], x[3]]);
        let origin = Origin::Upstream { xid };
        // A retransmission (a replication entry or a recovery call sent again after its
        // timeout) of a call this leg still has: the leg delivers it, or sends it again when
        // it reconnects. Queued twice, a server that is down for minutes would get every
        // retransmission at once when it returns.
        let queued = self.legs.get(&dst).is_some_and(|l| {
            l.order
                .iter()
                .any(|x| self.inflight.get(x).is_some_and(|f| f.origin == origin))
        });
        if queued {
            self.stats.upstream_repeats += 1;
            return;
        }
        self.stats.upstream_calls += 1;
        self.send_on_leg(dst, sid, origin, None, msg, now);
    }

    /// A UDP client's call (already rewritten for server `sid`, transaction `tx`) for a
    /// server without UDP, carried on the leg to `dst`; its reply comes back from
    /// [`StreamProxy::leg_data`] as a [`Delivery::Datagram`].
    pub fn datagram_call(
        &mut self,
        dst: LegKey,
        client: (Ipv4Addr, u16),
        tx: Transaction,
        msg: Vec<u8>,
        now: u64,
    ) {
        let Some(x) = msg.get(..4) else {
            return;
        };
        let xid = u32::from_be_bytes([x[0], x[1], x[2], x[3]]);
        self.stats.datagram_calls += 1;
        let origin = Origin::Datagram { client, xid };
        self.send_on_leg(dst, tx.sid, origin, Some(tx), msg, now);
    }

    /// Legs that have work and no connection: the caller connects them (and calls
    /// [`StreamProxy::leg_connecting`]).
    pub fn legs_wanted(&self) -> Vec<LegKey> {
        self.legs
            .iter()
            .filter(|(_, l)| l.state == LegState::Down && !l.order.is_empty())
            .map(|(k, _)| *k)
            .collect()
    }

    pub fn leg_connecting(&mut self, key: LegKey, now: u64) {
        if let Some(l) = self.legs.get_mut(&key) {
            l.state = LegState::Connecting;
            l.since = now;
        }
    }

    /// The leg's connection is established: its calls in flight go out on it, in order.
    pub fn leg_up(&mut self, key: LegKey, now: u64) {
        let Some(l) = self.legs.get_mut(&key) else {
            return;
        };
        l.state = LegState::Up;
        l.since = now;
        l.connects += 1;
        l.reader = RecordReader::new(self.cfg.max_record);
        l.out.clear();
        self.stats.leg_connects += 1;
        for xid in &l.order {
            if let Some(f) = self.inflight.get(xid) {
                l.out.push(f.framed.clone());
            }
        }
    }

    /// The leg's connection broke or could not be made: what was written on it and not
    /// answered is sent again on the next one.
    pub fn leg_down(&mut self, key: LegKey, now: u64) {
        let Some(l) = self.legs.get_mut(&key) else {
            return;
        };
        if l.state == LegState::Up {
            self.stats.resent += l.order.len() as u64;
        }
        self.stats.leg_failures += 1;
        l.state = LegState::Down;
        l.since = now;
        l.out.clear();
    }

    /// Bytes a leg received: replies go back to their client connections; those for the
    /// router's own client and for UDP clients are returned. Err: the stream is bad; the
    /// caller closes the leg (and reports it down).
    pub fn leg_data(
        &mut self,
        key: LegKey,
        data: &[u8],
        ctl: &mut Controller,
        now: u64,
    ) -> Result<Vec<Delivery>, StreamError> {
        let Some(l) = self.legs.get_mut(&key) else {
            return Err(StreamError::UnknownConnection);
        };
        l.bytes_in += data.len() as u64;
        self.stats.bytes_in += data.len() as u64;
        let mut records = Vec::new();
        if let Err(e) = l.reader.feed(data, |rec| {
            records.push(rec);
            true
        }) {
            self.stats.bad_records += 1;
            return Err(e.into());
        }
        let mut out = Vec::new();
        for rec in records {
            self.reply(key, rec, ctl, &mut out, now);
        }
        Ok(out)
    }

    fn reply(
        &mut self,
        key: LegKey,
        mut msg: Vec<u8>,
        ctl: &mut Controller,
        out: &mut Vec<Delivery>,
        _now: u64,
    ) {
        let Ok(rpc::Message::Reply(r)) = rpc::parse(&msg) else {
            self.stats.garbage += 1;
            return;
        };
        let xid = r.xid();
        match self.inflight.get(&xid) {
            Some(f) if f.leg == key => {}
            _ => {
                self.stats.unmatched_replies += 1;
                return;
            }
        }
        let Some(f) = self.inflight.remove(&xid) else {
            return;
        };
        if let Some(l) = self.legs.get_mut(&key) {
            if let Some(i) = l.order.iter().position(|&x| x == xid) {
                l.order.remove(i);
            }
        }
        match f.origin {
            Origin::Upstream { xid } => {
                msg[..4].copy_from_slice(&xid.to_be_bytes());
                out.push(Delivery::Upstream(msg));
            }
            Origin::Datagram { client, xid } => {
                // Rewritten for a UDP client: its transfer limits, not the stream's.
                let limits = ctl.shared().limits;
                let Some(mut msg) = f.tx.and_then(|t| ctl.rewrite_reply_owned(msg, t, limits))
                else {
                    self.stats.rewrite_failed += 1;
                    return;
                };
                msg[..4].copy_from_slice(&xid.to_be_bytes());
                self.stats.replies += 1;
                out.push(Delivery::Datagram { client, msg });
            }
            Origin::Client { conn, xid } => {
                if let Some(c) = self.clients.get_mut(&conn) {
                    c.inflight = c.inflight.saturating_sub(1);
                }
                if !self.clients.contains_key(&conn) {
                    self.stats.orphan_replies += 1;
                    return;
                }
                let limits = self.cfg.limits;
                let rewritten = match f.tx {
                    Some(t) => ctl.rewrite_reply_owned(msg, t, limits),
                    None => Some(msg),
                };
                let Some(mut rewritten) = rewritten else {
                    self.stats.rewrite_failed += 1;
                    return;
                };
                rewritten[..4].copy_from_slice(&xid.to_be_bytes());
                self.stats.replies += 1;
                self.queue_reply(conn, rewritten);
            }
        }
    }

    /// Server `sid` was failed over from (replication): the clients' calls in flight on its
    /// legs are decided again from the calls as the clients sent them (so they go to the
    /// server that took over); the router's own are dropped (they are retried by their
    /// owner), as are UDP clients' (they retransmit).
    pub fn abandon(&mut self, sid: u16, ctl: &mut Controller, now: u64) -> usize {
        let keys: Vec<LegKey> = self
            .legs
            .iter()
            .filter(|(_, l)| l.sid == sid)
            .map(|(k, _)| *k)
            .collect();
        let mut again = Vec::new();
        for key in keys {
            let Some(l) = self.legs.get_mut(&key) else {
                continue;
            };
            l.out.clear();
            for xid in std::mem::take(&mut l.order) {
                let Some(f) = self.inflight.remove(&xid) else {
                    continue;
                };
                if let Origin::Client { conn, .. } = f.origin {
                    if let Some(c) = self.clients.get_mut(&conn) {
                        c.inflight = c.inflight.saturating_sub(1);
                    }
                    let call = f.tx.and_then(|t| (t.token != 0).then_some(t.token));
                    match call.and_then(|t| ctl.repl.take_call(t)) {
                        Some(msg) => again.push((conn, msg)),
                        None => self.stats.abandoned += 1,
                    }
                }
            }
        }
        let n = again.len();
        for (conn, msg) in again {
            if self.clients.contains_key(&conn) {
                self.call(conn, &msg, ctl, now);
            }
        }
        n
    }

    /// Calls held for a recovery that finished: decided again, as if they had just come.
    pub fn released(&mut self, ctl: &mut Controller, now: u64) {
        for (conn, msg) in ctl.take_released() {
            if self.clients.contains_key(&conn) {
                self.call(conn, &msg, ctl, now);
            }
        }
    }

    /// What is queued for a client connection (the caller writes from it and advances it).
    pub fn client_output(&mut self, conn: ConnId) -> Option<&mut Output> {
        self.clients.get_mut(&conn).map(|c| &mut c.out)
    }

    /// Account bytes written to a client (taken from its [`Output`] by the caller).
    pub fn client_wrote(&mut self, conn: ConnId, n: usize) {
        if let Some(c) = self.clients.get_mut(&conn) {
            c.bytes_out += n as u64;
        }
        self.stats.bytes_out += n as u64;
    }

    /// What is queued for a leg that is up.
    pub fn leg_output(&mut self, key: LegKey) -> Option<&mut Output> {
        self.legs
            .get_mut(&key)
            .filter(|l| l.state == LegState::Up)
            .map(|l| &mut l.out)
    }

    /// Account bytes written to a leg (taken from its [`Output`] by the caller).
    pub fn leg_wrote(&mut self, key: LegKey, n: usize) {
        if let Some(l) = self.legs.get_mut(&key) {
            l.bytes_out += n as u64;
        }
        self.stats.bytes_out += n as u64;
    }

    /// Timers: calls unanswered past the timeout are given up; returns the client
    /// connections idle past the bound (the caller closes them and reports them closed).
    pub fn poll(&mut self, now: u64) -> Vec<ConnId> {
        let timeout = self.cfg.call_timeout_ms;
        let old: Vec<u32> = self
            .inflight
            .iter()
            .filter(|(_, f)| now.saturating_sub(f.sent) > timeout)
            .map(|(x, _)| *x)
            .collect();
        for xid in old {
            if let Some(f) = self.inflight.remove(&xid) {
                self.stats.timed_out += 1;
                if let Some(l) = self.legs.get_mut(&f.leg) {
                    if let Some(i) = l.order.iter().position(|&x| x == xid) {
                        l.order.remove(i);
                    }
                }
                if let Origin::Client { conn, .. } = f.origin {
                    if let Some(c) = self.clients.get_mut(&conn) {
                        c.inflight = c.inflight.saturating_sub(1);
                    }
                }
            }
        }
        let idle = self.cfg.idle_ms;
        let ids: Vec<ConnId> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                c.inflight == 0 && c.out.is_empty() && now.saturating_sub(c.last_record) > idle
            })
            .map(|(id, _)| *id)
            .collect();
        self.stats.idle_closed += ids.len() as u64;
        ids
    }

    /// Every connection, clients first, for `routerctl nfs connections`.
    pub fn connections(&self, now: u64) -> Vec<ConnInfo> {
        let mut v: Vec<ConnInfo> = self
            .clients
            .values()
            .map(|c| ConnInfo {
                kind: "client",
                peer: c.peer,
                local_port: c.local_port,
                sid: 0,
                state: if c.reader.idle() {
                    "open"
                } else {
                    "mid-record"
                },
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
                inflight: c.inflight,
                queued: c.out.len(),
                age_ms: now.saturating_sub(c.opened),
                calls: c.calls,
            })
            .collect();
        v.sort_by_key(|c| (c.peer, c.local_port));
        let mut legs: Vec<ConnInfo> = self
            .legs
            .iter()
            .map(|(k, l)| ConnInfo {
                kind: "server",
                peer: *k,
                local_port: 0,
                sid: l.sid,
                state: match l.state {
                    LegState::Down => "down",
                    LegState::Connecting => "connecting",
                    LegState::Up => "up",
                },
                bytes_in: l.bytes_in,
                bytes_out: l.bytes_out,
                inflight: l.order.len(),
                queued: l.out.len(),
                age_ms: now.saturating_sub(l.since),
                calls: l.connects,
            })
            .collect();
        legs.sort_by_key(|c| c.peer);
        v.extend(legs);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfh::VirtualHandle;
    use crate::wire::nfs3::Proc;
    use crate::wire::rpc::{program, Writer};

    const SERVER: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 0, 2, 2), 2049);
    const PFH: &[u8] = b"physical-handle-of-12-bytes-x";

    /// The control tests' controller, with one file of its server's in the handle table.
    fn controller() -> (Controller, [u8; 40]) {
        let ctl = crate::control::tests::controller();
        let sh = ctl.shared().clone();
        let v = VirtualHandle::for_object(&sh.key, 1, sh.servers[0].mch, 9, 1234, PFH);
        sh.handles.insert(v.hid, PFH);
        (ctl, v.encode(&sh.key))
    }

    fn records(out: &mut Output) -> Vec<Vec<u8>> {
        let mut bytes = Vec::new();
        while !out.is_empty() {
            let f = out.front().to_vec();
            out.advance(f.len());
            bytes.extend(f);
        }
        let mut r = RecordReader::new(1 << 24);
        let mut recs = Vec::new();
        r.feed(&bytes, |m| {
            recs.push(m);
            true
        })
        .unwrap();
        recs
    }

    fn read_call(xid: u32, vfh: &[u8], count: u32) -> Vec<u8> {
        let mut w = Writer::new();
        w.call_sys(xid, program::NFS, 3, Proc::Read as u32, 0, 0);
        w.opaque(vfh).u64(0).u32(count);
        w.buf
    }

    #[test]
    fn calls_of_two_clients_share_a_leg_under_its_own_xids_and_replies_come_back_in_any_order() {
        let (mut ctl, vfh) = controller();
        let mut p = StreamProxy::new(StreamConfig::default(), 500);
        let peer = (Ipv4Addr::new(10, 0, 0, 2), 900);
        assert!(p.client_opened(1, peer, 2049, 0));
        assert!(p.client_opened(2, (peer.0, 901), 2049, 0));
        // Client 1: a MOUNT NULL answered here, then a READ of 2 MiB in two fragments split
        // across two segments; client 2: a READ with the same xid.
        let mut w = Writer::new();
        w.call_sys(7, program::MOUNT, 3, 0, 0, 0);
        let mut stream = frame(&w.buf);
        let call = read_call(42, &vfh, 2 << 20);
        stream.extend_from_slice(&(10u32).to_be_bytes());
        stream.extend_from_slice(&call[..10]);
        stream.extend_from_slice(&(0x8000_0000 | (call.len() - 10) as u32).to_be_bytes());
        stream.extend_from_slice(&call[10..]);
        let (a, b) = stream.split_at(stream.len() / 2);
        assert_eq!(p.client_data(1, a, &mut ctl, 1), Ok(a.len()));
        assert_eq!(p.client_data(1, b, &mut ctl, 1), Ok(b.len()));
        let call2 = frame(&read_call(42, &vfh, 4096));
        assert_eq!(p.client_data(2, &call2, &mut ctl, 1), Ok(call2.len()));
        let replies = records(p.client_output(1).unwrap());
        assert_eq!(replies.len(), 1, "MOUNT NULL answered by the router");
        assert_eq!(&replies[0][..4], &7u32.to_be_bytes());

        // The leg is wanted; once up, both calls go out with distinct xids and the PFH.
        assert_eq!(p.legs_wanted(), vec![SERVER]);
        p.leg_connecting(SERVER, 2);
        assert!(p.leg_output(SERVER).is_none());
        p.leg_up(SERVER, 3);
        let sent = records(p.leg_output(SERVER).unwrap());
        assert_eq!(sent.len(), 2);
        assert_ne!(sent[0][..4], sent[1][..4]);
        for c in &sent {
            let at = c.windows(PFH.len()).position(|w| w == PFH);
            assert!(at.is_some(), "the call carries the physical handle");
        }
        // The READ count was clamped to the TCP limit (1 MiB), not the MTU.
        assert_eq!(&sent[0][sent[0].len() - 4..], &(1u32 << 20).to_be_bytes());

        // The server answers the second call first.
        let reply = |call: &[u8], data: &[u8]| {
            let mut w = Writer::new();
            w.fixed(&call[..4]).u32(1).u32(0).u32(0).u32(0).u32(0);
            w.u32(0)
                .bool(false)
                .u32(data.len() as u32)
                .bool(true)
                .opaque(data);
            w.buf
        };
        let mut back = frame(&reply(&sent[1], b"second"));
        back.extend(frame(&reply(&sent[0], b"first")));
        assert!(p.leg_data(SERVER, &back, &mut ctl, 4).unwrap().is_empty());
        let r1 = records(p.client_output(1).unwrap());
        let r2 = records(p.client_output(2).unwrap());
        assert_eq!(r1.len(), 1);
        assert_eq!(r2.len(), 1);
        assert_eq!(&r1[0][..4], &42u32.to_be_bytes());
        assert!(r1[0].ends_with(b"first\0\0\0"));
        assert!(r2[0].ends_with(b"second\0\0"));
        assert_eq!(p.stats.replies, 2);
        // A duplicate reply matches nothing.
        p.leg_data(SERVER, &frame(&reply(&sent[0], b"again")), &mut ctl, 5)
            .unwrap();
        assert_eq!(p.stats.unmatched_replies, 1);
    }

    #[test]
    fn a_write_of_a_mebibyte_is_forwarded_whole() {
        let (mut ctl, vfh) = controller();
        let mut p = StreamProxy::new(StreamConfig::default(), 0);
        assert!(p.client_opened(1, (Ipv4Addr::new(10, 0, 0, 2), 900), 2049, 0));
        let data = vec![7u8; 1 << 20];
        let mut w = Writer::new();
        w.call_sys(9, program::NFS, 3, Proc::Write as u32, 0, 0);
        w.opaque(&vfh)
            .u64(0)
            .u32(data.len() as u32)
            .u32(2)
            .opaque(&data);
        let rec = frame(&w.buf);
        for chunk in rec.chunks(1448) {
            assert_eq!(p.client_data(1, chunk, &mut ctl, 0), Ok(chunk.len()));
        }
        assert!(
            records(p.client_output(1).unwrap()).is_empty(),
            "no answer from the router"
        );
        p.leg_up(SERVER, 1);
        let sent = records(p.leg_output(SERVER).unwrap());
        assert_eq!(sent.len(), 1);
        assert!(sent[0].ends_with(&data));
    }

    #[test]
    fn a_retransmitted_call_of_the_routers_own_is_not_queued_twice() {
        let (mut ctl, _) = controller();
        let mut p = StreamProxy::new(StreamConfig::default(), 1);
        let dst = (Ipv4Addr::new(10, 0, 2, 2), 2049);
        let mut w = Writer::new();
        w.call(0x5e00_0001, crate::wire::rpc::program::NFS, 3, 0);
        for _ in 0..5 {
            p.upstream_call(dst, 1, w.buf.clone(), 0);
        }
        assert_eq!((p.stats.upstream_calls, p.stats.upstream_repeats), (1, 4));
        assert_eq!(p.calls_in_flight(), 1);
        // Answered: the next one is a new call.
        p.leg_up(dst, 0);
        let mut r = Writer::new();
        r.accepted_reply(p.next_xid, 0);
        let out = p.leg_data(dst, &frame(&r.buf), &mut ctl, 1).unwrap();
        assert_eq!(out.len(), 1);
        p.upstream_call(dst, 1, w.buf.clone(), 2);
        assert_eq!(p.stats.upstream_calls, 2);
    }

    #[test]
    fn a_leg_that_breaks_sends_its_calls_again_in_order() {
        let (mut ctl, vfh) = controller();
        let mut p = StreamProxy::new(StreamConfig::default(), 0);
        assert!(p.client_opened(1, (Ipv4Addr::new(10, 0, 0, 2), 900), 2049, 0));
        for xid in 1..=3 {
            let c = frame(&read_call(xid, &vfh, 512));
            p.client_data(1, &c, &mut ctl, 0).unwrap();
        }
        p.leg_up(SERVER, 1);
        let first = records(p.leg_output(SERVER).unwrap());
        p.leg_down(SERVER, 2);
        assert!(p.leg_output(SERVER).is_none());
        assert_eq!(p.legs_wanted(), vec![SERVER]);
        p.leg_up(SERVER, 3);
        let again = records(p.leg_output(SERVER).unwrap());
        assert_eq!(first, again, "the same calls, same xids, same order");
        assert_eq!(p.stats.resent, 3);
    }

    #[test]
    fn bounds_refuse_connections_pause_streams_and_close_bad_ones() {
        let (mut ctl, vfh) = controller();
        let cfg = StreamConfig {
            max_connections: 3,
            max_per_client: 2,
            max_inflight: 2,
            idle_ms: 1000,
            ..StreamConfig::default()
        };
        let mut p = StreamProxy::new(cfg, 0);
        let a = Ipv4Addr::new(10, 0, 0, 2);
        assert!(p.client_opened(1, (a, 1), 2049, 0));
        assert!(p.client_opened(2, (a, 2), 2049, 0));
        assert!(!p.client_opened(3, (a, 3), 2049, 0));
        assert!(p.client_opened(4, (Ipv4Addr::new(10, 0, 0, 3), 1), 2049, 0));
        assert!(!p.client_opened(5, (Ipv4Addr::new(10, 0, 0, 4), 1), 2049, 0));
        assert_eq!((p.stats.refused_per_client, p.stats.refused_total), (1, 1));
        // Three calls in one segment: two are taken, the third waits in the stream.
        let one = frame(&read_call(1, &vfh, 512));
        let stream = [one.clone(), one.clone(), one.clone()].concat();
        assert_eq!(p.client_data(1, &stream, &mut ctl, 0), Ok(2 * one.len()));
        assert!(!p.client_can_take(1));
        assert_eq!(p.stats.paused_inflight, 1);
        // A record claiming 2^31 - 1 bytes closes the stream; nothing was buffered.
        assert_eq!(
            p.client_data(2, &0xffff_ffffu32.to_be_bytes(), &mut ctl, 0),
            Err(StreamError::Record(RecordError::TooLong(0x7fff_ffff)))
        );
        assert_eq!(p.stats.bad_records, 1);
        p.client_closed(2);
        // Half a record, then silence: idle-closed after the bound; a client with calls in
        // flight is not.
        p.client_data(4, &one[..10], &mut ctl, 0).unwrap();
        assert_eq!(p.poll(500), Vec::<ConnId>::new());
        assert_eq!(p.poll(1500), vec![4]);
        // Garbage (not an RPC call) is counted, not answered.
        let junk = frame(b"not an rpc call at all");
        p.client_data(1, &junk, &mut ctl, 1).ok();
        assert_eq!(p.stats.garbage, 1);
    }
}
