//! Quiescent-state-based reclamation: the management core learns when every worker has passed
//! a point where it holds no reference into a table it read, before reusing memory.
//!
//! Each worker bumps its counter once per poll-loop iteration (a plain store: the counter has
//! one writer). `synchronize` snapshots the counters and waits until every online worker has
//! moved on. Workers that are asleep or stopped mark themselves offline.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot {
    counter: AtomicU64,
    online: AtomicBool,
}

/// Per-worker quiescent-state counters.
#[derive(Debug)]
pub struct Qsbr {
    slots: Box<[Slot]>,
}

impl Qsbr {
    /// Tracking for `workers` readers, all offline.
    pub fn new(workers: usize) -> Self {
        Qsbr {
            slots: (0..workers).map(|_| Slot::default()).collect(),
        }
    }

    /// Number of tracked readers.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no reader is tracked.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Reader `id` holds no table references right now.
    #[inline]
    pub fn quiescent(&self, id: usize) {
        if let Some(s) = self.slots.get(id) {
            let c = s.counter.load(Ordering::Relaxed);
            s.counter.store(c.wrapping_add(1), Ordering::Release);
        }
    }

    /// Reader `id` starts (or resumes) reading tables.
    pub fn online(&self, id: usize) {
        if let Some(s) = self.slots.get(id) {
            s.online.store(true, Ordering::SeqCst);
        }
    }

    /// Reader `id` stops reading tables (sleeping, stopped).
    pub fn offline(&self, id: usize) {
        if let Some(s) = self.slots.get(id) {
            self.quiescent(id);
            s.online.store(false, Ordering::SeqCst);
        }
    }

    /// Wait until every online reader has passed a quiescent point. Returns false when a reader
    /// did not move within `timeout` (it is wedged; the caller should leak rather than reuse).
    pub fn synchronize(&self, timeout: Duration) -> bool {
        let snap: Vec<u64> = self
            .slots
            .iter()
            .map(|s| s.counter.load(Ordering::Acquire))
            .collect();
        let start = Instant::now();
        for (s, &c) in self.slots.iter().zip(&snap) {
            loop {
                if !s.online.load(Ordering::SeqCst) || s.counter.load(Ordering::Acquire) != c {
                    break;
                }
                if start.elapsed() > timeout {
                    return false;
                }
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn offline_readers_do_not_block() {
        let q = Qsbr::new(2);
        assert!(q.synchronize(Duration::from_millis(10)));
    }

    #[test]
    fn waits_for_an_online_reader() {
        let q = Arc::new(Qsbr::new(1));
        q.online(0);
        assert!(!q.synchronize(Duration::from_millis(5)), "no progress yet");
        let q2 = q.clone();
        let t = std::thread::spawn(move || {
            for _ in 0..200 {
                q2.quiescent(0);
                std::thread::sleep(Duration::from_micros(100));
            }
        });
        assert!(q.synchronize(Duration::from_secs(5)));
        t.join().unwrap();
    }
}
