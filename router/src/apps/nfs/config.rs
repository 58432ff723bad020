//! The `[nfs]` section: the virtual NFS server, the servers it aggregates, its handle key,
//! tables, checkpoints and its TCP side (`[nfs.tcp]`).

use crate::config::{d_true, invalid, Config, ConfigError};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

fn d_nfs_port() -> u16 {
    2049
}
fn d_mount_port() -> u16 {
    20048
}
fn d_vfsid() -> u64 {
    0x5649_5254_5541_4c31 // "VIRTUAL1"
}
fn d_transactions() -> usize {
    65_536
}
fn d_tx_ttl() -> u64 {
    10_000
}
fn d_handles() -> usize {
    1 << 20
}
fn d_failover_ms() -> u64 {
    2000
}
fn d_checkpoint_secs() -> u64 {
    10
}

/// One aggregated NFS server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfsServerConfig {
    /// Server id (1..=65535), stored in every virtual handle: never reuse one for another server.
    pub sid: u16,
    /// The name its export has in the virtual root directory.
    pub name: String,
    pub address: Ipv4Addr,
    #[serde(default = "d_nfs_port")]
    pub nfs_port: u16,
    #[serde(default = "d_mount_port")]
    pub mount_port: u16,
    /// The export path to mount on the server.
    pub export: String,
    /// "tcp" (the default): the router's mounts and recovery walks and TCP clients' calls go
    /// over TCP, UDP clients' calls over UDP (rewritten on the fast path); "udp": all over
    /// UDP; "tcp-only": the server has no UDP, UDP clients' calls go over TCP too (through
    /// the management core).
    #[serde(default)]
    pub transport: NfsTransport,
    /// The client networks that may mount and use this export (`"10.0.1.0/24"`, or an
    /// address); none: every client. Others get MNT3ERR_ACCES and NFS3ERR_ACCES.
    #[serde(default)]
    pub clients: Vec<ClientNetwork>,
    /// "none" (the default: credentials as the client sent them; the server's own export
    /// policy applies), "root" (uid/gid 0 become `nfs.policy`'s anonymous ids before a call
    /// leaves the router), "all" (every uid/gid does).
    #[serde(default)]
    pub squash: SquashConfig,
    /// Replication: this server is the backup of the server of this name (its primary).
    /// Every change to the primary's export is applied to this one too, in the primary's
    /// order, from a log; this server is not in the virtual root. Both exports must start
    /// with the same contents.
    #[serde(default)]
    pub backup_of: Option<String>,
}

fn d_web_cache_mib() -> usize {
    64
}
fn d_web_lifetime_secs() -> u64 {
    30
}
fn d_web_timeout_ms() -> u64 {
    5000
}
fn d_web_connections() -> usize {
    4
}

/// A web export (`[[nfs.web]]`): an entry of the virtual root whose files are the HTTP
/// resources of an origin server, read-only, answered by the router itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfsWebConfig {
    /// Its name in the virtual root (unique among servers and web exports).
    pub name: String,
    /// The origin base URL: `http://host[:port]/path/`. LOOKUP of `a/b` is `URL/a/b`; a
    /// directory is a name whose page is an HTML index (autoindex). Plain HTTP only.
    pub url: String,
    /// File blocks cached, MiB (at least 4).
    #[serde(default = "d_web_cache_mib")]
    pub cache_mib: usize,
    /// How long a response is used before the origin is asked whether it changed (seconds).
    #[serde(default = "d_web_lifetime_secs")]
    pub lifetime_secs: u64,
    /// How long a request to the origin may take before the call fails with NFS3ERR_IO (ms).
    #[serde(default = "d_web_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests to the origin at once (threads and keep-alive connections).
    #[serde(default = "d_web_connections")]
    pub connections: usize,
}

impl NfsWebConfig {
    /// The base URL, ending in `/`.
    pub fn base(&self) -> String {
        let u = self.url.trim();
        if u.ends_with('/') {
            u.to_string()
        } else {
            format!("{u}/")
        }
    }

    pub fn spec(&self) -> nfs_rewrite::web::WebSpec {
        nfs_rewrite::web::WebSpec {
            name: self.name.clone(),
            base: self.base(),
            cache_bytes: self.cache_mib << 20,
            lifetime_ms: self.lifetime_secs * 1000,
            timeout_ms: self.timeout_ms,
            connections: self.connections,
        }
    }
}

/// A client network of an export policy, `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientNetwork(pub nfs_rewrite::policy::Network);

impl TryFrom<String> for ClientNetwork {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse().map(ClientNetwork)
    }
}

impl From<ClientNetwork> for String {
    fn from(n: ClientNetwork) -> String {
        n.0.to_string()
    }
}

/// Whose ids are squashed (see [`NfsServerConfig::squash`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SquashConfig {
    #[default]
    None,
    Root,
    All,
}

impl From<SquashConfig> for nfs_rewrite::policy::Squash {
    fn from(s: SquashConfig) -> Self {
        match s {
            SquashConfig::None => Self::None,
            SquashConfig::Root => Self::Root,
            SquashConfig::All => Self::All,
        }
    }
}

fn d_anonymous_id() -> u32 {
    65534
}
fn d_max_mounts() -> usize {
    4096
}

/// The virtual server's export policy (`[nfs.policy]`), checked at the router before a call
/// reaches any server. The default is open: AUTH_SYS and AUTH_NONE, any address.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfsPolicyConfig {
    /// Accept AUTH_NONE credentials (AUTH_SYS always is; other flavors never are, since the
    /// router cannot check them): refused calls get AUTH_ERROR / AUTH_TOOWEAK.
    #[serde(default = "d_true")]
    pub auth_none: bool,
    /// The ids squashed credentials get (`squash` of each server).
    #[serde(default = "d_anonymous_id")]
    pub anonymous_uid: u32,
    #[serde(default = "d_anonymous_id")]
    pub anonymous_gid: u32,
    /// Refuse (NFS3ERR_ACCES) calls from addresses that did not mount through the router.
    /// Needs `mount_table`, so that a restarted router still knows who mounted.
    #[serde(default)]
    pub require_mount: bool,
    /// Where the router keeps who mounted what (an rmtab: `ADDRESS PATH` lines, written
    /// atomically on every change, read at start).
    #[serde(default)]
    pub mount_table: Option<std::path::PathBuf>,
    /// Client addresses that may be mounted at once.
    #[serde(default = "d_max_mounts")]
    pub max_mounts: usize,
    /// Fairness: calls one client address may have at servers at once over UDP (spread over
    /// the workers); more are dropped and counted (`client-limit`), and the client
    /// retransmits. 0: no limit.
    #[serde(default)]
    pub client_max_inflight: u32,
    /// Calls per second one client address may send over UDP (0: no limit), with bursts of
    /// `client_burst` (default: a tenth of a second's worth, at least 1); more are dropped and
    /// counted (`rate-limited`).
    #[serde(default)]
    pub client_rate: u32,
    #[serde(default)]
    pub client_burst: Option<u32>,
}

impl Default for NfsPolicyConfig {
    fn default() -> Self {
        NfsPolicyConfig {
            auth_none: true,
            anonymous_uid: d_anonymous_id(),
            anonymous_gid: d_anonymous_id(),
            require_mount: false,
            mount_table: None,
            max_mounts: d_max_mounts(),
            client_max_inflight: 0,
            client_rate: 0,
            client_burst: None,
        }
    }
}

/// The NFS handle secret. Fails closed: it can only be built from 32 hex digits, so a config
/// without a valid one does not load, and no code path can fall back to a default key.
#[derive(Clone, PartialEq, Eq)]
pub struct HandleSecret {
    hex: String,
    key: nfs_rewrite::vfh::HandleKey,
}

impl HandleSecret {
    const WHAT: &'static str =
        "nfs.handle_secret: must be 32 hex digits (e.g. from `openssl rand -hex 16`)";

    pub fn from_hex(hex: &str) -> Result<Self, String> {
        let hex = hex.trim();
        let ok = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        match nfs_rewrite::vfh::HandleKey::from_hex(hex) {
            Some(key) if ok => Ok(HandleSecret {
                hex: hex.to_string(),
                key,
            }),
            _ => Err(Self::WHAT.to_string()),
        }
    }

    pub fn key(&self) -> nfs_rewrite::vfh::HandleKey {
        self.key
    }
}

impl std::fmt::Debug for HandleSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandleSecret(..)")
    }
}

impl Serialize for HandleSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex)
    }
}

impl<'de> Deserialize<'de> for HandleSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HandleSecret::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// Mirage NFS virtualization: several NFSv3 servers seen by clients as one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfsConfig {
    /// The address clients mount: one of the router's own addresses.
    pub virtual_address: Ipv4Addr,
    #[serde(default = "d_nfs_port")]
    pub nfs_port: u16,
    #[serde(default = "d_mount_port")]
    pub mount_port: u16,
    /// 32 hex digits: the key of every handle's verification checksum. Keep it across restarts,
    /// or clients' handles go stale.
    pub handle_secret: HandleSecret,
    /// The fsid clients see for the whole virtual file system.
    #[serde(default = "d_vfsid")]
    pub virtual_fsid: u64,
    /// Calls in flight per worker.
    #[serde(default = "d_transactions")]
    pub transactions: usize,
    /// How long a call waits for its reply (ms).
    #[serde(default = "d_tx_ttl")]
    pub transaction_ttl_ms: u64,
    /// Handle-table slots (VIN → physical handle).
    #[serde(default = "d_handles")]
    pub handles: usize,
    /// Largest READ/WRITE transfer clients are offered (FSINFO rtmax/wtmax) and READ counts are
    /// clamped to, in bytes. Default: what fits the smallest port MTU without IP fragments.
    #[serde(default)]
    pub max_io: Option<u32>,
    /// Where the handle table is checkpointed (written atomically; read at start-up so a
    /// restarted router serves the handles clients hold). No file: recovery searches servers.
    #[serde(default)]
    pub checkpoint: Option<std::path::PathBuf>,
    /// Where replication keeps its journal (the logs of changes not yet applied to the
    /// backups, the backups' handles, the names): default beside `checkpoint`, with the
    /// extension `.replication`. Needed when a server has a backup.
    #[serde(default)]
    pub replication_journal: Option<std::path::PathBuf>,
    /// Replication: fail a replicated export over to its backup when its active server has
    /// answered no probe (NFS NULL, every tenth of this) for this long, ms (0: never).
    #[serde(default = "d_failover_ms")]
    pub failover_ms: u64,
    /// Seconds between checkpoints (0: only on `routerctl nfs checkpoint` and at stop).
    #[serde(default = "d_checkpoint_secs")]
    pub checkpoint_secs: u64,
    /// The virtual server over TCP (`[nfs.tcp]`).
    #[serde(default)]
    pub tcp: NfsTcpConfig,
    /// The export policy (`[nfs.policy]`).
    #[serde(default)]
    pub policy: NfsPolicyConfig,
    #[serde(default)]
    pub servers: Vec<NfsServerConfig>,
    /// Web exports (`[[nfs.web]]`).
    #[serde(default)]
    pub web: Vec<NfsWebConfig>,
}

/// The virtual server over TCP: the router terminates clients' connections on the virtual
/// address (portmap, MOUNT, NFS ports) and talks to servers over connections of its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfsTcpConfig {
    /// Listen on TCP at all (UDP is served either way).
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// READ/WRITE size offered to TCP clients (FSINFO rtmax/wtmax) and READ/READDIR counts
    /// clamped to, in bytes: 4096..=1048576.
    #[serde(default = "d_tcp_max_io")]
    pub max_io: u32,
    /// Client connections in all, and from one client address.
    #[serde(default = "d_tcp_max_connections")]
    pub max_connections: usize,
    #[serde(default = "d_tcp_max_per_client")]
    pub max_per_client: usize,
    /// Calls of one client connection at servers at once (more stay unread in its stream).
    #[serde(default = "d_tcp_max_inflight")]
    pub max_inflight: usize,
    /// A client connection with no whole call for this long (and nothing in flight) is reset.
    #[serde(default = "d_tcp_idle_secs")]
    pub idle_secs: u64,
    /// Receive and send buffer of each client connection, KiB (the window it offers).
    #[serde(default = "d_tcp_client_buffer")]
    pub client_buffer_kib: usize,
    /// Receive and send buffer of each connection to a server, KiB.
    #[serde(default = "d_tcp_server_buffer")]
    pub server_buffer_kib: usize,
}

impl Default for NfsTcpConfig {
    fn default() -> Self {
        NfsTcpConfig {
            enabled: true,
            max_io: d_tcp_max_io(),
            max_connections: d_tcp_max_connections(),
            max_per_client: d_tcp_max_per_client(),
            max_inflight: d_tcp_max_inflight(),
            idle_secs: d_tcp_idle_secs(),
            client_buffer_kib: d_tcp_client_buffer(),
            server_buffer_kib: d_tcp_server_buffer(),
        }
    }
}

fn d_tcp_max_io() -> u32 {
    1 << 20
}
fn d_tcp_max_connections() -> usize {
    1024
}
fn d_tcp_max_per_client() -> usize {
    64
}
fn d_tcp_max_inflight() -> usize {
    64
}
fn d_tcp_idle_secs() -> u64 {
    300
}
fn d_tcp_client_buffer() -> usize {
    256
}
fn d_tcp_server_buffer() -> usize {
    2048
}

/// How the router talks to a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NfsTransport {
    /// The router's own calls and TCP clients' calls over TCP; UDP clients' calls are
    /// rewritten on the fast path and go over UDP.
    #[default]
    Tcp,
    /// Everything over UDP.
    Udp,
    /// The server has no UDP at all: UDP clients' calls are carried over TCP too, by the
    /// management core (the slow path).
    #[serde(rename = "tcp-only")]
    TcpOnly,
}

impl NfsConfig {
    /// Checks beyond the TOML schema; errors name the key.
    pub fn validate(&self, cfg: &Config) -> Result<(), ConfigError> {
        let n = self;
        if !cfg
            .addresses()
            .iter()
            .any(|(_, a, _)| *a == n.virtual_address)
        {
            return Err(invalid(
                "nfs.virtual_address",
                "must be one of the router's port addresses (clients mount it)",
            ));
        }
        if n.servers.is_empty() && n.web.is_empty() {
            return Err(invalid(
                "nfs.servers",
                "at least one server (or one [[nfs.web]] export)",
            ));
        }
        for (i, s) in n.servers.iter().enumerate() {
            let Some(p) = &s.backup_of else { continue };
            let primary = n.servers.iter().find(|t| &t.name == p);
            let taken = n
                .servers
                .iter()
                .filter(|t| t.backup_of.as_deref() == Some(p))
                .count();
            if primary.is_none_or(|t| t.backup_of.is_some() || t.name == s.name) || taken > 1 {
                return Err(invalid(
                    format!("nfs.servers[{i}].backup_of"),
                    format!(
                        "{p:?} is not another server of this section, is a backup itself, or \
                         has a backup already"
                    ),
                ));
            }
        }
        if n.servers.iter().any(|s| s.backup_of.is_some()) && n.journal_path().is_none() {
            return Err(invalid(
                "nfs.replication_journal",
                "needed with a backup (or nfs.checkpoint, beside which it is kept): a restarted \
                 router must not lose the changes the backup has not applied yet",
            ));
        }
        for (i, w) in n.web.iter().enumerate() {
            let k = |f: &str| format!("nfs.web[{i}].{f}");
            let taken = n.servers.iter().filter(|s| s.name == w.name).count()
                + n.web.iter().filter(|t| t.name == w.name).count();
            if w.name.is_empty() || w.name.contains('/') || w.name.len() > 255 || taken > 1 {
                return Err(invalid(
                    k("name"),
                    format!(
                        "{:?} is empty, has a '/', or is not unique among servers and web exports",
                        w.name
                    ),
                ));
            }
            let base = w.base();
            let host = base.strip_prefix("http://").unwrap_or("");
            if host.is_empty() || host.starts_with('/') || base.contains(char::is_whitespace) {
                return Err(invalid(
                    k("url"),
                    format!(
                        "{:?} is not http://host[:port]/path/ (https is not supported: the \
                         router speaks plain HTTP to origins)",
                        w.url
                    ),
                ));
            }
            if !(4..=65_536).contains(&w.cache_mib) {
                return Err(invalid(k("cache_mib"), "must be 4..=65536 MiB"));
            }
            if !(1..=86_400).contains(&w.lifetime_secs) {
                return Err(invalid(k("lifetime_secs"), "must be 1..=86400"));
            }
            if !(100..=600_000).contains(&w.timeout_ms) {
                return Err(invalid(k("timeout_ms"), "must be 100..=600000"));
            }
            if !(1..=64).contains(&w.connections) {
                return Err(invalid(k("connections"), "must be 1..=64"));
            }
        }
        for (i, s) in n.servers.iter().enumerate() {
            let k = |f: &str| format!("nfs.servers[{i}].{f}");
            if s.sid == 0 || n.servers.iter().filter(|t| t.sid == s.sid).count() > 1 {
                return Err(invalid(k("sid"), format!("{} is 0 or not unique", s.sid)));
            }
            if s.name.is_empty()
                || s.name.contains('/')
                || n.servers.iter().filter(|t| t.name == s.name).count() > 1
            {
                return Err(invalid(
                    k("name"),
                    format!("{:?} is empty, has a '/', or is not unique", s.name),
                ));
            }
            if !s.export.starts_with('/') {
                return Err(invalid(
                    k("export"),
                    format!("{:?} is not an absolute path", s.export),
                ));
            }
        }
        let p = &n.policy;
        if p.require_mount && p.mount_table.is_none() {
            return Err(invalid(
                "nfs.policy.require_mount",
                "needs nfs.policy.mount_table (a file: without it a restarted router would \
                 refuse every client until it mounts again)",
            ));
        }
        if p.client_burst.is_some() && p.client_rate == 0 {
            return Err(invalid(
                "nfs.policy.client_burst",
                "needs nfs.policy.client_rate (a burst above no rate limit means nothing)",
            ));
        }
        if !(1..=1 << 20).contains(&p.max_mounts) {
            return Err(invalid("nfs.policy.max_mounts", "must be 1..=1048576"));
        }
        if !(16..=1 << 24).contains(&n.transactions) {
            return Err(invalid("nfs.transactions", "must be 16..=16777216"));
        }
        if !(16..=1 << 26).contains(&n.handles) {
            return Err(invalid("nfs.handles", "must be 16..=67108864"));
        }
        if let Some(m) = n.max_io {
            if !(512..=65_536).contains(&m) {
                return Err(invalid("nfs.max_io", "must be 512..=65536 bytes"));
            }
        }
        let t = &n.tcp;
        if !(4096..=1 << 20).contains(&t.max_io) {
            return Err(invalid("nfs.tcp.max_io", "must be 4096..=1048576 bytes"));
        }
        if !(1..=65_536).contains(&t.max_connections) {
            return Err(invalid("nfs.tcp.max_connections", "must be 1..=65536"));
        }
        if t.max_per_client == 0 || t.max_per_client > t.max_connections {
            return Err(invalid(
                "nfs.tcp.max_per_client",
                "must be 1..=max_connections",
            ));
        }
        if !(1..=4096).contains(&t.max_inflight) {
            return Err(invalid("nfs.tcp.max_inflight", "must be 1..=4096"));
        }
        if t.idle_secs == 0 {
            return Err(invalid("nfs.tcp.idle_secs", "must be at least 1"));
        }
        for (key, v) in [
            ("nfs.tcp.client_buffer_kib", t.client_buffer_kib),
            ("nfs.tcp.server_buffer_kib", t.server_buffer_kib),
        ] {
            if !(16..=16_384).contains(&v) {
                return Err(invalid(key, "must be 16..=16384 KiB"));
            }
        }
        Ok(())
    }

    /// Where replication's journal is (see `replication_journal`).
    pub fn journal_path(&self) -> Option<std::path::PathBuf> {
        self.replication_journal.clone().or_else(|| {
            self.checkpoint
                .as_ref()
                .map(|c| c.with_extension("replication"))
        })
    }

    /// The NFS transfer limits: `nfs.max_io` if set, otherwise derived from the smallest MTU.
    pub fn limits(&self, cfg: &Config) -> nfs_rewrite::rewrite::Limits {
        let mtu = cfg.ports.iter().map(|p| p.mtu).min().unwrap_or(1500);
        let mut l = nfs_rewrite::rewrite::Limits::for_mtu(mtu);
        if let Some(m) = self.max_io {
            l.max_io = m;
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::GOOD;

    #[test]
    fn nfs_section() {
        let nfs = r#"
[nfs]
virtual_address = "10.0.1.1"
handle_secret = "000102030405060708090a0b0c0d0e0f"
[[nfs.servers]]
sid = 1
name = "a"
address = "10.0.2.2"
export = "/srv/a"
"#;
        let c = Config::parse(&format!("{GOOD}{nfs}")).unwrap();
        assert_eq!(c.apps.nfs.as_ref().unwrap().servers[0].nfs_port, 2049);
        let e = Config::parse(&format!("{GOOD}{}", nfs.replace("10.0.1.1", "10.9.9.9")))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("nfs.virtual_address"), "{e}");
        let e = Config::parse(&format!("{GOOD}{}", nfs.replace("0e0f", "0e")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nfs.handle_secret: must be 32 hex digits"),
            "{e}"
        );
        let e = Config::parse(&format!("{GOOD}{}", nfs.replace("sid = 1", "sid = 0")))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("nfs.servers[0].sid"), "{e}");
        // The export policy.
        let policy = format!(
            "{GOOD}{}",
            nfs.replace(
                "export = \"/srv/a\"",
                "export = \"/srv/a\"\nclients = [\"10.0.1.0/24\", \"192.0.2.7\"]\nsquash = \"root\""
            )
        );
        let c = Config::parse(&policy).unwrap();
        let s = &c.apps.nfs.as_ref().unwrap().servers[0];
        assert_eq!(s.squash, SquashConfig::Root);
        assert_eq!(s.clients[1].0.to_string(), "192.0.2.7/32");
        let e = Config::parse(&policy.replace("10.0.1.0/24", "10.0.1.1/24"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("host bits set") && e.contains("line"), "{e}");
        let e = Config::parse(&format!("{policy}[nfs.policy]\nrequire_mount = true\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("nfs.policy.require_mount"), "{e}");
        let c = Config::parse(&format!(
            "{policy}[nfs.policy]\nrequire_mount = true\nmount_table = \"/tmp/x\"\nauth_none = false\n"
        ))
        .unwrap();
        assert!(!c.apps.nfs.as_ref().unwrap().policy.auth_none);
        let e = Config::parse(&format!("{policy}[nfs.policy]\nclient_burst = 10\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("nfs.policy.client_burst"), "{e}");
        let c = Config::parse(&format!(
            "{policy}[nfs.policy]\nclient_max_inflight = 33\nclient_rate = 1000\n"
        ))
        .unwrap();
        let p = &c.apps.nfs.as_ref().unwrap().policy;
        // Shared out over two workers, rounded up; the burst a tenth of the rate.
        let l = super::super::admission_limits(p, 10_000, 2);
        assert_eq!((l.max_inflight, l.rate, l.burst), (17, 500, 50));
        // Any worker layout: several run-to-completion workers hand calls and replies to the
        // worker keeping the transaction.
        // Web exports.
        let web =
            format!("{policy}[[nfs.web]]\nname = \"www\"\nurl = \"http://10.0.9.2:8080/pub\"\n");
        let c = Config::parse(&web).unwrap();
        let w = &c.apps.nfs.as_ref().unwrap().web[0];
        assert_eq!(w.spec().base, "http://10.0.9.2:8080/pub/");
        assert_eq!((w.cache_mib, w.lifetime_secs, w.timeout_ms), (64, 30, 5000));
        for (from, to, key) in [
            ("name = \"www\"", "name = \"a\"", "nfs.web[0].name"),
            ("http://10.0.9.2:8080", "https://10.0.9.2", "nfs.web[0].url"),
            ("/pub\"", "/pub\"\ncache_mib = 1", "nfs.web[0].cache_mib"),
        ] {
            let e = Config::parse(&web.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{e}");
        }
        let two = Config::parse(&format!(
            "{}{nfs}",
            GOOD.replace("workers = [0]", "workers = [0, 1]")
        ))
        .unwrap();
        assert_eq!(two.dataplane.workers.len(), 2);
    }
}
