//! The service table: longest-prefix match on 256-bit serviceIDs.
//!
//! Workers read it without locks while the management core changes it in place:
//!
//! - the **prefix index** is one open-addressing hash table keyed by (prefix length, masked
//!   serviceID), plus a bitmap of the prefix lengths in use. A lookup probes the lengths in use
//!   from the longest down and stops at the first hit: one or two hash probes for a table of
//!   host registrations (/32 or /256) under a few aggregates, never the 256 dependent pointer
//!   loads of the original's one-bit trie ([`BitTrie`], kept to compare against);
//! - **rules** live in a slab; an index entry names its rule by slot and generation, so a
//!   worker that raced a delete-and-reuse sees the mismatch and reads again;
//! - every slot is a seqlock over atomics (the single writer bumps the sequence around a
//!   change; a reader retries when it moved), so a reader never sees half an update.
//!
//! [`Rules`] is the writer's side: the configured entries (target sets by priority), the slab's
//! free list, and publication of the highest-priority set of each prefix.

use crate::id::{Prefix, ServiceId};
use packet::seqlock::SeqLock;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Most targets in one rule.
pub const MAX_TARGETS: usize = 8;
const MAX_PROBE: usize = 32;

/// What a target does with a matching packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Action {
    /// Send to the target's IPv4 address.
    Forward = 0,
    /// Deliver to a local service on the management core (the controller is one).
    Demux = 1,
    /// Queue on the management core until the controller resolves the service.
    Delay = 2,
    /// Drop (counted).
    Drop = 3,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Forward, Action::Demux, Action::Delay, Action::Drop];
    pub fn name(self) -> &'static str {
        match self {
            Action::Forward => "forward",
            Action::Demux => "demux",
            Action::Delay => "delay",
            Action::Drop => "drop",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == s)
    }
    fn from_u32(v: u32) -> Action {
        Self::ALL.get(v as usize).copied().unwrap_or(Action::Drop)
    }
}

/// How a rule with several targets uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// One target per packet, by weighted random sampling (the original's default).
    #[default]
    Anycast,
    /// A copy to every target.
    All,
}

/// One target of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub action: Action,
    /// The instance (FORWARD); unused by the other actions.
    pub addr: Ipv4Addr,
    /// Relative weight for anycast; 0 counts as 1.
    pub weight: u32,
}

/// Where an index entry keeps its rule (slab slot and generation), between the two halves of
/// a lookup; a one-target rule travels inline (see [`Inline`]) and needs no second read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleRef {
    slot: u32,
    gen: u32,
    prefix_len: u16,
    inline: Inline,
}

impl RuleRef {
    /// The rule's slab slot (its counters' index).
    #[inline]
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

/// A one-target rule packed into one word of its index slot, so that the common lookup (a
/// registration with one instance) reads one cache line instead of two: valid (bit 63) |
/// mode (bit 58) | action (bits 56..57) | weight (bits 32..55) | IPv4 address (bits 0..31).
/// 0: the rule is in its slab slot only (several targets, or a weight above 24 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Inline(u64);

impl Inline {
    const VALID: u64 = 1 << 63;
    const WEIGHT_MAX: u32 = (1 << 24) - 1;

    fn of(mode: Mode, targets: &[Target]) -> Inline {
        match targets {
            [t] if t.weight <= Self::WEIGHT_MAX => Inline(
                Self::VALID
                    | u64::from(matches!(mode, Mode::All)) << 58
                    | (t.action as u64) << 56
                    | u64::from(t.weight.max(1)) << 32
                    | u64::from(u32::from(t.addr)),
            ),
            _ => Inline(0),
        }
    }

    fn get(self) -> Option<(Mode, Action, u32, u32)> {
        let v = self.0;
        (v & Self::VALID != 0).then(|| {
            let mode = if v >> 58 & 1 == 1 {
                Mode::All
            } else {
                Mode::Anycast
            };
            let weight = (v >> 32) as u32 & Self::WEIGHT_MAX;
            (
                mode,
                Action::from_u32((v >> 56 & 3) as u32),
                v as u32,
                weight,
            )
        })
    }
}

/// A rule as a worker reads it: the prefix's highest-priority target set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched {
    /// The rule's slab slot (its counters' index).
    pub rule: u32,
    pub prefix_len: u16,
    pub action: Action,
    pub mode: Mode,
    n: u8,
    addrs: [u32; MAX_TARGETS],
    /// Cumulative weights: target i is chosen for a draw below `cum[i]`.
    cum: [u32; MAX_TARGETS],
}

impl Matched {
    /// Target addresses (FORWARD).
    pub fn addrs(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.addrs[..usize::from(self.n)]
            .iter()
            .map(|&a| Ipv4Addr::from(a))
    }

    /// Target addresses with their weights (FORWARD).
    pub fn targets(&self) -> impl Iterator<Item = (Ipv4Addr, u32)> + '_ {
        let n = usize::from(self.n);
        (0..n).map(|i| {
            let below = if i == 0 { 0 } else { self.cum[i - 1] };
            (
                Ipv4Addr::from(self.addrs[i]),
                self.cum[i].saturating_sub(below),
            )
        })
    }

    pub fn len(&self) -> usize {
        usize::from(self.n)
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The anycast choice for a uniformly random `draw`.
    #[inline]
    pub fn pick(&self, draw: u32) -> Option<Ipv4Addr> {
        let n = usize::from(self.n);
        let total = *self.cum[..n].last()?;
        let r = ((u64::from(draw) * u64::from(total)) >> 32) as u32;
        let i = self.cum[..n].iter().position(|&c| r < c).unwrap_or(n - 1);
        Some(Ipv4Addr::from(self.addrs[i]))
    }
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct IndexSlot {
    seq: SeqLock,
    /// 0 empty, 1 + prefix length used, u32::MAX a tomb.
    state: AtomicU32,
    rule: AtomicU32,
    gen: AtomicU32,
    key: [AtomicU64; 4],
    /// The rule itself when it has one target ([`Inline`]), else 0.
    inline: AtomicU64,
}

const EMPTY: u32 = 0;
const TOMB: u32 = u32::MAX;

#[derive(Debug, Default)]
#[repr(align(64))]
struct RuleSlot {
    seq: SeqLock,
    gen: AtomicU32,
    /// action | mode << 8 | n << 16 | prefix length << 32
    meta: AtomicU64,
    /// Target i: address << 32 | cumulative weight. A reader loads only the `n` in use: a rule
    /// of up to six targets is one cache line.
    targets: [AtomicU64; MAX_TARGETS],
}

/// The table workers read (shared through an `Arc`; one writer: [`Rules`]).
#[derive(Debug)]
pub struct ServiceTable {
    index: Box<[IndexSlot]>,
    imask: usize,
    rules: Box<[RuleSlot]>,
    /// Bit l set: some prefix of length l is in the index (l = 0..=256).
    lengths: [AtomicU64; 5],
    /// A one-hash Bloom filter over the index's (length, prefix) keys, eight bits per rule
    /// (128 KiB at 100K rules, so it stays cached): a lookup skips the index probe of a length
    /// whose bit is clear — most lookups of a /32 registration no longer miss on the /256
    /// probe first. Never a false negative: a bit is set before its entry is published and
    /// cleared only when no entry hashes to it.
    filter: Box<[AtomicU64]>,
    fmask: usize,
    /// The writer's count of entries per filter bit.
    fcount: Box<[AtomicU16]>,
    /// Random hash keys (per table).
    keys: [u64; 4],
}

#[inline]
fn mix(x: u64) -> u64 {
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[inline]
fn words(id: &ServiceId) -> [u64; 4] {
    let w = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&id.0[i * 8..i * 8 + 8]);
        u64::from_be_bytes(b)
    };
    [w(0), w(1), w(2), w(3)]
}

/// The words of `id` masked to `len` bits.
#[inline]
fn masked_words(w: &[u64; 4], len: u16) -> [u64; 4] {
    let mut out = [0u64; 4];
    let len = usize::from(len);
    for (i, o) in out.iter_mut().enumerate() {
        let bits = len.saturating_sub(i * 64).min(64);
        *o = match bits {
            0 => 0,
            64 => w[i],
            b => w[i] & !(u64::MAX >> b),
        };
    }
    out
}

impl ServiceTable {
    /// A table for up to `rules` prefixes (the index gets twice as many slots).
    pub fn new(rules: usize) -> Self {
        let rules = rules.max(16);
        let n = (rules * 2).next_power_of_two();
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(rules);
            h.finish()
        };
        let fbits = (rules * 8).next_power_of_two();
        ServiceTable {
            index: (0..n).map(|_| IndexSlot::default()).collect(),
            imask: n - 1,
            rules: (0..rules).map(|_| RuleSlot::default()).collect(),
            lengths: Default::default(),
            filter: (0..fbits / 64).map(|_| AtomicU64::new(0)).collect(),
            fmask: fbits - 1,
            fcount: (0..fbits).map(|_| AtomicU16::new(0)).collect(),
            keys: [1u64, 2, 3, 4].map(|i| mix(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15))),
        }
    }

    /// Rule slots (the counters' size).
    pub fn capacity(&self) -> usize {
        self.rules.len()
    }

    #[inline]
    fn hash(&self, w: &[u64; 4], len: u16) -> usize {
        // Four independent multiplies, then one mix: a short dependency chain (a lookup hashes
        // once per prefix length it probes).
        const K: [u64; 4] = [
            0x9e37_79b9_7f4a_7c15,
            0xc2b2_ae3d_27d4_eb4f,
            0x1656_67b1_9e37_79f9,
            0xd6e8_feb8_6659_fd93,
        ];
        // Each word is keyed before its multiply (which does not distribute over XOR), so
        // colliding ids cannot be chosen without the table's random keys.
        let k = &self.keys;
        let h = (w[0] ^ k[0]).wrapping_mul(K[0])
            ^ (w[1] ^ k[1]).rotate_left(17).wrapping_mul(K[1])
            ^ (w[2] ^ k[2]).rotate_left(31).wrapping_mul(K[2])
            ^ (w[3] ^ k[3] ^ u64::from(len) << 48).wrapping_mul(K[3]);
        mix(h) as usize
    }

    /// The filter bit of an index key's hash (bits independent of the index position's).
    #[inline]
    fn fbit(&self, h: usize) -> usize {
        h.rotate_left(32) & self.fmask
    }

    /// May the index hold a key with hash `h`?
    #[inline]
    fn maybe(&self, h: usize) -> bool {
        let b = self.fbit(h);
        self.filter[b / 64].load(Ordering::Acquire) & 1 << (b % 64) != 0
    }

    /// Writer: count an index key into the filter (before its entry is published) or out of it
    /// (after its entry is gone).
    fn filter_count(&self, key: &[u64; 4], len: u16, add: bool) {
        let b = self.fbit(self.hash(key, len));
        let c = &self.fcount[b];
        let n = c.load(Ordering::Relaxed);
        if n == u16::MAX {
            // Saturated: the bit stays set for good.
            return;
        }
        let n = if add { n + 1 } else { n.saturating_sub(1) };
        c.store(n, Ordering::Relaxed);
        let w = &self.filter[b / 64];
        if n > 0 {
            w.fetch_or(1 << (b % 64), Ordering::Release);
        } else {
            w.fetch_and(!(1 << (b % 64)), Ordering::Release);
        }
    }

    /// The prefix lengths in use, longest first.
    #[inline]
    fn lengths_desc(&self) -> impl Iterator<Item = u16> + '_ {
        (0..5).rev().flat_map(move |chunk| {
            let mut bits = self.lengths[chunk].load(Ordering::Acquire);
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let top = 63 - bits.leading_zeros() as usize;
                    bits &= !(1 << top);
                    (chunk * 64 + top) as u16
                })
            })
        })
    }

    /// The longest prefix holding `id`, with its rule.
    #[inline]
    pub fn lookup(&self, id: &ServiceId) -> Option<Matched> {
        self.locate(id).and_then(|r| self.rule(r))
    }

    /// A burst's first pass: hint (with `prefetch`, e.g. [`packet::Buffer::prefetch`]) the
    /// index slots a lookup of `id` probes first — of the `depth` longest prefix lengths in
    /// use, those the filter lets through — so that the burst's misses overlap.
    #[inline]
    pub fn prefetch_lookup(&self, id: &ServiceId, depth: usize, prefetch: impl Fn(*const u8)) {
        let w = words(id);
        for len in self.lengths_desc().take(depth) {
            let h = self.hash(&masked_words(&w, len), len);
            if self.maybe(h) {
                prefetch(std::ptr::from_ref(&self.index[h & self.imask]).cast());
            }
        }
    }

    /// The index half of [`lookup`](Self::lookup): where the longest prefix holding `id` keeps
    /// its rule.
    #[inline]
    pub fn locate(&self, id: &ServiceId) -> Option<RuleRef> {
        let w = words(id);
        self.lengths_desc()
            .find_map(|len| self.find(&masked_words(&w, len), len))
    }

    /// Hint the rule slot [`rule`](Self::rule) will read (none for a rule held inline).
    #[inline]
    pub fn prefetch_rule(&self, r: RuleRef, prefetch: impl Fn(*const u8)) {
        if r.inline.0 != 0 {
            return;
        }
        if let Some(s) = self.rules.get(r.slot as usize) {
            prefetch(std::ptr::from_ref(s).cast());
        }
    }

    /// The rule half of [`lookup`](Self::lookup); `None` when the rule was deleted since. A
    /// one-target rule comes from the index entry itself, as it was when the entry was read.
    #[inline]
    pub fn rule(&self, r: RuleRef) -> Option<Matched> {
        let Some((mode, action, addr, weight)) = r.inline.get() else {
            return self.read_rule(r.slot, r.gen);
        };
        let mut m = Matched {
            rule: r.slot,
            prefix_len: r.prefix_len,
            action,
            mode,
            n: 1,
            addrs: [0; MAX_TARGETS],
            cum: [0; MAX_TARGETS],
        };
        m.addrs[0] = addr;
        m.cum[0] = weight;
        Some(m)
    }

    /// The rule of exactly this prefix, if any.
    pub fn exact(&self, p: &Prefix) -> Option<Matched> {
        self.find(&words(&p.id), p.len).and_then(|r| self.rule(r))
    }

    #[inline]
    fn find(&self, key: &[u64; 4], len: u16) -> Option<RuleRef> {
        let h = self.hash(key, len);
        if !self.maybe(h) {
            return None;
        }
        let want = 1 + u32::from(len);
        for i in 0..MAX_PROBE {
            let s = &self.index[(h + i) & self.imask];
            let (state, rule, gen, k, inline) = s.seq.read(|| {
                (
                    s.state.load(Ordering::Relaxed),
                    s.rule.load(Ordering::Relaxed),
                    s.gen.load(Ordering::Relaxed),
                    s.key.each_ref().map(|w| w.load(Ordering::Relaxed)),
                    s.inline.load(Ordering::Relaxed),
                )
            });
            if state == EMPTY {
                return None;
            }
            if state == want && k == *key {
                return Some(RuleRef {
                    slot: rule,
                    gen,
                    prefix_len: len,
                    inline: Inline(inline),
                });
            }
        }
        None
    }

    #[inline]
    fn read_rule(&self, idx: u32, gen: u32) -> Option<Matched> {
        let s = self.rules.get(idx as usize)?;
        let (g, m) = s.seq.read(|| {
            let g = s.gen.load(Ordering::Relaxed);
            let meta = s.meta.load(Ordering::Relaxed);
            let n = ((meta >> 16) & 0xff).min(MAX_TARGETS as u64) as u8;
            let mut m = Matched {
                rule: idx,
                prefix_len: (meta >> 32) as u16,
                action: Action::from_u32((meta & 0xff) as u32),
                mode: if (meta >> 8) & 0xff == 1 {
                    Mode::All
                } else {
                    Mode::Anycast
                },
                n,
                addrs: [0; MAX_TARGETS],
                cum: [0; MAX_TARGETS],
            };
            for (i, t) in s.targets[..usize::from(n)].iter().enumerate() {
                let v = t.load(Ordering::Relaxed);
                m.addrs[i] = (v >> 32) as u32;
                m.cum[i] = v as u32;
            }
            (g, m)
        });
        // A rule deleted (and its slot perhaps reused) after the index was read.
        (g == gen).then_some(m)
    }

    fn write_rule(&self, idx: u32, gen: u32, prefix_len: u16, mode: Mode, targets: &[Target]) {
        let s = &self.rules[idx as usize];
        let action = targets.first().map_or(Action::Drop, |t| t.action);
        let n = targets.len().min(MAX_TARGETS);
        let meta = action as u64
            | (matches!(mode, Mode::All) as u64) << 8
            | (n as u64) << 16
            | u64::from(prefix_len) << 32;
        s.seq.write(|| {
            let mut cum = 0u32;
            for (i, slot) in s.targets.iter().enumerate() {
                let v = match targets.get(i) {
                    Some(t) if i < n => {
                        cum = cum.saturating_add(t.weight.max(1));
                        u64::from(u32::from(t.addr)) << 32 | u64::from(cum)
                    }
                    _ => 0,
                };
                slot.store(v, Ordering::Relaxed);
            }
            s.meta.store(meta, Ordering::Relaxed);
            s.gen.store(gen, Ordering::Relaxed);
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn write_index(
        &self,
        at: usize,
        state: u32,
        key: &[u64; 4],
        rule: u32,
        gen: u32,
        inline: Inline,
    ) {
        let s = &self.index[at];
        s.seq.write(|| {
            for (a, k) in s.key.iter().zip(key) {
                a.store(*k, Ordering::Relaxed);
            }
            s.rule.store(rule, Ordering::Relaxed);
            s.gen.store(gen, Ordering::Relaxed);
            s.inline.store(inline.0, Ordering::Relaxed);
            s.state.store(state, Ordering::Relaxed);
        });
    }

    /// Writer: a published rule changed its targets; its index entry's inline copy follows
    /// (after the slab slot is written, so a reader sees the old rule or the new one).
    fn write_inline(&self, key: &[u64; 4], len: u16, inline: Inline) {
        if let Ok((at, true)) = self.slot_for(key, len) {
            let s = &self.index[at];
            s.seq.write(|| s.inline.store(inline.0, Ordering::Relaxed));
        }
    }

    /// Writer: the index slot of this prefix, or where to put it.
    fn slot_for(&self, key: &[u64; 4], len: u16) -> Result<(usize, bool), TableError> {
        let h = self.hash(key, len);
        let want = 1 + u32::from(len);
        let mut free = None;
        for i in 0..MAX_PROBE {
            let at = (h + i) & self.imask;
            let s = &self.index[at];
            let state = s.state.load(Ordering::Relaxed);
            if state == want
                && s.key
                    .iter()
                    .zip(key)
                    .all(|(a, k)| a.load(Ordering::Relaxed) == *k)
            {
                return Ok((at, true));
            }
            if (state == EMPTY || state == TOMB) && free.is_none() {
                free = Some(at);
            }
            if state == EMPTY {
                break;
            }
        }
        free.map(|at| (at, false)).ok_or(TableError::Full)
    }

    fn set_length(&self, len: u16, on: bool) {
        let (w, b) = (usize::from(len) / 64, len % 64);
        if on {
            self.lengths[w].fetch_or(1 << b, Ordering::Release);
        } else {
            self.lengths[w].fetch_and(!(1 << b), Ordering::Release);
        }
    }
}

/// Why a rule change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("the service table is full")]
    Full,
    #[error("a rule has 1 to {MAX_TARGETS} targets")]
    Targets,
    #[error(
        "a DROP or DELAY target takes no other targets, and targets of one set share one action"
    )]
    Mixed,
    #[error("no such rule")]
    NotFound,
}

/// A rule as an operator writes it (config file, `routerctl sal rule add`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub prefix: Prefix,
    pub priority: u32,
    pub mode: Mode,
    pub targets: Vec<Target>,
}

impl RuleSpec {
    /// From text: a prefix (`16385`, `0x…/LEN`, `ID/LEN`), an action (forward, demux, delay,
    /// drop), FORWARD targets as `ADDRESS[:WEIGHT]`, a priority, a mode (anycast, all).
    pub fn parse(
        prefix: &str,
        action: &str,
        targets: &[String],
        priority: u32,
        mode: Option<&str>,
    ) -> Result<Self, String> {
        let prefix: Prefix = prefix
            .parse()
            .map_err(|e| format!("prefix {prefix:?}: {e}"))?;
        let action = Action::from_name(action)
            .ok_or_else(|| format!("action {action:?}: one of forward, demux, delay, drop"))?;
        let mode = match mode.unwrap_or("anycast") {
            "anycast" => Mode::Anycast,
            "all" => Mode::All,
            m => return Err(format!("mode {m:?}: anycast or all")),
        };
        let targets: Vec<Target> = if action == Action::Forward {
            if targets.is_empty() {
                return Err("a forward rule needs targets (ADDRESS[:WEIGHT])".into());
            }
            targets
                .iter()
                .map(|t| {
                    let (a, w) = t.split_once(':').unwrap_or((t, "1"));
                    Ok(Target {
                        action,
                        addr: a
                            .parse()
                            .map_err(|_| format!("target {t:?}: not an IPv4 address"))?,
                        weight: w.parse().map_err(|_| format!("target {t:?}: bad weight"))?,
                    })
                })
                .collect::<Result<_, String>>()?
        } else {
            if !targets.is_empty() {
                return Err(format!("a {} rule takes no targets", action.name()));
            }
            vec![Target {
                action,
                addr: Ipv4Addr::UNSPECIFIED,
                weight: 1,
            }]
        };
        Rules::check(&targets).map_err(|e| e.to_string())?;
        Ok(RuleSpec {
            prefix,
            priority,
            mode,
            targets,
        })
    }
}

/// A configured entry: target sets by priority (the highest is published).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub sets: BTreeMap<u32, (Mode, Vec<Target>)>,
    slot: u32,
    gen: u32,
}

/// One row of [`Rules::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRow {
    pub prefix: Prefix,
    pub priority: u32,
    pub mode: Mode,
    pub targets: Vec<Target>,
    /// The set workers use (the highest priority).
    pub active: bool,
    pub slot: u32,
}

/// The writer's side of the service table (the management core).
#[derive(Debug)]
pub struct Rules {
    table: Arc<ServiceTable>,
    entries: BTreeMap<Prefix, Entry>,
    free: Vec<u32>,
    per_len: Vec<u32>,
    next_gen: u32,
}

impl Rules {
    pub fn new(table: Arc<ServiceTable>) -> Self {
        let free = (0..table.capacity() as u32).rev().collect();
        Rules {
            table,
            entries: BTreeMap::new(),
            free,
            per_len: vec![0; 257],
            next_gen: 1,
        }
    }

    pub fn table(&self) -> &Arc<ServiceTable> {
        &self.table
    }

    /// Prefixes in the table.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn check(targets: &[Target]) -> Result<(), TableError> {
        if targets.is_empty() || targets.len() > MAX_TARGETS {
            return Err(TableError::Targets);
        }
        let a = targets[0].action;
        if targets.iter().any(|t| t.action != a)
            || (matches!(a, Action::Drop | Action::Delay) && targets.len() > 1)
        {
            return Err(TableError::Mixed);
        }
        Ok(())
    }

    /// Add targets to the set of `prefix` at `priority` (a target to the same address
    /// replaces its weight; a DROP/DELAY set is replaced whole), creating the entry if needed.
    pub fn add(
        &mut self,
        prefix: Prefix,
        priority: u32,
        mode: Mode,
        targets: &[Target],
    ) -> Result<(), TableError> {
        let old = self
            .entries
            .get(&Prefix::new(prefix.id, prefix.len))
            .and_then(|e| e.sets.get(&priority))
            .map(|(_, t)| t.as_slice());
        let merged = Self::merged(old, targets)?;
        self.set(prefix, priority, mode, merged)
    }

    /// The set [`Rules::add`] makes of `targets` and the set `old` already at that prefix and
    /// priority: FORWARD and DEMUX sets grow (a target to the same address replaces its
    /// weight); a DROP or DELAY set is replaced.
    pub fn merged(old: Option<&[Target]>, targets: &[Target]) -> Result<Vec<Target>, TableError> {
        Self::check(targets)?;
        let mut merged = match old {
            Some(old)
                if old.first().is_some_and(|o| {
                    o.action == targets[0].action
                        && matches!(o.action, Action::Forward | Action::Demux)
                }) =>
            {
                old.to_vec()
            }
            _ => Vec::new(),
        };
        for t in targets {
            match merged
                .iter_mut()
                .find(|m| m.addr == t.addr && m.action == t.action)
            {
                Some(m) => m.weight = t.weight,
                None => merged.push(*t),
            }
        }
        Self::check(&merged)?;
        Ok(merged)
    }

    /// Rule slots still free.
    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// Replace the set of `prefix` at `priority`.
    pub fn set(
        &mut self,
        prefix: Prefix,
        priority: u32,
        mode: Mode,
        targets: Vec<Target>,
    ) -> Result<(), TableError> {
        Self::check(&targets)?;
        let prefix = Prefix::new(prefix.id, prefix.len);
        if !self.entries.contains_key(&prefix) {
            let slot = self.free.pop().ok_or(TableError::Full)?;
            let key = words(&prefix.id);
            let (at, _) = match self.table.slot_for(&key, prefix.len) {
                Ok(x) => x,
                Err(e) => {
                    self.free.push(slot);
                    return Err(e);
                }
            };
            let gen = self.next_gen;
            self.next_gen = self.next_gen.wrapping_add(1).max(1);
            // The rule first, then the filter and the index entry that names it, then the
            // length bit.
            self.table.write_rule(slot, gen, prefix.len, mode, &targets);
            self.table.filter_count(&key, prefix.len, true);
            self.table.write_index(
                at,
                1 + u32::from(prefix.len),
                &key,
                slot,
                gen,
                Inline::of(mode, &targets),
            );
            self.per_len[usize::from(prefix.len)] += 1;
            self.table.set_length(prefix.len, true);
            let mut e = Entry {
                slot,
                gen,
                ..Entry::default()
            };
            e.sets.insert(priority, (mode, targets));
            self.entries.insert(prefix, e);
            return Ok(());
        }
        if let Some(e) = self.entries.get_mut(&prefix) {
            e.sets.insert(priority, (mode, targets));
        }
        self.publish(&prefix);
        Ok(())
    }

    /// Write the entry's highest-priority set to its slot.
    fn publish(&self, prefix: &Prefix) {
        if let Some(e) = self.entries.get(prefix) {
            if let Some((_, (mode, targets))) = e.sets.iter().next_back() {
                self.table
                    .write_rule(e.slot, e.gen, prefix.len, *mode, targets);
                self.table
                    .write_inline(&words(&prefix.id), prefix.len, Inline::of(*mode, targets));
            }
        }
    }

    /// Delete from `prefix`: one target (by address) of one priority's set, a whole set, or
    /// (both `None`) the whole entry. The entry goes when its last set does.
    pub fn del(
        &mut self,
        prefix: Prefix,
        priority: Option<u32>,
        addr: Option<Ipv4Addr>,
    ) -> Result<(), TableError> {
        let prefix = Prefix::new(prefix.id, prefix.len);
        let e = self.entries.get_mut(&prefix).ok_or(TableError::NotFound)?;
        match (priority, addr) {
            (None, None) => e.sets.clear(),
            (p, a) => {
                let prios: Vec<u32> = match p {
                    Some(p) => vec![p],
                    None => e.sets.keys().copied().collect(),
                };
                let mut hit = false;
                for p in prios {
                    let Some((_, set)) = e.sets.get_mut(&p) else {
                        continue;
                    };
                    match a {
                        Some(a) => {
                            let before = set.len();
                            set.retain(|t| t.addr != a);
                            hit |= set.len() != before;
                        }
                        None => {
                            set.clear();
                            hit = true;
                        }
                    }
                    if set.is_empty() {
                        e.sets.remove(&p);
                    }
                }
                if !hit {
                    return Err(TableError::NotFound);
                }
            }
        }
        if !e.sets.is_empty() {
            self.publish(&prefix);
            return Ok(());
        }
        let e = self.entries.remove(&prefix).ok_or(TableError::NotFound)?;
        let key = words(&prefix.id);
        if let Ok((at, true)) = self.table.slot_for(&key, prefix.len) {
            self.table
                .write_index(at, TOMB, &[0; 4], 0, 0, Inline::default());
            self.table.filter_count(&key, prefix.len, false);
        }
        // Invalidate the rule (generation 0 never matches an index entry).
        self.table
            .write_rule(e.slot, 0, prefix.len, Mode::Anycast, &[]);
        self.free.push(e.slot);
        let n = &mut self.per_len[usize::from(prefix.len)];
        *n -= 1;
        if *n == 0 {
            self.table.set_length(prefix.len, false);
        }
        Ok(())
    }

    /// Every configured set, by prefix then priority (highest first).
    pub fn list(&self) -> Vec<RuleRow> {
        let mut out = Vec::new();
        for (p, e) in &self.entries {
            let top = e.sets.keys().next_back().copied();
            for (prio, (mode, targets)) in e.sets.iter().rev() {
                out.push(RuleRow {
                    prefix: *p,
                    priority: *prio,
                    mode: *mode,
                    targets: targets.clone(),
                    active: Some(*prio) == top,
                    slot: e.slot,
                });
            }
        }
        out
    }

    /// The configured entry of exactly `prefix`.
    pub fn get(&self, prefix: &Prefix) -> Option<&Entry> {
        self.entries.get(prefix)
    }
}

/// The original Serval's service table shape: a binary trie walked one bit per level. Kept as
/// the reference the fast table is compared with (benchmarks, property tests).
#[derive(Debug, Default)]
pub struct BitTrie<V> {
    root: BitNode<V>,
    len: usize,
}

#[derive(Debug)]
struct BitNode<V> {
    value: Option<V>,
    child: [Option<Box<BitNode<V>>>; 2],
}

impl<V> Default for BitNode<V> {
    fn default() -> Self {
        BitNode {
            value: None,
            child: [None, None],
        }
    }
}

impl<V> BitTrie<V> {
    pub fn new() -> Self {
        BitTrie {
            root: BitNode::default(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, p: &Prefix, v: V) {
        let mut n = &mut self.root;
        for i in 0..usize::from(p.len) {
            n = n.child[usize::from(p.id.bit(i))].get_or_insert_with(Box::default);
        }
        if n.value.replace(v).is_none() {
            self.len += 1;
        }
    }

    pub fn remove(&mut self, p: &Prefix) -> Option<V> {
        let mut n = &mut self.root;
        for i in 0..usize::from(p.len) {
            n = n.child[usize::from(p.id.bit(i))].as_deref_mut()?;
        }
        let v = n.value.take();
        if v.is_some() {
            self.len -= 1;
        }
        v
    }

    /// Longest match: one level per bit.
    pub fn lookup(&self, id: &ServiceId) -> Option<(u16, &V)> {
        let mut n = &self.root;
        let mut best = n.value.as_ref().map(|v| (0, v));
        for i in 0..256 {
            match n.child[usize::from(id.bit(i))].as_deref() {
                Some(c) => {
                    n = c;
                    if let Some(v) = &n.value {
                        best = Some((i as u16 + 1, v));
                    }
                }
                None => break,
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fwd(a: u32, w: u32) -> Target {
        Target {
            action: Action::Forward,
            addr: Ipv4Addr::from(a),
            weight: w,
        }
    }

    #[test]
    fn priorities_targets_and_deletes() {
        let mut r = Rules::new(Arc::new(ServiceTable::new(64)));
        let t = r.table().clone();
        let p: Prefix = "16385".parse().unwrap();
        let id = ServiceId::from_u32(16385);
        assert!(t.lookup(&id).is_none());
        r.add(
            Prefix::DEFAULT,
            0,
            Mode::Anycast,
            &[Target {
                action: Action::Drop,
                addr: Ipv4Addr::UNSPECIFIED,
                weight: 0,
            }],
        )
        .unwrap();
        assert_eq!(t.lookup(&id).unwrap().action, Action::Drop);
        r.add(p, 1, Mode::Anycast, &[fwd(1, 3)]).unwrap();
        r.add(p, 1, Mode::Anycast, &[fwd(2, 1)]).unwrap();
        let m = t.lookup(&id).unwrap();
        assert_eq!((m.action, m.len(), m.prefix_len), (Action::Forward, 2, 32));
        // Weighted 3:1.
        let mut hits = [0u32; 2];
        for i in 0..4000u32 {
            let a = m.pick(i.wrapping_mul(0x9e37_79b9)).unwrap();
            hits[(u32::from(a) - 1) as usize] += 1;
        }
        assert!((2800..3200).contains(&hits[0]), "{hits:?}");
        // A higher priority set takes over; deleting it brings the lower one back.
        r.add(p, 5, Mode::Anycast, &[fwd(9, 1)]).unwrap();
        assert_eq!(
            t.lookup(&id).unwrap().addrs().collect::<Vec<_>>(),
            [Ipv4Addr::from(9)]
        );
        r.del(p, Some(5), None).unwrap();
        assert_eq!(t.lookup(&id).unwrap().len(), 2);
        r.del(p, None, Some(Ipv4Addr::from(1))).unwrap();
        assert_eq!(
            t.lookup(&id).unwrap().addrs().collect::<Vec<_>>(),
            [Ipv4Addr::from(2)]
        );
        r.del(p, None, None).unwrap();
        assert_eq!(t.lookup(&id).unwrap().prefix_len, 0, "back to the default");
        assert_eq!(r.del(p, None, None), Err(TableError::NotFound));
        // Mixed sets are refused.
        let drop = Target {
            action: Action::Drop,
            addr: Ipv4Addr::UNSPECIFIED,
            weight: 0,
        };
        assert_eq!(
            r.add(p, 0, Mode::Anycast, &[fwd(1, 1), drop]),
            Err(TableError::Mixed)
        );
        assert_eq!(r.list().len(), 1);
    }

    #[test]
    fn one_target_rules_are_read_from_the_index_entry() {
        let mut r = Rules::new(Arc::new(ServiceTable::new(64)));
        let t = r.table().clone();
        let p: Prefix = "16385".parse().unwrap();
        let id = ServiceId::from_u32(16385);
        let found = |t: &ServiceTable| {
            let at = t.locate(&id).unwrap();
            let m = t.rule(at).unwrap();
            (at.inline.0 != 0, m.mode, m.targets().collect::<Vec<_>>())
        };
        r.add(p, 0, Mode::All, &[fwd(1, 7)]).unwrap();
        assert_eq!(found(&t), (true, Mode::All, vec![(Ipv4Addr::from(1), 7)]));
        let at = t.locate(&id).unwrap();
        assert_eq!(t.rule(at).unwrap().prefix_len, 32);
        // The rule is read from the entry, not the slab: a slab slot changed behind the
        // index's back does not show.
        t.write_rule(at.slot, at.gen, 32, Mode::All, &[fwd(9, 1)]);
        assert_eq!(
            t.rule(at).unwrap().addrs().collect::<Vec<_>>(),
            [Ipv4Addr::from(1)]
        );
        t.write_rule(at.slot, at.gen, 32, Mode::All, &[fwd(1, 7)]);
        // A second target: the entry points at the slab again; back to one: inline again.
        r.add(p, 0, Mode::All, &[fwd(2, 1)]).unwrap();
        assert!(!found(&t).0, "two targets: in the slab");
        assert_eq!(found(&t).2.len(), 2);
        r.del(p, None, Some(Ipv4Addr::from(1))).unwrap();
        assert_eq!(found(&t), (true, Mode::All, vec![(Ipv4Addr::from(2), 1)]));
        // A weight too wide for the inline word stays in the slab, exact.
        r.set(p, 0, Mode::Anycast, vec![fwd(3, 1 << 30)]).unwrap();
        assert_eq!(
            found(&t),
            (false, Mode::Anycast, vec![(Ipv4Addr::from(3), 1 << 30)])
        );
        // DELAY and DROP rules are one target too.
        let delay = Target {
            action: Action::Delay,
            addr: Ipv4Addr::UNSPECIFIED,
            weight: 0,
        };
        r.set(p, 0, Mode::Anycast, vec![delay]).unwrap();
        let at = t.locate(&id).unwrap();
        assert_ne!(at.inline.0, 0);
        assert_eq!(t.rule(at).unwrap().action, Action::Delay);
        // Deleted: the entry is gone with its inline rule.
        r.del(p, None, None).unwrap();
        assert!(t.locate(&id).is_none());
    }

    #[test]
    fn full_table_refuses() {
        let mut r = Rules::new(Arc::new(ServiceTable::new(16)));
        for i in 0..16 {
            r.add(
                Prefix::new(ServiceId::from_u32(i), 32),
                0,
                Mode::Anycast,
                &[fwd(i, 1)],
            )
            .unwrap();
        }
        assert_eq!(
            r.add(
                Prefix::new(ServiceId::from_u32(99), 32),
                0,
                Mode::Anycast,
                &[fwd(1, 1)]
            ),
            Err(TableError::Full)
        );
        r.del(Prefix::new(ServiceId::from_u32(3), 32), None, None)
            .unwrap();
        r.add(
            Prefix::new(ServiceId::from_u32(99), 32),
            0,
            Mode::Anycast,
            &[fwd(1, 1)],
        )
        .unwrap();
        assert_eq!(
            r.table()
                .lookup(&ServiceId::from_u32(99))
                .unwrap()
                .addrs()
                .next(),
            Some(Ipv4Addr::from(1))
        );
        assert!(r.table().lookup(&ServiceId::from_u32(3)).is_none());
    }

    #[test]
    fn filter_bits_shared_by_several_entries_stay_set() {
        // 16 rules get 128 filter bits: with 16 entries of every length some share a bit, and
        // deleting one must not hide the others.
        let mut r = Rules::new(Arc::new(ServiceTable::new(16)));
        let p = |i: u32, len: u16| Prefix::new(ServiceId::from_u32(i << 8), len);
        for round in 0..20u32 {
            let len = [32, 24, 256][round as usize % 3];
            for i in 0..16 {
                r.add(p(i, len), 0, Mode::Anycast, &[fwd(i + 1, 1)])
                    .unwrap();
            }
            for i in (0..16).filter(|i| (i + round) % 2 == 0) {
                r.del(p(i, len), None, None).unwrap();
            }
            for i in 0..16 {
                let kept = (i + round) % 2 == 1;
                let m = r.table().exact(&p(i, len));
                assert_eq!(m.is_some(), kept, "round {round} entry {i}");
                if kept {
                    let id = ServiceId::from_u32(i << 8);
                    let hit = r.table().lookup(&id).unwrap();
                    assert_eq!(hit.addrs().next(), Some(Ipv4Addr::from(i + 1)));
                }
            }
            for i in (0..16).filter(|i| (i + round) % 2 == 1) {
                r.del(p(i, len), None, None).unwrap();
            }
        }
        assert!(r
            .table()
            .filter
            .iter()
            .all(|w| w.load(Ordering::Relaxed) == 0));
    }

    fn arb_prefix() -> impl Strategy<Value = Prefix> {
        // Few distinct top bits so prefixes nest and overlap.
        (
            0u8..4,
            any::<[u8; 32]>(),
            prop_oneof![0u16..=40, 0u16..=256],
        )
            .prop_map(|(top, mut b, len)| {
                b[0] = (top << 6) | ((b[0] & 0x3f) % 4);
                Prefix::new(ServiceId(b), len)
            })
    }

    proptest! {
        /// The fast table and the original's bit trie agree on every lookup, through inserts
        /// and deletes.
        #[test]
        fn matches_the_bit_trie(
            ops in proptest::collection::vec((arb_prefix(), any::<bool>()), 1..120),
            probes in proptest::collection::vec(any::<[u8; 32]>(), 1..60),
        ) {
            let mut r = Rules::new(Arc::new(ServiceTable::new(256)));
            let mut trie = BitTrie::new();
            for (i, (p, del)) in ops.iter().enumerate() {
                if *del {
                    let a = r.del(*p, None, None).is_ok();
                    let b = trie.remove(p).is_some();
                    prop_assert_eq!(a, b);
                } else {
                    r.set(*p, 0, Mode::Anycast, vec![fwd(i as u32 + 1, 1)]).unwrap();
                    trie.insert(p, i as u32 + 1);
                }
            }
            prop_assert_eq!(r.len(), trie.len());
            let mut ids: Vec<ServiceId> = probes.into_iter().map(|mut b| { b[0] = (b[0] & 0xc3) % 0xc4; ServiceId(b) }).collect();
            ids.extend(ops.iter().map(|(p, _)| p.id));
            for id in ids {
                let fast = r.table().lookup(&id).map(|m| (m.prefix_len, u32::from(m.addrs().next().unwrap())));
                let slow = trie.lookup(&id).map(|(l, v)| (l, *v));
                prop_assert_eq!(fast, slow, "{}", id);
            }
        }
    }
}
