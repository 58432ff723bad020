//! The end-to-end benchmark: the real router on DPDK virtual devices (net_pcap replaying a
//! workload forever → router → net_null), for 1 and 2 worker lcores and both placements, with
//! throughput read from the router's own counters; and, in the same run, dpdk-testpmd (io and
//! mac forwarding) on the same devices and lcores as this machine's ceiling. Prints a table and
//! writes results.json.

use anyhow::{bail, Context, Result};
use clap::Parser;
use packet::ethernet::EthernetAddress;
use router::admin::{AdminClient, Request};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "End-to-end router benchmark against dpdk-testpmd")]
struct Args {
    /// The router binary (release build).
    #[arg(long, default_value = "target/release/router")]
    router: PathBuf,
    /// Working directory for workloads, configs, logs and results.json.
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Routes loaded into the FIB.
    #[arg(long, default_value_t = 1_000_000)]
    routes: usize,
    /// Serval service prefixes in the service table.
    #[arg(long, default_value_t = 100_000)]
    service_prefixes: usize,
    /// Keys each NetChain node stores (the NetChain rows).
    #[arg(long, default_value_t = 10_000)]
    netchain_keys: u128,
    /// Distinct frames in the workload pcap (flows).
    #[arg(long, default_value_t = 4096)]
    flows: usize,
    /// Seconds measured per row (after a 1 s warm-up).
    #[arg(long, default_value_t = 4.0)]
    duration: f64,
    /// EAL memory arguments: "no-huge" (default) or "huge" (hugepages reserved; --in-memory).
    #[arg(long, default_value = "no-huge")]
    memory: String,
    /// Only the workloads whose names start with this (ipv4, nfs, serval, netchain); their
    /// rows replace the same workloads' rows in an existing results.json.
    #[arg(long)]
    only: Option<String>,
    /// Worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    lcores: Vec<usize>,
    /// Extra `[dataplane]` settings for the router (`--dataplane "capture = true"`), to
    /// measure what one costs.
    #[arg(long)]
    dataplane: Vec<String>,
    /// DPDK's l3fwd example (LPM), built by `scripts/bench` from the Debian dpdk-doc sources
    /// with room for the routes; run on the IPv4 workload with the same routes, devices and
    /// lcores. Its rows are skipped (with a note) when the binary is missing.
    #[arg(long, default_value = "target/dpdk-examples/l3fwd/build/l3fwd")]
    l3fwd: PathBuf,
}

impl Args {
    fn wants(&self, workload: &str) -> bool {
        self.only.as_deref().is_none_or(|o| workload.starts_with(o))
    }
}

fn eal_mem(args: &Args) -> Vec<String> {
    if args.memory == "huge" {
        vec!["--in-memory".into()]
    } else {
        vec!["--no-huge".into(), "-m".into(), "2048".into()]
    }
}

/// The devices of a run with `q` queue pairs: workload in, null sink out.
fn devices(workload: &Path, q: usize) -> (String, String) {
    let w = workload.display();
    let rx: Vec<String> = (0..q).map(|_| format!("rx_pcap={w}")).collect();
    let tx: Vec<String> = (0..q).map(|_| "tx_pcap=/dev/null".to_string()).collect();
    (
        format!("net_pcap0,{},{},infinite_rx=1", rx.join(","), tx.join(",")),
        "net_null0,no-rx=1".to_string(),
    )
}

fn kill_wait(mut child: Child) {
    // SIGTERM via kill(1): a clean stop releases the devices.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

struct RouterRun {
    mpps: f64,
    ns_per_pkt: f64,
    drops: u64,
}

/// What a router run adds to the common config: a routes file (IPv4), or TOML of its own.
enum Extra<'a> {
    RoutesFile(&'a Path),
    Toml(String),
}

fn run_router(
    args: &Args,
    workload: &Path,
    extra: Extra<'_>,
    placement: &str,
    workers: usize,
    tag: &str,
) -> Result<RouterRun> {
    let sock = args.dir.join(format!("admin-{tag}.sock"));
    let cfg_path = args.dir.join(format!("router-{tag}.toml"));
    let q = if placement == "split" { 1 } else { workers };
    let (dev_in, dev_out) = devices(workload, q);
    let cpus: Vec<usize> = if workers == 1 {
        vec![1]
    } else {
        (0..workers).map(|i| (i + 1) % 2).collect()
    };
    let mut eal = vec![
        "--no-pci".to_string(),
        "--file-prefix".into(),
        format!("bench-{tag}"),
        "-l".into(),
        "0".into(),
    ];
    eal.extend(eal_mem(args));
    let dp_extra = args.dataplane.join("\n");
    let cfg = format!(
        r#"[eal]
args = {eal:?}
[dataplane]
placement = "{placement}"
workers = {cpus:?}
io_cpu = 0
mgmt_cpu = 0
idle_sleep_max_us = 0
burst = 32
ring_size = 4096
{dp_extra}
[mempool]
mbufs = 65535
cache = 256
[[ports]]
name = "in"
device = "{dev_in}"
mac = "02:00:00:00:00:01"
addresses = ["10.0.1.1/24"]
[[ports]]
name = "out"
device = "{dev_out}"
addresses = ["10.0.2.1/24"]
[[static_neighbours]]
port = "out"
address = "10.0.2.2"
mac = "02:00:00:00:00:99"
[admin]
socket = "{sock}"
[log]
level = "warn"
{extra}
"#,
        sock = sock.display(),
        extra = match extra {
            Extra::RoutesFile(f) => format!(
                "[fib]\ntbl8_groups = 131072\nroutes_file = \"{}\"\n",
                f.display()
            ),
            Extra::Toml(t) => t,
        }
    );
    std::fs::write(&cfg_path, cfg)?;
    let log = std::fs::File::create(args.dir.join(format!("router-{tag}.log")))?;
    let child = Command::new(&args.router)
        .args(["run", "--config"])
        .arg(&cfg_path)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", args.router.display()))?;
    let res = measure_router(args, &sock);
    kill_wait(child);
    res.with_context(|| {
        format!(
            "router run {tag}; see {}",
            args.dir.join(format!("router-{tag}.log")).display()
        )
    })
}

fn measure_router(args: &Args, sock: &Path) -> Result<RouterRun> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut c = loop {
        if let Ok(c) = AdminClient::connect(sock) {
            break c;
        }
        if Instant::now() > deadline {
            bail!("router did not come up");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stats = |c: &mut AdminClient| -> Result<Value> {
        let r = c.call(&Request::Stats)?;
        if !r.ok {
            bail!("stats: {:?}", r.error);
        }
        Ok(r.data)
    };
    std::thread::sleep(Duration::from_secs(1));
    let s0 = stats(&mut c)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    let s1 = stats(&mut c)?;
    let dt = t0.elapsed().as_secs_f64();
    let tx = |s: &Value| s["ports"][1]["tx"].as_u64().unwrap_or(0);
    let sum = |s: &Value, f: &dyn Fn(&Value) -> u64| -> u64 {
        s["cores"].as_array().map_or(0, |a| a.iter().map(f).sum())
    };
    // The whole pipeline's time per packet over the sampled bursts.
    let stages = |c: &Value| c["stages"].as_array().cloned().unwrap_or_default();
    let pk = |c: &Value| c["timed_packets"].as_u64().unwrap_or(0);
    let ns = |c: &Value| c["timed_ns"].as_u64().unwrap_or(0);
    let dr = |c: &Value| {
        stages(c)
            .iter()
            .map(|s| {
                s["drops"].as_array().map_or(0, |d| {
                    d.iter().map(|p| p[1].as_u64().unwrap_or(0)).sum::<u64>()
                })
            })
            .sum()
    };
    let dpk = sum(&s1, &pk) - sum(&s0, &pk);
    Ok(RouterRun {
        mpps: (tx(&s1) - tx(&s0)) as f64 / dt / 1e6,
        ns_per_pkt: if dpk > 0 {
            (sum(&s1, &ns) - sum(&s0, &ns)) as f64 / dpk as f64
        } else {
            0.0
        },
        drops: sum(&s1, &dr) - sum(&s0, &dr),
    })
}

/// l3fwd's route files: the IPv4 prefixes, all out of port 1 (net_null), and one IPv6 route
/// (l3fwd reads its own files only when given both).
fn write_l3fwd_rules(dir: &Path, prefixes: &[(Ipv4Addr, u8)]) -> Result<(PathBuf, PathBuf)> {
    use std::io::Write;
    let v4 = dir.join("l3fwd-v4.cfg");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&v4)?);
    for (p, l) in prefixes {
        writeln!(f, "R{p}/{l} 1")?;
    }
    f.flush()?;
    let v6 = dir.join("l3fwd-v6.cfg");
    std::fs::write(&v6, "R2001:0db8:0000:0000:0000:0000:0000:0000/32 1\n")?;
    Ok((v4, v6))
}

/// One counter of an ethdev port of a running DPDK process, through its telemetry socket
/// (SOCK_SEQPACKET, which Rust's std does not speak: a few lines of Python do).
fn telemetry_port_counter(socket: &Path, port: u16, counter: &str) -> Result<u64> {
    const CLIENT: &str = "import json, socket, sys\n\
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n\
s.connect(sys.argv[1])\n\
s.recv(4096)\n\
s.send(sys.argv[2].encode())\n\
print(json.dumps(json.loads(s.recv(1 << 20))))\n";
    let out = Command::new("python3")
        .args(["-c", CLIENT])
        .arg(socket)
        .arg(format!("/ethdev/stats,{port}"))
        .stderr(Stdio::null())
        .output()
        .context("python3 (telemetry client)")?;
    if !out.status.success() {
        bail!("telemetry at {} did not answer", socket.display());
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["/ethdev/stats"][counter]
        .as_u64()
        .with_context(|| format!("no {counter} in {v}"))
}

/// DPDK's l3fwd (LPM lookups, the same routes) on the same devices and lcores as the router;
/// returns port 1's TX rate in Mpps, read from l3fwd's telemetry (it prints no rates), or
/// `None` when the binary is missing.
fn run_l3fwd(
    args: &Args,
    workload: &Path,
    rules: &(PathBuf, PathBuf),
    cores: usize,
    tag: &str,
) -> Result<Option<f64>> {
    if !args.l3fwd.exists() {
        eprintln!(
            "l3fwd rows skipped: no {} (scripts/bench builds it from the dpdk-doc package)",
            args.l3fwd.display()
        );
        return Ok(None);
    }
    let (dev_in, dev_out) = devices(workload, cores);
    let prefix = format!("bench-l3-{tag}");
    // Forwarding lcores 1 (and 0) as the router's workers and testpmd's; each polls its queue
    // of both ports.
    let (lcores, config) = if cores == 1 {
        ("1", "(0,0,1),(1,0,1)".to_string())
    } else {
        ("0,1", "(0,0,1),(0,1,0),(1,0,1),(1,1,0)".to_string())
    };
    let log = std::fs::File::create(args.dir.join(format!("l3fwd-{tag}.log")))?;
    let mut cmd = Command::new(&args.l3fwd);
    cmd.args(["-l", lcores, "--no-pci", "--file-prefix", &prefix]);
    cmd.args(eal_mem(args).into_iter().filter(|a| a != "--in-memory"));
    cmd.args(["--vdev", &dev_in, "--vdev", &dev_out, "--"]);
    cmd.args(["-p", "0x3", "--config", &config, "--parse-ptype"]);
    cmd.args(["--eth-dest=1,02:00:00:00:00:99", "--rule_ipv4"])
        .arg(&rules.0)
        .arg("--rule_ipv6")
        .arg(&rules.1);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", args.l3fwd.display()))?;
    let runtime = if is_root() {
        PathBuf::from("/var/run/dpdk")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
            .join("dpdk")
    };
    let socket = runtime.join(&prefix).join("dpdk_telemetry.v2");
    let res = (|| -> Result<f64> {
        // Up once traffic flows (l3fwd logs every route it adds: 1M take about two minutes).
        let deadline = Instant::now() + Duration::from_secs(600);
        while telemetry_port_counter(&socket, 1, "opackets").unwrap_or(0) == 0 {
            if let Some(st) = child.try_wait()? {
                bail!("l3fwd exited ({st}) before forwarding");
            }
            if Instant::now() > deadline {
                bail!("l3fwd forwarded nothing in 600 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(1));
        let c0 = telemetry_port_counter(&socket, 1, "opackets")?;
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(args.duration));
        let c1 = telemetry_port_counter(&socket, 1, "opackets")?;
        Ok((c1 - c0) as f64 / t0.elapsed().as_secs_f64() / 1e6)
    })();
    kill_wait(child);
    res.map(Some).with_context(|| {
        format!(
            "l3fwd run {tag}; see {}",
            args.dir.join(format!("l3fwd-{tag}.log")).display()
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// dpdk-testpmd on the same devices and lcores; returns port 1's TX rate in Mpps (median of
/// the samples after warm-up).
fn run_testpmd(args: &Args, workload: &Path, mode: &str, cores: usize, tag: &str) -> Result<f64> {
    let (dev_in, dev_out) = devices(workload, cores);
    let lcores = if cores == 1 {
        "0@0,1@1".to_string()
    } else {
        "0@0,1@1,2@0".to_string()
    };
    let mut cmd = Command::new("dpdk-testpmd");
    cmd.args([
        "--lcores",
        &lcores,
        "--no-pci",
        "--file-prefix",
        &format!("bench-tp-{tag}"),
    ]);
    cmd.args(eal_mem(args));
    cmd.args(["--vdev", &dev_in, "--vdev", &dev_out, "--"]);
    cmd.args([
        &format!("--forward-mode={mode}"),
        "--stats-period=1",
        &format!("--nb-cores={cores}"),
        &format!("--rxq={cores}"),
        &format!("--txq={cores}"),
        "--total-num-mbufs=65535",
        "--burst=32",
        "--no-flush-rx",
    ]);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dpdk-testpmd (apt-get install dpdk-dev)")?;
    let out = child.stdout.take().context("testpmd stdout")?;
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let s2 = samples.clone();
    let reader = std::thread::spawn(move || {
        let mut port = None;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(i) = line.find("statistics for port") {
                port = line[i + 19..]
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<u32>().ok());
            }
            if port == Some(1) {
                if let Some(i) = line.find("Tx-pps:") {
                    if let Some(v) = line[i + 7..]
                        .split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<f64>().ok())
                    {
                        if let Ok(mut s) = s2.lock() {
                            s.push(v);
                        }
                    }
                }
            }
        }
    });
    std::thread::sleep(Duration::from_secs_f64(args.duration + 2.5));
    kill_wait(child);
    let _ = reader.join();
    let mut s = samples.lock().map(|s| s.clone()).unwrap_or_default();
    // Drop the warm-up samples (the first two, including the zero before traffic starts).
    if s.len() > 3 {
        s.drain(..2);
    }
    s.retain(|v| *v > 0.0);
    if s.is_empty() {
        bail!("testpmd {mode} on {cores} lcores printed no rates");
    }
    s.sort_by(|a, b| a.total_cmp(b));
    Ok(s[s.len() / 2] / 1e6)
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.canonicalize()?;
    let args = Args { dir, ..args };
    eprintln!(
        "generating {} routes and a {}-flow 64-byte IPv4/UDP workload in {}",
        args.routes,
        args.flows,
        args.dir.display()
    );
    let mut rows = Vec::new();
    if args.wants("ipv4") {
        let prefixes = router_bench::route_prefixes(args.routes, 1);
        let routes_file = args.dir.join("routes.txt");
        router_bench::write_routes_file(&routes_file, &prefixes, Ipv4Addr::new(10, 0, 2, 2))?;
        let workload = args.dir.join("ipv4-udp64.pcap");
        let frames = router_bench::ipv4_workload(
            &prefixes,
            args.flows,
            EthernetAddress([2, 0, 0, 0, 0, 1]),
            2,
        );
        router_bench::write_pcap(&workload, &frames)?;

        let l3fwd_rules = write_l3fwd_rules(&args.dir, &prefixes)?;
        let mut ceilings = std::collections::HashMap::new();
        let mut l3fwd = std::collections::HashMap::new();
        for &n in &args.lcores {
            let io = run_testpmd(&args, &workload, "io", n, &format!("io{n}"))?;
            let mac = run_testpmd(&args, &workload, "mac", n, &format!("mac{n}"))?;
            eprintln!("testpmd {n} lcore(s): io {io:.2} Mpps, mac {mac:.2} Mpps");
            ceilings.insert(n, (io, mac));
            if let Some(l) = run_l3fwd(&args, &workload, &l3fwd_rules, n, &format!("{n}"))? {
                eprintln!("l3fwd {n} lcore(s), the same routes: {l:.2} Mpps");
                l3fwd.insert(n, l);
            }
        }
        for placement in ["run-to-completion", "split"] {
            for &n in &args.lcores {
                let tag = format!("{}{n}", if placement == "split" { "split" } else { "rtc" });
                let r = run_router(
                    &args,
                    &workload,
                    Extra::RoutesFile(&routes_file),
                    placement,
                    n,
                    &tag,
                )?;
                let (io, mac) = ceilings[&n];
                eprintln!(
                    "router ipv4 {placement} {n} worker(s): {:.2} Mpps ({:.1} ns/pkt in stages)",
                    r.mpps, r.ns_per_pkt
                );
                let l3 = l3fwd.get(&n).copied();
                rows.push(result_row(
                    ("ipv4-forward", placement, n),
                    &r,
                    (io, mac),
                    json!({
                        "routes": args.routes,
                        "frame_bytes": 64,
                        "flows": args.flows,
                        "memory": args.memory,
                        "l3fwd_mpps": l3.map(round),
                        "ratio_to_l3fwd": l3.map(|l| round(r.mpps / l)),
                    }),
                ));
            }
        }
    }
    if args.wants("nfs") {
        // NFS: GETATTR, LOOKUP and READ calls with their replies, rewritten both ways. With two
        // run-to-completion workers each queue replays the whole workload, and a call and its
        // reply meet on the worker its client and xid hash to: about half the packets are
        // handed over (the handoff's worst case).
        let nfs_pcap = args.dir.join("nfs-udp.pcap");
        let (frames, ckpt) =
            router_bench::nfs_workload(args.flows, 512, EthernetAddress([2, 0, 0, 0, 0, 1]));
        router_bench::write_pcap(&nfs_pcap, &frames)?;
        let ckpt_path = args.dir.join("nfs-handles.ckpt");
        std::fs::write(&ckpt_path, &ckpt)?;
        let mean_frame = frames.iter().map(Vec::len).sum::<usize>() / frames.len().max(1);
        let nfs_toml = format!(
            r#"[[routes]]
prefix = "10.0.3.0/24"
via = "10.0.2.2"
[nfs]
virtual_address = "{virt}"
handle_secret = "{secret}"
checkpoint = "{ckpt}"
checkpoint_secs = 0
[[nfs.servers]]
sid = 1
name = "bench"
address = "{server}"
export = "{export}"
transport = "udp"
"#,
            virt = router_bench::nfs::VIRTUAL,
            secret = router_bench::nfs::SECRET,
            ckpt = ckpt_path.display(),
            server = router_bench::nfs::SERVER,
            export = router_bench::nfs::EXPORT,
        );
        for &n in &args.lcores {
            let io = run_testpmd(&args, &nfs_pcap, "io", n, &format!("nfs-io{n}"))?;
            let mac = run_testpmd(&args, &nfs_pcap, "mac", n, &format!("nfs-mac{n}"))?;
            eprintln!(
                "testpmd {n} lcore(s) on the NFS workload: io {io:.2} Mpps, mac {mac:.2} Mpps"
            );
            let r = run_router(
                &args,
                &nfs_pcap,
                Extra::Toml(nfs_toml.clone()),
                "run-to-completion",
                n,
                &format!("nfs{n}"),
            )?;
            eprintln!(
                "router nfs run-to-completion {n} worker(s): {:.2} Mpps ({:.1} ns/pkt in stages)",
                r.mpps, r.ns_per_pkt
            );
            rows.push(result_row(
                ("nfs-rewrite", "run-to-completion", n),
                &r,
                (io, mac),
                json!({
                    "mix": "GETATTR, LOOKUP, READ 512 B: calls and replies",
                    "frame_bytes_mean": mean_frame,
                    "flows": args.flows,
                    "memory": args.memory,
                }),
            ));
        }
    }
    if args.wants("serval") {
        // Serval: SYNs to serviceIDs under 100K service prefixes, forwarded by the SAL stage
        // (FORWARD rewrite: destination, SOURCE extension, three checksums) and routed.
        let sal_pcap = args.dir.join("sal-syn.pcap");
        let sal_rules = args.dir.join("sal-rules.txt");
        let prefixes = router_bench::service_prefixes(args.service_prefixes, 7);
        let (frames, rules) = router_bench::sal_workload(
            args.flows,
            &prefixes,
            Ipv4Addr::new(10, 0, 2, 2),
            EthernetAddress([2, 0, 0, 0, 0, 1]),
        );
        router_bench::write_pcap(&sal_pcap, &frames)?;
        std::fs::write(&sal_rules, rules)?;
        let io = run_testpmd(&args, &sal_pcap, "io", 1, "sal-io1")?;
        let mac = run_testpmd(&args, &sal_pcap, "mac", 1, "sal-mac1")?;
        eprintln!("testpmd on the Serval workload: io {io:.2} Mpps, mac {mac:.2} Mpps");
        let sal_toml = format!(
            "[sal]\nmax_rules = {}\nrules_file = \"{}\"\n",
            args.service_prefixes + 1024,
            sal_rules.display()
        );
        let r = run_router(
            &args,
            &sal_pcap,
            Extra::Toml(sal_toml),
            "run-to-completion",
            1,
            "sal1",
        )?;
        eprintln!(
            "router sal run-to-completion 1 worker: {:.2} Mpps ({:.1} ns/pkt in stages)",
            r.mpps, r.ns_per_pkt
        );
        rows.push(result_row(
            ("serval-syn", "run-to-completion", 1),
            &r,
            (io, mac),
            json!({
                "service_prefixes": args.service_prefixes,
                "frame_bytes": frames.first().map_or(0, Vec::len),
                "flows": args.flows,
                "memory": args.memory,
            }),
        ));
    }
    if args.wants("netchain") {
        // NetChain: the appliance is one node. Reads at the tail come back as replies to the
        // client (10.0.2.2, behind the out port); writes at the head are stamped, stored and
        // passed to the next node (10.0.2.2).
        let keys = args.netchain_keys;
        let key_list: Vec<String> = (1..=keys).map(|k| format!("\"{k}\"")).collect();
        for (name, write) in [("netchain-read", false), ("netchain-write", true)] {
            let pcap = args.dir.join(format!("{name}.pcap"));
            let frames = router_bench::netchain_workload(
                args.flows,
                keys,
                write,
                (
                    Ipv4Addr::new(10, 0, 2, 2),
                    Ipv4Addr::new(10, 0, 1, 1),
                    Ipv4Addr::new(10, 0, 2, 2),
                ),
                EthernetAddress([2, 0, 0, 0, 0, 1]),
            );
            router_bench::write_pcap(&pcap, &frames)?;
            let io = run_testpmd(&args, &pcap, "io", 1, &format!("{name}-io1"))?;
            let mac = run_testpmd(&args, &pcap, "mac", 1, &format!("{name}-mac1"))?;
            eprintln!("testpmd on {name}: io {io:.2} Mpps, mac {mac:.2} Mpps");
            let role = if write { "head" } else { "tail" };
            let toml = format!(
            "[chain]\nmax_keys = {}\nkeys = [{}]\n[[chain.nodes]]\naddress = \"10.0.1.1\"\n{role} = [\"0-15\"]\n",
            keys.max(1024),
            key_list.join(",")
        );
            let r = run_router(
                &args,
                &pcap,
                Extra::Toml(toml),
                "run-to-completion",
                1,
                name,
            )?;
            eprintln!(
                "router {name} run-to-completion 1 worker: {:.2} Mpps ({:.1} ns/pkt in stages)",
                r.mpps, r.ns_per_pkt
            );
            rows.push(result_row(
                (name, "run-to-completion", 1),
                &r,
                (io, mac),
                json!({
                    "keys": keys,
                    "value_bytes": 16,
                    "frame_bytes": frames.first().map_or(0, Vec::len),
                    "flows": args.flows,
                    "memory": args.memory,
                }),
            ));
        }
    }
    let one = rows
        .iter()
        .find(|r| r["placement"] == "run-to-completion" && r["lcores"] == 1)
        .map(|r| r["mpps"].as_f64().unwrap_or(0.0));
    let two = rows
        .iter()
        .find(|r| r["placement"] == "run-to-completion" && r["lcores"] == 2)
        .map(|r| r["mpps"].as_f64().unwrap_or(0.0));
    let scaling = match (one, two) {
        (Some(a), Some(b)) if a > 0.0 => Some(round(b / a)),
        _ => None,
    };
    println!(
        "{:<14} {:<18} {:>6} {:>8} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "workload",
        "placement",
        "lcores",
        "Mpps",
        "tp-io",
        "tp-mac",
        "vs-mac",
        "l3fwd",
        "vs-l3fwd",
        "ns/pkt"
    );
    let dash = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "-".to_string(), |x| format!("{x:.2}"))
    };
    for r in &rows {
        println!(
            "{:<14} {:<18} {:>6} {:>8.2} {:>10.2} {:>10.2} {:>8.2} {:>8} {:>8} {:>8.1}",
            r["workload"].as_str().unwrap_or(""),
            r["placement"].as_str().unwrap_or(""),
            r["lcores"],
            r["mpps"].as_f64().unwrap_or(0.0),
            r["testpmd_io_mpps"].as_f64().unwrap_or(0.0),
            r["testpmd_mac_mpps"].as_f64().unwrap_or(0.0),
            r["ratio_to_mac"].as_f64().unwrap_or(0.0),
            dash(&r["l3fwd_mpps"]),
            dash(&r["ratio_to_l3fwd"]),
            r["stage_ns_per_packet"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(s) = scaling {
        println!("run-to-completion scaling 2 vs 1 worker: {s:.2}x");
    }
    let out = json!({
        "generated_by": "scripts/bench",
        "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "rtc_scaling_2_vs_1": scaling,
        "rows": rows,
    });
    let path = args.dir.join("results.json");
    let mut out = out;
    if args.only.is_some() {
        // Keep the other workloads' rows of the last full run.
        if let Ok(old) = std::fs::read(&path) {
            if let Ok(old) = serde_json::from_slice::<Value>(&old) {
                let mine: Vec<Value> = rows.iter().map(|r| r["workload"].clone()).collect();
                let mut all: Vec<Value> = old["rows"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| !mine.contains(&r["workload"]))
                    .collect();
                all.extend(rows.iter().cloned());
                out["rows"] = Value::Array(all);
                out["rtc_scaling_2_vs_1"] = old["rtc_scaling_2_vs_1"].clone();
            }
        }
    }
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// A results.json row: the columns every row has (run, router, testpmd io and mac), then
/// `extra`'s.
fn result_row(
    (workload, placement, lcores): (&str, &str, usize),
    r: &RouterRun,
    (io, mac): (f64, f64),
    extra: Value,
) -> Value {
    let mut row = json!({
        "workload": workload,
        "placement": placement,
        "lcores": lcores,
        "mpps": round(r.mpps),
        "testpmd_io_mpps": round(io),
        "testpmd_mac_mpps": round(mac),
        "ratio_to_mac": round(r.mpps / mac),
        "ratio_to_io": round(r.mpps / io),
        "stage_ns_per_packet": round(r.ns_per_pkt),
        "drops": r.drops,
    });
    if let (Some(o), Value::Object(e)) = (row.as_object_mut(), extra) {
        o.extend(e);
    }
    row
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
