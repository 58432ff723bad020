//! The metrics endpoint of a running router: scraped over real HTTP on loopback, its numbers
//! the admin socket's. (The smoke test `ipv4_test.sh` parses a scrape of the DPDK router with
//! the Prometheus project's OpenMetrics parser.)

mod common;

use common::{mac, Harness};
use router::admin::Request;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};

fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// The value of the sample line that starts with `prefix` (name and labels).
fn sample(body: &str, prefix: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{body}"))
}

/// The sum of the samples of `name` whose labels include `labels` (over every core).
fn sum(body: &str, name: &str, labels: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

#[test]
fn scrape_shows_the_admin_socket_counters() {
    let h = Harness::lan_wan("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let url = h.call(Request::Status)["metrics"]
        .as_str()
        .expect("status names the endpoint")
        .to_string();
    let addr = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/metrics"))
        .unwrap();
    // Three frames from the lan to the wan, counted received on the lan; the one with TTL 1
    // is punted for its ICMP time exceeded.
    for ttl in [64, 64, 1] {
        let mut f = packet::udp::frame(
            mac("02:aa:00:00:00:01"),
            mac("02:bb:00:00:00:01"),
            Ipv4Addr::new(10, 0, 1, 2),
            Ipv4Addr::new(10, 0, 2, 9),
            5000,
            9,
            b"hello",
        );
        let mut ip = packet::ipv4::Ipv4Packet::new_checked(&mut f[14..]).unwrap();
        ip.set_ttl(ttl);
        ip.fill_checksum();
        h.inject(0, &f);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let stats = h.call(Request::Stats);
    // Every packet went through one worker's pipeline (the vector counter). A poll that found
    // work is busy: at most one per frame (the three, and the ICMP error the management core
    // injects) on each core that handles it (split placement: the I/O core and a worker).
    let cores = stats["cores"].as_array().unwrap();
    let total = |k: &str| cores.iter().map(|c| c[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(total("vector_packets"), 3);
    let busy = total("busy_polls");
    assert!(
        busy >= 1 && busy <= 4 * cores.len() as u64,
        "{busy} busy polls"
    );
    assert!(total("timed_packets") <= 3 && total("timed_loops") <= total("busy_polls"));
    let (head, body) = get(addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"));
    assert!(body.contains("# TYPE router_port_rx_packets counter\n"));
    let rx = sample(
        &body,
        "router_port_rx_packets_total{port=\"lan\",device=\"memory\"}",
    );
    assert_eq!(rx, 3);
    assert_eq!(rx, stats["ports"][0]["rx"].as_u64().unwrap());
    let ttl = sum(
        &body,
        "router_stage_punts_total",
        "stage=\"ipv4\",reason=\"ttl-exceeded\"",
    );
    assert_eq!(ttl, 1, "{body}");
    assert_eq!(
        sum(&body, "router_stage_packets_total", "stage=\"ipv4\""),
        3
    );
    assert_eq!(
        sample(&body, "router_mgmt_punts_total{reason=\"ttl-exceeded\"}"),
        1
    );
    assert_eq!(
        sample(&body, "router_fib_routes"),
        stats["fib"]["routes"].as_u64().unwrap()
    );
    // Anything else is refused with a status, and the endpoint carries on.
    let (head, _) = get(addr, "/");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"POST /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    let (head, _) = get(addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
