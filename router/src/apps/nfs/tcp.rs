//! The NFS virtual server's TCP, on the management core: smoltcp's TCP over the packets the
//! fast path punts to the virtual address (and the packets it makes, routed out like the
//! management core's others), carrying the byte streams of [`StreamProxy`].
//!
//! - client side: listening sockets on the virtual address's portmap, MOUNT and NFS ports
//!   (a few per port, replenished as they are taken, so a burst of SYNs finds one each); a
//!   SYN to any other port, or for a connection this router does not know (after a restart),
//!   is answered with RST by smoltcp;
//! - server side: one connection per server endpoint (NFS port, MOUNT port), from the virtual
//!   address and a reserved port (below 1024: servers that want privileged ports take it),
//!   opened when there is something to send, re-opened after a failure with a back-off;
//!   keep-alive finds a server that went away;
//! - backpressure is TCP's own: a stream the proxy cannot take now stays in its socket, whose
//!   window closes; a socket that cannot take more output keeps it in the proxy.
//!
//! Why smoltcp and not the kernel's TCP over a TAP exception port: the proxy needs the bytes
//! of each stream in the process that owns the handle table and the rewrite; with the kernel
//! doing TCP, every segment would cross into the kernel and every byte back out through
//! sockets (two copies and a system call per read or write), and the TAP port needs its own
//! addresses, routes and a device per router. smoltcp runs inside the management core's loop
//! on the buffers it already has, costs no system call, and keeps every TCP state in this
//! process, where `routerctl` can show it.

use nfs_rewrite::control::Controller;
use nfs_rewrite::stream::{ConnId, Delivery, LegKey, Output, StreamConfig, StreamProxy};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

/// Listening sockets kept ready per port.
const LISTENERS_PER_PORT: usize = 4;
/// Packets queued for the TCP stack at most (more are dropped: TCP retransmits).
const RX_QUEUE: usize = 4096;
/// Packets the stack may have made and not yet handed out: past this it makes no more until
/// the output ring takes some (TCP's own pacing: unsent segments wait in the send buffers).
const TX_QUEUE: usize = 512;
/// Local ports of the router's connections to servers (reserved ports, as NFS clients use).
const LEG_PORTS: std::ops::RangeInclusive<u16> = 665..=1023;
/// Back-off before re-opening a server connection that failed (ms).
const LEG_RETRY_MS: u64 = 500;
/// A server connection that cannot deliver for this long is given up (and re-opened).
const LEG_TIMEOUT: Duration = Duration::from_secs(5);
const LEG_KEEPALIVE: Duration = Duration::from_secs(5);
/// Closed client sockets kept to listen again (their buffers reused, not freed and
/// allocated anew for every connection).
const SPARE_SOCKETS: usize = 64;
/// The proxy's timers run this often (ms).
const SWEEP_MS: u64 = 200;

/// IP packets to and from smoltcp.
#[derive(Debug, Default)]
struct Queue {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    mtu: usize,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push(b);
        r
    }
}

impl Device for Queue {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        (self.tx.len() < TX_QUEUE).then_some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c
    }
}

/// Counters of the TCP side (the streams' own are [`nfs_rewrite::stream::StreamStats`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpCounters {
    pub packets_in: u64,
    pub packets_out: u64,
    /// Packets dropped because the stack's queue was full.
    pub queue_full: u64,
    /// Connections reset here: refused by a limit, bad streams, idle ones.
    pub resets: u64,
}

/// Socket buffer sizes (bytes): each client connection's receive buffer (its send buffer
/// holds at least a whole record), each server connection's both ways.
#[derive(Debug, Clone, Copy)]
pub struct Buffers {
    pub client: usize,
    pub server: usize,
}

/// A connection to a server.
#[derive(Debug)]
struct LegSocket {
    handle: SocketHandle,
    up: bool,
}

/// The TCP virtual server (see the module documentation).
pub struct NfsTcp {
    iface: Interface,
    dev: Queue,
    sockets: SocketSet<'static>,
    addr: Ipv4Addr,
    ports: Vec<u16>,
    listeners: Vec<(u16, SocketHandle)>,
    clients: HashMap<SocketHandle, ConnId>,
    legs: HashMap<LegKey, LegSocket>,
    leg_retry: HashMap<LegKey, u64>,
    /// Sockets closed or reset, retired after the next egress (so their RST or FIN goes out):
    /// (socket, whether it is a client socket, to be reused as a listener).
    retire: Vec<(SocketHandle, bool)>,
    /// Closed client sockets waiting to listen again.
    spare: Vec<SocketHandle>,
    next_conn: ConnId,
    next_leg_port: u16,
    client_buffer: usize,
    server_buffer: usize,
    last_sweep: u64,
    pub proxy: StreamProxy,
    pub counters: TcpCounters,
}

impl std::fmt::Debug for NfsTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NfsTcp")
            .field("addr", &self.addr)
            .field("clients", &self.clients.len())
            .field("legs", &self.legs.len())
            .finish()
    }
}

fn new_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; rx]),
        tcp::SocketBuffer::new(vec![0u8; tx]),
    );
    // RPC is request/response: no Nagle. ACKs wait at most 1 ms for data to ride on, and a
    // second full segment sends one at once (every other segment, as Linux does: half the
    // ACKs of bulk transfers go through the router).
    s.set_nagle_enabled(false);
    s.set_ack_delay(Some(Duration::from_millis(1)));
    s
}

/// Write what `out` holds into `s` while it takes it; returns the bytes written.
fn write_out(s: &mut tcp::Socket<'_>, out: &mut Output) -> usize {
    let mut total = 0;
    while s.can_send() && !out.is_empty() {
        match s.send_slice(out.front()) {
            Ok(n) if n > 0 => {
                out.advance(n);
                total += n;
            }
            _ => break,
        }
    }
    total
}

impl NfsTcp {
    /// Listen on `ports` of `addr`. `seed` varies initial sequence numbers and leg xids
    /// between runs (the clock).
    pub fn new(
        addr: Ipv4Addr,
        ports: &[u16],
        cfg: StreamConfig,
        buffers: Buffers,
        mtu: usize,
        seed: u64,
        now: u64,
    ) -> Self {
        let Buffers {
            client: client_buffer,
            server: server_buffer,
        } = buffers;
        let mut dev = Queue {
            mtu,
            ..Queue::default()
        };
        let mut icfg = IfaceConfig::new(HardwareAddress::Ip);
        icfg.random_seed = seed;
        let mut iface = Interface::new(icfg, &mut dev, Instant::from_millis(now as i64));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(addr), 32));
        });
        let mut t = NfsTcp {
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            addr,
            ports: ports.to_vec(),
            listeners: Vec::new(),
            clients: HashMap::new(),
            legs: HashMap::new(),
            leg_retry: HashMap::new(),
            retire: Vec::new(),
            spare: Vec::new(),
            next_conn: 1,
            next_leg_port: *LEG_PORTS.start() + (seed % 300) as u16,
            client_buffer,
            server_buffer,
            last_sweep: now,
            proxy: StreamProxy::new(cfg, (seed as u32).rotate_left(8)),
            counters: TcpCounters::default(),
        };
        for p in t.ports.clone() {
            for _ in 0..LISTENERS_PER_PORT {
                t.listen(p);
            }
        }
        t
    }

    fn listen(&mut self, port: u16) {
        let at = IpListenEndpoint { addr: None, port };
        while let Some(h) = self.spare.pop() {
            if self.sockets.get_mut::<tcp::Socket>(h).listen(at).is_ok() {
                self.listeners.push((port, h));
                return;
            }
            self.sockets.remove(h);
        }
        // The send buffer holds a whole reply record: written in one piece, it leaves in
        // full-sized segments from the record's start (no short segment mid-record), which
        // clients that read records carelessly (pyNfsClient) depend on.
        let tx = self.client_buffer.max(self.proxy.cfg.max_record);
        let mut s = new_socket(self.client_buffer, tx);
        if s.listen(at).is_ok() {
            let h = self.sockets.add(s);
            self.listeners.push((port, h));
        }
    }

    /// Whether an IPv4 packet is for this stack: TCP to the virtual address.
    pub fn wants(&self, ip: &[u8]) -> bool {
        ip.len() >= 20
            && ip[0] >> 4 == 4
            && ip[9] == packet::ipv4::protocol::TCP
            && ip[16..20] == self.addr.octets()
    }

    /// Queue an IPv4 packet (TCP to the virtual address) for the stack.
    pub fn input(&mut self, ip: &[u8]) {
        if self.dev.rx.len() >= RX_QUEUE {
            self.counters.queue_full += 1;
            return;
        }
        self.counters.packets_in += 1;
        self.dev.rx.push_back(ip.to_vec());
    }

    /// The RST answering `ip` when it is a SYN to a listened port that a limit refuses.
    fn refuse_syn(&self, ip: &[u8]) -> Option<Vec<u8>> {
        use packet::ipv4::{Ipv4Packet, Ipv4Repr};
        use packet::tcp::{flags, TcpPacket, TcpRepr};
        let p = Ipv4Packet::new_checked(ip).ok()?;
        let src = p.src_addr();
        let seg = TcpPacket::new_checked(p.payload()).ok()?;
        let f = seg.flags();
        if f & flags::SYN == 0 || f & (flags::ACK | flags::RST) != 0 {
            return None;
        }
        if !self.ports.contains(&seg.dst_port()) || self.proxy.may_accept(src) {
            return None;
        }
        let mut out = vec![0u8; 20 + packet::tcp::HEADER_LEN];
        let (hdr, tcp) = out.split_at_mut(20);
        TcpRepr {
            src_port: seg.dst_port(),
            dst_port: seg.src_port(),
            seq_number: 0,
            ack_number: seg.seq_number().wrapping_add(1),
            flags: flags::RST | flags::ACK,
            window_len: 0,
        }
        .emit(&mut TcpPacket::new_unchecked(&mut tcp[..]), self.addr, src);
        Ipv4Repr {
            src_addr: self.addr,
            dst_addr: src,
            protocol: packet::ipv4::protocol::TCP,
            payload_len: packet::tcp::HEADER_LEN,
            ttl: 64,
            tos: 0,
            ident: 0,
            dont_frag: true,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut hdr[..]));
        Some(out)
    }

    /// Whether a poll has anything to do soon (packets queued, connections open).
    pub fn active(&self) -> bool {
        !self.dev.rx.is_empty()
            || !self.dev.tx.is_empty()
            || !self.clients.is_empty()
            || !self.legs.is_empty()
            || !self.retire.is_empty()
            || self.proxy.calls_in_flight() > 0
    }

    /// Up to `max` of the IPv4 packets the stack made, oldest first (the caller sends them;
    /// the rest wait for room).
    pub fn take_output(&mut self, max: usize) -> Vec<Vec<u8>> {
        let n = max.min(self.dev.tx.len());
        self.counters.packets_out += n as u64;
        self.dev.tx.drain(..n).collect()
    }

    /// Run the stack and the streams: take the queued packets, move bytes between sockets
    /// and the proxy, run timers; the packets made wait for [`NfsTcp::take_output`]. Returns
    /// the replies that leave by other ways (the router's own client, UDP clients).
    pub fn poll(&mut self, ctl: &mut Controller, now: u64) -> Vec<Delivery> {
        let t = Instant::from_millis(now as i64);
        for (h, client) in std::mem::take(&mut self.retire) {
            if client && self.spare.len() < SPARE_SOCKETS {
                self.sockets.get_mut::<tcp::Socket>(h).abort();
                self.spare.push(h);
            } else {
                self.sockets.remove(h);
            }
        }
        self.iface.poll_maintenance(t);
        // One packet at a time, with listeners replenished in between: a burst of SYNs to
        // one port each finds a listening socket. A SYN that a connection limit refuses (the
        // connections adopted so far counted) is answered with RST here, before a socket and
        // its buffers are spent on it.
        while let Some(p) = self.dev.rx.front() {
            if let Some(rst) = self.refuse_syn(p) {
                self.dev.rx.pop_front();
                self.proxy.refused();
                self.counters.resets += 1;
                self.dev.tx.push(rst);
                continue;
            }
            self.iface
                .poll_ingress_single(t, &mut self.dev, &mut self.sockets);
            self.adopt(now);
        }
        self.adopt(now);
        if now.saturating_sub(self.last_sweep) >= SWEEP_MS {
            self.last_sweep = now;
            for conn in self.proxy.poll(now) {
                if let Some((&h, _)) = self.clients.iter().find(|(_, &c)| c == conn) {
                    self.sockets.get_mut::<tcp::Socket>(h).abort();
                    self.counters.resets += 1;
                }
            }
        }
        let mut upstream = Vec::new();
        // Twice: replies that came in on legs go out to clients in the same poll, and calls
        // released by a recovery go to their legs.
        for _ in 0..2 {
            self.clients_io(ctl, now);
            self.legs_io(ctl, now, &mut upstream);
            self.proxy.released(ctl, now);
        }
        self.iface.poll_egress(t, &mut self.dev, &mut self.sockets);
        upstream
    }

    /// Listening sockets that took a SYN become client connections (or are reset when a
    /// limit says no); new listeners take their place.
    fn adopt(&mut self, now: u64) {
        let mut i = 0;
        while i < self.listeners.len() {
            let (port, h) = self.listeners[i];
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            if s.state() == tcp::State::Listen {
                i += 1;
                continue;
            }
            self.listeners.swap_remove(i);
            let peer = match s.remote_endpoint() {
                Some(IpEndpoint {
                    addr: IpAddress::Ipv4(a),
                    port,
                }) => (a, port),
                _ => (Ipv4Addr::UNSPECIFIED, 0),
            };
            let conn = self.next_conn;
            self.next_conn += 1;
            if self.proxy.client_opened(conn, peer, port, now) {
                self.clients.insert(h, conn);
            } else {
                s.abort();
                self.counters.resets += 1;
                self.clients.insert(h, 0);
            }
            self.listen(port);
        }
    }

    /// Read what client connections received into the proxy, write what it has for them,
    /// and retire closed connections.
    fn clients_io(&mut self, ctl: &mut Controller, now: u64) {
        let mut gone = Vec::new();
        for (&h, &conn) in &self.clients {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            match s.state() {
                tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen => {
                    gone.push((h, conn));
                    continue;
                }
                _ => {}
            }
            if conn == 0 {
                continue; // refused: reset, retired once closed
            }
            // Twice: the receive buffer is a ring and may hand its data in two pieces.
            for _ in 0..2 {
                if !s.can_recv() || !self.proxy.client_can_take(conn) {
                    break;
                }
                let proxy = &mut self.proxy;
                let r = s.recv(|data| match proxy.client_data(conn, data, ctl, now) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (data.len(), Err(e)),
                });
                match r {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(Err(_)) => {
                        s.abort();
                        self.counters.resets += 1;
                        break;
                    }
                    _ => break,
                }
            }
            if let Some(out) = self.proxy.client_output(conn) {
                let n = write_out(s, out);
                self.proxy.client_wrote(conn, n);
            }
            // The client closed its side and everything it asked for was written.
            if !s.may_recv() && s.state() == tcp::State::CloseWait && !self.proxy.client_busy(conn)
            {
                s.close();
            }
        }
        for (h, conn) in gone {
            self.clients.remove(&h);
            self.retire.push((h, true));
            if conn != 0 {
                self.proxy.client_closed(conn);
            }
        }
    }

    /// Open the server connections the proxy wants, move bytes on the open ones, and report
    /// the ones that came up or broke.
    fn legs_io(&mut self, ctl: &mut Controller, now: u64, upstream: &mut Vec<Delivery>) {
        for key in self.proxy.legs_wanted() {
            if self.legs.contains_key(&key) || self.leg_retry.get(&key).is_some_and(|&t| now < t) {
                continue;
            }
            let mut s = new_socket(self.server_buffer, self.server_buffer);
            s.set_timeout(Some(LEG_TIMEOUT));
            s.set_keep_alive(Some(LEG_KEEPALIVE));
            let port = self.next_leg_port;
            self.next_leg_port = if port >= *LEG_PORTS.end() {
                *LEG_PORTS.start()
            } else {
                port + 1
            };
            let remote = IpEndpoint::new(IpAddress::Ipv4(key.0), key.1);
            let local = IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(self.addr)),
                port,
            };
            if s.connect(self.iface.context(), remote, local).is_err() {
                self.leg_retry.insert(key, now + LEG_RETRY_MS);
                continue;
            }
            let handle = self.sockets.add(s);
            self.legs.insert(key, LegSocket { handle, up: false });
            self.proxy.leg_connecting(key, now);
        }
        let mut broken = Vec::new();
        for (&key, leg) in &mut self.legs {
            let s = self.sockets.get_mut::<tcp::Socket>(leg.handle);
            match s.state() {
                tcp::State::Established if !leg.up => {
                    leg.up = true;
                    self.proxy.leg_up(key, now);
                }
                tcp::State::SynSent | tcp::State::SynReceived | tcp::State::Established => {}
                _ => {
                    broken.push(key);
                    continue;
                }
            }
            if !leg.up {
                continue;
            }
            for _ in 0..2 {
                if !s.can_recv() {
                    break;
                }
                let proxy = &mut self.proxy;
                let r = s.recv(|data| (data.len(), proxy.leg_data(key, data, ctl, now)));
                match r {
                    Ok(Ok(mut replies)) => upstream.append(&mut replies),
                    Ok(Err(_)) => {
                        s.abort();
                        broken.push(key);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Some(out) = self.proxy.leg_output(key) {
                let n = write_out(s, out);
                self.proxy.leg_wrote(key, n);
            }
        }
        for key in broken {
            if let Some(leg) = self.legs.remove(&key) {
                self.sockets.get_mut::<tcp::Socket>(leg.handle).abort();
                self.retire.push((leg.handle, false));
                self.proxy.leg_down(key, now);
                self.leg_retry
                    .insert(key, now + if leg.up { 0 } else { LEG_RETRY_MS });
            }
        }
    }
}
