//! The metrics endpoint: OpenMetrics text (`GET /metrics`) over HTTP/1.1 on a TCP address of
//! the operator's choosing (`[metrics] listen`, off by default).
//!
//! A scrape asks the management core for the same stats `routerctl stats` shows (one
//! [`Request::Stats`] through the admin channel) and renders them here, on the endpoint's own
//! thread: the workers are never touched, their counters are read as the admin socket reads
//! them. The router's own sections (ports, cores, stages, the management core, the FIB) get
//! typed families with labels; each application's section is flattened into families named by
//! their path (`router_app_nfs_recovery_walks`), typed `unknown` since an application's stats
//! mix counters and gauges.

use crate::admin::{Pending, Request};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

/// The content type of an OpenMetrics 1.0 text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Largest request head read from a scraper.
const MAX_HEAD: usize = 8 * 1024;
/// How long a scraper may take to send its request, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The listening endpoint; stops its thread on drop.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    _acceptor: crate::admin::Acceptor,
}

impl MetricsServer {
    /// Bind `listen` and serve scrapes, asking the management core through `tx`.
    pub fn start(listen: SocketAddr, tx: mpsc::Sender<Pending>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        // One scrape at a time: scrapers come every few seconds, and each is bounded by
        // IO_TIMEOUT.
        let acceptor = crate::admin::Acceptor::spawn(
            "metrics",
            move || listener.accept().map(|(s, _)| s),
            move |s, _| serve(s, &tx),
        )?;
        tracing::info!("metrics on http://{addr}/metrics");
        Ok(MetricsServer {
            addr,
            _acceptor: acceptor,
        })
    }

    /// The bound address (the configured one, with its port chosen when it was 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Read a request head (up to the blank line), at most [`MAX_HEAD`] bytes.
fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_HEAD {
            return None;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8(head).ok()
}

fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body.as_bytes());
}

fn serve(mut s: TcpStream, tx: &mpsc::Sender<Pending>) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let Some(head) = read_head(&mut s) else {
        respond(&mut s, "400 Bad Request", "text/plain", "bad request\n");
        return;
    };
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        respond(&mut s, "405 Method Not Allowed", "text/plain", "GET only\n");
        return;
    }
    if path != "/metrics" {
        respond(&mut s, "404 Not Found", "text/plain", "try /metrics\n");
        return;
    }
    let (rtx, rrx) = mpsc::sync_channel(1);
    let stats = tx
        .send(Pending {
            req: Request::Stats,
            reply: rtx,
        })
        .ok()
        .and_then(|()| rrx.recv_timeout(Duration::from_secs(10)).ok());
    match stats {
        Some(r) if r.ok => respond(&mut s, "200 OK", CONTENT_TYPE, &render(&r.data)),
        _ => respond(
            &mut s,
            "503 Service Unavailable",
            "text/plain",
            "the management core did not answer\n",
        ),
    }
}

/// An OpenMetrics exposition being written: families in order, each written once.
struct Exposition {
    out: String,
    families: HashSet<String>,
}

/// A metric family's type.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Unknown,
}

impl Exposition {
    fn new() -> Self {
        Exposition {
            out: String::new(),
            families: HashSet::new(),
        }
    }

    /// Write a family and its samples (`labels`, value); nothing when it has no sample or
    /// its name was taken.
    fn family(&mut self, name: &str, kind: Kind, help: &str, samples: &[(String, f64)]) {
        if samples.is_empty() || !self.families.insert(name.to_string()) {
            return;
        }
        let (ty, suffix) = match kind {
            Kind::Counter => ("counter", "_total"),
            Kind::Gauge => ("gauge", ""),
            Kind::Unknown => ("unknown", ""),
        };
        let _ = writeln!(self.out, "# TYPE {name} {ty}");
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        for (labels, v) in samples {
            let braces = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            let _ = writeln!(self.out, "{name}{suffix}{braces} {}", number(*v));
        }
    }

    fn finish(mut self) -> String {
        self.out.push_str("# EOF\n");
        self.out
    }
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `name="value"` pairs, values escaped as OpenMetrics asks.
fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A metric-name piece from a stats key: lower case, `[a-z0-9_]`.
fn name_piece(key: &str) -> String {
    let s: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{s}")
    } else {
        s
    }
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// The one unlabelled sample of a numeric value (none for anything else).
fn single(v: &Value) -> Vec<(String, f64)> {
    num(v).map(|n| (String::new(), n)).into_iter().collect()
}

/// One numeric field of each element of `items`, with each element's labels.
fn column(items: &[(String, &Value)], field: &str) -> Vec<(String, f64)> {
    items
        .iter()
        .filter_map(|(l, v)| Some((l.clone(), num(v.get(field)?)?)))
        .collect()
}

/// The counters of a `[(name, value)]` list (stage drops and punts), labelled by `key`.
fn named_pairs(items: &[(String, &Value)], field: &str, key: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for (l, v) in items {
        for pair in v.get(field).and_then(Value::as_array).into_iter().flatten() {
            let (Some(n), Some(c)) = (pair.get(0).and_then(Value::as_str), pair.get(1)) else {
                continue;
            };
            if let Some(c) = num(c) {
                out.push((format!("{l},{}", labels(&[(key, n)])), c));
            }
        }
    }
    out
}

/// The stats `routerctl stats` shows, as an OpenMetrics exposition.
pub fn render(stats: &Value) -> String {
    let mut x = Exposition::new();
    x.family(
        "router_uptime_seconds",
        Kind::Gauge,
        "Seconds since the router started.",
        &single(&stats["uptime_secs"]),
    );

    let ports: Vec<(String, &Value)> = stats
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let name = p.get("name").and_then(Value::as_str).unwrap_or("");
            let dev = p.get("device").and_then(Value::as_str).unwrap_or("");
            (labels(&[("port", name), ("device", dev)]), p)
        })
        .collect();
    for (field, name, help) in [
        (
            "rx",
            "router_port_rx_packets",
            "Packets received, counted by the cores.",
        ),
        (
            "tx",
            "router_port_tx_packets",
            "Packets sent, counted by the cores.",
        ),
        ("rx_bytes", "router_port_rx_bytes", "Bytes received."),
        ("tx_bytes", "router_port_tx_bytes", "Bytes sent."),
        (
            "tx_full",
            "router_port_tx_full",
            "Packets the driver would not take (TX queue full).",
        ),
    ] {
        x.family(name, Kind::Counter, help, &column(&ports, field));
    }
    let drivers: Vec<(String, &Value)> = ports
        .iter()
        .filter_map(|(l, p)| Some((l.clone(), p.get("driver").filter(|d| d.is_object())?)))
        .collect();
    if let Some((_, d)) = drivers.first() {
        let fields: Vec<String> = d
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect();
        for f in fields {
            x.family(
                &format!("router_port_driver_{}", name_piece(&f)),
                Kind::Counter,
                &format!("The device's own counter {f} (rte_eth_stats)."),
                &column(&drivers, &f),
            );
        }
    }

    let cores: Vec<(String, &Value)> = stats
        .get("cores")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let id = c.get("core").map(|v| v.to_string()).unwrap_or_default();
            let role = c.get("role").and_then(Value::as_str).unwrap_or("");
            (labels(&[("core", &id), ("role", role)]), c)
        })
        .collect();
    for (field, help) in [
        ("polls", "Polls of the core's RX queues and rings."),
        ("busy_polls", "Polls that found packets."),
        ("idle_sleeps", "Idle back-off sleeps."),
        ("ring_full", "Packets dropped because a ring was full."),
        (
            "punt_ring_full",
            "Punts dropped because the ring to the management core was full.",
        ),
        (
            "injected",
            "Packets the management core injected through this core.",
        ),
        (
            "handed_off",
            "Packets handed to the run-to-completion worker keeping their state.",
        ),
        (
            "vector_packets",
            "Packets through the pipeline (over busy_polls: the vector size).",
        ),
        (
            "timed_packets",
            "Packets of the sampled bursts (one in 16).",
        ),
        (
            "timed_loops",
            "Sampled poll iterations that found work (one poll in 16 is timed).",
        ),
    ] {
        x.family(
            &format!("router_core_{field}"),
            Kind::Counter,
            help,
            &column(&cores, field),
        );
    }
    x.family(
        "router_core_sampled_busy_nanoseconds",
        Kind::Counter,
        "The whole pipeline's time over the sampled bursts (per timed_packets: ns/packet).",
        &column(&cores, "timed_ns"),
    );
    x.family(
        "router_core_sampled_loop_nanoseconds",
        Kind::Counter,
        "Time of the sampled poll iterations that found work, RX to TX (per timed_loops, times busy_polls: the core's busy time).",
        &column(&cores, "loop_ns"),
    );
    let stages: Vec<(String, &Value)> = cores
        .iter()
        .flat_map(|(l, c)| {
            c.get("stages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(move |s| {
                    let name = s.get("name").and_then(Value::as_str).unwrap_or("");
                    (format!("{l},{}", labels(&[("stage", name)])), s)
                })
        })
        .collect();
    for (field, name, help) in [
        ("packets", "router_stage_packets", "Packets the stage took."),
        (
            "forwarded",
            "router_stage_forwarded",
            "Packets the stage passed on.",
        ),
        (
            "busy_ns",
            "router_stage_sampled_busy_nanoseconds",
            "Time in the stage over the sampled bursts.",
        ),
        (
            "timed_packets",
            "router_stage_sampled_packets",
            "Packets of the sampled bursts.",
        ),
    ] {
        x.family(name, Kind::Counter, help, &column(&stages, field));
    }
    x.family(
        "router_stage_drops",
        Kind::Counter,
        "Packets a stage dropped, by reason.",
        &named_pairs(&stages, "drops", "reason"),
    );
    x.family(
        "router_stage_punts",
        Kind::Counter,
        "Packets a stage sent to the management core, by reason.",
        &named_pairs(&stages, "punts", "reason"),
    );

    if let Some(m) = stats.get("mgmt").and_then(Value::as_object) {
        for (k, v) in m {
            match (k.as_str(), v) {
                ("punts", Value::Object(p)) => {
                    let s: Vec<_> = p
                        .iter()
                        .filter_map(|(r, c)| Some((labels(&[("reason", r)]), num(c)?)))
                        .collect();
                    x.family(
                        "router_mgmt_punts",
                        Kind::Counter,
                        "Packets the management core took from the workers, by reason.",
                        &s,
                    );
                }
                ("held_now", v) => x.family(
                    "router_mgmt_held",
                    Kind::Gauge,
                    "Packets held for address resolution now.",
                    &single(v),
                ),
                (k, v) => x.family(
                    &format!("router_mgmt_{}", name_piece(k)),
                    Kind::Counter,
                    &format!("Management core: {k}."),
                    &single(v),
                ),
            }
        }
    }
    for (k, v) in stats
        .get("fib")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        x.family(
            &format!("router_fib_{}", name_piece(k)),
            Kind::Gauge,
            &format!("The forwarding table: {k}."),
            &single(v),
        );
    }
    x.family(
        "router_mempool_free",
        Kind::Gauge,
        "Packet buffers free in the pool.",
        &single(&stats["mempool_free"]),
    );

    // Every other section is an application's (the registry's): flattened by path.
    const OWN: [&str; 6] = [
        "uptime_secs",
        "ports",
        "cores",
        "mgmt",
        "fib",
        "mempool_free",
    ];
    for (app, v) in stats.as_object().into_iter().flatten() {
        if !OWN.contains(&app.as_str()) && v.is_object() {
            flatten(&mut x, &format!("router_app_{}", name_piece(app)), app, v);
        }
    }
    x.finish()
}

/// One family per numeric leaf of an application's stats; arrays' elements labelled by index.
fn flatten(x: &mut Exposition, name: &str, path: &str, v: &Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(
                    x,
                    &format!("{name}_{}", name_piece(k)),
                    &format!("{path}.{k}"),
                    v,
                );
            }
        }
        Value::Array(a) => {
            let samples: Vec<_> = a
                .iter()
                .enumerate()
                .filter_map(|(i, e)| Some((labels(&[("index", &i.to_string())]), num(e)?)))
                .collect();
            x.family(
                name,
                Kind::Unknown,
                &format!("Application stats: {path}."),
                &samples,
            );
        }
        v => {
            x.family(
                name,
                Kind::Unknown,
                &format!("Application stats: {path}."),
                &single(v),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_labels_types_and_application_paths() {
        let stats = json!({
            "uptime_secs": 1.5,
            "ports": [{"port": 0, "name": "lan\"1", "device": "net_tap0", "rx": 7, "tx": 3,
                       "rx_bytes": 700, "tx_bytes": 300, "tx_full": 0,
                       "driver": {"ipackets": 8, "imissed": 1}}],
            "cores": [{"core": 0, "role": "worker", "polls": 10, "busy_polls": 4,
                       "stages": [{"name": "ipv4", "packets": 7, "forwarded": 5,
                                   "drops": [["ttl-expired", 2]], "punts": [["arp", 1]]}]}],
            "mgmt": {"arp_learned": 2, "held_now": 0, "punts": {"arp": 1}},
            "fib": {"routes": 3},
            "nfs": {"calls": 9, "tcp": null, "recovery": {"walks": 1}, "calls_by_proc": {"GETATTR": 9}},
        });
        let text = render(&stats);
        for line in [
            "# TYPE router_port_rx_packets counter",
            "router_port_rx_packets_total{port=\"lan\\\"1\",device=\"net_tap0\"} 7",
            "router_port_driver_imissed_total{port=\"lan\\\"1\",device=\"net_tap0\"} 1",
            "router_core_polls_total{core=\"0\",role=\"worker\"} 10",
            "router_stage_drops_total{core=\"0\",role=\"worker\",stage=\"ipv4\",reason=\"ttl-expired\"} 2",
            "router_mgmt_punts_total{reason=\"arp\"} 1",
            "router_mgmt_held 0",
            "router_fib_routes 3",
            "router_uptime_seconds 1.5",
            "# TYPE router_app_nfs_recovery_walks unknown",
            "router_app_nfs_recovery_walks 1",
            "router_app_nfs_calls_by_proc_getattr 9",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        // A family is written once, its TYPE before its samples.
        let types: Vec<_> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let unique: HashSet<_> = types.iter().collect();
        assert_eq!(types.len(), unique.len());
    }
}
