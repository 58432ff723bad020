//! The interface between the engine and an application's fast path. The engine knows
//! applications only through this trait: the IPv4 input hands each the packets it claims
//! ([`packet::claim`]), already validated, and the application publishes its counters and
//! hands what its management-core side needs over rings of its own. The registry
//! ([`crate::apps`]) is the one place that names the applications.

use crate::counters::{CoreCounters, Counter};
use packet::claim::{Claim, Claimed};
use packet::{Buffer, Verdict};

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
