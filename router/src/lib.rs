//! The packet engine: ports (DPDK ethdev, or pcap/in-memory for tests), lcores in either
//! placement, the IPv4 router stage, the management core, the admin socket, config and stats.
//!
//! `unsafe` lives only in `port::dpdk` (each block with a `// SAFETY:` comment).
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod apps;
pub mod cli;
pub mod config;
pub mod counters;
pub mod engine;
pub mod fib;
pub mod ipv4;
pub mod metrics;
pub mod mgmt;
pub mod port;
pub mod preflight;
pub mod qsbr;
pub mod reasm;
pub mod vlan;

use config::Config;
use engine::{Engine, Pipeline};
use fib::{Fib, FibSizes};
use ipv4::Ipv4Stage;
use mgmt::Mgmt;
use port::Backend;
use qsbr::Qsbr;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use thiserror::Error;

/// Why the router could not run.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("routes: {0}")]
    Routes(String),
    #[error("starting lcores: {0}")]
    Lcores(std::io::Error),
    #[error("admin socket {path}: {source}")]
    Admin {
        path: String,
        source: std::io::Error,
    },
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("port {port}: {msg}")]
    Port { port: String, msg: String },
    /// An application's tables could not be built from its section.
    #[error("{0}")]
    App(String),
}

/// Set by SIGHUP (the `router` binary registers it): the management core reloads the config
/// file at its next turn, as `routerctl reload` does. A signal is the process's, so is this.
pub fn reload_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

/// Changes the log filter at run time (`routerctl log-level`).
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send>;

/// Run the router on `backend` until `stop` is set; `ready` is called once the lcores and the
/// admin socket are up. Stops lcores cleanly and releases the ports before returning.
pub fn run<B: Backend>(
    cfg: Config,
    backend: Arc<B>,
    stop: Arc<AtomicBool>,
    set_log_level: LogLevelSetter,
    ready: impl FnOnce(),
) -> Result<(), RunError> {
    let workers = cfg.dataplane.workers.len();
    for (d, pc) in backend.ports().iter().zip(&cfg.ports) {
        if cfg.dataplane.placement == config::Placement::RunToCompletion
            && usize::from(d.rx_queues) < workers
        {
            return Err(RunError::Port {
                port: pc.name.clone(),
                msg: format!(
                    "{} RX queues for {workers} run-to-completion workers",
                    d.rx_queues
                ),
            });
        }
    }
    let qsbr = Arc::new(Qsbr::new(workers));
    let specs = cfg
        .initial_routes()
        .map_err(|e| RunError::Routes(e.to_string()))?;
    let tbl8_groups = cfg
        .tbl8_groups_for(&specs)
        .map_err(|e| RunError::Routes(e.to_string()))?;
    if cfg.fib.tbl8_groups.is_none() && tbl8_groups > config::TBL8_GROUPS_MIN {
        tracing::info!("fib.tbl8_groups sized from the routes: {tbl8_groups}");
    }
    let sizes = FibSizes {
        tbl8_groups,
        max_routes: cfg.fib.max_routes,
        max_next_hops: cfg.fib.max_next_hops,
    };
    let mut fib = Fib::new(sizes, qsbr.clone());
    let mut origins = HashMap::new();
    let config_routes = mgmt::config_routes(&specs);
    Mgmt::<B>::install_initial_routes(&cfg, specs, &mut fib, &mut origins)
        .map_err(RunError::Routes)?;
    let ports: Arc<[ipv4::PortInfo]> = mgmt::port_infos(&cfg, &*backend).into();
    let stage = Ipv4Stage::new(fib.view(), ports);
    let (admin_tx, admin_rx) = mpsc::channel();
    let admin = admin::AdminServer::start(
        &cfg.admin.socket,
        cfg.admin.group.as_deref(),
        admin_tx.clone(),
    )
    .map_err(|source| RunError::Admin {
        path: cfg.admin.socket.display().to_string(),
        source,
    })?;
    let metrics = cfg
        .metrics
        .listen
        .map(|addr| {
            metrics::MetricsServer::start(addr, admin_tx.clone())
                .map_err(|source| RunError::Metrics { addr, source })
        })
        .transpose()?;
    let clock = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let apps = apps::build(&cfg, workers).map_err(RunError::App)?;
    let pipeline = Pipeline::new(stage.clone(), apps::worker_apps(apps.stages), clock.clone());
    let (engine, rings) =
        Engine::start(&cfg, backend.clone(), pipeline, qsbr).map_err(RunError::Lcores)?;
    let cores = engine.counters.clone();
    let mut mgmt = Mgmt::new(
        clock,
        apps.mgmt,
        cfg,
        backend.clone(),
        fib,
        origins,
        stage,
        rings,
        cores,
        set_log_level,
    );
    tracing::info!(
        "router running: {} ports, {} workers",
        backend.ports().len(),
        workers
    );
    mgmt.metrics_addr = metrics.as_ref().map(metrics::MetricsServer::addr);
    mgmt.config_routes = config_routes;
    drop(admin_tx);
    ready();
    mgmt.run(&stop, &admin_rx);
    tracing::info!("stopping lcores");
    drop(metrics);
    drop(admin);
    engine.stop_and_join();
    // Packets still held by the management core go back to the pool before the ports close.
    drop(mgmt);
    backend.shutdown();
    tracing::info!("stopped");
    Ok(())
}
