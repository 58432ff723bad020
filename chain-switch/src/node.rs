//! What a switch node holds besides its registers: its roles per virtual group, and the
//! failover table every NetChain packet passes. Both are written by the control plane (the
//! management core) and read by every worker without locks.

use crate::store::Store;
use packet::seqlock::SeqLock;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Role bits of a node in a virtual group's chain.
pub mod role {
    /// The node is in the group's chain.
    pub const MEMBER: u16 = 1;
    /// It stamps sequence numbers on writes.
    pub const HEAD: u16 = 2;
    /// It answers reads and acknowledges writes.
    pub const TAIL: u16 = 4;
    /// Writes for the group are refused for now (recovery's stop-and-sync phase).
    pub const STOPPED: u16 = 8;
}

/// Virtual groups a node can be in (the wire's vgroup is 16 bits).
pub const VGROUPS: usize = 1 << 16;

/// A node's role and session per virtual group.
#[derive(Debug)]
pub struct Roles(Box<[AtomicU32]>);

impl Default for Roles {
    fn default() -> Self {
        Roles((0..VGROUPS).map(|_| AtomicU32::new(0)).collect())
    }
}

impl Roles {
    /// (role bits, session) of `vgroup`.
    #[inline]
    pub fn get(&self, vgroup: u16) -> (u16, u16) {
        let v = self.0[usize::from(vgroup)].load(Ordering::Acquire);
        (v as u16, (v >> 16) as u16)
    }

    pub fn set(&self, vgroup: u16, bits: u16, session: u16) {
        self.0[usize::from(vgroup)].store(
            u32::from(session) << 16 | u32::from(bits),
            Ordering::Release,
        );
    }

    /// Groups with any role: (vgroup, bits, session).
    pub fn list(&self) -> Vec<(u16, u16, u16)> {
        (0..VGROUPS)
            .filter_map(|g| {
                let (b, s) = self.get(g as u16);
                (b != 0).then_some((g as u16, b, s))
            })
            .collect()
    }
}

/// One NetChain switch node.
#[derive(Debug)]
pub struct Node {
    pub addr: Ipv4Addr,
    pub store: Store,
    pub roles: Roles,
}

impl Node {
    pub fn new(addr: Ipv4Addr, keys: usize, value_len: usize) -> Self {
        Node {
            addr,
            store: Store::new(keys, value_len),
            roles: Roles::default(),
        }
    }
}

/// A failover rule: a packet headed for `dst` whose next list entry is `next` (0.0.0.0: any)
/// in `vgroup` (none: any) skips `dst` — its entry is popped and it goes to `next` (fast
/// failover) — or, when `to` is set, goes to `to` instead, its entry rewritten (a node that
/// recovery put in the dead one's place). The first matching rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverRule {
    pub dst: Ipv4Addr,
    pub next: Ipv4Addr,
    pub vgroup: Option<u16>,
    /// 0.0.0.0: skip.
    pub to: Ipv4Addr,
}

/// What the failover table says of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detour {
    /// No rule: on to its destination.
    None,
    /// The destination is gone: pop its entry.
    Skip,
    /// The destination was replaced by this node.
    To(Ipv4Addr),
}

/// Rules the failover table holds at most.
pub const FAILOVER_RULES: usize = 256;

/// The failover table: a few rules, replaced whole by the control plane under a sequence lock
/// (workers retry a read that overlapped a change).
#[derive(Debug)]
pub struct Failover {
    seq: SeqLock,
    n: AtomicU32,
    /// dst << 32 | next, and to << 32 | valid << 17 | any-vgroup << 16 | vgroup.
    rules: Box<[[AtomicU64; 2]]>,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            seq: SeqLock::default(),
            n: AtomicU32::new(0),
            rules: (0..FAILOVER_RULES)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
        }
    }
}

impl Failover {
    /// The first rule matching (dst, next, vgroup).
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr, next: Ipv4Addr, vgroup: u16) -> Detour {
        let (d, nx) = (u64::from(u32::from(dst)), u64::from(u32::from(next)));
        self.seq.read(|| {
            let n = self.n.load(Ordering::Relaxed) as usize;
            for r in self.rules.iter().take(n.min(FAILOVER_RULES)) {
                let a = r[0].load(Ordering::Relaxed);
                let b = r[1].load(Ordering::Relaxed);
                if b & 0x2_0000 != 0
                    && a >> 32 == d
                    && (a & 0xffff_ffff == 0 || a & 0xffff_ffff == nx)
                    && (b & 0x1_0000 != 0 || b & 0xffff == u64::from(vgroup))
                {
                    return match (b >> 32) as u32 {
                        0 => Detour::Skip,
                        to => Detour::To(Ipv4Addr::from(to)),
                    };
                }
            }
            Detour::None
        })
    }

    /// Replace the rules (control plane). More than [`FAILOVER_RULES`] is refused.
    pub fn replace(&self, rules: &[FailoverRule]) -> Result<(), String> {
        if rules.len() > FAILOVER_RULES {
            return Err(format!("at most {FAILOVER_RULES} failover rules"));
        }
        self.seq.write(|| {
            for (slot, r) in self.rules.iter().zip(rules) {
                slot[0].store(
                    u64::from(u32::from(r.dst)) << 32 | u64::from(u32::from(r.next)),
                    Ordering::Relaxed,
                );
                slot[1].store(
                    u64::from(u32::from(r.to)) << 32
                        | 0x2_0000
                        | r.vgroup.map_or(0x1_0000, u64::from),
                    Ordering::Relaxed,
                );
            }
            self.n.store(rules.len() as u32, Ordering::Relaxed);
        });
        Ok(())
    }

    pub fn list(&self) -> Vec<FailoverRule> {
        let n = self.n.load(Ordering::Acquire) as usize;
        self.rules
            .iter()
            .take(n)
            .map(|r| {
                let a = r[0].load(Ordering::Relaxed);
                let b = r[1].load(Ordering::Relaxed);
                FailoverRule {
                    dst: Ipv4Addr::from((a >> 32) as u32),
                    next: Ipv4Addr::from(a as u32),
                    vgroup: (b & 0x1_0000 == 0).then_some(b as u16),
                    to: Ipv4Addr::from((b >> 32) as u32),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_failover() {
        let r = Roles::default();
        r.set(7, role::MEMBER | role::HEAD, 3);
        assert_eq!(r.get(7), (role::MEMBER | role::HEAD, 3));
        assert_eq!(r.list(), [(7, 3, 3)]);
        let f = Failover::default();
        let (m, t) = (Ipv4Addr::new(10, 0, 100, 2), Ipv4Addr::new(10, 0, 100, 3));
        let any = Ipv4Addr::UNSPECIFIED;
        let n = Ipv4Addr::new(10, 0, 100, 4);
        assert_eq!(f.lookup(m, t, 0), Detour::None);
        f.replace(&[FailoverRule {
            dst: m,
            next: t,
            vgroup: Some(0),
            to: any,
        }])
        .unwrap();
        assert_eq!(f.lookup(m, t, 0), Detour::Skip);
        assert_eq!(f.lookup(m, t, 1), Detour::None);
        assert_eq!(f.lookup(t, m, 0), Detour::None);
        // A replacement for group 3 comes before the skip for every group.
        let rules = [
            FailoverRule {
                dst: m,
                next: any,
                vgroup: Some(3),
                to: n,
            },
            FailoverRule {
                dst: m,
                next: any,
                vgroup: None,
                to: any,
            },
        ];
        f.replace(&rules).unwrap();
        assert_eq!(f.lookup(m, t, 9), Detour::Skip);
        assert_eq!(f.lookup(m, t, 3), Detour::To(n));
        assert_eq!(f.list(), rules);
        f.replace(&[]).unwrap();
        assert_eq!(f.lookup(m, t, 9), Detour::None);
    }
}
