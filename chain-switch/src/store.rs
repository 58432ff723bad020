//! One node's register store: fixed arrays sized at start-up, as a switch's registers are.
//!
//! - a key index (open addressing, a power of two at least twice the key capacity) from a
//!   16-byte key to its slot; keys are inserted and deleted only by the control plane (the
//!   management core, a single writer) and read by every worker without locks;
//! - per slot: the key, the sequence register (the wire's 16-bit seq, and the session of the
//!   head that stamped it), the value register (up to 128 bytes) and a sequence lock. A worker
//!   writing a slot takes its lock with one compare-and-swap and never waits: if another worker
//!   holds it, the packet is dropped and counted (the client retries), so the fast path never
//!   spins on a lock. Readers retry a bounded number of times.
//!
//! Sequence numbers compare as RFC 1982 serial numbers (16 bits: newer when less than 2^15
//! ahead). A head that takes over a virtual group does so in a new *session*: its first write to
//! each key in the session jumps the sequence by [`SESSION_JUMP`], past any number the old head
//! may have stamped on writes still in flight, so a new head never reuses one.

use crate::wire::{KEY_LEN, MAX_VALUE_LEN};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// How far a new session's first write jumps a key's sequence number.
pub const SESSION_JUMP: u16 = 1 << 14;
const EMPTY: u64 = 0;
const TOMB: u64 = u64::MAX;
const READ_TRIES: usize = 64;

/// Is `a` newer than `b` (serial-number arithmetic on 16 bits)?
#[inline]
pub fn newer(a: u16, b: u16) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 0x8000
}

#[inline]
fn hash(k: &[u8; KEY_LEN]) -> u64 {
    let a = u64::from_le_bytes(k[..8].try_into().unwrap_or_default());
    let b = u64::from_le_bytes(k[8..].try_into().unwrap_or_default());
    let h = (a ^ b.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h ^ (h >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (h >> 29)
}

#[inline]
fn words(k: &[u8; KEY_LEN]) -> [u64; 2] {
    [
        u64::from_le_bytes(k[..8].try_into().unwrap_or_default()),
        u64::from_le_bytes(k[8..].try_into().unwrap_or_default()),
    ]
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Applied with this sequence number.
    Applied(u16),
    /// Not newer than what is stored (stale or duplicate): dropped.
    Stale,
    /// Another worker holds the slot right now, or the slot changed key.
    Busy,
}

/// Why the control plane could not insert a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the store is full")]
    Full,
    #[error("the key is already stored")]
    Exists,
    #[error("no such key")]
    NotFound,
}

/// A slot's contents as the control plane reads them (recovery, listing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: [u8; KEY_LEN],
    pub seq: u16,
    pub session: u16,
    pub value: Vec<u8>,
}

/// Value bytes kept in a slot's own cache line; a longer value's rest is in `Store::more`.
const INLINE_WORDS: usize = 5;

/// One slot's registers, one cache line: a query's key check, sequence lock, sequence number
/// and (up to 40 bytes of) value are a single line to fetch.
#[derive(Debug, Default)]
#[repr(C, align(64))]
struct Slot {
    lock: AtomicU32,
    /// session << 16 | seq
    seq: AtomicU32,
    key: [AtomicU64; 2],
    value: [AtomicU64; INLINE_WORDS],
}

/// One node's registers.
#[derive(Debug)]
pub struct Store {
    value_len: usize,
    vwords: usize,
    index: Box<[AtomicU64]>,
    mask: usize,
    slots: Box<[Slot]>,
    /// Value words past the inline ones (`vwords - INLINE_WORDS` per slot, values over 40 bytes).
    more: Box<[AtomicU64]>,
    /// Control-plane side: free slots and the key count (single writer).
    free: std::sync::Mutex<Vec<u32>>,
}

impl Store {
    /// A store of `keys` slots for values of `value_len` bytes (1..=128).
    pub fn new(keys: usize, value_len: usize) -> Self {
        let keys = keys.max(1);
        let value_len = value_len.clamp(1, MAX_VALUE_LEN);
        let vwords = value_len.div_ceil(8);
        let isize = (keys * 2).next_power_of_two();
        let atomics64 = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        Store {
            value_len,
            vwords,
            index: atomics64(isize),
            mask: isize - 1,
            slots: (0..keys).map(|_| Slot::default()).collect(),
            more: atomics64(keys * vwords.saturating_sub(INLINE_WORDS)),
            free: std::sync::Mutex::new((0..keys as u32).rev().collect()),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn value_len(&self) -> usize {
        self.value_len
    }

    /// Keys stored.
    pub fn len(&self) -> usize {
        self.capacity() - self.free.lock().map_or(0, |f| f.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Word `i` of slot `s`'s value.
    #[inline]
    fn vword(&self, s: usize, i: usize) -> &AtomicU64 {
        match self.slots[s].value.get(i) {
            Some(w) => w,
            None => &self.more[s * (self.vwords - INLINE_WORDS) + i - INLINE_WORDS],
        }
    }

    #[inline]
    fn key_is(&self, slot: usize, w: &[u64; 2]) -> bool {
        self.slots[slot].key[0].load(Ordering::Relaxed) == w[0]
            && self.slots[slot].key[1].load(Ordering::Relaxed) == w[1]
    }

    /// The slot of `key` (fast path).
    #[inline]
    pub fn find(&self, key: &[u8; KEY_LEN]) -> Option<u32> {
        let h = hash(key);
        let tag = h >> 32;
        let w = words(key);
        let mut pos = h as usize & self.mask;
        for _ in 0..=self.mask {
            let e = self.index[pos].load(Ordering::Acquire);
            if e == EMPTY {
                return None;
            }
            if e != TOMB && e >> 32 == tag {
                let slot = (e & 0xffff_ffff) as usize - 1;
                if slot < self.capacity() && self.key_is(slot, &w) {
                    return Some(slot as u32);
                }
            }
            pos = (pos + 1) & self.mask;
        }
        None
    }

    /// Read slot `slot`'s value into `out` (its first `value_len` bytes) and return the
    /// sequence number; `None` when writers kept it busy.
    #[inline]
    pub fn read(&self, slot: u32, out: &mut [u8]) -> Option<u16> {
        self.snapshot(slot as usize, out, READ_TRIES)
            .map(|cur| cur as u16)
    }

    /// A consistent copy of slot `s`'s value (into `out`) and its sequence register
    /// (session << 16 | seq), trying at most `tries` times.
    #[inline]
    fn snapshot(&self, s: usize, out: &mut [u8], tries: usize) -> Option<u32> {
        let lock = &self.slots.get(s)?.lock;
        for _ in 0..tries {
            let v1 = lock.load(Ordering::Acquire);
            if v1 & 1 != 0 {
                std::hint::spin_loop();
                continue;
            }
            let cur = self.slots[s].seq.load(Ordering::Relaxed);
            self.copy_out(s, out);
            fence(Ordering::Acquire);
            if lock.load(Ordering::Relaxed) == v1 {
                return Some(cur);
            }
        }
        None
    }

    #[inline]
    fn copy_out(&self, s: usize, out: &mut [u8]) {
        let n = out.len().min(self.value_len);
        for (i, chunk) in out[..n].chunks_mut(8).enumerate() {
            let w = self.vword(s, i).load(Ordering::Relaxed).to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }

    #[inline]
    fn copy_in(&self, s: usize, v: &[u8]) {
        for i in 0..self.vwords {
            let mut w = [0u8; 8];
            let from = (8 * i).min(v.len());
            let to = (8 * i + 8).min(v.len());
            w[..to - from].copy_from_slice(&v[from..to]);
            self.vword(s, i)
                .store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
    }

    /// Take slot `s`'s lock if it is free and the slot still holds `key`.
    #[inline]
    fn try_lock(&self, s: usize, key: &[u8; KEY_LEN]) -> Option<u32> {
        let lock = &self.slots.get(s)?.lock;
        let v = lock.load(Ordering::Relaxed);
        if v & 1 != 0
            || lock
                .compare_exchange(v, v + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        fence(Ordering::Release);
        if !self.key_is(s, &words(key)) {
            lock.store(v + 2, Ordering::Release);
            return None;
        }
        Some(v)
    }

    /// A write at the head of the key's chain in session `session`: the stored sequence
    /// number plus one (plus [`SESSION_JUMP`] on the key's first write in a newer session) is
    /// stored with the value.
    #[inline]
    pub fn write_head(&self, slot: u32, key: &[u8; KEY_LEN], value: &[u8], session: u16) -> Write {
        let s = slot as usize;
        let Some(v) = self.try_lock(s, key) else {
            return Write::Busy;
        };
        let cur = self.slots[s].seq.load(Ordering::Relaxed);
        let (seq, ses) = (cur as u16, (cur >> 16) as u16);
        let next = if ses == session {
            seq.wrapping_add(1)
        } else {
            seq.wrapping_add(SESSION_JUMP)
        };
        self.slots[s].seq.store(
            u32::from(session) << 16 | u32::from(next),
            Ordering::Relaxed,
        );
        self.copy_in(s, value);
        self.slots[s].lock.store(v + 2, Ordering::Release);
        Write::Applied(next)
    }

    /// A write at a node after the head: applied only when `seq` is newer than what is stored.
    #[inline]
    pub fn write_newer(&self, slot: u32, key: &[u8; KEY_LEN], value: &[u8], seq: u16) -> Write {
        let s = slot as usize;
        let Some(v) = self.try_lock(s, key) else {
            return Write::Busy;
        };
        let cur = self.slots[s].seq.load(Ordering::Relaxed);
        if !newer(seq, cur as u16) {
            self.slots[s].lock.store(v, Ordering::Release);
            // Nothing changed: put the lock back as it was (readers saw no write).
            return Write::Stale;
        }
        self.slots[s]
            .seq
            .store((cur & 0xffff_0000) | u32::from(seq), Ordering::Relaxed);
        self.copy_in(s, value);
        self.slots[s].lock.store(v + 2, Ordering::Release);
        Write::Applied(seq)
    }

    // ---- control plane (single writer) ----

    /// Take slot `s`'s lock, waiting out a worker that holds it (a worker holds a slot for a
    /// few stores; the control plane is not the fast path). Returns the even value it was.
    fn lock_wait(&self, s: usize) -> u32 {
        loop {
            let v = self.slots[s].lock.load(Ordering::Relaxed);
            if v & 1 == 0
                && self.slots[s]
                    .lock
                    .compare_exchange(v, v + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                fence(Ordering::Release);
                return v;
            }
            std::hint::spin_loop();
        }
    }

    /// Insert `key` (value zero, sequence 0).
    pub fn insert(&self, key: &[u8; KEY_LEN]) -> Result<u32, StoreError> {
        if self.find(key).is_some() {
            return Err(StoreError::Exists);
        }
        let slot = self
            .free
            .lock()
            .map_err(|_| StoreError::Full)?
            .pop()
            .ok_or(StoreError::Full)?;
        let s = slot as usize;
        let w = words(key);
        let v = self.lock_wait(s);
        self.slots[s].key[0].store(w[0], Ordering::Relaxed);
        self.slots[s].key[1].store(w[1], Ordering::Relaxed);
        self.slots[s].seq.store(0, Ordering::Relaxed);
        self.copy_in(s, &[]);
        self.slots[s].lock.store(v + 2, Ordering::Release);
        let h = hash(key);
        let mut pos = h as usize & self.mask;
        loop {
            let e = self.index[pos].load(Ordering::Relaxed);
            if e == EMPTY || e == TOMB {
                self.index[pos].store((h >> 32) << 32 | (u64::from(slot) + 1), Ordering::Release);
                return Ok(slot);
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// Delete `key`. Its slot is reused by a later insert; a worker still holding the old
    /// slot number sees the key change under the slot's lock and drops its packet.
    pub fn remove(&self, key: &[u8; KEY_LEN]) -> Result<(), StoreError> {
        let slot = self.find(key).ok_or(StoreError::NotFound)?;
        let h = hash(key);
        let mut pos = h as usize & self.mask;
        for _ in 0..=self.mask {
            let e = self.index[pos].load(Ordering::Relaxed);
            if e != TOMB && e != EMPTY && (e & 0xffff_ffff) as u32 == slot + 1 {
                self.index[pos].store(TOMB, Ordering::Release);
                break;
            }
            pos = (pos + 1) & self.mask;
        }
        let s = slot as usize;
        let v = self.lock_wait(s);
        // No longer the key's: a worker holding the old slot number finds another key here.
        self.slots[s].key[0].store(u64::MAX, Ordering::Relaxed);
        self.slots[s].key[1].store(u64::MAX - s as u64, Ordering::Relaxed);
        self.slots[s].lock.store(v + 2, Ordering::Release);
        if let Ok(mut f) = self.free.lock() {
            f.push(slot);
        }
        Ok(())
    }

    /// Set a key's registers outright (recovery's pre-synchronisation from a neighbour).
    pub fn set(
        &self,
        key: &[u8; KEY_LEN],
        seq: u16,
        session: u16,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let slot = match self.find(key) {
            Some(s) => s,
            None => self.insert(key)?,
        };
        let s = slot as usize;
        let v = self.lock_wait(s);
        self.slots[s]
            .seq
            .store(u32::from(session) << 16 | u32::from(seq), Ordering::Relaxed);
        self.copy_in(s, value);
        self.slots[s].lock.store(v + 2, Ordering::Release);
        Ok(())
    }

    /// A key's registers.
    pub fn get(&self, key: &[u8; KEY_LEN]) -> Option<Record> {
        let slot = self.find(key)?;
        let mut value = vec![0u8; self.value_len];
        // The control plane outwaits writers (they hold a slot for a few stores).
        let cur = self.snapshot(slot as usize, &mut value, usize::MAX)?;
        Some(Record {
            key: *key,
            seq: cur as u16,
            session: (cur >> 16) as u16,
            value,
        })
    }

    /// Every stored key's registers (control plane: listing, recovery).
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for e in self.index.iter() {
            let e = e.load(Ordering::Acquire);
            if e == EMPTY || e == TOMB {
                continue;
            }
            let s = (e & 0xffff_ffff) as usize - 1;
            let mut key = [0u8; KEY_LEN];
            key[..8].copy_from_slice(&self.slots[s].key[0].load(Ordering::Relaxed).to_le_bytes());
            key[8..].copy_from_slice(&self.slots[s].key[1].load(Ordering::Relaxed).to_le_bytes());
            if let Some(r) = self.get(&key) {
                out.push(r);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::key_from_u128;
    use std::sync::Arc;

    #[test]
    fn serial_numbers() {
        assert!(newer(1, 0));
        assert!(!newer(0, 0));
        assert!(!newer(0, 1));
        assert!(newer(0, 0xffff), "wraps");
        assert!(newer(0x7fff, 0));
        assert!(!newer(0x8000, 0));
    }

    #[test]
    fn head_middle_stale_sessions() {
        let st = Store::new(8, 16);
        let k = key_from_u128(2018);
        let slot = st.insert(&k).unwrap();
        assert_eq!(st.insert(&k), Err(StoreError::Exists));
        assert_eq!(st.find(&k), Some(slot));
        assert_eq!(st.write_head(slot, &k, &[1; 16], 0), Write::Applied(1));
        assert_eq!(st.write_head(slot, &k, &[2; 16], 0), Write::Applied(2));
        let mut out = [0u8; 16];
        assert_eq!(st.read(slot, &mut out), Some(2));
        assert_eq!(out, [2; 16]);
        // A middle node: newer applies, the same or older is stale.
        let m = Store::new(8, 16);
        let ms = m.insert(&k).unwrap();
        assert_eq!(m.write_newer(ms, &k, &[1; 16], 1), Write::Applied(1));
        assert_eq!(m.write_newer(ms, &k, &[9; 16], 1), Write::Stale);
        assert_eq!(m.write_newer(ms, &k, &[3; 16], 3), Write::Applied(3));
        assert_eq!(
            m.write_newer(ms, &k, &[2; 16], 2),
            Write::Stale,
            "reordered"
        );
        assert_eq!(m.get(&k).unwrap().value, vec![3; 16]);
        // The middle becomes head in session 1: its first write jumps past anything the old
        // head stamped; the old head's late write (seq 4) is then stale downstream.
        assert_eq!(
            m.write_head(ms, &k, &[5; 16], 1),
            Write::Applied(3 + SESSION_JUMP)
        );
        assert_eq!(
            m.write_head(ms, &k, &[6; 16], 1),
            Write::Applied(4 + SESSION_JUMP)
        );
        assert_eq!(m.write_newer(ms, &k, &[7; 16], 4), Write::Stale);
        // Delete and reuse: the old slot number no longer holds the key.
        st.remove(&k).unwrap();
        assert_eq!(st.find(&k), None);
        assert_eq!(st.write_head(slot, &k, &[1; 16], 0), Write::Busy);
        let k2 = key_from_u128(7);
        let s2 = st.insert(&k2).unwrap();
        assert_eq!(s2, slot, "the slot is reused");
        assert_eq!(
            st.write_head(slot, &k, &[1; 16], 0),
            Write::Busy,
            "wrong key"
        );
        assert_eq!(st.get(&k2).unwrap().seq, 0);
    }

    #[test]
    fn capacity_and_records() {
        let st = Store::new(1000, 128);
        for i in 0..1000u128 {
            st.insert(&key_from_u128(i)).unwrap();
        }
        assert_eq!(st.insert(&key_from_u128(5000)), Err(StoreError::Full));
        assert_eq!(st.len(), 1000);
        for i in (0..1000u128).step_by(3) {
            assert!(st.find(&key_from_u128(i)).is_some());
        }
        st.set(&key_from_u128(3), 77, 2, &[9; 128]).unwrap();
        let r = st.get(&key_from_u128(3)).unwrap();
        assert_eq!((r.seq, r.session, r.value), (77, 2, vec![9; 128]));
        assert_eq!(st.records().len(), 1000);
    }

    /// Workers writing one key concurrently never tear a value: every read sees a value
    /// written whole (all bytes equal), and the sequence only grows.
    #[test]
    fn concurrent_writers_and_readers() {
        let st = Arc::new(Store::new(4, 64));
        let k = key_from_u128(1);
        let slot = st.insert(&k).unwrap();
        let writers: Vec<_> = (0..3u8)
            .map(|t| {
                let st = st.clone();
                std::thread::spawn(move || {
                    let mut applied = 0;
                    for i in 0..5_000u32 {
                        let b = (t * 50).wrapping_add(i as u8);
                        if let Write::Applied(_) = st.write_head(slot, &k, &[b; 64], 0) {
                            applied += 1;
                        }
                    }
                    applied
                })
            })
            .collect();
        let mut last = 0u16;
        let mut out = [0u8; 64];
        for _ in 0..20_000 {
            if let Some(seq) = st.read(slot, &mut out) {
                assert!(out.iter().all(|&b| b == out[0]), "torn read {out:?}");
                assert!(seq == last || newer(seq, last));
                last = seq;
            }
        }
        let applied: u32 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(
            st.get(&k).unwrap().seq,
            applied as u16,
            "one number per applied write"
        );
    }
}
