//! The IPv4 forwarding table: a DIR-24-8 longest-prefix-match table (as DPDK's rte_lpm) whose
//! entries are atomics, so the management core updates it in place while workers read it
//! without locks; and the next-hop table the FIB entries point into.
//!
//! Entry layout (u32): bit 31 valid, bit 30 extended (points to a tbl8 group), bits 24..29 the
//! prefix depth that wrote the entry, bits 0..23 the next-hop index (or tbl8 group index).
//! Workers see each entry either before or after an update; a tbl8 group is fully written
//! before the tbl24 entry pointing to it is published (release/acquire), and freed groups are
//! reused only after every worker passed a quiescent point (see [`crate::qsbr`]).

use crate::qsbr::Qsbr;
use packet::ethernet::EthernetAddress;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

const VALID: u32 = 1 << 31;
const EXT: u32 = 1 << 30;
const DEPTH_SHIFT: u32 = 24;
const INDEX_MASK: u32 = 0x00ff_ffff;
const TBL24_LEN: usize = 1 << 24;
const GROUP_LEN: usize = 256;

/// Errors from route updates.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FibError {
    #[error("prefix length {0} is over 32")]
    BadDepth(u8),
    #[error("no free tbl8 group (raise fib.tbl8_groups)")]
    Tbl8Full,
    #[error("route table full ({0} routes; raise fib.max_routes)")]
    RoutesFull(usize),
    #[error("no such route {0}/{1}")]
    NoSuchRoute(Ipv4Addr, u8),
    #[error("next-hop table full ({0}; raise fib.max_next_hops)")]
    NextHopsFull(usize),
    #[error("next hop {0} is not in use")]
    NoSuchNextHop(u32),
}

#[inline]
fn entry(valid_nh: u32, depth: u8) -> u32 {
    VALID | (u32::from(depth) << DEPTH_SHIFT) | (valid_nh & INDEX_MASK)
}
#[inline]
fn depth_of(e: u32) -> u8 {
    ((e >> DEPTH_SHIFT) & 0x3f) as u8
}

/// The lookup side, shared by every worker.
#[derive(Debug)]
pub struct Lpm {
    tbl24: Box<[AtomicU32]>,
    tbl8: Box<[AtomicU32]>,
}

impl Lpm {
    fn new(tbl8_groups: usize) -> Self {
        // calloc'd: the kernel hands out zero pages lazily, so a 64 MiB table costs nothing
        // until it is written.
        let z = |n: usize| -> Box<[AtomicU32]> { bytemuck::allocation::zeroed_slice_box(n) };
        Lpm {
            tbl24: z(TBL24_LEN),
            tbl8: z(tbl8_groups * GROUP_LEN),
        }
    }

    /// Longest-prefix match: the next-hop index, or `None` when no route covers `ip`.
    #[inline(always)]
    pub fn lookup(&self, ip: u32) -> Option<u32> {
        let e = self.tbl24.get((ip >> 8) as usize)?.load(Ordering::Acquire);
        let e = if e & EXT != 0 {
            let i = (e & INDEX_MASK) as usize * GROUP_LEN + (ip & 0xff) as usize;
            self.tbl8.get(i)?.load(Ordering::Relaxed)
        } else {
            e
        };
        if e & VALID != 0 {
            Some(e & INDEX_MASK)
        } else {
            None
        }
    }

    /// Hint the tbl24 entry [`lookup`](Self::lookup) of `ip` reads first (a burst's parse
    /// pass, so that the burst's misses start early and overlap).
    #[inline(always)]
    pub fn prefetch(&self, ip: u32, prefetch: impl Fn(*const u8)) {
        if let Some(e) = self.tbl24.get((ip >> 8) as usize) {
            prefetch(std::ptr::from_ref(e).cast());
        }
    }

    /// Look up a burst of addresses (the worker calls this once per burst).
    #[inline]
    pub fn lookup_bulk(&self, ips: &[u32], out: &mut [Option<u32>]) {
        for (ip, o) in ips.iter().zip(out.iter_mut()) {
            *o = self.lookup(*ip);
        }
    }
}

/// What a next hop does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NextHopKind {
    /// Forward out of `port` to `gateway` (resolved link-layer address in the entry).
    Gateway,
    /// A directly connected subnet: the destination itself is the neighbour.
    Connected,
    /// One of the router's own addresses.
    Local,
    /// Discard silently.
    Blackhole,
}

impl NextHopKind {
    fn code(self) -> u64 {
        match self {
            NextHopKind::Gateway => 1,
            NextHopKind::Connected => 2,
            NextHopKind::Local => 3,
            NextHopKind::Blackhole => 4,
        }
    }
    fn from_code(c: u64) -> Option<Self> {
        Some(match c {
            1 => NextHopKind::Gateway,
            2 => NextHopKind::Connected,
            3 => NextHopKind::Local,
            4 => NextHopKind::Blackhole,
            _ => return None,
        })
    }
}

/// One next hop as workers read it: two words, each updated atomically.
#[derive(Debug, Default)]
#[repr(align(16))]
pub struct NextHopEntry {
    /// kind (bits 48..55) | port (bits 32..47) | gateway IPv4 (bits 0..31)
    meta: AtomicU64,
    /// resolved (bit 63) | MAC (bits 0..47)
    mac: AtomicU64,
}

const RESOLVED: u64 = 1 << 63;

/// A next hop as the fast path needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    pub kind: NextHopKind,
    pub port: u16,
    pub gateway: Ipv4Addr,
    /// The neighbour's MAC, once resolved.
    pub mac: Option<EthernetAddress>,
}

/// The next-hop table (index 0 is never used).
#[derive(Debug)]
pub struct NextHopTable {
    entries: Box<[NextHopEntry]>,
}

impl NextHopTable {
    fn new(n: usize) -> Self {
        NextHopTable {
            entries: (0..n.max(2)).map(|_| NextHopEntry::default()).collect(),
        }
    }

    /// Read next hop `i` (fast path).
    #[inline(always)]
    pub fn get(&self, i: u32) -> Option<NextHop> {
        let e = self.entries.get(i as usize)?;
        let meta = e.meta.load(Ordering::Acquire);
        let kind = NextHopKind::from_code((meta >> 48) & 0xff)?;
        let mac = e.mac.load(Ordering::Acquire);
        Some(NextHop {
            kind,
            port: (meta >> 32) as u16,
            gateway: Ipv4Addr::from(meta as u32),
            mac: (mac & RESOLVED != 0).then(|| EthernetAddress::from_u64(mac & 0xffff_ffff_ffff)),
        })
    }

    fn set(&self, i: u32, kind: NextHopKind, port: u16, gw: Ipv4Addr) {
        if let Some(e) = self.entries.get(i as usize) {
            e.mac.store(0, Ordering::Release);
            let meta = (kind.code() << 48) | (u64::from(port) << 32) | u64::from(u32::from(gw));
            e.meta.store(meta, Ordering::Release);
        }
    }

    fn clear(&self, i: u32) {
        if let Some(e) = self.entries.get(i as usize) {
            e.meta.store(0, Ordering::Release);
            e.mac.store(0, Ordering::Release);
        }
    }

    fn set_mac(&self, i: u32, mac: Option<EthernetAddress>) {
        if let Some(e) = self.entries.get(i as usize) {
            let v = mac.map_or(0, |m| RESOLVED | m.to_u64());
            e.mac.store(v, Ordering::Release);
        }
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }
}

/// The read side handed to workers.
#[derive(Debug)]
pub struct FibView {
    pub lpm: Lpm,
    pub next_hops: NextHopTable,
}

/// Sizes of the FIB.
#[derive(Debug, Clone, Copy)]
pub struct FibSizes {
    pub tbl8_groups: usize,
    pub max_routes: usize,
    pub max_next_hops: usize,
}

impl Default for FibSizes {
    fn default() -> Self {
        FibSizes {
            tbl8_groups: 4096,
            max_routes: 2_000_000,
            max_next_hops: 65_536,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct NhKey {
    kind: u8,
    port: u16,
    gw: u32,
}

/// One installed route as the control plane lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub prefix: Ipv4Addr,
    pub len: u8,
    pub next_hop: u32,
}

/// The writer side, owned by the management core: the rule list (per depth), next-hop
/// allocation with reference counts, and the shared [`FibView`].
#[derive(Debug)]
pub struct Fib {
    view: Arc<FibView>,
    qsbr: Arc<Qsbr>,
    rules: Vec<HashMap<u32, u32>>, // per depth 0..=32: masked prefix -> next hop
    route_count: usize,
    sizes: FibSizes,
    tbl8_free: Vec<u32>,
    nh_by_key: HashMap<NhKey, u32>,
    nh_refs: Vec<u32>,
    nh_keys: Vec<Option<NhKey>>,
    nh_free: Vec<u32>,
    /// Groups that could not be reclaimed because a worker was wedged.
    pub leaked_tbl8: usize,
}

impl Fib {
    /// An empty FIB.
    pub fn new(sizes: FibSizes, qsbr: Arc<Qsbr>) -> Self {
        let view = Arc::new(FibView {
            lpm: Lpm::new(sizes.tbl8_groups),
            next_hops: NextHopTable::new(sizes.max_next_hops),
        });
        let n = view.next_hops.capacity();
        Fib {
            view,
            qsbr,
            rules: vec![HashMap::new(); 33],
            route_count: 0,
            sizes,
            tbl8_free: (0..sizes.tbl8_groups as u32).rev().collect(),
            nh_by_key: HashMap::new(),
            nh_refs: vec![0; n],
            nh_keys: vec![None; n],
            nh_free: (1..n as u32).rev().collect(),
            leaked_tbl8: 0,
        }
    }

    /// The shared read side.
    pub fn view(&self) -> Arc<FibView> {
        self.view.clone()
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.route_count
    }

    /// True when no route is installed.
    pub fn is_empty(&self) -> bool {
        self.route_count == 0
    }

    /// tbl8 groups in use.
    pub fn tbl8_used(&self) -> usize {
        self.sizes.tbl8_groups - self.tbl8_free.len()
    }

    /// tbl8 groups allocated.
    pub fn tbl8_groups(&self) -> usize {
        self.sizes.tbl8_groups
    }

    /// Find or create the next hop (kind, port, gateway) and take a reference on it.
    pub fn next_hop_ref(
        &mut self,
        kind: NextHopKind,
        port: u16,
        gw: Ipv4Addr,
    ) -> Result<u32, FibError> {
        let key = NhKey {
            kind: kind.code() as u8,
            port,
            gw: u32::from(gw),
        };
        if let Some(&i) = self.nh_by_key.get(&key) {
            self.nh_refs[i as usize] += 1;
            return Ok(i);
        }
        let i = self
            .nh_free
            .pop()
            .ok_or(FibError::NextHopsFull(self.nh_refs.len()))?;
        self.view.next_hops.set(i, kind, port, gw);
        self.nh_by_key.insert(key, i);
        self.nh_keys[i as usize] = Some(key);
        self.nh_refs[i as usize] = 1;
        Ok(i)
    }

    /// Drop a reference; the slot is freed at zero.
    pub fn next_hop_unref(&mut self, i: u32) {
        let Some(r) = self.nh_refs.get_mut(i as usize) else {
            return;
        };
        if *r == 0 {
            return;
        }
        *r -= 1;
        if *r == 0 {
            if let Some(k) = self.nh_keys[i as usize].take() {
                self.nh_by_key.remove(&k);
            }
            // Workers may still hold the index from a lookup made before the route went away:
            // clear, wait for them, then recycle.
            self.view.next_hops.clear(i);
            if self.qsbr.synchronize(Duration::from_millis(100)) {
                self.nh_free.push(i);
            }
        }
    }

    /// Set (or clear) the resolved MAC of every next hop through `gw` on `port`.
    pub fn resolve(&mut self, port: u16, gw: Ipv4Addr, mac: Option<EthernetAddress>) -> usize {
        let key = NhKey {
            kind: NextHopKind::Gateway.code() as u8,
            port,
            gw: u32::from(gw),
        };
        match self.nh_by_key.get(&key) {
            Some(&i) => {
                self.view.next_hops.set_mac(i, mac);
                1
            }
            None => 0,
        }
    }

    /// Every next hop in use: (index, hop, references).
    pub fn next_hops(&self) -> Vec<(u32, NextHop, u32)> {
        let mut v: Vec<_> = self
            .nh_by_key
            .values()
            .filter_map(|&i| Some((i, self.view.next_hops.get(i)?, self.nh_refs[i as usize])))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    }

    /// Next hop of an exact route.
    pub fn route_next_hop(&self, prefix: Ipv4Addr, len: u8) -> Option<u32> {
        let p = u32::from(prefix) & packet::ipv4::mask(len);
        self.rules.get(usize::from(len))?.get(&p).copied()
    }

    /// Every route, sorted by prefix then length.
    pub fn routes(&self) -> Vec<Route> {
        let mut v = Vec::with_capacity(self.route_count);
        for (d, m) in self.rules.iter().enumerate() {
            for (&p, &nh) in m {
                v.push(Route {
                    prefix: Ipv4Addr::from(p),
                    len: d as u8,
                    next_hop: nh,
                });
            }
        }
        v.sort_by_key(|r| (u32::from(r.prefix), r.len));
        v
    }

    /// Install or replace `prefix/len → nh` (the caller holds a reference on `nh` for it;
    /// a replaced route's reference is released here).
    pub fn add(&mut self, prefix: Ipv4Addr, len: u8, nh: u32) -> Result<(), FibError> {
        if len > 32 {
            return Err(FibError::BadDepth(len));
        }
        let ip = u32::from(prefix) & packet::ipv4::mask(len);
        let old = self.rules[usize::from(len)].get(&ip).copied();
        if old.is_none() && self.route_count >= self.sizes.max_routes {
            return Err(FibError::RoutesFull(self.sizes.max_routes));
        }
        if len <= 24 {
            self.write_le24(ip, len, nh, None);
        } else {
            self.write_gt24(ip, len, nh, None)?;
        }
        self.rules[usize::from(len)].insert(ip, nh);
        match old {
            Some(o) => self.next_hop_unref(o),
            None => self.route_count += 1,
        }
        Ok(())
    }

    /// Remove `prefix/len`, releasing its next-hop reference.
    pub fn del(&mut self, prefix: Ipv4Addr, len: u8) -> Result<(), FibError> {
        if len > 32 {
            return Err(FibError::BadDepth(len));
        }
        let ip = u32::from(prefix) & packet::ipv4::mask(len);
        let nh = self.rules[usize::from(len)]
            .remove(&ip)
            .ok_or(FibError::NoSuchRoute(Ipv4Addr::from(ip), len))?;
        self.route_count -= 1;
        // The covering rule that takes over, if any.
        let cover = (0..len).rev().find_map(|d| {
            let p = ip & packet::ipv4::mask(d);
            self.rules[usize::from(d)].get(&p).map(|&n| (n, d))
        });
        if len <= 24 {
            self.clear_le24(ip, len, cover);
        } else {
            self.clear_gt24(ip, len, cover);
        }
        self.next_hop_unref(nh);
        Ok(())
    }

    fn write_le24(&mut self, ip: u32, len: u8, nh: u32, _: Option<()>) {
        let lpm = &self.view.lpm;
        let first = (ip >> 8) as usize;
        let count = 1usize << (24 - u32::from(len));
        let new = entry(nh, len);
        for e in &lpm.tbl24[first..first + count] {
            let cur = e.load(Ordering::Relaxed);
            if cur & EXT != 0 {
                let g = (cur & INDEX_MASK) as usize;
                for t in &lpm.tbl8[g * GROUP_LEN..(g + 1) * GROUP_LEN] {
                    let c = t.load(Ordering::Relaxed);
                    if c & VALID == 0 || depth_of(c) <= len {
                        t.store(new, Ordering::Release);
                    }
                }
            } else if cur & VALID == 0 || depth_of(cur) <= len {
                e.store(new, Ordering::Release);
            }
        }
    }

    fn write_gt24(&mut self, ip: u32, len: u8, nh: u32, _: Option<()>) -> Result<(), FibError> {
        let idx24 = (ip >> 8) as usize;
        let cur = self.view.lpm.tbl24[idx24].load(Ordering::Relaxed);
        let g = if cur & EXT != 0 {
            (cur & INDEX_MASK) as usize
        } else {
            let g = self.tbl8_free.pop().ok_or(FibError::Tbl8Full)? as usize;
            // Fill the group with what tbl24 held, then publish it.
            let fill = if cur & VALID != 0 { cur } else { 0 };
            for t in &self.view.lpm.tbl8[g * GROUP_LEN..(g + 1) * GROUP_LEN] {
                t.store(fill, Ordering::Relaxed);
            }
            g
        };
        let lpm = &self.view.lpm;
        let first = (ip & 0xff) as usize;
        let count = 1usize << (32 - u32::from(len));
        let new = entry(nh, len);
        for t in &lpm.tbl8[g * GROUP_LEN + first..g * GROUP_LEN + first + count] {
            let c = t.load(Ordering::Relaxed);
            if c & VALID == 0 || depth_of(c) <= len {
                t.store(new, Ordering::Release);
            }
        }
        if cur & EXT == 0 {
            lpm.tbl24[idx24].store(VALID | EXT | g as u32, Ordering::Release);
        }
        Ok(())
    }

    fn clear_le24(&mut self, ip: u32, len: u8, cover: Option<(u32, u8)>) {
        let lpm = &self.view.lpm;
        let first = (ip >> 8) as usize;
        let count = 1usize << (24 - u32::from(len));
        let repl = cover.map_or(0, |(n, d)| entry(n, d));
        for e in &lpm.tbl24[first..first + count] {
            let cur = e.load(Ordering::Relaxed);
            if cur & EXT != 0 {
                let g = (cur & INDEX_MASK) as usize;
                for t in &lpm.tbl8[g * GROUP_LEN..(g + 1) * GROUP_LEN] {
                    let c = t.load(Ordering::Relaxed);
                    if c & VALID != 0 && depth_of(c) == len {
                        t.store(repl, Ordering::Release);
                    }
                }
            } else if cur & VALID != 0 && depth_of(cur) == len {
                e.store(repl, Ordering::Release);
            }
        }
    }

    fn clear_gt24(&mut self, ip: u32, len: u8, cover: Option<(u32, u8)>) {
        let idx24 = (ip >> 8) as usize;
        let cur = self.view.lpm.tbl24[idx24].load(Ordering::Relaxed);
        if cur & EXT == 0 {
            return;
        }
        let g = (cur & INDEX_MASK) as usize;
        let repl = cover.map_or(0, |(n, d)| entry(n, d));
        let lpm = &self.view.lpm;
        let first = (ip & 0xff) as usize;
        let count = 1usize << (32 - u32::from(len));
        for t in &lpm.tbl8[g * GROUP_LEN + first..g * GROUP_LEN + first + count] {
            let c = t.load(Ordering::Relaxed);
            if c & VALID != 0 && depth_of(c) == len {
                t.store(repl, Ordering::Release);
            }
        }
        // Collapse the group when no entry is deeper than 24 any more.
        let group = &lpm.tbl8[g * GROUP_LEN..(g + 1) * GROUP_LEN];
        let first_e = group[0].load(Ordering::Relaxed);
        let collapsible = group.iter().all(|t| {
            let c = t.load(Ordering::Relaxed);
            c == first_e && (c & VALID == 0 || depth_of(c) <= 24)
        });
        if collapsible {
            lpm.tbl24[idx24].store(first_e, Ordering::Release);
            if self.qsbr.synchronize(Duration::from_millis(100)) {
                self.tbl8_free.push(g as u32);
            } else {
                self.leaked_tbl8 += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fib() -> Fib {
        Fib::new(
            FibSizes {
                tbl8_groups: 64,
                max_routes: 10_000,
                max_next_hops: 1024,
            },
            Arc::new(Qsbr::new(0)),
        )
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins_and_delete_restores_cover() {
        let mut f = fib();
        let a = f
            .next_hop_ref(NextHopKind::Gateway, 0, ip("10.0.0.1"))
            .unwrap();
        let b = f
            .next_hop_ref(NextHopKind::Gateway, 1, ip("10.0.0.2"))
            .unwrap();
        let c = f
            .next_hop_ref(NextHopKind::Gateway, 1, ip("10.0.0.3"))
            .unwrap();
        f.add(ip("10.0.0.0"), 8, a).unwrap();
        f.add(ip("10.1.0.0"), 16, b).unwrap();
        f.add(ip("10.1.2.128"), 25, c).unwrap();
        let v = f.view();
        assert_eq!(v.lpm.lookup(u32::from(ip("10.9.9.9"))), Some(a));
        assert_eq!(v.lpm.lookup(u32::from(ip("10.1.9.9"))), Some(b));
        assert_eq!(v.lpm.lookup(u32::from(ip("10.1.2.200"))), Some(c));
        assert_eq!(v.lpm.lookup(u32::from(ip("10.1.2.1"))), Some(b));
        assert_eq!(v.lpm.lookup(u32::from(ip("11.0.0.1"))), None);
        assert_eq!(f.tbl8_used(), 1);
        f.del(ip("10.1.2.128"), 25).unwrap();
        assert_eq!(v.lpm.lookup(u32::from(ip("10.1.2.200"))), Some(b));
        assert_eq!(f.tbl8_used(), 0, "group collapsed and freed");
        f.del(ip("10.1.0.0"), 16).unwrap();
        assert_eq!(v.lpm.lookup(u32::from(ip("10.1.2.200"))), Some(a));
        assert_eq!(
            f.del(ip("10.1.0.0"), 16),
            Err(FibError::NoSuchRoute(ip("10.1.0.0"), 16))
        );
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn default_route_and_host_route() {
        let mut f = fib();
        let a = f
            .next_hop_ref(NextHopKind::Gateway, 0, ip("1.1.1.1"))
            .unwrap();
        let l = f
            .next_hop_ref(NextHopKind::Local, 0, Ipv4Addr::UNSPECIFIED)
            .unwrap();
        f.add(Ipv4Addr::UNSPECIFIED, 0, a).unwrap();
        f.add(ip("192.0.2.1"), 32, l).unwrap();
        let v = f.view();
        assert_eq!(v.lpm.lookup(u32::from(ip("192.0.2.1"))), Some(l));
        assert_eq!(v.lpm.lookup(u32::from(ip("192.0.2.2"))), Some(a));
        assert_eq!(v.next_hops.get(l).unwrap().kind, NextHopKind::Local);
    }

    #[test]
    fn next_hops_are_shared_and_freed() {
        let mut f = fib();
        let a = f
            .next_hop_ref(NextHopKind::Gateway, 0, ip("1.1.1.1"))
            .unwrap();
        let a2 = f
            .next_hop_ref(NextHopKind::Gateway, 0, ip("1.1.1.1"))
            .unwrap();
        assert_eq!(a, a2);
        f.add(ip("2.0.0.0"), 8, a).unwrap();
        f.add(ip("3.0.0.0"), 8, a2).unwrap();
        assert_eq!(
            f.resolve(0, ip("1.1.1.1"), Some(EthernetAddress([2, 0, 0, 0, 0, 9]))),
            1
        );
        assert_eq!(
            f.view().next_hops.get(a).unwrap().mac,
            Some(EthernetAddress([2, 0, 0, 0, 0, 9]))
        );
        f.del(ip("2.0.0.0"), 8).unwrap();
        assert_eq!(f.next_hops().len(), 1);
        f.del(ip("3.0.0.0"), 8).unwrap();
        assert!(f.next_hops().is_empty());
    }

    #[test]
    fn tbl8_exhaustion_is_an_error() {
        let mut f = Fib::new(
            FibSizes {
                tbl8_groups: 1,
                max_routes: 100,
                max_next_hops: 16,
            },
            Arc::new(Qsbr::new(0)),
        );
        let a = f
            .next_hop_ref(NextHopKind::Gateway, 0, ip("1.1.1.1"))
            .unwrap();
        f.add(ip("10.0.0.1"), 32, a).unwrap();
        let a = f
            .next_hop_ref(NextHopKind::Gateway, 0, ip("1.1.1.1"))
            .unwrap();
        assert_eq!(f.add(ip("10.0.1.1"), 32, a), Err(FibError::Tbl8Full));
    }

    // Compare with a naive linear LPM under random adds and deletes.
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_naive_lpm(ops in proptest::collection::vec((any::<u32>(), 0u8..=32, any::<bool>()), 1..60),
                             probes in proptest::collection::vec(any::<u32>(), 50)) {
            let mut f = fib();
            let mut naive: HashMap<(u32, u8), u32> = HashMap::new();
            for (i, (addr, len, add)) in ops.iter().enumerate() {
                // Keep addresses clustered so prefixes overlap.
                let addr = (addr & 0x0303_0303) | 0x0a00_0000;
                let p = addr & packet::ipv4::mask(*len);
                if *add || naive.is_empty() {
                    let nh = f.next_hop_ref(NextHopKind::Gateway, 0, Ipv4Addr::from(i as u32 + 1)).unwrap();
                    f.add(Ipv4Addr::from(p), *len, nh).unwrap();
                    naive.insert((p, *len), nh);
                } else {
                    let k = *naive.keys().next().unwrap();
                    naive.remove(&k);
                    f.del(Ipv4Addr::from(k.0), k.1).unwrap();
                }
            }
            let v = f.view();
            for probe in probes.iter().chain(naive.keys().map(|k| &k.0)) {
                let probe = (probe & 0x0303_0303) | 0x0a00_0000;
                let want = naive.iter().filter(|((p, l), _)| probe & packet::ipv4::mask(*l) == *p)
                    .max_by_key(|((_, l), _)| *l).map(|(_, &nh)| nh);
                prop_assert_eq!(v.lpm.lookup(probe), want);
            }
        }
    }
}
