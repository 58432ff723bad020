//! The interface between the router and its applications. The engine knows an
//! application's fast path only through [`WorkerApp`]: the IPv4 input hands each the packets it claims
//! ([`packet::claim`]), already validated, and the application publishes its counters and
//! hands what its management-core side needs over rings of its own. The management core
//! knows the other side only through [`MgmtApp`]. The registry
//! ([`crate::apps`]) is the one place that names the applications.

use crate::admin::Response;
use crate::apps::AppRequest;
use crate::counters::{CoreCounters, CoreSnapshot, Counter};
use crate::ipv4::{Ipv4Stage, PortInfo};
use packet::claim::{Claim, Claimed};
use packet::{Buffer, Verdict};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// One application's stage on one worker.
pub trait WorkerApp<T: Buffer>: Send + std::fmt::Debug {
    /// Stage name (counters, stats).
    fn name(&self) -> &'static str;
    /// Its drop reasons' names.
    fn drop_names(&self) -> &'static [&'static str];
    /// How many counters it publishes per core ([`WorkerApp::publish`]).
    fn counter_width(&self) -> usize;
    /// What it owns.
    fn claims(&self) -> Vec<Claim>;
    /// Process the packets of a burst it claims (see [`packet::claim::ClaimingStage::process_claimed`]);
    /// `now_ms` is the engine's coarse clock.
    fn process(
        &mut self,
        pkts: &mut [T],
        claimed: &[Claimed],
        verdicts: &mut [Verdict],
        now_ms: u64,
    );
    /// After a burst it processed: publish its counters into `out` (this core's, `counter_width`
    /// of them) and hand its events to the management core (a full ring is counted in
    /// `core.ring_full`).
    fn publish(&mut self, out: &[Counter], core: &CoreCounters);
    /// The copy worker `worker` runs (its own tables, counters and rings).
    fn for_worker(&self, worker: usize) -> Box<dyn WorkerApp<T>>;
    /// Which of `workers` run-to-completion workers must process a claimed packet: the one
    /// whose per-worker tables hold its state (a call and its reply meet there). `None`: any
    /// worker (the one that received it). The engine hands the packet over when it is another.
    fn owner(&self, _frame: &[u8], _claimed: &Claimed, _workers: usize) -> Option<usize> {
        None
    }
    /// UDP ports of ONC RPC traffic it owns: the split placement steers those by xid, so a
    /// call and its reply meet on one worker.
    fn rpc_ports(&self) -> Vec<u16> {
        Vec::new()
    }
}

/// Publish `values` into `out` (a core's counters of one application).
#[inline]
pub fn publish_values(out: &[Counter], values: impl IntoIterator<Item = u64>) {
    for (dst, v) in out.iter().zip(values) {
        dst.set(v);
    }
}

/// What an application's management-core side hands the router to send.
#[derive(Debug)]
pub enum Output {
    /// A UDP datagram from (address, port) to (address, port).
    Udp {
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        payload: Vec<u8>,
    },
    /// An IP packet of protocol `proto` (`payload` follows the IP header the router builds,
    /// fragmented when larger than the path's MTU).
    Ip {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        payload: Vec<u8>,
    },
    /// A whole IPv4 datagram (its header included), routed as it is.
    Datagram(Vec<u8>),
    /// An Ethernet frame (as it came in on `port`), routed.
    Frame { frame: Vec<u8>, port: u16 },
}

/// What the management core lends an application for one call: the clock, the ports, the
/// routes (read only), the cores' counters, and where to put what it sends.
#[derive(Debug)]
pub struct MgmtCtx<'a> {
    /// Milliseconds since the router started (the clock the workers read).
    pub now_ms: u64,
    /// How many more frames the inject ring takes now (what an application that can hold
    /// its output back, a TCP stack, should send at most).
    pub room: usize,
    pub ports: &'a [PortInfo],
    pub(crate) router: &'a Ipv4Stage,
    pub(crate) cores: &'a [Arc<CoreCounters>],
    pub(crate) out: &'a mut Vec<Output>,
    /// Packets that were the application's that it could not answer (the management core's
    /// `application_unhandled`).
    pub unhandled: u64,
}

impl MgmtCtx<'_> {
    /// Queue a packet to send.
    pub fn send(&mut self, o: Output) {
        self.room = self.room.saturating_sub(1);
        self.out.push(o);
    }
    /// Queue a UDP datagram.
    pub fn udp(&mut self, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: Vec<u8>) {
        self.send(Output::Udp { src, dst, payload });
    }
    /// Every core's counters, as they are now.
    pub fn cores(&self) -> Vec<CoreSnapshot> {
        self.cores.iter().map(|c| c.snapshot()).collect()
    }
    /// The router's address to send from towards `dst`: one of the output port's, on the
    /// next hop's subnet when it has several.
    pub fn source_for(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let nh = self.router.next_hop(dst)?;
        let port = self.ports.get(usize::from(nh.port))?;
        let hop = if nh.gateway.is_unspecified() {
            dst
        } else {
            nh.gateway
        };
        let on = |a: Ipv4Addr, l: u8| {
            let m = packet::ipv4::mask(l);
            u32::from(a) & m == u32::from(hop) & m
        };
        port.addrs
            .iter()
            .find(|(a, l)| on(*a, *l))
            .or(port.addrs.first())
            .map(|(a, _)| *a)
    }
    /// The first address of `port`.
    pub fn port_address(&self, port: u16) -> Option<Ipv4Addr> {
        self.ports
            .get(usize::from(port))
            .and_then(|p| p.addrs.first())
            .map(|a| a.0)
    }
}

/// One application's side on the management core: the packets its stage punts and those
/// sent to the router it owns, its timers, its admin requests and its statistics. Each hook
/// returns whether the packet was the application's; the management core offers a packet to
/// the applications in the registry's order and handles it itself when none takes it.
pub trait MgmtApp {
    /// Its section in the statistics (and in the config file).
    fn name(&self) -> &'static str;
    /// A frame to one of the router's addresses, before the router's own protocols (ICMP
    /// errors for closed ports) see it.
    fn local(&mut self, _ctx: &mut MgmtCtx, _frame: &[u8], _port: u16) -> bool {
        false
    }
    /// A broadcast delivered to the router (the limited one, or the receiving link's).
    fn broadcast(&mut self, _ctx: &mut MgmtCtx, _frame: &[u8], _port: u16) -> bool {
        false
    }
    /// A frame an application stage punted to the management core.
    fn punted(&mut self, _ctx: &mut MgmtCtx, _frame: &[u8], _port: u16) -> bool {
        false
    }
    /// Each turn of the management loop. Returns how much work it did (0: idle).
    fn poll(&mut self, _ctx: &mut MgmtCtx) -> usize {
        0
    }
    /// Every 100 ms.
    fn timer(&mut self, _ctx: &mut MgmtCtx) {}
    /// A reload (SIGHUP, `routerctl reload`) with config `new`: check what it changes of
    /// this application's live settings ([`crate::apps::LIVE_KEYS`]), keeping the result for
    /// [`MgmtApp::commit_reload`]. An error refuses the whole reload (nothing changed).
    fn prepare_reload(&mut self, _new: &crate::config::Config) -> Result<(), String> {
        Ok(())
    }
    /// Apply what [`MgmtApp::prepare_reload`] checked; what changed, for the reload's answer.
    fn commit_reload(&mut self, _ctx: &mut MgmtCtx) -> Option<serde_json::Value> {
        None
    }
    /// Its section of `routerctl stats`.
    fn stats(&self, ctx: &MgmtCtx) -> serde_json::Value;
    /// An admin request; None when it is another application's.
    fn request(&mut self, ctx: &mut MgmtCtx, req: &AppRequest) -> Option<Response>;
    /// The router is stopping.
    fn stop(&mut self) {}
}

/// An unfragmented UDP datagram's (source, destination) addresses and ports, and payload.
#[allow(clippy::type_complexity)]
pub fn udp_datagram(datagram: &[u8]) -> Option<((Ipv4Addr, u16), (Ipv4Addr, u16), &[u8])> {
    let ip = packet::ipv4::Ipv4Packet::new_checked(datagram).ok()?;
    if ip.protocol() != packet::ipv4::protocol::UDP || ip.is_fragment() {
        return None;
    }
    let hl = usize::from(ip.header_len());
    let total = usize::from(ip.total_len()).min(datagram.len());
    let seg = datagram.get(hl..total)?;
    let udp = packet::udp::UdpPacket::new_checked(seg).ok()?;
    let (src, dst) = (
        (ip.src_addr(), udp.src_port()),
        (ip.dst_addr(), udp.dst_port()),
    );
    Some((
        src,
        dst,
        seg.get(packet::udp::HEADER_LEN..usize::from(udp.len()))?,
    ))
}
