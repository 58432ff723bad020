//! Serval service routing through the whole engine (soft ports): the original router's
//! forwarded SYN byte for byte, registrations from hosts, the DELAY queue, weights and rule
//! changes through the admin socket.

mod common;

use common::{mac, Harness, SOFT_DATAPLANE};
use packet::ethernet::EthernetAddress;
use router::admin::Request;
use router::apps::AppRequest;
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

/// A control message in a Serval UDP datagram from serviceID `from_service` to 88888, as the
/// original daemons send it, arriving on the servers' port.
fn control_frame(src: Ipv4Addr, from_service: u32, msg: &[u8]) -> Vec<u8> {
    control_frame_to(src, ROUTER_S, mac("2e:0b:0d:24:a4:3a"), from_service, msg)
}

/// [`control_frame`] to `dst` (a broadcast address, say) at Ethernet address `dst_mac`.
fn control_frame_to(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dst_mac: EthernetAddress,
    from_service: u32,
    msg: &[u8],
) -> Vec<u8> {
    let sal = SalRepr {
        src_flow: 1,
        protocol: 17,
        service: Some(ServiceId::from_u32(ctrlmsg::ROUTER_SERVICE)),
        src_service: Some(ServiceId::from_u32(from_service)),
        ..SalRepr::default()
    };
    let mut udp = vec![0u8; 8 + msg.len()];
    let len = udp.len() as u16;
    udp[4..6].copy_from_slice(&len.to_be_bytes());
    udp[8..].copy_from_slice(msg);
    let ip = wire::datagram(src, dst, 64, &sal, &udp);
    eth(dst_mac, mac("f6:7b:b5:83:05:dd"), &ip)
}

/// A host's REGISTER (or UNREGISTER) of `id` as the original daemon sends it.
fn register(host: Ipv4Addr, id: u32, unregister: bool) -> Vec<u8> {
    control_frame(
        host,
        ctrlmsg::HOST_SERVICE,
        register_msg(id, unregister).as_ref(),
    )
}

/// The control message of [`register`].
fn register_msg(id: u32, unregister: bool) -> impl AsRef<[u8]> {
    Register {
        unregister,
        xid: 1,
        flags: 0,
        prefix_bits: 32,
        service_flags: 0,
        old_addr: Ipv4Addr::UNSPECIFIED,
        id: ServiceId::from_u32(id),
    }
    .emit()
}

/// The control message in a frame the router sent to another controller, after checking
/// the datagram: from the router's servers-side address, serviceID 88888 to 88888, valid SAL
/// and UDP checksums.
fn control_sent(f: &[u8], to: Ipv4Addr) -> Vec<u8> {
    let ip = packet::ipv4::Ipv4Packet::new_checked(&f[14..]).unwrap();
    assert_eq!(
        (ip.src_addr(), ip.dst_addr(), ip.protocol()),
        (ROUTER_S, to, 144)
    );
    assert!(ip.verify_checksum());
    let (r, hl) = SalRepr::parse(ip.payload()).unwrap();
    let ctl = Some(ServiceId::from_u32(ctrlmsg::ROUTER_SERVICE));
    assert_eq!((r.protocol, r.service, r.src_service), (17, ctl, ctl));
    let udp = &ip.payload()[hl..];
    assert_eq!(
        !packet::checksum::transport_sum(ROUTER_S.octets(), to.octets(), 17, udp),
        0,
        "UDP checksum"
    );
    udp[8..].to_vec()
}

/// The IP destination of a frame.
fn dst(f: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(f[30], f[31], f[32], f[33])
}

fn sal_stats(h: &Harness) -> serde_json::Value {
    h.call(Request::App(AppRequest::SalStats))
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
    let list = h.call(Request::App(AppRequest::SalRuleList { limit: None }));
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
    h.call(Request::App(AppRequest::SalRuleAdd {
        prefix: "7000".into(),
        action: "forward".into(),
        targets: vec!["10.77.2.2:3".into(), "10.77.2.3:1".into()],
        priority: 0,
        mode: None,
    }));
    let n = 400;
    for i in 0..n {
        h.inject(0, &syn(CLIENT, ROUTER_C, 7000, i + 1));
    }
    let out = h.expect_tx(1, n as usize);
    let to_a = out.iter().filter(|f| dst(f) == A).count();
    eprintln!("3:1 weights: {to_a} of {n} SYNs to A");
    assert!((260..=340).contains(&to_a), "{to_a} of {n}");
    // Without A's target every new SYN goes to B.
    h.call(Request::App(AppRequest::SalRuleDel {
        prefix: "7000".into(),
        priority: None,
        target: Some(A),
    }));
    for i in 0..50 {
        h.inject(0, &syn(CLIENT, ROUTER_C, 7000, 1000 + i));
    }
    assert!(h.expect_tx(1, 50).iter().all(|f| dst(f) == B));
    // A DROP rule of higher priority takes over; no rule: a SYN is dropped, counted.
    h.call(Request::App(AppRequest::SalRuleAdd {
        prefix: "7000".into(),
        action: "drop".into(),
        targets: vec![],
        priority: 9,
        mode: None,
    }));
    h.inject(0, &syn(CLIENT, ROUTER_C, 7000, 2000));
    h.inject(0, &syn(CLIENT, ROUTER_C, 7001, 2001));
    h.expect_silence(1);
    assert_eq!(h.stage_drops("sal", "drop-rule"), 1);
    assert_eq!(h.stage_drops("sal", "no-match"), 1);
    let bad = h.admin().call(&Request::App(AppRequest::SalRuleAdd {
        prefix: "7000".into(),
        action: "forward".into(),
        targets: vec![],
        priority: 0,
        mode: None,
    }));
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
    let d = h.call(Request::App(AppRequest::SalDelayed));
    assert_eq!(d["delayed"].as_array().unwrap().len(), 1, "{d}");
    // A host registers the service: the delayed SYN goes to it.
    h.inject(1, &register(B, 16385, false));
    let out = h.expect_tx(1, 1);
    assert_eq!(dst(&out[0]), B);
    let regs = h.call(Request::App(AppRequest::SalRegistrations));
    assert_eq!(regs["registrations"][0]["address"], "10.77.2.3", "{regs}");
    // Next SYNs go straight through.
    h.inject(0, &syn(CLIENT, ROUTER_C, 16385, 2));
    assert_eq!(dst(&h.expect_tx(1, 1)[0]), B);
    // No refresh: after the TTL the registration and its rule expire (back to DELAY).
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.call(Request::App(AppRequest::SalRegistrations))["registrations"]
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
    assert!(
        h.call(Request::App(AppRequest::SalRegistrations))["registrations"]
            .as_array()
            .unwrap()
            .is_empty()
    );
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

/// A leaf of a controller hierarchy (parent 10.77.2.9): its hosts' registrations go up as
/// pointer records; an unknown service is delayed and resolved through the parent
/// (iterative: a referral, then the controller it names), and the answer — cached as a rule —
/// releases the SYN; the parent's own request is answered from the registrations.
#[test]
fn hierarchy_leaf_resolves_through_its_parent() {
    use sal_forward::ctrlmsg::{Answer, Resolve, DELEGATE};
    const PARENT: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 9);
    let h = harness(
        r#"[[static_neighbours]]
port = "servers"
address = "10.77.2.9"
mac = "f6:7b:b5:83:05:df"
[sal]
[sal.hierarchy]
parent = "10.77.2.9"
mode = "iterative"
cache_secs = 60
"#,
    );
    // A host registers 3001: the router points its parent at itself.
    h.inject(1, &register(B, 3001, false));
    let up = Register::parse(&control_sent(&h.expect_tx(1, 1)[0], PARENT)).unwrap();
    assert_eq!(
        (up.unregister, up.flags, up.prefix_bits),
        (false, DELEGATE, 32)
    );
    assert_eq!(up.id, ServiceId::from_u32(3001));
    // A SYN for 4001, which nobody here knows: delayed (the default rule), and resolved.
    h.inject(0, &syn(CLIENT, ROUTER_C, 4001, 1));
    let q = Resolve::parse(&control_sent(&h.expect_tx(1, 1)[0], PARENT)).unwrap();
    assert_eq!(
        (q.answer, q.recursive, q.id),
        (None, false, ServiceId::from_u32(4001))
    );
    assert_eq!(
        h.call(Request::App(AppRequest::SalDelayed))["delayed"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The parent refers the router to controller A; the router asks A.
    let referral = Resolve {
        answer: Some(Answer::Referral),
        targets: vec![(A, 1)],
        ..q.clone()
    };
    h.inject(
        1,
        &control_frame(PARENT, ctrlmsg::ROUTER_SERVICE, &referral.emit()),
    );
    let q2 = Resolve::parse(&control_sent(&h.expect_tx(1, 1)[0], A)).unwrap();
    assert_eq!((q2.answer, q2.id, q2.hops), (None, q.id, 2));
    // A's answer: 4001/32 at 10.77.2.3. The delayed SYN goes there.
    let found = Resolve {
        answer: Some(Answer::Found),
        prefix_len: 32,
        lifetime_ms: 60_000,
        targets: vec![(B, 1)],
        ..q2.clone()
    };
    h.inject(1, &control_frame(A, ctrlmsg::ROUTER_SERVICE, &found.emit()));
    assert_eq!(dst(&h.expect_tx(1, 1)[0]), B);
    // The next SYN hits the cached rule: straight through, no message.
    h.inject(0, &syn(CLIENT, ROUTER_C, 4001, 2));
    let out = h.expect_tx(1, 1);
    assert_eq!(out.len(), 1, "only the SYN");
    assert_eq!(dst(&out[0]), B);
    let view = h.call(Request::App(AppRequest::SalHierarchy));
    assert_eq!(view["mode"], "iterative", "{view}");
    assert_eq!(view["cache"][0]["prefix"], "4001/32", "{view}");
    assert_eq!(view["cache"][0]["from"], "10.77.2.2", "{view}");
    let rs = &view["stats"];
    assert_eq!(
        (
            &rs["resolutions"],
            &rs["requests_sent"],
            &rs["referrals_received"],
            &rs["answers_received"]
        ),
        (&1.into(), &2.into(), &1.into(), &1.into()),
        "{view}"
    );
    let rules = h.call(Request::App(AppRequest::SalRuleList { limit: None }));
    let cached = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["prefix"] == "4001/32")
        .unwrap();
    // The released SYN (matched again by the management core) and the second one.
    assert_eq!(cached["packets"], 2, "the cached rule's packets: {rules}");
    // The parent asks (recursively) for 3001: answered from the registration.
    let ask = Resolve::request(77, ServiceId::from_u32(3001), true, 1);
    h.inject(
        1,
        &control_frame(PARENT, ctrlmsg::ROUTER_SERVICE, &ask.emit()),
    );
    let a = Resolve::parse(&control_sent(&h.expect_tx(1, 1)[0], PARENT)).unwrap();
    assert_eq!(
        (a.xid, a.answer, a.prefix_len),
        (77, Some(Answer::Found), 32)
    );
    assert_eq!(
        (a.targets.as_slice(), a.lifetime_ms),
        (&[(B, 1)][..], 60_000)
    );
    // The host unregisters: the pointer is withdrawn at the parent.
    h.inject(1, &register(B, 3001, true));
    let down = Register::parse(&control_sent(&h.expect_tx(1, 1)[0], PARENT)).unwrap();
    assert_eq!((down.unregister, down.flags), (true, DELEGATE));
}

/// A SYN whose IP header checksum is wrong is no service request: the Serval stage leaves it
/// (no rule hit, nothing forwarded) and the IPv4 stage drops it as a bad checksum.
#[test]
fn a_syn_with_a_bad_ip_checksum_changes_no_serval_state() {
    let h = harness("[sal]\n");
    h.call(Request::App(AppRequest::SalRuleAdd {
        prefix: "7000".into(),
        action: "forward".into(),
        targets: vec!["10.77.2.2".into()],
        priority: 0,
        mode: None,
    }));
    let mut f = syn(CLIENT, ROUTER_C, 7000, 1);
    f[14 + 10] ^= 0x01; // the IP header checksum
    h.inject(0, &f);
    h.expect_silence(1);
    assert_eq!(h.drops("bad-checksum"), 1);
    let s = sal_stats(&h);
    assert_eq!(s["stage"]["forwarded"], 0, "{s}");
    let rules = h.call(Request::App(AppRequest::SalRuleList { limit: None }));
    assert_eq!(rules["rules"][0]["prefix"], "7000/32");
    assert_eq!(
        rules["rules"][0]["packets"], 0,
        "the rule counted the packet: {rules}"
    );
    // The same SYN intact is forwarded.
    h.inject(0, &syn(CLIENT, ROUTER_C, 7000, 1));
    assert_eq!(dst(&h.expect_tx(1, 1)[0]), A);
}

/// A host's service daemon whose default rule is the per-interface broadcast one (the
/// original stack's own default) sends REGISTER to its subnet's broadcast address, or to the
/// limited broadcast: the router takes it as a unicast registration and sends nothing back
/// onto the link (no forwarding back, no ICMP error).
#[test]
fn a_registration_by_broadcast_works_like_a_unicast_one() {
    let h = harness("[sal]\n");
    let msg = |id: u32| register_msg(id, false);
    let bcast = EthernetAddress::BROADCAST;
    let directed = Ipv4Addr::new(10, 77, 2, 255);
    h.inject(
        1,
        &control_frame_to(
            A,
            directed,
            bcast,
            ctrlmsg::HOST_SERVICE,
            msg(4001).as_ref(),
        ),
    );
    h.inject(
        1,
        &control_frame_to(
            B,
            Ipv4Addr::BROADCAST,
            bcast,
            ctrlmsg::HOST_SERVICE,
            msg(4002).as_ref(),
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let regs = loop {
        let r = h.call(Request::App(AppRequest::SalRegistrations));
        if r["registrations"].as_array().is_some_and(|a| a.len() == 2) || Instant::now() > deadline
        {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut got: Vec<String> = regs["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, ["10.77.2.2", "10.77.2.3"], "{regs}");
    h.expect_silence(1);
    h.expect_silence(0);
    let s = h.call(Request::Stats);
    assert_eq!(s["mgmt"]["broadcast_in"], 2, "{}", s["mgmt"]);
    assert_eq!(s["mgmt"]["punts"]["broadcast"], 2, "{}", s["mgmt"]);
    // The registrations route like unicast ones: a SYN for 4001 goes to A.
    h.inject(0, &syn(CLIENT, ROUTER_C, 4001, 9));
    assert_eq!(dst(&h.expect_tx(1, 1)[0]), A);
}

/// Where the router sent a SYN for serviceID `id` (None: nowhere).
fn syn_goes_to(h: &Harness, id: u32, flow: u32) -> Option<Ipv4Addr> {
    h.inject(0, &syn(CLIENT, ROUTER_C, id, flow));
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        if let Some(f) = h.wires[1].take().first() {
            return Some(
                packet::ipv4::Ipv4Packet::new_checked(&f[14..])
                    .unwrap()
                    .dst_addr(),
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

#[test]
fn config_rules_follow_a_reload() {
    let h = harness(
        r#"[sal]
[[sal.rules]]
prefix = "16385"
action = "forward"
targets = ["10.77.2.2"]
[[sal.rules]]
prefix = "16386"
action = "forward"
targets = ["10.77.2.2"]
"#,
    );
    assert_eq!(syn_goes_to(&h, 16385, 1), Some(A));
    assert_eq!(syn_goes_to(&h, 16386, 2), Some(A));
    // A rule of routerctl's own: a reload leaves it.
    let r = h.call(Request::App(AppRequest::SalRuleAdd {
        prefix: "16387".into(),
        action: "forward".into(),
        targets: vec!["10.77.2.3".into()],
        priority: 0,
        mode: None,
    }));
    assert_eq!(r["prefix"], "16387/32");

    // The file now sends 16385 to B, drops its rule for 16386 and adds one for 16388.
    let file = h.config_file();
    let mut cfg: toml::Value = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let rules: toml::Value = toml::from_str(
        r#"[[rules]]
prefix = "16385"
action = "forward"
targets = ["10.77.2.3"]
[[rules]]
prefix = "16388"
action = "forward"
targets = ["10.77.2.2"]
"#,
    )
    .unwrap();
    cfg["sal"]["rules"] = rules["rules"].clone();
    let edited = toml::to_string(&cfg).unwrap();
    std::fs::write(&file, &edited).unwrap();
    let r = h.admin().call(&Request::Reload).unwrap();
    assert!(r.ok, "{:?}", r.error);
    let s = &r.data["sal"];
    assert_eq!(
        (&s["rules_added"], &s["rules_changed"], &s["rules_removed"]),
        (&1.into(), &1.into(), &1.into()),
        "{s}"
    );
    assert_eq!(syn_goes_to(&h, 16385, 3), Some(B));
    assert_eq!(
        syn_goes_to(&h, 16386, 4),
        None,
        "its rule went with the file's"
    );
    assert_eq!(syn_goes_to(&h, 16388, 5), Some(A));
    assert_eq!(syn_goes_to(&h, 16387, 6), Some(B), "routerctl's rule stays");

    // A rule that does not parse: refused, nothing changed.
    std::fs::write(&file, edited.replacen("\"forward\"", "\"fly\"", 1)).unwrap();
    let r = h.admin().call(&Request::Reload).unwrap();
    assert!(!r.ok);
    let e = r.error.unwrap();
    assert!(e.contains("fly") && e.contains("nothing changed"), "{e}");
    assert_eq!(syn_goes_to(&h, 16385, 7), Some(B));
    // Other keys of the section still need a restart.
    cfg["sal"]["max_rules"] = 4096.into();
    std::fs::write(&file, toml::to_string(&cfg).unwrap()).unwrap();
    let r = h.admin().call(&Request::Reload).unwrap();
    let e = r.error.unwrap();
    assert!(e.starts_with("sal.max_rules changed"), "{e}");
}
