//! 802.1Q VLAN sub-interfaces through the engine, byte for byte: a frame tagged with one of a
//! port's VLANs is its interface's (routed, answered, ARPed for), what leaves a VLAN interface
//! is tagged on its port, and a frame for a VLAN the port does not carry is dropped and counted.

mod common;

use common::{mac, Harness};
use packet::arp::{self, ArpPacket, ArpRepr};
use packet::ethernet::{ethertype, EthernetAddress, EthernetFrame, EthernetRepr};
use packet::ipv4::Ipv4Packet;
use std::net::Ipv4Addr;

/// VLAN 10 on the lan port ("lan.10"), placed right after the port's own table.
const LAN_VLAN: &str = r#"addresses = ["10.0.1.1/24"]
[[ports.vlans]]
id = 10
addresses = ["10.0.10.1/24"]
"#;

const NEIGHBOURS: &str = r#"[[static_neighbours]]
port = "lan.10"
address = "10.0.10.2"
mac = "02:aa:00:00:00:10"
[[static_neighbours]]
port = "wan"
address = "10.0.2.2"
mac = "02:cc:00:00:00:02"
"#;

const LAN_MAC: &str = "02:bb:00:00:00:01";
const HOST10: &str = "02:aa:00:00:00:10";

/// The lan port with VLAN 10 (10.0.10.1/24) beside its untagged subnet.
fn router() -> Harness {
    let text = common::LAN_WAN.replace("addresses = [\"10.0.1.1/24\"]\n", LAN_VLAN);
    Harness::start(&format!("{text}{NEIGHBOURS}"))
}

/// `frame` with an 802.1Q tag for `vid` after its MAC addresses.
fn tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

fn udp(src_mac: &str, dst_mac: &str, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    packet::udp::frame(
        mac(src_mac),
        mac(dst_mac),
        Ipv4Addr::from(src),
        Ipv4Addr::from(dst),
        4000,
        9,
        b"over the trunk",
    )
}

#[test]
fn a_vlan_is_an_interface_of_its_own() {
    let h = router();
    // VLAN 10's host to the wan: routed off its tag, onto the wan untagged.
    h.inject(
        0,
        &tagged(&udp(HOST10, LAN_MAC, [10, 0, 10, 2], [10, 0, 2, 2]), 10),
    );
    let out = h.expect_tx(1, 1).remove(0);
    let want = udp(
        "02:bb:00:00:00:02",
        "02:cc:00:00:00:02",
        [10, 0, 10, 2],
        [10, 0, 2, 2],
    );
    assert_eq!(out.len(), want.len());
    assert_eq!(&out[..14], &want[..14], "untagged, to the wan neighbour");
    let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
    assert_eq!(ip.ttl(), 63);
    assert!(ip.verify_checksum());

    // Back from the wan: onto the lan port tagged 10, from the port's MAC.
    h.inject(
        1,
        &udp(
            "02:cc:00:00:00:02",
            "02:bb:00:00:00:02",
            [10, 0, 2, 2],
            [10, 0, 10, 2],
        ),
    );
    let out = h.expect_tx(0, 1).remove(0);
    assert_eq!(
        &out[..12],
        &tagged(&udp(LAN_MAC, HOST10, [0; 4], [0; 4]), 10)[..12]
    );
    assert_eq!(&out[12..16], &[0x81, 0x00, 0x00, 0x0a], "tagged VLAN 10");
    assert_eq!(&out[16..18], &[0x08, 0x00]);
    assert_eq!(out.len(), want.len() + 4);

    // The port's untagged subnet and its VLAN are two interfaces: routed between them on the
    // one port, the tag added on the way.
    h.inject(
        0,
        &udp("02:aa:00:00:00:01", LAN_MAC, [10, 0, 1, 2], [10, 0, 10, 2]),
    );
    let out = h.expect_tx(0, 1).remove(0);
    assert_eq!(&out[12..16], &[0x81, 0x00, 0x00, 0x0a]);
    assert_eq!(h.drops("unknown-vlan"), 0);
}

#[test]
fn arp_on_a_vlan_is_answered_on_it() {
    let h = router();
    let mut req = vec![0u8; 14 + arp::PACKET_LEN];
    {
        let mut eth = EthernetFrame::new_unchecked(&mut req[..]);
        EthernetRepr {
            src_addr: mac("02:aa:00:00:00:11"),
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: ethertype::ARP,
        }
        .emit(&mut eth);
        ArpRepr {
            operation: arp::op::REQUEST,
            source_hardware_addr: mac("02:aa:00:00:00:11"),
            source_protocol_addr: Ipv4Addr::new(10, 0, 10, 3),
            target_hardware_addr: EthernetAddress::ZERO,
            target_protocol_addr: Ipv4Addr::new(10, 0, 10, 1),
        }
        .emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    }
    h.inject(0, &tagged(&req, 10));
    let out = h.expect_tx(0, 1).remove(0);
    assert_eq!(
        &out[12..16],
        &[0x81, 0x00, 0x00, 0x0a],
        "the reply is tagged"
    );
    let untagged: Vec<u8> = [&out[..12], &out[16..]].concat();
    let eth = EthernetFrame::new_checked(&untagged[..]).unwrap();
    let r = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
    assert_eq!(r.operation, arp::op::REPLY);
    assert_eq!(r.source_protocol_addr, Ipv4Addr::new(10, 0, 10, 1));
    assert_eq!(r.source_hardware_addr, mac(LAN_MAC));
    // The same request untagged asks the lan subnet, which 10.0.10.1 is not on: no answer.
    h.inject(0, &req);
    h.expect_silence(0);
}

#[test]
fn a_vlan_the_port_does_not_carry_is_dropped_and_counted() {
    let h = router();
    let f = udp(HOST10, LAN_MAC, [10, 0, 30, 2], [10, 0, 2, 2]);
    h.inject(0, &tagged(&f, 30));
    // Stacked tags (802.1ad outer) are not carried either.
    let mut qinq = tagged(&tagged(&f, 10), 100);
    qinq[12..14].copy_from_slice(&[0x88, 0xa8]);
    h.inject(0, &qinq);
    // A VLAN of the lan port is not one of the wan's.
    h.inject(
        1,
        &tagged(
            &udp(HOST10, "02:bb:00:00:00:02", [10, 0, 10, 2], [10, 0, 1, 2]),
            10,
        ),
    );
    h.expect_silence(1);
    h.expect_silence(0);
    assert_eq!(h.drops("unknown-vlan"), 3);
}
