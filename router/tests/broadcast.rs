//! Broadcasts at the IPv4 input (RFC 1812 4.2.2.11 and 5.3.5, RFC 2644): the limited broadcast
//! and the receiving link's directed broadcast are delivered to the router, never forwarded
//! (in particular not back onto the link they came from) and never answered with an ICMP
//! error; a directed broadcast for another port's subnet is dropped and counted, unless that
//! port is configured to forward them, when it goes onto that link to the Ethernet broadcast
//! address with its TTL decremented.

mod common;

use common::{mac, Harness};
use packet::ethernet::EthernetAddress;
use packet::ipv4::Ipv4Packet;
use router::admin::Request;
use std::net::Ipv4Addr;

const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);

/// A UDP datagram from the host on "lan" to `dst` at Ethernet address `dst_mac`.
fn udp_to(dst: Ipv4Addr, dst_mac: EthernetAddress, ttl: u8) -> Vec<u8> {
    let mut f = packet::udp::frame(
        mac("02:aa:00:00:00:01"),
        dst_mac,
        HOST,
        dst,
        5000,
        9,
        b"anyone there?",
    );
    let mut ip = Ipv4Packet::new_checked(&mut f[14..]).unwrap();
    ip.set_ttl(ttl);
    ip.fill_checksum();
    f
}

#[test]
fn local_broadcasts_stay_and_other_links_are_not_flooded() {
    let h = Harness::lan_wan("");
    let bcast = EthernetAddress::BROADCAST;
    let router_mac = mac("02:bb:00:00:00:01");
    // The limited broadcast and the lan's own directed broadcast: delivered to the router,
    // nothing sent anywhere (no forwarding back, no ICMP port unreachable).
    h.inject(0, &udp_to(Ipv4Addr::BROADCAST, bcast, 64));
    h.inject(0, &udp_to(Ipv4Addr::new(10, 0, 1, 255), bcast, 64));
    h.expect_silence(0);
    h.expect_silence(1);
    assert_eq!(h.stage_punts("ipv4", "broadcast"), 2);
    let m = &h.call(Request::Stats)["mgmt"];
    assert_eq!(m["broadcast_in"], 2, "{m}");
    assert_eq!(m["icmp_unreachable"], 0, "{m}");
    // The wan's directed broadcast, sent to the router from the lan: dropped and counted
    // (not ARPed for, not answered).
    h.inject(0, &udp_to(Ipv4Addr::new(10, 0, 2, 255), router_mac, 64));
    h.expect_silence(1);
    h.expect_silence(0);
    assert_eq!(h.drops("directed-broadcast"), 1);
    // Ordinary traffic to the wan's subnet is unaffected (it waits for ARP: a request goes out).
    h.inject(0, &udp_to(Ipv4Addr::new(10, 0, 2, 7), router_mac, 64));
    let arp = h.expect_tx(1, 1);
    assert_eq!(
        &arp[0][12..14],
        &[0x08, 0x06],
        "an ARP request for 10.0.2.7"
    );
}

#[test]
fn a_port_that_forwards_directed_broadcasts_gets_them_as_link_broadcasts() {
    let text = common::LAN_WAN.replace(
        "addresses = [\"10.0.2.1/24\"]",
        "addresses = [\"10.0.2.1/24\"]\nforward_directed_broadcast = true",
    );
    let h = Harness::start(&text);
    let router_mac = mac("02:bb:00:00:00:01");
    h.inject(0, &udp_to(Ipv4Addr::new(10, 0, 2, 255), router_mac, 64));
    let out = h.expect_tx(1, 1).remove(0);
    assert_eq!(&out[..6], &[0xff; 6], "to the Ethernet broadcast address");
    assert_eq!(&out[6..12], &[2, 0xbb, 0, 0, 0, 2], "from the wan port");
    let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(
        (ip.dst_addr(), ip.ttl()),
        (Ipv4Addr::new(10, 0, 2, 255), 63)
    );
    // TTL 1: time exceeded, as for any forwarded packet.
    h.inject(0, &udp_to(Ipv4Addr::new(10, 0, 2, 255), router_mac, 1));
    h.expect_silence(1);
    assert_eq!(h.stage_punts("ipv4", "ttl-exceeded"), 1);
    // Its own broadcast still stays on the lan side.
    h.inject(
        0,
        &udp_to(Ipv4Addr::new(10, 0, 1, 255), EthernetAddress::BROADCAST, 64),
    );
    h.expect_silence(1);
    assert_eq!(h.drops("directed-broadcast"), 0);
}
