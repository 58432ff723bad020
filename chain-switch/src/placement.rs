//! Where keys and virtual groups live. A key belongs to a virtual group by the master's
//! [`Placement`] (clients learn it with the directory and compute it alike): `hash(key) mod
//! groups`, or the prototype client's contiguous ranges. A virtual group is placed by
//! consistent hashing:
//! every node owns `virtual_nodes` points on a ring, and a group's chain is the first
//! `replicas` distinct nodes met going round from the group's own point — head first. Adding
//! or removing a node moves only the groups whose walk meets it.

use crate::wire::KEY_LEN;
use std::net::Ipv4Addr;

/// 64-bit FNV-1a then a finaliser (spreads small, similar inputs).
fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The virtual group of `key` among `groups`.
pub fn vgroup_of(key: &[u8; KEY_LEN], groups: u16) -> u16 {
    (hash64(&[b"key", key]) % u64::from(groups.max(1))) as u16
}

/// How keys map to virtual groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// `hash(key) mod groups` ([`vgroup_of`]): keys spread evenly whatever their values.
    #[default]
    Hash,
    /// The public prototype client's placement: contiguous ranges of a key space of `keys`
    /// keys, `vgroup = key / (keys / groups)` (a key beyond the space goes to the last group).
    /// Unmodified prototype clients send each key to the chain of the group it computes so.
    Range { keys: u64 },
}

impl Placement {
    /// The virtual group of `key` among `groups`.
    pub fn vgroup(&self, key: &[u8; KEY_LEN], groups: u16) -> u16 {
        match *self {
            Placement::Hash => vgroup_of(key, groups),
            Placement::Range { keys } => {
                let groups = u128::from(groups.max(1));
                let per = (u128::from(keys) / groups).max(1);
                (u128::from_be_bytes(*key) / per).min(groups - 1) as u16
            }
        }
    }
}

/// The ring of virtual nodes.
#[derive(Debug, Clone)]
pub struct Ring {
    points: Vec<(u64, Ipv4Addr)>,
}

impl Ring {
    pub fn new(nodes: &[Ipv4Addr], virtual_nodes: usize) -> Self {
        let mut points: Vec<_> = nodes
            .iter()
            .flat_map(|&n| {
                (0..virtual_nodes.max(1) as u32)
                    .map(move |i| (hash64(&[b"node", &n.octets(), &i.to_be_bytes()]), n))
            })
            .collect();
        points.sort_unstable();
        Ring { points }
    }

    /// Distinct nodes met going round from `vgroup`'s point, in order.
    pub fn walk(&self, vgroup: u16) -> Vec<Ipv4Addr> {
        let h = hash64(&[b"group", &vgroup.to_be_bytes()]);
        let start = self.points.partition_point(|p| p.0 < h);
        let mut out: Vec<Ipv4Addr> = Vec::new();
        for i in 0..self.points.len() {
            let n = self.points[(start + i) % self.points.len()].1;
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }

    /// `vgroup`'s chain: `replicas` distinct nodes (fewer when there are fewer nodes).
    pub fn chain(&self, vgroup: u16, replicas: usize) -> Vec<Ipv4Addr> {
        let mut w = self.walk(vgroup);
        w.truncate(replicas);
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u8) -> Vec<Ipv4Addr> {
        (1..=n).map(|i| Ipv4Addr::new(10, 0, 9, i)).collect()
    }

    #[test]
    fn chains_are_distinct_nodes_and_spread() {
        let r = Ring::new(&nodes(5), 32);
        let mut heads = [0usize; 5];
        for g in 0..1000u16 {
            let c = r.chain(g, 3);
            assert_eq!(c.len(), 3);
            assert!(c[0] != c[1] && c[1] != c[2] && c[0] != c[2]);
            heads[usize::from(c[0].octets()[3] - 1)] += 1;
        }
        // Every node heads a fair share (1000 / 5 = 200 each, give or take).
        assert!(heads.iter().all(|&h| (100..300).contains(&h)), "{heads:?}");
        // Fewer nodes than replicas: every node once.
        assert_eq!(Ring::new(&nodes(2), 8).chain(0, 3).len(), 2);
    }

    #[test]
    fn adding_a_node_moves_few_groups() {
        let (a, b) = (Ring::new(&nodes(4), 32), Ring::new(&nodes(5), 32));
        let moved = (0..1000u16)
            .filter(|&g| a.chain(g, 1) != b.chain(g, 1))
            .count();
        // About a fifth of the heads move to the new node, none elsewhere.
        assert!(moved < 350, "{moved}");
        for g in 0..1000u16 {
            let (x, y) = (a.chain(g, 1), b.chain(g, 1));
            assert!(x == y || y[0] == Ipv4Addr::new(10, 0, 9, 5));
        }
    }

    #[test]
    fn range_placement_is_the_prototype_clients() {
        let p = Placement::Range { keys: 1000 };
        let g = |k: u128| p.vgroup(&k.to_be_bytes(), 4);
        // 1000 keys, 4 groups: 250 keys each, as `key // (keys / vgroups)`.
        assert_eq!((g(0), g(249), g(250), g(999)), (0, 0, 1, 3));
        assert_eq!(g(5000), 3, "beyond the key space: the last group");
        let tiny = Placement::Range { keys: 2 };
        assert_eq!(tiny.vgroup(&1u128.to_be_bytes(), 16), 1);
        assert_eq!(
            Placement::Hash.vgroup(&7u128.to_be_bytes(), 16),
            vgroup_of(&7u128.to_be_bytes(), 16)
        );
    }

    #[test]
    fn keys_spread_over_groups() {
        let mut n = [0usize; 16];
        for i in 0..16000u128 {
            n[usize::from(vgroup_of(&i.to_be_bytes(), 16))] += 1;
        }
        assert!(n.iter().all(|&c| (800..1200).contains(&c)), "{n:?}");
    }
}
