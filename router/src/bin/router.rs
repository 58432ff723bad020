//! `router`: run the appliance, or validate a config file.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use router::config::{BackendKind, Config, Placement};
use router::port::soft::{SoftBackend, SoftPortSpec, Wire};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tracing_subscriber::{prelude::*, reload, EnvFilter};

#[derive(Parser, Debug)]
#[command(version, about = "DPDK service-virtualization router")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start the router.
    Run {
        /// The TOML configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Override dataplane.workers (comma-separated CPUs).
        #[arg(long, value_delimiter = ',')]
        workers: Option<Vec<usize>>,
        /// Override dataplane.placement.
        #[arg(long, value_parser = ["run-to-completion", "split"])]
        placement: Option<String>,
        /// Override dataplane.io_cpu (split placement).
        #[arg(long)]
        io_cpu: Option<usize>,
        /// Override admin.socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Override log.level (a tracing filter such as `info` or `router=debug`).
        #[arg(long)]
        log_level: Option<String>,
        /// Override dataplane.idle_sleep_max_us (0 polls flat out).
        #[arg(long)]
        idle_sleep_max_us: Option<u64>,
        /// Extra EAL arguments appended to eal.args.
        #[arg(long = "eal", allow_hyphen_values = true)]
        eal: Vec<String>,
    },
    /// Validate a configuration file without starting; exits non-zero naming the bad key.
    CheckConfig {
        /// The TOML configuration file.
        config: PathBuf,
    },
    /// Check the host for a config before starting (the systemd unit's ExecStartPre): the
    /// config, hugepages and hugetlbfs, each PCI port's driver binding. Exits non-zero with
    /// what to do when one fails.
    Preflight {
        /// The TOML configuration file.
        config: PathBuf,
    },
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("router: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => {
            let cfg = Config::load(&config)?;
            let routes = cfg.routes.len() + cfg.file_routes()?.len();
            println!(
                "{}: ok ({} ports, {} routes, {} workers, {:?} placement, {:?} backend)",
                config.display(),
                cfg.ports.len(),
                routes,
                cfg.dataplane.workers.len(),
                cfg.dataplane.placement,
                cfg.dataplane.backend
            );
            Ok(())
        }
        Cmd::Preflight { config } => {
            let cfg = Config::load(&config)?;
            let checks = router::preflight::run(&cfg, Path::new("/sys"), Path::new("/proc"));
            for c in &checks {
                println!(
                    "{:<24} {}{}",
                    c.what,
                    if c.ok { "" } else { "FAILED: " },
                    c.detail
                );
            }
            let failed = checks.iter().filter(|c| !c.ok).count();
            if failed > 0 {
                anyhow::bail!(
                    "{failed} preflight check(s) failed for {}",
                    config.display()
                );
            }
            Ok(())
        }
        Cmd::Run {
            config,
            workers,
            placement,
            io_cpu,
            socket,
            log_level,
            idle_sleep_max_us,
            eal,
        } => {
            let mut cfg = Config::load(&config)?;
            if let Some(w) = workers {
                cfg.dataplane.workers = w;
            }
            if let Some(p) = placement {
                cfg.dataplane.placement = if p == "split" {
                    Placement::Split
                } else {
                    Placement::RunToCompletion
                };
            }
            if io_cpu.is_some() {
                cfg.dataplane.io_cpu = io_cpu;
            }
            if let Some(s) = socket {
                cfg.admin.socket = s;
            }
            if let Some(l) = log_level {
                cfg.log.level = l;
            }
            if let Some(i) = idle_sleep_max_us {
                cfg.dataplane.idle_sleep_max_us = i;
            }
            cfg.eal.args.extend(eal);
            cfg.validate()?;
            if cfg.dataplane.huge_tables {
                reexec_with_huge_tables();
            }
            run(cfg)
        }
    }
}

/// glibc's tunable that has malloc advise transparent huge pages for its mappings (2.35+).
const HUGE_TABLES: &str = "glibc.malloc.hugetlb=1";

/// The lookup tables are plain heap allocations of tens of MiB (DIR-24-8's tbl24 alone is
/// 64 MiB) read at random: on 4 KiB pages most lookups also miss the TLB. glibc backs malloc's
/// mappings with transparent huge pages when [`HUGE_TABLES`] is set, and reads tunables only
/// when a program starts, so the router execs itself once with it (same PID, same arguments).
/// If that fails it runs on, with a warning.
fn reexec_with_huge_tables() {
    use std::os::unix::process::CommandExt;
    let cur = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if cur.contains("glibc.malloc.hugetlb") {
        return;
    }
    let value = if cur.is_empty() {
        HUGE_TABLES.to_string()
    } else {
        format!("{cur}:{HUGE_TABLES}")
    };
    let mut args = std::env::args_os();
    let err = match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe)
            .arg0(args.next().unwrap_or_default())
            .args(args)
            .env("GLIBC_TUNABLES", value)
            .exec(),
        Err(e) => e,
    };
    eprintln!("router: warning: could not re-execute with {HUGE_TABLES} ({err}); tables stay on 4 KiB pages");
}

/// Are the tables on transparent huge pages (for the start-up log)?
fn huge_tables_state() -> String {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|s| {
            let (_, rest) = s.split_once('[')?;
            Some(rest.split_once(']')?.0.to_string())
        })
        .unwrap_or_else(|| "unavailable".into());
    let tunable = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains(HUGE_TABLES));
    match (thp.as_str(), tunable) {
        ("always", _) | ("madvise", true) => format!("on (THP {thp})"),
        _ => format!(
            "off (THP {thp}, {HUGE_TABLES} {})",
            if tunable { "set" } else { "not set" }
        ),
    }
}

fn run(cfg: Config) -> Result<()> {
    let filter = EnvFilter::try_new(&cfg.log.level).context("log.level")?;
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_target(false))
        .init();
    let set_level: router::LogLevelSetter = Box::new(move |lvl: &str| {
        let f = EnvFilter::try_new(lvl).map_err(|e| format!("bad log level {lvl:?}: {e}"))?;
        handle.reload(f).map_err(|e| e.to_string())
    });

    tracing::info!(
        "huge-page tables: {}",
        if cfg.dataplane.huge_tables {
            huge_tables_state()
        } else {
            "off (dataplane.huge_tables = false)".into()
        }
    );
    let stop = Arc::new(AtomicBool::new(false));
    // SIGINT and SIGTERM stop the router; SIGHUP reloads its config file.
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing the stop handler")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, router::reload_flag())
        .context("installing the SIGHUP handler")?;
    if let Some(cpu) = cfg.dataplane.mgmt_cpu {
        if cfg.dataplane.pin {
            core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
        }
    }

    match cfg.dataplane.backend {
        BackendKind::Soft => {
            let mut specs = Vec::new();
            for (i, p) in cfg.ports.iter().enumerate() {
                let mac = match &p.mac {
                    Some(m) => m.parse().map_err(|_| anyhow::anyhow!("ports[{i}].mac"))?,
                    None => packet::ethernet::EthernetAddress([0x02, 0, 0, 0, 0, i as u8 + 1]),
                };
                let spec = if p.device == "pcap" {
                    SoftPortSpec::Pcap {
                        rx: p.rx_pcap.clone(),
                        tx: p.tx_pcap.clone(),
                    }
                } else {
                    SoftPortSpec::Memory(Arc::new(Wire::default()))
                };
                specs.push((p.name.clone(), mac, spec));
            }
            // One RX queue per run-to-completion worker, frames spread by flow.
            let queues = match cfg.dataplane.placement {
                router::config::Placement::RunToCompletion => cfg.dataplane.workers.len(),
                router::config::Placement::Split => 1,
            };
            let be =
                Arc::new(SoftBackend::with_rx_queues(specs, queues).context("opening pcap ports")?);
            router::run(cfg, be, stop, set_level, || {})?;
        }
        BackendKind::Dpdk => run_dpdk(cfg, stop, set_level)?,
    }
    Ok(())
}

#[cfg(feature = "dpdk")]
fn run_dpdk(cfg: Config, stop: Arc<AtomicBool>, set_level: router::LogLevelSetter) -> Result<()> {
    let be = Arc::new(router::port::dpdk::DpdkBackend::init(&cfg)?);
    router::run(cfg, be, stop, set_level, || {})?;
    Ok(())
}

#[cfg(not(feature = "dpdk"))]
fn run_dpdk(_: Config, _: Arc<AtomicBool>, _: router::LogLevelSetter) -> Result<()> {
    use anyhow::bail;
    bail!("dataplane.backend = \"dpdk\" but this build has no DPDK: rebuild with the default features (apt-get install libdpdk-dev)")
}
