//! The rewrite stage's tables, bounded and allocation-free after creation.
//!
//! - [`TransactionTable`]: per worker (calls and their replies are steered to the same worker),
//!   an entry per call in flight keyed by (client address, client port, xid) — real clients
//!   reuse xids — holding what the reply rewrite needs. Entries expire; a full neighbourhood
//!   refuses the insert and counts it.
//! - [`HandleTable`]: handle id (a VFH's HID) → physical handle, read by every worker without locks and written by
//!   one place (the management core). Each slot is a seqlock over atomics: a reader retries when
//!   a write raced it, so it never sees half a handle. It is a cache: when a probe run is full
//!   the oldest-probed slot is overwritten and the eviction counted (a VFH holds what recovery
//!   needs to rebuild the entry).

use packet::seqlock::SeqLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Slots probed before an insert gives up (transactions) or evicts (handles).
pub const MAX_PROBE: usize = 16;

#[inline]
fn mix(x: u64) -> u64 {
    // A strong 64-bit finaliser (splitmix64): keys are attacker-chosen xids and ports.
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Identifies one call in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TxKey {
    pub client: u32,
    pub port: u16,
    pub xid: u32,
}

impl TxKey {
    #[inline]
    fn hash(&self) -> u64 {
        mix((u64::from(self.client) << 32 | u64::from(self.xid))
            ^ (u64::from(self.port) << 17).rotate_left(23))
    }
}

/// A slot's state. Probes stop at an `Empty` slot; a taken entry leaves a `Tomb` (keys further
/// along its probe run must stay reachable) that turns back to `Empty` once the slot after it
/// is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Empty,
    Used,
    Tomb,
}

#[derive(Debug, Clone, Copy)]
struct TxSlot<V> {
    key: TxKey,
    state: St,
    stamp: u64,
    val: V,
}

/// Counters of a transaction table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxStats {
    pub inserted: u64,
    pub replaced: u64,
    pub matched: u64,
    pub unmatched: u64,
    pub expired: u64,
    pub full: u64,
}

/// Calls in flight, one table per worker.
#[derive(Debug, Clone)]
pub struct TransactionTable<V: Copy + Default> {
    slots: Box<[TxSlot<V>]>,
    mask: usize,
    ttl: u64,
    len: usize,
    pub stats: TxStats,
}

impl<V: Copy + Default> TransactionTable<V> {
    /// A table of at least `capacity` slots (rounded up to a power of two); entries older than
    /// `ttl` (in the caller's time unit) are dead.
    pub fn new(capacity: usize, ttl: u64) -> Self {
        let n = capacity.max(MAX_PROBE).next_power_of_two();
        TransactionTable {
            slots: vec![
                TxSlot {
                    key: TxKey::default(),
                    state: St::Empty,
                    stamp: 0,
                    val: V::default()
                };
                n
            ]
            .into_boxed_slice(),
            mask: n - 1,
            ttl,
            len: 0,
            stats: TxStats::default(),
        }
    }

    /// Live entries (expired ones still counted until they are swept or reused).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    fn dead(&self, s: &TxSlot<V>, now: u64) -> bool {
        s.state != St::Used || now.saturating_sub(s.stamp) > self.ttl
    }

    /// Free slot `idx`: a tomb, or empty (with the tombs just before it) when the next slot is
    /// empty: no probe run crosses it then.
    fn vacate(&mut self, idx: usize) {
        self.slots[idx].state = St::Tomb;
        if self.slots[(idx + 1) & self.mask].state == St::Empty {
            let mut j = idx;
            while self.slots[j].state == St::Tomb {
                self.slots[j].state = St::Empty;
                j = j.wrapping_sub(1) & self.mask;
            }
        }
    }

    /// Record a call. A retransmission (same key) replaces its entry. False when the probe run
    /// is full of live entries (counted in `stats.full`).
    pub fn insert(&mut self, key: TxKey, val: V, now: u64) -> bool {
        let h = key.hash() as usize;
        let mut free = None;
        for i in 0..MAX_PROBE {
            let idx = (h + i) & self.mask;
            let s = &self.slots[idx];
            if s.state == St::Used && s.key == key {
                self.slots[idx] = TxSlot {
                    key,
                    state: St::Used,
                    stamp: now,
                    val,
                };
                self.stats.replaced += 1;
                return true;
            }
            if free.is_none() && self.dead(s, now) {
                free = Some(idx);
            }
            if s.state == St::Empty {
                break; // the key is not further along
            }
        }
        let Some(idx) = free else {
            self.stats.full += 1;
            return false;
        };
        if self.slots[idx].state == St::Used {
            self.stats.expired += 1;
        } else {
            self.len += 1;
        }
        self.slots[idx] = TxSlot {
            key,
            state: St::Used,
            stamp: now,
            val,
        };
        self.stats.inserted += 1;
        true
    }

    /// Take the entry of the call a reply answers.
    pub fn take(&mut self, key: TxKey, now: u64) -> Option<V> {
        let h = key.hash() as usize;
        for i in 0..MAX_PROBE {
            let idx = (h + i) & self.mask;
            let s = self.slots[idx];
            if s.state == St::Empty {
                break;
            }
            if s.state == St::Used && s.key == key {
                self.vacate(idx);
                self.len -= 1;
                if now.saturating_sub(s.stamp) > self.ttl {
                    self.stats.expired += 1;
                    break;
                }
                self.stats.matched += 1;
                return Some(s.val);
            }
        }
        self.stats.unmatched += 1;
        None
    }

    /// Hint (with `prefetch`, e.g. `packet::Buffer::prefetch`) the first slot `key` probes,
    /// so that a later [`insert`](Self::insert) or [`take`](Self::take) finds it in cache: a
    /// burst hints all its slots first, and their misses overlap instead of stalling one
    /// packet after another.
    #[inline]
    pub fn prefetch(&self, key: TxKey, prefetch: impl Fn(*const u8)) {
        // Every line of the slot and of the next one: a slot is not a divisor of the line
        // size (more than half of them straddle two lines), and a take reads the next slot's
        // state to know whether its tomb can go.
        let s: *const u8 = std::ptr::from_ref(&self.slots[key.hash() as usize & self.mask]).cast();
        let size = std::mem::size_of::<TxSlot<V>>();
        prefetch(s);
        prefetch(s.wrapping_add(size - 1));
        prefetch(s.wrapping_add(2 * size - 1));
    }

    /// Free expired entries (called from time to time off the fast path of a burst).
    pub fn sweep(&mut self, now: u64) -> usize {
        let mut n = 0;
        for i in (0..self.slots.len()).rev() {
            let s = self.slots[i];
            if s.state == St::Used && now.saturating_sub(s.stamp) > self.ttl {
                n += 1;
                self.vacate(i);
            } else if s.state == St::Tomb && self.slots[(i + 1) & self.mask].state == St::Empty {
                self.vacate(i);
            }
        }
        self.len -= n;
        self.stats.expired += n as u64;
        n
    }
}

/// Largest physical handle.
pub const PFH_MAX: usize = 64;
const WORDS: usize = PFH_MAX / 8;
const EMPTY: u64 = 0;

#[derive(Debug, Default)]
#[repr(align(64))]
struct HandleSlot {
    vin: AtomicU64,
    seq: SeqLock,
    len: AtomicU32,
    words: [AtomicU64; WORDS],
}

/// Counters of the handle table (written by its single writer).
#[derive(Debug, Default)]
pub struct HandleStats {
    pub inserts: AtomicU64,
    pub evictions: AtomicU64,
}

/// Handle id → physical file handle, shared by the workers.
#[derive(Debug)]
pub struct HandleTable {
    slots: Box<[HandleSlot]>,
    mask: usize,
    len: AtomicU64,
    pub stats: HandleStats,
}

impl HandleTable {
    /// At least `capacity` slots (a power of two).
    pub fn new(capacity: usize) -> Self {
        let n = capacity.max(MAX_PROBE).next_power_of_two();
        HandleTable {
            slots: (0..n).map(|_| HandleSlot::default()).collect(),
            mask: n - 1,
            len: AtomicU64::new(0),
            stats: HandleStats::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copy the physical handle of `vin` into `out`; returns its length. Lock-free: retries
    /// while a write to the same slot is in progress.
    #[inline]
    pub fn get(&self, vin: u64, out: &mut [u8; PFH_MAX]) -> Option<usize> {
        if vin == EMPTY {
            return None;
        }
        let h = mix(vin) as usize;
        for i in 0..MAX_PROBE {
            let s = &self.slots[(h + i) & self.mask];
            let (v, len, words) = s.seq.read(|| {
                let mut words = [0u64; WORDS];
                for (w, a) in words.iter_mut().zip(&s.words) {
                    *w = a.load(Ordering::Relaxed);
                }
                (
                    s.vin.load(Ordering::Relaxed),
                    (s.len.load(Ordering::Relaxed) as usize).min(PFH_MAX),
                    words,
                )
            });
            if v == EMPTY {
                return None;
            }
            if v == vin {
                for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
                    chunk.copy_from_slice(&w.to_ne_bytes());
                }
                return Some(len);
            }
        }
        None
    }

    /// Hint both cache lines of the first slot `hid` probes (see
    /// [`TransactionTable::prefetch`]).
    #[inline]
    pub fn prefetch(&self, hid: u64, prefetch: impl Fn(*const u8)) {
        let s = &self.slots[mix(hid) as usize & self.mask];
        prefetch(std::ptr::from_ref(&s.vin).cast());
        prefetch(std::ptr::from_ref(&s.words[0]).cast());
    }

    /// Whether slot `s` holds exactly `pfh` (the writer's own view: no write can race it).
    fn holds(&self, s: &HandleSlot, pfh: &[u8]) -> bool {
        if s.len.load(Ordering::Relaxed) as usize != pfh.len() {
            return false;
        }
        let mut padded = [0u8; PFH_MAX];
        padded[..pfh.len()].copy_from_slice(pfh);
        s.words
            .iter()
            .zip(padded.chunks_exact(8))
            .all(|(a, c)| a.load(Ordering::Relaxed).to_ne_bytes() == c)
    }

    fn write(&self, s: &HandleSlot, vin: u64, pfh: &[u8]) {
        let mut padded = [0u8; PFH_MAX];
        padded[..pfh.len()].copy_from_slice(pfh);
        s.seq.write(|| {
            for (a, chunk) in s.words.iter().zip(padded.chunks_exact(8)) {
                let mut w = [0u8; 8];
                w.copy_from_slice(chunk);
                a.store(u64::from_ne_bytes(w), Ordering::Relaxed);
            }
            s.len.store(pfh.len() as u32, Ordering::Relaxed);
            s.vin.store(vin, Ordering::Relaxed);
        });
    }

    /// Every entry (for the writer's checkpoints: it is the only one changing the table, so
    /// what it reads is consistent).
    pub fn for_each(&self, mut f: impl FnMut(u64, &[u8])) {
        let mut out = [0u8; PFH_MAX];
        for s in self.slots.iter() {
            let vin = s.vin.load(Ordering::Relaxed);
            if vin == EMPTY {
                continue;
            }
            if let Some(n) = self.get(vin, &mut out) {
                f(vin, &out[..n]);
            }
        }
    }

    /// Insert or update `vin → pfh` (single writer). Returns false for an invalid handle.
    pub fn insert(&self, vin: u64, pfh: &[u8]) -> bool {
        if vin == EMPTY || pfh.is_empty() || pfh.len() > PFH_MAX {
            return false;
        }
        let h = mix(vin) as usize;
        let mut target = None;
        for i in 0..MAX_PROBE {
            let idx = (h + i) & self.mask;
            let v = self.slots[idx].vin.load(Ordering::Relaxed);
            if v == vin {
                target = Some(idx);
                break;
            }
            if v == EMPTY && target.is_none() {
                target = Some(idx);
                // Keep looking for an existing entry of this VIN further along.
            }
        }
        let idx = match target {
            Some(i) => i,
            None => {
                // Full run: evict the home slot (the cache refills through recovery).
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                self.len.fetch_sub(1, Ordering::Relaxed);
                h & self.mask
            }
        };
        let slot = &self.slots[idx];
        if slot.vin.load(Ordering::Relaxed) != vin {
            self.len.fetch_add(1, Ordering::Relaxed);
        } else if self.holds(slot, pfh) {
            // Already there (a LOOKUP of a known file): no write, so the workers' cached copy
            // of the slot stays valid.
            return true;
        }
        self.write(slot, vin, pfh);
        self.stats.inserts.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn k(xid: u32) -> TxKey {
        TxKey {
            client: 0x0a00_0102,
            port: 800,
            xid,
        }
    }

    #[test]
    fn transactions_match_expire_and_bound() {
        let mut t: TransactionTable<u32> = TransactionTable::new(64, 100);
        assert!(t.insert(k(1), 10, 0));
        assert!(t.insert(k(1), 11, 5), "retransmission replaces");
        assert_eq!(t.len(), 1);
        // The same xid from another client is another transaction.
        let other = TxKey { port: 801, ..k(1) };
        assert!(t.insert(other, 20, 5));
        assert_eq!(t.take(k(1), 10), Some(11));
        assert_eq!(t.take(k(1), 10), None);
        assert_eq!(t.take(other, 500), None, "expired");
        assert_eq!(t.stats.matched, 1);
        assert!(t.is_empty());
        // Fill far beyond capacity: bounded, refusals counted, never a panic.
        for x in 0..10_000 {
            t.insert(k(x), x, 1000);
        }
        assert!(t.len() <= t.capacity());
        assert!(t.stats.full > 0);
        // Once expired, everything is reusable again.
        let live = t.len();
        assert!(live > 0);
        assert_eq!(t.sweep(5000), live);
        assert!(t.is_empty());
    }

    proptest::proptest! {
        /// Against a map: every key inserted (and not refused) is found by `take` until taken,
        /// whatever holes earlier takes and sweeps left in the probe runs.
        #[test]
        fn transactions_match_a_map(ops in proptest::collection::vec((0u8..4, 0u32..200), 1..2000)) {
            let mut t: TransactionTable<u32> = TransactionTable::new(64, 1_000);
            let mut model = std::collections::HashMap::new();
            let mut now = 0;
            for (op, x) in ops {
                match op {
                    0 | 1 => {
                        if t.insert(k(x), x + now as u32, now) {
                            model.insert(x, x + now as u32);
                        }
                    }
                    2 => proptest::prop_assert_eq!(t.take(k(x), now), model.remove(&x)),
                    _ => {
                        now += 1;
                        t.sweep(now);
                    }
                }
                proptest::prop_assert_eq!(t.len(), model.len());
            }
        }
    }

    #[test]
    fn handles_insert_update_evict() {
        let t = HandleTable::new(16);
        let mut out = [0u8; PFH_MAX];
        assert!(t.insert(7, &[1; 28]));
        assert_eq!(t.get(7, &mut out), Some(28));
        assert_eq!(&out[..28], &[1; 28]);
        assert!(t.insert(7, &[2; 64]));
        assert_eq!(t.get(7, &mut out), Some(64));
        assert_eq!(out, [2; 64]);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(8, &mut out), None);
        assert!(!t.insert(9, &[0; 65]));
        assert!(!t.insert(0, &[1]));
        for v in 100..200u64 {
            t.insert(v, &v.to_be_bytes());
        }
        assert!(t.len() <= t.capacity());
        assert!(t.stats.evictions.load(Ordering::Relaxed) > 0);
        assert_eq!(t.get(199, &mut out), Some(8));
        assert_eq!(&out[..8], &199u64.to_be_bytes());
    }

    /// Readers on other threads never see a handle that mixes two writes.
    #[test]
    fn concurrent_readers_never_see_torn_handles() {
        let t = Arc::new(HandleTable::new(64));
        t.insert(42, &[0; 8]); // satisfies the readers' invariant (byte 0, length 8)
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (t, stop) = (t.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut out = [0u8; PFH_MAX];
                    let mut reads = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let n = t.get(42, &mut out).expect("present");
                        // Every write fills the handle with one byte value and a matching length.
                        let b = out[0];
                        assert!(out[..n].iter().all(|&x| x == b), "torn read");
                        assert_eq!(n, 8 + usize::from(b % 57));
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for i in 0..200_000u32 {
            let b = (i % 251) as u8;
            t.insert(42, &vec![b; 8 + usize::from(b % 57)]);
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
    }
}
