//! The service-router stage (fast path): the router's IPv4 input hands it the packets
//! it claims, their IPv4 headers checked, before routing.
//!
//! A SYN, or a connectionless datagram, carrying a SERVICE extension and addressed to one of
//! the router's addresses is matched against the [`ServiceTable`]:
//!
//! - FORWARD (anycast): the IP destination becomes the chosen instance (the client's source
//!   stays), the router's address (the one the client sent to) joins the SOURCE extension —
//!   appended as `[client, router]` when there is none — and the SAL, IP and transport
//!   checksums follow; routing then decrements the TTL and sends it on. A packet whose SOURCE
//!   already lists this router is a loop and is dropped;
//! - DROP and no match (for a SYN) drop, counted;
//! - DEMUX, DELAY, FORWARD to all targets, and a datagram without a match go to the management
//!   core (local services, the delay queue, copies, the original's RST).
//!
//! Everything else — SYN-ACKs, data, RSYN migration, packets to other hosts — is plain IP.

use crate::id::ServiceId;
use crate::table::{Action, Matched, Mode, RuleRef, ServiceTable};
use crate::wire::{self, Sal};
use packet::checksum::{self, Adjust};
use packet::claim::{Claim, Claimed, ClaimingStage, On};
use packet::ipv4::Ipv4Packet;
use packet::{drop_reasons, Buffer, DropReason, PuntReason, Stage, Verdict};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

drop_reasons! {
    /// Why the service-router stage drops a packet.
    pub enum SalDrop {
        Malformed = "malformed",
        BadChecksum = "bad-checksum",
        NoMatch = "no-match",
        Rule = "drop-rule",
        Loop = "loop",
        SourceFull = "source-full",
        NoRoom = "no-room",
    }
}

/// What the stage shares with the management core.
#[derive(Debug)]
pub struct SalShared {
    pub table: Arc<ServiceTable>,
    /// The router's own addresses: service requests are addressed to one of them.
    pub local: Vec<Ipv4Addr>,
    /// Per-rule packet counts, one array per stage instance (workers, then the management
    /// core's own).
    pub hits: Vec<RuleHits>,
}

impl SalShared {
    /// For `stages` stage instances.
    pub fn new(table: Arc<ServiceTable>, local: Vec<Ipv4Addr>, stages: usize) -> Self {
        let hits = (0..stages.max(1))
            .map(|_| RuleHits::new(table.capacity()))
            .collect();
        SalShared { table, local, hits }
    }

    /// Packets every stage instance matched to rule `slot`.
    pub fn rule_hits(&self, slot: u32) -> u64 {
        self.hits.iter().map(|h| h.get(slot)).sum()
    }
}

/// Packets matched per rule slot, one array per worker (single writer; the management core
/// sums them).
#[derive(Debug)]
pub struct RuleHits(Box<[AtomicU64]>);

impl RuleHits {
    pub fn new(n: usize) -> Self {
        RuleHits((0..n).map(|_| AtomicU64::new(0)).collect())
    }
    #[inline]
    fn bump(&self, slot: u32) {
        if let Some(c) = self.0.get(slot as usize) {
            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }
    /// Hint the counter [`bump`](Self::bump) will write (a burst's lookup pass).
    #[inline]
    fn prefetch(&self, slot: u32, prefetch: impl Fn(*const u8)) {
        if let Some(c) = self.0.get(slot as usize) {
            prefetch(std::ptr::from_ref(c).cast());
        }
    }
    pub fn get(&self, slot: u32) -> u64 {
        self.0
            .get(slot as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// One worker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SalCounters {
    /// Service requests seen (SYNs and datagrams with SERVICE to the router).
    pub requests: u64,
    pub forwarded: u64,
    pub demux: u64,
    pub delayed: u64,
    /// Other Serval packets routed as plain IP.
    pub passed: u64,
}

impl SalCounters {
    pub const NAMES: [&'static str; 5] = ["requests", "forwarded", "demux", "delayed", "passed"];
    pub fn values(&self) -> [u64; 5] {
        [
            self.requests,
            self.forwarded,
            self.demux,
            self.delayed,
            self.passed,
        ]
    }
}

/// The service-router stage of one worker.
#[derive(Debug, Clone)]
pub struct SalStage {
    shared: Arc<SalShared>,
    /// Which of `shared.hits` is this instance's.
    instance: usize,
    rng: u64,
    pub counters: SalCounters,
}

const ETH: usize = packet::ethernet::HEADER_LEN;

impl SalStage {
    /// Stage instance `instance` (its rule counters and its anycast draws are its own).
    pub fn new(shared: Arc<SalShared>, instance: usize) -> Self {
        let mut s = SalStage {
            shared,
            instance: 0,
            rng: 1,
            counters: SalCounters::default(),
        };
        s.set_instance(instance);
        s
    }

    /// Make a copy another instance (a worker's copy of the pipeline).
    pub fn set_instance(&mut self, instance: usize) {
        self.instance = instance.min(self.shared.hits.len() - 1);
        self.rng = (instance as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        self.counters = SalCounters::default();
    }

    pub fn shared(&self) -> &Arc<SalShared> {
        &self.shared
    }

    /// This instance's per-rule counters.
    pub fn hits(&self) -> &RuleHits {
        &self.shared.hits[self.instance]
    }

    #[inline]
    fn draw(&mut self) -> u32 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }

    /// Rewrite a matched request towards `to`: the IP destination, the SOURCE extension, and
    /// the three checksums.
    fn forward<B: Buffer>(
        &mut self,
        pkt: &mut B,
        hl: usize,
        s: &Sal,
        router: Ipv4Addr,
        to: Ipv4Addr,
    ) -> Verdict {
        let sal_at = ETH + hl;
        let f = pkt.data();
        let sal = &f[sal_at..];
        if s.source_addrs(sal).any(|a| a == router) {
            return SalDrop::Loop.drop();
        }
        let client = Ipv4Addr::new(f[ETH + 12], f[ETH + 13], f[ETH + 14], f[ETH + 15]);
        let old_tl = u16::from_be_bytes([f[ETH + 2], f[ETH + 3]]);
        // Where the new bytes go and what they are.
        let (at, grow, new): (usize, usize, [u8; 12]) = match s.source {
            Some(src) => {
                if s.source_n >= wire::SOURCE_MAX {
                    return SalDrop::SourceFull.drop();
                }
                let mut b = [0u8; 12];
                b[..4].copy_from_slice(&router.octets());
                (src + 4 + 4 * s.source_n, 4, b)
            }
            None => {
                let mut b = [0u8; 12];
                b[0] = wire::ext::SOURCE << 4;
                b[1] = 12;
                b[4..8].copy_from_slice(&client.octets());
                b[8..12].copy_from_slice(&router.octets());
                (s.len, 12, b)
            }
        };
        // Checked before anything changes: a refused packet leaves untouched.
        let Some(tl) = old_tl.checked_add(grow as u16) else {
            return SalDrop::NoRoom.drop();
        };
        if s.len + grow > wire::MAX_LEN || pkt.splice(sal_at + at, 0, grow).is_err() {
            return SalDrop::NoRoom.drop();
        }
        let d = pkt.data_mut();
        let Some(sal) = d.get_mut(sal_at..) else {
            return SalDrop::NoRoom.drop();
        };
        // The SAL checksum, updated like the others: the new bytes sit at a 4-byte offset and
        // what follows them moved by 4 or 12, so only the added words and the two length
        // fields change the sum.
        let mut scsum = Adjust::default();
        sal[at..at + grow].copy_from_slice(&new[..grow]);
        scsum.add(&new[..grow]);
        if let Some(src) = s.source {
            let word = |b: &[u8]| u16::from_be_bytes([b[src], b[src + 1]]);
            let old = word(sal);
            sal[src + 1] += 4;
            scsum.field16(old, word(sal));
        }
        let new_len = s.len + grow;
        let old_word = u16::from_be_bytes([sal[8], sal[9]]);
        sal[8] = (new_len / 4) as u8;
        scsum.field16(old_word, u16::from_be_bytes([sal[8], sal[9]]));
        let hc = u16::from_be_bytes([sal[10], sal[11]]);
        sal[10..12].copy_from_slice(&scsum.apply(hc).to_be_bytes());
        // The transport checksum covers the pseudo-header's destination, nothing else here.
        let mut tcsum = Adjust::default();
        tcsum.field32(u32::from(router), u32::from(to));
        let csum_at = match s.protocol {
            6 => Some(new_len + 16),
            17 => Some(new_len + 6),
            _ => None,
        };
        if let Some(slot) = csum_at.and_then(|o| sal.get_mut(o..o + 2)) {
            let old = u16::from_be_bytes([slot[0], slot[1]]);
            if !(s.protocol == 17 && old == 0) {
                let mut v = tcsum.apply(old);
                if s.protocol == 17 {
                    v = checksum::udp_nonzero(v);
                }
                slot.copy_from_slice(&v.to_be_bytes());
            }
        }
        let mut ip = Ipv4Packet::new_unchecked(&mut d[ETH..]);
        let mut icsum = Adjust::default();
        icsum.field16(old_tl, tl);
        icsum.field32(u32::from(router), u32::from(to));
        ip.set_total_len(tl);
        ip.set_dst_addr(to);
        let hc = ip.checksum();
        ip.set_checksum(icsum.apply(hc));
        self.counters.forwarded += 1;
        Verdict::Next
    }

    fn request<B: Buffer>(
        &mut self,
        pkt: &mut B,
        hl: usize,
        router: Ipv4Addr,
        s: &Sal,
        m: Option<Matched>,
    ) -> Verdict {
        let Some(m) = m else {
            // The original: no match drops a SYN, answers anything else with a RST (built
            // by the management core).
            return if s.is_syn() {
                SalDrop::NoMatch.drop()
            } else {
                Verdict::Punt(PuntReason::Application)
            };
        };
        self.shared.hits[self.instance].bump(m.rule);
        match m.action {
            Action::Forward if m.mode == Mode::Anycast => {
                let draw = self.draw();
                match m.pick(draw) {
                    Some(to) => self.forward(pkt, hl, s, router, to),
                    None => SalDrop::NoMatch.drop(),
                }
            }
            Action::Forward => Verdict::Punt(PuntReason::Application),
            Action::Demux => {
                self.counters.demux += 1;
                Verdict::Punt(PuntReason::Application)
            }
            Action::Delay => {
                self.counters.delayed += 1;
                Verdict::Punt(PuntReason::Application)
            }
            Action::Drop => SalDrop::Rule.drop(),
        }
    }
}

impl SalStage {
    /// A service request addressed to the router: (IP header length, the router address it
    /// was sent to, its SAL header). Anything else gets its verdict. The IPv4 input checked the
    /// header (its checksum among the rest) of a claimed packet.
    fn classify(&mut self, f: &[u8], c: &Claimed) -> Result<(usize, Ipv4Addr, Sal), Verdict> {
        if usize::from(c.ip_at) != ETH || c.fragment {
            return Err(Verdict::Next);
        }
        let Some(Ok(ip)) = f.get(ETH..).map(Ipv4Packet::new_checked) else {
            return Err(Verdict::Next);
        };
        if ip.protocol() != wire::PROTOCOL {
            return Err(Verdict::Next);
        }
        let router = ip.dst_addr();
        if !self.shared.local.contains(&router) {
            return Err(Verdict::Next);
        }
        let hl = usize::from(ip.header_len());
        let sal_bytes = ip.payload();
        let s = wire::parse(sal_bytes).map_err(|_| SalDrop::Malformed.drop())?;
        if s.service.is_none() || !(s.is_syn() || s.is_datagram()) {
            self.counters.passed += 1;
            return Err(Verdict::Next);
        }
        if !wire::verify_checksum(&sal_bytes[..s.len]) {
            return Err(SalDrop::BadChecksum.drop());
        }
        Ok((hl, router, s))
    }

    /// Forward a service request to `to` whatever the table says (the management core's
    /// copies for a FORWARD-to-all rule).
    pub fn process_to<B: Buffer>(&mut self, pkt: &mut B, to: Ipv4Addr) -> Verdict {
        let Some(c) = Claimed::validate(pkt.data(), 0) else {
            return Verdict::Next;
        };
        match self.classify(pkt.data(), &c) {
            Ok((hl, router, s)) => self.forward(pkt, hl, &s, router, to),
            Err(v) => v,
        }
    }
}

/// A burst is processed in chunks of this many packets (the stage's scratch size).
const CHUNK: usize = 32;

/// A service request between the passes over a chunk.
#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    /// The packet's index in the burst.
    index: usize,
    hl: usize,
    router: Option<Ipv4Addr>,
    sal: Sal,
    id: Option<ServiceId>,
    at: Option<RuleRef>,
}

impl SalStage {
    /// Three passes over a chunk of up to `N` packets, so that its table misses overlap
    /// instead of queueing: parse every packet and hint the index slots its lookup probes
    /// first; find every request's index entry and hint its rule; then read the rules and act.
    fn process_chunk<B: Buffer, const N: usize>(
        &mut self,
        pkts: &mut [B],
        claimed: &[Claimed],
        verdicts: &mut [Verdict],
    ) {
        let mut pend = [Pending::default(); N];
        for (c, slot) in claimed.iter().zip(pend.iter_mut()) {
            let i = usize::from(c.index);
            let (Some(p), Some(v)) = (pkts.get(i), verdicts.get_mut(i)) else {
                continue;
            };
            match self.classify(p.data(), c) {
                Err(verdict) => *v = verdict,
                Ok((hl, router, sal)) => {
                    self.counters.requests += 1;
                    let id = p.data().get(ETH + hl..).and_then(|b| sal.service_id(b));
                    // A lone packet has nothing to overlap its misses with.
                    if let (Some(id), true) = (&id, N > 1) {
                        self.shared.table.prefetch_lookup(id, 2, B::prefetch);
                    }
                    *slot = Pending {
                        index: i,
                        hl,
                        router: Some(router),
                        sal,
                        id,
                        at: None,
                    };
                }
            }
        }
        let table = &self.shared.table;
        for p in pend.iter_mut().filter(|p| p.router.is_some()) {
            p.at = p.id.and_then(|id| table.locate(&id));
            if let (Some(at), true) = (p.at, N > 1) {
                table.prefetch_rule(at, B::prefetch);
                self.shared.hits[self.instance].prefetch(at.slot(), B::prefetch);
            }
        }
        for p in pend {
            let Some(router) = p.router else { continue };
            let (Some(pkt), Some(v)) = (pkts.get_mut(p.index), verdicts.get_mut(p.index)) else {
                continue;
            };
            let m = p.at.and_then(|at| self.shared.table.rule(at));
            *v = self.request(pkt, p.hl, router, &p.sal, m);
        }
    }
}

impl ClaimingStage for SalStage {
    /// Serval packets to each of the router's addresses.
    fn claims(&self) -> Vec<Claim> {
        self.shared
            .local
            .iter()
            .map(|&a| Claim {
                on: On::Dst(a),
                protocol: wire::PROTOCOL,
                port: None,
                fragments: false,
            })
            .collect()
    }

    fn process_claimed<B: Buffer>(
        &mut self,
        pkts: &mut [B],
        claimed: &[Claimed],
        verdicts: &mut [Verdict],
    ) {
        for chunk in claimed.chunks(CHUNK) {
            self.process_chunk::<B, CHUNK>(pkts, chunk, verdicts);
        }
    }
}

impl Stage for SalStage {
    type Reason = SalDrop;
    const NAME: &'static str = "sal";

    /// A packet that has not been through the router's IPv4 input (tests, benchmarks, fuzzing,
    /// the management core's delayed requests).
    fn process<B: Buffer>(&mut self, pkt: &mut B) -> Verdict {
        let Some(c) = Claimed::validate(pkt.data(), 0) else {
            return Verdict::Next;
        };
        let mut v = [Verdict::Next];
        self.process_chunk::<B, 1>(std::slice::from_mut(pkt), &[c], &mut v);
        v[0]
    }
}
