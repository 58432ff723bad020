//! The `[chain]` section: NetChain switch nodes this appliance acts as.

use crate::config::{invalid, Config, ConfigError};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

fn d_chain_keys() -> usize {
    65_536
}
fn d_value_len() -> usize {
    16
}

/// NetChain switch nodes (`[chain]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// Value size in bytes: 16 (the prototype's, the default) up to 128 (the paper's).
    #[serde(default = "d_value_len")]
    pub value_len: usize,
    /// Keys each node's register store holds.
    #[serde(default = "d_chain_keys")]
    pub max_keys: usize,
    /// Keys every node stores from the start: a decimal number (right-aligned in 16 bytes, as
    /// the prototype's client writes one) or `0x` and hex digits.
    #[serde(default)]
    pub keys: Vec<String>,
    pub nodes: Vec<ChainNodeConfig>,
    /// Failover rules: a query headed for `dst` whose next entry is `next` skips `dst`.
    #[serde(default)]
    pub failover: Vec<ChainFailoverConfig>,
    /// The chain master's control channel: a file holding the shared secret that
    /// authenticates it (leave out: no control channel, the configuration is all there is).
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
    /// The UDP port on the appliance's port addresses where the master's requests arrive.
    #[serde(default = "d_control_port")]
    pub control_port: u16,
}

fn d_control_port() -> u16 {
    chain_switch::control::CONTROL_PORT
}

/// One NetChain node this appliance acts as.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainNodeConfig {
    /// The node's address: queries to it are answered here (it need not be a port address;
    /// peers route it to this appliance).
    pub address: Ipv4Addr,
    /// Virtual groups (`N` or `A-B`) where the node is the head, a middle node, the tail.
    /// A group both head and tail is a one-node chain.
    #[serde(default)]
    pub head: Vec<String>,
    #[serde(default)]
    pub middle: Vec<String>,
    #[serde(default)]
    pub tail: Vec<String>,
    /// The session its head roles start in.
    #[serde(default)]
    pub session: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainFailoverConfig {
    pub dst: Ipv4Addr,
    /// The next list entry to match (leave out: any).
    #[serde(default)]
    pub next: Option<Ipv4Addr>,
    /// Leave out: any virtual group.
    #[serde(default)]
    pub vgroup: Option<u16>,
    /// Send the query to this node instead (its entry rewritten); leave out: skip `dst`.
    #[serde(default)]
    pub to: Option<Ipv4Addr>,
}

/// Parse a list of virtual groups (`N`, `A-B`).
pub fn parse_vgroups(list: &[String]) -> Result<Vec<std::ops::RangeInclusive<u16>>, String> {
    list.iter()
        .map(|s| {
            let bad = || format!("{s:?}: a virtual group is N or A-B (0..=65535)");
            let (a, b) = match s.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (s.trim(), s.trim()),
            };
            let (a, b): (u16, u16) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            if a > b {
                return Err(bad());
            }
            Ok(a..=b)
        })
        .collect()
}

impl ChainConfig {
    /// Checks beyond the TOML schema; errors name the key.
    pub fn validate(&self, _cfg: &Config) -> Result<(), ConfigError> {
        if !(1..=chain_switch::wire::MAX_VALUE_LEN).contains(&self.value_len) {
            return Err(invalid(
                "chain.value_len",
                "must be 1..=128 (16: the prototype's)",
            ));
        }
        if !(1..=1 << 24).contains(&self.max_keys) {
            return Err(invalid("chain.max_keys", "must be 1..=16777216"));
        }
        if self.keys.len() > self.max_keys {
            return Err(invalid("chain.keys", "more keys than chain.max_keys"));
        }
        for (i, k) in self.keys.iter().enumerate() {
            if chain_switch::wire::parse_key(k).is_none() {
                return Err(invalid(
                    format!("chain.keys[{i}]"),
                    format!("{k:?}: a decimal number or 0x and up to 32 hex digits"),
                ));
            }
        }
        if self.nodes.is_empty() {
            return Err(invalid("chain.nodes", "at least one node"));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if self.nodes[..i].iter().any(|m| m.address == n.address) {
                return Err(invalid(format!("chain.nodes[{i}].address"), "used twice"));
            }
            for (what, l) in [("head", &n.head), ("middle", &n.middle), ("tail", &n.tail)] {
                parse_vgroups(l).map_err(|e| invalid(format!("chain.nodes[{i}].{what}"), e))?;
            }
        }
        if self.failover.len() > chain_switch::node::FAILOVER_RULES {
            return Err(invalid("chain.failover", "at most 256 rules"));
        }
        Ok(())
    }
}
