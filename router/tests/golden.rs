//! Golden tests: real frames captured from the Linux stack (tests/fixtures/linux-ping.pcap)
//! through the whole engine on in-memory ports.
//!
//! Topology: host 10.0.1.2 (02:aa:00:00:00:01) — lan 10.0.1.1 (02:bb:00:00:00:01) [router]
//! wan 10.0.2.1 (02:bb:00:00:00:02) — gateway 10.0.2.2 (02:cc:00:00:00:01) for 198.51.100.0/29.

mod common;

use common::{mac, Harness};
use packet::arp::{self, ArpPacket, ArpRepr};
use packet::ethernet::{ethertype, EthernetFrame, EthernetRepr};
use packet::icmp::{self, IcmpPacket};
use packet::ipv4::{protocol, Ipv4Packet};
use packet::pcap;
use router::admin::Request;

/// Added to `common::LAN_WAN`.
const CONFIG: &str = r#"
[[routes]]
prefix = "198.51.100.0/29"
via = "10.0.2.2"
"#;

fn capture() -> Vec<Vec<u8>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/linux-ping.pcap"
    );
    pcap::read_file(path)
        .unwrap()
        .into_iter()
        .map(|r| r.data)
        .collect()
}

fn arp_reply(from_mac: &str, from_ip: &str, to_mac: &str, to_ip: &str) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
    EthernetRepr {
        src_addr: mac(from_mac),
        dst_addr: mac(to_mac),
        ethertype: ethertype::ARP,
    }
    .emit(&mut eth);
    ArpRepr {
        operation: arp::op::REPLY,
        source_hardware_addr: mac(from_mac),
        source_protocol_addr: from_ip.parse().unwrap(),
        target_hardware_addr: mac(to_mac),
        target_protocol_addr: to_ip.parse().unwrap(),
    }
    .emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    f
}

fn ip_of(frame: &[u8]) -> Ipv4Packet<&[u8]> {
    Ipv4Packet::new_checked(&frame[14..]).unwrap()
}

/// Resolve the host on the lan: send an echo, answer the router's ARP, get the reply.
fn resolve_host(h: &Harness, cap: &[Vec<u8>]) -> Vec<u8> {
    h.inject(0, &cap[2]);
    let arp_req = h.expect_tx(0, 1).remove(0);
    let a = ArpRepr::parse(&ArpPacket::new_checked(&arp_req[14..]).unwrap()).unwrap();
    assert_eq!(a.operation, arp::op::REQUEST);
    assert_eq!(a.target_protocol_addr.to_string(), "10.0.1.2");
    assert_eq!(a.source_protocol_addr.to_string(), "10.0.1.1");
    h.inject(
        0,
        &arp_reply(
            "02:aa:00:00:00:01",
            "10.0.1.2",
            "02:bb:00:00:00:01",
            "10.0.1.1",
        ),
    );
    h.expect_tx(0, 1).remove(0)
}

#[test]
fn arp_request_gets_the_kernels_reply_byte_for_byte() {
    let cap = capture();
    let h = Harness::lan_wan(CONFIG);
    h.inject(0, &cap[0]);
    let out = h.expect_tx(0, 1);
    // Packet 2 of the capture is Linux's own answer to packet 1.
    assert_eq!(out[0], cap[1]);
}

#[test]
fn echo_to_the_router_is_answered() {
    let cap = capture();
    let h = Harness::lan_wan(CONFIG);
    let reply = resolve_host(&h, &cap);
    let linux = &cap[3];
    // Ethernet and ICMP identical to Linux's reply; IP differs only in ident and checksum.
    assert_eq!(reply[..14], linux[..14]);
    assert_eq!(reply[34..], linux[34..]);
    let (ours, theirs) = (ip_of(&reply), ip_of(linux));
    assert!(ours.verify_checksum());
    assert_eq!(
        (
            ours.src_addr(),
            ours.dst_addr(),
            ours.ttl(),
            ours.protocol()
        ),
        (
            theirs.src_addr(),
            theirs.dst_addr(),
            theirs.ttl(),
            theirs.protocol()
        )
    );
    // A second echo goes straight through the fast path (neighbour now known).
    h.inject(0, &cap[2]);
    assert_eq!(h.expect_tx(0, 1)[0][34..], linux[34..]);
    let n = h.call(Request::NeighList);
    assert_eq!(n[0]["address"], "10.0.1.2");
    assert_eq!(n[0]["mac"], "02:aa:00:00:00:01");
}

#[test]
fn ttl_1_gets_time_exceeded() {
    let cap = capture();
    let h = Harness::lan_wan(CONFIG);
    resolve_host(&h, &cap);
    h.inject(0, &cap[4]); // echo to 198.51.100.7 with TTL 1
    let out = h.expect_tx(0, 1).remove(0);
    let ip = ip_of(&out);
    assert!(ip.verify_checksum());
    assert_eq!(ip.src_addr().to_string(), "10.0.1.1");
    assert_eq!(ip.dst_addr().to_string(), "10.0.1.2");
    assert_eq!(ip.protocol(), protocol::ICMP);
    let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum());
    assert_eq!(
        (icmp.msg_type(), icmp.msg_code()),
        (icmp::kind::TIME_EXCEEDED, 0)
    );
    // The quote is the offending datagram as it arrived.
    let orig = &cap[4][14..];
    assert_eq!(icmp.data(), &orig[..icmp.data().len()]);
    assert_eq!(icmp.data().len(), orig.len());
    h.expect_silence(1);
}

#[test]
fn no_route_gets_net_unreachable() {
    let cap = capture();
    let h = Harness::lan_wan(CONFIG);
    resolve_host(&h, &cap);
    h.inject(0, &cap[5]); // UDP to 198.51.100.9: outside 198.51.100.0/29
    let out = h.expect_tx(0, 1).remove(0);
    let ip = ip_of(&out);
    let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum());
    assert_eq!(
        (icmp.msg_type(), icmp.msg_code()),
        (icmp::kind::DEST_UNREACHABLE, icmp::unreach::NET)
    );
    assert_eq!(&icmp.data()[..28], &cap[5][14..42]);
}

#[test]
fn forwarding_decrements_ttl_and_rewrites_macs() {
    let cap = capture();
    let h = Harness::lan_wan(CONFIG);
    // Echo to 198.51.100.7 with a TTL of 64: take packet 5 and raise its TTL.
    let mut f = cap[4].clone();
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.set_ttl(64);
        ip.fill_checksum();
    }
    h.inject(0, &f);
    let req = h.expect_tx(1, 1).remove(0);
    let a = ArpRepr::parse(&ArpPacket::new_checked(&req[14..]).unwrap()).unwrap();
    assert_eq!(a.target_protocol_addr.to_string(), "10.0.2.2");
    assert_eq!(a.source_protocol_addr.to_string(), "10.0.2.1");
    h.inject(
        1,
        &arp_reply(
            "02:cc:00:00:00:01",
            "10.0.2.2",
            "02:bb:00:00:00:02",
            "10.0.2.1",
        ),
    );
    let out = h.expect_tx(1, 1).remove(0);
    let e = EthernetFrame::new_checked(&out[..]).unwrap();
    assert_eq!(e.dst_addr(), mac("02:cc:00:00:00:01"));
    assert_eq!(e.src_addr(), mac("02:bb:00:00:00:02"));
    let ip = ip_of(&out);
    assert_eq!(ip.ttl(), 63);
    assert!(ip.verify_checksum(), "incremental checksum update");
    assert_eq!(&out[34..], &f[34..], "payload untouched");
    // Now resolved: the next one is forwarded by the fast path alone.
    h.inject(0, &f);
    assert_eq!(h.expect_tx(1, 1)[0], out);
    let s = h.call(Request::Stats);
    assert_eq!(s["mgmt"]["released"], 1);
}

#[test]
fn bad_checksum_and_truncated_frames_are_dropped_and_counted() {
    let cap = capture();
    let h = Harness::lan_wan(CONFIG);
    let mut bad = cap[2].clone();
    bad[24] ^= 0xff; // IP header checksum
    h.inject(0, &bad);
    h.inject(0, &cap[2][..30]); // cut inside the IP header
    let mut short = cap[2].clone();
    short.truncate(40); // IP total length says 52
    h.inject(0, &short);
    h.inject(0, &cap[2][..10]); // not even an Ethernet header
    h.expect_silence(0);
    h.expect_silence(1);
    assert_eq!(h.drops("bad-checksum"), 1);
    assert_eq!(h.drops("truncated"), 3);
}

#[test]
fn admin_socket_survives_garbage() {
    let h = Harness::lan_wan(CONFIG);
    let mut c = h.admin();
    let r = c.call_raw(b"{this is not json\n").unwrap();
    assert!(!r.ok);
    assert!(r.error.unwrap().contains("bad request"));
    let mut c = h.admin();
    let r = c.call_raw(b"{\"cmd\":\"reboot-the-world\"}\n").unwrap();
    assert!(!r.ok);
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("\"reboot-the-world\""),
        "{:?}",
        r.error
    );
    // An application's request with arguments that do not fit it: named too.
    let mut c = h.admin();
    let r = c.call_raw(b"{\"cmd\":\"sal-rule-del\"}\n").unwrap();
    assert!(r
        .error
        .as_deref()
        .unwrap_or("")
        .contains("\"sal-rule-del\""));
    let mut c = h.admin();
    let mut big = vec![b'x'; router::admin::MAX_REQUEST + 10];
    big.push(b'\n');
    let r = c.call_raw(&big).unwrap();
    assert!(!r.ok);
    // Still serving.
    let s = h.call(Request::Status);
    assert_eq!(s["ports"], 2);
    let r = h
        .admin()
        .call(&Request::RouteDel {
            prefix: "10.0.1.0/24".into(),
        })
        .unwrap();
    assert!(!r.ok, "connected routes cannot be deleted");
    let r = h
        .admin()
        .call(&Request::RouteAdd {
            prefix: "203.0.113.0/24".into(),
            via: Some("10.9.9.9".parse().unwrap()),
            port: None,
            blackhole: false,
        })
        .unwrap();
    assert!(
        !r.ok && r.error.unwrap().contains("connected"),
        "gateway off-link is refused"
    );
}

#[test]
fn routes_added_and_deleted_through_admin() {
    let cap = capture();
    let h = Harness::lan_wan(CONFIG);
    resolve_host(&h, &cap);
    // UDP to 198.51.100.9 has no route: add one, it forwards; delete it, unreachable again.
    h.call(Request::RouteAdd {
        prefix: "198.51.100.8/30".into(),
        via: Some("10.0.2.2".parse().unwrap()),
        port: None,
        blackhole: false,
    });
    h.inject(0, &cap[5]);
    let req = h.expect_tx(1, 1).remove(0);
    assert_eq!(u16::from_be_bytes([req[12], req[13]]), ethertype::ARP);
    h.inject(
        1,
        &arp_reply(
            "02:cc:00:00:00:01",
            "10.0.2.2",
            "02:bb:00:00:00:02",
            "10.0.2.1",
        ),
    );
    let fwd = h.expect_tx(1, 1);
    assert_eq!(ip_of(&fwd[0]).dst_addr().to_string(), "198.51.100.9");
    let list = h.call(Request::RouteList { limit: None });
    assert!(list["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["prefix"] == "198.51.100.8/30"));
    h.call(Request::RouteDel {
        prefix: "198.51.100.8/30".into(),
    });
    h.inject(0, &cap[5]);
    let out = h.expect_tx(0, 1);
    let icmp = IcmpPacket::new_checked(ip_of(&out[0]).payload().to_vec()).unwrap();
    assert_eq!(icmp.msg_type(), icmp::kind::DEST_UNREACHABLE);
}
