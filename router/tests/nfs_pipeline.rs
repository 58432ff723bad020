//! The NFS stage inside the engine (soft backend, in-memory ports): it runs before routing,
//! hands what it cannot finish to the management core, drops server replies that answer no
//! call, and leaves other traffic to the IPv4 stage.

mod common;

use common::{mac, Harness};
use nfs_rewrite::vfh::{HandleKey, VirtualHandle};
use nfs_rewrite::wire::nfs3::Proc;
use nfs_rewrite::wire::rpc;
use packet::ipv4::Ipv4Packet;
use router::admin::Request;
use std::net::Ipv4Addr;

const SECRET: &str = "00112233445566778899aabbccddeeff";

const CONFIG: &str = r#"
[dataplane]
backend = "soft"
workers = [0]
pin = false
idle_sleep_max_us = 100
[[ports]]
name = "lan"
device = "memory"
mac = "02:bb:00:00:00:01"
addresses = ["10.0.1.1/24"]
[[ports]]
name = "wan"
device = "memory"
mac = "02:bb:00:00:00:02"
addresses = ["10.0.2.1/24"]
[[static_neighbours]]
port = "lan"
address = "10.0.1.2"
mac = "02:aa:00:00:00:01"
[[static_neighbours]]
port = "wan"
address = "10.0.2.2"
mac = "02:cc:00:00:00:01"
[nfs]
virtual_address = "10.0.1.1"
handle_secret = "00112233445566778899aabbccddeeff"
[[nfs.servers]]
sid = 1
name = "alpha"
address = "10.0.2.2"
export = "/srv/alpha"
"#;

fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), to_mac: &str, payload: &[u8]) -> Vec<u8> {
    packet::udp::frame(
        mac("02:aa:00:00:00:01"),
        mac(to_mac),
        src.0,
        dst.0,
        src.1,
        dst.1,
        payload,
    )
}

/// Wait for the router's answer to `xid` on the client port: the UDP payload after the RPC
/// reply header (the results), checking addresses and checksums.
fn answer(h: &Harness, xid: u32, from: (Ipv4Addr, u16), to: (Ipv4Addr, u16)) -> Vec<u8> {
    let f = h.expect_tx(0, 1).remove(0);
    let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
    assert!(ip.verify_checksum());
    let u = packet::udp::UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(u.verify_checksum(ip.src_addr(), ip.dst_addr()));
    assert_eq!(
        ((ip.src_addr(), u.src_port()), (ip.dst_addr(), u.dst_port())),
        (from, to)
    );
    let msg = u.payload().to_vec();
    match rpc::parse(&msg).unwrap() {
        rpc::Message::Reply(rpc::Reply::Accepted {
            xid: x,
            stat: rpc::AcceptStat::Success { results_at },
            ..
        }) => {
            assert_eq!(x, xid);
            msg[results_at..].to_vec()
        }
        other => panic!("{other:?}"),
    }
}

fn stage_stat(h: &Harness, kind: &str, name: &str) -> u64 {
    let s = h.call(Request::Stats);
    s["cores"][0]["stages"][1][kind]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p[0] == name)
        .map(|p| p[1].as_u64().unwrap())
        .sum()
}

#[test]
fn nfs_stage_in_the_pipeline() {
    let h = Harness::start(CONFIG);
    let client = (Ipv4Addr::new(10, 0, 1, 2), 800);
    let virt = (Ipv4Addr::new(10, 0, 1, 1), 2049);
    let server = (Ipv4Addr::new(10, 0, 2, 2), 2049);
    let key = HandleKey::from_hex(SECRET).unwrap();
    let mch = key.mount_checksum(1, b"/srv/alpha");

    // A GETATTR for a genuine handle the (fresh) router has no physical handle for: the fast
    // path hands it to the management core for recovery; nothing goes to the server yet.
    let vfh = VirtualHandle::for_object(&key, 1, mch, 5, 6).encode(&key);
    let mut call = rpc::Writer::new();
    call.call(41, rpc::program::NFS, 3, Proc::Getattr as u32)
        .opaque(&vfh);
    h.inject(0, &udp(client, virt, "02:bb:00:00:00:01", &call.buf));
    h.expect_silence(1);
    assert_eq!(stage_stat(&h, "punts", "application"), 1);

    // A server reply that answers no call: dropped.
    let mut reply = rpc::Writer::new();
    reply.accepted_reply(999, 0).u32(0);
    let mut f = udp(server, client, "02:bb:00:00:00:02", &reply.buf);
    f[6..12].copy_from_slice(&[2, 0xcc, 0, 0, 0, 1]);
    h.inject(1, &f);
    h.expect_silence(0);
    assert_eq!(stage_stat(&h, "drops", "unmatched-reply"), 1);

    // Other UDP through the router: routed as before.
    h.inject(
        0,
        &udp(client, (server.0, 53), "02:bb:00:00:00:01", b"dns?"),
    );
    let out = h.expect_tx(1, 1).remove(0);
    let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
    assert_eq!((ip.dst_addr(), ip.ttl()), (server.0, 63));

    // A forged handle (one bit flipped): the client gets NFS3ERR_BADHANDLE from the virtual
    // server, and it is counted.
    let mut forged = vfh;
    forged[17] ^= 0x10;
    let mut call = rpc::Writer::new();
    call.call(42, rpc::program::NFS, 3, Proc::Getattr as u32)
        .opaque(&forged);
    h.inject(0, &udp(client, virt, "02:bb:00:00:00:01", &call.buf));
    let reply = answer(&h, 42, (virt.0, 2049), client);
    assert_eq!(
        reply,
        nfs_rewrite::wire::nfs3::stat::BADHANDLE.to_be_bytes()
    );

    // portmap GETPORT for MOUNT v3 / UDP, then MNT "/": the virtual root's handle.
    let mut call = rpc::Writer::new();
    call.call(43, rpc::program::PORTMAP, 2, 3)
        .u32(rpc::program::MOUNT)
        .u32(3)
        .u32(17)
        .u32(0);
    h.inject(
        0,
        &udp(client, (virt.0, 111), "02:bb:00:00:00:01", &call.buf),
    );
    assert_eq!(
        answer(&h, 43, (virt.0, 111), client),
        20048u32.to_be_bytes()
    );
    let mut call = rpc::Writer::new();
    call.call(44, rpc::program::MOUNT, 3, 1).opaque(b"/");
    h.inject(
        0,
        &udp(client, (virt.0, 20048), "02:bb:00:00:00:01", &call.buf),
    );
    let mnt = answer(&h, 44, (virt.0, 20048), client);
    assert_eq!(
        mnt[..8],
        [0, 0, 0, 0, 0, 0, 0, 40],
        "MNT3_OK and a 40-byte handle"
    );
    let root = VirtualHandle::verify(&key, &mnt[8..48]).unwrap();
    assert_eq!(root.sid, 0);

    let s = h.call(Request::Stats);
    assert_eq!(s["nfs"]["control"]["bad_handles"], 1);
    assert_eq!(s["mgmt"]["nfs_answered"], 3);
    assert_eq!(s["cores"][0]["nfs"]["calls"], 2);
    assert_eq!(s["cores"][0]["stages"][1]["name"], "nfs");
    assert_eq!(s["nfs"]["servers"], 1);
    assert_eq!(s["mgmt"]["application_unhandled"], 1);
}
