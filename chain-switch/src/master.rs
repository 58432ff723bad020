//! The chain master: places virtual groups on nodes by consistent hashing (f + 1 replicas on
//! distinct nodes), installs roles, keys and failover rules on every appliance through the
//! control channel, watches the appliances (a ping every `ping_ms`), and when one stops
//! answering carries out **fast failover**: a dead head or tail leaves its chains (the next
//! node becomes head with a new session, the previous one tail); a dead middle node stays in
//! its chains as a placeholder that every appliance's failover table skips, so clients holding
//! the old chain keep working. When a node is available for an under-replicated group
//! (`netchain admin add`), **recovery** brings it in, one virtual group at a time: its keys
//! are inserted and pre-synchronised from its neighbour while the group keeps serving; then
//! writes to the group stop at the head, the neighbour's registers are copied again, and the
//! node is activated — in the dead node's place (the failover rule now sends the old chain's
//! queries to it), or as the new tail.
//!
//! The membership (appliances, chains, sessions) and the keys live in etcd when one is
//! configured, written after every change: a restarted master resumes from there, checking
//! each appliance's boot id (an appliance that restarted lost its registers and counts as
//! failed). The master is no part of the data path: chains keep serving while it is down.

use crate::control::{self, Directory, Ids, Reply, Request};
use crate::etcd::Etcd;
use crate::node::{role, FailoverRule, FAILOVER_RULES};
use crate::placement::{Placement, Ring};
use crate::wire;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn d_groups() -> u16 {
    16
}
fn d_replicas() -> usize {
    3
}
fn d_vnodes() -> usize {
    32
}
fn d_value_len() -> usize {
    wire::PROTOTYPE_VALUE_LEN
}
fn d_prefix() -> String {
    "/netchain".into()
}
fn d_ping() -> u64 {
    100
}
fn d_fail() -> u32 {
    3
}
fn d_drain() -> u64 {
    20
}

/// The master's configuration file (TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterConfig {
    /// Where clients fetch the directory and `netchain admin` talks to the master.
    pub listen: SocketAddrV4,
    /// The shared secret of the control channel (the appliances' `chain.secret_file`).
    pub secret_file: PathBuf,
    /// Virtual groups keys map to.
    #[serde(default = "d_groups")]
    pub vgroups: u16,
    /// How keys map to virtual groups: `"hash"` (the default: `hash(key) mod vgroups`, even
    /// whatever the keys) or `"range"` (the public prototype client's: contiguous ranges of
    /// `keys` keys, `key / (keys / vgroups)`, so unmodified prototype clients send each key to
    /// its group's chain). Clients learn it with the directory.
    #[serde(default)]
    pub placement: PlacementKind,
    /// With `placement = "range"`: the size of the key space the prototype's clients were
    /// configured with.
    #[serde(default)]
    pub keys: Option<u64>,
    /// Chain length (f + 1).
    #[serde(default = "d_replicas")]
    pub replicas: usize,
    /// Points each node has on the placement ring.
    #[serde(default = "d_vnodes")]
    pub virtual_nodes: usize,
    #[serde(default = "d_value_len")]
    pub value_len: usize,
    /// etcd's client address (host:port); leave out to keep the membership in memory only.
    #[serde(default)]
    pub etcd: Option<SocketAddr>,
    #[serde(default = "d_prefix")]
    pub etcd_prefix: String,
    #[serde(default = "d_ping")]
    pub ping_ms: u64,
    /// Missed pings in a row before an appliance is declared failed.
    #[serde(default = "d_fail")]
    pub fail_after: u32,
    /// How long recovery waits for writes in flight after stopping a group's writes.
    #[serde(default = "d_drain")]
    pub drain_ms: u64,
    /// The appliances at the start: their control address and the nodes they host.
    #[serde(default)]
    pub appliances: Vec<ApplianceSpec>,
}

/// `placement` in the master's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementKind {
    #[default]
    Hash,
    Range,
}

impl MasterConfig {
    /// The placement the config asks for.
    pub fn placement(&self) -> Result<Placement, String> {
        match (self.placement, self.keys) {
            (PlacementKind::Hash, None) => Ok(Placement::Hash),
            (PlacementKind::Hash, Some(_)) => {
                Err("keys: only with placement = \"range\"".into())
            }
            (PlacementKind::Range, Some(keys)) if keys >= 1 => Ok(Placement::Range { keys }),
            (PlacementKind::Range, _) => Err(
                "placement = \"range\" needs keys = N (the key space the clients were configured with)"
                    .into(),
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceSpec {
    pub control: SocketAddrV4,
    pub nodes: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplianceState {
    pub control: SocketAddrV4,
    pub nodes: Vec<Ipv4Addr>,
    pub alive: bool,
    /// The boot id its management core last answered with.
    pub boot: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Group {
    /// Head → tail, dead middle nodes included (placeholders the failover rules skip).
    pub chain: Vec<Ipv4Addr>,
    pub session: u16,
    /// (dead node, the node recovery put in its place).
    pub replaced: Vec<(Ipv4Addr, Ipv4Addr)>,
}

/// What the master keeps in etcd.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub epoch: u64,
    pub appliances: Vec<ApplianceState>,
    pub groups: Vec<Group>,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct MasterCounters {
    pub failovers: u64,
    pub recoveries: u64,
    pub recovery_errors: u64,
    pub directory_requests: u64,
    pub admin_requests: u64,
    pub admin_refused: u64,
}

#[derive(Debug)]
pub struct Master {
    cfg: MasterConfig,
    secret: Vec<u8>,
    pub state: State,
    keys: Vec<BTreeSet<u128>>,
    etcd: Option<Etcd>,
    ctl: UdpSocket,
    listen: UdpSocket,
    ids: Ids,
    admin_guard: control::ReplayGuard,
    misses: Vec<u32>,
    pub counters: MasterCounters,
    pub resumed: bool,
}

fn log(msg: impl AsRef<str>) {
    eprintln!("netchain-master: {}", msg.as_ref());
}

impl Master {
    pub fn start(cfg: MasterConfig) -> Result<Master, String> {
        if cfg.replicas == 0 || cfg.vgroups == 0 {
            return Err("replicas and vgroups must be at least 1".into());
        }
        cfg.placement()?;
        if !(1..=wire::MAX_VALUE_LEN).contains(&cfg.value_len) {
            return Err(format!("value_len must be 1..={}", wire::MAX_VALUE_LEN));
        }
        let secret = std::fs::read(&cfg.secret_file)
            .map_err(|e| format!("secret_file {}: {e}", cfg.secret_file.display()))?
            .trim_ascii()
            .to_vec();
        if secret.is_empty() {
            return Err(format!("secret_file {}: empty", cfg.secret_file.display()));
        }
        let listen = UdpSocket::bind(cfg.listen).map_err(|e| format!("{}: {e}", cfg.listen))?;
        let ctl = UdpSocket::bind((*cfg.listen.ip(), 0)).map_err(|e| e.to_string())?;
        let mut m = Master {
            secret,
            state: State::default(),
            keys: vec![BTreeSet::new(); usize::from(cfg.vgroups)],
            etcd: cfg.etcd.map(Etcd::new),
            ctl,
            listen,
            ids: Ids::default(),
            admin_guard: control::ReplayGuard::default(),
            misses: Vec::new(),
            counters: MasterCounters::default(),
            resumed: false,
            cfg,
        };
        m.load()?;
        for a in m.cfg.appliances.clone() {
            if !m.state.appliances.iter().any(|s| s.control == a.control) {
                m.state.appliances.push(ApplianceState {
                    control: a.control,
                    nodes: a.nodes,
                    alive: false,
                    boot: 0,
                });
            }
        }
        m.misses = vec![0; m.state.appliances.len()];
        // Wait for the appliances to answer (a fresh start places groups on those that do;
        // a resumed master only gives them a moment: the dead are dead already).
        let t = Instant::now();
        let wait = Duration::from_secs(if m.resumed { 1 } else { 5 });
        while t.elapsed() < wait {
            let answered = m.ping_round(false);
            if answered.iter().all(|b| b.is_some()) {
                break;
            }
        }
        let answered = m.ping_round(false);
        if m.resumed {
            for (i, b) in answered.into_iter().enumerate() {
                let a = &m.state.appliances[i];
                match b {
                    Some(boot) if a.alive && boot == a.boot => {}
                    Some(boot) if a.alive => {
                        log(format!(
                            "{} restarted while the master was away: its registers are gone",
                            a.control
                        ));
                        m.fail(i);
                        m.revive(i, boot);
                    }
                    Some(boot) => m.revive(i, boot),
                    None if a.alive => m.misses[i] = 1,
                    None => {}
                }
            }
        } else {
            for (i, b) in answered.into_iter().enumerate() {
                if let Some(boot) = b {
                    m.state.appliances[i].alive = true;
                    m.state.appliances[i].boot = boot;
                }
            }
            m.place();
        }
        m.install_all();
        m.persist(None);
        Ok(m)
    }

    /// Load state and keys from etcd, if there is any.
    fn load(&mut self) -> Result<(), String> {
        let prefix = self.cfg.etcd_prefix.clone();
        let Some(e) = self.etcd.as_mut() else {
            return Ok(());
        };
        let st = e
            .get(format!("{prefix}/state").as_bytes())
            .map_err(|e| format!("etcd: {e}"))?;
        let Some(st) = st else {
            log("no state in etcd: a fresh start");
            return Ok(());
        };
        let st: State =
            serde_json::from_slice(&st).map_err(|e| format!("etcd {prefix}/state: {e}"))?;
        if st.groups.len() != usize::from(self.cfg.vgroups) {
            return Err(format!(
                "etcd holds {} virtual groups, the configuration says {}",
                st.groups.len(),
                self.cfg.vgroups
            ));
        }
        for g in 0..st.groups.len() {
            if let Some(v) = e
                .get(format!("{prefix}/keys/{g}").as_bytes())
                .map_err(|e| format!("etcd: {e}"))?
            {
                let ks: Vec<String> = serde_json::from_slice(&v).map_err(|e| e.to_string())?;
                self.keys[g] = ks.iter().filter_map(|k| k.parse().ok()).collect();
            }
        }
        log(format!(
            "resuming from etcd: epoch {}, {} appliances, {} keys",
            st.epoch,
            st.appliances.len(),
            self.keys.iter().map(BTreeSet::len).sum::<usize>()
        ));
        self.state = st;
        self.resumed = true;
        Ok(())
    }

    /// Write the state (and the keys of `group`, or of every group with None) to etcd.
    fn persist(&mut self, group: Option<u16>) {
        self.state.epoch += 1;
        let prefix = self.cfg.etcd_prefix.clone();
        let Some(e) = self.etcd.as_mut() else { return };
        let groups: Vec<usize> = match group {
            Some(g) => vec![usize::from(g)],
            None => (0..self.keys.len()).collect(),
        };
        for g in groups {
            let ks: Vec<String> = self.keys[g].iter().map(u128::to_string).collect();
            let v = serde_json::to_vec(&ks).unwrap_or_default();
            if let Err(err) = e.put(format!("{prefix}/keys/{g}").as_bytes(), &v) {
                log(format!("etcd: keys of group {g} not saved: {err}"));
            }
        }
        let v = serde_json::to_vec(&self.state).unwrap_or_default();
        if let Err(err) = e.put(format!("{prefix}/state").as_bytes(), &v) {
            log(format!("etcd: state not saved: {err}"));
        }
    }

    fn alive_nodes(&self) -> Vec<Ipv4Addr> {
        self.state
            .appliances
            .iter()
            .filter(|a| a.alive)
            .flat_map(|a| a.nodes.iter().copied())
            .collect()
    }

    fn is_alive(&self, n: Ipv4Addr) -> bool {
        self.state
            .appliances
            .iter()
            .any(|a| a.alive && a.nodes.contains(&n))
    }

    fn appliance_of(&self, n: Ipv4Addr) -> Option<usize> {
        self.state
            .appliances
            .iter()
            .position(|a| a.nodes.contains(&n))
    }

    /// A fresh placement of every group on the live nodes.
    fn place(&mut self) {
        let ring = Ring::new(&self.alive_nodes(), self.cfg.virtual_nodes);
        self.state.groups = (0..self.cfg.vgroups)
            .map(|g| Group {
                chain: ring.chain(g, self.cfg.replicas),
                session: 0,
                replaced: Vec::new(),
            })
            .collect();
        log(format!(
            "placed {} virtual groups on {} nodes, {} replicas",
            self.cfg.vgroups,
            self.alive_nodes().len(),
            self.cfg.replicas
        ));
    }

    /// `node`'s role bits in group `g` (0: not a member).
    fn role_of(&self, g: usize, node: Ipv4Addr) -> u16 {
        let c = &self.state.groups[g].chain;
        match c.iter().position(|&n| n == node) {
            None => 0,
            Some(i) => {
                let mut b = role::MEMBER;
                if i == 0 {
                    b |= role::HEAD;
                }
                if i + 1 == c.len() {
                    b |= role::TAIL;
                }
                b
            }
        }
    }

    /// Every appliance's failover table: replacements (per group) first, then a skip for
    /// every dead node.
    fn rules(&self) -> Vec<FailoverRule> {
        let any = Ipv4Addr::UNSPECIFIED;
        let mut out = Vec::new();
        for (g, gr) in self.state.groups.iter().enumerate() {
            for &(old, new) in &gr.replaced {
                out.push(FailoverRule {
                    dst: old,
                    next: any,
                    vgroup: Some(g as u16),
                    to: new,
                });
            }
        }
        for a in self.state.appliances.iter().filter(|a| !a.alive) {
            for &n in &a.nodes {
                out.push(FailoverRule {
                    dst: n,
                    next: any,
                    vgroup: None,
                    to: any,
                });
            }
        }
        if out.len() > FAILOVER_RULES {
            log(format!(
                "{} failover rules, the table holds {FAILOVER_RULES}: the rest are left out",
                out.len()
            ));
            out.truncate(FAILOVER_RULES);
        }
        out
    }

    /// One request to appliance `i`, resent up to three times.
    fn call(&mut self, i: usize, req: &Request) -> Result<Reply, String> {
        let to = self.state.appliances[i].control;
        let id = self.ids.next_id();
        let msg = control::request(&self.secret, id, req);
        let mut buf = vec![0u8; 65536];
        for _ in 0..3 {
            self.ctl.send_to(&msg, to).map_err(|e| e.to_string())?;
            let sent = Instant::now();
            while let Some(left) = Duration::from_millis(100).checked_sub(sent.elapsed()) {
                let _ = self
                    .ctl
                    .set_read_timeout(Some(left.max(Duration::from_millis(1))));
                let Ok((n, from)) = self.ctl.recv_from(&mut buf) else {
                    break;
                };
                if from != SocketAddr::V4(to) {
                    continue;
                }
                match control::read_response(&self.secret, req.kind(), id, &buf[..n]) {
                    Ok(r) => return Ok(r),
                    Err(control::Error::Refused(e)) => return Err(format!("{to}: {e}")),
                    Err(_) => continue,
                }
            }
        }
        Err(format!("{to}: no answer"))
    }

    /// Ping every appliance at once; their boot ids (None: no answer). With `watch`, count
    /// misses and act on them.
    fn ping_round(&mut self, watch: bool) -> Vec<Option<u64>> {
        let n = self.state.appliances.len();
        let mut ids = Vec::with_capacity(n);
        for a in 0..n {
            let id = self.ids.next_id();
            let msg = control::request(&self.secret, id, &Request::Ping);
            let _ = self.ctl.send_to(&msg, self.state.appliances[a].control);
            ids.push(id);
        }
        let mut got = vec![None; n];
        let mut buf = vec![0u8; 65536];
        let wait = Duration::from_millis((self.cfg.ping_ms / 2).max(5));
        let t = Instant::now();
        while got.iter().any(Option::is_none) {
            let Some(left) = wait.checked_sub(t.elapsed()) else {
                break;
            };
            let _ = self
                .ctl
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            let Ok((len, _)) = self.ctl.recv_from(&mut buf) else {
                break;
            };
            for (a, &id) in ids.iter().enumerate() {
                if let Ok(Reply::Pong { boot, .. }) =
                    control::read_response(&self.secret, control::kind::PING, id, &buf[..len])
                {
                    got[a] = Some(boot);
                }
            }
        }
        if watch {
            self.misses.resize(n, 0);
            for (a, b) in got.iter().enumerate() {
                let st = &self.state.appliances[a];
                match *b {
                    Some(boot) if st.alive && boot == st.boot => self.misses[a] = 0,
                    Some(boot) if st.alive => {
                        log(format!("{} restarted: its registers are gone", st.control));
                        self.fail(a);
                        self.revive(a, boot);
                    }
                    Some(boot) => self.revive(a, boot),
                    None if st.alive => {
                        self.misses[a] += 1;
                        if self.misses[a] >= self.cfg.fail_after {
                            log(format!(
                                "{} missed {} pings: failed",
                                st.control, self.misses[a]
                            ));
                            self.fail(a);
                        }
                    }
                    None => {}
                }
            }
        }
        got
    }

    /// Send `node` its roles in every group (clearing stale ones), and `STOPPED` where asked.
    fn install_roles(&mut self, node: Ipv4Addr, stopped: Option<usize>) -> Result<(), String> {
        let Some(a) = self.appliance_of(node) else {
            return Ok(());
        };
        let groups: Vec<(u16, u16, u16)> = (0..self.state.groups.len())
            .map(|g| {
                let mut b = self.role_of(g, node);
                if stopped == Some(g) {
                    b |= role::STOPPED;
                }
                (g as u16, b, self.state.groups[g].session)
            })
            .collect();
        for c in groups.chunks(control::ROLES_PER_MSG) {
            self.call(
                a,
                &Request::Roles {
                    node,
                    groups: c.to_vec(),
                },
            )?;
        }
        Ok(())
    }

    fn install_rules(&mut self, a: usize) -> Result<(), String> {
        let rules = self.rules();
        let total = rules.len() as u16;
        let mut offset = 0u16;
        for c in rules.chunks(control::RULES_PER_MSG) {
            self.call(
                a,
                &Request::Failover {
                    offset,
                    total,
                    rules: c.to_vec(),
                },
            )?;
            offset += c.len() as u16;
        }
        if rules.is_empty() {
            self.call(
                a,
                &Request::Failover {
                    offset: 0,
                    total: 0,
                    rules: Vec::new(),
                },
            )?;
        }
        Ok(())
    }

    fn install_rules_everywhere(&mut self) {
        for a in 0..self.state.appliances.len() {
            if self.state.appliances[a].alive {
                if let Err(e) = self.install_rules(a) {
                    log(format!("failover rules: {e}"));
                }
            }
        }
    }

    /// Insert (or remove) `keys` at `node`, a datagram's worth at a time.
    fn send_keys(&mut self, node: Ipv4Addr, keys: &[u128], insert: bool) -> Result<(), String> {
        let a = self.appliance_of(node).ok_or("unknown node")?;
        for c in keys.chunks(control::KEYS_PER_MSG) {
            let keys = c.iter().map(|&k| wire::key_from_u128(k)).collect();
            let req = if insert {
                Request::Insert { node, keys }
            } else {
                Request::Remove { node, keys }
            };
            self.call(a, &req)?;
        }
        Ok(())
    }

    /// The keys of every group a node is in.
    fn install_keys(&mut self, node: Ipv4Addr) -> Result<(), String> {
        let keys: Vec<u128> = (0..self.state.groups.len())
            .filter(|&g| self.state.groups[g].chain.contains(&node))
            .flat_map(|g| self.keys[g].iter().copied())
            .collect();
        self.send_keys(node, &keys, true)
    }

    /// Everything on every live appliance: keys, roles, failover rules (idempotent).
    fn install_all(&mut self) {
        for a in 0..self.state.appliances.len() {
            if !self.state.appliances[a].alive {
                continue;
            }
            for node in self.state.appliances[a].nodes.clone() {
                if let Err(e) = self
                    .install_keys(node)
                    .and_then(|_| self.install_roles(node, None))
                {
                    log(format!("install on {node}: {e}"));
                }
            }
            if let Err(e) = self.install_rules(a) {
                log(format!("failover rules: {e}"));
            }
        }
    }

    /// Fast failover for appliance `a`.
    fn fail(&mut self, a: usize) {
        self.state.appliances[a].alive = false;
        self.counters.failovers += 1;
        let dead: Vec<Ipv4Addr> = self.state.appliances[a].nodes.clone();
        let mut touched = BTreeSet::new();
        for (g, gr) in self.state.groups.iter_mut().enumerate() {
            if !gr.chain.iter().any(|n| dead.contains(n)) {
                continue;
            }
            touched.insert(g);
            let alive = |n: &Ipv4Addr, apps: &[ApplianceState]| {
                apps.iter().any(|x| x.alive && x.nodes.contains(n))
            };
            // A dead head leaves (a new head, a new session); so does a dead tail.
            let mut head_changed = false;
            while gr
                .chain
                .first()
                .is_some_and(|n| !alive(n, &self.state.appliances))
            {
                gr.chain.remove(0);
                head_changed = true;
            }
            while gr
                .chain
                .last()
                .is_some_and(|n| !alive(n, &self.state.appliances))
            {
                gr.chain.pop();
            }
            if head_changed {
                gr.session = gr.session.wrapping_add(1);
            }
        }
        log(format!(
            "failover: nodes {dead:?} down; {} virtual groups changed",
            touched.len()
        ));
        // Roles of the live members of the touched groups, then everyone's failover rules.
        let members: BTreeSet<Ipv4Addr> = touched
            .iter()
            .flat_map(|&g| self.state.groups[g].chain.clone())
            .filter(|&n| self.is_alive(n))
            .collect();
        for n in members {
            if let Err(e) = self.install_roles(n, None) {
                log(format!("failover roles on {n}: {e}"));
            }
        }
        self.install_rules_everywhere();
        self.persist(None);
    }

    /// An appliance answering again (or for the first time): alive, its nodes out of every
    /// chain (their registers are empty) until recovery brings them in.
    fn revive(&mut self, a: usize, boot: u64) {
        let st = &mut self.state.appliances[a];
        st.alive = true;
        st.boot = boot;
        let nodes = st.nodes.clone();
        log(format!("{} is up (boot {boot:#x})", st.control));
        for gr in &mut self.state.groups {
            gr.chain.retain(|n| !nodes.contains(n));
        }
        self.misses.resize(self.state.appliances.len(), 0);
        self.misses[a] = 0;
        self.install_rules_everywhere();
        for n in nodes {
            if let Err(e) = self.install_roles(n, None) {
                log(format!("roles on {n}: {e}"));
            }
        }
        self.persist(None);
    }

    /// Copy `keys` of a group from `from` to `to`.
    fn copy(&mut self, from: Ipv4Addr, to: Ipv4Addr, keys: &[u128]) -> Result<usize, String> {
        let (Some(fa), Some(ta)) = (self.appliance_of(from), self.appliance_of(to)) else {
            return Err("unknown node".into());
        };
        let mut n = 0;
        let per = control::records_per_msg(self.cfg.value_len).clamp(1, control::KEYS_PER_MSG);
        for c in keys.chunks(per) {
            let ks: Vec<_> = c.iter().map(|&k| wire::key_from_u128(k)).collect();
            let Reply::Records(rs) = self.call(
                fa,
                &Request::Get {
                    node: from,
                    keys: ks,
                },
            )?
            else {
                return Err("not records".into());
            };
            let records: Vec<_> = rs.into_iter().flatten().collect();
            n += records.len();
            self.call(ta, &Request::Set { node: to, records })?;
        }
        Ok(n)
    }

    /// Recovery of one under-replicated group, if there is one and a node for it.
    fn recover_one(&mut self) -> bool {
        let alive = self.alive_nodes();
        let ring = Ring::new(&alive, self.cfg.virtual_nodes);
        for g in 0..self.state.groups.len() {
            let chain = self.state.groups[g].chain.clone();
            let live = chain.iter().filter(|n| alive.contains(n)).count();
            if chain.is_empty() || live >= self.cfg.replicas {
                continue;
            }
            let Some(new) = ring.walk(g as u16).into_iter().find(|n| !chain.contains(n)) else {
                continue;
            };
            match self.recover(g, new) {
                Ok(msg) => {
                    self.counters.recoveries += 1;
                    log(format!("recovery: group {g}: {msg}"));
                }
                Err(e) => {
                    self.counters.recovery_errors += 1;
                    log(format!("recovery of group {g} onto {new} failed: {e}"));
                    // Whatever happened, the head takes writes again.
                    if let Some(&h) = self.state.groups[g].chain.first() {
                        let _ = self.install_roles(h, None);
                    }
                }
            }
            return true;
        }
        false
    }

    /// The two-phase recovery of group `g` onto node `new`.
    fn recover(&mut self, g: usize, new: Ipv4Addr) -> Result<String, String> {
        let chain = self.state.groups[g].chain.clone();
        let dead_at = chain.iter().position(|&n| !self.is_alive(n));
        // The neighbour whose registers the new node starts from: the live node before the
        // dead one's place, or the tail.
        let source = match dead_at {
            Some(p) => chain[..p]
                .iter()
                .rev()
                .find(|&&n| self.is_alive(n))
                .copied(),
            None => chain.last().copied(),
        }
        .ok_or("no live neighbour")?;
        let head = chain[0];
        let keys: Vec<u128> = self.keys[g].iter().copied().collect();
        let na = self.appliance_of(new).ok_or("unknown node")?;
        // Not a member yet; stale replacements naming it go.
        self.state.groups[g].replaced.retain(|r| r.0 != new);
        self.send_keys(new, &keys, true)?;
        self.call(
            na,
            &Request::Roles {
                node: new,
                groups: vec![(g as u16, 0, 0)],
            },
        )?;
        // Pre-synchronise while the group serves.
        let t = Instant::now();
        let pre = self.copy(source, new, &keys)?;
        // Phase one: stop the group's writes at the head, let those in flight land, sync.
        self.install_roles(head, Some(g))?;
        std::thread::sleep(Duration::from_millis(self.cfg.drain_ms));
        let synced = self.copy(source, new, &keys)?;
        // Phase two: activate.
        let how = {
            let gr = &mut self.state.groups[g];
            match dead_at {
                Some(p) => {
                    let old = gr.chain[p];
                    gr.chain[p] = new;
                    for r in gr.replaced.iter_mut() {
                        if r.1 == old {
                            r.1 = new;
                        }
                    }
                    gr.replaced.push((old, new));
                    format!("{new} takes {old}'s place")
                }
                None => {
                    gr.chain.push(new);
                    format!("{new} is the new tail")
                }
            }
        };
        self.install_roles(new, None)?;
        self.install_rules_everywhere();
        let others: Vec<_> = chain
            .iter()
            .copied()
            .filter(|&n| n != head && self.is_alive(n))
            .collect();
        for n in others {
            self.install_roles(n, None)?;
        }
        self.install_roles(head, None)?;
        self.persist(Some(g as u16));
        Ok(format!(
            "{how} ({pre} records pre-synchronised from {source}, {synced} at the switch, {:.1} ms)",
            t.elapsed().as_secs_f64() * 1e3
        ))
    }

    /// How keys map to groups (validated at start).
    fn placement(&self) -> Placement {
        self.cfg.placement().unwrap_or_default()
    }

    pub fn directory(&self) -> Directory {
        Directory {
            epoch: self.state.epoch,
            value_len: self.cfg.value_len as u16,
            placement: self.placement(),
            chains: self.state.groups.iter().map(|g| g.chain.clone()).collect(),
        }
    }

    pub fn status(&self) -> serde_json::Value {
        let alive = self.alive_nodes();
        let groups: Vec<_> = self
            .state
            .groups
            .iter()
            .enumerate()
            .map(|(g, gr)| {
                json!({"vgroup": g, "chain": gr.chain, "session": gr.session,
                       "live": gr.chain.iter().filter(|n| alive.contains(n)).count(),
                       "keys": self.keys[g].len(), "replaced": gr.replaced})
            })
            .collect();
        let under = self
            .state
            .groups
            .iter()
            .filter(|gr| gr.chain.iter().filter(|n| alive.contains(n)).count() < self.cfg.replicas)
            .count();
        let placement = match self.placement() {
            Placement::Hash => json!({"kind": "hash"}),
            Placement::Range { keys } => json!({"kind": "range", "keys": keys}),
        };
        json!({
            "epoch": self.state.epoch,
            "placement": placement,
            "resumed": self.resumed,
            "replicas": self.cfg.replicas,
            "appliances": self.state.appliances,
            "under_replicated": under,
            "keys": self.keys.iter().map(BTreeSet::len).sum::<usize>(),
            "failover_rules": self.rules().len(),
            "counters": self.counters,
            "groups": groups,
        })
    }

    /// Insert (or delete) keys on every live member of their groups' chains.
    fn change_keys(&mut self, keys: &[u128], insert: bool) -> Result<usize, String> {
        let groups = self.cfg.vgroups;
        let placement = self.placement();
        let mut by_group: Vec<Vec<u128>> = vec![Vec::new(); usize::from(groups)];
        for &k in keys {
            by_group[usize::from(placement.vgroup(&wire::key_from_u128(k), groups))].push(k);
        }
        let mut done = 0;
        for (g, ks) in by_group.into_iter().enumerate() {
            if ks.is_empty() {
                continue;
            }
            let members: Vec<_> = self.state.groups[g]
                .chain
                .iter()
                .copied()
                .filter(|&n| self.is_alive(n))
                .collect();
            for n in members {
                self.send_keys(n, &ks, insert)?;
            }
            for k in &ks {
                if insert {
                    self.keys[g].insert(*k);
                } else {
                    self.keys[g].remove(k);
                }
            }
            done += ks.len();
            self.persist(Some(g as u16));
        }
        Ok(done)
    }

    fn admin(&mut self, req: &str) -> Result<serde_json::Value, String> {
        let v: serde_json::Value = serde_json::from_str(req).map_err(|e| e.to_string())?;
        let keys = || -> Result<Vec<u128>, String> {
            v["keys"]
                .as_array()
                .ok_or("keys: a list")?
                .iter()
                .map(|k| {
                    k.as_str()
                        .and_then(wire::parse_key)
                        .map(u128::from_be_bytes)
                        .ok_or_else(|| format!("bad key {k}"))
                })
                .collect()
        };
        match v["op"].as_str().unwrap_or("") {
            "status" => Ok(self.status()),
            "insert" => Ok(json!({"inserted": self.change_keys(&keys()?, true)?})),
            "delete" => Ok(json!({"deleted": self.change_keys(&keys()?, false)?})),
            "add" => {
                let spec: ApplianceSpec =
                    serde_json::from_value(v["appliance"].clone()).map_err(|e| e.to_string())?;
                if self
                    .state
                    .appliances
                    .iter()
                    .any(|a| a.control == spec.control)
                {
                    return Err(format!("{} is known already", spec.control));
                }
                if spec.nodes.iter().any(|n| self.appliance_of(*n).is_some()) {
                    return Err("a node of it is known already".into());
                }
                self.state.appliances.push(ApplianceState {
                    control: spec.control,
                    nodes: spec.nodes,
                    alive: false,
                    boot: 0,
                });
                self.misses.push(0);
                self.persist(None);
                Ok(json!({"added": self.state.appliances.len()}))
            }
            o => Err(format!("unknown admin op {o:?}")),
        }
    }

    /// Answer what arrived on the listen socket until `until`.
    fn serve(&mut self, until: Instant) {
        let mut buf = vec![0u8; 65536];
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let _ = self
                .listen
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            let (n, from) = match self.listen.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return,
                Err(_) => return,
            };
            let msg = &buf[..n];
            if let Some(first) = control::parse_directory_request(msg) {
                self.counters.directory_requests += 1;
                let _ = self.listen.send_to(&self.directory().reply(first), from);
                continue;
            }
            let Ok(o) = control::open(&self.secret, msg) else {
                self.counters.admin_refused += 1;
                continue;
            };
            if o.kind != control::kind::ADMIN || self.admin_guard.admit(o.id).is_err() {
                self.counters.admin_refused += 1;
                continue;
            }
            self.counters.admin_requests += 1;
            let (kind, id) = (o.kind, o.id);
            let r = std::str::from_utf8(o.body)
                .map_err(|e| e.to_string())
                .and_then(|s| self.admin(s))
                .map(|v| Reply::Admin(v.to_string()));
            let _ = self
                .listen
                .send_to(&control::respond(&self.secret, kind, id, r), from);
        }
    }

    /// Run until `stop`: watch, fail over, recover, answer clients and admins.
    pub fn run(&mut self, stop: &AtomicBool) {
        let every = Duration::from_millis(self.cfg.ping_ms.max(10));
        while !stop.load(Ordering::Relaxed) {
            let next = Instant::now() + every;
            self.ping_round(true);
            self.recover_one();
            self.serve(next);
        }
    }
}

/// `netchain admin`: one signed request to a master.
pub fn admin_call(
    master: SocketAddr,
    secret: &[u8],
    body: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let bind: SocketAddr = match master {
        SocketAddr::V4(a) if a.ip().is_loopback() => "127.0.0.1:0".parse(),
        SocketAddr::V4(_) => "0.0.0.0:0".parse(),
        SocketAddr::V6(_) => "[::]:0".parse(),
    }
    .map_err(|e: std::net::AddrParseError| e.to_string())?;
    let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let id = Ids::default().next_id();
    let msg = control::request(secret, id, &Request::Admin(body.to_string()));
    // Connected: no master listening there is an error at once (ICMP port unreachable), not
    // a wait for the timeout.
    s.connect(master).map_err(|e| e.to_string())?;
    s.send(&msg).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = s
            .recv(&mut buf)
            .map_err(|e| format!("no answer from the master at {master}: {e}"))?;
        match control::read_response(secret, control::kind::ADMIN, id, &buf[..n]) {
            Ok(Reply::Admin(j)) => return serde_json::from_str(&j).map_err(|e| e.to_string()),
            Err(control::Error::Refused(e)) => return Err(e),
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<MasterConfig, String> {
        let secret = std::env::temp_dir().join(format!("nc-master-test-{}", std::process::id()));
        std::fs::write(&secret, "s3cret\n").map_err(|e| e.to_string())?;
        toml::from_str(&format!(
            "listen = \"127.0.0.1:0\"\nsecret_file = \"{}\"\nvgroups = 4\nreplicas = 1\n{extra}",
            secret.display()
        ))
        .map_err(|e| e.to_string())
    }

    /// `placement = "range"` puts the prototype client's placement in the directory clients
    /// fetch; it needs the key space's size, which only it takes.
    #[test]
    fn placement_reaches_the_directory() {
        let m = Master::start(config("placement = \"range\"\nkeys = 1000").unwrap()).unwrap();
        let d = m.directory();
        assert_eq!(d.placement, Placement::Range { keys: 1000 });
        assert_eq!(d.placement.vgroup(&wire::key_from_u128(750), 4), 3);
        assert_eq!(
            m.status()["placement"],
            json!({"kind": "range", "keys": 1000})
        );
        let m = Master::start(config("").unwrap()).unwrap();
        assert_eq!(m.directory().placement, Placement::Hash);
        let e = Master::start(config("placement = \"range\"").unwrap()).unwrap_err();
        assert!(e.contains("needs keys"), "{e}");
        let e = Master::start(config("keys = 10").unwrap()).unwrap_err();
        assert!(e.contains("only with placement"), "{e}");
        assert!(config("placement = \"ranges\"").is_err());
    }
}
