//! A router on in-memory wires for tests: the full engine (workers, management core, admin
//! socket) with the soft backend.
#![allow(dead_code)]

use packet::ethernet::EthernetAddress;
use router::admin::{AdminClient, Request};
use router::config::Config;
use router::port::soft::{SoftBackend, SoftPortSpec, Wire};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Harness {
    pub wires: Vec<Arc<Wire>>,
    pub socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

static N: AtomicUsize = AtomicUsize::new(0);

pub fn mac(s: &str) -> EthernetAddress {
    s.parse().unwrap()
}

/// The dataplane of every engine test: one soft worker, unpinned, a short idle back-off.
macro_rules! soft_dataplane {
    () => {
        "
[dataplane]
backend = \"soft\"
workers = [0]
pin = false
idle_sleep_max_us = 100
"
    };
}

/// [`soft_dataplane!`] for tests with ports of their own.
#[allow(dead_code)]
pub const SOFT_DATAPLANE: &str = soft_dataplane!();

/// The usual test router: one soft worker, port 0 "lan" (10.0.1.1/24, MAC 02:bb:00:00:00:01)
/// and port 1 "wan" (10.0.2.1/24, MAC 02:bb:00:00:00:02) on in-memory wires.
pub const LAN_WAN: &str = concat!(
    soft_dataplane!(),
    r#"[[ports]]
name = "lan"
device = "memory"
mac = "02:bb:00:00:00:01"
addresses = ["10.0.1.1/24"]
[[ports]]
name = "wan"
device = "memory"
mac = "02:bb:00:00:00:02"
addresses = ["10.0.2.1/24"]
"#
);

/// `ROUTER_TEST_LAYOUT` runs a suite written for one worker on another worker layout:
/// `rtc2` (two run-to-completion workers) or `split` (an I/O core and two workers). A test
/// that configures its own workers keeps them.
fn layout_from_env(cfg: &mut Config) {
    let Ok(layout) = std::env::var("ROUTER_TEST_LAYOUT") else {
        return;
    };
    let d = &cfg.dataplane;
    if d.workers != [0] || d.placement != router::config::Placement::RunToCompletion {
        return;
    }
    let mut other = cfg.clone();
    let d = &mut other.dataplane;
    match layout.as_str() {
        "rtc2" => d.workers = vec![0, 1],
        "split" => {
            d.placement = router::config::Placement::Split;
            d.workers = vec![0, 1];
        }
        "" | "rtc1" => {}
        other => panic!("ROUTER_TEST_LAYOUT={other}: rtc1, rtc2 or split"),
    }
    match other.validate() {
        Ok(()) => *cfg = other,
        Err(e) => println!("ROUTER_TEST_LAYOUT={layout} refused by this config ({e}): one worker"),
    }
}

impl Harness {
    /// [`LAN_WAN`] plus `extra` TOML (routes, neighbours, applications).
    pub fn lan_wan(extra: &str) -> Harness {
        Harness::start(&format!("{LAN_WAN}{extra}"))
    }

    /// Start a router from TOML (ports must use `device = "memory"`, MACs given).
    pub fn start(toml_text: &str) -> Harness {
        let dir = std::env::temp_dir().join(format!(
            "router-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("admin.sock");
        let mut cfg = Config::parse(toml_text).unwrap();
        cfg.admin.socket = socket.clone();
        layout_from_env(&mut cfg);
        // The effective config is also the router's file (`Harness::config_file`), which a
        // reload reads again.
        let file = dir.join("router.toml");
        std::fs::write(&file, toml::to_string(&cfg).unwrap()).unwrap();
        let cfg = Config::load(&file).unwrap();
        let wires: Vec<Arc<Wire>> = cfg
            .ports
            .iter()
            .map(|_| Arc::new(Wire::default()))
            .collect();
        let specs = cfg
            .ports
            .iter()
            .zip(&wires)
            .map(|(p, w)| {
                (
                    p.name.clone(),
                    mac(p.mac.as_deref().unwrap()),
                    SoftPortSpec::Memory(w.clone()),
                )
            })
            .collect();
        let queues = match cfg.dataplane.placement {
            router::config::Placement::RunToCompletion => cfg.dataplane.workers.len(),
            router::config::Placement::Split => 1,
        };
        let be = Arc::new(SoftBackend::with_rx_queues(specs, queues).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            router::run(cfg, be, s, Box::new(|_| Ok(())), move || {
                let _ = ready_tx.send(());
            })
            .unwrap();
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("router did not start");
        Harness {
            wires,
            socket,
            stop,
            thread: Some(thread),
            dir,
        }
    }

    /// The router's config file (the effective config of [`Harness::start`]).
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("router.toml")
    }

    pub fn inject(&self, port: usize, frame: &[u8]) {
        self.wires[port].inject(frame);
    }

    /// Wait until `port` transmitted `n` frames (or the timeout), and take them.
    pub fn expect_tx(&self, port: usize, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            got.extend(self.wires[port].take());
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(
            got.len(),
            n,
            "port {port} sent {} frames, expected {n}",
            got.len()
        );
        got
    }

    /// Give the router time to act, then assert a port sent nothing.
    pub fn expect_silence(&self, port: usize) {
        std::thread::sleep(Duration::from_millis(100));
        let got = self.wires[port].take();
        assert!(
            got.is_empty(),
            "port {port} sent {} unexpected frames",
            got.len()
        );
    }

    pub fn admin(&self) -> AdminClient {
        AdminClient::connect(&self.socket).unwrap()
    }

    pub fn call(&self, req: Request) -> serde_json::Value {
        let r = self.admin().call(&req).unwrap();
        assert!(r.ok, "{req:?} failed: {:?}", r.error);
        r.data
    }

    /// Sum of a drop counter of the ipv4 stage over every core.
    pub fn drops(&self, reason: &str) -> u64 {
        self.stage_drops("ipv4", reason)
    }

    /// Sum of a drop counter of stage `stage` over every core.
    pub fn stage_drops(&self, stage: &str, reason: &str) -> u64 {
        self.stage_count(stage, "drops", reason)
    }

    /// Sum of a punt counter of stage `stage` over every core.
    pub fn stage_punts(&self, stage: &str, reason: &str) -> u64 {
        self.stage_count(stage, "punts", reason)
    }

    /// Sum of stage `stage`'s counter `reason` of `kind` ("drops" or "punts") over every core.
    pub fn stage_count(&self, stage: &str, kind: &str, reason: &str) -> u64 {
        let s = self.call(Request::Stats);
        s["cores"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["stages"].as_array().unwrap().iter())
            .filter(|st| st["name"] == stage)
            .flat_map(|st| st[kind].as_array().unwrap().iter())
            .filter(|p| p[0] == reason)
            .map(|p| p[1].as_u64().unwrap())
            .sum()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
