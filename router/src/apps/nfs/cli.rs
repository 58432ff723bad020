//! `routerctl nfs …`: the virtual NFS server's servers, counters, checkpoint and TCP
//! connections.

use crate::apps::AppRequest;
use crate::cli::plain;
use crate::say;
use serde_json::Value;

#[derive(clap::Subcommand, Debug)]
pub enum NfsCmd {
    /// The aggregated servers: address, export, mount state.
    Servers,
    /// Calls and replies per procedure, rewrites, handle table, recoveries, bad handles.
    Stats,
    /// Write the handle-table checkpoint now.
    Checkpoint,
    /// TCP connections: clients' (address, port, bytes, calls in flight, age) and the
    /// router's own to each server.
    Connections,
    /// Web exports: origin, cache use, hits and misses, requests, errors.
    Web,
    /// Replicated exports: each server's role, the log (depth, lag, last applied), conflicts.
    Replication,
}

impl NfsCmd {
    /// The admin request it sends.
    pub fn request(&self) -> AppRequest {
        match self {
            NfsCmd::Servers => AppRequest::NfsServers,
            NfsCmd::Stats => AppRequest::NfsStats,
            NfsCmd::Checkpoint => AppRequest::NfsCheckpoint,
            NfsCmd::Connections => AppRequest::NfsConnections,
            NfsCmd::Web => AppRequest::NfsWeb,
            NfsCmd::Replication => AppRequest::NfsReplication,
        }
    }

    /// Print the answer for an operator.
    pub fn print(&self, data: &Value) {
        match self {
            NfsCmd::Servers => {
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
            NfsCmd::Stats => print_nfs_stats(data),
            NfsCmd::Connections => {
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
            NfsCmd::Web => {
                for w in data.as_array().into_iter().flatten() {
                    let mib = |v: &Value| v.as_f64().unwrap_or(0.0) / (1 << 20) as f64;
                    say!(
                        "/{} <- {}  (lifetime {} ms, timeout {} ms, {} connections)",
                        plain(&w["name"]),
                        plain(&w["url"]),
                        plain(&w["lifetime_ms"]),
                        plain(&w["timeout_ms"]),
                        plain(&w["connections"])
                    );
                    say!(
                        "  cache {:.1} of {:.0} MiB ({} blocks, {} evicted); {} resources known, {} calls held, {} requests running",
                        mib(&w["cache"]["bytes"]),
                        mib(&w["cache"]["max"]),
                        plain(&w["cache"]["blocks"]),
                        plain(&w["cache"]["evicted"]),
                        plain(&w["resources"]),
                        plain(&w["held"]),
                        plain(&w["requests_running"])
                    );
                    say!(
                        "  calls {}; reads: hits {}, misses {}; requests {} ({:.1} MiB, {:.1} ms avg), not modified {}, changed {}, gone {}",
                        plain(&w["calls"]),
                        plain(&w["hits"]),
                        plain(&w["misses"]),
                        plain(&w["fetches"]),
                        mib(&w["fetched_bytes"]),
                        w["fetch_ms_avg"].as_f64().unwrap_or(0.0),
                        plain(&w["not_modified"]),
                        plain(&w["changed"]),
                        plain(&w["gone"])
                    );
                    let e = &w["errors"];
                    let a = &w["answered"];
                    say!(
                        "  errors: timeout {}, connect {}, status {}, other {}; answered IO {}, STALE {}, ROFS {}; held full {}, queue full {}; walk {} pages, {} found",
                        plain(&e["timeout"]),
                        plain(&e["connect"]),
                        plain(&e["status"]),
                        plain(&e["other"]),
                        plain(&a["io"]),
                        plain(&a["stale"]),
                        plain(&a["rofs"]),
                        plain(&w["hold_full"]),
                        plain(&w["queue_full"]),
                        plain(&w["walk"]["pages"]),
                        plain(&w["walk"]["found"])
                    );
                    if !w["last_error"].is_null() {
                        say!("  last error: {}", plain(&w["last_error"]));
                    }
                }
            }
            NfsCmd::Replication => {
                for r in data.as_array().into_iter().flatten() {
                    let (p, b, l) = (&r["primary"], &r["backup"], &r["log"]);
                    let up = |v: &Value| if v == true { "mounted" } else { "not mounted" };
                    say!(
                        "/{}: primary {} (sid {}, {}, {}), backup {} (sid {}, {}, {}{}); failovers {} (last took {} ms), probes unanswered {}",
                        plain(&r["export"]),
                        plain(&p["name"]),
                        plain(&p["sid"]),
                        plain(&p["role"]),
                        up(&p["mounted"]),
                        plain(&b["name"]),
                        plain(&b["sid"]),
                        plain(&b["role"]),
                        up(&b["mounted"]),
                        if b["ready"] == true { "" } else { ", not ready" },
                        plain(&r["failovers"]),
                        plain(&r["failover_ms"]),
                        plain(&r["probe_misses"])
                    );
                    say!(
                        "  log: {} entries ({} bytes) waiting, logged {} applied up to {}, lag {} ms (max depth {}, max lag {} ms); at the backup: {}",
                        plain(&l["depth"]),
                        plain(&l["bytes"]),
                        plain(&l["logged"]),
                        plain(&l["acked"]),
                        plain(&l["lag_ms"]),
                        plain(&l["depth_max"]),
                        plain(&l["lag_ms_max"]),
                        if r["inflight"].is_null() {
                            "nothing".to_string()
                        } else {
                            format!(
                                "{} (sent {}x)",
                                plain(&r["inflight"]["work"]),
                                plain(&r["inflight"]["tries"])
                            )
                        }
                    );
                    say!(
                        "  applied {}, conflicts {}, unresolved {}, backup handles found by name {}, resent {}, overflow {}; {} names, {} backup handles known",
                        plain(&r["applied"]),
                        plain(&r["conflicts"]),
                        plain(&r["unresolved"]),
                        plain(&r["resolved"]),
                        plain(&r["resends"]),
                        plain(&r["overflow"]),
                        plain(&r["names"]),
                        plain(&b["handles"])
                    );
                    let j = &r["journal"];
                    if !j.is_null() {
                        say!(
                            "  journal {}: {} bytes ({} records loaded at start, {} written, {} compactions, {} failed)",
                            plain(&j["path"]),
                            plain(&j["bytes"]),
                            plain(&j["loaded"]),
                            plain(&j["records"]),
                            plain(&j["compactions"]),
                            plain(&j["failed"])
                        );
                    }
                    if !r["last_error"].is_null() {
                        say!("  last error: {}", plain(&r["last_error"]));
                    }
                }
            }
            NfsCmd::Checkpoint => say!(
                "wrote {} handles ({} bytes) to {} in {:.1} ms",
                plain(&data["entries"]),
                plain(&data["bytes"]),
                plain(&data["path"]),
                data["ms"].as_f64().unwrap_or(0.0)
            ),
        }
    }
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
    say!(
        "refused at the border: garbage args {}, bad names {}, long names {}, unknown program {}, version {}, procedure {}",
        plain(&c["garbage_args"]),
        plain(&c["bad_names"]),
        plain(&c["long_names"]),
        plain(&c["prog_unavail"]),
        plain(&c["prog_mismatch"]),
        plain(&c["proc_unavail"])
    );
    let p = &d["policy"];
    say!(
        "policy: AUTH_NONE {}, require mount {}, anonymous {}:{}; {} mounts; refused: flavor {}, network {}, unmounted {}, mounts {}; squashed {}",
        if p["auth_none"].as_bool() == Some(true) { "accepted" } else { "refused" },
        plain(&p["require_mount"]),
        plain(&p["anonymous_uid"]),
        plain(&p["anonymous_gid"]),
        p["mounts"].as_array().map_or(0, Vec::len),
        plain(&p["refused"]["flavor"]),
        plain(&p["refused"]["network"]),
        plain(&p["refused"]["unmounted"]),
        plain(&p["refused"]["mount"]),
        plain(&p["squashed"])
    );
    say!(
        "fairness: {} calls in flight per client (0: no limit), {} calls/s per client; dropped: over the share {}, over the rate {}",
        plain(&p["client_max_inflight"]),
        plain(&p["client_rate"]),
        plain(&p["dropped"]["client_limit"]),
        plain(&p["dropped"]["rate_limited"])
    );
    for e in p["exports"].as_array().into_iter().flatten() {
        let nets: Vec<&str> = e["clients"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        say!(
            "  /{:<14} clients {:<32} squash {}",
            plain(&e["name"]),
            if nets.is_empty() {
                "any".to_string()
            } else {
                nets.join(",")
            },
            plain(&e["squash"])
        );
    }
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
