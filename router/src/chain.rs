//! The management core's side of the NetChain switch nodes: the nodes' roles, keys and
//! failover rules from the configuration, and what `routerctl chain` shows.

use crate::admin::Response;
use crate::config::{parse_vgroups, ChainConfig};
use chain_switch::node::{role, FailoverRule};
use chain_switch::stage::{ChainCounters, ChainShared};
use chain_switch::wire;
use serde_json::json;
use std::sync::Arc;

#[derive(Debug)]
pub struct ChainMgmt {
    pub shared: Arc<ChainShared>,
}

/// The role bits as words.
pub fn role_name(bits: u16) -> String {
    let mut v = Vec::new();
    if bits & role::HEAD != 0 {
        v.push("head");
    }
    if bits & role::TAIL != 0 {
        v.push("tail");
    }
    if bits & (role::HEAD | role::TAIL) == 0 {
        v.push("middle");
    }
    if bits & role::STOPPED != 0 {
        v.push("stopped");
    }
    v.join("+")
}

impl ChainMgmt {
    /// The shared state the workers' stages read, filled from the configuration.
    pub fn new(cfg: &ChainConfig) -> Result<Self, String> {
        let addrs: Vec<_> = cfg.nodes.iter().map(|n| n.address).collect();
        let shared = ChainShared::new(&addrs, cfg.max_keys, cfg.value_len);
        for (n, nc) in shared.nodes.iter().zip(&cfg.nodes) {
            let mut bits = vec![0u16; chain_switch::node::VGROUPS];
            for (list, b) in [
                (&nc.head, role::HEAD),
                (&nc.middle, 0),
                (&nc.tail, role::TAIL),
            ] {
                for r in parse_vgroups(list)? {
                    for g in r {
                        bits[usize::from(g)] |= role::MEMBER | b;
                    }
                }
            }
            for (g, b) in bits.into_iter().enumerate() {
                if b != 0 {
                    n.roles.set(g as u16, b, nc.session);
                }
            }
            for k in &cfg.keys {
                let key = wire::parse_key(k).ok_or_else(|| format!("chain.keys: {k:?}"))?;
                n.store
                    .insert(&key)
                    .map_err(|e| format!("chain.keys: {k}: {e}"))?;
            }
        }
        let rules: Vec<_> = cfg
            .failover
            .iter()
            .map(|f| FailoverRule {
                dst: f.dst,
                next: f.next.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                vgroup: f.vgroup,
                to: f.to.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            })
            .collect();
        shared.failover.replace(&rules)?;
        Ok(ChainMgmt {
            shared: Arc::new(shared),
        })
    }

    /// Every node: address, keys stored, groups by role.
    pub fn nodes(&self) -> Response {
        let v: Vec<_> = self
            .shared
            .nodes
            .iter()
            .map(|n| {
                let groups = n.roles.list();
                let count = |f: fn(u16) -> bool| groups.iter().filter(|g| f(g.1)).count();
                json!({
                    "address": n.addr.to_string(),
                    "keys": n.store.len(),
                    "key_capacity": n.store.capacity(),
                    "value_len": n.store.value_len(),
                    "groups": groups.len(),
                    "head_of": count(|b| b & role::HEAD != 0),
                    "tail_of": count(|b| b & role::TAIL != 0),
                    "middle_of": count(|b| b & (role::HEAD | role::TAIL) == 0),
                    "stopped": count(|b| b & role::STOPPED != 0),
                })
            })
            .collect();
        Response::ok(json!({"nodes": v}))
    }

    /// The virtual groups each node is in, with role and session; the failover rules.
    pub fn groups(&self, limit: Option<usize>) -> Response {
        let mut rows = Vec::new();
        for n in &self.shared.nodes {
            for (g, bits, session) in n.roles.list() {
                rows.push(json!({"node": n.addr.to_string(), "vgroup": g,
                                 "role": role_name(bits), "session": session}));
            }
        }
        let total = rows.len();
        rows.truncate(limit.unwrap_or(usize::MAX));
        let failover: Vec<_> = self
            .shared
            .failover
            .list()
            .into_iter()
            .map(|r| {
                json!({"dst": r.dst.to_string(),
                       "next": (!r.next.is_unspecified()).then(|| r.next.to_string()),
                       "vgroup": r.vgroup,
                       "to": (!r.to.is_unspecified()).then(|| r.to.to_string())})
            })
            .collect();
        Response::ok(json!({"total": total, "groups": rows, "failover": failover}))
    }

    /// The stage's counters summed over the workers (its drops: `routerctl stats`).
    pub fn stats(&self, cores: &[crate::counters::CoreSnapshot]) -> serde_json::Value {
        let sum: [u64; ChainCounters::NAMES.len()] =
            crate::counters::sum_cores(cores, |c| &c.chain);
        let stage = crate::counters::named(&ChainCounters::NAMES, &sum);
        json!({
            "stage": stage,
            "nodes": self.shared.nodes.len(),
            "keys": self.shared.nodes.iter().map(|n| n.store.len()).sum::<usize>(),
            "value_len": self.shared.value_len,
        })
    }
}
