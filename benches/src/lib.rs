//! Workload generators for the benchmarks: pcap files of packets and route tables.

use packet::ethernet::EthernetAddress;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

/// A small deterministic PRNG (xorshift64*), so workloads are identical between runs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A route table shaped like a real one: mostly /16–/24, some shorter, 2% longer than /24, all
/// inside 16.0.0.0–223.255.255.255 minus 127/8, so they never cover the benchmark's own
/// subnets (10/8) and no destination is martian.
pub fn route_prefixes(n: usize, seed: u64) -> Vec<(Ipv4Addr, u8)> {
    let mut rng = Rng::new(seed);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = match rng.below(100) {
            0..=4 => 8 + rng.below(8) as u8,
            5..=59 => 24,
            60..=97 => 16 + rng.below(8) as u8,
            _ => 25 + rng.below(8) as u8,
        };
        // Unicast space outside 0/8, 10/8 (the benchmark's own subnets) and 127/8 (martian).
        let first = match 16 + rng.below(208) as u32 {
            127 => 128,
            f => f,
        };
        let addr = (first << 24) | (rng.next_u64() as u32 & 0x00ff_ffff);
        let p = addr & packet::ipv4::mask(len);
        if seen.insert((p, len)) {
            out.push((Ipv4Addr::from(p), len));
        }
    }
    out
}

/// Write a routes file (`PREFIX via GW`), as `fib.routes_file` reads it.
pub fn write_routes_file(
    path: &Path,
    prefixes: &[(Ipv4Addr, u8)],
    gateway: Ipv4Addr,
) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (p, l) in prefixes {
        writeln!(f, "{p}/{l} via {gateway}")?;
    }
    f.flush()
}

/// One Ethernet/IPv4/UDP frame of `frame_len` bytes (≥ 42; 60 + 4-byte FCS = 64 on the wire).
pub fn udp_frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    frame_len: usize,
) -> Vec<u8> {
    let payload = vec![0u8; frame_len.max(42) - 42];
    packet::udp::frame(src_mac, dst_mac, src, dst, sport, dport, &payload)
}

/// 64-byte IPv4/UDP frames to `count` destinations drawn from `prefixes` (one address inside
/// each chosen prefix), addressed to `router_mac`.
pub fn ipv4_workload(
    prefixes: &[(Ipv4Addr, u8)],
    count: usize,
    router_mac: EthernetAddress,
    seed: u64,
) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    let src_mac = EthernetAddress([0x02, 0, 0, 0, 0, 0x10]);
    (0..count)
        .map(|i| {
            let (p, l) = prefixes[rng.below(prefixes.len() as u64) as usize];
            let host = if l >= 32 {
                0
            } else {
                (rng.next_u64() as u32) & !packet::ipv4::mask(l)
            };
            let dst = Ipv4Addr::from(u32::from(p) | host);
            let src = Ipv4Addr::new(10, 0, 1, 2 + (i % 200) as u8);
            udp_frame(
                src_mac,
                router_mac,
                src,
                dst,
                1024 + (i % 5000) as u16,
                9,
                60,
            )
        })
        .collect()
}

/// Write frames to a pcap file.
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) -> std::io::Result<()> {
    let f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut w = packet::pcap::Writer::new(f, packet::pcap::LINKTYPE_ETHERNET)?;
    for (i, fr) in frames.iter().enumerate() {
        w.write(i as u64 * 1000, fr)?;
    }
    w.finish().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use packet::ipv4::Ipv4Packet;
    use packet::udp::UdpPacket;

    #[test]
    fn frames_are_valid() {
        let pre = route_prefixes(1000, 7);
        assert_eq!(pre.len(), 1000);
        let w = ipv4_workload(&pre, 50, EthernetAddress([2, 0, 0, 0, 0, 1]), 1);
        for f in &w {
            assert_eq!(f.len(), 60);
            let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
            assert!(ip.verify_checksum());
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            assert!(udp.verify_checksum(ip.src_addr(), ip.dst_addr()));
            let d = u32::from(ip.dst_addr());
            assert!(pre
                .iter()
                .any(|(p, l)| d & packet::ipv4::mask(*l) == u32::from(*p)));
        }
    }
}

/// The NFS benchmark's constants: the virtual server (on the router's "in" port), the
/// physical server and the clients (both behind its "out" port).
pub mod nfs {
    use std::net::Ipv4Addr;
    pub const VIRTUAL: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
    pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    pub const SECRET: &str = "000102030405060708090a0b0c0d0e0f";
    pub const EXPORT: &str = "/export";
    pub const VFSID: u64 = 0x5649_5254_5541_4c31;
    /// Client `i`'s address and port.
    pub fn client(i: usize) -> (Ipv4Addr, u16) {
        (
            Ipv4Addr::new(10, 0, 3, (i % 250) as u8 + 1),
            700 + (i / 250) as u16,
        )
    }
}

/// An NFSv3-over-UDP workload as the router sees it: for each of `flows` files, a GETATTR,
/// a LOOKUP and a READ (`read_bytes`) call from a client to the virtual server, each followed by
/// the physical server's reply (28-byte ganesha-style handles, real attributes), all arriving
/// on one port. Returns the frames and a handle-table checkpoint (written with
/// [`nfs::SECRET`]) that maps every VFH the calls carry to its physical handle, so a router
/// loaded with it serves the calls from the first packet.
pub fn nfs_workload(
    flows: usize,
    read_bytes: usize,
    dst_mac: EthernetAddress,
) -> (Vec<Vec<u8>>, Vec<u8>) {
    use nfs_rewrite::tables::HandleTable;
    use nfs_rewrite::vfh::{HandleKey, VirtualHandle};
    use nfs_rewrite::wire::nfs3::Proc;
    use nfs_rewrite::wire::rpc::{self, Writer};
    let key = HandleKey::from_hex(nfs::SECRET).unwrap_or(HandleKey::new(0, 0));
    let mch = key.mount_checksum(1, nfs::EXPORT.as_bytes());
    let table = HandleTable::new(4 * flows + 64);
    let src_mac = EthernetAddress([2, 0, 0, 0, 0, 0x10]);
    let pfs = 0x0011_2233_4455_6677u64;
    let pfh = |pin: u64| {
        let mut h = [0u8; 28];
        h[0] = 0x43;
        h[3] = 0x0b;
        h[8..16].copy_from_slice(&pin.to_be_bytes());
        h[20..28].copy_from_slice(&pfs.to_be_bytes());
        h
    };
    let fattr = |kind: u32, pin: u64, size: u64| {
        let mut w = Writer::new();
        w.u32(kind)
            .u32(0o644)
            .u32(1)
            .u32(1000)
            .u32(1000)
            .u64(size)
            .u64(4096);
        w.u32(0).u32(0).u64(pfs).u64(pin);
        for _ in 0..3 {
            w.u32(1_700_000_000).u32(0);
        }
        w.buf
    };
    let dir_pin = 2u64;
    let dir = VirtualHandle::for_object(&key, 1, mch, pfs, dir_pin, &pfh(dir_pin));
    table.insert(dir.hid, &pfh(dir_pin));
    let mut frames = Vec::with_capacity(flows * 6);
    let data = vec![0x5a; read_bytes];
    for i in 0..flows {
        let pin = 1000 + i as u64;
        let file = VirtualHandle::for_object(&key, 1, mch, pfs, pin, &pfh(pin));
        table.insert(file.hid, &pfh(pin));
        let (client, port) = nfs::client(i);
        let name = format!("file-{i}");
        let xid = (i as u32) << 2;
        let mut push = |call: Writer, reply: Writer| {
            frames.push(packet::udp::frame(
                src_mac,
                dst_mac,
                client,
                nfs::VIRTUAL,
                port,
                2049,
                &call.buf,
            ));
            frames.push(packet::udp::frame(
                src_mac,
                dst_mac,
                nfs::SERVER,
                client,
                2049,
                port,
                &reply.buf,
            ));
        };
        let mut c = Writer::new();
        c.call_sys(xid, rpc::program::NFS, 3, Proc::Getattr as u32, 1000, 1000)
            .opaque(&file.encode(&key));
        let mut r = Writer::new();
        r.accepted_reply(xid, 0)
            .u32(0)
            .fixed(&fattr(1, pin, read_bytes as u64));
        push(c, r);
        let mut c = Writer::new();
        c.call_sys(
            xid + 1,
            rpc::program::NFS,
            3,
            Proc::Lookup as u32,
            1000,
            1000,
        )
        .opaque(&dir.encode(&key))
        .opaque(name.as_bytes());
        let mut r = Writer::new();
        r.accepted_reply(xid + 1, 0)
            .u32(0)
            .opaque(&pfh(pin))
            .bool(true)
            .fixed(&fattr(1, pin, read_bytes as u64))
            .bool(true)
            .fixed(&fattr(2, dir_pin, 4096));
        push(c, r);
        let mut c = Writer::new();
        c.call_sys(xid + 2, rpc::program::NFS, 3, Proc::Read as u32, 1000, 1000)
            .opaque(&file.encode(&key))
            .u64(0)
            .u32(read_bytes as u32);
        let mut r = Writer::new();
        r.accepted_reply(xid + 2, 0)
            .u32(0)
            .bool(true)
            .fixed(&fattr(1, pin, read_bytes as u64))
            .u32(read_bytes as u32)
            .bool(true)
            .opaque(&data);
        push(c, r);
    }
    let (ckpt, _) = nfs_rewrite::checkpoint::encode(&table, &key);
    (frames, ckpt)
}

/// Serval service prefixes for the benchmarks: `n` in all, shaped like a service router's
/// table — mostly hosts' registrations (/32, the original tools' decimal ids), some whole
/// 256-bit ids, and a few aggregates (/8–/24) above them.
pub fn service_prefixes(n: usize, seed: u64) -> Vec<sal_forward::Prefix> {
    use sal_forward::{Prefix, ServiceId};
    let mut rng = Rng::new(seed);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut id = [0u8; 32];
        let len = match rng.below(100) {
            0..=89 => 32,
            90..=97 => 256,
            _ => 8 + 8 * rng.below(3) as u16,
        };
        for chunk in id.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_be_bytes());
        }
        let p = Prefix::new(ServiceId(id), len);
        if seen.insert(p) {
            out.push(p);
        }
    }
    out
}

/// A serviceID under prefix `p` (its bits, then random ones).
pub fn id_under(p: &sal_forward::Prefix, rng: &mut Rng) -> sal_forward::ServiceId {
    let keep = sal_forward::ServiceId([0xff; 32]).masked(p.len);
    let mut id = [0u8; 32];
    for chunk in id.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_be_bytes());
    }
    for ((b, k), pb) in id.iter_mut().zip(keep.0).zip(p.id.0) {
        *b = (*b & !k) | pb;
    }
    sal_forward::ServiceId(id)
}

/// The Serval SYN-forwarding workload: `flows` SYNs (CONTROL SYN + SERVICE + TCP SYN, as the
/// original client sends them) from clients in 10.0.1.0/24 to the router at 10.0.1.1, each to
/// a serviceID under one of `prefixes`; and the rules file forwarding every prefix to
/// `instance`.
pub fn sal_workload(
    flows: usize,
    prefixes: &[sal_forward::Prefix],
    instance: Ipv4Addr,
    dst_mac: EthernetAddress,
) -> (Vec<Vec<u8>>, String) {
    use sal_forward::wire::{self, flags, Control, SalRepr};
    let mut rng = Rng::new(0x5e7a1);
    let mut frames = Vec::with_capacity(flows);
    for i in 0..flows {
        let p = &prefixes[rng.below(prefixes.len() as u64) as usize];
        let sal = SalRepr {
            src_flow: i as u32 + 1,
            dst_flow: 0,
            protocol: 6,
            control: Some(Control {
                flags: flags::SYN,
                verno: rng.next_u64() as u32,
                ackno: 0,
                nonce: rng.next_u64().to_be_bytes(),
            }),
            service: Some(id_under(p, &mut rng)),
            ..SalRepr::default()
        };
        let mut tcp = [0u8; 20];
        tcp[4..8].copy_from_slice(&(rng.next_u64() as u32).to_be_bytes());
        tcp[12] = 0x50;
        tcp[13] = 0x02;
        tcp[14..16].copy_from_slice(&8192u16.to_be_bytes());
        let client = Ipv4Addr::new(10, 0, 1, 2 + (i % 250) as u8);
        let ip = wire::datagram(client, Ipv4Addr::new(10, 0, 1, 1), 64, &sal, &tcp);
        let mut f = Vec::with_capacity(14 + ip.len());
        f.extend_from_slice(&dst_mac.0);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 0x20]);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&ip);
        frames.push(f);
    }
    let mut rules = String::with_capacity(prefixes.len() * 90);
    for p in prefixes {
        rules.push_str(&format!(
            "0x{}/{} forward {instance}\n",
            hex(&p.id.0),
            p.len
        ));
    }
    (frames, rules)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The NetChain workloads: `flows` prototype-format queries from `client` (one source port
/// each) on keys 1..=`keys`, in virtual groups 0..16. Reads go to `node` as the tail (the reply
/// goes back to the client); writes go to `node` as the head of the chain `node → next` (the
/// write is stamped, stored and passed on to `next`). 16-byte values.
pub fn netchain_workload(
    flows: usize,
    keys: u128,
    write: bool,
    (client, node, next): (Ipv4Addr, Ipv4Addr, Ipv4Addr),
    dst_mac: EthernetAddress,
) -> Vec<Vec<u8>> {
    use chain_switch::wire::{key_from_u128, op, value_from_u64, QueryRepr};
    let mut rng = Rng::new(0xc4a1);
    (0..flows)
        .map(|i| {
            let key = key_from_u128(1 + u128::from(rng.below(keys as u64)));
            let q = if write {
                let v = value_from_u64(rng.next_u64(), 16);
                QueryRepr::request(op::WRITE_REQUEST, &[node, next], key, &v, (i % 16) as u16)
            } else {
                QueryRepr::request(op::READ_REQUEST, &[node], key, &[0; 16], (i % 16) as u16)
            };
            packet::udp::frame(
                EthernetAddress([2, 0, 0, 0, 0, 0x30]),
                dst_mac,
                client,
                node,
                1024 + (i % 60000) as u16,
                chain_switch::wire::REQUEST_PORT,
                &q.emit(true),
            )
        })
        .collect()
}
