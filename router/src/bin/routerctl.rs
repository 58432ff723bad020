//! `routerctl`: the admin-socket client.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use router::admin::{AdminClient, Request};
use router::apps::AppRequest;
use serde_json::Value;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(version, about = "Manage a running router through its admin socket")]
struct Cli {
    /// The router's admin socket.
    #[arg(
        short,
        long,
        env = "ROUTERCTL_SOCKET",
        default_value = "/run/router/admin.sock",
        global = true
    )]
    socket: PathBuf,
    /// Print the raw JSON response.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Version, uptime, placement, table sizes.
    Status,
    /// Ports with their devices, MACs and addresses.
    Ports,
    /// Per-port, per-core and per-stage counters.
    Stats {
        /// Print rates every interval until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds between samples with --watch.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop --watch after this many samples.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Routes.
    Route {
        #[command(subcommand)]
        cmd: RouteCmd,
    },
    /// Neighbours (ARP).
    Neigh {
        #[command(subcommand)]
        cmd: NeighCmd,
    },
    /// Change the log filter (e.g. `debug`, `info,router=trace`).
    LogLevel { level: String },
    /// Read the config file again and apply the routes, log filter and ICMP rate (as SIGHUP
    /// does); a change that needs a restart is refused with its key, nothing changed.
    Reload,
    /// NFS virtualization.
    Nfs {
        #[command(subcommand)]
        cmd: NfsCmd,
    },
    /// Serval service routing.
    Sal {
        #[command(subcommand)]
        cmd: SalCmd,
    },
    /// NetChain switch nodes.
    Chain {
        #[command(subcommand)]
        cmd: ChainCmd,
    },
}

#[derive(Subcommand, Debug)]
enum ChainCmd {
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

#[derive(Subcommand, Debug)]
enum SalCmd {
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

#[derive(Subcommand, Debug)]
enum SalRuleCmd {
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

#[derive(Subcommand, Debug)]
enum NfsCmd {
    /// The aggregated servers: address, export, mount state.
    Servers,
    /// Calls and replies per procedure, rewrites, handle table, recoveries, bad handles.
    Stats,
    /// Write the handle-table checkpoint now.
    Checkpoint,
    /// TCP connections: clients' (address, port, bytes, calls in flight, age) and the
    /// router's own to each server.
    Connections,
}

#[derive(Subcommand, Debug)]
enum RouteCmd {
    /// Add or replace a route: `route add 10.9.0.0/16 via 10.0.2.2 [port NAME]`,
    /// `route add 10.9.0.0/16 port NAME`, `route add 10.9.0.0/16 blackhole`.
    Add {
        prefix: String,
        /// `via GW`, `port NAME`, `blackhole`, in any combination the router accepts.
        #[arg(num_args = 1..=4)]
        spec: Vec<String>,
    },
    /// Delete a static route.
    Del { prefix: String },
    /// List routes.
    List {
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Subcommand, Debug)]
enum NeighCmd {
    /// List neighbours.
    List,
}

/// Print a line; a closed stdout (`routerctl stats | head`) ends the program quietly, as a
/// Unix filter should, instead of println!'s panic.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("routerctl: {e:#}");
        std::process::exit(1);
    }
}

fn call(c: &mut AdminClient, req: &Request) -> Result<Value> {
    let r = c.call(req).context("talking to the router")?;
    if !r.ok {
        bail!("{}", r.error.unwrap_or_else(|| "error".into()));
    }
    Ok(r.data)
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let mut c = AdminClient::connect(&cli.socket).with_context(|| {
        format!(
            "connecting to {} (is the router running? see --socket)",
            cli.socket.display()
        )
    })?;
    let req = match &cli.cmd {
        Cmd::Status => Request::Status,
        Cmd::Ports => Request::Ports,
        Cmd::Stats {
            watch: true,
            interval,
            count,
        } => return watch(&mut c, *interval, *count, cli.json),
        Cmd::Stats { .. } => Request::Stats,
        Cmd::Route {
            cmd: RouteCmd::Add { prefix, spec },
        } => parse_route_add(prefix, spec)?,
        Cmd::Route {
            cmd: RouteCmd::Del { prefix },
        } => Request::RouteDel {
            prefix: prefix.clone(),
        },
        Cmd::Route {
            cmd: RouteCmd::List { limit },
        } => Request::RouteList {
            limit: Some(*limit),
        },
        Cmd::Neigh {
            cmd: NeighCmd::List,
        } => Request::NeighList,
        Cmd::LogLevel { level } => Request::LogLevel {
            level: level.clone(),
        },
        Cmd::Reload => Request::Reload,
        Cmd::Nfs {
            cmd: NfsCmd::Servers,
        } => Request::App(AppRequest::NfsServers),
        Cmd::Nfs { cmd: NfsCmd::Stats } => Request::App(AppRequest::NfsStats),
        Cmd::Nfs {
            cmd: NfsCmd::Checkpoint,
        } => Request::App(AppRequest::NfsCheckpoint),
        Cmd::Nfs {
            cmd: NfsCmd::Connections,
        } => Request::App(AppRequest::NfsConnections),
        Cmd::Sal { cmd } => match cmd {
            SalCmd::Rule {
                cmd:
                    SalRuleCmd::Add {
                        prefix,
                        action,
                        targets,
                        priority,
                        mode,
                    },
            } => Request::App(AppRequest::SalRuleAdd {
                prefix: prefix.clone(),
                action: action.clone(),
                targets: targets.clone(),
                priority: *priority,
                mode: mode.clone(),
            }),
            SalCmd::Rule {
                cmd:
                    SalRuleCmd::Del {
                        prefix,
                        target,
                        priority,
                    },
            } => Request::App(AppRequest::SalRuleDel {
                prefix: prefix.clone(),
                priority: *priority,
                target: *target,
            }),
            SalCmd::Rule {
                cmd: SalRuleCmd::List { limit },
            } => Request::App(AppRequest::SalRuleList {
                limit: Some(*limit),
            }),
            SalCmd::Stats => Request::App(AppRequest::SalStats),
            SalCmd::Registrations => Request::App(AppRequest::SalRegistrations),
            SalCmd::Delayed => Request::App(AppRequest::SalDelayed),
            SalCmd::Hierarchy => Request::App(AppRequest::SalHierarchy),
        },
        Cmd::Chain { cmd } => match cmd {
            ChainCmd::Nodes => Request::App(AppRequest::ChainNodes),
            ChainCmd::Groups { limit } => Request::App(AppRequest::ChainGroups {
                limit: Some(*limit),
            }),
            ChainCmd::Stats => Request::App(AppRequest::ChainStats),
        },
    };
    let data = call(&mut c, &req)?;
    if cli.json {
        say!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    match &cli.cmd {
        Cmd::Status => {
            for (k, v) in data.as_object().into_iter().flatten() {
                say!("{k:<12} {}", plain(v));
            }
        }
        Cmd::Ports => {
            say!(
                "{:<4} {:<10} {:<18} {:<6} {:<20} {:<5} device",
                "id",
                "name",
                "mac",
                "mtu",
                "addresses",
                "rxq"
            );
            for p in data.as_array().into_iter().flatten() {
                say!(
                    "{:<4} {:<10} {:<18} {:<6} {:<20} {:<5} {}",
                    plain(&p["port"]),
                    plain(&p["name"]),
                    plain(&p["mac"]),
                    plain(&p["mtu"]),
                    p["addresses"]
                        .as_array()
                        .map(|a| a.iter().map(plain).collect::<Vec<_>>().join(","))
                        .unwrap_or_default(),
                    plain(&p["rx_queues"]),
                    plain(&p["device"])
                );
            }
        }
        Cmd::Stats { .. } => print_stats(&data, None, 0.0),
        Cmd::Route {
            cmd: RouteCmd::List { .. },
        } => {
            say!(
                "{:<20} {:<10} {:<10} {:<16} {:<10} resolved",
                "prefix",
                "origin",
                "kind",
                "via",
                "port"
            );
            for r in data["routes"].as_array().into_iter().flatten() {
                say!(
                    "{:<20} {:<10} {:<10} {:<16} {:<10} {}",
                    plain(&r["prefix"]),
                    plain(&r["origin"]),
                    plain(&r["kind"]),
                    plain(&r["via"]),
                    plain(&r["port"]),
                    plain(&r["resolved"])
                );
            }
            let shown = data["routes"].as_array().map_or(0, |a| a.len());
            say!("({shown} of {} routes)", plain(&data["total"]));
        }
        Cmd::Neigh { .. } => {
            say!(
                "{:<16} {:<10} {:<18} {:<11} {:>8} {:>5}",
                "address",
                "port",
                "mac",
                "state",
                "age(s)",
                "held"
            );
            for n in data.as_array().into_iter().flatten() {
                say!(
                    "{:<16} {:<10} {:<18} {:<11} {:>8.1} {:>5}",
                    plain(&n["address"]),
                    plain(&n["port"]),
                    plain(&n["mac"]),
                    plain(&n["state"]),
                    n["age_secs"].as_f64().unwrap_or(0.0),
                    plain(&n["held"])
                );
            }
        }
        Cmd::Nfs {
            cmd: NfsCmd::Servers,
        } => {
            say!(
                "{:<5} {:<12} {:<21} {:<24} {:<8} {:<9} {:<14} {:>8} {:>10} last error",
                "sid",
                "name",
                "address",
                "export",
                "mounted",
                "transport",
                "walk",
                "rtmax",
                "files"
            );
            for s in data.as_array().into_iter().flatten() {
                say!(
                    "{:<5} {:<12} {:<21} {:<24} {:<8} {:<9} {:<14} {:>8} {:>10} {}",
                    plain(&s["sid"]),
                    plain(&s["name"]),
                    format!("{}:{}", plain(&s["address"]), plain(&s["nfs_port"])),
                    plain(&s["export"]),
                    plain(&s["mounted"]),
                    plain(&s["transport"]),
                    plain(&s["walk"]),
                    plain(&s["fsinfo"]["rtmax"]),
                    plain(&s["fsstat"]["tfiles"]),
                    plain(&s["last_error"])
                );
            }
        }
        Cmd::Nfs { cmd: NfsCmd::Stats } => print_nfs_stats(&data),
        Cmd::Nfs {
            cmd: NfsCmd::Connections,
        } => {
            say!(
                "{:<7} {:<21} {:<6} {:<11} {:>12} {:>12} {:>8} {:>10} {:>9}",
                "kind",
                "peer",
                "port",
                "state",
                "bytes in",
                "bytes out",
                "inflight",
                "queued",
                "age s"
            );
            for c in data.as_array().into_iter().flatten() {
                let port = if c["kind"] == "server" {
                    format!("sid {}", plain(&c["sid"]))
                } else {
                    plain(&c["local_port"])
                };
                say!(
                    "{:<7} {:<21} {:<6} {:<11} {:>12} {:>12} {:>8} {:>10} {:>9.1}",
                    plain(&c["kind"]),
                    plain(&c["peer"]),
                    port,
                    plain(&c["state"]),
                    plain(&c["bytes_in"]),
                    plain(&c["bytes_out"]),
                    plain(&c["inflight"]),
                    plain(&c["queued"]),
                    c["age_secs"].as_f64().unwrap_or(0.0)
                );
            }
        }
        Cmd::Nfs {
            cmd: NfsCmd::Checkpoint,
        } => say!(
            "wrote {} handles ({} bytes) to {} in {:.1} ms",
            plain(&data["entries"]),
            plain(&data["bytes"]),
            plain(&data["path"]),
            data["ms"].as_f64().unwrap_or(0.0)
        ),
        Cmd::Sal {
            cmd: SalCmd::Rule {
                cmd: SalRuleCmd::List { .. },
            },
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
        Cmd::Sal {
            cmd: SalCmd::Registrations,
        } => {
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
        Cmd::Sal {
            cmd: SalCmd::Delayed,
        } => {
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
        Cmd::Sal {
            cmd: SalCmd::Hierarchy,
        } => {
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
        Cmd::Chain {
            cmd: ChainCmd::Nodes,
        } => {
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
        Cmd::Chain {
            cmd: ChainCmd::Groups { .. },
        } => {
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
        Cmd::Chain {
            cmd: ChainCmd::Stats,
        } => {
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
        Cmd::Sal { cmd: SalCmd::Stats } => {
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
        _ => say!("ok: {}", plain(&data)),
    }
    Ok(())
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

fn print_nfs_stats(d: &Value) {
    say!(
        "calls {}  replies {}  rewritten: calls {} replies {}",
        plain(&d["calls"]),
        plain(&d["replies"]),
        plain(&d["calls_rewritten"]),
        plain(&d["replies_rewritten"])
    );
    say!("{:<12} {:>12} {:>12}", "procedure", "calls", "replies");
    for (p, n) in d["calls_by_proc"].as_object().into_iter().flatten() {
        say!(
            "{:<12} {:>12} {:>12}",
            p,
            plain(n),
            plain(&d["replies_by_proc"][p.as_str()])
        );
    }
    say!(
        "handles {} of {} (inserts {}, evictions {}); servers mounted {} of {}",
        plain(&d["handles"]),
        plain(&d["handle_capacity"]),
        plain(&d["handle_inserts"]),
        plain(&d["handle_evictions"]),
        plain(&d["servers_mounted"]),
        plain(&d["servers"])
    );
    let c = &d["control"];
    say!(
        "answered here: virtual root {}, mount {}, portmap {}; refused: bad handles {}, stale {}, xdev {}",
        plain(&c["virtual_root"]),
        plain(&c["mount"]),
        plain(&c["portmap"]),
        plain(&c["bad_handles"]),
        plain(&c["stale_handles"]),
        plain(&c["xdev"])
    );
    let r = &d["recovery"];
    say!(
        "recovery: {} calls waited, {} handles recovered ({} failed), wait max {} ms, {} walks over {} dirs",
        plain(&r["calls"]),
        plain(&r["recovered"]),
        plain(&r["failed"]),
        plain(&r["wait_ms_max"]),
        plain(&r["walks"]),
        plain(&r["walk_dirs"])
    );
    let t = &d["tcp"];
    if !t.is_null() {
        say!(
            "tcp: {} connections ({} accepted, refused {}+{} by limits, {} idle-closed, {} bad records); calls {} (answered {}, forwarded {}), replies {}; servers: {} connects, {} failures, {} resent",
            plain(&t["connections"]),
            plain(&t["accepted"]),
            plain(&t["refused_total_limit"]),
            plain(&t["refused_per_client_limit"]),
            plain(&t["idle_closed"]),
            plain(&t["bad_records"]),
            plain(&t["calls"]),
            plain(&t["answered"]),
            plain(&t["forwarded"]),
            plain(&t["replies"]),
            plain(&t["server_connects"]),
            plain(&t["server_failures"]),
            plain(&t["resent"])
        );
    }
    let k = &d["checkpoint"];
    say!(
        "checkpoint {}: loaded {}, written {} (last {} handles), failed {}",
        plain(&k["path"]),
        plain(&k["loaded"]),
        plain(&k["written"]),
        plain(&k["last_entries"]),
        plain(&k["failed"])
    );
}

fn parse_route_add(prefix: &str, spec: &[String]) -> Result<Request> {
    let (mut via, mut port, mut blackhole) = (None, None, false);
    let mut it = spec.iter();
    while let Some(w) = it.next() {
        match w.as_str() {
            "via" => {
                via = Some(
                    it.next()
                        .context("via needs an address")?
                        .parse()
                        .context("via: not an IPv4 address")?,
                )
            }
            "port" | "dev" => port = Some(it.next().context("port needs a name")?.clone()),
            "blackhole" => blackhole = true,
            other => bail!("unexpected {other:?}: use `via GW`, `port NAME` or `blackhole`"),
        }
    }
    Ok(Request::RouteAdd {
        prefix: prefix.to_string(),
        via,
        port,
        blackhole,
    })
}

fn plain(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Print counters; with `prev` and `dt`, print rates over the interval.
fn print_stats(now: &Value, prev: Option<&Value>, dt: f64) {
    let at = |v: &Value, ptr: &str| v.pointer(ptr).and_then(Value::as_u64).unwrap_or(0);
    let rate = |ptr: &str| -> String {
        match prev {
            Some(p) if dt > 0.0 => format!(
                "{:.0}/s",
                at(now, ptr).saturating_sub(at(p, ptr)) as f64 / dt
            ),
            _ => at(now, ptr).to_string(),
        }
    };
    say!(
        "uptime {:.1}s  routes {}  next-hops {}  tbl8 {}/{}  mempool free {}",
        now["uptime_secs"].as_f64().unwrap_or(0.0),
        plain(&now["fib"]["routes"]),
        plain(&now["fib"]["next_hops"]),
        plain(&now["fib"]["tbl8_used"]),
        plain(&now["fib"]["tbl8_groups"]),
        plain(&now["mempool_free"])
    );
    say!(
        "{:<10} {:>14} {:>14} {:>16} {:>16} {:>12} {:>10}",
        "port",
        "rx",
        "tx",
        "rx-bytes",
        "tx-bytes",
        "tx-full",
        "imissed"
    );
    for (i, p) in now["ports"].as_array().into_iter().flatten().enumerate() {
        let r = |k: &str| rate(&format!("/ports/{i}/{k}"));
        say!(
            "{:<10} {:>14} {:>14} {:>16} {:>16} {:>12} {:>10}",
            plain(&p["name"]),
            r("rx"),
            r("tx"),
            r("rx_bytes"),
            r("tx_bytes"),
            r("tx_full"),
            plain(&p["driver"]["imissed"])
        );
    }
    // As VPP's `show runtime`: busy, the time the core spent on packets (poll iterations that
    // found some, RX to TX: their sampled time times their number) over the time elapsed;
    // stages, the same for the stages alone (ns per packet over the sampled bursts, times the
    // packets); vector, packets per non-empty poll.
    let elapsed_ns = match prev {
        Some(_) if dt > 0.0 => dt * 1e9,
        _ => now["uptime_secs"].as_f64().unwrap_or(0.0) * 1e9,
    };
    let per = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    say!(
        "{:<10} {:>5} {:>14} {:>7} {:>7} {:>7} {:>8} {:>10} {:>12}",
        "core",
        "cpu",
        "packets",
        "busy",
        "stages",
        "vector",
        "ns/pkt",
        "ring-full",
        "handoff"
    );
    for (i, c) in now["cores"].as_array().into_iter().flatten().enumerate() {
        let d = |ptr: &str| {
            at(now, &format!("/cores/{i}{ptr}"))
                .saturating_sub(prev.map_or(0, |p| at(p, &format!("/cores/{i}{ptr}"))))
        };
        let (nonempty, pkts) = (d("/busy_polls"), d("/vector_packets"));
        let nspp = per(d("/timed_ns"), d("/timed_packets"));
        let share = |ns: f64| format!("{:.1}%", (100.0 * ns / elapsed_ns.max(1.0)).min(100.0));
        let busy = share(per(d("/loop_ns"), d("/timed_loops")) * nonempty as f64);
        // The I/O core of split placement runs no stage.
        let (stages, vector) = if c["role"] == "io" {
            ("-".to_string(), "-".to_string())
        } else {
            (
                share(nspp * pkts as f64),
                format!("{:.1}", per(pkts, nonempty)),
            )
        };
        say!(
            "{:<10} {:>5} {:>14} {:>7} {:>7} {:>7} {:>8.1} {:>10} {:>12}",
            format!("{}{}", plain(&c["role"]), plain(&c["core"])),
            plain(&c["cpu"]),
            rate(&format!("/cores/{i}/vector_packets")),
            busy,
            stages,
            vector,
            nspp,
            u(&c["ring_full"]) + u(&c["punt_ring_full"]),
            rate(&format!("/cores/{i}/handed_off"))
        );
    }
    // Each stage, summed over the workers: packets and ns per packet (sampled bursts).
    say!("{:<10} {:>14} {:>8}", "stage", "packets", "ns/pkt");
    if let Some(first) = now["cores"].as_array().and_then(|a| a.first()) {
        for (si, st) in first["stages"].as_array().into_iter().flatten().enumerate() {
            let sum = |v: Option<&Value>, k: &str| -> u64 {
                let Some(v) = v else { return 0 };
                let n = v["cores"].as_array().map_or(0, |a| a.len());
                (0..n)
                    .map(|ci| at(v, &format!("/cores/{ci}/stages/{si}/{k}")))
                    .sum()
            };
            let d = |k: &str| sum(Some(now), k).saturating_sub(sum(prev, k));
            let pk = match prev {
                Some(_) if dt > 0.0 => format!("{:.0}/s", d("packets") as f64 / dt),
                _ => d("packets").to_string(),
            };
            say!(
                "{:<10} {:>14} {:>8.1}",
                plain(&st["name"]),
                pk,
                per(d("busy_ns"), d("timed_packets"))
            );
        }
    }
    // Drops and punts summed over cores, by stage and reason.
    let mut lines = Vec::new();
    if let Some(first) = now["cores"].as_array().and_then(|a| a.first()) {
        for (si, st) in first["stages"].as_array().into_iter().flatten().enumerate() {
            for kind in ["drops", "punts"] {
                for (ri, pair) in st[kind].as_array().into_iter().flatten().enumerate() {
                    let sum = |v: &Value| -> u64 {
                        let n = v["cores"].as_array().map_or(0, |a| a.len());
                        (0..n)
                            .map(|ci| at(v, &format!("/cores/{ci}/stages/{si}/{kind}/{ri}/1")))
                            .sum()
                    };
                    let total = sum(now);
                    if total == 0 {
                        continue;
                    }
                    let shown = match prev {
                        Some(p) if dt > 0.0 => {
                            format!("{:.0}/s", total.saturating_sub(sum(p)) as f64 / dt)
                        }
                        _ => total.to_string(),
                    };
                    lines.push(format!(
                        "  {}.{}.{} {}",
                        plain(&st["name"]),
                        kind,
                        plain(&pair[0]),
                        shown
                    ));
                }
            }
        }
    }
    if !lines.is_empty() {
        say!("drops and punts:");
        for l in lines {
            say!("{l}");
        }
    }
    let interesting: Vec<String> = now["mgmt"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_u64().is_some_and(|x| x > 0))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !interesting.is_empty() {
        say!("mgmt: {}", interesting.join(" "));
    }
}

fn watch(c: &mut AdminClient, interval: f64, count: Option<u64>, json: bool) -> Result<()> {
    let interval = Duration::from_secs_f64(interval.max(0.1));
    let mut prev = call(c, &Request::Stats)?;
    let mut t_prev = Instant::now();
    let mut n = 0;
    let tty = std::io::stdout().is_terminal();
    loop {
        std::thread::sleep(interval);
        let now = call(c, &Request::Stats)?;
        let dt = t_prev.elapsed().as_secs_f64();
        t_prev = Instant::now();
        if json {
            say!("{}", serde_json::to_string(&now)?);
        } else {
            if tty {
                let _ = std::io::Write::write_all(&mut std::io::stdout(), b"\x1b[2J\x1b[H");
            }
            say!("--- rates over {dt:.2}s ---");
            print_stats(&now, Some(&prev), dt);
        }
        prev = now;
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(());
        }
    }
}
