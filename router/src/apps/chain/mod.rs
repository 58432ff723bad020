//! The management core's side of the NetChain switch nodes: the nodes' roles, keys and
//! failover rules from the configuration, and what `routerctl chain` shows.

pub mod cli;
pub mod config;

use super::AppRequest;
use crate::admin::Response;
use crate::app::{udp_datagram, MgmtApp, MgmtCtx};
use chain_switch::control::{self, Reply, Request};
use chain_switch::node::{role, FailoverRule};
use chain_switch::stage::{ChainCounters, ChainShared, ChainStage};
use chain_switch::store::StoreError;
use chain_switch::wire;
use config::{parse_vgroups, ChainConfig};
use packet::Stage as _;
use serde_json::json;
use std::sync::Arc;

#[derive(Debug)]
pub struct ChainMgmt {
    pub shared: Arc<ChainShared>,
    pub control: Option<Control>,
}

/// The master's control channel on this appliance.
#[derive(Debug)]
pub struct Control {
    pub port: u16,
    secret: Vec<u8>,
    guard: control::ReplayGuard,
    /// Tells the master this run from an earlier one (whose registers it may not trust).
    pub boot: u64,
    /// Failover rules arriving in pieces.
    staged: Vec<FailoverRule>,
    pub taken: u64,
    pub bad_tag: u64,
    pub replayed: u64,
    pub refused: u64,
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
        let control = match &cfg.secret_file {
            None => None,
            Some(p) => {
                let secret = std::fs::read(p)
                    .map_err(|e| format!("chain.secret_file {}: {e}", p.display()))?;
                let secret = secret.trim_ascii().to_vec();
                if secret.is_empty() {
                    return Err(format!("chain.secret_file {}: empty", p.display()));
                }
                Some(Control {
                    port: cfg.control_port,
                    secret,
                    guard: control::ReplayGuard::default(),
                    boot: control::Ids::default().next_id(),
                    staged: Vec::new(),
                    taken: 0,
                    bad_tag: 0,
                    replayed: 0,
                    refused: 0,
                })
            }
        };
        Ok(ChainMgmt {
            shared: Arc::new(shared),
            control,
        })
    }

    /// A datagram to the control port: the signed answer to send back, if it was a request
    /// of the master's (anything unauthenticated or replayed gets no answer).
    pub fn control_input(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        let c = self.control.as_mut()?;
        let o = match control::open(&c.secret, payload) {
            Ok(o) if o.kind & control::RESPONSE == 0 => o,
            Ok(_) => return None,
            Err(_) => {
                c.bad_tag += 1;
                return None;
            }
        };
        if c.guard.admit(o.id).is_err() {
            c.replayed += 1;
            return None;
        }
        let r = Request::parse(o.kind, o.body)
            .map_err(|e| e.to_string())
            .and_then(|req| Self::execute(&self.shared, c, req));
        match &r {
            Ok(_) => c.taken += 1,
            Err(_) => c.refused += 1,
        }
        Some(control::respond(&c.secret, o.kind, o.id, r))
    }

    fn execute(shared: &ChainShared, c: &mut Control, req: Request) -> Result<Reply, String> {
        let node = |a: std::net::Ipv4Addr| {
            shared
                .node(a)
                .ok_or_else(|| format!("{a} is not a node of this appliance"))
        };
        let count = |n: usize| Ok(Reply::Count(n as u32));
        match req {
            Request::Ping => Ok(Reply::Pong {
                boot: c.boot,
                value_len: shared.value_len as u16,
                capacity: shared.nodes.first().map_or(0, |n| n.store.capacity()) as u32,
                nodes: shared
                    .nodes
                    .iter()
                    .map(|n| (n.addr, n.store.len() as u32))
                    .collect(),
            }),
            Request::Roles { node: a, groups } => {
                let n = node(a)?;
                for &(g, bits, session) in &groups {
                    n.roles.set(g, bits, session);
                }
                count(groups.len())
            }
            Request::Insert { node: a, keys } => {
                let n = node(a)?;
                let mut new = 0;
                for k in &keys {
                    match n.store.insert(k) {
                        Ok(_) => new += 1,
                        Err(StoreError::Exists) => {}
                        Err(e) => return Err(format!("{}: {e}", wire::key_string(k))),
                    }
                }
                count(new)
            }
            Request::Remove { node: a, keys } => {
                let n = node(a)?;
                count(keys.iter().filter(|k| n.store.remove(k).is_ok()).count())
            }
            Request::Failover {
                offset,
                total,
                rules,
            } => {
                if offset == 0 {
                    c.staged.clear();
                }
                if usize::from(offset) != c.staged.len() {
                    return Err(format!(
                        "failover rules from {offset}, expected {}",
                        c.staged.len()
                    ));
                }
                c.staged.extend(rules);
                if c.staged.len() >= usize::from(total) {
                    shared.failover.replace(&c.staged)?;
                }
                count(c.staged.len())
            }
            Request::Get { node: a, keys } => {
                let n = node(a)?;
                Ok(Reply::Records(
                    keys.iter().map(|k| n.store.get(k)).collect(),
                ))
            }
            Request::Set { node: a, records } => {
                let n = node(a)?;
                for r in &records {
                    if r.value.len() != shared.value_len {
                        return Err(format!(
                            "values here are {} bytes, not {}",
                            shared.value_len,
                            r.value.len()
                        ));
                    }
                    n.store
                        .set(&r.key, r.seq, r.session, &r.value)
                        .map_err(|e| format!("{}: {e}", wire::key_string(&r.key)))?;
                }
                count(records.len())
            }
            Request::Admin(_) => Err("this is an appliance, not a chain master".into()),
        }
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
            crate::counters::sum_cores(cores, ChainStage::NAME);
        let stage = crate::counters::named(&ChainCounters::NAMES, &sum);
        let control = self.control.as_ref().map(|c| {
            json!({"port": c.port, "boot": c.boot, "taken": c.taken, "bad_tag": c.bad_tag,
                   "replayed": c.replayed, "refused": c.refused})
        });
        json!({
            "stage": stage,
            "control": control,
            "nodes": self.shared.nodes.len(),
            "keys": self.shared.nodes.iter().map(|n| n.store.len()).sum::<usize>(),
            "value_len": self.shared.value_len,
        })
    }
}

impl MgmtApp for ChainMgmt {
    fn name(&self) -> &'static str {
        "chain"
    }

    /// A datagram to the control port: the master's request, answered from the port it
    /// came to.
    fn local(&mut self, ctx: &mut MgmtCtx, frame: &[u8], _port: u16) -> bool {
        let Some(port) = self.control.as_ref().map(|c| c.port) else {
            return false;
        };
        let Some((src, dst, payload)) = frame
            .get(packet::ethernet::HEADER_LEN..)
            .and_then(udp_datagram)
        else {
            return false;
        };
        if dst.1 != port {
            return false;
        }
        if let Some(r) = self.control_input(payload) {
            ctx.udp(dst, src, r);
        }
        true
    }

    fn stats(&self, ctx: &MgmtCtx) -> serde_json::Value {
        self.stats(&ctx.cores())
    }

    fn request(&mut self, ctx: &mut MgmtCtx, req: &AppRequest) -> Option<Response> {
        Some(match req {
            AppRequest::ChainNodes => self.nodes(),
            AppRequest::ChainGroups { limit } => self.groups(*limit),
            AppRequest::ChainStats => Response::ok(self.stats(&ctx.cores())),
            _ => return None,
        })
    }
}
