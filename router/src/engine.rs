//! The lcores: workers running the pipeline over bursts in either placement, joined to the
//! management core by SPSC rings (punt: worker → management; inject: management → the thread
//! that owns the TX queues).
//!
//! `run-to-completion`: worker `w` polls RX queue `w` of every port, runs the stages, and
//! transmits on TX queue `w`. `split`: one I/O thread polls RX queue 0 of every port and steers
//! each packet to a worker ring by a hash of its addresses (so a flow stays on one worker);
//! workers run the stages and hand packets back on per-worker TX rings; the I/O thread
//! transmits on TX queue 0.

use crate::app::WorkerApp;
use crate::config::{Config, Placement};
use crate::counters::{CoreCounters, StageCounters};
use crate::ipv4::Parsed;
use crate::ipv4::{Ipv4Drop, Ipv4Stage};
use crate::port::Backend;
use crate::qsbr::Qsbr;
use crate::vlan::VlanMap;
use packet::claim::{ClaimSet, Claimed, Flow};
use packet::{Buffer, DropReason, PuntReason, Stage, Verdict};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A packet handed to the management core.
#[derive(Debug)]
pub struct Punted<T> {
    pub reason: PuntReason,
    pub buf: T,
}

/// Management core's ends of the rings.
#[derive(Debug)]
pub struct MgmtRings<T> {
    pub punt: Vec<rtrb::Consumer<Punted<T>>>,
    pub inject: rtrb::Producer<T>,
}

/// Idle back-off: spin a while, then sleep with a growing interval up to the bound.
#[derive(Debug)]
struct Backoff {
    polls: u64,
    idle_polls: u32,
    sleep_us: u64,
    max_us: u64,
}

impl Backoff {
    fn new(max_us: u64) -> Self {
        Backoff {
            polls: 0,
            idle_polls: 0,
            sleep_us: 0,
            max_us,
        }
    }
    #[inline]
    fn busy(&mut self) {
        self.idle_polls = 0;
        self.sleep_us = 0;
    }
    /// The start of a poll-loop iteration: timed when it is a sampled one.
    #[inline]
    fn before_poll(&mut self, c: &CoreCounters) -> Option<Instant> {
        c.polls.inc();
        self.polls = self.polls.wrapping_add(1);
        self.polls.is_multiple_of(TIMING_SAMPLE).then(Instant::now)
    }

    /// Account one poll-loop iteration that handled `got` packets (its time when `t0`, the
    /// sampled ones); sleeps when idle long enough.
    #[inline]
    fn after_poll(&mut self, got: usize, t0: Option<Instant>, c: &CoreCounters) {
        if got > 0 {
            c.busy_polls.inc();
            if let Some(t0) = t0 {
                c.loop_ns.add(t0.elapsed().as_nanos() as u64);
                c.timed_loops.inc();
            }
            self.busy();
        } else if self.idle() {
            c.idle_sleeps.inc();
        }
    }

    /// Returns true when it slept.
    #[inline]
    fn idle(&mut self) -> bool {
        if self.max_us == 0 {
            return false;
        }
        self.idle_polls += 1;
        if self.idle_polls < 256 {
            return false;
        }
        self.sleep_us = (self.sleep_us * 2).clamp(8, self.max_us);
        std::thread::sleep(Duration::from_micros(self.sleep_us));
        true
    }
}

/// The stages every worker runs: the IPv4 input (every packet's header checks, once), the
/// applications over the packets each claims, then routing of everything still undecided.
#[derive(Debug)]
pub struct Pipeline<T: Buffer> {
    pub ipv4: Ipv4Stage,
    /// The applications, in claim order (see [`crate::apps`]).
    apps: Vec<Box<dyn WorkerApp<T>>>,
    claims: ClaimSet,
    /// Coarse clock (ms) the management core advances; stages read it instead of the system
    /// clock.
    pub clock: Arc<AtomicU64>,
    scratch: Box<Scratch>,
    /// This worker, and how many run-to-completion workers share the packets (1: no
    /// handoff — one worker, or split placement, whose I/O lcore steers by flow and xid).
    worker: usize,
    workers: usize,
}

/// Per-worker scratch of a burst.
#[derive(Debug)]
struct Scratch {
    /// Each packet's destination, for the route pass.
    dst: [u32; MAX_BURST],
    nh: [u32; MAX_BURST],
    /// Each application's claimed packets of the burst.
    claimed: Vec<Vec<Claimed>>,
}

impl Scratch {
    fn new(apps: usize) -> Box<Self> {
        Box::new(Scratch {
            dst: [0; MAX_BURST],
            nh: [0; MAX_BURST],
            claimed: (0..apps).map(|_| Vec::with_capacity(MAX_BURST)).collect(),
        })
    }
}

/// The clock, for the sampled bursts: out of line and cold, so that timing code stays out of
/// the stages' hot loop.
#[cold]
#[inline(never)]
fn clock_now() -> Instant {
    Instant::now()
}

#[cold]
#[inline(never)]
fn ns_since(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}

#[cold]
#[inline(never)]
fn timed_stage(s: &StageCounters, ns: u64, packets: usize) {
    s.busy_ns.add(ns);
    s.timed_packets.add(packets as u64);
}

/// Index of the IPv4 stage's counters in `CoreCounters::stages`; application `k`'s are at
/// `IPV4 + 1 + k`.
const IPV4: usize = 0;

/// What the claim lookup needs of a packet the IPv4 input found valid, and where its transport
/// header is. `None` when no claim could match (the common case: a protocol bitmap and an
/// address filter, no port read).
#[inline(always)]
fn flow_of(claims: &ClaimSet, f: &[u8]) -> Option<(Flow, u16)> {
    let h = f.first_chunk::<34>()?;
    let (src, dst) = (
        u32::from_be_bytes([h[26], h[27], h[28], h[29]]),
        u32::from_be_bytes([h[30], h[31], h[32], h[33]]),
    );
    if !claims.maybe(h[23], src, dst) {
        return None;
    }
    let l4 = 14 + usize::from(h[14] & 0x0f) * 4;
    let end = 14 + usize::from(u16::from_be_bytes([h[16], h[17]]));
    let fragment = u16::from_be_bytes([h[20], h[21]]) & 0x3fff != 0;
    let (sport, dport) = match f.get(l4..l4 + 4) {
        Some(p) if !fragment && l4 + 4 <= end => (
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ),
        _ => (0, 0),
    };
    let flow = Flow {
        src,
        dst,
        protocol: h[23],
        fragment,
        sport,
        dport,
    };
    Some((flow, l4 as u16))
}

impl<T: Buffer> Pipeline<T> {
    pub fn new(ipv4: Ipv4Stage, apps: Vec<Box<dyn WorkerApp<T>>>, clock: Arc<AtomicU64>) -> Self {
        let mut claims = ClaimSet::default();
        for (k, a) in apps.iter().enumerate() {
            claims.add(k as u8, a.claims());
        }
        let scratch = Scratch::new(apps.len());
        Pipeline {
            ipv4,
            apps,
            claims,
            clock,
            scratch,
            worker: 0,
            workers: 1,
        }
    }

    /// The copy worker `w` of `workers` handing packets to each other runs.
    fn for_worker(&self, w: usize, workers: usize) -> Self {
        Pipeline {
            ipv4: self.ipv4.clone(),
            apps: self.apps.iter().map(|a| a.for_worker(w)).collect(),
            claims: self.claims.clone(),
            clock: self.clock.clone(),
            scratch: Scratch::new(self.apps.len()),
            worker: w,
            workers,
        }
    }

    /// Counters for this pipeline's stages (IPv4 first, then each application's).
    pub fn stage_counters(&self) -> Vec<StageCounters> {
        let mut v = vec![StageCounters::new(Ipv4Stage::NAME, Ipv4Drop::NAMES)];
        v.extend(
            self.apps
                .iter()
                .map(|a| StageCounters::new(a.name(), a.drop_names())),
        );
        v
    }

    /// Each application's name and number of counters.
    fn app_counters(&self) -> Vec<(&'static str, usize)> {
        self.apps
            .iter()
            .map(|a| (a.name(), a.counter_width()))
            .collect()
    }

    /// Count what one stage decided: verdicts it changed from Next (drops, punts, transmits);
    /// `undecided` says which entries were still undecided when the stage ran.
    #[inline]
    fn count(s: &StageCounters, verdicts: &[Verdict], undecided: &[bool]) {
        let mut forwarded = 0;
        for (v, _) in verdicts.iter().zip(undecided).filter(|(_, &u)| u) {
            match *v {
                Verdict::Tx(_) => forwarded += 1,
                Verdict::Drop(r) => s.drop(r),
                Verdict::Punt(r) => s.punt(r),
                Verdict::Next | Verdict::Handoff(_) => {}
            }
        }
        s.forwarded.add(forwarded);
    }

    /// Run the pipeline over a burst, one verdict per packet, and count: the IPv4 input over
    /// every packet, each application over the packets it claims (those another worker must
    /// process are handed to it), then the route pass over the packets still undecided (Next).
    /// `handed`: the burst came from another worker's handoff (already counted there, and
    /// processed here whoever the owner). `timed`: each stage's time is measured (a sampled
    /// burst): the IPv4 stage's is its input and route passes, an application's its own.
    #[inline]
    fn process_burst(
        &mut self,
        pkts: &mut [T],
        verdicts: &mut [Verdict],
        undecided: &mut [bool],
        c: &CoreCounters,
        handed: bool,
        timed: bool,
    ) {
        let t_in = timed.then(clock_now);
        let n = pkts.len().min(MAX_BURST);
        let (pkts, verdicts, undecided) = (&mut pkts[..n], &mut verdicts[..n], &mut undecided[..n]);
        verdicts.fill(Verdict::Next);
        undecided.fill(true);
        let sc = &mut *self.scratch;
        for cl in &mut sc.claimed {
            cl.clear();
        }
        let s = &c.stages[IPV4];
        if !handed {
            s.packets.add(n as u64);
        }
        let mut any_claimed = false;
        let no_claims = self.claims.is_empty();
        for i in 0..n {
            let d = match self.ipv4.parse(&mut pkts[i]) {
                Parsed::Done(v) => {
                    verdicts[i] = v;
                    continue;
                }
                Parsed::Lookup(d) => d,
            };
            sc.dst[i] = d;
            if no_claims {
                self.ipv4.prefetch_route::<T>(d);
                continue;
            }
            let claim = flow_of(&self.claims, pkts[i].data())
                .and_then(|(f, l4)| Some((self.claims.lookup(&f)?, f, l4)));
            let Some((app, f, l4_at)) = claim else {
                self.ipv4.prefetch_route::<T>(d);
                continue;
            };
            // Claimed packets are rewritten and sent on: one whose TTL would expire on the
            // way out is answered here, before any application acts on it.
            if pkts[i].data().get(22).is_none_or(|&ttl| ttl <= 1) {
                verdicts[i] = Verdict::Punt(PuntReason::TtlExceeded);
                continue;
            }
            if let Some(cl) = sc.claimed.get_mut(usize::from(app)) {
                any_claimed = true;
                cl.push(Claimed {
                    index: i as u16,
                    ip_at: packet::ethernet::HEADER_LEN as u16,
                    l4_at,
                    fragment: f.fragment,
                });
            }
        }
        let ipv4_ns = t_in.map_or(0, ns_since);
        // `undecided[i]`: the IPv4 stage owns packet i's verdict (counted once, at the end):
        // decided by the input, or routed; not the packets an application decided.
        if any_claimed {
            let now = self.clock.load(Ordering::Relaxed);
            let (me, workers) = (self.worker, self.workers);
            for (k, app) in self.apps.iter_mut().enumerate() {
                let (Some(cl), Some(st), Some((_, out))) = (
                    sc.claimed.get_mut(k),
                    c.stages.get(IPV4 + 1 + k),
                    c.apps.get(k),
                ) else {
                    continue;
                };
                if workers > 1 && !handed {
                    cl.retain(|e| {
                        let i = usize::from(e.index);
                        match app.owner(pkts[i].data(), e, workers) {
                            Some(w) if w != me => {
                                verdicts[i] = Verdict::Handoff(w as u16);
                                undecided[i] = false;
                                false
                            }
                            _ => true,
                        }
                    });
                }
                if cl.is_empty() {
                    continue;
                }
                st.packets.add(cl.len() as u64);
                let t_app = timed.then(clock_now);
                app.process(pkts, cl, verdicts, now);
                if let Some(t) = t_app {
                    timed_stage(st, ns_since(t), cl.len());
                }
                let mut forwarded = 0;
                for e in cl {
                    let i = usize::from(e.index);
                    match verdicts[i] {
                        Verdict::Next => {
                            // The application may have rewritten the destination.
                            if let Some(h) = pkts[i].data().get(30..34) {
                                sc.dst[i] = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                                self.ipv4.prefetch_route::<T>(sc.dst[i]);
                            }
                            continue;
                        }
                        Verdict::Tx(_) => forwarded += 1,
                        Verdict::Drop(r) => st.drop(r),
                        Verdict::Punt(r) => st.punt(r),
                        Verdict::Handoff(_) => {}
                    }
                    undecided[i] = false;
                }
                st.forwarded.add(forwarded);
                app.publish(out, c);
            }
        }
        let t_route = timed.then(clock_now);
        self.ipv4
            .route_pass(pkts, verdicts, &sc.dst[..n], &mut sc.nh[..n]);
        Self::count(s, verdicts, undecided);
        if let Some(t) = t_route {
            timed_stage(s, ipv4_ns + ns_since(t), n);
        }
    }
}

/// Per-thread TX staging: one burst buffer per port.
struct TxStage<T> {
    per_port: Vec<Vec<T>>,
    burst: usize,
    /// Frames to a VLAN interface leave its port tagged.
    vlans: Arc<VlanMap>,
}

impl<T: Buffer> TxStage<T> {
    fn new(ports: usize, burst: usize, vlans: Arc<VlanMap>) -> Self {
        TxStage {
            per_port: (0..ports).map(|_| Vec::with_capacity(burst * 2)).collect(),
            burst,
            vlans,
        }
    }
    #[inline]
    fn push<B: Backend<Buf = T>>(
        &mut self,
        be: &B,
        queue: u16,
        port: u16,
        mut pkt: T,
        c: &CoreCounters,
    ) {
        let Some((port, q)) = self
            .vlans
            .egress(port, &mut pkt)
            .and_then(|p| Some((p, self.per_port.get_mut(usize::from(p))?)))
        else {
            c.stages[0].drop(Ipv4Drop::BadPort.index());
            return;
        };
        q.push(pkt);
        if q.len() >= self.burst {
            Self::flush_one(be, queue, port, q, c);
        }
    }
    #[inline]
    fn flush_one<B: Backend<Buf = T>>(
        be: &B,
        queue: u16,
        port: u16,
        q: &mut Vec<T>,
        c: &CoreCounters,
    ) {
        let pc = &c.ports[usize::from(port)];
        let bytes: usize = q.iter().map(|b| b.len()).sum();
        let want = q.len();
        let sent = be.tx_burst(port, queue, q);
        pc.tx.add(sent as u64);
        if sent == want {
            pc.tx_bytes.add(bytes as u64);
        } else {
            let left: usize = q.iter().map(|b| b.len()).sum();
            pc.tx_bytes.add((bytes - left) as u64);
            pc.tx_full.add((want - sent) as u64);
            q.clear();
        }
    }
    fn flush<B: Backend<Buf = T>>(&mut self, be: &B, queue: u16, c: &CoreCounters) {
        for (port, q) in self.per_port.iter_mut().enumerate() {
            if !q.is_empty() {
                Self::flush_one(be, queue, port as u16, q, c);
            }
        }
    }
}

/// Running engine threads.
#[derive(Debug)]
pub struct Engine {
    threads: Vec<JoinHandle<()>>,
    pub stop: Arc<AtomicBool>,
    pub counters: Vec<Arc<CoreCounters>>,
    pub qsbr: Arc<Qsbr>,
}

fn pin(cpu: Option<usize>, enabled: bool) {
    if let (Some(cpu), true) = (cpu, enabled) {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            tracing::warn!("could not pin thread to cpu {cpu}");
        }
    }
}

/// Steering hash for the split placement: keeps one flow (address pair) on one worker.
#[inline]
fn steer_hash(frame: &[u8], rpc_ports: &[u16]) -> u32 {
    // ONC RPC over UDP on the ports applications name (`WorkerApp::rpc_ports`): a call and its
    // reply share only the xid.
    if frame.len() >= 46
        && frame[12] == 0x08
        && frame[13] == 0x00
        && frame[14] == 0x45
        && frame[23] == 17
    {
        let sp = u16::from_be_bytes([frame[34], frame[35]]);
        let dp = u16::from_be_bytes([frame[36], frame[37]]);
        if rpc_ports.contains(&sp) || rpc_ports.contains(&dp) {
            let h = u32::from_be_bytes([frame[42], frame[43], frame[44], frame[45]])
                .wrapping_mul(0x9e37_79b1);
            return h ^ (h >> 16);
        }
    }
    if frame.len() >= 34 && frame[12] == 0x08 && frame[13] == 0x00 {
        let s = u32::from_be_bytes([frame[26], frame[27], frame[28], frame[29]]);
        let d = u32::from_be_bytes([frame[30], frame[31], frame[32], frame[33]]);
        let h = (s ^ d).wrapping_mul(0x9e37_79b1);
        h ^ (h >> 16)
    } else {
        0
    }
}

impl Engine {
    /// Start the lcores. Returns the engine and the management core's ring ends.
    pub fn start<B: Backend>(
        cfg: &Config,
        backend: Arc<B>,
        pipeline: Pipeline<B::Buf>,
        qsbr: Arc<Qsbr>,
    ) -> std::io::Result<(Engine, MgmtRings<B::Buf>)> {
        let dp = &cfg.dataplane;
        let nports = backend.ports().len();
        let vlans = Arc::new(VlanMap::new(cfg));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = dp.workers.len();
        let mut threads = Vec::new();
        let mut counters = Vec::new();
        let mut punt_consumers = Vec::new();
        let app_counters = pipeline.app_counters();
        let (inject_tx, inject_rx) = rtrb::RingBuffer::<B::Buf>::new(dp.ring_size);
        let mut inject_rx = Some(inject_rx);

        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name).spawn(f)
        };

        let split = dp.placement == Placement::Split;
        let mut to_workers = Vec::new();
        let mut from_workers = Vec::new();
        // Run-to-completion workers hand each other the packets whose state another one keeps
        // (see `WorkerApp::owner`): one SPSC ring per ordered pair, as VPP's handoff queues.
        let handoff_workers = if split { 1 } else { workers };
        let (mut handoff_out, mut handoff_in) =
            handoff_rings::<B::Buf>(handoff_workers, dp.ring_size);
        for (w, &cpu) in dp.workers.iter().enumerate() {
            let c = Arc::new(CoreCounters::new(
                w,
                "worker",
                Some(cpu),
                nports,
                pipeline.stage_counters(),
                &app_counters,
            ));
            counters.push(c.clone());
            let (punt_tx, punt_rx) = rtrb::RingBuffer::new(dp.ring_size);
            punt_consumers.push(punt_rx);
            let pipe = pipeline.for_worker(w, handoff_workers);
            let ctx = WorkerCtx {
                id: w,
                be: backend.clone(),
                pipe,
                c,
                qsbr: qsbr.clone(),
                stop: stop.clone(),
                punt: punt_tx,
                burst: dp.burst,
                idle_max: dp.idle_sleep_max_us,
                verdicts: [Verdict::Next; MAX_BURST],
                undecided: [false; MAX_BURST],
                bursts: 0,
                handoff_out: handoff_out
                    .get_mut(w)
                    .map(std::mem::take)
                    .unwrap_or_default(),
                handoff_in: handoff_in
                    .get_mut(w)
                    .map(std::mem::take)
                    .unwrap_or_default(),
                vlans: vlans.clone(),
            };
            let pinning = dp.pin;
            let body: Box<dyn FnOnce() + Send> = if split {
                let (in_tx, in_rx) = rtrb::RingBuffer::<B::Buf>::new(dp.ring_size);
                let (out_tx, out_rx) = rtrb::RingBuffer::<B::Buf>::new(dp.ring_size);
                to_workers.push(in_tx);
                from_workers.push(out_rx);
                Box::new(move || {
                    pin(Some(cpu), pinning);
                    ctx.split_worker(in_rx, out_tx)
                })
            } else {
                // Worker 0 owns the inject ring: it transmits what the management core makes.
                let inject = if w == 0 { inject_rx.take() } else { None };
                Box::new(move || {
                    pin(Some(cpu), pinning);
                    ctx.run_to_completion(inject)
                })
            };
            threads.push(spawn(format!("worker{w}"), body)?);
        }
        if split {
            let io_cpu = dp.io_cpu;
            let c = Arc::new(CoreCounters::new(
                workers,
                "io",
                io_cpu,
                nports,
                pipeline.stage_counters(),
                &app_counters,
            ));
            counters.push(c.clone());
            let io = IoCtx {
                be: backend.clone(),
                c,
                stop: stop.clone(),
                burst: dp.burst,
                idle_max: dp.idle_sleep_max_us,
                to_workers,
                from_workers,
                inject: inject_rx.take(),
                rpc_ports: pipeline.apps.iter().flat_map(|a| a.rpc_ports()).collect(),
                vlans: vlans.clone(),
            };
            let pinning = dp.pin;
            threads.push(spawn(
                "io".into(),
                Box::new(move || {
                    pin(io_cpu, pinning);
                    io.run()
                }),
            )?);
        }
        Ok((
            Engine {
                threads,
                stop,
                counters,
                qsbr,
            },
            MgmtRings {
                punt: punt_consumers,
                inject: inject_tx,
            },
        ))
    }

    /// Ask every lcore to stop and wait for them.
    pub fn stop_and_join(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("an lcore thread panicked");
            }
        }
    }
}

/// Handoff rings among `n` workers: for each worker, its producers by destination (`None` for
/// itself) and its consumers (one per other worker). None at all for one worker.
#[allow(clippy::type_complexity)]
fn handoff_rings<T>(
    n: usize,
    size: usize,
) -> (
    Vec<Vec<Option<rtrb::Producer<T>>>>,
    Vec<Vec<rtrb::Consumer<T>>>,
) {
    let mut outs: Vec<Vec<Option<rtrb::Producer<T>>>> = Vec::new();
    let mut ins: Vec<Vec<rtrb::Consumer<T>>> = (0..n).map(|_| Vec::new()).collect();
    if n < 2 {
        return (outs, ins);
    }
    for from in 0..n {
        let mut row = Vec::with_capacity(n);
        for (to, inbox) in ins.iter_mut().enumerate() {
            if from == to {
                row.push(None);
                continue;
            }
            let (tx, rx) = rtrb::RingBuffer::new(size);
            row.push(Some(tx));
            inbox.push(rx);
        }
        outs.push(row);
    }
    (outs, ins)
}

struct WorkerCtx<B: Backend> {
    id: usize,
    be: Arc<B>,
    pipe: Pipeline<B::Buf>,
    c: Arc<CoreCounters>,
    qsbr: Arc<Qsbr>,
    stop: Arc<AtomicBool>,
    punt: rtrb::Producer<Punted<B::Buf>>,
    burst: usize,
    idle_max: u64,
    verdicts: [Verdict; MAX_BURST],
    undecided: [bool; MAX_BURST],
    bursts: u64,
    /// Handoff rings to the other run-to-completion workers (by worker; `None` for this one).
    handoff_out: Vec<Option<rtrb::Producer<B::Buf>>>,
    /// Handoff rings from the other workers.
    handoff_in: Vec<rtrb::Consumer<B::Buf>>,
    vlans: Arc<VlanMap>,
}

/// One burst in this many is timed, stage by stage, for the ns/packet and busy figures.
pub const TIMING_SAMPLE: u64 = 16;

/// Largest burst (config `dataplane.burst` is validated against it).
pub const MAX_BURST: usize = 256;

impl<B: Backend> WorkerCtx<B> {
    /// Run the pipeline over a burst, vector style: every stage decision first (no I/O),
    /// then dispatch: packets to transmit go to `emit`, punts to the management ring. One burst
    /// in `TIMING_SAMPLE` is timed (reading the clock costs more than a packet on some VMs).
    #[inline]
    fn process_burst(
        &mut self,
        burst: &mut Vec<B::Buf>,
        handed: bool,
        mut emit: impl FnMut(u16, B::Buf),
    ) {
        let n = burst.len().min(MAX_BURST);
        if n == 0 {
            return;
        }
        self.bursts = self.bursts.wrapping_add(1);
        self.c.vector_packets.add(n as u64);
        let t0 = self.bursts.is_multiple_of(TIMING_SAMPLE).then(Instant::now);
        self.pipe.process_burst(
            &mut burst[..n],
            &mut self.verdicts,
            &mut self.undecided,
            &self.c,
            handed,
            t0.is_some(),
        );
        if let Some(t0) = t0 {
            self.c.timed_ns.add(t0.elapsed().as_nanos() as u64);
            self.c.timed_packets.add(n as u64);
        }
        for (mut pkt, &v) in burst.drain(..).zip(self.verdicts.iter()) {
            match v {
                Verdict::Tx(port) => {
                    pkt.set_port(port);
                    emit(port, pkt)
                }
                Verdict::Punt(reason) => {
                    if self.punt.push(Punted { reason, buf: pkt }).is_err() {
                        self.c.punt_ring_full.inc();
                    }
                }
                Verdict::Handoff(w) => {
                    let ring = self.handoff_out.get_mut(usize::from(w));
                    match ring.and_then(Option::as_mut).map(|r| r.push(pkt)) {
                        Some(Ok(())) => self.c.handed_off.inc(),
                        _ => self.c.ring_full.inc(),
                    }
                }
                Verdict::Drop(_) | Verdict::Next => {}
            }
        }
    }

    fn run_to_completion(mut self, mut inject: Option<rtrb::Consumer<B::Buf>>) {
        if let Err(e) = self.be.register_thread() {
            tracing::error!("worker {}: {e}", self.id);
            return;
        }
        let nports = self.be.ports().len();
        let queue = self.id as u16;
        let mut burst: Vec<B::Buf> = Vec::with_capacity(self.burst);
        let mut tx = TxStage::new(nports, self.burst, self.vlans.clone());
        let mut backoff = Backoff::new(self.idle_max);
        let be = self.be.clone();
        let c = self.c.clone();
        self.qsbr.online(self.id);
        while !self.stop.load(Ordering::Relaxed) {
            let t0 = backoff.before_poll(&c);
            let mut got = 0;
            for port in 0..nports as u16 {
                let n = rx_counted(&*be, port, queue, &mut burst, &c, &self.vlans);
                if n == 0 {
                    continue;
                }
                got += n;
                self.process_burst(&mut burst, false, |p, pkt| tx.push(&*be, queue, p, pkt, &c));
            }
            // What the other workers handed over: it enters the pipeline here.
            for r in 0..self.handoff_in.len() {
                while burst.len() < self.burst {
                    match self.handoff_in[r].pop() {
                        Ok(p) => burst.push(p),
                        Err(_) => break,
                    }
                }
                got += burst.len();
                self.process_burst(&mut burst, true, |p, pkt| tx.push(&*be, queue, p, pkt, &c));
            }
            if let Some(inj) = inject.as_mut() {
                while let Ok(pkt) = inj.pop() {
                    c.injected.inc();
                    got += 1;
                    let port = pkt.port();
                    tx.push(&*be, queue, port, pkt, &c);
                }
            }
            tx.flush(&*be, queue, &c);
            self.qsbr.quiescent(self.id);
            backoff.after_poll(got, t0, &c);
        }
        self.qsbr.offline(self.id);
    }

    fn split_worker(
        mut self,
        mut input: rtrb::Consumer<B::Buf>,
        mut output: rtrb::Producer<B::Buf>,
    ) {
        if let Err(e) = self.be.register_thread() {
            tracing::error!("worker {}: {e}", self.id);
            return;
        }
        let mut burst: Vec<B::Buf> = Vec::with_capacity(self.burst);
        let mut backoff = Backoff::new(self.idle_max);
        let c = self.c.clone();
        self.qsbr.online(self.id);
        while !self.stop.load(Ordering::Relaxed) {
            let t0 = backoff.before_poll(&c);
            while burst.len() < self.burst {
                match input.pop() {
                    Ok(p) => burst.push(p),
                    Err(_) => break,
                }
            }
            let got = burst.len();
            self.process_burst(&mut burst, false, |_, pkt| {
                if output.push(pkt).is_err() {
                    c.ring_full.inc();
                }
            });
            self.qsbr.quiescent(self.id);
            backoff.after_poll(got, t0, &c);
        }
        self.qsbr.offline(self.id);
    }
}

struct IoCtx<B: Backend> {
    be: Arc<B>,
    c: Arc<CoreCounters>,
    stop: Arc<AtomicBool>,
    burst: usize,
    idle_max: u64,
    to_workers: Vec<rtrb::Producer<B::Buf>>,
    from_workers: Vec<rtrb::Consumer<B::Buf>>,
    inject: Option<rtrb::Consumer<B::Buf>>,
    /// UDP ports of ONC RPC traffic steered by xid.
    rpc_ports: Vec<u16>,
    vlans: Arc<VlanMap>,
}

/// Receive a burst from `port`/`queue` into `burst` and count it (packets, bytes); frames of
/// the port's VLANs become their interfaces'.
#[inline]
fn rx_counted<B: Backend>(
    be: &B,
    port: u16,
    queue: u16,
    burst: &mut Vec<B::Buf>,
    c: &CoreCounters,
    vlans: &VlanMap,
) -> usize {
    let n = be.rx_burst(port, queue, burst);
    if n > 0 {
        let pc = &c.ports[usize::from(port)];
        pc.rx.add(n as u64);
        pc.rx_bytes.add(burst.iter().map(|b| b.len() as u64).sum());
        if vlans.on_port(port) {
            let from = burst.len().saturating_sub(n);
            vlans.rx(port, &mut burst[from..]);
        }
    }
    n
}

impl<B: Backend> IoCtx<B> {
    fn run(mut self) {
        if let Err(e) = self.be.register_thread() {
            tracing::error!("io: {e}");
            return;
        }
        let be = self.be.clone();
        let c = self.c.clone();
        let nports = be.ports().len();
        let nworkers = self.to_workers.len() as u32;
        let mut burst: Vec<B::Buf> = Vec::with_capacity(self.burst);
        let mut tx = TxStage::new(nports, self.burst, self.vlans.clone());
        let mut backoff = Backoff::new(self.idle_max);
        while !self.stop.load(Ordering::Relaxed) {
            let t0 = backoff.before_poll(&c);
            let mut got = 0;
            for port in 0..nports as u16 {
                let n = rx_counted(&*be, port, 0, &mut burst, &c, &self.vlans);
                if n == 0 {
                    continue;
                }
                got += n;
                for pkt in burst.drain(..) {
                    let w = if nworkers == 1 {
                        0
                    } else {
                        steer_hash(pkt.data(), &self.rpc_ports) % nworkers
                    };
                    if self.to_workers[w as usize].push(pkt).is_err() {
                        c.ring_full.inc();
                    }
                }
            }
            for ring in &mut self.from_workers {
                let mut k = 0;
                while k < self.burst * 2 {
                    let Ok(pkt) = ring.pop() else { break };
                    got += 1;
                    k += 1;
                    let port = pkt.port();
                    tx.push(&*be, 0, port, pkt, &c);
                }
            }
            if let Some(inj) = self.inject.as_mut() {
                while let Ok(pkt) = inj.pop() {
                    c.injected.inc();
                    got += 1;
                    let port = pkt.port();
                    tx.push(&*be, 0, port, pkt, &c);
                }
            }
            tx.flush(&*be, 0, &c);
            backoff.after_poll(got, t0, &c);
        }
    }
}
