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
use router::apps::AppRequest;
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

/// The appliance's one port, with client 10.0.0.2 known; `extra` follows.
fn start(extra: &str) -> Harness {
    Harness::start(&format!(
        r#"{SOFT_DATAPLANE}
[[ports]]
name = "clients"
device = "memory"
mac = "aa:bb:cc:dd:ee:41"
addresses = ["10.0.0.254/24"]
[[static_neighbours]]
port = "clients"
address = "10.0.0.2"
mac = "aa:bb:cc:dd:ee:01"
{extra}"#
    ))
}

fn harness() -> Harness {
    start(
        r#"[[static_neighbours]]
port = "clients"
address = "10.0.0.1"
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
"#,
    )
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
        (38, op::WRITE_REPLY, 0, 1, 0)
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
    let s = h.call(Request::App(AppRequest::ChainStats));
    assert_eq!(s["stage"]["writes"], 3, "{s}");
    assert_eq!(s["stage"]["reads"], 1, "{s}");
    assert_eq!(s["stage"]["replies"], 2, "{s}");
    assert_eq!(s["keys"], 6, "two keys on three nodes: {s}");
    let nodes = h.call(Request::App(AppRequest::ChainNodes));
    assert_eq!(nodes["nodes"][0]["head_of"], 4, "{nodes}");
    assert_eq!(nodes["nodes"][2]["tail_of"], 4, "{nodes}");
    let g = h.call(Request::App(AppRequest::ChainGroups { limit: Some(2) }));
    assert_eq!(g["total"], 12, "{g}");
    assert_eq!(g["groups"][0]["role"], "head", "{g}");
    // An unknown key is dropped and counted by the stage; the client sees nothing. A query
    // with a damaged IP header is dropped by the IPv4 input before any node sees it.
    let mut unknown = fixture("write_request");
    unknown[14 + 28 + 16 + 4 + 15] = 0x99;
    h.inject(0, &unknown);
    h.expect_silence(0);
    let mut damaged = fixture("write_request");
    damaged[14 + 8] ^= 0x40;
    h.inject(0, &damaged);
    h.expect_silence(0);
    assert_eq!(h.drops("bad-checksum"), 1, "counted by the IPv4 input");
    assert_eq!(h.stage_drops("netchain", "unknown-key"), 1);
    let s = h.call(Request::App(AppRequest::ChainStats));
    assert_eq!(
        s["stage"]["writes"], 3,
        "the damaged write was not applied: {s}"
    );
}

/// A UDP frame from the clients' side to the appliance's MAC.
fn from_client(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    packet::udp::frame(
        mac("aa:bb:cc:dd:ee:01"),
        mac("aa:bb:cc:dd:ee:41"),
        src.0,
        dst.0,
        src.1,
        dst.1,
        payload,
    )
}

/// The master's control channel, through the engine: signed requests to the appliance's port
/// address install keys and roles (then the prototype's write is answered), read records
/// back; a wrong secret or a replayed id gets no answer and is counted.
#[test]
fn control_channel_installs_a_chain() {
    use chain_switch::control::{self, kind, Reply, Request as Ctl};
    let dir = std::env::temp_dir().join(format!("chain-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let h = start(&format!(
        r#"[chain]
secret_file = "{}"
[[chain.nodes]]
address = "10.0.100.1"
"#,
        secret.display()
    ));
    let master = (Ipv4Addr::new(10, 0, 0, 2), 5555);
    let me = (Ipv4Addr::new(10, 0, 0, 254), control::CONTROL_PORT);
    let node = Ipv4Addr::new(10, 0, 100, 1);
    let call = |key: &[u8], id: u64, req: &Ctl| -> Option<Reply> {
        h.inject(0, &from_client(master, me, &control::request(key, id, req)));
        if key != b"s3cret" {
            h.expect_silence(0);
            return None;
        }
        let out = h.expect_tx(0, 1).remove(0);
        let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((ip.dst_addr(), u.dst_port()), master);
        Some(control::read_response(b"s3cret", req.kind(), id, u.payload()).unwrap())
    };
    let Some(Reply::Pong {
        nodes, value_len, ..
    }) = call(b"s3cret", 10, &Ctl::Ping)
    else {
        panic!("no pong")
    };
    assert_eq!((nodes, value_len), (vec![(node, 0)], 16));
    let key = key_from_u128(2018);
    let insert = Ctl::Insert {
        node,
        keys: vec![key],
    };
    assert_eq!(call(b"s3cret", 11, &insert), Some(Reply::Count(1)));
    // A one-node chain: head and tail.
    let roles = Ctl::Roles {
        node,
        groups: vec![(0, 1 | 2 | 4, 0)],
    };
    assert_eq!(call(b"s3cret", 12, &roles), Some(Reply::Count(1)));
    let w = QueryRepr::request(op::WRITE_REQUEST, &[node], key, &value_from_u64(7, 16), 0);
    h.inject(
        0,
        &from_client((master.0, 40000), (node, 8888), &w.emit(true)),
    );
    let out = h.expect_tx(0, 1).remove(0);
    let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
    let q = QueryRepr::parse(UdpPacket::new_checked(ip.payload()).unwrap().payload(), 16).unwrap();
    assert_eq!((q.op, q.seq), (op::WRITE_REPLY, 1));
    let get = Ctl::Get {
        node,
        keys: vec![key, key_from_u128(1)],
    };
    let Some(Reply::Records(r)) = call(b"s3cret", 13, &get) else {
        panic!("no records")
    };
    assert_eq!(r.len(), 2);
    let rec = r[0].as_ref().unwrap();
    assert_eq!((rec.seq, rec.value.clone()), (1, value_from_u64(7, 16)));
    assert!(r[1].is_none());
    // Junk is no answer.
    assert!(matches!(
        control::read_response(b"s3cret", kind::SET, 1, b"junk"),
        Err(control::Error::NotControl)
    ));
    // Unauthenticated and replayed requests: no answer.
    call(b"wrong", 14, &Ctl::Ping);
    h.inject(
        0,
        &from_client(master, me, &control::request(b"s3cret", 9, &Ctl::Ping)),
    );
    h.expect_silence(0);
    let s = h.call(Request::App(AppRequest::ChainStats));
    assert_eq!(s["control"]["taken"], 4, "{s}");
    assert_eq!(s["control"]["bad_tag"], 1, "{s}");
    assert_eq!(s["control"]["replayed"], 1, "{s}");
    std::fs::remove_dir_all(&dir).unwrap();
}
