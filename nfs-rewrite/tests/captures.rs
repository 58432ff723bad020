//! Golden tests on real captures of NFSv3 peers (`tests/fixtures/nfs3-*.pcap`, copied from
//! `../shared/reference/captures/`):
//! every RPC message — UDP datagrams, and TCP streams reassembled and split at record marks —
//! is decoded and walked to exactly its last byte, calls matched to replies by (client
//! address, port, xid) since real clients reuse xids, and every handle a client sends was
//! handed out earlier by a server reply (MNT, LOOKUP, CREATE, READDIRPLUS …).

use nfs_rewrite::wire::{mount, nfs3, rpc, Field};
use packet::ethernet::{ethertype, EthernetFrame};
use packet::ipv4::{protocol, Ipv4Packet};
use packet::tcp::TcpPacket;
use packet::udp::UdpPacket;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

/// Captures are copied from `../shared/reference/captures/` into `tests/fixtures/`.
fn capture(name: &str) -> Option<Vec<Vec<u8>>> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    Some(
        packet::pcap::read_file(p)
            .ok()?
            .into_iter()
            .map(|r| r.data)
            .collect(),
    )
}

type Endpoint = ([u8; 4], u16);

/// One RPC message with the endpoints it travelled between.
struct Msg {
    src: Endpoint,
    dst: Endpoint,
    bytes: Vec<u8>,
}

/// One direction of a TCP connection being reassembled.
#[derive(Default)]
struct Stream {
    next_seq: Option<u32>,
    early: BTreeMap<u32, Vec<u8>>,
    buf: Vec<u8>,
    record: Vec<u8>,
}

impl Stream {
    /// Add a segment; return the RPC messages it completed.
    fn push(&mut self, seq: u32, data: &[u8]) -> Vec<Vec<u8>> {
        let next = *self.next_seq.get_or_insert(seq);
        if seq.wrapping_sub(next) as i32 >= 0 {
            self.early.entry(seq).or_insert_with(|| data.to_vec());
        }
        while let Some(d) = self.next_seq.and_then(|n| self.early.remove(&n)) {
            self.next_seq = self.next_seq.map(|n| n.wrapping_add(d.len() as u32));
            self.buf.extend_from_slice(&d);
        }
        let mut out = Vec::new();
        while let Some((last, len)) = rpc::record_mark(&self.buf) {
            if self.buf.len() < 4 + len {
                break;
            }
            self.record.extend_from_slice(&self.buf[4..4 + len]);
            self.buf.drain(..4 + len);
            if last {
                out.push(std::mem::take(&mut self.record));
            }
        }
        out
    }
}

/// Every RPC message in capture order (a TCP message at the segment that completed it).
fn messages(frames: &[Vec<u8>]) -> Vec<Msg> {
    let mut out = Vec::new();
    let mut streams: HashMap<(Endpoint, Endpoint), Stream> = HashMap::new();
    for f in frames {
        let Ok(eth) = EthernetFrame::new_checked(&f[..]) else {
            continue;
        };
        if eth.ethertype() != ethertype::IPV4 {
            continue;
        }
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            continue;
        };
        let (s, d) = (ip.src_addr().octets(), ip.dst_addr().octets());
        match ip.protocol() {
            protocol::UDP => {
                let u = UdpPacket::new_checked(ip.payload()).unwrap();
                out.push(Msg {
                    src: (s, u.src_port()),
                    dst: (d, u.dst_port()),
                    bytes: u.payload().to_vec(),
                });
            }
            protocol::TCP => {
                let t = TcpPacket::new_checked(ip.payload()).unwrap();
                if t.payload().is_empty() {
                    continue;
                }
                let (src, dst) = ((s, t.src_port()), (d, t.dst_port()));
                for bytes in streams
                    .entry((src, dst))
                    .or_default()
                    .push(t.seq_number(), t.payload())
                {
                    out.push(Msg { src, dst, bytes });
                }
            }
            _ => {}
        }
    }
    for (k, st) in &streams {
        assert!(
            st.buf.is_empty() && st.record.is_empty(),
            "stream {k:?} ends inside a record"
        );
    }
    out
}

#[derive(Default, Debug)]
struct Seen {
    calls: usize,
    replies: usize,
    procs: BTreeSet<String>,
    handle_lens: BTreeSet<usize>,
    fattrs: usize,
}

fn check(name: &str) -> Seen {
    let frames = capture(name).unwrap_or_else(|| panic!("tests/fixtures/{name} is missing"));
    let mut seen = Seen::default();
    let mut pending: HashMap<(Endpoint, u32), (u32, u32)> = HashMap::new();
    let mut handed_out: HashSet<Vec<u8>> = HashSet::new();
    for m in messages(&frames) {
        let msg = rpc::parse(&m.bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        match msg {
            rpc::Message::Call(c) => {
                seen.calls += 1;
                pending.insert((m.src, c.xid), (c.prog, c.proc_));
                let end = match c.prog {
                    rpc::program::NFS => {
                        let p = nfs3::Proc::from_u32(c.proc_).unwrap();
                        seen.procs.insert(format!("nfs.{}.call", p.name()));
                        nfs3::walk_call(p, &m.bytes, c.args_at, |f| {
                            if let Field::Handle { at, len } = f {
                                let h = m.bytes[at + 4..at + 4 + len].to_vec();
                                assert!(
                                    handed_out.contains(&h),
                                    "{name}: client sent a handle no reply gave it"
                                );
                                seen.handle_lens.insert(len);
                            }
                        })
                        .unwrap_or_else(|e| panic!("{name}: {} call: {e}", p.name()))
                    }
                    rpc::program::MOUNT => {
                        seen.procs.insert(format!("mount.{}.call", c.proc_));
                        mount::walk_call(c.proc_, &m.bytes, c.args_at).unwrap().1
                    }
                    other => panic!("{name}: program {other}"),
                };
                assert_eq!(
                    end,
                    m.bytes.len(),
                    "{name}: call {} not walked to its end",
                    c.proc_
                );
            }
            rpc::Message::Reply(r) => {
                seen.replies += 1;
                let (prog, proc_) = pending
                    .remove(&(m.dst, r.xid()))
                    .unwrap_or_else(|| panic!("{name}: reply to no call"));
                let rpc::Reply::Accepted {
                    stat: rpc::AcceptStat::Success { results_at },
                    ..
                } = r
                else {
                    continue;
                };
                let mut record = |f: Field| match f {
                    Field::Handle { at, len } => {
                        handed_out.insert(m.bytes[at + 4..at + 4 + len].to_vec());
                        seen.handle_lens.insert(len);
                    }
                    Field::Fattr { .. } => seen.fattrs += 1,
                    _ => {}
                };
                let end = if prog == rpc::program::NFS {
                    let p = nfs3::Proc::from_u32(proc_).unwrap();
                    seen.procs.insert(format!("nfs.{}.reply", p.name()));
                    nfs3::walk_reply(p, &m.bytes, results_at, &mut record)
                        .unwrap_or_else(|e| panic!("{name}: {} reply: {e}", p.name()))
                        .1
                } else {
                    seen.procs.insert(format!("mount.{proc_}.reply"));
                    mount::walk_reply(proc_, &m.bytes, results_at, &mut record)
                        .unwrap()
                        .1
                };
                assert_eq!(
                    end,
                    m.bytes.len(),
                    "{name}: reply to {prog}/{proc_} not walked to its end"
                );
            }
        }
    }
    eprintln!("{name}: {seen:?}");
    assert!(seen.calls > 0 && seen.replies > 0);
    seen
}

#[test]
fn udp_ganesha() {
    let s = check("nfs3-udp-ganesha.pcap");
    for p in [
        "mount.1.call",
        "mount.1.reply",
        "nfs.lookup.reply",
        "nfs.read.call",
        "nfs.create.reply",
        "nfs.write.call",
        "nfs.readdirplus.reply",
    ] {
        assert!(s.procs.contains(p), "missing {p}");
    }
    assert!(s.fattrs > 10);
}

#[test]
fn tcp_libnfs_ganesha() {
    let s = check("nfs3-tcp-libnfs-ganesha.pcap");
    for p in [
        "mount.5.reply",
        "nfs.fsinfo.reply",
        "nfs.getattr.reply",
        "nfs.access.reply",
    ] {
        assert!(s.procs.contains(p), "missing {p}");
    }
}

#[test]
fn tcp_libnfs_pipelined() {
    let s = check("nfs3-tcp-libnfs-pipelined.pcap");
    assert!(s.calls >= 10, "{s:?}");
}

#[test]
fn tcp_unfs3_variable_length_handles() {
    let s = check("nfs3-tcp-unfs3-varlen-handles.pcap");
    assert!(
        s.handle_lens.len() > 1,
        "handle lengths vary with depth: {:?}",
        s.handle_lens
    );
    assert!(s.handle_lens.iter().all(|&l| (1..=64).contains(&l)));
}
