//! A sequence lock for records made of atomics: one writer changes a record in place while
//! readers on other cores read it without locks, retrying a read that overlapped a change, so
//! that no reader acts on half an update and no reader ever delays the writer. The tables the
//! workers read (NFS handles, Serval index and rules, the NetChain failover table) use it.

use std::sync::atomic::{fence, AtomicU32, Ordering};

/// The sequence counter of one record: odd while a write is in progress.
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct SeqLock(AtomicU32);

impl SeqLock {
    /// Run `read` — Relaxed loads of the record's atomics — until no write overlapped it, and
    /// return what the last run returned.
    #[inline]
    pub fn read<T>(&self, mut read: impl FnMut() -> T) -> T {
        loop {
            let s1 = self.0.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let v = read();
                fence(Ordering::Acquire);
                if self.0.load(Ordering::Relaxed) == s1 {
                    return v;
                }
            }
            std::hint::spin_loop();
        }
    }

    /// The record's single writer: change it with `write` (Relaxed stores); readers that
    /// overlap retry.
    #[inline]
    pub fn write<T>(&self, write: impl FnOnce() -> T) -> T {
        let s = self.0.load(Ordering::Relaxed);
        self.0.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        let v = write();
        self.0.store(s.wrapping_add(2), Ordering::Release);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    /// A reader never sees the two halves of a record from different writes.
    #[test]
    fn readers_never_see_a_torn_record() {
        struct Rec {
            lock: SeqLock,
            a: AtomicU64,
            b: AtomicU64,
        }
        let r = Arc::new(Rec {
            lock: SeqLock::default(),
            a: AtomicU64::new(0),
            b: AtomicU64::new(!0),
        });
        let w = Arc::clone(&r);
        let writer = std::thread::spawn(move || {
            for i in 1..=200_000u64 {
                w.lock.write(|| {
                    w.a.store(i, Ordering::Relaxed);
                    w.b.store(!i, Ordering::Relaxed);
                });
            }
        });
        let mut last = 0;
        while !writer.is_finished() || last < 200_000 {
            let (a, b) = r
                .lock
                .read(|| (r.a.load(Ordering::Relaxed), r.b.load(Ordering::Relaxed)));
            assert_eq!(b, !a, "torn read");
            assert!(a >= last, "went back in time");
            last = a;
        }
        writer.join().unwrap();
    }
}
