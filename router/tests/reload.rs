//! Reloading the config file (`routerctl reload`; SIGHUP does the same, see the IPv4 smoke
//! test): the config's routes follow the file, routes added with `routerctl` stay, and a file
//! that does not load or changes what needs a restart is refused with the reason, the running
//! router unchanged.

mod common;

use common::{mac, Harness};
use packet::icmp::IcmpPacket;
use packet::ipv4::Ipv4Packet;
use router::admin::Request;
use std::net::Ipv4Addr;

const CONFIG: &str = r#"
[[static_neighbours]]
port = "wan"
address = "10.0.2.2"
mac = "02:cc:00:00:00:01"
[[static_neighbours]]
port = "lan"
address = "10.0.1.2"
mac = "02:aa:00:00:00:01"
[[routes]]
prefix = "10.9.0.0/16"
via = "10.0.2.2"
"#;

fn to(dst: Ipv4Addr) -> Vec<u8> {
    packet::udp::frame(
        mac("02:aa:00:00:00:01"),
        mac("02:bb:00:00:00:01"),
        Ipv4Addr::new(10, 0, 1, 2),
        dst,
        5000,
        9,
        b"where to?",
    )
}

/// Does a datagram to `dst` go out on the wan (forwarded), or come back as an ICMP error?
fn forwarded(h: &Harness, dst: Ipv4Addr) -> bool {
    h.inject(0, &to(dst));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(f) = h.wires[1].take().first() {
            assert_eq!(Ipv4Packet::new_checked(&f[14..]).unwrap().dst_addr(), dst);
            return true;
        }
        if let Some(f) = h.wires[0].take().first() {
            let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
            assert_eq!(ip.protocol(), packet::ipv4::protocol::ICMP);
            let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
            assert_eq!(icmp.msg_type(), packet::icmp::kind::DEST_UNREACHABLE);
            return false;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "neither forwarded nor refused"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn reload(h: &Harness) -> router::admin::Response {
    h.admin().call(&Request::Reload).unwrap()
}

#[test]
fn reload_applies_routes_and_refuses_what_needs_a_restart() {
    let h = Harness::lan_wan(CONFIG);
    let (a, b) = (Ipv4Addr::new(10, 9, 1, 1), Ipv4Addr::new(10, 8, 1, 1));
    assert!(forwarded(&h, a));
    assert!(!forwarded(&h, b));
    // A route of routerctl's own: a reload leaves it.
    h.call(Request::RouteAdd {
        prefix: "10.7.0.0/16".into(),
        via: Some(Ipv4Addr::new(10, 0, 2, 2)),
        port: None,
        blackhole: false,
    });

    // The file now routes 10.8/16 instead of 10.9/16, and logs at debug.
    let file = h.config_file();
    let original = std::fs::read_to_string(&file).unwrap();
    let edited = original.replace("10.9.0.0/16", "10.8.0.0/16");
    assert_ne!(edited, original);
    std::fs::write(&file, &edited).unwrap();
    let r = reload(&h);
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(
        (
            &r.data["routes_added"],
            &r.data["routes_removed"],
            &r.data["routes_changed"]
        ),
        (&1.into(), &1.into(), &0.into()),
        "{}",
        r.data
    );
    assert!(forwarded(&h, b));
    assert!(!forwarded(&h, a));
    assert!(
        forwarded(&h, Ipv4Addr::new(10, 7, 0, 1)),
        "routerctl's route went"
    );

    // A file that does not parse: refused, nothing changed.
    std::fs::write(&file, format!("{edited}\n[[routes]\n")).unwrap();
    let r = reload(&h);
    assert!(!r.ok);
    let e = r.error.unwrap();
    assert!(
        e.contains("router.toml") && e.contains("nothing changed"),
        "{e}"
    );
    assert!(forwarded(&h, b));

    // A change that needs a restart names its key, and nothing changes (not even the routes
    // the same file also changes).
    assert!(edited.find("mtu = 1500") < edited.find("name = \"wan\""));
    let mtu = edited
        .replace("10.8.0.0/16", "10.6.0.0/16")
        .replacen("mtu = 1500", "mtu = 1400", 1);
    std::fs::write(&file, mtu).unwrap();
    let r = reload(&h);
    assert!(!r.ok);
    let e = r.error.unwrap();
    assert!(
        e.starts_with("ports[0].mtu changed") && e.contains("restart"),
        "{e}"
    );
    assert!(forwarded(&h, b));
    assert!(!forwarded(&h, Ipv4Addr::new(10, 6, 0, 1)));

    let m = &h.call(Request::Stats)["mgmt"];
    assert_eq!(
        (&m["reloads"], &m["reloads_refused"]),
        (&1.into(), &2.into()),
        "{m}"
    );
}
