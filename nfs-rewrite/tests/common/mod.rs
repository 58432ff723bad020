//! Reading the NFS captures: frames → RPC messages in capture order (UDP datagrams; TCP
//! streams reassembled and split into records by the router's own `RecordReader`, segment by
//! segment as they arrived).
#![allow(dead_code)]

use nfs_rewrite::wire::record::RecordReader;
use packet::ethernet::{ethertype, EthernetFrame};
use packet::ipv4::{protocol, Ipv4Packet};
use packet::tcp::TcpPacket;
use packet::udp::UdpPacket;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// Captures are copied from `../shared/reference/captures/` into `tests/fixtures/`.
pub fn capture(name: &str) -> Option<Vec<Vec<u8>>> {
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

pub type Endpoint = ([u8; 4], u16);

/// One RPC message with the endpoints it travelled between.
pub struct Msg {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub bytes: Vec<u8>,
}

/// One direction of a TCP connection being reassembled.
struct Stream {
    next_seq: Option<u32>,
    early: BTreeMap<u32, Vec<u8>>,
    records: RecordReader,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            next_seq: None,
            early: BTreeMap::new(),
            records: RecordReader::new(4 << 20),
        }
    }
}

impl Stream {
    /// Add a segment; return the RPC messages it completed.
    fn push(&mut self, seq: u32, data: &[u8]) -> Vec<Vec<u8>> {
        let next = *self.next_seq.get_or_insert(seq);
        if seq.wrapping_sub(next) as i32 >= 0 {
            self.early.entry(seq).or_insert_with(|| data.to_vec());
        }
        let mut out = Vec::new();
        while let Some(d) = self.next_seq.and_then(|n| self.early.remove(&n)) {
            self.next_seq = self.next_seq.map(|n| n.wrapping_add(d.len() as u32));
            self.records
                .feed(&d, |r| {
                    out.push(r);
                    true
                })
                .expect("a capture's record stream is well formed");
        }
        out
    }
}

/// Every RPC message in capture order (a TCP message at the segment that completed it).
pub fn messages(frames: &[Vec<u8>]) -> Vec<Msg> {
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
        assert!(st.records.idle(), "stream {k:?} ends inside a record");
    }
    out
}
