//! `netchain`: the chain master, the client (get, put, bench), the master's admin requests,
//! the linearizability check of recorded histories, and etcd driven with the same workload.

use anyhow::{anyhow, bail, Context, Result};
use chain_switch::client::{Client, Report, Workload};
use chain_switch::etcd::Etcd;
use chain_switch::linear::{self, Op, Verdict};
use chain_switch::master::{self, Master, MasterConfig};
use chain_switch::wire;
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "NetChain: chain master, client, admin, linearizability check")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Target {
    /// The master (its `listen` address): chains come from its directory.
    #[arg(long, conflicts_with = "chain")]
    master: Option<SocketAddr>,
    /// Or one fixed chain for every key, head first (the prototype's way): `a,b,c`.
    #[arg(long, value_delimiter = ',')]
    chain: Vec<Ipv4Addr>,
    /// With --chain: the value size.
    #[arg(long, default_value_t = 16)]
    value_len: usize,
    /// The client's address (replies come to its port 8889).
    #[arg(long, default_value = "0.0.0.0")]
    bind: Ipv4Addr,
}

impl Target {
    fn client(&self) -> Result<Client> {
        match self.master {
            Some(m) => Client::connect(self.bind, m).context("fetching the directory"),
            None if !self.chain.is_empty() => Ok(Client::with_chains(
                self.bind,
                vec![self.chain.clone()],
                self.value_len,
            )?),
            None => bail!("give --master or --chain"),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the chain master.
    Master {
        #[arg(long)]
        config: PathBuf,
    },
    /// Read a key.
    Get {
        #[command(flatten)]
        t: Target,
        key: String,
    },
    /// Write a number to a key.
    Put {
        #[command(flatten)]
        t: Target,
        key: String,
        value: u64,
    },
    /// Drive a read/write mix; print throughput and latency percentiles.
    Bench {
        #[command(flatten)]
        t: Target,
        #[command(flatten)]
        w: BenchArgs,
        /// Write the operations here (for `netchain check`).
        #[arg(long)]
        history: Option<PathBuf>,
        /// Tells this client's values apart from other clients'.
        #[arg(long, default_value_t = 1)]
        client_id: u32,
        /// After the run, read every key once (recorded in the history).
        #[arg(long)]
        final_read: bool,
    },
    /// Check recorded histories for linearizability (per key; registers start at 0).
    Check { files: Vec<PathBuf> },
    /// Requests to the master: status, insert, delete, add.
    Admin {
        #[arg(long)]
        master: SocketAddr,
        #[arg(long)]
        secret_file: PathBuf,
        #[command(subcommand)]
        op: AdminOp,
    },
    /// The same workload against etcd (its JSON gateway): the comparison's baseline.
    EtcdBench {
        #[arg(long, default_value = "127.0.0.1:2379")]
        etcd: SocketAddr,
        #[command(flatten)]
        w: BenchArgs,
    },
}

#[derive(Args, Clone)]
struct BenchArgs {
    /// Keys 1..=N.
    #[arg(long, default_value_t = 1000)]
    keys: u128,
    /// Share of writes.
    #[arg(long, default_value_t = 0.5)]
    writes: f64,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long, default_value_t = 200)]
    timeout_ms: u64,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum AdminOp {
    Status,
    /// Insert keys (numbers or 0x hex); `--range A B` inserts A..=B.
    Insert {
        keys: Vec<String>,
        #[arg(long, num_args = 2)]
        range: Vec<u128>,
    },
    Delete {
        keys: Vec<String>,
    },
    /// Bring in an appliance: its control address and nodes.
    Add {
        #[arg(long)]
        control: std::net::SocketAddrV4,
        #[arg(long = "node", required = true)]
        nodes: Vec<Ipv4Addr>,
    },
}

fn parse_key(s: &str) -> Result<u128> {
    wire::parse_key(s)
        .map(u128::from_be_bytes)
        .ok_or_else(|| anyhow!("bad key {s:?}: a number or 0x and hex digits"))
}

fn print_report(what: &str, r: &Report, json_out: bool) {
    let (p50, p99, p999) = (
        r.percentile_us(50.0),
        r.percentile_us(99.0),
        r.percentile_us(99.9),
    );
    if json_out {
        println!(
            "{}",
            json!({"system": what, "ops_per_sec": r.ops_per_sec(), "reads": r.reads,
                   "writes": r.writes, "timeouts": r.timeouts,
                   "p50_us": p50, "p99_us": p99, "p999_us": p999,
                   "seconds": r.elapsed.as_secs_f64()})
        );
    } else {
        println!(
            "{what}: {:.0} ops/s ({} reads, {} writes, {} timeouts in {:.1} s); latency p50 {:.1} us, p99 {:.1} us, p999 {:.1} us",
            r.ops_per_sec(),
            r.reads,
            r.writes,
            r.timeouts,
            r.elapsed.as_secs_f64(),
            p50,
            p99,
            p999
        );
    }
}

fn workload(w: &BenchArgs, client_id: u32, record: bool) -> Workload {
    Workload {
        keys: (1..=w.keys).collect(),
        write_ratio: w.writes.clamp(0.0, 1.0),
        concurrency: w.concurrency.max(1),
        duration: Duration::from_secs_f64(w.duration.max(0.0)),
        timeout: Duration::from_millis(w.timeout_ms.max(1)),
        client_id,
        record,
    }
}

/// etcd with the same mix: `concurrency` threads, each its own keep-alive connection.
fn etcd_bench(addr: SocketAddr, w: &BenchArgs) -> Result<Report> {
    let wl = workload(w, 0, false);
    let start = Instant::now();
    let handles: Vec<_> = (0..wl.concurrency)
        .map(|t| {
            let wl = wl.clone();
            std::thread::spawn(move || -> std::io::Result<Report> {
                let mut e = Etcd::new(addr);
                let mut r = Report::default();
                let mut rng = 0x9e37_79b9_u64 ^ (t as u64 + 1) << 20;
                let t0 = Instant::now();
                let mut n = 0u64;
                while t0.elapsed() < wl.duration {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let key = wl.keys[(rng % wl.keys.len() as u64) as usize];
                    let k = wire::key_from_u128(key);
                    let write = (rng >> 40) % 1000 < (wl.write_ratio * 1000.0) as u64;
                    let s = Instant::now();
                    n += 1;
                    if write {
                        e.put(&k, &wire::value_from_u64(n, 16))?;
                        r.writes += 1;
                    } else {
                        e.get(&k)?;
                        r.reads += 1;
                    }
                    r.latencies.push(s.elapsed().as_nanos() as u64);
                }
                Ok(r)
            })
        })
        .collect();
    let mut total = Report::default();
    for h in handles {
        let r = h.join().map_err(|_| anyhow!("a bench thread panicked"))??;
        total.reads += r.reads;
        total.writes += r.writes;
        total.latencies.extend(r.latencies);
    }
    total.elapsed = start.elapsed();
    total.latencies.sort_unstable();
    Ok(total)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Master { config } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("{}", config.display()))?;
            let cfg: MasterConfig =
                toml::from_str(&text).with_context(|| format!("{}", config.display()))?;
            let stop = Arc::new(AtomicBool::new(false));
            // SIGINT and SIGTERM: stop after the current round.
            let s = stop.clone();
            ctrlc::set_handler(move || s.store(true, std::sync::atomic::Ordering::Relaxed))?;
            let mut m = Master::start(cfg).map_err(|e| anyhow!(e))?;
            eprintln!(
                "netchain-master: serving (epoch {}, {} groups)",
                m.state.epoch,
                m.state.groups.len()
            );
            m.run(&stop);
            Ok(())
        }
        Cmd::Get { t, key } => {
            let mut c = t.client()?;
            let op = c.get(parse_key(&key)?)?;
            println!("{}", op.value);
            Ok(())
        }
        Cmd::Put { t, key, value } => {
            let mut c = t.client()?;
            c.put(parse_key(&key)?, value)?;
            println!("ok");
            Ok(())
        }
        Cmd::Bench {
            t,
            w,
            history,
            client_id,
            final_read,
        } => {
            let mut c = t.client()?;
            let wl = workload(&w, client_id, history.is_some());
            let mut r = c.run(&wl)?;
            print_report("netchain", &r, w.json);
            if c.refreshes > 0 && !w.json {
                println!("directory fetched again {} times", c.refreshes);
            }
            if final_read {
                for &k in &wl.keys {
                    r.history.push(c.get(k)?);
                }
            }
            if let Some(p) = history {
                let mut f = std::io::BufWriter::new(std::fs::File::create(&p)?);
                for o in &r.history {
                    writeln!(f, "{o}")?;
                }
                f.flush()?;
            }
            Ok(())
        }
        Cmd::Check { files } => {
            let mut ops: Vec<Op> = Vec::new();
            for p in &files {
                let text =
                    std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
                for l in text.lines().filter(|l| !l.trim().is_empty()) {
                    ops.push(l.parse().map_err(|e: String| anyhow!(e))?);
                }
            }
            let writes = ops.iter().filter(|o| o.write).count();
            let unknown = ops.iter().filter(|o| o.complete.is_none()).count();
            let (v, keys) = linear::check(&ops, 0);
            match v {
                Verdict::Linearizable => {
                    println!(
                        "linearizable: {} operations ({writes} writes, {unknown} of unknown outcome) on {keys} keys",
                        ops.len()
                    );
                    Ok(())
                }
                Verdict::Violation { key, ops, deepest } => bail!(
                    "NOT linearizable: key {key}: no order fits its {ops} operations (stuck after {deepest})"
                ),
                Verdict::Unknown { key } => {
                    bail!("undecided: key {key} took more than {} states", linear::STATE_BUDGET)
                }
            }
        }
        Cmd::Admin {
            master,
            secret_file,
            op,
        } => {
            let secret = std::fs::read(&secret_file)
                .with_context(|| format!("{}", secret_file.display()))?
                .trim_ascii()
                .to_vec();
            let body = match op {
                AdminOp::Status => json!({"op": "status"}),
                AdminOp::Insert { keys, range } => {
                    let mut ks: Vec<String> = keys;
                    if let [a, b] = range[..] {
                        ks.extend((a..=b).map(|k| k.to_string()));
                    }
                    for k in &ks {
                        parse_key(k)?;
                    }
                    json!({"op": "insert", "keys": ks})
                }
                AdminOp::Delete { keys } => json!({"op": "delete", "keys": keys}),
                AdminOp::Add { control, nodes } => {
                    json!({"op": "add", "appliance": {"control": control, "nodes": nodes}})
                }
            };
            let v = master::admin_call(master, &secret, &body).map_err(|e| anyhow!(e))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Cmd::EtcdBench { etcd, w } => {
            let r = etcd_bench(etcd, &w)?;
            print_report("etcd", &r, w.json);
            Ok(())
        }
    }
}
