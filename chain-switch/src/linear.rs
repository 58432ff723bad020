//! A linearizability checker for histories of reads and writes on registers (one per key),
//! after Wing & Gong with Lowe's memoisation: search for an order of the operations that
//! respects real time (an operation that completed before another began comes first) and the
//! register's semantics (a read returns the latest write before it). Keys are independent, so
//! each key's history is checked alone.
//!
//! A write whose outcome is unknown (the client timed out) may take effect at any point after
//! it began, or never; a read that timed out says nothing and is left out.
//!
//! History file (what `netchain bench --history` writes), a line per operation:
//! `client key r|w value invoke_ns complete_ns` — `complete_ns` is `-` for an unknown outcome.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub client: u32,
    pub key: u128,
    pub write: bool,
    /// Written, or read.
    pub value: u64,
    pub invoke: u64,
    /// None: the outcome is unknown.
    pub complete: Option<u64>,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {}",
            self.client,
            self.key,
            if self.write { "w" } else { "r" },
            self.value,
            self.invoke,
            self.complete.map_or("-".to_string(), |c| c.to_string())
        )
    }
}

impl std::str::FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let f: Vec<_> = s.split_whitespace().collect();
        let bad = || format!("bad history line {s:?}");
        if f.len() != 6 {
            return Err(bad());
        }
        Ok(Op {
            client: f[0].parse().map_err(|_| bad())?,
            key: f[1].parse().map_err(|_| bad())?,
            write: match f[2] {
                "w" => true,
                "r" => false,
                _ => return Err(bad()),
            },
            value: f[3].parse().map_err(|_| bad())?,
            invoke: f[4].parse().map_err(|_| bad())?,
            complete: match f[5] {
                "-" => None,
                c => Some(c.parse().map_err(|_| bad())?),
            },
        })
    }
}

/// Why a history is not linearizable (or could not be decided).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order fits: the key, and the operations of the longest prefix found before the
    /// search was stuck.
    Violation {
        key: u128,
        ops: usize,
        deepest: usize,
    },
    /// The search went over its budget of states.
    Unknown {
        key: u128,
    },
}

/// States the search may visit per key before it gives up.
pub const STATE_BUDGET: usize = 2_000_000;

/// Check one register's operations; `init` is its value before them all.
pub fn check_register(ops: &[Op], init: u64) -> Verdict {
    let key = ops.first().map_or(0, |o| o.key);
    // Reads with unknown outcome carry nothing.
    let mut ops: Vec<Op> = ops
        .iter()
        .filter(|o| o.write || o.complete.is_some())
        .copied()
        .collect();
    ops.sort_by_key(|o| o.invoke);
    let n = ops.len();
    let words = n.div_ceil(64);
    let must: usize = ops.iter().filter(|o| o.complete.is_some()).count();
    // (linearized set, register value, completed ops linearized)
    let mut stack: Vec<(Vec<u64>, u64, usize)> = vec![(vec![0; words], init, 0)];
    let mut seen: HashSet<(Vec<u64>, u64)> = HashSet::new();
    let mut deepest = 0;
    while let Some((done, value, count)) = stack.pop() {
        if count == must {
            return Verdict::Linearizable;
        }
        if !seen.insert((done.clone(), value)) {
            continue;
        }
        if seen.len() > STATE_BUDGET {
            return Verdict::Unknown { key };
        }
        deepest = deepest.max(count);
        let is_done = |i: usize| done[i / 64] >> (i % 64) & 1 == 1;
        // Whatever goes next must have begun before the first pending completion.
        let horizon = (0..n)
            .filter(|&i| !is_done(i))
            .filter_map(|i| ops[i].complete)
            .min()
            .unwrap_or(u64::MAX);
        for (i, o) in ops.iter().enumerate() {
            if o.invoke > horizon {
                break;
            }
            if is_done(i) || (!o.write && o.value != value) {
                continue;
            }
            let mut next = done.clone();
            next[i / 64] |= 1 << (i % 64);
            let v = if o.write { o.value } else { value };
            stack.push((next, v, count + usize::from(o.complete.is_some())));
        }
    }
    Verdict::Violation {
        key,
        ops: n,
        deepest,
    }
}

/// Check a whole history, key by key (registers start at `init`). Returns the first key that
/// fails, with how many keys were checked.
pub fn check(history: &[Op], init: u64) -> (Verdict, usize) {
    let mut by_key: BTreeMap<u128, Vec<Op>> = BTreeMap::new();
    for o in history {
        by_key.entry(o.key).or_default().push(*o);
    }
    for ops in by_key.values() {
        let v = check_register(ops, init);
        if v != Verdict::Linearizable {
            return (v, by_key.len());
        }
    }
    (Verdict::Linearizable, by_key.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v: u64, a: u64, b: u64) -> Op {
        Op {
            client: 0,
            key: 1,
            write: true,
            value: v,
            invoke: a,
            complete: Some(b),
        }
    }
    fn r(v: u64, a: u64, b: u64) -> Op {
        Op {
            write: false,
            ..w(v, a, b)
        }
    }
    fn lost(mut o: Op) -> Op {
        o.complete = None;
        o
    }

    #[test]
    fn sequential_and_overlapping_histories_pass() {
        assert_eq!(
            check_register(&[w(1, 0, 1), r(1, 2, 3), w(2, 4, 5), r(2, 6, 7)], 0),
            Verdict::Linearizable
        );
        // A read overlapping a write may see either value.
        for seen in [0, 1] {
            assert_eq!(
                check_register(&[w(1, 0, 10), r(seen, 5, 6)], 0),
                Verdict::Linearizable
            );
        }
        // Two readers during one write: the first sees the new value, the second (later) too.
        assert_eq!(
            check_register(&[w(1, 0, 10), r(1, 1, 2), r(1, 3, 4)], 0),
            Verdict::Linearizable
        );
    }

    #[test]
    fn non_linearizable_histories_are_rejected() {
        // A read after a completed write returns the old value.
        assert!(matches!(
            check_register(&[w(1, 0, 1), r(0, 2, 3)], 0),
            Verdict::Violation { .. }
        ));
        // New value seen, then the old one again by a later read (both during a long write):
        // no single point for the write explains both.
        assert!(matches!(
            check_register(&[w(1, 0, 100), r(1, 10, 20), r(0, 30, 40)], 0),
            Verdict::Violation { deepest: 2, .. }
        ));
        // A value nobody wrote.
        assert!(matches!(
            check_register(&[w(1, 0, 1), r(7, 2, 3)], 0),
            Verdict::Violation { .. }
        ));
        // Two writes in order, reads see them in the opposite order.
        assert!(matches!(
            check_register(&[w(1, 0, 1), w(2, 2, 3), r(2, 4, 5), r(1, 6, 7)], 0),
            Verdict::Violation { .. }
        ));
    }

    #[test]
    fn unknown_writes_may_take_effect_or_not() {
        // A timed-out write seen later: it happened.
        assert_eq!(
            check_register(&[lost(w(5, 0, 0)), r(5, 10, 11)], 0),
            Verdict::Linearizable
        );
        // ... or never seen: it did not.
        assert_eq!(
            check_register(&[lost(w(5, 0, 0)), r(0, 10, 11)], 0),
            Verdict::Linearizable
        );
        // But it cannot take effect before it began.
        assert!(matches!(
            check_register(&[r(5, 0, 1), lost(w(5, 2, 0))], 0),
            Verdict::Violation { .. }
        ));
        // It may land late (after a later write), but then it stays: 5 seen, then 6 again is
        // impossible.
        assert_eq!(
            check_register(
                &[lost(w(5, 0, 0)), w(6, 10, 11), r(6, 12, 13), r(5, 14, 15)],
                0
            ),
            Verdict::Linearizable
        );
        assert!(matches!(
            check_register(
                &[lost(w(5, 0, 0)), w(6, 10, 11), r(5, 12, 13), r(6, 14, 15)],
                0
            ),
            Verdict::Violation { .. }
        ));
    }

    #[test]
    fn histories_by_key_and_the_file_format() {
        let mut h = vec![w(1, 0, 1), r(1, 2, 3)];
        let mut other = r(9, 0, 1);
        other.key = 2;
        h.push(other);
        let (v, keys) = check(&h, 0);
        assert_eq!(keys, 2);
        assert_eq!(
            v,
            Verdict::Violation {
                key: 2,
                ops: 1,
                deepest: 0
            }
        );
        for o in [w(1, 0, 1), lost(w(2, 5, 0))] {
            assert_eq!(o.to_string().parse::<Op>(), Ok(o));
        }
        assert!("1 2 x 3 4 5".parse::<Op>().is_err());
    }
}
