//! `routerctl`: the admin-socket client.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use router::admin::{AdminClient, Request};
use router::apps::AppCmd;
use router::cli::plain;
use router::say;
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
    #[command(flatten)]
    App(AppCmd),
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
        Cmd::App(a) => Request::App(a.request()),
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
                    if p["vlan"].is_null() {
                        plain(&p["device"])
                    } else {
                        format!("vlan {} on {}", plain(&p["vlan"]), plain(&p["on"]))
                    }
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
        Cmd::App(a) => a.print(&data),
        _ => say!("ok: {}", plain(&data)),
    }
    Ok(())
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
