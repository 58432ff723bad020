//! The management core (the IXP's StrongARM): everything slow. It drains the punt rings, learns
//! and resolves neighbours (holding a bounded number of packets while it asks), builds ICMP
//! errors, fragments, applies route changes, answers the admin socket and aggregates counters.
//! Packets it makes or releases go back to the fast path through the inject ring.

use crate::admin::{Pending, Request, Response};
use crate::app::{MgmtApp, MgmtCtx, Output};
use crate::config::{Config, RouteSpec, RouteTarget};
use crate::counters::{CoreCounters, Counter};
use crate::engine::{MgmtRings, Punted};
use crate::fib::{Fib, NextHopKind};
use crate::ipv4::{Ipv4Stage, PortInfo, DEFAULT_TTL};
use crate::port::Backend;
use packet::arp::{self, ArpPacket, ArpRepr};
use packet::ethernet::{
    ethertype, EthernetAddress, EthernetFrame, EthernetRepr, HEADER_LEN as ETH_LEN,
};
use packet::icmp::{self, IcmpPacket, IcmpRepr};
use packet::ipv4::{protocol, Ipv4Packet, Ipv4Repr};
use packet::{Buffer, PuntReason, Verdict};
use serde::Serialize;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Where a route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteOrigin {
    /// A subnet of a port address.
    Connected,
    /// One of the router's own addresses.
    Local,
    /// From the config file or `routerctl route add`.
    Static,
    /// A resolved host on a connected subnet.
    Neighbour,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum NeighState {
    /// Configured; never probed or aged.
    Permanent,
    Incomplete,
    Reachable,
    Probe,
    Failed,
}

#[derive(Debug)]
struct Neighbour {
    mac: Option<EthernetAddress>,
    state: NeighState,
    updated: Instant,
    probes: u32,
    last_probe: Instant,
}

/// Counters of the management core.
#[derive(Debug, Default)]
pub struct MgmtCounters {
    pub punts: [Counter; PuntReason::ALL.len()],
    /// Broadcasts delivered to the router (limited, or the receiving link's directed one).
    pub broadcast_in: Counter,
    pub arp_requests_sent: Counter,
    pub arp_learned: Counter,
    pub held: Counter,
    pub hold_full: Counter,
    pub released: Counter,
    pub resolve_failed: Counter,
    pub icmp_time_exceeded: Counter,
    pub icmp_unreachable: Counter,
    pub icmp_frag_needed: Counter,
    pub icmp_rate_limited: Counter,
    pub fragmented: Counter,
    pub no_route: Counter,
    pub inject_full: Counter,
    pub alloc_failed: Counter,
    pub local_dropped: Counter,
    pub admin_requests: Counter,
    pub admin_errors: Counter,
    pub application_unhandled: Counter,
}

macro_rules! counter_json {
    ($s:expr, $($f:ident),*) => { json!({ $(stringify!($f): $s.$f.get()),* }) };
}

/// The management core's state.
pub struct Mgmt<B: Backend> {
    cfg: Config,
    be: Arc<B>,
    fib: Fib,
    stage: Ipv4Stage,
    ports: Arc<[PortInfo]>,
    rings: MgmtRings<B::Buf>,
    cores: Vec<Arc<CoreCounters>>,
    origins: HashMap<(u32, u8), RouteOrigin>,
    neigh: HashMap<(u16, Ipv4Addr), Neighbour>,
    held: HashMap<(u16, Ipv4Addr), VecDeque<B::Buf>>,
    held_total: usize,
    pub counters: MgmtCounters,
    icmp_tokens: f64,
    icmp_last: Instant,
    started: Instant,
    set_log_level: crate::LogLevelSetter,
    ip_ident: u16,
    /// The coarse clock (ms since start) the workers read.
    clock: Arc<std::sync::atomic::AtomicU64>,
    /// The applications' management-core sides, in the registry's order.
    apps: Vec<Box<dyn MgmtApp>>,
    /// What they queued to send (kept to reuse its allocation).
    app_out: Vec<Output>,
    /// Where the metrics endpoint listens (`[metrics] listen`, its port chosen when 0).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The routes the config file installed (a reload replaces these, not `routerctl`'s).
    pub config_routes: HashMap<(u32, u8), RouteTarget>,
    /// Reloads done and refused (SIGHUP and `routerctl reload`), and why the last was refused.
    reloads: (u64, u64, Option<String>),
}

impl<B: Backend> std::fmt::Debug for Mgmt<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mgmt")
            .field("routes", &self.fib.len())
            .finish()
    }
}

/// Build the fast path's view of the interfaces: the ports, then their VLANs (with their
/// port's MAC and MTU).
pub fn port_infos<B: Backend>(cfg: &Config, be: &B) -> Vec<PortInfo> {
    let devs = be.ports();
    cfg.interfaces()
        .iter()
        .filter_map(|f| {
            let p = usize::from(f.port);
            let (d, pc) = (devs.get(p)?, cfg.ports.get(p)?);
            Some(PortInfo {
                name: f.name.clone(),
                mac: pc
                    .mac
                    .as_deref()
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(d.mac),
                mtu: pc.mtu,
                addrs: f
                    .addresses
                    .iter()
                    .filter_map(|a| packet::ipv4::parse_prefix(a))
                    .collect(),
                forward_directed_broadcast: f.forward_directed_broadcast,
            })
        })
        .collect()
}

impl<B: Backend> Mgmt<B> {
    /// Install connected, local and configured routes into `fib`.
    pub fn install_initial_routes(
        cfg: &Config,
        specs: Vec<RouteSpec>,
        fib: &mut Fib,
        origins: &mut HashMap<(u32, u8), RouteOrigin>,
    ) -> Result<(), String> {
        for (port, ip, len) in cfg.addresses() {
            let net = Ipv4Addr::from(u32::from(ip) & packet::ipv4::mask(len));
            if let std::collections::hash_map::Entry::Vacant(slot) =
                origins.entry((u32::from(net), len))
            {
                let nh = fib
                    .next_hop_ref(NextHopKind::Connected, port, Ipv4Addr::UNSPECIFIED)
                    .map_err(|e| e.to_string())?;
                fib.add(net, len, nh).map_err(|e| e.to_string())?;
                slot.insert(RouteOrigin::Connected);
            }
            let nh = fib
                .next_hop_ref(NextHopKind::Local, port, Ipv4Addr::UNSPECIFIED)
                .map_err(|e| e.to_string())?;
            fib.add(ip, 32, nh).map_err(|e| e.to_string())?;
            origins.insert((u32::from(ip), 32), RouteOrigin::Local);
        }
        let total = specs.len();
        let t0 = Instant::now();
        for (i, s) in specs.into_iter().enumerate() {
            add_route(fib, origins, s, RouteOrigin::Static)?;
            if total >= 100_000 && (i + 1) % 250_000 == 0 {
                tracing::info!(
                    "loaded {}/{} routes ({:.1}s)",
                    i + 1,
                    total,
                    t0.elapsed().as_secs_f64()
                );
            }
        }
        if total > 0 {
            tracing::info!(
                "{} routes installed in {:.2}s",
                total,
                t0.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        clock: Arc<std::sync::atomic::AtomicU64>,
        apps: Vec<Box<dyn MgmtApp>>,
        cfg: Config,
        be: Arc<B>,
        fib: Fib,
        origins: HashMap<(u32, u8), RouteOrigin>,
        stage: Ipv4Stage,
        rings: MgmtRings<B::Buf>,
        cores: Vec<Arc<CoreCounters>>,
        set_log_level: crate::LogLevelSetter,
    ) -> Self {
        let ports = stage.ports().clone();
        let rate = f64::from(cfg.icmp.errors_per_sec);
        let statics = cfg.static_neighbours.clone();
        let mut m = Mgmt {
            cfg,
            be,
            fib,
            stage,
            ports,
            rings,
            cores,
            origins,
            neigh: HashMap::new(),
            held: HashMap::new(),
            held_total: 0,
            counters: MgmtCounters::default(),
            icmp_tokens: rate,
            icmp_last: Instant::now(),
            started: Instant::now(),
            set_log_level,
            metrics_addr: None,
            config_routes: HashMap::new(),
            reloads: (0, 0, None),
            ip_ident: 1,
            clock,
            apps,
            app_out: Vec::new(),
        };
        for n in statics {
            let (Some(port), Ok(mac)) = (m.cfg.port_id(&n.port), n.mac.parse::<EthernetAddress>())
            else {
                continue;
            };
            let now = Instant::now();
            m.neigh.insert(
                (port, n.address),
                Neighbour {
                    mac: Some(mac),
                    state: NeighState::Permanent,
                    updated: now,
                    probes: 0,
                    last_probe: now,
                },
            );
            m.install_neighbour(port, n.address, mac);
        }
        m
    }

    /// Run until `stop` is set. `admin` carries requests from the admin socket.
    pub fn run(&mut self, stop: &AtomicBool, admin: &mpsc::Receiver<Pending>) {
        let mut last_timer = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            self.clock
                .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
            let mut work = self.poll_punts(512);
            work += self.with_apps(|apps, ctx| apps.iter_mut().map(|a| a.poll(ctx)).sum::<usize>());
            if crate::reload_flag().swap(false, Ordering::Relaxed) {
                let r = self.reload();
                match (&r.error, &r.data) {
                    (Some(e), _) => tracing::error!("reload (SIGHUP) refused: {e}"),
                    (None, d) => tracing::info!("reload (SIGHUP): {d}"),
                }
            }
            while let Ok(p) = admin.try_recv() {
                work += 1;
                self.counters.admin_requests.inc();
                let resp = self.handle(p.req);
                if !resp.ok {
                    self.counters.admin_errors.inc();
                }
                let _ = p.reply.send(resp);
            }
            if last_timer.elapsed() >= Duration::from_millis(100) {
                last_timer = Instant::now();
                self.timers();
            }
            if work == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        for a in &mut self.apps {
            a.stop();
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Lend the applications what [`MgmtCtx`] holds for `f`, then send what they queued.
    fn with_apps<R>(&mut self, f: impl FnOnce(&mut [Box<dyn MgmtApp>], &mut MgmtCtx) -> R) -> R {
        let mut out = std::mem::take(&mut self.app_out);
        let mut ctx = MgmtCtx {
            now_ms: self.now_ms(),
            room: self.rings.inject.slots(),
            ports: &self.ports,
            router: &self.stage,
            cores: &self.cores,
            out: &mut out,
            unhandled: 0,
        };
        let r = f(&mut self.apps, &mut ctx);
        let unhandled = ctx.unhandled;
        self.counters.application_unhandled.add(unhandled);
        for o in out.drain(..) {
            self.send_output(o);
        }
        self.app_out = out;
        r
    }

    /// Offer a frame to the applications in turn (`hook` says whether one took it).
    fn offer(
        &mut self,
        buf: &B::Buf,
        hook: fn(&mut dyn MgmtApp, &mut MgmtCtx, &[u8], u16) -> bool,
    ) -> bool {
        let (frame, port) = (buf.data(), buf.port());
        self.with_apps(|apps, ctx| apps.iter_mut().any(|a| hook(a.as_mut(), ctx, frame, port)))
    }

    /// Send what an application queued.
    fn send_output(&mut self, o: Output) {
        match o {
            Output::Udp { src, dst, payload } => self.send_udp(src, dst, &payload),
            Output::Ip {
                src,
                dst,
                proto,
                payload,
            } => self.send_ip(src, dst, proto, payload.len(), |p| {
                p.copy_from_slice(&payload)
            }),
            Output::Datagram(p) => {
                let Some(mut b) = self.alloc_frame(ETH_LEN + p.len()) else {
                    return;
                };
                let d = b.data_mut();
                d[..ETH_LEN].fill(0);
                d[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
                d[ETH_LEN..].copy_from_slice(&p);
                self.output(b);
            }
            Output::Frame { frame, port } => self.route_frames(std::iter::once((frame, port))),
        }
    }

    /// Drain up to `budget` punted packets. Returns how many were handled.
    pub fn poll_punts(&mut self, budget: usize) -> usize {
        let mut n = 0;
        for w in 0..self.rings.punt.len() {
            while n < budget {
                let Ok(Punted { reason, buf }) = self.rings.punt[w].pop() else {
                    break;
                };
                n += 1;
                if let Some(c) = self.counters.punts.get(reason as usize) {
                    c.inc();
                }
                self.punted(reason, buf);
            }
        }
        n
    }

    fn punted(&mut self, reason: PuntReason, buf: B::Buf) {
        match reason {
            PuntReason::Arp => self.arp_input(&buf),
            PuntReason::Resolve => self.output(buf),
            PuntReason::TtlExceeded => {
                self.counters.icmp_time_exceeded.inc();
                self.icmp_error(&buf, icmp::kind::TIME_EXCEEDED, 0, 0);
            }
            PuntReason::NoRoute => {
                self.counters.no_route.inc();
                self.icmp_error(&buf, icmp::kind::DEST_UNREACHABLE, icmp::unreach::NET, 0);
            }
            PuntReason::FragNeeded => self.fragment_or_refuse(buf),
            PuntReason::Local => {
                if !self.offer(&buf, |a, ctx, f, p| a.local(ctx, f, p)) {
                    self.local_input(&buf)
                }
            }
            PuntReason::Broadcast => {
                self.counters.broadcast_in.inc();
                if !self.offer(&buf, |a, ctx, f, p| a.broadcast(ctx, f, p)) {
                    // Nobody's: dropped without an ICMP error (never for a broadcast).
                    self.counters.local_dropped.inc();
                }
            }
            PuntReason::Application => {
                if !self.offer(&buf, |a, ctx, f, p| a.punted(ctx, f, p)) {
                    // No controller for it: count, answer nothing (no ICMP: the client retries).
                    self.counters.application_unhandled.inc();
                }
            }
        }
    }

    fn inject(&mut self, buf: B::Buf) {
        if self.rings.inject.push(buf).is_err() {
            self.counters.inject_full.inc();
        }
    }

    /// Route a complete frame the management core holds; hold it if its neighbour is unknown.
    fn output(&mut self, mut buf: B::Buf) {
        match self.stage.route(buf.data_mut()) {
            Verdict::Tx(port) => {
                buf.set_port(port);
                self.inject(buf);
            }
            Verdict::Punt(PuntReason::Resolve) => self.hold(buf),
            Verdict::Punt(PuntReason::FragNeeded) => self.fragment_or_refuse(buf),
            Verdict::Punt(PuntReason::NoRoute) => self.counters.no_route.inc(),
            _ => self.counters.local_dropped.inc(),
        }
    }

    /// The neighbour a frame's next hop needs: (port, neighbour address).
    fn neighbour_for(&self, frame: &[u8]) -> Option<(u16, Ipv4Addr)> {
        let ip = packet::ipv4::in_frame(frame)?;
        let nh = self.stage.next_hop(ip.dst_addr())?;
        match nh.kind {
            NextHopKind::Gateway => Some((nh.port, nh.gateway)),
            NextHopKind::Connected => Some((nh.port, ip.dst_addr())),
            _ => None,
        }
    }

    fn hold(&mut self, buf: B::Buf) {
        let Some(key) = self.neighbour_for(buf.data()) else {
            self.counters.no_route.inc();
            return;
        };
        // Known already (a connected host whose /32 is not yet installed)?
        if let Some(n) = self.neigh.get(&key) {
            if let (Some(mac), NeighState::Reachable | NeighState::Probe | NeighState::Permanent) =
                (n.mac, n.state)
            {
                self.install_neighbour(key.0, key.1, mac);
                self.release_one(buf);
                return;
            }
        }
        let q = self.held.entry(key).or_default();
        if q.len() >= self.cfg.neighbours.hold_per_neighbour
            || self.held_total >= self.cfg.neighbours.hold_total
        {
            self.counters.hold_full.inc();
        } else {
            q.push_back(buf);
            self.held_total += 1;
            self.counters.held.inc();
        }
        let now = Instant::now();
        let fresh = !self.neigh.contains_key(&key);
        if fresh {
            if self.neigh.len() >= self.cfg.neighbours.max_neighbours {
                return;
            }
            self.neigh.insert(
                key,
                Neighbour {
                    mac: None,
                    state: NeighState::Incomplete,
                    updated: now,
                    probes: 1,
                    last_probe: now,
                },
            );
            self.send_arp_request(key.0, key.1, None);
        } else if let Some(n) = self.neigh.get_mut(&key) {
            if n.state == NeighState::Failed {
                n.state = NeighState::Incomplete;
                n.probes = 1;
                n.last_probe = now;
                self.send_arp_request(key.0, key.1, None);
            }
        }
    }

    fn release_one(&mut self, buf: B::Buf) {
        let mut b = buf;
        match self.stage.route(b.data_mut()) {
            Verdict::Tx(port) => {
                b.set_port(port);
                self.counters.released.inc();
                self.inject(b);
            }
            _ => self.counters.resolve_failed.inc(),
        }
    }

    /// Make `ip` on `port` reachable at `mac` for the fast path.
    fn install_neighbour(&mut self, port: u16, ip: Ipv4Addr, mac: EthernetAddress) {
        self.fib.resolve(port, ip, Some(mac));
        // A host on a connected subnet gets a /32 through itself.
        let on_connected = self.ports.get(usize::from(port)).is_some_and(|p| {
            p.addrs.iter().any(|(a, l)| {
                u32::from(*a) & packet::ipv4::mask(*l) == u32::from(ip) & packet::ipv4::mask(*l)
            })
        });
        let key = (u32::from(ip), 32);
        if on_connected && !self.origins.contains_key(&key) {
            if let Ok(nh) = self.fib.next_hop_ref(NextHopKind::Gateway, port, ip) {
                self.fib.resolve(port, ip, Some(mac));
                match self.fib.add(ip, 32, nh) {
                    Ok(()) => {
                        self.origins.insert(key, RouteOrigin::Neighbour);
                    }
                    Err(e) => {
                        self.fib.next_hop_unref(nh);
                        tracing::warn!("neighbour route {ip}/32: {e}");
                    }
                }
            }
        }
    }

    fn arp_input(&mut self, buf: &B::Buf) {
        let port = buf.port();
        let Ok(eth) = EthernetFrame::new_checked(buf.data()) else {
            return;
        };
        let Ok(p) = ArpPacket::new_checked(eth.payload()) else {
            return;
        };
        let Ok(r) = ArpRepr::parse(&p) else { return };
        let key = (port, r.source_protocol_addr);
        let known = self.neigh.contains_key(&key);
        let for_us = self
            .ports
            .get(usize::from(port))
            .is_some_and(|i| i.addrs.iter().any(|(a, _)| *a == r.target_protocol_addr));
        if !known && !for_us {
            return; // Gratuitous ARP from a host we do not talk to.
        }
        let now = Instant::now();
        self.neigh.insert(
            key,
            Neighbour {
                mac: Some(r.source_hardware_addr),
                state: NeighState::Reachable,
                updated: now,
                probes: 0,
                last_probe: now,
            },
        );
        self.counters.arp_learned.inc();
        self.install_neighbour(port, r.source_protocol_addr, r.source_hardware_addr);
        if let Some(q) = self.held.remove(&key) {
            self.held_total -= q.len();
            for b in q {
                self.release_one(b);
            }
        }
    }

    fn alloc_frame(&mut self, len: usize) -> Option<B::Buf> {
        let Some(mut b) = self.be.alloc() else {
            self.counters.alloc_failed.inc();
            return None;
        };
        if b.append(len).is_err() {
            self.counters.alloc_failed.inc();
            return None;
        }
        Some(b)
    }

    fn send_arp_request(&mut self, port: u16, target: Ipv4Addr, unicast: Option<EthernetAddress>) {
        let Some(info) = self.ports.get(usize::from(port)).cloned() else {
            return;
        };
        let src_ip = info
            .addrs
            .iter()
            .find(|(a, l)| {
                u32::from(*a) & packet::ipv4::mask(*l) == u32::from(target) & packet::ipv4::mask(*l)
            })
            .or(info.addrs.first())
            .map_or(Ipv4Addr::UNSPECIFIED, |(a, _)| *a);
        let Some(mut b) = self.alloc_frame(ETH_LEN + arp::PACKET_LEN) else {
            return;
        };
        {
            let mut eth = EthernetFrame::new_unchecked(b.data_mut());
            EthernetRepr {
                src_addr: info.mac,
                dst_addr: unicast.unwrap_or(EthernetAddress::BROADCAST),
                ethertype: ethertype::ARP,
            }
            .emit(&mut eth);
            ArpRepr {
                operation: arp::op::REQUEST,
                source_hardware_addr: info.mac,
                source_protocol_addr: src_ip,
                target_hardware_addr: EthernetAddress::ZERO,
                target_protocol_addr: target,
            }
            .emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
        }
        b.set_port(port);
        self.counters.arp_requests_sent.inc();
        self.inject(b);
    }

    fn icmp_allowed(&mut self) -> bool {
        let rate = f64::from(self.cfg.icmp.errors_per_sec);
        let now = Instant::now();
        self.icmp_tokens = (self.icmp_tokens
            + now.duration_since(self.icmp_last).as_secs_f64() * rate)
            .min(rate.max(1.0));
        self.icmp_last = now;
        if self.icmp_tokens >= 1.0 {
            self.icmp_tokens -= 1.0;
            true
        } else {
            self.counters.icmp_rate_limited.inc();
            false
        }
    }

    /// Answer the packet in `orig` (an Ethernet frame) with an ICMP error.
    fn icmp_error(&mut self, orig: &B::Buf, kind: u8, code: u8, mtu: u16) {
        let in_port = orig.port();
        let Some(ip) = packet::ipv4::in_frame(orig.data()) else {
            return;
        };
        // RFC 1812 4.3.2.7: no errors about ICMP errors, non-first fragments, or broadcasts.
        if ip.frag_offset() != 0
            || u32::from(ip.src_addr()) == 0
            || ip.src_addr().is_broadcast()
            || ip.src_addr().is_multicast()
        {
            return;
        }
        if ip.protocol() == protocol::ICMP {
            let t = ip.payload().first().copied().unwrap_or(0);
            if t != icmp::kind::ECHO_REQUEST && t != icmp::kind::ECHO_REPLY {
                return;
            }
        }
        if !self.icmp_allowed() {
            return;
        }
        let src = self
            .ports
            .get(usize::from(in_port))
            .and_then(|p| p.addrs.first().map(|a| a.0))
            .or_else(|| self.ports.iter().find_map(|p| p.addrs.first().map(|a| a.0)));
        let Some(src) = src else { return };
        let quoted_len = usize::from(ip.total_len()).min(576 - 20 - icmp::HEADER_LEN);
        let quoted = ip.into_inner()[..quoted_len].to_vec();
        let dst = Ipv4Packet::new_unchecked(&quoted[..]).src_addr();
        let repr = match kind {
            icmp::kind::TIME_EXCEEDED => IcmpRepr::TimeExceeded {
                code,
                data: &quoted,
            },
            _ => IcmpRepr::DstUnreachable {
                code,
                mtu,
                data: &quoted,
            },
        };
        self.send_ip(src, dst, protocol::ICMP, repr.buffer_len(), |payload| {
            repr.emit(&mut IcmpPacket::new_unchecked(payload));
        });
    }

    /// Build and route an IPv4 packet from the router.
    fn send_ip(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) {
        let mtu = self
            .stage
            .next_hop(dst)
            .and_then(|nh| self.ports.get(usize::from(nh.port)))
            .map_or(1500, |p| p.mtu);
        if 20 + payload_len > usize::from(mtu) {
            // Larger than the path's MTU (an application's reassembled datagram, rewritten): build the whole
            // datagram, send it in fragments.
            self.ip_ident = self.ip_ident.wrapping_add(1);
            let mut dg = vec![0u8; 20 + payload_len];
            let mut ip = Ipv4Packet::new_unchecked(&mut dg[..]);
            Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                protocol: proto,
                payload_len,
                ttl: DEFAULT_TTL + 1,
                tos: 0,
                ident: self.ip_ident,
                dont_frag: false,
            }
            .emit(&mut ip);
            fill(ip.payload_mut());
            let mut eth = [0u8; ETH_LEN];
            eth[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
            self.emit_fragments(&eth, &dg[..20], &dg[20..], (0, false), 0, mtu);
            return;
        }
        let Some(mut b) = self.alloc_frame(ETH_LEN + 20 + payload_len) else {
            return;
        };
        self.ip_ident = self.ip_ident.wrapping_add(1);
        {
            let mut eth = EthernetFrame::new_unchecked(b.data_mut());
            eth.set_ethertype(ethertype::IPV4);
            let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
            Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                protocol: proto,
                payload_len,
                ttl: DEFAULT_TTL + 1, // routing decrements it
                tos: 0xc0,
                ident: self.ip_ident,
                dont_frag: false,
            }
            .emit(&mut ip);
            fill(ip.payload_mut());
        }
        self.output(b);
    }

    /// Route frames the management core made (copies, released packets).
    fn route_frames(&mut self, frames: impl Iterator<Item = (Vec<u8>, u16)>) {
        for (f, port) in frames {
            if let Some(mut b) = self.alloc_frame(f.len()) {
                b.data_mut().copy_from_slice(&f);
                b.set_port(port);
                self.output(b);
            }
        }
    }

    /// Send a UDP datagram from the router.
    fn send_udp(&mut self, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) {
        self.send_ip(
            src.0,
            dst.0,
            protocol::UDP,
            packet::udp::HEADER_LEN + payload.len(),
            |seg| {
                let mut u = packet::udp::UdpPacket::new_unchecked(seg);
                u.set_src_port(src.1);
                u.set_dst_port(dst.1);
                u.set_len((packet::udp::HEADER_LEN + payload.len()) as u16);
                u.payload_mut().copy_from_slice(payload);
                u.fill_checksum(src.0, dst.0);
            },
        );
    }

    fn local_input(&mut self, buf: &B::Buf) {
        let Some(ip) = packet::ipv4::in_frame(buf.data()) else {
            return;
        };
        match ip.protocol() {
            protocol::UDP => {
                self.counters.icmp_unreachable.inc();
                self.icmp_error(buf, icmp::kind::DEST_UNREACHABLE, icmp::unreach::PORT, 0);
            }
            protocol::ICMP | protocol::TCP => self.counters.local_dropped.inc(),
            _ => {
                self.counters.icmp_unreachable.inc();
                self.icmp_error(
                    buf,
                    icmp::kind::DEST_UNREACHABLE,
                    icmp::unreach::PROTOCOL,
                    0,
                );
            }
        }
    }

    /// A packet larger than its output MTU: ICMP "fragmentation needed" when DF is set,
    /// otherwise fragment it (RFC 791) and send the pieces.
    fn fragment_or_refuse(&mut self, buf: B::Buf) {
        let frame = buf.data();
        let Some(ip) = packet::ipv4::in_frame(frame) else {
            return;
        };
        let Some(nh) = self.stage.next_hop(ip.dst_addr()) else {
            return;
        };
        let mtu = self.ports.get(usize::from(nh.port)).map_or(1500, |p| p.mtu);
        if ip.dont_frag() {
            self.counters.icmp_frag_needed.inc();
            self.icmp_error(
                &buf,
                icmp::kind::DEST_UNREACHABLE,
                icmp::unreach::FRAG_NEEDED,
                mtu,
            );
            return;
        }
        let hl = usize::from(ip.header_len());
        let header = frame[ETH_LEN..ETH_LEN + hl].to_vec();
        let payload = ip.payload().to_vec();
        let (base_off, last_mf) = (usize::from(ip.frag_offset()), ip.more_frags());
        let eth_hdr = frame[..ETH_LEN].to_vec();
        let in_port = buf.port();
        drop(buf);
        self.emit_fragments(
            &eth_hdr,
            &header,
            &payload,
            (base_off, last_mf),
            in_port,
            mtu,
        );
    }

    /// Send `payload` (of a datagram with IP header `header`, itself at fragment offset
    /// `base.0` with more fragments `base.1`) as fragments that fit `mtu` (RFC 791).
    fn emit_fragments(
        &mut self,
        eth_hdr: &[u8],
        header: &[u8],
        payload: &[u8],
        base: (usize, bool),
        in_port: u16,
        mtu: u16,
    ) {
        let hl = header.len();
        let step = ((usize::from(mtu).saturating_sub(hl)) / 8) * 8;
        if step == 0 {
            return;
        }
        let mut off = 0;
        while off < payload.len() {
            let end = (off + step).min(payload.len());
            let Some(mut b) = self.alloc_frame(ETH_LEN + hl + (end - off)) else {
                return;
            };
            {
                let d = b.data_mut();
                d[..ETH_LEN].copy_from_slice(eth_hdr);
                d[ETH_LEN..ETH_LEN + hl].copy_from_slice(header);
                d[ETH_LEN + hl..].copy_from_slice(&payload[off..end]);
                let mut p = Ipv4Packet::new_unchecked(&mut d[ETH_LEN..]);
                p.set_total_len((hl + end - off) as u16);
                p.set_flags_frag(false, end < payload.len() || base.1, (base.0 + off) as u16);
                p.fill_checksum();
            }
            b.set_port(in_port);
            self.counters.fragmented.inc();
            self.output(b);
            off = end;
        }
    }

    fn timers(&mut self) {
        self.with_apps(|apps, ctx| {
            for a in apps {
                a.timer(ctx);
            }
        });
        let now = Instant::now();
        let retry = Duration::from_millis(self.cfg.neighbours.arp_retry_ms);
        let reach = Duration::from_secs(self.cfg.neighbours.reachable_secs);
        let retries = self.cfg.neighbours.arp_retries;
        let mut probe = Vec::new();
        let mut failed = Vec::new();
        for (k, n) in self.neigh.iter_mut() {
            match n.state {
                NeighState::Incomplete | NeighState::Probe
                    if now.duration_since(n.last_probe) >= retry =>
                {
                    if n.probes >= retries {
                        n.state = NeighState::Failed;
                        n.updated = now;
                        failed.push(*k);
                    } else {
                        n.probes += 1;
                        n.last_probe = now;
                        probe.push((
                            *k,
                            if n.state == NeighState::Probe {
                                n.mac
                            } else {
                                None
                            },
                        ));
                    }
                }
                NeighState::Reachable if now.duration_since(n.updated) >= reach => {
                    n.state = NeighState::Probe;
                    n.probes = 1;
                    n.last_probe = now;
                    probe.push((*k, n.mac));
                }
                _ => {}
            }
        }
        for ((port, ip), mac) in probe {
            self.send_arp_request(port, ip, mac);
        }
        for (port, ip) in failed {
            self.fib.resolve(port, ip, None);
            if self.origins.get(&(u32::from(ip), 32)) == Some(&RouteOrigin::Neighbour) {
                let _ = self.fib.del(ip, 32);
                self.origins.remove(&(u32::from(ip), 32));
            }
            if let Some(q) = self.held.remove(&(port, ip)) {
                self.held_total -= q.len();
                for b in q {
                    self.counters.resolve_failed.inc();
                    self.counters.icmp_unreachable.inc();
                    self.icmp_error(&b, icmp::kind::DEST_UNREACHABLE, icmp::unreach::HOST, 0);
                }
            }
        }
        // Forget failed neighbours after a while so the table stays bounded.
        self.neigh.retain(|_, n| {
            !(n.state == NeighState::Failed && now.duration_since(n.updated) > reach)
        });
    }

    /// Read the config file again and apply it: routes (the config's own, not those added by
    /// `routerctl`), the log filter, the ICMP rate, the applications' live settings. A file that does not load, or that changes
    /// anything else, is refused with the reason (the key that needs a restart); the running
    /// config stays as it was.
    fn reload(&mut self) -> Response {
        let t0 = Instant::now();
        let r = self.try_reload();
        match &r {
            Ok(_) => self.reloads.0 += 1,
            Err(e) => {
                self.reloads.1 += 1;
                self.reloads.2 = Some(e.clone());
            }
        }
        match r {
            Ok(mut v) => {
                v["ms"] = json!(t0.elapsed().as_secs_f64() * 1000.0);
                Response::ok(v)
            }
            Err(e) => Response::err(e),
        }
    }

    fn try_reload(&mut self) -> Result<serde_json::Value, String> {
        let path = self
            .cfg
            .source
            .as_ref()
            .map(|s| s.path.clone())
            .ok_or("the router was not started from a config file")?;
        // (Its errors name the file; a TOML error's snippet is folded onto one line.)
        let new = Config::load(&path).map_err(|e| {
            let e = e.to_string();
            let lines: Vec<&str> = e.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            format!("{}; nothing changed", lines.join(" "))
        })?;
        if let Some(key) = self.cfg.needs_restart(&new) {
            return Err(format!(
                "{key} changed, which needs a restart; nothing changed"
            ));
        }
        let specs = new
            .initial_routes()
            .map_err(|e| format!("{e}; nothing changed"))?;
        let want = config_routes(&specs);
        // Room for the routes first, so that a reload is applied whole or not at all.
        let (need, have) = (new.tbl8_blocks(&specs), self.fib.tbl8_groups());
        if need > have {
            return Err(format!(
                "the routes need {need} tbl8 groups and the router has {have} (sized at start: \
                 restart to grow it); nothing changed"
            ));
        }
        let grown = want.len().saturating_sub(self.config_routes.len());
        if self.fib.len() + grown > self.cfg.fib.max_routes {
            return Err(format!(
                "{} more routes would exceed fib.max_routes ({}); nothing changed",
                grown, self.cfg.fib.max_routes
            ));
        }
        // The applications' live settings are checked before anything is applied.
        let new_ref = &new;
        self.with_apps(|apps, _| apps.iter_mut().try_for_each(|a| a.prepare_reload(new_ref)))
            .map_err(|e| format!("{e}; nothing changed"))?;
        if new.log.level != self.cfg.log.level {
            (self.set_log_level)(&new.log.level)
                .map_err(|e| format!("log.level: {e}; nothing changed"))?;
        }
        let (mut added, mut changed, mut removed) = (0usize, 0usize, 0usize);
        let gone: Vec<(u32, u8)> = self
            .config_routes
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for (ip, len) in gone {
            // Only while it is still the config's (routerctl may have replaced it since).
            if self.origins.get(&(ip, len)) == Some(&RouteOrigin::Static)
                && self.fib.del(Ipv4Addr::from(ip), len).is_ok()
            {
                self.origins.remove(&(ip, len));
                removed += 1;
            }
        }
        let mut failed = None;
        for s in specs {
            let key = (u32::from(s.prefix), s.len);
            match self.config_routes.get(&key) {
                Some(t) if *t == s.target && self.origins.contains_key(&key) => continue,
                Some(_) => changed += 1,
                None => added += 1,
            }
            if let Err(e) = add_route(&mut self.fib, &mut self.origins, s, RouteOrigin::Static) {
                failed = Some(format!("{}/{}: {e}", s.prefix, s.len));
                break;
            }
        }
        self.config_routes = want;
        let level = new.log.level.clone();
        self.cfg.take_live(new);
        let mut v = json!({"file": path.display().to_string(), "routes_added": added,
                       "routes_changed": changed, "routes_removed": removed,
                       "routes": self.fib.len(), "log_level": level});
        let applied: Vec<(&'static str, serde_json::Value)> = self.with_apps(|apps, ctx| {
            apps.iter_mut()
                .filter_map(|a| a.commit_reload(ctx).map(|r| (a.name(), r)))
                .collect()
        });
        for (name, r) in applied {
            v[name] = r;
        }
        match failed {
            None => Ok(v),
            Some(e) => Err(format!(
                "route {e} (after {added} added, {changed} changed, {removed} removed)"
            )),
        }
    }

    /// Aggregated statistics.
    pub fn stats(&self) -> serde_json::Value {
        let cores: Vec<_> = self.cores.iter().map(|c| c.snapshot()).collect();
        let ports: Vec<_> = self
            .be
            .ports()
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let (mut rx, mut tx, mut rxb, mut txb, mut full) = (0, 0, 0, 0, 0);
                for c in &cores {
                    if let Some(p) = c.ports.get(i) {
                        rx += p.rx;
                        tx += p.tx;
                        rxb += p.rx_bytes;
                        txb += p.tx_bytes;
                        full += p.tx_full;
                    }
                }
                json!({"port": i, "name": self.ports.get(i).map(|p| p.name.clone()), "device": d.device,
                       "rx": rx, "tx": tx, "rx_bytes": rxb, "tx_bytes": txb, "tx_full": full,
                       "driver": self.be.driver_stats(i as u16)})
            })
            .collect();
        let c = &self.counters;
        let mut mgmt = counter_json!(
            c,
            arp_requests_sent,
            arp_learned,
            held,
            hold_full,
            released,
            resolve_failed,
            icmp_time_exceeded,
            icmp_unreachable,
            icmp_frag_needed,
            icmp_rate_limited,
            fragmented,
            no_route,
            inject_full,
            alloc_failed,
            local_dropped,
            admin_requests,
            admin_errors,
            application_unhandled,
            broadcast_in
        );
        mgmt["punts"] = PuntReason::ALL
            .iter()
            .map(|r| (r.name().to_string(), json!(c.punts[*r as usize].get())))
            .collect();
        mgmt["held_now"] = json!(self.held_total);
        mgmt["reloads"] = json!(self.reloads.0);
        mgmt["reloads_refused"] = json!(self.reloads.1);
        let mut v = json!({
            "uptime_secs": self.started.elapsed().as_secs_f64(),
            "ports": ports,
            "cores": cores,
            "mgmt": mgmt,
            "fib": {"routes": self.fib.len(), "tbl8_used": self.fib.tbl8_used(), "tbl8_groups": self.fib.tbl8_groups(),
                    "next_hops": self.fib.next_hops().len(), "leaked_tbl8": self.fib.leaked_tbl8},
            "mempool_free": self.be.pool_free(),
        });
        if let Some(o) = v.as_object_mut() {
            o.extend(self.app_stats());
        }
        v
    }

    /// Each application's section of the statistics (null for those not configured).
    fn app_stats(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut out = Vec::new();
        let ctx = MgmtCtx {
            now_ms: self.now_ms(),
            room: 0,
            ports: &self.ports,
            router: &self.stage,
            cores: &self.cores,
            out: &mut out,
            unhandled: 0,
        };
        let mut m: serde_json::Map<_, _> = crate::apps::NAMES
            .iter()
            .map(|n| (n.to_string(), serde_json::Value::Null))
            .collect();
        for a in &self.apps {
            m.insert(a.name().to_string(), a.stats(&ctx));
        }
        m
    }

    /// Answer one admin request.
    pub fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Status => Response::ok(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_secs": self.started.elapsed().as_secs_f64(),
                "backend": self.cfg.dataplane.backend,
                "placement": self.cfg.dataplane.placement,
                "workers": self.cfg.dataplane.workers,
                "ports": self.ports.len(),
                "routes": self.fib.len(),
                "neighbours": self.neigh.len(),
                "metrics": self.metrics_addr.map(|a| format!("http://{a}/metrics")),
            })),
            Request::Ports => {
                let devs = self.be.ports();
                let ifs = self.cfg.interfaces();
                Response::ok(json!(self
                    .ports
                    .iter()
                    .zip(&ifs)
                    .enumerate()
                    .filter_map(|(i, (p, f))| {
                        let d = devs.get(usize::from(f.port))?;
                        Some(json!({"port": i, "name": p.name, "device": d.device, "driver": d.driver,
                            "mac": p.mac.to_string(), "mtu": p.mtu,
                            "addresses": p.addrs.iter().map(|(a, l)| format!("{a}/{l}")).collect::<Vec<_>>(),
                            "vlan": f.vlan, "on": f.vlan.map(|_| self.ports.get(usize::from(f.port)).map(|x| x.name.clone())),
                            "rx_queues": d.rx_queues, "tx_queues": d.tx_queues}))
                    })
                    .collect::<Vec<_>>()))
            }
            Request::Stats => Response::ok(self.stats()),
            Request::RouteAdd {
                prefix,
                via,
                port,
                blackhole,
            } => {
                match self
                    .cfg
                    .resolve_route(&prefix, via, port.as_deref(), blackhole)
                {
                    Ok(spec) => {
                        if matches!(
                            self.origins.get(&(u32::from(spec.prefix), spec.len)),
                            Some(RouteOrigin::Connected | RouteOrigin::Local)
                        ) {
                            return Response::err(format!(
                                "{}/{} is a connected or local route",
                                spec.prefix, spec.len
                            ));
                        }
                        match add_route(&mut self.fib, &mut self.origins, spec, RouteOrigin::Static)
                        {
                            Ok(()) => Response::ok(
                                json!({"added": format!("{}/{}", spec.prefix, spec.len)}),
                            ),
                            Err(e) => Response::err(e),
                        }
                    }
                    Err(e) => Response::err(e),
                }
            }
            Request::RouteDel { prefix } => {
                let Some((ip, len)) = packet::ipv4::parse_prefix(&prefix) else {
                    return Response::err(format!("{prefix:?} is not a prefix"));
                };
                let ip = Ipv4Addr::from(u32::from(ip) & packet::ipv4::mask(len));
                match self.origins.get(&(u32::from(ip), len)) {
                    Some(RouteOrigin::Static | RouteOrigin::Neighbour) => {
                        match self.fib.del(ip, len) {
                            Ok(()) => {
                                self.origins.remove(&(u32::from(ip), len));
                                Response::ok(json!({"deleted": format!("{ip}/{len}")}))
                            }
                            Err(e) => Response::err(e.to_string()),
                        }
                    }
                    Some(o) => Response::err(format!(
                        "{ip}/{len} is a {o:?} route; change the port addresses instead"
                    )),
                    None => Response::err(format!("no route {ip}/{len}")),
                }
            }
            Request::RouteList { limit } => {
                let routes = self.fib.routes();
                let total = routes.len();
                let hops = self.fib.view();
                let list: Vec<_> = routes
                    .into_iter()
                    .take(limit.unwrap_or(10_000))
                    .map(|r| {
                        let nh = hops.next_hops.get(r.next_hop);
                        json!({
                            "prefix": format!("{}/{}", r.prefix, r.len),
                            "origin": self.origins.get(&(u32::from(r.prefix), r.len)),
                            "kind": nh.map(|n| n.kind),
                            "via": nh.filter(|n| n.kind == NextHopKind::Gateway).map(|n| n.gateway.to_string()),
                            "port": nh.and_then(|n| self.ports.get(usize::from(n.port)).map(|p| p.name.clone())),
                            "resolved": nh.map(|n| n.mac.is_some()),
                        })
                    })
                    .collect();
                Response::ok(json!({"total": total, "routes": list}))
            }
            Request::NeighList => {
                let mut v: Vec<_> = self
                    .neigh
                    .iter()
                    .map(|((port, ip), n)| {
                        json!({"address": ip.to_string(),
                               "port": self.ports.get(usize::from(*port)).map(|p| p.name.clone()),
                               "mac": n.mac.map(|m| m.to_string()), "state": n.state,
                               "age_secs": n.updated.elapsed().as_secs_f64(),
                               "held": self.held.get(&(*port, *ip)).map_or(0, |q| q.len())})
                    })
                    .collect();
                v.sort_by(|a, b| a["address"].as_str().cmp(&b["address"].as_str()));
                Response::ok(json!(v))
            }
            Request::LogLevel { level } => match (self.set_log_level)(&level) {
                Ok(()) => Response::ok(json!({"level": level})),
                Err(e) => Response::err(e),
            },
            Request::Reload => self.reload(),
            Request::App(r) => self
                .with_apps(|apps, ctx| apps.iter_mut().find_map(|a| a.request(ctx, &r)))
                .unwrap_or_else(|| Response::err(r.not_configured())),
        }
    }
}

/// The config's routes by prefix, as a reload compares them.
pub fn config_routes(specs: &[RouteSpec]) -> HashMap<(u32, u8), RouteTarget> {
    specs
        .iter()
        .map(|s| ((u32::from(s.prefix), s.len), s.target))
        .collect()
}

/// Add a validated route to the FIB, recording its origin.
pub fn add_route(
    fib: &mut Fib,
    origins: &mut HashMap<(u32, u8), RouteOrigin>,
    s: RouteSpec,
    origin: RouteOrigin,
) -> Result<(), String> {
    let nh = match s.target {
        RouteTarget::Via { gateway, port } => fib.next_hop_ref(NextHopKind::Gateway, port, gateway),
        RouteTarget::Port(port) => {
            fib.next_hop_ref(NextHopKind::Connected, port, Ipv4Addr::UNSPECIFIED)
        }
        RouteTarget::Blackhole => {
            fib.next_hop_ref(NextHopKind::Blackhole, 0, Ipv4Addr::UNSPECIFIED)
        }
    }
    .map_err(|e| e.to_string())?;
    if let Err(e) = fib.add(s.prefix, s.len, nh) {
        fib.next_hop_unref(nh);
        return Err(e.to_string());
    }
    origins.insert((u32::from(s.prefix), s.len), origin);
    Ok(())
}
