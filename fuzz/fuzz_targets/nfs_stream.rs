//! The TCP virtual server's streams over arbitrary bytes: a client connection and a server
//! connection fed in arbitrary pieces, through the real controller. Never a panic; a client
//! never holds more than a record's bound; what the proxy writes back is whole records.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nfs_rewrite::control::Controller;
use nfs_rewrite::datapath::{NfsShared, Server};
use nfs_rewrite::rewrite::Limits;
use nfs_rewrite::stream::{StreamConfig, StreamProxy};
use nfs_rewrite::tables::HandleTable;
use nfs_rewrite::vfh::HandleKey;
use nfs_rewrite::wire::record::RecordReader;
use std::net::Ipv4Addr;
use std::sync::Arc;

const SERVER: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 0, 2, 2), 2049);

fuzz_target!(|data: &[u8]| {
    let key = HandleKey::new(1, 2);
    let mch = key.mount_checksum(1, b"/x");
    let mut ctl = Controller::new(
        Arc::new(NfsShared {
            key,
            handles: Arc::new(HandleTable::new(64)),
            virtual_addr: Ipv4Addr::new(10, 0, 1, 1),
            nfs_port: 2049,
            virtual_fsid: 7,
            limits: Limits::for_mtu(1500),
            servers: vec![Server {
                sid: 1,
                name: "x".into(),
                addr: SERVER.0,
                nfs_port: SERVER.1,
                mount_port: 20048,
                export: "/x".into(),
                mch,
                bridge: false,
                clients: vec![],
                squash: nfs_rewrite::policy::Squash::None,
                pair: Default::default(),
            }],
        policy: Default::default(),
        replicated: vec![],
        diverted: Default::default(),
        }),
        20048,
        0,
    );
    let cfg = StreamConfig {
        max_record: 4096,
        ..StreamConfig::default()
    };
    let mut p = StreamProxy::new(cfg, 0);
    p.client_opened(1, (Ipv4Addr::new(10, 0, 0, 2), 1), 2049, 0);
    // First byte: where the client's stream ends and the server's begins; second: piece size.
    let (Some(&cut), Some(&piece)) = (data.first(), data.get(1)) else {
        return;
    };
    let rest = &data[2.min(data.len())..];
    let cut = (usize::from(cut) * rest.len() / 255).min(rest.len());
    let (client, server) = rest.split_at(cut);
    let piece = usize::from(piece).max(1);
    for (i, chunk) in client.chunks(piece).enumerate() {
        if p.client_data(1, chunk, &mut ctl, i as u64).is_err() {
            break;
        }
    }
    p.leg_up(SERVER, 1);
    for chunk in server.chunks(piece) {
        if p.leg_data(SERVER, chunk, &mut ctl, 2).is_err() {
            break;
        }
    }
    p.released(&mut ctl, 3);
    let _ = p.poll(1_000_000);
    // Whatever is queued for the client is a sequence of whole records.
    if let Some(out) = p.client_output(1) {
        let mut bytes = Vec::new();
        while !out.is_empty() {
            let f = out.front().to_vec();
            out.advance(f.len());
            bytes.extend(f);
        }
        let mut r = RecordReader::new(usize::MAX);
        r.feed(&bytes, |_| true).expect("records the proxy wrote");
        assert!(r.idle());
    }
});
