//! Per-core counters: each has exactly one writer (its core), so an increment is a relaxed load
//! and store, no locked instruction. The management core reads them on demand.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// A single-writer counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n` (only the owning core calls this).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    /// Add one.
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }
    /// Overwrite (the owning core publishes a total it keeps elsewhere).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed)
    }
    /// Current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters of one stage on one core.
#[derive(Debug)]
pub struct StageCounters {
    pub name: &'static str,
    pub packets: Counter,
    pub forwarded: Counter,
    /// Time spent in this stage over the sampled bursts (one in
    /// [`crate::engine::TIMING_SAMPLE`]), and the packets it took in those bursts.
    pub busy_ns: Counter,
    pub timed_packets: Counter,
    pub drops: Box<[Counter]>,
    pub drop_names: &'static [&'static str],
    pub punts: Box<[Counter]>,
}

impl StageCounters {
    pub fn new(name: &'static str, drop_names: &'static [&'static str]) -> Self {
        StageCounters {
            name,
            packets: Counter::default(),
            forwarded: Counter::default(),
            busy_ns: Counter::default(),
            timed_packets: Counter::default(),
            drops: drop_names.iter().map(|_| Counter::default()).collect(),
            drop_names,
            punts: packet::PuntReason::ALL
                .iter()
                .map(|_| Counter::default())
                .collect(),
        }
    }

    #[inline]
    pub fn drop(&self, reason: u16) {
        if let Some(c) = self.drops.get(usize::from(reason)) {
            c.inc();
        }
    }

    #[inline]
    pub fn punt(&self, reason: packet::PuntReason) {
        if let Some(c) = self.punts.get(reason as usize) {
            c.inc();
        }
    }

    pub fn snapshot(&self) -> StageSnapshot {
        StageSnapshot {
            name: self.name.to_string(),
            packets: self.packets.get(),
            forwarded: self.forwarded.get(),
            busy_ns: self.busy_ns.get(),
            timed_packets: self.timed_packets.get(),
            drops: self
                .drop_names
                .iter()
                .zip(self.drops.iter())
                .map(|(n, c)| (n.to_string(), c.get()))
                .collect(),
            punts: packet::PuntReason::ALL
                .iter()
                .zip(self.punts.iter())
                .map(|(r, c)| (r.name().to_string(), c.get()))
                .collect(),
        }
    }
}

/// Per-port traffic counted by one core.
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx: Counter,
    pub tx: Counter,
    pub rx_bytes: Counter,
    pub tx_bytes: Counter,
    /// Packets the driver would not take (queue full).
    pub tx_full: Counter,
}

/// Everything one core counts.
#[derive(Debug)]
pub struct CoreCounters {
    pub core: usize,
    pub role: &'static str,
    pub cpu: Option<usize>,
    pub ports: Box<[PortCounters]>,
    pub stages: Box<[StageCounters]>,
    pub polls: Counter,
    pub busy_polls: Counter,
    pub idle_sleeps: Counter,
    /// Packets dropped because a ring (to a worker, to TX, to the management core) was full.
    pub ring_full: Counter,
    pub punt_ring_full: Counter,
    pub injected: Counter,
    /// Packets handed to another run-to-completion worker (the one keeping their state).
    pub handed_off: Counter,
    /// Packets through the pipeline (every burst, handed-over ones included): over
    /// `busy_polls`, the vector size.
    pub vector_packets: Counter,
    /// The whole pipeline's time over the sampled bursts, and their packets: with
    /// `vector_packets`, the time the stages took (VPP's clocks ÷ vectors).
    pub timed_ns: Counter,
    pub timed_packets: Counter,
    /// Sampled poll-loop iterations that found work (one poll in
    /// [`crate::engine::TIMING_SAMPLE`] is timed): their time, RX to TX, and their number;
    /// with `busy_polls`, the share of the core's time spent on packets.
    pub loop_ns: Counter,
    pub timed_loops: Counter,
    /// Each application's own counters on this core (by stage name), laid out as the
    /// application publishes them ([`crate::app::WorkerApp::publish`]).
    pub apps: Box<[AppCounters]>,
}

/// One application's counters on one core: its stage name and its values.
pub type AppCounters = (&'static str, Box<[Counter]>);

impl CoreCounters {
    pub fn new(
        core: usize,
        role: &'static str,
        cpu: Option<usize>,
        ports: usize,
        stages: Vec<StageCounters>,
        apps: &[(&'static str, usize)],
    ) -> Self {
        CoreCounters {
            core,
            role,
            cpu,
            ports: (0..ports).map(|_| PortCounters::default()).collect(),
            stages: stages.into_boxed_slice(),
            polls: Counter::default(),
            busy_polls: Counter::default(),
            idle_sleeps: Counter::default(),
            ring_full: Counter::default(),
            punt_ring_full: Counter::default(),
            injected: Counter::default(),
            handed_off: Counter::default(),
            vector_packets: Counter::default(),
            timed_ns: Counter::default(),
            timed_packets: Counter::default(),
            loop_ns: Counter::default(),
            timed_loops: Counter::default(),
            apps: apps
                .iter()
                .map(|&(name, width)| (name, (0..width).map(|_| Counter::default()).collect()))
                .collect(),
        }
    }

    pub fn snapshot(&self) -> CoreSnapshot {
        CoreSnapshot {
            core: self.core,
            role: self.role.to_string(),
            cpu: self.cpu,
            polls: self.polls.get(),
            busy_polls: self.busy_polls.get(),
            idle_sleeps: self.idle_sleeps.get(),
            ring_full: self.ring_full.get(),
            punt_ring_full: self.punt_ring_full.get(),
            injected: self.injected.get(),
            handed_off: self.handed_off.get(),
            vector_packets: self.vector_packets.get(),
            timed_ns: self.timed_ns.get(),
            timed_packets: self.timed_packets.get(),
            loop_ns: self.loop_ns.get(),
            timed_loops: self.timed_loops.get(),
            apps: self
                .apps
                .iter()
                .map(|(name, c)| (name.to_string(), c.iter().map(Counter::get).collect()))
                .collect(),
            ports: self
                .ports
                .iter()
                .map(|p| PortSnapshot {
                    rx: p.rx.get(),
                    tx: p.tx.get(),
                    rx_bytes: p.rx_bytes.get(),
                    tx_bytes: p.tx_bytes.get(),
                    tx_full: p.tx_full.get(),
                })
                .collect(),
            stages: self.stages.iter().map(StageCounters::snapshot).collect(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PortSnapshot {
    pub rx: u64,
    pub tx: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub tx_full: u64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StageSnapshot {
    pub name: String,
    pub packets: u64,
    pub forwarded: u64,
    pub busy_ns: u64,
    pub timed_packets: u64,
    pub drops: Vec<(String, u64)>,
    pub punts: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CoreSnapshot {
    pub core: usize,
    pub role: String,
    pub cpu: Option<usize>,
    pub polls: u64,
    pub busy_polls: u64,
    pub idle_sleeps: u64,
    pub ring_full: u64,
    pub punt_ring_full: u64,
    pub injected: u64,
    #[serde(default)]
    pub handed_off: u64,
    #[serde(default)]
    pub vector_packets: u64,
    #[serde(default)]
    pub timed_ns: u64,
    #[serde(default)]
    pub timed_packets: u64,
    #[serde(default)]
    pub loop_ns: u64,
    #[serde(default)]
    pub timed_loops: u64,
    /// Each application's counters (see [`CoreCounters::apps`]); summed and named in the
    /// application's own stats.
    #[serde(skip)]
    pub apps: Vec<(String, Vec<u64>)>,
    pub ports: Vec<PortSnapshot>,
    pub stages: Vec<StageSnapshot>,
}

/// One application's per-core counter array (`pick`), summed over the cores: `N` values.
pub fn sum_cores<const N: usize>(cores: &[CoreSnapshot], app: &str) -> [u64; N] {
    let mut sum = [0u64; N];
    for c in cores {
        let Some((_, values)) = c.apps.iter().find(|(n, _)| n == app) else {
            continue;
        };
        for (t, v) in sum.iter_mut().zip(values) {
            *t += v;
        }
    }
    sum
}

/// Summed counters as a JSON object keyed by their names.
pub fn named(names: &[&str], values: &[u64]) -> serde_json::Map<String, serde_json::Value> {
    names
        .iter()
        .zip(values)
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect()
}
