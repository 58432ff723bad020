//! `routerctl chain …`: NetChain nodes, virtual groups and counters.

use crate::apps::AppRequest;
use crate::cli::plain;
use crate::say;
use serde_json::Value;

#[derive(clap::Subcommand, Debug)]
pub enum ChainCmd {
    /// Each node: address, keys stored, how many groups it heads, serves as middle, tails.
    Nodes,
    /// Each node's virtual groups (role, session) and the failover rules.
    Groups {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Reads, writes, replies, queries chained, failovers.
    Stats,
}

impl ChainCmd {
    /// The admin request it sends.
    pub fn request(&self) -> AppRequest {
        match self {
            ChainCmd::Nodes => AppRequest::ChainNodes,
            ChainCmd::Groups { limit } => AppRequest::ChainGroups {
                limit: Some(*limit),
            },
            ChainCmd::Stats => AppRequest::ChainStats,
        }
    }

    /// Print the answer for an operator.
    pub fn print(&self, data: &Value) {
        match self {
            ChainCmd::Nodes => {
                say!(
                    "{:<16} {:>10} {:>10} {:>6} {:>8} {:>8} {:>8} {:>8}",
                    "node",
                    "keys",
                    "capacity",
                    "value",
                    "head",
                    "middle",
                    "tail",
                    "stopped"
                );
                for n in data["nodes"].as_array().into_iter().flatten() {
                    say!(
                        "{:<16} {:>10} {:>10} {:>5}B {:>8} {:>8} {:>8} {:>8}",
                        plain(&n["address"]),
                        plain(&n["keys"]),
                        plain(&n["key_capacity"]),
                        plain(&n["value_len"]),
                        plain(&n["head_of"]),
                        plain(&n["middle_of"]),
                        plain(&n["tail_of"]),
                        plain(&n["stopped"])
                    );
                }
            }
            ChainCmd::Groups { .. } => {
                say!(
                    "{:<16} {:>7} {:<14} {:>7}",
                    "node",
                    "vgroup",
                    "role",
                    "session"
                );
                for g in data["groups"].as_array().into_iter().flatten() {
                    say!(
                        "{:<16} {:>7} {:<14} {:>7}",
                        plain(&g["node"]),
                        plain(&g["vgroup"]),
                        plain(&g["role"]),
                        plain(&g["session"])
                    );
                }
                say!("{} group memberships", plain(&data["total"]));
                for f in data["failover"].as_array().into_iter().flatten() {
                    say!(
                        "failover: queries for {} (next {}, vgroup {}) skip it",
                        plain(&f["dst"]),
                        if f["next"].is_null() {
                            "any".to_string()
                        } else {
                            plain(&f["next"])
                        },
                        if f["vgroup"].is_null() {
                            "any".to_string()
                        } else {
                            plain(&f["vgroup"])
                        }
                    );
                }
            }
            ChainCmd::Stats => {
                let st = &data["stage"];
                say!(
                    "{} nodes, {} keys, {}-byte values",
                    plain(&data["nodes"]),
                    plain(&data["keys"]),
                    plain(&data["value_len"])
                );
                say!(
                    "reads {}  writes {}  replies {}  chained {}  failovers {}  passed {}",
                    plain(&st["reads"]),
                    plain(&st["writes"]),
                    plain(&st["replies"]),
                    plain(&st["chained"]),
                    plain(&st["failovers"]),
                    plain(&st["passed"])
                );
            }
        }
    }
}
