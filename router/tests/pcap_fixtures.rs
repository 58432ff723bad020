//! Pcap in, pcap out (Click's `.clicktest` idea): `fixtures/ipv4-in.pcap` is replayed into the
//! router's `lan` port (soft pcap ports, the whole engine), and what each port transmits is
//! compared with `fixtures/ipv4-expected-PORT.pcap`. Set UPDATE_FIXTURES=1 to rewrite the
//! expected files after an intended change (and review the diff with tshark).
//!
//! The input is the Linux capture (ARP request, echo to the router, echo with TTL 1, UDP to an
//! unrouted address) plus forwarded traffic and malformed frames; neighbours are static so the
//! output does not depend on ARP timing.

use packet::pcap;
use router::config::Config;
use router::port::soft::{SoftBackend, SoftPortSpec};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Build the input: real frames plus a forwarded and a malformed variant of them.
fn input() -> Vec<Vec<u8>> {
    let cap: Vec<Vec<u8>> = pcap::read_file(fixture("linux-ping.pcap"))
        .unwrap()
        .into_iter()
        .map(|r| r.data)
        .collect();
    let mut frames = vec![
        cap[0].clone(),
        cap[2].clone(),
        cap[4].clone(),
        cap[5].clone(),
    ];
    // Echo to 198.51.100.7 with TTL 64: forwarded to the wan gateway.
    let mut fwd = cap[4].clone();
    fwd[22] = 64;
    fwd[24..26].copy_from_slice(&[0, 0]);
    let ck = packet::checksum::checksum(&fwd[14..34]);
    fwd[24..26].copy_from_slice(&ck.to_be_bytes());
    frames.push(fwd.clone());
    // Bad IP checksum, truncated: dropped.
    let mut bad = fwd.clone();
    bad[24] ^= 0x55;
    frames.push(bad);
    frames.push(fwd[..30].to_vec());
    frames
}

fn run(dir: &std::path::Path) -> Vec<Vec<Vec<u8>>> {
    let input_path = dir.join("in.pcap");
    let f = std::io::BufWriter::new(std::fs::File::create(&input_path).unwrap());
    let mut w = pcap::Writer::new(f, pcap::LINKTYPE_ETHERNET).unwrap();
    for (i, fr) in input().iter().enumerate() {
        w.write(i as u64 * 1000, fr).unwrap();
    }
    w.finish().unwrap();
    let cfg = Config::parse(&format!(
        r#"
[dataplane]
backend = "soft"
pin = false
[[ports]]
name = "lan"
device = "pcap"
mac = "02:bb:00:00:00:01"
addresses = ["10.0.1.1/24"]
[[ports]]
name = "wan"
device = "pcap"
mac = "02:bb:00:00:00:02"
addresses = ["10.0.2.1/24"]
[[routes]]
prefix = "198.51.100.0/29"
via = "10.0.2.2"
[[static_neighbours]]
port = "lan"
address = "10.0.1.2"
mac = "02:aa:00:00:00:01"
[[static_neighbours]]
port = "wan"
address = "10.0.2.2"
mac = "02:cc:00:00:00:01"
[admin]
socket = "{}"
"#,
        dir.join("admin.sock").display()
    ))
    .unwrap();
    let outs = [dir.join("lan.pcap"), dir.join("wan.pcap")];
    let be = Arc::new(
        SoftBackend::new(vec![
            (
                "lan".into(),
                "02:bb:00:00:00:01".parse().unwrap(),
                SoftPortSpec::Pcap {
                    rx: Some(input_path),
                    tx: Some(outs[0].clone()),
                },
            ),
            (
                "wan".into(),
                "02:bb:00:00:00:02".parse().unwrap(),
                SoftPortSpec::Pcap {
                    rx: None,
                    tx: Some(outs[1].clone()),
                },
            ),
        ])
        .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (s, be2) = (stop.clone(), be.clone());
    let t =
        std::thread::spawn(move || router::run(cfg, be2, s, Box::new(|_| Ok(())), || {}).unwrap());
    // Run until the output stops growing.
    use router::port::Backend;
    let mut last = (0, Instant::now());
    while last.1.elapsed() < Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(20));
        let n: u64 = (0..2)
            .filter_map(|p| be.driver_stats(p))
            .map(|d| d.opackets)
            .sum();
        if n != last.0 {
            last = (n, Instant::now());
        }
    }
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
    outs.iter()
        .map(|p| {
            let mut v: Vec<Vec<u8>> = pcap::read_file(p)
                .unwrap()
                .into_iter()
                .map(|r| r.data)
                .collect();
            v.sort(); // management-core output may interleave with the fast path's
            v
        })
        .collect()
}

#[test]
fn ipv4_pcap_in_pcap_out() {
    let dir = std::env::temp_dir().join(format!("router-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let got = run(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    for (port, frames) in ["lan", "wan"].iter().zip(&got) {
        let path = fixture(&format!("ipv4-expected-{port}.pcap"));
        if std::env::var_os("UPDATE_FIXTURES").is_some() {
            let f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            let mut w = pcap::Writer::new(f, pcap::LINKTYPE_ETHERNET).unwrap();
            for (i, fr) in frames.iter().enumerate() {
                w.write(i as u64 * 1000, fr).unwrap();
            }
            w.finish().unwrap();
            continue;
        }
        let mut want: Vec<Vec<u8>> = pcap::read_file(&path)
            .unwrap()
            .into_iter()
            .map(|r| r.data)
            .collect();
        want.sort();
        assert_eq!(frames.len(), want.len(), "{port}: frame count");
        for (i, (g, w)) in frames.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{port}: frame {i} differs");
        }
    }
    // lan: ARP reply, echo reply, time exceeded, net unreachable; wan: the forwarded echo.
    assert_eq!(got[0].len(), 4);
    assert_eq!(got[1].len(), 1);
}
