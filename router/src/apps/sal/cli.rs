//! `routerctl sal …`: service rules, registrations, the DELAY queue, the controller
//! hierarchy and counters.

use crate::apps::AppRequest;
use crate::cli::plain;
use crate::say;
use serde_json::Value;

#[derive(clap::Subcommand, Debug)]
pub enum SalCmd {
    /// Service rules.
    Rule {
        #[command(subcommand)]
        cmd: SalRuleCmd,
    },
    /// Stage, controller and DELAY-queue counters.
    Stats,
    /// Hosts' registrations (soft state).
    Registrations,
    /// Packets waiting in the DELAY queue.
    Delayed,
    /// The controller hierarchy: parent, mode, children's pointer records, cached answers,
    /// resolutions in flight, counters.
    Hierarchy,
}

#[derive(clap::Subcommand, Debug)]
pub enum SalRuleCmd {
    /// Add targets to a rule: `sal rule add 16385 forward 10.0.2.2:3 10.0.3.2:1`,
    /// `sal rule add 0x8/4 drop`, `sal rule add 0/0 delay`.
    Add {
        /// `16385` (a /32, the original tools' form), `ID/LEN`, or `0x…[/LEN]`.
        prefix: String,
        /// forward, demux, delay or drop.
        action: String,
        /// FORWARD targets: ADDRESS[:WEIGHT].
        targets: Vec<String>,
        /// Only the highest-priority set of a prefix is used.
        #[arg(long, default_value_t = 0)]
        priority: u32,
        /// anycast (one target by weight) or all (a copy to each).
        #[arg(long)]
        mode: Option<String>,
    },
    /// Delete a rule's target, a priority's set, or the whole prefix.
    Del {
        prefix: String,
        /// Only this target.
        target: Option<std::net::Ipv4Addr>,
        #[arg(long)]
        priority: Option<u32>,
    },
    /// List rules with their packet counts.
    List {
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

impl SalCmd {
    /// The admin request it sends.
    pub fn request(&self) -> AppRequest {
        match self {
            SalCmd::Rule {
                cmd:
                    SalRuleCmd::Add {
                        prefix,
                        action,
                        targets,
                        priority,
                        mode,
                    },
            } => AppRequest::SalRuleAdd {
                prefix: prefix.clone(),
                action: action.clone(),
                targets: targets.clone(),
                priority: *priority,
                mode: mode.clone(),
            },
            SalCmd::Rule {
                cmd:
                    SalRuleCmd::Del {
                        prefix,
                        target,
                        priority,
                    },
            } => AppRequest::SalRuleDel {
                prefix: prefix.clone(),
                priority: *priority,
                target: *target,
            },
            SalCmd::Rule {
                cmd: SalRuleCmd::List { limit },
            } => AppRequest::SalRuleList {
                limit: Some(*limit),
            },
            SalCmd::Stats => AppRequest::SalStats,
            SalCmd::Registrations => AppRequest::SalRegistrations,
            SalCmd::Delayed => AppRequest::SalDelayed,
            SalCmd::Hierarchy => AppRequest::SalHierarchy,
        }
    }

    /// Print the answer for an operator.
    pub fn print(&self, data: &Value) {
        match self {
            SalCmd::Rule {
                cmd: SalRuleCmd::List { .. },
            } => {
                say!(
                    "{:<24} {:>10} {:<8} {:<8} {:>12} targets",
                    "prefix",
                    "priority",
                    "action",
                    "mode",
                    "packets"
                );
                for r in data["rules"].as_array().into_iter().flatten() {
                    let targets: Vec<String> = r["targets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|t| format!("{}:{}", plain(&t["address"]), plain(&t["weight"])))
                        .collect();
                    say!(
                        "{:<24} {:>10} {:<8} {:<8} {:>12} {}{}",
                        plain(&r["prefix"]),
                        plain(&r["priority"]),
                        plain(&r["action"]),
                        plain(&r["mode"]),
                        plain(&r["packets"]),
                        targets.join(" "),
                        if r["active"] == true {
                            ""
                        } else {
                            " (inactive)"
                        }
                    );
                }
                say!("{} rules", plain(&data["total"]));
            }
            SalCmd::Registrations => {
                say!(
                    "{:<24} {:<16} {:>8} {:>10} {:>9}",
                    "prefix",
                    "address",
                    "age(s)",
                    "refreshed",
                    "refreshes"
                );
                for r in data["registrations"].as_array().into_iter().flatten() {
                    say!(
                        "{:<24} {:<16} {:>8} {:>9}s {:>9}",
                        plain(&r["prefix"]),
                        plain(&r["address"]),
                        plain(&r["age_secs"]),
                        plain(&r["refreshed_secs_ago"]),
                        plain(&r["refreshes"])
                    );
                }
            }
            SalCmd::Delayed => {
                say!(
                    "{:<8} {:<24} {:>10} {:>6}",
                    "id",
                    "service",
                    "waiting",
                    "bytes"
                );
                for d in data["delayed"].as_array().into_iter().flatten() {
                    say!(
                        "{:<8} {:<24} {:>8}ms {:>6}",
                        plain(&d["id"]),
                        plain(&d["service"]),
                        plain(&d["waiting_ms"]),
                        plain(&d["bytes"])
                    );
                }
            }
            SalCmd::Hierarchy => {
                say!(
                    "parent {}  mode {}  answers from here live {} s",
                    if data["parent"].is_null() {
                        "none (root)".to_string()
                    } else {
                        plain(&data["parent"])
                    },
                    plain(&data["mode"]),
                    plain(&data["cache_secs"])
                );
                say!(
                    "pointer records ({}):",
                    data["pointers"].as_array().map_or(0, |a| a.len())
                );
                for p in data["pointers"].as_array().into_iter().flatten() {
                    say!(
                        "  {:<24} -> {:<16} refreshed {}s ago",
                        plain(&p["prefix"]),
                        plain(&p["child"]),
                        plain(&p["refreshed_secs_ago"])
                    );
                }
                say!(
                    "cached answers ({}):",
                    data["cache"].as_array().map_or(0, |a| a.len())
                );
                for c in data["cache"].as_array().into_iter().flatten() {
                    let targets: Vec<String> = c["targets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(plain)
                        .collect();
                    say!(
                        "  {:<24} -> {}  (from {}, expires in {} ms)",
                        plain(&c["prefix"]),
                        targets.join(" "),
                        plain(&c["from"]),
                        plain(&c["expires_in_ms"])
                    );
                }
                say!(
                    "resolving ({}):",
                    data["pending"].as_array().map_or(0, |a| a.len())
                );
                for p in data["pending"].as_array().into_iter().flatten() {
                    say!(
                        "  {:<24} asked {} for {} (try {}, {} ms)",
                        plain(&p["service"]),
                        plain(&p["asked"]),
                        plain(&p["for"]),
                        plain(&p["tries"]),
                        plain(&p["waiting_ms"])
                    );
                }
                print_resolve_stats(&data["stats"]);
            }
            SalCmd::Stats => {
                let st = &data["stage"];
                say!(
                    "stage: requests {}  forwarded {}  demux {}  delayed {}  passed {}",
                    plain(&st["requests"]),
                    plain(&st["forwarded"]),
                    plain(&st["demux"]),
                    plain(&st["delayed"]),
                    plain(&st["passed"])
                );
                say!(
                    "rules {} of {}",
                    plain(&data["rules"]),
                    plain(&data["rule_capacity"])
                );
                let c = &data["controller"];
                say!(
                    "controller: messages {}  registrations {}  registers {}  refreshes {}  reregisters {}  unregisters {}  expired {}  refused {}",
                    plain(&c["messages"]),
                    plain(&c["registrations"]),
                    plain(&c["registers"]),
                    plain(&c["refreshes"]),
                    plain(&c["reregisters"]),
                    plain(&c["unregisters"]),
                    plain(&c["expired"]),
                    plain(&c["refused"])
                );
                let d = &data["delay"];
                say!(
                    "delay queue: {} waiting; delayed {}  released {}  timed out {}  full {}; RSTs sent {}",
                    plain(&d["queued"]),
                    plain(&d["delayed"]),
                    plain(&d["released"]),
                    plain(&d["timeouts"]),
                    plain(&d["full"]),
                    plain(&data["rst_sent"])
                );
                print_resolve_stats(&data["resolve"]);
            }
            _ => say!("ok: {}", plain(data)),
        }
    }
}

fn print_resolve_stats(r: &Value) {
    say!(
        "hierarchy: resolutions {}  requests sent {} received {}  answers {} referrals {} not found {} (received)  answered {} referred {} not found {} (sent)  timeouts {}  cached {} expired {}  pointer updates {} removes {} expired {}  adverts sent {}",
        plain(&r["resolutions"]),
        plain(&r["requests_sent"]),
        plain(&r["requests_received"]),
        plain(&r["answers_received"]),
        plain(&r["referrals_received"]),
        plain(&r["not_found_received"]),
        plain(&r["answered"]),
        plain(&r["referred"]),
        plain(&r["not_found_sent"]),
        plain(&r["timeouts"]),
        plain(&r["cached"]),
        plain(&r["cache_expired"]),
        plain(&r["pointer_updates"]),
        plain(&r["pointer_removes"]),
        plain(&r["pointers_expired"]),
        plain(&r["adverts_sent"])
    );
}
