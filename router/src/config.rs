//! The router's configuration: one TOML file. Unknown keys are errors; every semantic check
//! names the key it rejects.

use packet::ethernet::EthernetAddress;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A configuration problem, naming the key.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {msg}")]
    Invalid { key: String, msg: String },
}

/// Every entry of an `addresses` list is ADDRESS/LEN.
fn check_addresses(key: &str, list: &[String]) -> Result<(), ConfigError> {
    for a in list {
        match packet::ipv4::parse_prefix(a) {
            Some((_, l)) if a.contains('/') && l > 0 => {}
            _ => return Err(invalid(key, format!("{a:?} is not ADDRESS/LEN"))),
        }
    }
    Ok(())
}

pub(crate) fn invalid(key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        msg: msg.into(),
    }
}

/// Which device layer runs the ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// DPDK ethdev (the production path).
    #[default]
    Dpdk,
    /// pcap files and in-memory wires, without DPDK.
    Soft,
}

/// Where the pipeline's stages run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Each worker owns an RX and a TX queue of every port and runs every stage.
    #[default]
    RunToCompletion,
    /// One I/O core polls RX and does TX; workers run the stages; SPSC rings join them.
    Split,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EalConfig {
    /// Extra EAL arguments (e.g. `--no-huge`, `-m 512`, `--file-prefix rtr0`, `--in-memory`).
    #[serde(default)]
    pub args: Vec<String>,
}

fn d_burst() -> usize {
    32
}
fn d_ring() -> usize {
    1024
}
fn d_idle() -> u64 {
    200
}
fn d_workers() -> Vec<usize> {
    vec![0]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    #[serde(default)]
    pub backend: BackendKind,
    #[serde(default)]
    pub placement: Placement,
    /// CPUs of the worker lcores (one worker per entry).
    #[serde(default = "d_workers")]
    pub workers: Vec<usize>,
    /// CPU of the I/O lcore in the split placement.
    #[serde(default)]
    pub io_cpu: Option<usize>,
    /// CPU of the management core.
    #[serde(default)]
    pub mgmt_cpu: Option<usize>,
    /// Packets per RX burst (1..=256).
    #[serde(default = "d_burst")]
    pub burst: usize,
    /// Slots of each SPSC ring (power of two).
    #[serde(default = "d_ring")]
    pub ring_size: usize,
    /// Upper bound of the idle back-off sleep in µs; 0 polls flat out (benchmarks).
    #[serde(default = "d_idle")]
    pub idle_sleep_max_us: u64,
    /// Pin threads to their CPUs.
    #[serde(default = "d_true")]
    pub pin: bool,
    /// Back the big lookup tables (FIB, service, handle, key tables) with transparent huge
    /// pages: the router re-executes itself once with glibc's `glibc.malloc.hugetlb=1`
    /// tunable, so most table lookups stop missing the TLB (needs THP `madvise` or `always`
    /// in `/sys/kernel/mm/transparent_hugepage/enabled`).
    #[serde(default = "d_true")]
    pub huge_tables: bool,
    /// Let DPDK's capture tools attach (`dpdk-dumpcap`, `dpdk-pdump`: secondary processes,
    /// which need hugepages). EAL refuses secondaries once a thread it did not start registers
    /// as an lcore, so with this on the workers run unregistered: their mbufs go to and from
    /// the pool without a per-lcore cache (see the README for what that costs).
    #[serde(default)]
    pub capture: bool,
}

pub(crate) fn d_true() -> bool {
    true
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            backend: BackendKind::Dpdk,
            placement: Placement::RunToCompletion,
            workers: d_workers(),
            io_cpu: None,
            mgmt_cpu: None,
            burst: d_burst(),
            ring_size: d_ring(),
            idle_sleep_max_us: d_idle(),
            pin: true,
            huge_tables: true,
            capture: false,
        }
    }
}

fn d_mbufs() -> u32 {
    8191
}
fn d_cache() -> u32 {
    256
}
fn d_mbuf_size() -> u16 {
    2048 + 128
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MempoolConfig {
    #[serde(default = "d_mbufs")]
    pub mbufs: u32,
    #[serde(default = "d_cache")]
    pub cache: u32,
    /// Data room per mbuf including headroom.
    #[serde(default = "d_mbuf_size")]
    pub mbuf_size: u16,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        MempoolConfig {
            mbufs: d_mbufs(),
            cache: d_cache(),
            mbuf_size: d_mbuf_size(),
        }
    }
}

fn d_mtu() -> u16 {
    1500
}
fn d_desc() -> u16 {
    1024
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    pub name: String,
    /// DPDK: a vdev devargs string (`net_af_packet0,iface=veth0`) or a PCI address.
    /// Soft: `pcap` or `memory`.
    pub device: String,
    /// Soft pcap ports: file to read frames from.
    #[serde(default)]
    pub rx_pcap: Option<PathBuf>,
    /// Soft pcap ports: file to write transmitted frames to.
    #[serde(default)]
    pub tx_pcap: Option<PathBuf>,
    /// Addresses with prefix length, e.g. `["10.0.1.1/24"]`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Override the device's MAC.
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default = "d_mtu")]
    pub mtu: u16,
    #[serde(default = "d_desc")]
    pub rx_desc: u16,
    #[serde(default = "d_desc")]
    pub tx_desc: u16,
    #[serde(default = "d_true")]
    pub promiscuous: bool,
    /// Forward directed broadcasts for this port's subnets that arrive on other ports onto it
    /// (RFC 2644: off by default; when off they are dropped and counted).
    #[serde(default)]
    pub forward_directed_broadcast: bool,
    /// 802.1Q VLAN sub-interfaces (`[[ports.vlans]]`), each a routed interface of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<VlanConfig>,
}

/// An 802.1Q VLAN on a port: frames tagged with its id are its interface's, and what the
/// router sends out of that interface leaves the port tagged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VlanConfig {
    /// The VLAN id, 1..=4094.
    pub id: u16,
    /// The interface's name (routes' and neighbours' `port`, stats); `PORT.ID` by default.
    #[serde(default)]
    pub name: Option<String>,
    /// Addresses with prefix length, e.g. `["10.0.10.1/24"]`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// As for a port: directed broadcasts for its subnets from other interfaces go out on it.
    #[serde(default)]
    pub forward_directed_broadcast: bool,
}

/// A routed interface: a port (its untagged traffic), or a VLAN on one. Interfaces are
/// numbered ports first (interface *i* is port *i*), then the VLANs in the file's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface<'a> {
    pub name: String,
    /// The port it is on.
    pub port: u16,
    /// Its VLAN id (None: the port's untagged traffic).
    pub vlan: Option<u16>,
    pub addresses: &'a [String],
    pub forward_directed_broadcast: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    /// Gateway address; omitted for a route straight out of `port`.
    #[serde(default)]
    pub via: Option<Ipv4Addr>,
    /// Output port name; inferred from the connected subnet of `via` when omitted.
    #[serde(default)]
    pub port: Option<String>,
    /// Discard traffic to this prefix.
    #[serde(default)]
    pub blackhole: bool,
}

/// tbl8 groups when `fib.tbl8_groups` is not given and the initial routes need fewer.
pub const TBL8_GROUPS_MIN: usize = 4096;
fn d_max_routes() -> usize {
    2_000_000
}
fn d_max_nh() -> usize {
    65_536
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FibConfig {
    /// Groups for /25–/32 prefixes (one per /24 that holds any). Absent: sized from the
    /// initial routes ([`Config::tbl8_groups_for`]).
    #[serde(default)]
    pub tbl8_groups: Option<usize>,
    #[serde(default = "d_max_routes")]
    pub max_routes: usize,
    #[serde(default = "d_max_nh")]
    pub max_next_hops: usize,
    /// A file of routes, one per line: `PREFIX via GATEWAY` or `PREFIX port NAME`.
    #[serde(default)]
    pub routes_file: Option<PathBuf>,
}

impl Default for FibConfig {
    fn default() -> Self {
        FibConfig {
            tbl8_groups: None,
            max_routes: d_max_routes(),
            max_next_hops: d_max_nh(),
            routes_file: None,
        }
    }
}

fn d_hold() -> usize {
    4
}
fn d_hold_total() -> usize {
    1024
}
fn d_retries() -> u32 {
    3
}
fn d_retry_ms() -> u64 {
    1000
}
fn d_reach() -> u64 {
    300
}
fn d_max_neigh() -> usize {
    16_384
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighbourConfig {
    /// Packets held per unresolved neighbour.
    #[serde(default = "d_hold")]
    pub hold_per_neighbour: usize,
    /// Packets held in all.
    #[serde(default = "d_hold_total")]
    pub hold_total: usize,
    #[serde(default = "d_retries")]
    pub arp_retries: u32,
    #[serde(default = "d_retry_ms")]
    pub arp_retry_ms: u64,
    /// Seconds a learned neighbour stays valid before it is refreshed.
    #[serde(default = "d_reach")]
    pub reachable_secs: u64,
    #[serde(default = "d_max_neigh")]
    pub max_neighbours: usize,
}

impl Default for NeighbourConfig {
    fn default() -> Self {
        NeighbourConfig {
            hold_per_neighbour: d_hold(),
            hold_total: d_hold_total(),
            arp_retries: d_retries(),
            arp_retry_ms: d_retry_ms(),
            reachable_secs: d_reach(),
            max_neighbours: d_max_neigh(),
        }
    }
}

fn d_socket() -> PathBuf {
    PathBuf::from("/run/router/admin.sock")
}
fn d_icmp_rate() -> u32 {
    1000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "d_socket")]
    pub socket: PathBuf,
    /// Group allowed to use the socket (mode 0660); without it the mode is 0600.
    #[serde(default)]
    pub group: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: d_socket(),
            group: None,
        }
    }
}

/// `[metrics]`: the OpenMetrics endpoint ([`crate::metrics`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `GET /metrics` on (`"127.0.0.1:9610"`); off when absent. Anyone who
    /// can reach it reads every counter: keep it on loopback or a management network.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

fn d_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "d_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: d_level() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpConfig {
    /// ICMP errors generated per second at most.
    #[serde(default = "d_icmp_rate")]
    pub errors_per_sec: u32,
}

impl Default for IcmpConfig {
    fn default() -> Self {
        IcmpConfig {
            errors_per_sec: d_icmp_rate(),
        }
    }
}

/// A neighbour whose MAC is configured, never resolved or aged (e.g. a peer that does not
/// answer ARP, or a benchmark sink).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticNeighbour {
    pub port: String,
    pub address: Ipv4Addr,
    pub mac: String,
}

/// The path of the first value that differs between `a` and `b` (`prefix` for the root).
fn first_difference(a: &toml::Value, b: &toml::Value, prefix: &str) -> Option<String> {
    use toml::Value;
    let at = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match (a, b) {
        (Value::Table(x), Value::Table(y)) => {
            let mut keys: Vec<&String> = x.keys().collect();
            keys.extend(y.keys());
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(p, q, &at(k)),
                _ => Some(at(k)),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{prefix}[{i}]"))),
        _ if a == b => None,
        _ => Some(if prefix.is_empty() {
            "(root)".into()
        } else {
            prefix.to_string()
        }),
    }
}

/// The whole file: the router's own sections, and the applications' (the registry's,
/// [`crate::apps::AppConfigs`]). Unknown sections are refused ([`Config::parse`]).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Config {
    #[serde(default)]
    pub eal: EalConfig,
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    #[serde(default)]
    pub mempool: MempoolConfig,
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub fib: FibConfig,
    #[serde(default)]
    pub neighbours: NeighbourConfig,
    #[serde(default)]
    pub static_neighbours: Vec<StaticNeighbour>,
    #[serde(default)]
    pub icmp: IcmpConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The file it was read from ([`Config::load`]): what `routerctl reload` and SIGHUP read
    /// again.
    #[serde(skip)]
    pub source: Option<ConfigSource>,
    /// The applications' sections, read from the same file ([`Config::parse`]), written
    /// beside the router's.
    #[serde(skip_deserializing, flatten)]
    pub apps: crate::apps::AppConfigs,
}

/// Where a config came from, and what its file said of the keys a reload cannot change (so
/// that command-line overrides of `router run` do not count as changes).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigSource {
    pub path: PathBuf,
    fixed: Option<toml::Value>,
}

/// A route after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub prefix: Ipv4Addr,
    pub len: u8,
    pub target: RouteTarget,
}

/// Where a route sends traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget {
    Via { gateway: Ipv4Addr, port: u16 },
    Port(u16),
    Blackhole,
}

impl Config {
    /// Parse TOML text and validate it.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let perr = |e: toml::de::Error| ConfigError::Parse(e.to_string());
        let top: toml::Table = toml::from_str(text).map_err(perr)?;
        let own = Self::SECTIONS;
        let apps = crate::apps::NAMES;
        if let Some(k) = top
            .keys()
            .find(|k| !own.contains(&k.as_str()) && !apps.contains(&k.as_str()))
        {
            return Err(ConfigError::Parse(format!(
                "unknown section `{k}`, expected one of {}",
                [&own[..], &apps[..]]
                    .concat()
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        // The router's sections and the applications' are read from the text itself, so
        // that an error names its line.
        let mut c: Config = toml::from_str(text).map_err(perr)?;
        c.apps = toml::from_str(text).map_err(perr)?;
        c.validate()?;
        Ok(c)
    }

    /// The router's own top-level sections (the applications' are [`crate::apps::NAMES`]).
    pub const SECTIONS: [&'static str; 12] = [
        "eal",
        "dataplane",
        "mempool",
        "ports",
        "routes",
        "fib",
        "neighbours",
        "static_neighbours",
        "icmp",
        "admin",
        "metrics",
        "log",
    ];

    /// Read and validate a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut c = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })?;
        c.source = Some(ConfigSource {
            path: path.to_path_buf(),
            fixed: c.fixed_part(),
        });
        Ok(c)
    }

    /// The config as TOML without [`Config::LIVE_KEYS`].
    fn fixed_part(&self) -> Option<toml::Value> {
        let mut v = toml::Value::try_from(self).ok()?;
        for key in [&Self::LIVE_KEYS[..], &crate::apps::LIVE_KEYS[..]].concat() {
            let mut t = &mut v;
            let mut parts = key.split('.').peekable();
            while let Some(p) = parts.next() {
                let Some(table) = t.as_table_mut() else { break };
                if parts.peek().is_none() {
                    table.remove(p);
                    break;
                }
                match table.get_mut(p) {
                    Some(next) => t = next,
                    None => break,
                }
            }
        }
        Some(v)
    }

    /// Keys a reload applies to the running router: the routes (`routes`, and
    /// `fib.routes_file`'s name and contents), the log filter, the ICMP error rate. Any other
    /// difference needs a restart.
    pub const LIVE_KEYS: [&'static str; 4] = ["routes", "fib.routes_file", "log.level", "icmp"];

    /// The first key, other than [`Config::LIVE_KEYS`], whose value differs between the file
    /// `self` was loaded from (as it was then) and `other`, a fresh load of it (`ports[1].mtu`,
    /// `dataplane.workers`); None when a reload can apply `other`.
    pub fn needs_restart(&self, other: &Config) -> Option<String> {
        let was = self
            .source
            .as_ref()
            .and_then(|s| s.fixed.clone())
            .or_else(|| self.fixed_part());
        match (was, other.fixed_part()) {
            (Some(a), Some(b)) => first_difference(&a, &b, ""),
            _ => Some("(config not representable)".into()),
        }
    }

    /// Take what a reload changes from `new` (a fresh load of this config's file), keeping
    /// the rest, command-line overrides included.
    pub fn take_live(&mut self, new: Config) {
        self.routes = new.routes;
        self.fib.routes_file = new.fib.routes_file;
        self.log = new.log;
        self.icmp = new.icmp;
        self.source = new.source;
        self.apps.take_live(new.apps);
    }

    /// Semantic checks beyond the TOML schema.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let dp = &self.dataplane;
        if dp.workers.is_empty() {
            return Err(invalid(
                "dataplane.workers",
                "at least one worker CPU is needed",
            ));
        }
        if dp.workers.len() > 64 {
            return Err(invalid("dataplane.workers", "at most 64 workers"));
        }
        if !(1..=256).contains(&dp.burst) {
            return Err(invalid("dataplane.burst", "must be 1..=256"));
        }
        if !dp.ring_size.is_power_of_two() || dp.ring_size < 64 {
            return Err(invalid(
                "dataplane.ring_size",
                "must be a power of two >= 64",
            ));
        }
        if self.mempool.mbufs < 512 {
            return Err(invalid("mempool.mbufs", "at least 512"));
        }
        if self.mempool.mbuf_size < 1024 {
            return Err(invalid("mempool.mbuf_size", "at least 1024"));
        }
        if self.ports.is_empty() {
            return Err(invalid("ports", "at least one port is needed"));
        }
        if self.ports.len() > 32 {
            return Err(invalid("ports", "at most 32 ports"));
        }
        for (i, p) in self.ports.iter().enumerate() {
            let k = |f: &str| format!("ports[{i}].{f}");
            if p.name.is_empty() || self.ports.iter().filter(|q| q.name == p.name).count() > 1 {
                return Err(invalid(
                    k("name"),
                    format!("{:?} is empty or not unique", p.name),
                ));
            }
            if p.device.is_empty() {
                return Err(invalid(k("device"), "empty"));
            }
            if dp.backend == BackendKind::Soft && p.device != "pcap" && p.device != "memory" {
                return Err(invalid(
                    k("device"),
                    "the soft backend takes \"pcap\" or \"memory\"",
                ));
            }
            if !(68..=9600).contains(&p.mtu) {
                return Err(invalid(k("mtu"), "must be 68..=9600"));
            }
            if let Some(m) = &p.mac {
                m.parse::<EthernetAddress>()
                    .map_err(|_| invalid(k("mac"), format!("{m:?} is not a MAC address")))?;
            }
            check_addresses(&k("addresses"), &p.addresses)?;
        }
        self.validate_vlans()?;
        for (i, _) in self.routes.iter().enumerate() {
            self.route_spec(i)?;
        }
        for (i, n) in self.static_neighbours.iter().enumerate() {
            if self.port_id(&n.port).is_none() {
                return Err(invalid(
                    format!("static_neighbours[{i}].port"),
                    format!("no port named {:?}", n.port),
                ));
            }
            if n.mac.parse::<EthernetAddress>().is_err() {
                return Err(invalid(
                    format!("static_neighbours[{i}].mac"),
                    format!("{:?} is not a MAC address", n.mac),
                ));
            }
        }
        if self
            .fib
            .tbl8_groups
            .is_some_and(|n| n == 0 || n > (1 << 24))
        {
            return Err(invalid("fib.tbl8_groups", "must be 1..=16777216"));
        }
        if self.fib.max_next_hops < 16 || self.fib.max_next_hops > (1 << 24) {
            return Err(invalid("fib.max_next_hops", "must be 16..=16777216"));
        }
        if let Some(f) = &self.fib.routes_file {
            if !f.exists() {
                return Err(invalid(
                    "fib.routes_file",
                    format!("{} does not exist", f.display()),
                ));
            }
        }
        self.apps.validate(self)?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("{:?} is not a log filter", self.log.level),
            ));
        }
        Ok(())
    }

    /// The VLANs' ids, names and addresses.
    fn validate_vlans(&self) -> Result<(), ConfigError> {
        let ifs = self.interfaces();
        for (i, p) in self.ports.iter().enumerate() {
            for (j, v) in p.vlans.iter().enumerate() {
                if !(1..=4094).contains(&v.id) || p.vlans[..j].iter().any(|w| w.id == v.id) {
                    return Err(invalid(
                        format!("ports[{i}].vlans[{j}].id"),
                        format!("{} is not 1..=4094 or is used twice on the port", v.id),
                    ));
                }
            }
        }
        for (i, p) in self.ports.iter().enumerate() {
            for (j, v) in p.vlans.iter().enumerate() {
                let k = |f: &str| format!("ports[{i}].vlans[{j}].{f}");
                let name = v
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{}.{}", p.name, v.id));
                if name.is_empty() || ifs.iter().filter(|f| f.name == name).count() > 1 {
                    return Err(invalid(
                        k("name"),
                        format!("{name:?} is empty or not unique among the interfaces"),
                    ));
                }
                check_addresses(&k("addresses"), &v.addresses)?;
            }
        }
        if ifs.len() > 4096 {
            return Err(invalid(
                "ports",
                "at most 4096 interfaces (ports and VLANs)",
            ));
        }
        Ok(())
    }

    /// Interface id by name (a port's, or a VLAN's).
    pub fn port_id(&self, name: &str) -> Option<u16> {
        self.interfaces()
            .iter()
            .position(|p| p.name == name)
            .map(|i| i as u16)
    }

    /// Every routed interface: the ports, then their VLANs ([`Interface`]).
    pub fn interfaces(&self) -> Vec<Interface<'_>> {
        let mut v: Vec<Interface> = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| Interface {
                name: p.name.clone(),
                port: i as u16,
                vlan: None,
                addresses: &p.addresses,
                forward_directed_broadcast: p.forward_directed_broadcast,
            })
            .collect();
        for (i, p) in self.ports.iter().enumerate() {
            for vl in &p.vlans {
                v.push(Interface {
                    name: vl
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("{}.{}", p.name, vl.id)),
                    port: i as u16,
                    vlan: Some(vl.id),
                    addresses: &vl.addresses,
                    forward_directed_broadcast: vl.forward_directed_broadcast,
                });
            }
        }
        v
    }

    /// Every (interface, address, prefix length).
    pub fn addresses(&self) -> Vec<(u16, Ipv4Addr, u8)> {
        let mut v = Vec::new();
        for (i, p) in self.interfaces().iter().enumerate() {
            for a in p.addresses {
                if let Some((ip, l)) = packet::ipv4::parse_prefix(a) {
                    v.push((i as u16, ip, l));
                }
            }
        }
        v
    }

    /// The port whose connected subnet holds `ip`.
    pub fn connected_port(&self, ip: Ipv4Addr) -> Option<u16> {
        self.addresses()
            .into_iter()
            .filter(|(_, a, l)| {
                u32::from(*a) & packet::ipv4::mask(*l) == u32::from(ip) & packet::ipv4::mask(*l)
            })
            .max_by_key(|(_, _, l)| *l)
            .map(|(p, _, _)| p)
    }

    /// Resolve a route's target given its fields.
    pub fn resolve_route(
        &self,
        prefix: &str,
        via: Option<Ipv4Addr>,
        port: Option<&str>,
        blackhole: bool,
    ) -> Result<RouteSpec, String> {
        let (ip, len) = packet::ipv4::parse_prefix(prefix)
            .ok_or_else(|| format!("{prefix:?} is not a prefix"))?;
        let ip = Ipv4Addr::from(u32::from(ip) & packet::ipv4::mask(len));
        let port_id = match port {
            Some(n) => Some(
                self.port_id(n)
                    .ok_or_else(|| format!("no port named {n:?}"))?,
            ),
            None => None,
        };
        let target = match (blackhole, via, port_id) {
            (true, None, None) => RouteTarget::Blackhole,
            (true, _, _) => return Err("a blackhole route takes neither via nor port".into()),
            (false, Some(gw), Some(p)) => RouteTarget::Via {
                gateway: gw,
                port: p,
            },
            (false, Some(gw), None) => RouteTarget::Via {
                gateway: gw,
                port: self.connected_port(gw).ok_or_else(|| {
                    format!("gateway {gw} is on no connected subnet; give a port")
                })?,
            },
            (false, None, Some(p)) => RouteTarget::Port(p),
            (false, None, None) => return Err("give via, port or blackhole".into()),
        };
        Ok(RouteSpec {
            prefix: ip,
            len,
            target,
        })
    }

    /// Validate `routes[i]`.
    pub fn route_spec(&self, i: usize) -> Result<RouteSpec, ConfigError> {
        let r = &self.routes[i];
        self.resolve_route(&r.prefix, r.via, r.port.as_deref(), r.blackhole)
            .map_err(|m| invalid(format!("routes[{i}]"), m))
    }

    /// The routes of the config and of `fib.routes_file`, in that order.
    pub fn initial_routes(&self) -> Result<Vec<RouteSpec>, ConfigError> {
        let mut specs = (0..self.routes.len())
            .map(|i| self.route_spec(i))
            .collect::<Result<Vec<_>, _>>()?;
        specs.extend(self.file_routes()?);
        Ok(specs)
    }

    /// The tbl8 groups to allocate for `routes` and the ports' own addresses: what
    /// `fib.tbl8_groups` says, refused when the routes need more; when it is absent, what they
    /// need plus a quarter for routes added later, at least [`TBL8_GROUPS_MIN`].
    pub fn tbl8_groups_for(&self, routes: &[RouteSpec]) -> Result<usize, ConfigError> {
        let need = self.tbl8_blocks(routes);
        match self.fib.tbl8_groups {
            Some(n) if n < need => Err(invalid(
                "fib.tbl8_groups",
                format!(
                    "{n} groups, and the initial routes need {need} (one per /24 holding a \
                     longer prefix): raise it, or leave it out to size it from the routes"
                ),
            )),
            Some(n) => Ok(n),
            None => Ok((need + need / 4).max(TBL8_GROUPS_MIN)),
        }
    }

    /// The tbl8 groups `routes` and the ports' own addresses take: one per /24 holding a
    /// prefix longer than /24.
    pub fn tbl8_blocks(&self, routes: &[RouteSpec]) -> usize {
        let mut blocks: Vec<u32> = routes
            .iter()
            .filter(|r| r.len > 24)
            .map(|r| u32::from(r.prefix) >> 8)
            .collect();
        blocks.extend(self.addresses().iter().map(|(_, a, _)| u32::from(*a) >> 8));
        blocks.sort_unstable();
        blocks.dedup();
        blocks.len()
    }

    /// Parse `fib.routes_file` lines.
    pub fn file_routes(&self) -> Result<Vec<RouteSpec>, ConfigError> {
        let Some(path) = &self.fib.routes_file else {
            return Ok(Vec::new());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let r = match f.as_slice() {
                [p, "via", gw] => gw
                    .parse::<Ipv4Addr>()
                    .map_err(|e| e.to_string())
                    .and_then(|g| self.resolve_route(p, Some(g), None, false)),
                [p, "via", gw, "port", name] => gw
                    .parse::<Ipv4Addr>()
                    .map_err(|e| e.to_string())
                    .and_then(|g| self.resolve_route(p, Some(g), Some(name), false)),
                [p, "port", name] => self.resolve_route(p, None, Some(name), false),
                [p, "blackhole"] => self.resolve_route(p, None, None, true),
                _ => Err("expected `PREFIX via GW [port NAME]`, `PREFIX port NAME` or `PREFIX blackhole`".into()),
            };
            out.push(r.map_err(|m| invalid(format!("fib.routes_file line {}", n + 1), m))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const GOOD: &str = r#"
[dataplane]
backend = "soft"
workers = [0]
[[ports]]
name = "a"
device = "memory"
addresses = ["10.0.1.1/24"]
[[ports]]
name = "b"
device = "memory"
addresses = ["10.0.2.1/24"]
[[routes]]
prefix = "192.168.0.0/16"
via = "10.0.2.2"
"#;

    #[test]
    fn tbl8_groups_are_sized_from_the_routes() {
        let dir = std::env::temp_dir().join(format!("tbl8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("routes.txt");
        // 10 000 /24s holding a /32 each, two /25s in one more, and /24s that need none.
        let mut text = String::new();
        for i in 0..10_000u32 {
            let a = std::net::Ipv4Addr::from((20 << 24) | (i << 8) | 7);
            text.push_str(&format!("{a}/32 via 10.0.2.2\n"));
            text.push_str(&format!(
                "{}/24 via 10.0.2.2\n",
                std::net::Ipv4Addr::from((30 << 24) | (i << 8))
            ));
        }
        text.push_str("40.0.0.0/25 via 10.0.2.2\n40.0.0.128/25 blackhole\n");
        std::fs::write(&file, text).unwrap();
        let with = |extra: &str| {
            Config::parse(&format!("{GOOD}\n[fib]\nroutes_file = {:?}\n{extra}", file)).unwrap()
        };
        let c = with("");
        let routes = c.initial_routes().unwrap();
        assert_eq!(routes.len(), 1 + 20_002);
        // 10 001 /24s from the file and the ports' two: plus a quarter.
        assert_eq!(c.tbl8_groups_for(&routes).unwrap(), 10_003 + 10_003 / 4);
        let c = with("tbl8_groups = 20000");
        assert_eq!(c.tbl8_groups_for(&routes).unwrap(), 20_000);
        let e = with("tbl8_groups = 4096")
            .tbl8_groups_for(&routes)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("fib.tbl8_groups") && e.contains("need 10003"),
            "{e}"
        );
        // A few routes: the floor.
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(
            c.tbl8_groups_for(&c.initial_routes().unwrap()).unwrap(),
            TBL8_GROUPS_MIN
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reload_names_what_needs_a_restart_and_ignores_overrides() {
        let dir = std::env::temp_dir().join(format!("reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("router.toml");
        std::fs::write(&file, GOOD).unwrap();
        let mut running = Config::load(&file).unwrap();
        // `router run --workers 1 --log-level debug`: not a change of the file.
        running.dataplane.workers = vec![1];
        running.log.level = "debug".into();
        assert_eq!(running.needs_restart(&Config::load(&file).unwrap()), None);
        let edit = |from: &str, to: &str| {
            std::fs::write(&file, GOOD.replace(from, to)).unwrap();
            running.needs_restart(&Config::load(&file).unwrap())
        };
        assert_eq!(
            edit("192.168.0.0/16", "192.169.0.0/16"),
            None,
            "routes are live"
        );
        assert_eq!(
            edit("name = \"b\"", "name = \"b\"\nmtu = 9000").as_deref(),
            Some("ports[1].mtu")
        );
        assert_eq!(
            edit("workers = [0]", "workers = [0, 1]").as_deref(),
            Some("dataplane.workers")
        );
        assert_eq!(
            edit("[dataplane]", "[icmp]\nerrors_per_sec = 5\n[dataplane]"),
            None
        );
        let fresh = Config::load(&file).unwrap();
        running.take_live(fresh);
        assert_eq!(running.icmp.errors_per_sec, 5);
        assert_eq!(running.dataplane.workers, [1], "the override stays");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn good_config() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(
            c.route_spec(0).unwrap().target,
            RouteTarget::Via {
                gateway: "10.0.2.2".parse().unwrap(),
                port: 1
            }
        );
        assert_eq!(c.dataplane.burst, 32);
    }

    #[test]
    fn defaults_match_an_empty_section() {
        let d: DataplaneConfig = toml::from_str("").unwrap();
        assert_eq!(
            format!("{d:?}"),
            format!("{:?}", DataplaneConfig::default())
        );
        let n: NeighbourConfig = toml::from_str("").unwrap();
        assert_eq!(
            format!("{n:?}"),
            format!("{:?}", NeighbourConfig::default())
        );
        let m: MempoolConfig = toml::from_str("").unwrap();
        assert_eq!(format!("{m:?}"), format!("{:?}", MempoolConfig::default()));
    }

    #[test]
    fn sections_are_the_config_fields() {
        let v = toml::Value::try_from(Config::default()).unwrap();
        let mut keys: Vec<&str> = v.as_table().unwrap().keys().map(|k| k.as_str()).collect();
        let mut want: Vec<&str> = Config::SECTIONS.to_vec();
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want);
    }

    #[test]
    fn unknown_section_is_named() {
        let e = Config::parse(&format!("{GOOD}\n[nsf]\nx = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown section `nsf`"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse(&GOOD.replace("workers = [0]", "workerz = [0]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("workerz"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = Config::parse(&GOOD.replace("10.0.2.2\"", "10.9.9.9\""))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("routes[0]"), "{e}");
        let e = Config::parse(&GOOD.replace("10.0.1.1/24", "10.0.1.1"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ports[0].addresses"), "{e}");
        let e = Config::parse(&format!("{GOOD}\n[fib]\ntbl8_groups = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("fib.tbl8_groups"), "{e}");
        let e = Config::parse(&GOOD.replace("workers = [0]", "workers = [0]\nburst = 999"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("dataplane.burst"), "{e}");
    }
}
