//! The NFS stage inside the engine (soft backend, in-memory ports): it gets what it claims from
//! the IPv4 input, before routing,
//! hands what it cannot finish to the management core, drops server replies that answer no
//! call, and leaves other traffic to the IPv4 stage.

mod common;

use common::{mac, Harness};
use nfs_rewrite::vfh::{HandleKey, VirtualHandle};
use nfs_rewrite::wire::nfs3::Proc;
use nfs_rewrite::wire::rpc;
use packet::ipv4::Ipv4Packet;
use router::admin::Request;
use router::apps::AppRequest;
use std::net::Ipv4Addr;

const SECRET: &str = "00112233445566778899aabbccddeeff";

/// Added to `common::LAN_WAN`.
const CONFIG: &str = r#"
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
# These tests drive the UDP path: the router reaches the server by UDP too.
transport = "udp"
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

/// A call the router sent to the server on port 1: (xid, prog, proc, arguments, destination).
fn server_call(h: &Harness) -> (u32, u32, u32, Vec<u8>, (Ipv4Addr, u16)) {
    server_calls(h, 1).remove(0)
}

/// The next `n` calls the router sent to the server.
#[allow(clippy::type_complexity)]
fn server_calls(h: &Harness, n: usize) -> Vec<(u32, u32, u32, Vec<u8>, (Ipv4Addr, u16))> {
    h.expect_tx(1, n).iter().map(|f| parse_call(f)).collect()
}

fn parse_call(f: &[u8]) -> (u32, u32, u32, Vec<u8>, (Ipv4Addr, u16)) {
    let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
    assert!(ip.verify_checksum());
    let u = packet::udp::UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(u.verify_checksum(ip.src_addr(), ip.dst_addr()));
    let msg = u.payload().to_vec();
    let rpc::Message::Call(c) = rpc::parse(&msg).unwrap() else {
        panic!("not a call");
    };
    (
        c.xid,
        c.prog,
        c.proc_,
        msg[c.args_at..].to_vec(),
        (ip.dst_addr(), u.dst_port()),
    )
}

/// The server at 10.0.2.2 answers `xid` from `port` to `to` with `results`.
fn server_reply(h: &Harness, port: u16, to: (Ipv4Addr, u16), xid: u32, results: &[u8]) {
    let mut w = rpc::Writer::new();
    w.accepted_reply(xid, 0).fixed(results);
    let mut f = udp(
        (Ipv4Addr::new(10, 0, 2, 2), port),
        to,
        "02:bb:00:00:00:02",
        &w.buf,
    );
    f[6..12].copy_from_slice(&[2, 0xcc, 0, 0, 0, 1]);
    h.inject(1, &f);
}

fn fattr(kind: u32, fsid: u64, fileid: u64) -> Vec<u8> {
    let mut w = rpc::Writer::new();
    w.u32(kind)
        .u32(0o755)
        .u32(1)
        .u32(0)
        .u32(0)
        .u64(10)
        .u64(10)
        .u32(0)
        .u32(0);
    w.u64(fsid).u64(fileid).u64(0).u64(0).u64(0);
    w.buf
}

/// Play the server for the management core's mount of /srv/alpha: MNT (root handle
/// `root_pfh`), GETATTR of the root (fsid 5, fileid 6), FSSTAT and FSINFO (rtmax 32768, wtmax
/// 65536); all from the virtual address.
fn serve_mount(h: &Harness, root_pfh: &[u8; 28]) {
    let server = (Ipv4Addr::new(10, 0, 2, 2), 2049);
    let mine = (
        Ipv4Addr::new(10, 0, 1, 1),
        nfs_rewrite::upstream::CLIENT_PORT,
    );
    // The management core mounts the export (MNT), reads the root's attributes (GETATTR), the
    // capacity (FSSTAT) and the transfer sizes (FSINFO), from the virtual address.
    let (xid, prog, proc_, args, dst) = server_call(h);
    assert_eq!(
        (prog, proc_, dst),
        (rpc::program::MOUNT, 1, (server.0, 20048))
    );
    assert_eq!(&args[4..14], b"/srv/alpha");
    let mut r = rpc::Writer::new();
    r.u32(0).opaque(root_pfh).u32(1).u32(1);
    server_reply(h, 20048, mine, xid, &r.buf);
    let (xid, _, proc_, args, dst) = server_call(h);
    assert_eq!((proc_, dst), (Proc::Getattr as u32, server));
    assert_eq!(&args[4..32], root_pfh);
    let mut r = rpc::Writer::new();
    r.u32(0).fixed(&fattr(2, 5, 6));
    server_reply(h, 2049, mine, xid, &r.buf);
    let mut calls = server_calls(h, 2);
    calls.sort_by_key(|c| c.2);
    let (xid, _, proc_, _, _) = calls[0].clone();
    assert_eq!(proc_, Proc::Fsstat as u32);
    let mut r = rpc::Writer::new();
    r.u32(0).bool(false);
    for v in [1000u64, 500, 400, 100, 50, 40] {
        r.u64(v);
    }
    r.u32(0);
    server_reply(h, 2049, mine, xid, &r.buf);
    let (xid, _, proc_, _, _) = calls[1].clone();
    assert_eq!(proc_, Proc::Fsinfo as u32);
    let mut r = rpc::Writer::new();
    r.u32(0).bool(false);
    for v in [32768u32, 32768, 4096, 65536, 65536, 4096, 8192] {
        r.u32(v);
    }
    r.u64(1 << 40).u32(0).u32(1).u32(0x1b);
    server_reply(h, 2049, mine, xid, &r.buf);
}

/// LOOKUP of "alpha" in the virtual root, from `client`: (the root's VFH, the export's).
fn lookup_export(h: &Harness, client: (Ipv4Addr, u16)) -> (Vec<u8>, Vec<u8>) {
    let key = HandleKey::from_hex(SECRET).unwrap();
    let virt = (Ipv4Addr::new(10, 0, 1, 1), 2049);
    let root = nfs_rewrite::vfh::root_handle(&key, 0x5649_5254_5541_4c31);
    let mut call = rpc::Writer::new();
    call.call(40, rpc::program::NFS, 3, Proc::Lookup as u32)
        .opaque(&root)
        .opaque(b"alpha");
    h.inject(0, &udp(client, virt, "02:bb:00:00:00:01", &call.buf));
    let r = answer(h, 40, virt, client);
    assert_eq!(&r[..8], &[0, 0, 0, 0, 0, 0, 0, 40]);
    (root.to_vec(), r[8..48].to_vec())
}

#[test]
fn nfs_stage_in_the_pipeline() {
    let h = Harness::lan_wan(CONFIG);
    let client = (Ipv4Addr::new(10, 0, 1, 2), 800);
    let virt = (Ipv4Addr::new(10, 0, 1, 1), 2049);
    let server = (Ipv4Addr::new(10, 0, 2, 2), 2049);
    let mine = (virt.0, nfs_rewrite::upstream::CLIENT_PORT);
    let key = HandleKey::from_hex(SECRET).unwrap();
    let mch = key.mount_checksum(1, b"/srv/alpha");
    let root_pfh = [0x51u8; 28];

    serve_mount(&h, &root_pfh);
    // The server's transfer sizes are learned (what TCP clients are offered).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let servers = loop {
        let s = h.call(Request::App(AppRequest::NfsServers));
        if !s[0]["fsinfo"].is_null() || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(servers[0]["fsinfo"]["rtmax"], 32768);
    assert_eq!(servers[0]["fsinfo"]["wtmax"], 65536);
    assert_eq!(servers[0]["transport"], "udp");
    // TCP clients are then offered the smaller of the two (the management core's next tick).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while h.call(Request::App(AppRequest::NfsStats))["tcp"]["max_io"] != 32768 {
        assert!(
            std::time::Instant::now() < deadline,
            "TCP transfer size not lowered to the server's"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    // The virtual root lists the export; LOOKUP of its name gives the export root's VFH.
    let (root, export) = lookup_export(&h, client);
    let export = VirtualHandle::verify(&key, &export).unwrap();
    assert_eq!((export.sid, export.pfs, export.pin), (1, 5, 6));
    let mut call = rpc::Writer::new();
    call.call(39, rpc::program::NFS, 3, Proc::Readdirplus as u32)
        .opaque(&root)
        .u64(0)
        .u64(0)
        .u32(1000)
        .u32(4000);
    h.inject(0, &udp(client, virt, "02:bb:00:00:00:01", &call.buf));
    let r = answer(&h, 39, virt, client);
    let names: Vec<_> = [".", "..", "alpha"]
        .iter()
        .filter(|n| {
            r.windows(n.len() + 4)
                .any(|w| w[..4] == (n.len() as u32).to_be_bytes() && &w[4..] == n.as_bytes())
        })
        .collect();
    assert_eq!(
        names.len(),
        3,
        "READDIRPLUS of the virtual root lists . .. alpha"
    );

    // A GETATTR for a genuine handle the router has no physical handle for: the management
    // core walks the server for it (READDIRPLUS from the export root) while the call waits.
    let file_pfh = [0x77u8; 28];
    let vfh = VirtualHandle::for_object(&key, 1, mch, 5, 7, &file_pfh).encode(&key);
    let mut call = rpc::Writer::new();
    call.call(41, rpc::program::NFS, 3, Proc::Getattr as u32)
        .opaque(&vfh);
    h.inject(0, &udp(client, virt, "02:bb:00:00:00:01", &call.buf));
    h.expect_silence(0);
    assert_eq!(h.stage_count("nfs", "punts", "application"), 3);
    let (xid, _, proc_, args, _) = server_call(&h);
    assert_eq!(proc_, Proc::Readdirplus as u32);
    assert_eq!(&args[4..32], &root_pfh);
    let mut r = rpc::Writer::new();
    r.u32(0).bool(false).u64(0); // status, no dir attributes, cookieverf
    r.bool(true)
        .u64(7)
        .opaque(b"f")
        .u64(1)
        .bool(true)
        .fixed(&fattr(1, 5, 7))
        .bool(true)
        .opaque(&file_pfh);
    r.bool(false).bool(true);
    server_reply(&h, 2049, mine, xid, &r.buf);
    // The held call goes to the server at once, with the recovered handle, from the client's
    // address; the management core rewrites its reply (no worker had the call).
    let (xid, _, proc_, args, dst) = server_call(&h);
    assert_eq!((xid, proc_, dst), (41, Proc::Getattr as u32, server));
    assert_eq!(&args[4..32], &file_pfh);
    let mut r = rpc::Writer::new();
    r.u32(0).fixed(&fattr(1, 5, 7));
    server_reply(&h, 2049, client, 41, &r.buf);
    let got = answer(&h, 41, virt, client);
    assert_eq!(&got[..4], &[0, 0, 0, 0]);
    assert_eq!(
        &got[4 + 44..4 + 52],
        &0x5649_5254_5541_4c31u64.to_be_bytes(),
        "virtual fsid"
    );
    assert_eq!(
        &got[4 + 52..4 + 60],
        &nfs_rewrite::vfh::virtual_inode(&key, 1, 5, 7).to_be_bytes(),
        "fileid → VIN"
    );
    let s = h.call(Request::App(AppRequest::NfsStats));
    assert_eq!(s["recovery"]["recovered"], 1);
    assert_eq!(s["control"]["released"], 1);
    assert_eq!(s["control"]["replies_forwarded"], 1);
    assert_eq!(s["servers_mounted"], 1);

    // A server reply that answers no call: dropped.
    let mut reply = rpc::Writer::new();
    reply.accepted_reply(999, 0).u32(0);
    let mut f = udp(server, client, "02:bb:00:00:00:02", &reply.buf);
    f[6..12].copy_from_slice(&[2, 0xcc, 0, 0, 0, 1]);
    h.inject(1, &f);
    h.expect_silence(0);
    assert_eq!(
        h.call(Request::App(AppRequest::NfsStats))["control"]["unmatched_replies"],
        1
    );

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
    assert_eq!(s["nfs"]["control"]["virtual_root"], 2);
    assert_eq!(s["nfs"]["answered"], 5);
    assert_eq!(s["nfs"]["replies"], 0, "no reply was matched by a worker");
    assert_eq!(s["nfs"]["calls"], 4);
    assert_eq!(
        s["nfs"]["calls_rewritten"], 0,
        "the recovered call went from the management core"
    );
    assert_eq!(s["nfs"]["control"]["forwarded"], 1);
    assert_eq!(s["cores"][0]["stages"][1]["name"], "nfs");
    assert_eq!(s["nfs"]["servers"], 1);
    assert_eq!(s["mgmt"]["application_unhandled"], 1);
}

/// Split `frame` (Ethernet + IPv4 without options + payload) into fragments of `step` payload
/// bytes, as a host whose datagram exceeds the MTU sends it.
fn fragment(frame: &[u8], step: usize, ident: u16) -> Vec<Vec<u8>> {
    let body = &frame[34..];
    let mut out = Vec::new();
    let mut off = 0;
    while off < body.len() {
        let end = (off + step).min(body.len());
        let mut f = frame[..34].to_vec();
        f.extend_from_slice(&body[off..end]);
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.set_ident(ident);
        ip.set_total_len((20 + end - off) as u16);
        ip.set_flags_frag(false, end < body.len(), off as u16);
        ip.fill_checksum();
        out.push(f);
        off = end;
    }
    out
}

/// Reassemble `n` fragments the router sent on `port`: (source, destination, UDP payload).
fn reassembled(h: &Harness, port: usize, n: usize) -> ((Ipv4Addr, u16), (Ipv4Addr, u16), Vec<u8>) {
    let mut r = router::reasm::Reassembler::new(4, std::time::Duration::from_secs(5));
    let frames = h.expect_tx(port, n);
    let mut done = None;
    for f in &frames {
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert!(ip.verify_checksum() && ip.is_fragment() && f.len() <= 14 + 1500);
        done = r.add(f, std::time::Instant::now()).or(done);
    }
    let dg = done.expect("the fragments make a whole datagram").datagram;
    let ip = Ipv4Packet::new_checked(&dg[..]).unwrap();
    let u = packet::udp::UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(u.verify_checksum(ip.src_addr(), ip.dst_addr()));
    (
        (ip.src_addr(), u.src_port()),
        (ip.dst_addr(), u.dst_port()),
        u.payload().to_vec(),
    )
}

/// IP fragments of NFS traffic: the management core reassembles a client's WRITE that exceeds
/// the MTU, forwards it (in fragments) and rewrites the reply; a server's READLINK reply that
/// arrives in fragments is rewritten whole with the transaction the worker handed over.
#[test]
fn fragments_are_reassembled_and_rewritten() {
    let h = Harness::lan_wan(CONFIG);
    let client = (Ipv4Addr::new(10, 0, 1, 2), 800);
    let virt = (Ipv4Addr::new(10, 0, 1, 1), 2049);
    let server = (Ipv4Addr::new(10, 0, 2, 2), 2049);
    let key = HandleKey::from_hex(SECRET).unwrap();
    let mch = key.mount_checksum(1, b"/srv/alpha");
    let root_pfh = [0x51u8; 28];
    serve_mount(&h, &root_pfh);
    let export = VirtualHandle::for_object(&key, 1, mch, 5, 6, &root_pfh).encode(&key);

    // A 3000-byte WRITE in three fragments.
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let mut call = rpc::Writer::new();
    call.call(50, rpc::program::NFS, 3, Proc::Write as u32)
        .opaque(&export)
        .u64(0)
        .u32(3000)
        .u32(2)
        .opaque(&data);
    let whole = udp(client, virt, "02:bb:00:00:00:01", &call.buf);
    let mut frags = fragment(&whole, 1480, 77);
    frags.reverse(); // any order
    for f in &frags {
        h.inject(0, f);
    }
    let (src, dst, msg) = reassembled(&h, 1, 3);
    assert_eq!(
        (src, dst),
        (client, server),
        "from the client, to the server"
    );
    let rpc::Message::Call(c) = rpc::parse(&msg).unwrap() else {
        panic!("not a call")
    };
    assert_eq!(c.xid, 50);
    assert_eq!(&msg[c.args_at..c.args_at + 4], &28u32.to_be_bytes());
    assert_eq!(
        &msg[c.args_at + 4..c.args_at + 32],
        &root_pfh,
        "the physical handle"
    );
    assert_eq!(&msg[msg.len() - 3000..], &data[..], "the data, intact");
    let mut r = rpc::Writer::new();
    r.u32(0).bool(false).bool(false).u32(3000).u32(2).u64(9);
    server_reply(&h, 2049, client, 50, &r.buf);
    assert_eq!(&answer(&h, 50, virt, client)[..4], &[0, 0, 0, 0]);

    // A READLINK whose 2500-byte reply arrives in two fragments.
    let mut call = rpc::Writer::new();
    call.call(51, rpc::program::NFS, 3, Proc::Readlink as u32)
        .opaque(&export);
    h.inject(0, &udp(client, virt, "02:bb:00:00:00:01", &call.buf));
    let (xid, _, proc_, ..) = server_call(&h);
    assert_eq!((xid, proc_), (51, Proc::Readlink as u32));
    let target: Vec<u8> = (0..2500u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut w = rpc::Writer::new();
    w.accepted_reply(51, 0)
        .u32(0)
        .bool(true)
        .fixed(&fattr(5, 5, 6))
        .opaque(&target);
    let mut whole = udp(server, client, "02:bb:00:00:00:02", &w.buf);
    whole[6..12].copy_from_slice(&[2, 0xcc, 0, 0, 0, 1]);
    for f in fragment(&whole, 1480, 78) {
        h.inject(1, &f);
    }
    let (src, dst, msg) = reassembled(&h, 0, 2);
    assert_eq!((src, dst), (virt, client), "from the virtual server");
    let rpc::Message::Reply(rpc::Reply::Accepted {
        xid: 51,
        stat: rpc::AcceptStat::Success { results_at },
        ..
    }) = rpc::parse(&msg).unwrap()
    else {
        panic!("not the READLINK reply")
    };
    let res = &msg[results_at..];
    assert_eq!(
        &res[8 + 44..8 + 52],
        &0x5649_5254_5541_4c31u64.to_be_bytes(),
        "virtual fsid"
    );
    assert_eq!(&res[res.len() - 2500..], &target[..], "the path, intact");
    let s = h.call(Request::App(AppRequest::NfsStats));
    assert_eq!(s["fragments_punted"], 5);
    assert_eq!(s["reassembly"]["stats"]["reassembled"], 2);
    assert_eq!(s["control"]["adopted"], 1);
}

/// No router without a valid handle secret: a config whose secret is not 32 hex digits, or
/// that has none, does not load, and the secret's type cannot be built from anything else, so
/// no code path can fall back to a default key (a zero key would let anyone forge handles).
#[test]
fn no_valid_handle_secret_no_router() {
    for bad in [
        "not hex at all",
        "",
        "0011",
        "00112233445566778899aabbccddeefg",
    ] {
        let text = format!("{}{}", common::LAN_WAN, CONFIG.replace(SECRET, bad));
        let err = router::config::Config::parse(&text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nfs.handle_secret"), "{bad:?}: {err}");
        assert!(
            router::apps::nfs::config::HandleSecret::from_hex(bad).is_err(),
            "{bad:?}"
        );
    }
    let without = CONFIG.replace(&format!("handle_secret = \"{SECRET}\"\n"), "");
    assert_ne!(without, CONFIG);
    let err = router::config::Config::parse(&format!("{}{without}", common::LAN_WAN))
        .unwrap_err()
        .to_string();
    assert!(err.contains("handle_secret"), "{err}");
    let good = router::apps::nfs::config::HandleSecret::from_hex(SECRET).unwrap();
    assert_eq!(good.key(), HandleKey::from_hex(SECRET).unwrap());
}

/// A host that talks NFS to a real server's own address through the router (not to the virtual
/// server) gets its answers, both ways untouched: the call is routed as it is, and the reply —
/// a server's reply, to a client, on no virtual-server transaction — is routed back as it is.
#[test]
fn a_host_talking_to_a_server_directly_is_routed_untouched() {
    let h = Harness::lan_wan(CONFIG);
    serve_mount(&h, &[0x51u8; 28]);
    let client = (Ipv4Addr::new(10, 0, 1, 2), 901);
    let server = (Ipv4Addr::new(10, 0, 2, 2), 2049);
    let pfh = [0x77u8; 28];
    let mut call = rpc::Writer::new();
    call.call_sys(0x5151, rpc::program::NFS, 3, Proc::Getattr as u32, 0, 0)
        .opaque(&pfh);
    h.inject(0, &udp(client, server, "02:bb:00:00:00:01", &call.buf));
    let (xid, prog, proc_, args, dst) = server_call(&h);
    assert_eq!(
        (xid, prog, proc_, dst),
        (0x5151, rpc::program::NFS, 1, server)
    );
    assert_eq!(
        &args[4..32],
        &pfh,
        "the physical handle went through as it was"
    );
    // The reply carries the server's own fsid and file id: the client gets them unchanged.
    let results = {
        let mut r = rpc::Writer::new();
        r.u32(0).fixed(&fattr(1, 5, 4242));
        r.buf
    };
    server_reply(&h, 2049, client, 0x5151, &results);
    let got = answer(&h, 0x5151, server, client);
    assert_eq!(got, results, "the reply went through as the server sent it");
    let s = h.call(Request::App(AppRequest::NfsStats));
    assert_eq!(
        (s["direct_calls"].as_u64(), s["direct_replies"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(s["control"]["unmatched_replies"], 0);
}

/// Two run-to-completion workers: the soft ports spread frames over both RX queues by flow, so
/// a call and its reply (different flows) often arrive on different workers. Each is handed
/// to the worker that owns the transaction; every reply is rewritten, none goes unmatched.
#[test]
fn calls_and_replies_meet_across_two_workers() {
    let two = format!(
        "{}{CONFIG}",
        common::LAN_WAN.replace("workers = [0]", "workers = [0, 1]")
    );
    let h = Harness::start(&two);
    let root_pfh = [0x51u8; 28];
    serve_mount(&h, &root_pfh);
    let virt = (Ipv4Addr::new(10, 0, 1, 1), 2049);
    let server = (Ipv4Addr::new(10, 0, 2, 2), 2049);
    let (_, export) = lookup_export(&h, (Ipv4Addr::new(10, 0, 1, 2), 799));
    let calls = 64u16;
    for k in 0..calls {
        let client = (Ipv4Addr::new(10, 0, 1, 2), 700 + k);
        let xid = 0x1000 + u32::from(k);
        let mut call = rpc::Writer::new();
        call.call(xid, rpc::program::NFS, 3, Proc::Getattr as u32)
            .opaque(&export);
        h.inject(0, &udp(client, virt, "02:bb:00:00:00:01", &call.buf));
        let (sxid, _, proc_, args, dst) = server_call(&h);
        assert_eq!((sxid, proc_, dst), (xid, Proc::Getattr as u32, server));
        assert_eq!(&args[4..32], &root_pfh, "VFH → PFH");
        let mut r = rpc::Writer::new();
        r.u32(0).fixed(&fattr(2, 5, 6));
        server_reply(&h, 2049, client, xid, &r.buf);
        let got = answer(&h, xid, virt, client);
        assert_eq!(&got[..4], &[0, 0, 0, 0]);
        assert_eq!(
            &got[4 + 44..4 + 52],
            &0x5649_5254_5541_4c31u64.to_be_bytes(),
            "reply {k} rewritten (virtual fsid)"
        );
    }
    let s = h.call(Request::Stats);
    let cores = s["cores"].as_array().unwrap();
    let workers: Vec<_> = cores.iter().filter(|c| c["role"] == "worker").collect();
    assert_eq!(workers.len(), 2);
    let handed: u64 = workers
        .iter()
        .map(|c| c["handed_off"].as_u64().unwrap())
        .sum();
    assert!(
        handed > 0,
        "no packet changed workers: the test proves nothing"
    );
    for c in &workers {
        let rx: u64 = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["rx"].as_u64().unwrap())
            .sum();
        assert!(rx > 0, "worker {} received nothing", c["core"]);
    }
    let n = h.call(Request::App(AppRequest::NfsStats));
    assert_eq!(n["control"]["unmatched_replies"], 0);
    assert_eq!(
        n["control"]["replies_forwarded"], 0,
        "every reply rewritten on a worker"
    );
    println!("{handed} of {} packets handed over", 2 * u64::from(calls));
}

const VIRT: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 0, 1, 1), 2049);
const SERVER: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 0, 2, 2), 2049);
/// The management core's own client (mounts, recovery walks).
const MINE: (Ipv4Addr, u16) = (
    Ipv4Addr::new(10, 0, 1, 1),
    nfs_rewrite::upstream::CLIENT_PORT,
);
const ROOT_PFH: [u8; 28] = [0x51; 28];

/// A router with the export mounted (root handle [`ROOT_PFH`]), and a client on `port`.
fn mounted(port: u16) -> (Harness, (Ipv4Addr, u16)) {
    let h = Harness::lan_wan(CONFIG);
    serve_mount(&h, &ROOT_PFH);
    (h, (Ipv4Addr::new(10, 0, 1, 2), port))
}

/// `call` from `client` to the virtual server's NFS port.
fn to_virtual(h: &Harness, client: (Ipv4Addr, u16), call: &rpc::Writer) {
    h.inject(0, &udp(client, VIRT, "02:bb:00:00:00:01", &call.buf));
}

/// The VFH of a file of the export (fsid 5) with `fileid` and physical handle `pfh`.
fn file_vfh(fileid: u64, pfh: &[u8]) -> Vec<u8> {
    let key = HandleKey::from_hex(SECRET).unwrap();
    let mch = key.mount_checksum(1, b"/srv/alpha");
    VirtualHandle::for_object(&key, 1, mch, 5, fileid, pfh)
        .encode(&key)
        .to_vec()
}

/// The results of a reply the router sent the client, whatever its accept status: (status,
/// what follows it).
fn rpc_status(h: &Harness, xid: u32) -> (u32, Vec<u8>) {
    let f = h.expect_tx(0, 1).remove(0);
    let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
    let u = packet::udp::UdpPacket::new_checked(ip.payload()).unwrap();
    let msg = u.payload();
    assert_eq!(&msg[..8], &[&xid.to_be_bytes()[..], &[0, 0, 0, 1]].concat());
    // xid, REPLY, MSG_ACCEPTED, verifier (AUTH_NONE, empty), accept_stat.
    let stat = u32::from_be_bytes(msg[20..24].try_into().unwrap());
    (stat, msg[24..].to_vec())
}

/// A call whose arguments do not decode gets GARBAGE_ARGS from the router, as a server would
/// answer it, so the client fails at once instead of retransmitting until its timeout.
#[test]
fn undecodable_arguments_get_garbage_args() {
    let (h, client) = mounted(801);
    // LOOKUP: a directory handle's length, and the datagram ends.
    let mut call = rpc::Writer::new();
    call.call(61, rpc::program::NFS, 3, Proc::Lookup as u32)
        .u32(40);
    to_virtual(&h, client, &call);
    assert_eq!(rpc_status(&h, 61), (4, vec![]), "GARBAGE_ARGS");
    // A READ whose handle is cut short.
    let mut call = rpc::Writer::new();
    call.call(62, rpc::program::NFS, 3, Proc::Read as u32)
        .u32(40)
        .fixed(&[1; 12]);
    to_virtual(&h, client, &call);
    assert_eq!(rpc_status(&h, 62).0, 4);
    let s = h.call(Request::App(AppRequest::NfsStats));
    assert_eq!(s["control"]["garbage_args"], 2, "{s}");
    h.expect_silence(1);
}

/// A server that answers READDIRPLUS with NFS3ERR_NOTSUPP (RFC 1813 allows it; user-space
/// servers do): the recovery walk lists the directory with READDIR and looks each entry up,
/// finds the handle, releases the waiting call; the server is remembered, so the next walk
/// starts with READDIR; a handle that walk does not find goes stale.
#[test]
fn recovery_walks_a_server_without_readdirplus() {
    let (h, client) = mounted(802);
    let (virt, server, mine, root_pfh) = (VIRT, SERVER, MINE, ROOT_PFH);
    let file_pfh = [0x77u8; 28];
    let vfh = file_vfh(7, &file_pfh);
    let mut call = rpc::Writer::new();
    call.call(71, rpc::program::NFS, 3, Proc::Getattr as u32)
        .opaque(&vfh);
    to_virtual(&h, client, &call);
    let (xid, _, proc_, _, _) = server_call(&h);
    assert_eq!(proc_, Proc::Readdirplus as u32);
    let mut r = rpc::Writer::new();
    r.u32(nfs_rewrite::wire::nfs3::stat::NOTSUPP).bool(false);
    server_reply(&h, 2049, mine, xid, &r.buf);

    // The same directory again, with READDIR: dir, count (no maxcount).
    let (xid, _, proc_, args, _) = server_call(&h);
    assert_eq!(proc_, Proc::Readdir as u32);
    assert_eq!(&args[4..32], &root_pfh);
    assert_eq!(args.len(), 32 + 8 + 8 + 4, "READDIR3args");
    let mut r = rpc::Writer::new();
    r.u32(0).bool(false).u64(0x1234); // status, no dir attributes, cookieverf
    for (fileid, name, cookie) in [(2u64, ".", 1u64), (8, "d", 2), (7, "f", 3)] {
        r.bool(true).u64(fileid).opaque(name.as_bytes()).u64(cookie);
    }
    r.bool(false).bool(true);
    server_reply(&h, 2049, mine, xid, &r.buf);

    // A LOOKUP per entry (not "."), in one window.
    let mut lookups = server_calls(&h, 2);
    lookups.sort_by_key(|c| c.3.clone());
    let names: Vec<_> = lookups.iter().map(|c| c.3[32..].to_vec()).collect();
    assert_eq!(
        names,
        [
            [&1u32.to_be_bytes()[..], b"d\0\0\0"].concat(),
            [&1u32.to_be_bytes()[..], b"f\0\0\0"].concat()
        ]
    );
    for (xid, _, proc_, args, _) in &lookups {
        assert_eq!(*proc_, Proc::Lookup as u32);
        assert_eq!(&args[4..32], &root_pfh);
        let (kind, fileid, pfh) = if args[36] == b'd' {
            (2, 8, [0x88u8; 28])
        } else {
            (1, 7, file_pfh)
        };
        let mut r = rpc::Writer::new();
        r.u32(0)
            .opaque(&pfh)
            .bool(true)
            .fixed(&fattr(kind, 5, fileid))
            .bool(false);
        server_reply(&h, 2049, mine, *xid, &r.buf);
    }
    // Found: the waiting call goes to the server with the physical handle.
    let (xid, _, proc_, args, dst) = server_call(&h);
    assert_eq!((xid, proc_, dst), (71, Proc::Getattr as u32, server));
    assert_eq!(&args[4..32], &file_pfh);
    let mut r = rpc::Writer::new();
    r.u32(0).fixed(&fattr(1, 5, 7));
    server_reply(&h, 2049, client, 71, &r.buf);
    let got = answer(&h, 71, virt, client);
    assert_eq!(&got[..4], &[0, 0, 0, 0]);
    let s = h.call(Request::App(AppRequest::NfsStats));
    assert_eq!(s["recovery"]["recovered"], 1, "{s}");
    assert_eq!(s["recovery"]["readdirplus_refused"], 1);
    assert_eq!(s["recovery"]["walk_lookups"], 2);
    let servers = h.call(Request::App(AppRequest::NfsServers));
    assert_eq!(servers[0]["walk"], "readdir+lookup");

    // Another unknown handle: this server is walked with READDIR from the start. An empty
    // tree: the handle is gone, and the client's retransmission gets NFS3ERR_STALE.
    let gone = file_vfh(9, &[0x99; 28]);
    let mut call = rpc::Writer::new();
    call.call(72, rpc::program::NFS, 3, Proc::Getattr as u32)
        .opaque(&gone);
    to_virtual(&h, client, &call);
    let (xid, _, proc_, _, _) = server_call(&h);
    assert_eq!(proc_, Proc::Readdir as u32);
    let mut r = rpc::Writer::new();
    r.u32(0).bool(false).u64(0).bool(false).bool(true);
    server_reply(&h, 2049, mine, xid, &r.buf);
    h.expect_silence(1);
    to_virtual(&h, client, &call);
    assert_eq!(
        answer(&h, 72, virt, client),
        nfs_rewrite::wire::nfs3::stat::STALE.to_be_bytes()
    );
    let s = h.call(Request::App(AppRequest::NfsStats));
    assert_eq!(s["recovery"]["failed"], 1, "{s}");
    assert_eq!(s["recovery"]["readdirplus_refused"], 1);
}

/// Fortification at the border: names a server could not hold and arguments that disagree
/// with themselves are answered by the router with the protocol's error, counted by reason,
/// and never reach the server.
#[test]
fn faulty_calls_never_reach_the_server() {
    let (h, client) = mounted(803);
    let virt = VIRT;
    let (_, export) = lookup_export(&h, client);
    let inval = nfs_rewrite::wire::nfs3::stat::INVAL;
    let toolong = nfs_rewrite::wire::nfs3::stat::NAMETOOLONG;
    let long = vec![b'x'; 300];
    for (xid, name, want) in [
        (81u32, &b"a/b"[..], inval),
        (82, b"", inval),
        (83, b"nul\0here", inval),
        (84, &long[..], toolong),
    ] {
        let mut call = rpc::Writer::new();
        call.call(xid, rpc::program::NFS, 3, Proc::Lookup as u32)
            .opaque(&export)
            .opaque(name);
        to_virtual(&h, client, &call);
        let r = answer(&h, xid, virt, client);
        assert_eq!(&r[..4], &want.to_be_bytes(), "LOOKUP {name:?}");
    }
    // A symlink target beyond 4096 bytes (PATH_MAX).
    let mut call = rpc::Writer::new();
    call.call(85, rpc::program::NFS, 3, Proc::Symlink as u32)
        .opaque(&export)
        .opaque(b"link")
        .u32(0)
        .u32(0)
        .u32(0)
        .u32(0)
        .u32(0)
        .u32(0)
        .opaque(&[b'p'; 5000]);
    to_virtual(&h, client, &call);
    assert_eq!(&answer(&h, 85, virt, client)[..4], &toolong.to_be_bytes());
    // A WRITE whose count is not its data's length.
    let mut call = rpc::Writer::new();
    call.call(86, rpc::program::NFS, 3, Proc::Write as u32)
        .opaque(&export)
        .u64(0)
        .u32(100)
        .u32(0)
        .opaque(&[7; 10]);
    to_virtual(&h, client, &call);
    assert_eq!(rpc_status(&h, 86).0, 4, "GARBAGE_ARGS");
    // A GETATTR with bytes after its arguments: the lengths disagree.
    let mut call = rpc::Writer::new();
    call.call(87, rpc::program::NFS, 3, Proc::Getattr as u32)
        .opaque(&export)
        .u64(0);
    to_virtual(&h, client, &call);
    assert_eq!(rpc_status(&h, 87).0, 4, "GARBAGE_ARGS");
    h.expect_silence(1);
    let c = &h.call(Request::App(AppRequest::NfsStats))["control"];
    assert_eq!(
        (&c["bad_names"], &c["long_names"], &c["garbage_args"]),
        (&3.into(), &2.into(), &2.into()),
        "{c}"
    );
}
