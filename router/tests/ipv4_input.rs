//! The one IPv4 input in front of every application: a frame the input drops (another host's
//! MAC, a martian source, a damaged header) or answers itself (TTL 1) never reaches an
//! application, whatever it is shaped as — an NFS call to the virtual server, a NetChain
//! write to a chain node, a Serval SYN to the router — and is counted where the input counts
//! it. Each shape, sent sound afterwards, does change its application's state (so the checks
//! see the state they claim to). Run with one worker and with split placement on two.

mod common;

use common::{mac, Harness};
use nfs_rewrite::vfh::HandleKey;
use nfs_rewrite::wire::nfs3::Proc;
use nfs_rewrite::wire::rpc;
use packet::ipv4::Ipv4Packet;
use packet::udp::UdpPacket;
use router::admin::Request;
use router::apps::AppRequest;
use sal_forward::wire::{self, flags, Control, SalRepr};
use sal_forward::ServiceId;
use std::net::Ipv4Addr;

const SECRET: &str = "00112233445566778899aabbccddeeff";
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
const ROUTER_MAC: &str = "aa:bb:cc:dd:ee:41";
const CLIENT_MAC: &str = "aa:bb:cc:dd:ee:01";

/// Two ports (clients, servers), an NFS virtual server on the router's clients-side address,
/// a Serval rule, a chain of three nodes; `dataplane` first.
fn harness(dataplane: &str) -> Harness {
    Harness::start(&format!(
        r#"{dataplane}
[[ports]]
name = "clients"
device = "memory"
mac = "{ROUTER_MAC}"
addresses = ["10.0.0.254/24"]
[[ports]]
name = "servers"
device = "memory"
mac = "aa:bb:cc:dd:ee:42"
addresses = ["10.0.9.1/24"]
[[static_neighbours]]
port = "clients"
address = "10.0.0.2"
mac = "{CLIENT_MAC}"
[[static_neighbours]]
port = "servers"
address = "10.0.9.2"
mac = "aa:bb:cc:dd:ee:02"
[nfs]
virtual_address = "10.0.0.254"
handle_secret = "{SECRET}"
[[nfs.servers]]
sid = 1
name = "alpha"
address = "10.0.9.2"
export = "/srv/alpha"
transport = "udp"
[sal]
[[sal.rules]]
prefix = "7000"
action = "forward"
targets = ["10.0.9.2"]
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

/// The NetChain prototype client's write of key 2018 to the chain's head.
fn chain_write() -> Vec<u8> {
    let text = include_str!("../../chain-switch/tests/fixtures/netchain-prototype-packets.txt");
    let hex = text
        .lines()
        .find_map(|l| l.strip_prefix("write_request").map(str::trim))
        .unwrap();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// A GETATTR of the virtual root, to the virtual server.
fn nfs_call() -> Vec<u8> {
    let key = HandleKey::from_hex(SECRET).unwrap();
    let root = nfs_rewrite::vfh::root_handle(&key, 0x5649_5254_5541_4c31);
    let mut call = rpc::Writer::new();
    call.call(7, rpc::program::NFS, 3, Proc::Getattr as u32)
        .opaque(&root);
    packet::udp::frame(
        mac(CLIENT_MAC),
        mac(ROUTER_MAC),
        CLIENT,
        ROUTER,
        800,
        2049,
        &call.buf,
    )
}

/// A Serval SYN for serviceID 7000, to the router.
fn serval_syn() -> Vec<u8> {
    let sal = SalRepr {
        src_flow: 1,
        protocol: 6,
        control: Some(Control {
            flags: flags::SYN,
            verno: 1001,
            ackno: 0,
            nonce: [7; 8],
        }),
        service: Some(ServiceId::from_u32(7000)),
        ..SalRepr::default()
    };
    let mut tcp = [0u8; 20];
    tcp[12] = 0x50;
    tcp[13] = 0x02;
    let ip = wire::datagram(CLIENT, ROUTER, 64, &sal, &tcp);
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&mac(ROUTER_MAC).0);
    f.extend_from_slice(&mac(CLIENT_MAC).0);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f
}

/// `f` with its IPv4 header edited, its IP checksum (and a UDP checksum) made right again: a
/// frame nothing but the edit is wrong with.
fn edited(f: &[u8], edit: impl FnOnce(&mut Ipv4Packet<&mut [u8]>)) -> Vec<u8> {
    let mut f = f.to_vec();
    let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
    edit(&mut ip);
    ip.fill_checksum();
    let (src, dst, udp) = (ip.src_addr(), ip.dst_addr(), ip.protocol() == 17);
    if udp {
        let hl = usize::from(ip.header_len());
        let mut u = UdpPacket::new_unchecked(&mut f[14 + hl..]);
        if u.checksum() != 0 {
            u.fill_checksum(src, dst);
        }
    }
    f
}

/// The four frames the input keeps from applications, made from a sound one.
fn rejected(f: &[u8]) -> [(&'static str, Vec<u8>); 4] {
    let mut other_host = f.to_vec();
    other_host[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    let mut bad_checksum = f.to_vec();
    bad_checksum[14 + 10] ^= 0x01;
    [
        ("other-host", other_host),
        (
            "martian",
            edited(f, |ip| ip.set_src_addr(Ipv4Addr::new(127, 0, 0, 1))),
        ),
        ("ttl-exceeded", edited(f, |ip| ip.set_ttl(1))),
        ("bad-checksum", bad_checksum),
    ]
}

/// Each application's state that a frame it processed would change.
fn app_state(h: &Harness) -> [u64; 5] {
    let n = h.call(Request::App(AppRequest::NfsStats));
    let c = h.call(Request::App(AppRequest::ChainStats));
    let s = h.call(Request::App(AppRequest::SalStats));
    let r = h.call(Request::App(AppRequest::SalRuleList { limit: None }));
    [
        n["calls"].as_u64().unwrap(),
        c["stage"]["writes"].as_u64().unwrap(),
        c["stage"]["passed"].as_u64().unwrap(),
        s["stage"]["forwarded"].as_u64().unwrap(),
        r["rules"][0]["packets"].as_u64().unwrap(),
    ]
}

/// The ICMP time exceeded the router sends the client for a TTL-1 frame (whatever else the
/// clients' port carries meanwhile).
fn expect_time_exceeded(h: &Harness, quoted_dst: Ipv4Addr) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        for f in h.wires[0].take() {
            let Ok(ip) = Ipv4Packet::new_checked(&f[14..]) else {
                continue;
            };
            let p = ip.payload();
            if ip.protocol() == 1 && p.len() >= 28 && p[0] == 11 {
                assert_eq!(ip.dst_addr(), CLIENT);
                assert_eq!(&p[8 + 16..8 + 20], &quoted_dst.octets(), "quotes the frame");
                return;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("no ICMP time exceeded for a TTL-1 frame to {quoted_dst}");
}

fn ipv4_counter(h: &Harness, reason: &str) -> u64 {
    if reason == "ttl-exceeded" {
        h.stage_punts("ipv4", reason)
    } else {
        h.drops(reason)
    }
}

fn input_keeps_rejected_frames_from_applications(dataplane: &str) {
    let h = harness(dataplane);
    let shapes = [
        ("an NFS call", nfs_call()),
        ("a NetChain write", chain_write()),
        ("a Serval SYN", serval_syn()),
    ];
    let before = app_state(&h);
    for (shape, f) in &shapes {
        for (reason, bad) in rejected(f) {
            let counted = ipv4_counter(&h, reason);
            h.inject(0, &bad);
            if reason == "ttl-exceeded" {
                let dst = Ipv4Packet::new_checked(&f[14..]).unwrap().dst_addr();
                expect_time_exceeded(&h, dst);
            } else {
                std::thread::sleep(std::time::Duration::from_millis(30));
            }
            assert_eq!(
                ipv4_counter(&h, reason),
                counted + 1,
                "{shape} ({reason}) counted by the IPv4 input"
            );
            assert_eq!(
                app_state(&h),
                before,
                "{shape} ({reason}) reached an application"
            );
        }
    }
    // The same frames, sound: each reaches its application.
    let mut expect = before;
    for (i, (shape, f)) in shapes.iter().enumerate() {
        h.inject(0, f);
        match i {
            0 => expect[0] += 1,
            1 => expect[1] += 3, // applied at the head, the middle and the tail
            _ => {
                expect[3] += 1;
                expect[4] += 1;
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while app_state(&h) != expect && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            app_state(&h),
            expect,
            "{shape}, sound, reached its application"
        );
    }
}

#[test]
fn one_worker() {
    input_keeps_rejected_frames_from_applications(common::SOFT_DATAPLANE);
}

#[test]
fn split_placement_on_two_workers() {
    input_keeps_rejected_frames_from_applications(
        r#"
[dataplane]
backend = "soft"
placement = "split"
workers = [0, 1]
pin = false
idle_sleep_max_us = 100
"#,
    );
}
