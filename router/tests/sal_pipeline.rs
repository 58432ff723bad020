//! Serval service routing through the whole engine (soft ports): the original router's
//! forwarded SYN byte for byte, registrations from hosts, the DELAY queue, weights and rule
//! changes through the admin socket.

mod common;

use common::{mac, Harness, SOFT_DATAPLANE};
use packet::ethernet::EthernetAddress;
use router::admin::Request;
use sal_forward::ctrlmsg::{self, Register};
use sal_forward::id::ServiceId;
use sal_forward::wire::{self, flags, Control, SalRepr};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
const ROUTER_C: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
const ROUTER_S: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
const A: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 3);

/// The capture's router: its MACs, the instance's MAC as a static neighbour.
fn harness(extra: &str) -> Harness {
    Harness::start(&format!(
        r#"{SOFT_DATAPLANE}
[[ports]]
name = "clients"
device = "memory"
mac = "66:59:d9:46:45:a4"
addresses = ["10.77.1.1/24"]
[[ports]]
name = "servers"
device = "memory"
mac = "2e:0b:0d:24:a4:3a"
addresses = ["10.77.2.1/24"]
[[static_neighbours]]
port = "servers"
address = "10.77.2.2"
mac = "f6:7b:b5:83:05:dd"
[[static_neighbours]]
port = "servers"
address = "10.77.2.3"
mac = "f6:7b:b5:83:05:de"
[[static_neighbours]]
port = "clients"
address = "10.77.1.2"
mac = "92:7d:37:ca:ca:19"
{extra}
"#
    ))
}

fn capture(name: &str) -> Vec<Vec<u8>> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sal-forward/tests/fixtures")
        .join(name);
    packet::pcap::read_file(p)
        .unwrap()
        .into_iter()
        .map(|r| r.data)
        .collect()
}

fn eth(dst: EthernetAddress, src: EthernetAddress, ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(ip);
    f
}

/// A SYN from `src` (flow `flow`) to serviceID `id`, sent to the router at `to`.
fn syn(src: Ipv4Addr, to: Ipv4Addr, id: u32, flow: u32) -> Vec<u8> {
    let sal = SalRepr {
        src_flow: flow,
        dst_flow: 0,
        protocol: 6,
        control: Some(Control {
            flags: flags::SYN,
            verno: 1000 + flow,
            ackno: 0,
            nonce: [7; 8],
        }),
        service: Some(ServiceId::from_u32(id)),
        ..SalRepr::default()
    };
    let mut tcp = [0u8; 20];
    tcp[4..8].copy_from_slice(&(5000 + flow).to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&1024u16.to_be_bytes());
    let ip = wire::datagram(src, to, 64, &sal, &tcp);
    eth(mac("66:59:d9:46:45:a4"), mac("92:7d:37:ca:ca:19"), &ip)
}

/// A host's REGISTER (or UNREGISTER) of `id` as the original daemon sends it: a Serval UDP
/// datagram from serviceID 55555 to 88888.
fn register(host: Ipv4Addr, id: u32, unregister: bool) -> Vec<u8> {
    let msg = Register {
        unregister,
        xid: 1,
        flags: 0,
        prefix_bits: 32,
        service_flags: 0,
        old_addr: Ipv4Addr::UNSPECIFIED,
        id: ServiceId::from_u32(id),
    }
    .emit();
    let sal = SalRepr {
        src_flow: 1,
        protocol: 17,
        service: Some(ServiceId::from_u32(ctrlmsg::ROUTER_SERVICE)),
        src_service: Some(ServiceId::from_u32(ctrlmsg::HOST_SERVICE)),
        ..SalRepr::default()
    };
    let mut udp = vec![0u8; 8 + msg.len()];
    let len = udp.len() as u16;
    udp[4..6].copy_from_slice(&len.to_be_bytes());
    udp[8..].copy_from_slice(&msg);
    let ip = wire::datagram(host, ROUTER_S, 64, &sal, &udp);
    eth(mac("2e:0b:0d:24:a4:3a"), mac("f6:7b:b5:83:05:dd"), &ip)
}

/// The IP destination of a frame.
fn dst(f: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(f[30], f[31], f[32], f[33])
}

fn sal_stats(h: &Harness) -> serde_json::Value {
    h.call(Request::SalStats)
}

#[test]
fn golden_syn_through_the_engine() {
    let h = harness(
        r#"[sal]
[[sal.rules]]
prefix = "16385"
action = "forward"
targets = ["10.77.2.2"]
"#,
    );
    let client = capture("serval-sr-client-side.pcap");
    let server = capture("serval-sr-server-side.pcap");
    h.inject(0, &client[0]);
    let out = h.expect_tx(1, 1);
    assert_eq!(
        out[0], server[0],
        "the original router's frame, MACs included"
    );
    // The SYN-ACK comes back host to host: plain IP routing.
    h.inject(1, &server[1]);
    let back = h.expect_tx(0, 1);
    assert_eq!(back[0][14..], client[1][14..]);
    let list = h.call(Request::SalRuleList { limit: None });
    let r = &list["rules"].as_array().unwrap()[0];
    assert_eq!(
        (r["prefix"].as_str(), r["packets"].as_u64()),
        (Some("16385/32"), Some(1))
    );
    assert_eq!(sal_stats(&h)["stage"]["forwarded"], 1);
}

#[test]
fn weights_and_rule_changes() {
    let h = harness("[sal]\n");
    h.call(Request::SalRuleAdd {
        prefix: "7000".into(),
        action: "forward".into(),
        targets: vec!["10.77.2.2:3".into(), "10.77.2.3:1".into()],
        priority: 0,
        mode: None,
    });
    let n = 400;
    for i in 0..n {
        h.inject(0, &syn(CLIENT, ROUTER_C, 7000, i + 1));
    }
    let out = h.expect_tx(1, n as usize);
    let to_a = out.iter().filter(|f| dst(f) == A).count();
    eprintln!("3:1 weights: {to_a} of {n} SYNs to A");
    assert!((260..=340).contains(&to_a), "{to_a} of {n}");
    // Without A's target every new SYN goes to B.
    h.call(Request::SalRuleDel {
        prefix: "7000".into(),
        priority: None,
        target: Some(A),
    });
    for i in 0..50 {
        h.inject(0, &syn(CLIENT, ROUTER_C, 7000, 1000 + i));
    }
    assert!(h.expect_tx(1, 50).iter().all(|f| dst(f) == B));
    // A DROP rule of higher priority takes over; no rule: a SYN is dropped, counted.
    h.call(Request::SalRuleAdd {
        prefix: "7000".into(),
        action: "drop".into(),
        targets: vec![],
        priority: 9,
        mode: None,
    });
    h.inject(0, &syn(CLIENT, ROUTER_C, 7000, 2000));
    h.inject(0, &syn(CLIENT, ROUTER_C, 7001, 2001));
    h.expect_silence(1);
    assert_eq!(h.stage_drops("sal", "drop-rule"), 1);
    assert_eq!(h.stage_drops("sal", "no-match"), 1);
    let bad = h.admin().call(&Request::SalRuleAdd {
        prefix: "7000".into(),
        action: "forward".into(),
        targets: vec![],
        priority: 0,
        mode: None,
    });
    assert!(
        !bad.unwrap().ok,
        "a forward rule without targets is refused"
    );
}

#[test]
fn registration_delay_and_expiry() {
    let h = harness(
        r#"[sal]
registration_ttl_secs = 1
delay_timeout_ms = 5000
[[sal.rules]]
prefix = "0/0"
action = "delay"
"#,
    );
    // Nothing registered: the SYN waits in the DELAY queue.
    h.inject(0, &syn(CLIENT, ROUTER_C, 16385, 1));
    h.expect_silence(1);
    let d = h.call(Request::SalDelayed);
    assert_eq!(d["delayed"].as_array().unwrap().len(), 1, "{d}");
    // A host registers the service: the delayed SYN goes to it.
    h.inject(1, &register(B, 16385, false));
    let out = h.expect_tx(1, 1);
    assert_eq!(dst(&out[0]), B);
    let regs = h.call(Request::SalRegistrations);
    assert_eq!(regs["registrations"][0]["address"], "10.77.2.3", "{regs}");
    // Next SYNs go straight through.
    h.inject(0, &syn(CLIENT, ROUTER_C, 16385, 2));
    assert_eq!(dst(&h.expect_tx(1, 1)[0]), B);
    // No refresh: after the TTL the registration and its rule expire (back to DELAY).
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.call(Request::SalRegistrations)["registrations"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        assert!(Instant::now() < deadline, "the registration did not expire");
        std::thread::sleep(Duration::from_millis(100));
    }
    h.inject(0, &syn(CLIENT, ROUTER_C, 16385, 3));
    h.expect_silence(1);
    let s = sal_stats(&h);
    assert_eq!(s["controller"]["registers"], 1, "{s}");
    assert_eq!(s["controller"]["expired"], 1, "{s}");
    assert_eq!(s["delay"]["released"], 1, "{s}");
    // UNREGISTER removes at once.
    h.inject(1, &register(A, 16385, false));
    std::thread::sleep(Duration::from_millis(300));
    let out = h.expect_tx(1, 1);
    assert_eq!(
        dst(&out[0]),
        A,
        "the second delayed SYN is released to the new host"
    );
    h.inject(1, &register(A, 16385, true));
    std::thread::sleep(Duration::from_millis(100));
    assert!(h.call(Request::SalRegistrations)["registrations"]
        .as_array()
        .unwrap()
        .is_empty());
}

/// FORWARD to all targets: the management core sends a copy to each. A datagram without a
/// matching rule gets the original's RST back.
#[test]
fn copies_to_all_and_rst() {
    let h = harness(
        r#"[sal]
[[sal.rules]]
prefix = "9000"
action = "forward"
targets = ["10.77.2.2", "10.77.2.3"]
mode = "all"
"#,
    );
    h.inject(0, &syn(CLIENT, ROUTER_C, 9000, 1));
    let mut got: Vec<Ipv4Addr> = h.expect_tx(1, 2).iter().map(|f| dst(f)).collect();
    got.sort();
    assert_eq!(got, [A, B], "one copy per target");
    // A connectionless datagram to an unknown service: RST back to the sender.
    let sal = SalRepr {
        src_flow: 77,
        protocol: 17,
        service: Some(ServiceId::from_u32(4321)),
        src_service: Some(ServiceId::from_u32(1)),
        ..SalRepr::default()
    };
    let ip = wire::datagram(CLIENT, ROUTER_C, 64, &sal, &[0u8; 8]);
    h.inject(
        0,
        &eth(mac("66:59:d9:46:45:a4"), mac("92:7d:37:ca:ca:19"), &ip),
    );
    let back = h.expect_tx(0, 1);
    assert_eq!(dst(&back[0]), CLIENT);
    let (r, _) = SalRepr::parse(&back[0][34..]).unwrap();
    assert_eq!(r.control.map(|c| c.flags), Some(flags::RST));
    assert_eq!((r.src_flow, r.dst_flow), (0, 77));
    assert_eq!(sal_stats(&h)["rst_sent"], 1);
}
