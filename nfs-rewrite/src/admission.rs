//! Per-client admission on the path to the servers (fortification: fairness). Each worker keeps
//! one table: for every client address it has seen lately, the calls it has at servers through
//! this worker and, if configured, a token bucket. A call over either limit is dropped and
//! counted before it leaves the router (a UDP client retransmits it later, as it does when a
//! server's socket is full), so one client flooding the virtual server holds at most
//! `max_inflight` of a server's queue, however fast it sends, and the others keep their share.
//!
//! Nothing here allocates or locks: a fixed table, open addressing over [`PROBES`] slots; when
//! they are all taken, the least recently used of them is given to the new address (its
//! counts start over: fairness is approximate for more active clients than slots, never
//! wrong for the calls themselves). A client's count is cleared when none of its calls has
//! been answered for a transaction lifetime, since its calls at servers have expired by then
//! (no count leaks on lost replies).

/// Slots an address may take, from its hash on.
pub const PROBES: usize = 8;

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The client has `max_inflight` calls at servers already.
    Inflight,
    /// The client's rate limit (its token bucket is empty).
    Rate,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    addr: u32,
    inflight: u32,
    /// Thousandths of a call.
    tokens: u64,
    /// When the bucket was last filled, and when the slot was last used (ms).
    filled: u64,
    used: u64,
    /// When a call of the client was last answered, or its first one admitted (ms).
    answered: u64,
}

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls of one client at servers at once (through one worker); 0: no limit.
    pub max_inflight: u32,
    /// Calls per second of one client (through one worker); 0: no limit.
    pub rate: u32,
    /// Calls a client may send at once above its rate.
    pub burst: u32,
    /// How long a call waits for its reply (ms): the transactions' lifetime.
    pub ttl_ms: u64,
}

/// One worker's admission table.
#[derive(Debug, Clone)]
pub struct Admission {
    slots: Box<[Slot]>,
    limits: Limits,
}

impl Admission {
    /// Room for about `clients` addresses.
    pub fn new(clients: usize, limits: Limits) -> Self {
        let n = clients.max(PROBES).next_power_of_two();
        Admission {
            slots: vec![Slot::default(); n].into_boxed_slice(),
            limits,
        }
    }

    /// Whether any limit is set (otherwise the stage skips the table).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.limits.max_inflight > 0 || self.limits.rate > 0
    }

    fn index(&self, addr: u32) -> usize {
        (addr.wrapping_mul(0x9E37_79B9) as usize) & (self.slots.len() - 1)
    }

    /// The slot of `addr`, taken if need be (the least recently used of its probes).
    fn slot(&mut self, addr: u32, now: u64) -> &mut Slot {
        let (start, mask) = (self.index(addr), self.slots.len() - 1);
        let mut victim = start;
        for i in 0..PROBES {
            let j = (start + i) & mask;
            let s = &self.slots[j];
            if s.addr == addr {
                return &mut self.slots[j];
            }
            if s.addr == 0 {
                victim = j;
                break;
            }
            if s.used < self.slots[victim].used {
                victim = j;
            }
        }
        let burst = u64::from(self.limits.burst.max(1)) * 1000;
        self.slots[victim] = Slot {
            addr,
            inflight: 0,
            tokens: burst,
            filled: now,
            used: now,
            answered: now,
        };
        &mut self.slots[victim]
    }

    /// Admit a call of `addr` at `now` (ms): its count goes up, a token is spent.
    #[inline]
    pub fn admit(&mut self, addr: u32, now: u64) -> Result<(), Limit> {
        let l = self.limits;
        let s = self.slot(addr, now);
        s.used = now;
        if l.max_inflight > 0 {
            if s.inflight > 0 && now.saturating_sub(s.answered) > l.ttl_ms {
                // Nothing answered for a whole lifetime: what it had out has expired.
                s.inflight = 0;
                s.answered = now;
            }
            if s.inflight >= l.max_inflight {
                return Err(Limit::Inflight);
            }
        }
        if l.rate > 0 {
            let burst = u64::from(l.burst.max(1)) * 1000;
            // rate calls per second = rate thousandths per ms.
            let refill = now.saturating_sub(s.filled) * u64::from(l.rate);
            s.tokens = (s.tokens + refill).min(burst);
            s.filled = now;
            if s.tokens < 1000 {
                return Err(Limit::Rate);
            }
            s.tokens -= 1000;
        }
        if s.inflight == 0 {
            s.answered = now;
        }
        s.inflight += 1;
        Ok(())
    }

    /// A call of `addr` was answered (or replaced by its retransmission).
    #[inline]
    pub fn done(&mut self, addr: u32, now: u64) {
        if self.limits.max_inflight == 0 {
            return;
        }
        let (start, mask) = (self.index(addr), self.slots.len() - 1);
        for i in 0..PROBES {
            let s = &mut self.slots[(start + i) & mask];
            if s.addr == addr {
                s.inflight = s.inflight.saturating_sub(1);
                s.answered = now;
                return;
            }
        }
    }

    /// Calls of `addr` at servers now, as counted here.
    pub fn inflight(&self, addr: u32) -> u32 {
        let (start, mask) = (self.index(addr), self.slots.len() - 1);
        (0..PROBES)
            .map(|i| &self.slots[(start + i) & mask])
            .find(|s| s.addr == addr)
            .map_or(0, |s| s.inflight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u32 = 0x0a00_0102;
    const B: u32 = 0x0a00_0103;

    #[test]
    fn a_flooding_client_is_held_to_its_share() {
        let mut t = Admission::new(
            64,
            Limits {
                max_inflight: 4,
                rate: 0,
                burst: 0,
                ttl_ms: 1000,
            },
        );
        for _ in 0..4 {
            assert_eq!(t.admit(A, 0), Ok(()));
        }
        assert_eq!(t.admit(A, 1), Err(Limit::Inflight));
        // Another client is not affected.
        assert_eq!(t.admit(B, 1), Ok(()));
        // An answer makes room for one more.
        t.done(A, 2);
        assert_eq!(t.admit(A, 3), Ok(()));
        assert_eq!(t.admit(A, 3), Err(Limit::Inflight));
        // Replies lost: after a lifetime without an answer, the count starts over.
        assert_eq!(t.admit(A, 900), Err(Limit::Inflight));
        assert_eq!(t.admit(A, 1003), Ok(()));
        assert_eq!(t.inflight(A), 1);
    }

    #[test]
    fn rate_limits_refill_with_time() {
        let mut t = Admission::new(
            64,
            Limits {
                max_inflight: 0,
                rate: 100, // per second: one per 10 ms
                burst: 5,
                ttl_ms: 1000,
            },
        );
        for _ in 0..5 {
            assert_eq!(t.admit(A, 0), Ok(()));
        }
        assert_eq!(t.admit(A, 0), Err(Limit::Rate));
        assert_eq!(t.admit(A, 5), Err(Limit::Rate));
        assert_eq!(t.admit(A, 10), Ok(()));
        // A long pause refills no more than the burst.
        let ok = (0..20).filter(|_| t.admit(A, 10_000).is_ok()).count();
        assert_eq!(ok, 5);
    }

    #[test]
    fn more_clients_than_slots_reuse_the_least_recently_used() {
        let mut t = Admission::new(
            8,
            Limits {
                max_inflight: 1,
                rate: 0,
                burst: 0,
                ttl_ms: 1000,
            },
        );
        for (i, a) in (1..=100u32).enumerate() {
            assert_eq!(
                t.admit(a, i as u64),
                Ok(()),
                "a new client always gets a slot"
            );
        }
        // The most recent ones are still counted.
        assert_eq!(t.admit(100, 200), Err(Limit::Inflight));
    }
}
