//! The registry: the one place that lists the applications, in the order their claims are
//! looked up and their management-core sides are offered packets: how each is built from the
//! config, its fast-path glue ([`WorkerApp`]) and its management-core side ([`MgmtApp`]).

pub mod chain;
pub mod nfs;
pub mod sal;

use crate::app::{publish_values, MgmtApp, WorkerApp};
use crate::config::{Config, ConfigError};
use crate::counters::{CoreCounters, Counter};
use chain_switch::stage::{ChainCounters, ChainStage};
use nfs_rewrite::datapath::{NfsCounters, NfsEvent, NfsStage};
use packet::claim::{Claim, Claimed, ClaimingStage};
use packet::{Buffer, DropReason, Stage, Verdict};
use sal_forward::stage::{SalCounters, SalStage};
use std::sync::{Arc, Mutex};

/// Every application's name: its config section, its statistics section.
pub const NAMES: [&str; 3] = ["nfs", "sal", "chain"];

/// The applications' config keys a reload applies to the running router (beside the router's
/// own, [`Config::LIVE_KEYS`]); any other change of their sections needs a restart.
pub const LIVE_KEYS: [&str; 2] = ["sal.rules", "sal.rules_file"];

/// The applications' sections of the config file, each with its own checks.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AppConfigs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfs: Option<nfs::config::NfsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sal: Option<sal::config::SalConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<chain::config::ChainConfig>,
}

impl AppConfigs {
    /// Take what a reload changes ([`LIVE_KEYS`]) from `new`.
    pub fn take_live(&mut self, new: AppConfigs) {
        if let (Some(s), Some(n)) = (self.sal.as_mut(), new.sal) {
            s.rules = n.rules;
            s.rules_file = n.rules_file;
        }
    }

    /// Each configured section's checks (they may read the router's sections: addresses).
    pub fn validate(&self, cfg: &Config) -> Result<(), ConfigError> {
        if let Some(n) = &self.nfs {
            n.validate(cfg)?;
        }
        if let Some(s) = &self.sal {
            s.validate(cfg)?;
        }
        if let Some(c) = &self.chain {
            c.validate(cfg)?;
        }
        Ok(())
    }
}

/// The configured applications, built from the config: their stages (before they are copied
/// to the workers) and their management-core sides.
pub struct Apps {
    pub stages: Stages,
    pub mgmt: Vec<Box<dyn MgmtApp>>,
}

impl std::fmt::Debug for Apps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apps")
            .field("stages", &self.stages)
            .finish()
    }
}

/// Build the applications `cfg` configures (its service rules, node tables and handle keys
/// in place before any worker starts). `workers`: how many workers will run the stages.
pub fn build(cfg: &Config, workers: usize) -> Result<Apps, String> {
    let mut stages = Stages::default();
    let mut mgmt: Vec<Box<dyn MgmtApp>> = Vec::new();
    if let Some(n) = &cfg.apps.nfs {
        let shared = nfs::shared(n, n.limits(cfg), workers);
        let rings = Arc::new(EventRings::new(cfg.dataplane.ring_size));
        let stage = NfsStage::new(shared.clone(), n.transactions, n.transaction_ttl_ms);
        stages.nfs = Some((stage, rings.clone()));
        let mtu = cfg.ports.iter().map(|p| p.mtu).min().unwrap_or(1500);
        mgmt.push(Box::new(nfs::NfsMgmt::new(n.clone(), shared, rings, mtu)));
    }
    if let Some(sc) = &cfg.apps.sal {
        let shared = Arc::new(sal_forward::stage::SalShared::new(
            Arc::new(sal_forward::table::ServiceTable::new(sc.max_rules)),
            cfg.addresses().iter().map(|(_, a, _)| *a).collect(),
            workers + 1,
        ));
        stages.sal = Some(SalStage::new(shared.clone(), 0));
        mgmt.push(Box::new(
            sal::SalMgmt::new(sc, shared).map_err(|e| format!("sal: {e}"))?,
        ));
    }
    if let Some(c) = &cfg.apps.chain {
        let m = chain::ChainMgmt::new(c).map_err(|e| format!("chain: {e}"))?;
        stages.chain = Some(ChainStage::new(m.shared.clone()));
        mgmt.push(Box::new(m));
    }
    Ok(Apps { stages, mgmt })
}

/// The applications' admin requests (a [`crate::admin::Request::App`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AppRequest {
    /// The aggregated NFS servers and their mount state.
    NfsServers,
    /// NFS counters: calls and replies per procedure, rewrites, handles, recoveries.
    NfsStats,
    /// Write the handle-table checkpoint now.
    NfsCheckpoint,
    /// The virtual server's TCP connections: clients' and the router's own to servers.
    NfsConnections,
    /// The web exports: origins, cache, hits, requests, errors.
    NfsWeb,
    /// Replicated exports: roles, log depth and lag, applied, conflicts.
    NfsReplication,
    /// Add targets to a service rule (creating it).
    SalRuleAdd {
        prefix: String,
        action: String,
        #[serde(default)]
        targets: Vec<String>,
        #[serde(default)]
        priority: u32,
        #[serde(default)]
        mode: Option<String>,
    },
    /// Delete a service rule: one target, one priority's set, or the whole prefix.
    SalRuleDel {
        prefix: String,
        #[serde(default)]
        priority: Option<u32>,
        #[serde(default)]
        target: Option<std::net::Ipv4Addr>,
    },
    SalRuleList {
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Service-router counters: the stage's, the controller's, per rule.
    SalStats,
    SalRegistrations,
    SalDelayed,
    /// The controller hierarchy: parent, mode, pointer records, cached answers, resolutions
    /// in flight.
    SalHierarchy,
    /// NetChain nodes: address, keys, groups by role.
    ChainNodes,
    /// NetChain virtual groups per node (role, session) and the failover rules.
    ChainGroups {
        #[serde(default)]
        limit: Option<usize>,
    },
    /// NetChain stage counters.
    ChainStats,
}

impl AppRequest {
    /// The answer when the request's application is not configured.
    pub fn not_configured(&self) -> &'static str {
        match self {
            AppRequest::NfsServers
            | AppRequest::NfsStats
            | AppRequest::NfsCheckpoint
            | AppRequest::NfsConnections
            | AppRequest::NfsWeb
            | AppRequest::NfsReplication => "NFS is not configured (no [nfs] section)",
            AppRequest::SalRuleAdd { .. }
            | AppRequest::SalRuleDel { .. }
            | AppRequest::SalRuleList { .. }
            | AppRequest::SalStats
            | AppRequest::SalRegistrations
            | AppRequest::SalDelayed
            | AppRequest::SalHierarchy => {
                "Serval service routing is not configured (no [sal] section)"
            }
            AppRequest::ChainNodes | AppRequest::ChainGroups { .. } | AppRequest::ChainStats => {
                "NetChain is not configured (no [chain] section)"
            }
        }
    }
}

/// The applications' `routerctl` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum AppCmd {
    /// NFS virtualization.
    Nfs {
        #[command(subcommand)]
        cmd: nfs::cli::NfsCmd,
    },
    /// Serval service routing.
    Sal {
        #[command(subcommand)]
        cmd: sal::cli::SalCmd,
    },
    /// NetChain switch nodes.
    Chain {
        #[command(subcommand)]
        cmd: chain::cli::ChainCmd,
    },
}

impl AppCmd {
    /// The admin request it sends.
    pub fn request(&self) -> AppRequest {
        match self {
            AppCmd::Nfs { cmd } => cmd.request(),
            AppCmd::Sal { cmd } => cmd.request(),
            AppCmd::Chain { cmd } => cmd.request(),
        }
    }
    /// Print the answer for an operator.
    pub fn print(&self, data: &serde_json::Value) {
        match self {
            AppCmd::Nfs { cmd } => cmd.print(data),
            AppCmd::Sal { cmd } => cmd.print(data),
            AppCmd::Chain { cmd } => cmd.print(data),
        }
    }
}

/// The configured applications' stages, before they are copied to the workers.
#[derive(Debug, Default)]
pub struct Stages {
    pub nfs: Option<(NfsStage, Arc<EventRings<NfsEvent>>)>,
    pub sal: Option<SalStage>,
    pub chain: Option<ChainStage>,
}

/// The registry: every configured application, in claim order.
pub fn worker_apps<T: Buffer>(s: Stages) -> Vec<Box<dyn WorkerApp<T>>> {
    let mut v: Vec<Box<dyn WorkerApp<T>>> = Vec::new();
    if let Some((stage, rings)) = s.nfs {
        v.push(Box::new(NfsApp {
            stage,
            events: None,
            rings,
        }));
    }
    if let Some(stage) = s.sal {
        v.push(Box::new(Plain(stage)));
    }
    if let Some(stage) = s.chain {
        v.push(Box::new(Plain(stage)));
    }
    v
}

/// Rings from each worker's copy of an application to its management-core side: created as
/// the workers' copies are made, taken once by the management core.
#[derive(Debug)]
pub struct EventRings<E> {
    size: usize,
    consumers: Mutex<Vec<rtrb::Consumer<E>>>,
}

impl<E> EventRings<E> {
    pub fn new(size: usize) -> Self {
        EventRings {
            size,
            consumers: Mutex::new(Vec::new()),
        }
    }
    /// A new ring: its producer for a worker; its consumer kept for [`EventRings::take`].
    fn ring(&self) -> rtrb::Producer<E> {
        let (tx, rx) = rtrb::RingBuffer::new(self.size);
        if let Ok(mut c) = self.consumers.lock() {
            c.push(rx);
        }
        tx
    }
    /// Every consumer made so far.
    pub fn take(&self) -> Vec<rtrb::Consumer<E>> {
        self.consumers
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

/// Mirage NFS (UDP) on a worker: its events (handle mappings learned, transactions of
/// fragmented replies) go to the management core, the handle table's only writer.
#[derive(Debug)]
struct NfsApp {
    stage: NfsStage,
    events: Option<rtrb::Producer<NfsEvent>>,
    rings: Arc<EventRings<NfsEvent>>,
}

impl<T: Buffer> WorkerApp<T> for NfsApp {
    fn name(&self) -> &'static str {
        NfsStage::NAME
    }
    fn drop_names(&self) -> &'static [&'static str] {
        <NfsStage as Stage>::Reason::NAMES
    }
    fn counter_width(&self) -> usize {
        NfsCounters::WIDTH
    }
    fn claims(&self) -> Vec<Claim> {
        self.stage.claims()
    }
    fn process(
        &mut self,
        pkts: &mut [T],
        claimed: &[Claimed],
        verdicts: &mut [Verdict],
        now_ms: u64,
    ) {
        self.stage.set_now(now_ms);
        self.stage.process_claimed(pkts, claimed, verdicts);
    }
    fn publish(&mut self, out: &[Counter], core: &CoreCounters) {
        publish_values(out, self.stage.counters.values());
        if let Some(ring) = self.events.as_mut() {
            self.stage.take_events(|e| {
                if ring.push(e).is_err() {
                    core.ring_full.inc();
                }
            });
        }
    }
    fn for_worker(&self, _worker: usize) -> Box<dyn WorkerApp<T>> {
        Box::new(NfsApp {
            stage: self.stage.clone(),
            events: Some(self.rings.ring()),
            rings: self.rings.clone(),
        })
    }
    fn owner(&self, frame: &[u8], claimed: &Claimed, workers: usize) -> Option<usize> {
        self.stage.owner(frame, claimed, workers)
    }
    fn rpc_ports(&self) -> Vec<u16> {
        let sh = self.stage.shared();
        let mut v: Vec<u16> = sh.servers.iter().map(|s| s.nfs_port).collect();
        v.push(sh.nfs_port);
        v
    }
}

/// A stage whose fast path needs nothing from the management core but its tables: Serval
/// service routing (its rule hits and anycast draws are per worker) and NetChain switch nodes.
trait PlainStage: ClaimingStage + Clone + Send + std::fmt::Debug + 'static {
    const COUNTERS: usize;
    fn counter_values(&self) -> impl IntoIterator<Item = u64>;
    /// This copy runs on worker `w`.
    fn on_worker(&mut self, _w: usize) {}
}

impl PlainStage for SalStage {
    const COUNTERS: usize = SalCounters::NAMES.len();
    fn counter_values(&self) -> impl IntoIterator<Item = u64> {
        self.counters.values()
    }
    fn on_worker(&mut self, w: usize) {
        self.set_instance(w);
    }
}

impl PlainStage for ChainStage {
    const COUNTERS: usize = ChainCounters::NAMES.len();
    fn counter_values(&self) -> impl IntoIterator<Item = u64> {
        self.counters.values()
    }
}

#[derive(Debug)]
struct Plain<S>(S);

impl<T: Buffer, S: PlainStage> WorkerApp<T> for Plain<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }
    fn drop_names(&self) -> &'static [&'static str] {
        <S as Stage>::Reason::NAMES
    }
    fn counter_width(&self) -> usize {
        S::COUNTERS
    }
    fn claims(&self) -> Vec<Claim> {
        self.0.claims()
    }
    fn process(&mut self, pkts: &mut [T], claimed: &[Claimed], verdicts: &mut [Verdict], _: u64) {
        self.0.process_claimed(pkts, claimed, verdicts);
    }
    fn publish(&mut self, out: &[Counter], _: &CoreCounters) {
        publish_values(out, self.0.counter_values());
    }
    fn for_worker(&self, worker: usize) -> Box<dyn WorkerApp<T>> {
        let mut s = self.0.clone();
        s.on_worker(worker);
        Box::new(Plain(s))
    }
}
