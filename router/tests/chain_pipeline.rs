//! NetChain through the whole engine (soft ports): the prototype client's own requests to a
//! chain of three nodes this appliance hosts come back as the replies its switches give,
//! routed to the client (TTL − 1, MACs rewritten, checksums valid); counters and the admin
//! view.

mod common;

use chain_switch::wire::{key_from_u128, op, value_from_u64, QueryRepr};
use common::{mac, Harness, SOFT_DATAPLANE};
use packet::ipv4::Ipv4Packet;
use packet::udp::UdpPacket;
use router::admin::Request;
use std::net::Ipv4Addr;

fn fixture(name: &str) -> Vec<u8> {
    let text = include_str!("../../chain-switch/tests/fixtures/netchain-prototype-packets.txt");
    let hex = text
        .lines()
        .find_map(|l| l.strip_prefix(name).map(str::trim))
        .unwrap();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn harness() -> Harness {
    Harness::start(&format!(
        r#"{SOFT_DATAPLANE}
[[ports]]
name = "clients"
device = "memory"
mac = "aa:bb:cc:dd:ee:41"
addresses = ["10.0.0.254/24"]
[[static_neighbours]]
port = "clients"
address = "10.0.0.1"
mac = "aa:bb:cc:dd:ee:01"
[[static_neighbours]]
port = "clients"
address = "10.0.0.2"
mac = "aa:bb:cc:dd:ee:01"
[chain]
keys = ["2018", "0x10"]
[[chain.nodes]]
address = "10.0.100.1"
head = ["0-3"]
[[chain.nodes]]
address = "10.0.100.2"
middle = ["0-3"]
[[chain.nodes]]
address = "10.0.100.3"
tail = ["0-3"]
"#
    ))
}

/// The reply frame's checked fields: MACs, TTL, addresses, ports, the query.
fn reply(f: &[u8], client: Ipv4Addr) -> (QueryRepr, usize) {
    assert_eq!(&f[..6], &mac("aa:bb:cc:dd:ee:01").0, "to the client's MAC");
    assert_eq!(&f[6..12], &mac("aa:bb:cc:dd:ee:41").0);
    let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(ip.ttl(), 63, "routed once");
    assert_eq!(
        (ip.src_addr(), ip.dst_addr()),
        (Ipv4Addr::new(10, 0, 100, 3), client)
    );
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(udp.verify_checksum(ip.src_addr(), ip.dst_addr()));
    assert_eq!((udp.src_port(), udp.dst_port()), (40000, 8889));
    (
        QueryRepr::parse(udp.payload(), 16).unwrap(),
        udp.payload().len(),
    )
}

#[test]
fn prototype_write_then_read() {
    let h = harness();
    h.inject(0, &fixture("write_request"));
    let out = h.expect_tx(0, 1);
    let (q, len) = reply(&out[0], Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(
        (len, q.op, q.sc, q.seq, q.vgroup),
        (38, op::WRITE_REPLY, 1, 1, 0)
    );
    assert_eq!(
        (q.key, q.value),
        (key_from_u128(2018), value_from_u64(0xde, 16))
    );
    h.inject(0, &fixture("read_request"));
    let out = h.expect_tx(0, 1);
    let (q, len) = reply(&out[0], Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!((len, q.op, q.sc, q.seq), (50, op::READ_REPLY, 3, 0));
    assert_eq!(
        q.list,
        [Ipv4Addr::new(10, 0, 100, 2), Ipv4Addr::new(10, 0, 100, 1)]
    );
    assert_eq!(q.value, value_from_u64(0xde, 16));
    let s = h.call(Request::ChainStats);
    assert_eq!(s["stage"]["writes"], 3, "{s}");
    assert_eq!(s["stage"]["reads"], 1, "{s}");
    assert_eq!(s["stage"]["replies"], 2, "{s}");
    assert_eq!(s["keys"], 6, "two keys on three nodes: {s}");
    let nodes = h.call(Request::ChainNodes);
    assert_eq!(nodes["nodes"][0]["head_of"], 4, "{nodes}");
    assert_eq!(nodes["nodes"][2]["tail_of"], 4, "{nodes}");
    let g = h.call(Request::ChainGroups { limit: Some(2) });
    assert_eq!(g["total"], 12, "{g}");
    assert_eq!(g["groups"][0]["role"], "head", "{g}");
    // An unknown key is dropped and counted by the stage; the client sees nothing.
    let mut unknown = fixture("write_request");
    unknown[14 + 28 + 16 + 4 + 15] = 0x99;
    h.inject(0, &unknown);
    h.expect_silence(0);
    assert_eq!(h.stage_drops("netchain", "unknown-key"), 1);
}
