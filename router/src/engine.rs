//! The lcores: workers running the pipeline over bursts in either placement, joined to the
//! management core by SPSC rings (punt: worker → management; inject: management → the thread
//! that owns the TX queues).
//!
//! `run-to-completion`: worker `w` polls RX queue `w` of every port, runs the stages, and
//! transmits on TX queue `w`. `split`: one I/O thread polls RX queue 0 of every port and steers
//! each packet to a worker ring by a hash of its addresses (so a flow stays on one worker);
//! workers run the stages and hand packets back on per-worker TX rings; the I/O thread
//! transmits on TX queue 0.

use crate::config::{Config, Placement};
use crate::counters::{CoreCounters, StageCounters};
use crate::ipv4::{Ipv4Drop, Ipv4Stage};
use crate::port::Backend;
use crate::qsbr::Qsbr;
use chain_switch::stage::{ChainDrop, ChainStage};
use nfs_rewrite::datapath::{NfsDrop, NfsStage};
use packet::{Buffer, DropReason, PuntReason, Stage, Verdict};
use sal_forward::stage::{SalDrop, SalStage};
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
    /// NFS handle mappings learned by each worker.
    pub mappings: Vec<rtrb::Consumer<Mapping>>,
}

/// Idle back-off: spin a while, then sleep with a growing interval up to the bound.
#[derive(Debug)]
struct Backoff {
    idle_polls: u32,
    sleep_us: u64,
    max_us: u64,
}

impl Backoff {
    fn new(max_us: u64) -> Self {
        Backoff {
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
    /// Account one poll-loop iteration that handled `got` packets; sleeps when idle long enough.
    #[inline]
    fn after_poll(&mut self, got: usize, c: &CoreCounters) {
        if got > 0 {
            c.busy_polls.inc();
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

/// The stages every worker runs, in order.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub ipv4: Ipv4Stage,
    /// Mirage NFS rewrite, before routing (when `[nfs]` is configured).
    pub nfs: Option<NfsStage>,
    /// Serval service routing, before routing (when `[sal]` is configured).
    pub sal: Option<SalStage>,
    /// NetChain switch nodes, before routing (when `[chain]` is configured).
    pub chain: Option<ChainStage>,
    /// Coarse clock (ms) the management core advances; stages read it instead of the system
    /// clock.
    pub clock: Arc<AtomicU64>,
}

/// Index of each stage's counters in `CoreCounters::stages`.
const IPV4: usize = 0;

impl Pipeline {
    /// Counters for this pipeline's stages (IPv4 first, then NFS and SAL when configured).
    pub fn stage_counters(&self) -> Vec<StageCounters> {
        let mut v = vec![StageCounters::new(Ipv4Stage::NAME, Ipv4Drop::NAMES)];
        if self.nfs.is_some() {
            v.push(StageCounters::new(NfsStage::NAME, NfsDrop::NAMES));
        }
        if self.sal.is_some() {
            v.push(StageCounters::new(SalStage::NAME, SalDrop::NAMES));
        }
        if self.chain.is_some() {
            v.push(StageCounters::new(ChainStage::NAME, ChainDrop::NAMES));
        }
        v
    }

    /// Run one application stage over the packets still undecided, and count.
    #[inline]
    fn app_stage<B: Buffer, S: Stage>(
        st: &mut S,
        s: &StageCounters,
        pkts: &mut [B],
        verdicts: &mut [Verdict],
        undecided: &mut [bool],
    ) {
        let n = pkts.len();
        s.packets
            .add(undecided[..n].iter().filter(|&&u| u).count() as u64);
        st.process_burst(pkts, verdicts);
        Self::count(s, &verdicts[..n], &undecided[..n]);
        // Next after an application stage means "continue to routing", not forwarded by it.
        for (u, v) in undecided[..n].iter_mut().zip(&verdicts[..n]) {
            *u = *v == Verdict::Next;
        }
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
                Verdict::Next => {}
            }
        }
        s.forwarded.add(forwarded);
    }

    /// Run every stage over a burst, one verdict per packet, and count. Verdicts start
    /// undecided (Next); each stage takes the packets still undecided.
    #[inline]
    fn process_burst<B: Buffer>(
        &mut self,
        pkts: &mut [B],
        verdicts: &mut [Verdict],
        undecided: &mut [bool],
        c: &CoreCounters,
    ) {
        let n = pkts.len();
        verdicts[..n].fill(Verdict::Next);
        undecided[..n].fill(true);
        let mut idx = IPV4 + 1;
        if let Some(nfs) = self.nfs.as_mut() {
            nfs.set_now(self.clock.load(Ordering::Relaxed));
            Self::app_stage(nfs, &c.stages[idx], pkts, verdicts, undecided);
            for (dst, v) in c.nfs.iter().zip(nfs.counters.values()) {
                dst.set(v);
            }
            idx += 1;
        }
        if let Some(sal) = self.sal.as_mut() {
            Self::app_stage(sal, &c.stages[idx], pkts, verdicts, undecided);
            for (dst, v) in c.sal.iter().zip(sal.counters.values()) {
                dst.set(v);
            }
            idx += 1;
        }
        if let Some(chain) = self.chain.as_mut() {
            Self::app_stage(chain, &c.stages[idx], pkts, verdicts, undecided);
            for (dst, v) in c.chain.iter().zip(chain.counters.values()) {
                dst.set(v);
            }
        }
        let s = &c.stages[IPV4];
        s.packets
            .add(undecided[..n].iter().filter(|&&u| u).count() as u64);
        self.ipv4.process_burst(pkts, verdicts);
        Self::count(s, &verdicts[..n], &undecided[..n]);
    }
}

/// What a worker tells the management core about NFS: handle mappings learned, transactions of
/// fragmented replies.
pub type Mapping = nfs_rewrite::datapath::NfsEvent;

/// Per-thread TX staging: one burst buffer per port.
struct TxStage<T> {
    per_port: Vec<Vec<T>>,
    burst: usize,
}

impl<T: Buffer> TxStage<T> {
    fn new(ports: usize, burst: usize) -> Self {
        TxStage {
            per_port: (0..ports).map(|_| Vec::with_capacity(burst * 2)).collect(),
            burst,
        }
    }
    #[inline]
    fn push<B: Backend<Buf = T>>(
        &mut self,
        be: &B,
        queue: u16,
        port: u16,
        pkt: T,
        c: &CoreCounters,
    ) {
        let Some(q) = self.per_port.get_mut(usize::from(port)) else {
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
    // ONC RPC over UDP (NFS): a call and its reply share only the xid.
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
        pipeline: Pipeline,
        qsbr: Arc<Qsbr>,
    ) -> std::io::Result<(Engine, MgmtRings<B::Buf>)> {
        let dp = &cfg.dataplane;
        let nports = backend.ports().len();
        let stop = Arc::new(AtomicBool::new(false));
        let workers = dp.workers.len();
        let mut threads = Vec::new();
        let mut counters = Vec::new();
        let mut punt_consumers = Vec::new();
        let mut mapping_consumers = Vec::new();
        let (inject_tx, inject_rx) = rtrb::RingBuffer::<B::Buf>::new(dp.ring_size);
        let mut inject_rx = Some(inject_rx);

        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name).spawn(f)
        };

        let split = dp.placement == Placement::Split;
        let mut to_workers = Vec::new();
        let mut from_workers = Vec::new();
        for (w, &cpu) in dp.workers.iter().enumerate() {
            let c = Arc::new(CoreCounters::new(
                w,
                "worker",
                Some(cpu),
                nports,
                pipeline.stage_counters(),
            ));
            counters.push(c.clone());
            let (punt_tx, punt_rx) = rtrb::RingBuffer::new(dp.ring_size);
            punt_consumers.push(punt_rx);
            let mappings = pipeline.nfs.is_some().then(|| {
                let (tx, rx) = rtrb::RingBuffer::new(dp.ring_size);
                mapping_consumers.push(rx);
                tx
            });
            let mut pipe = pipeline.clone();
            if let Some(sal) = pipe.sal.as_mut() {
                sal.set_instance(w);
            }
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
                mappings,
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
                rpc_ports: pipeline.nfs.as_ref().map_or_else(Vec::new, |n| {
                    let sh = n.shared();
                    let mut v: Vec<u16> = sh.servers.iter().map(|s| s.nfs_port).collect();
                    v.push(sh.nfs_port);
                    v
                }),
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
                mappings: mapping_consumers,
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

struct WorkerCtx<B: Backend> {
    id: usize,
    be: Arc<B>,
    pipe: Pipeline,
    c: Arc<CoreCounters>,
    qsbr: Arc<Qsbr>,
    stop: Arc<AtomicBool>,
    punt: rtrb::Producer<Punted<B::Buf>>,
    burst: usize,
    idle_max: u64,
    verdicts: [Verdict; MAX_BURST],
    undecided: [bool; MAX_BURST],
    bursts: u64,
    /// NFS handle mappings to the management core (when NFS is configured).
    mappings: Option<rtrb::Producer<Mapping>>,
}

/// One burst in this many is timed for the ns/packet figure.
const TIMING_SAMPLE: u64 = 16;

/// Largest burst (config `dataplane.burst` is validated against it).
pub const MAX_BURST: usize = 256;

impl<B: Backend> WorkerCtx<B> {
    /// Run the pipeline over a burst, vector style: every stage decision first (no I/O),
    /// then dispatch: packets to transmit go to `emit`, punts to the management ring. One burst
    /// in `TIMING_SAMPLE` is timed (reading the clock costs more than a packet on some VMs).
    #[inline]
    fn process_burst(&mut self, burst: &mut Vec<B::Buf>, mut emit: impl FnMut(u16, B::Buf)) {
        let n = burst.len().min(MAX_BURST);
        if n == 0 {
            return;
        }
        self.bursts = self.bursts.wrapping_add(1);
        let t0 = self.bursts.is_multiple_of(TIMING_SAMPLE).then(Instant::now);
        self.pipe.process_burst(
            &mut burst[..n],
            &mut self.verdicts,
            &mut self.undecided,
            &self.c,
        );
        if let (Some(nfs), Some(ring)) = (self.pipe.nfs.as_mut(), self.mappings.as_mut()) {
            let c = &self.c;
            nfs.take_events(|e| {
                if ring.push(e).is_err() {
                    c.ring_full.inc();
                }
            });
        }
        if let Some(t0) = t0 {
            let st = &self.c.stages[0];
            st.busy_ns.add(t0.elapsed().as_nanos() as u64);
            st.timed_packets.add(n as u64);
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
        let mut tx = TxStage::new(nports, self.burst);
        let mut backoff = Backoff::new(self.idle_max);
        let be = self.be.clone();
        let c = self.c.clone();
        self.qsbr.online(self.id);
        while !self.stop.load(Ordering::Relaxed) {
            c.polls.inc();
            let mut got = 0;
            for port in 0..nports as u16 {
                let n = rx_counted(&*be, port, queue, &mut burst, &c);
                if n == 0 {
                    continue;
                }
                got += n;
                self.process_burst(&mut burst, |p, pkt| tx.push(&*be, queue, p, pkt, &c));
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
            backoff.after_poll(got, &c);
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
            c.polls.inc();
            while burst.len() < self.burst {
                match input.pop() {
                    Ok(p) => burst.push(p),
                    Err(_) => break,
                }
            }
            let got = burst.len();
            self.process_burst(&mut burst, |_, pkt| {
                if output.push(pkt).is_err() {
                    c.ring_full.inc();
                }
            });
            self.qsbr.quiescent(self.id);
            backoff.after_poll(got, &c);
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
}

/// Receive a burst from `port`/`queue` into `burst` and count it (packets, bytes).
#[inline]
fn rx_counted<B: Backend>(
    be: &B,
    port: u16,
    queue: u16,
    burst: &mut Vec<B::Buf>,
    c: &CoreCounters,
) -> usize {
    let n = be.rx_burst(port, queue, burst);
    if n > 0 {
        let pc = &c.ports[usize::from(port)];
        pc.rx.add(n as u64);
        pc.rx_bytes.add(burst.iter().map(|b| b.len() as u64).sum());
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
        let mut tx = TxStage::new(nports, self.burst);
        let mut backoff = Backoff::new(self.idle_max);
        while !self.stop.load(Ordering::Relaxed) {
            c.polls.inc();
            let mut got = 0;
            for port in 0..nports as u16 {
                let n = rx_counted(&*be, port, 0, &mut burst, &c);
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
            backoff.after_poll(got, &c);
        }
    }
}
