//! The IPv4 router stage: Ethernet input, ARP answers for own addresses, header checks, local
//! delivery (ICMP echo answered in place), TTL with incremental checksum, LPM lookup and the
//! next hop's link-layer rewrite. Everything it cannot finish is punted to the management core.

use crate::fib::{FibView, NextHop, NextHopKind};
use packet::arp::{self, ArpPacket, ArpRepr};
use packet::ethernet::{ethertype, EthernetAddress, EthernetFrame};
use packet::icmp::{self, IcmpPacket};
use packet::ipv4::{protocol, Ipv4Packet};
use packet::{drop_reasons, Buffer, DropReason, PuntReason, RxChecksum, Stage, Verdict};
use std::net::Ipv4Addr;
use std::sync::Arc;

drop_reasons! {
    /// Why the IPv4 stage drops a packet.
    pub enum Ipv4Drop {
        Truncated = "truncated",
        Malformed = "malformed",
        BadChecksum = "bad-checksum",
        OtherHost = "other-host",
        UnknownEthertype = "unknown-ethertype",
        ArpUnsupported = "arp-unsupported",
        ArpNotForUs = "arp-not-for-us",
        Martian = "martian",
        Blackhole = "blackhole",
        BadPort = "bad-port",
        IcmpBad = "icmp-bad",
        NoNeighbour = "no-neighbour",
        DirectedBroadcast = "directed-broadcast",
        UnknownVlan = "unknown-vlan",
    }
}

/// What the fast path knows of a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub name: String,
    pub mac: EthernetAddress,
    pub mtu: u16,
    /// The port's addresses with their prefix lengths.
    pub addrs: Vec<(Ipv4Addr, u8)>,
    /// Directed broadcasts for its subnets arriving on other ports are sent onto it.
    pub forward_directed_broadcast: bool,
}

impl PortInfo {
    #[inline]
    fn owns(&self, ip: Ipv4Addr) -> bool {
        self.addrs.iter().any(|(a, _)| *a == ip)
    }
}

/// Bytes of an Ethernet + option-less IPv4 header: what the fast path reads as an array.
const FAST_LEN: usize = packet::ethernet::HEADER_LEN + packet::ipv4::HEADER_LEN;

/// TTL of packets the router originates.
pub const DEFAULT_TTL: u8 = 64;

/// The IPv4 forwarding stage.
#[derive(Debug, Clone)]
pub struct Ipv4Stage {
    fib: Arc<FibView>,
    ports: Arc<[PortInfo]>,
    /// Every port subnet's directed broadcast address (prefixes up to /30) and its port.
    bcast: Arc<[(u32, u16)]>,
    /// Host bits every one of them has set: a destination without them all is none of them.
    bcast_bits: u32,
    /// Per-worker scratch of the vector passes (each worker clones the stage; allocated on
    /// the first burst, reused after).
    scratch: Option<Box<Scratch>>,
}

/// The header checksum is right: as the port's RX offload found it, or by `verify` where the
/// port did not check (RFC 1812 5.2.2).
#[inline(always)]
fn checksum_sound(rx: RxChecksum, verify: impl FnOnce() -> bool) -> bool {
    match rx {
        RxChecksum::Good => true,
        RxChecksum::Bad => false,
        RxChecksum::Unknown => verify(),
    }
}

#[inline]
fn martian_src(ip: u32) -> bool {
    ip == 0 || ip >> 28 == 0xe || ip == u32::MAX || ip >> 24 == 127
}

#[inline]
fn martian_dst(ip: u32) -> bool {
    ip == 0 || ip >> 28 >= 0xe || ip >> 24 == 127
}

impl Ipv4Stage {
    pub fn new(fib: Arc<FibView>, ports: Arc<[PortInfo]>) -> Self {
        let mut bcast_bits = u32::MAX;
        let mut bcast: Vec<(u32, u16)> = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            for &(a, len) in p.addrs.iter().filter(|(_, len)| *len <= 30) {
                let host = u32::MAX >> len;
                bcast_bits &= host;
                bcast.push((u32::from(a) | host, i as u16));
            }
        }
        Ipv4Stage {
            fib,
            ports,
            bcast: bcast.into(),
            bcast_bits,
            scratch: Some(Box::new(Scratch {
                dst: [0; BURST_MAX],
                nh: [0; BURST_MAX],
            })),
        }
    }

    pub fn ports(&self) -> &Arc<[PortInfo]> {
        &self.ports
    }

    fn arp<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        port: u16,
        info: &PortInfo,
        eth: &mut EthernetFrame<T>,
    ) -> Verdict {
        let Ok(mut pkt) = ArpPacket::new_checked(eth.payload_mut()) else {
            return Ipv4Drop::Truncated.drop();
        };
        let Ok(repr) = ArpRepr::parse(&pkt) else {
            return Ipv4Drop::ArpUnsupported.drop();
        };
        if repr.operation == arp::op::REQUEST && info.owns(repr.target_protocol_addr) {
            ArpRepr {
                operation: arp::op::REPLY,
                source_hardware_addr: info.mac,
                source_protocol_addr: repr.target_protocol_addr,
                target_hardware_addr: repr.source_hardware_addr,
                target_protocol_addr: repr.source_protocol_addr,
            }
            .emit(&mut pkt);
            eth.set_dst_addr(repr.source_hardware_addr);
            eth.set_src_addr(info.mac);
            return Verdict::Tx(port);
        }
        let gratuitous = repr.source_protocol_addr == repr.target_protocol_addr;
        if repr.operation == arp::op::REPLY || gratuitous {
            return Verdict::Punt(PuntReason::Arp);
        }
        Ipv4Drop::ArpNotForUs.drop()
    }

    /// Send `frame` (Ethernet + IPv4, TTL already checked) to next hop `nh`: decrement TTL
    /// (RFC 1624 checksum update), write MACs. When that cannot be done on the fast path the
    /// verdict says why.
    #[inline(always)]
    pub fn to_next_hop(&self, nh: &NextHop, frame: &mut [u8]) -> Verdict {
        let Some(out) = self.ports.get(usize::from(nh.port)) else {
            return Ipv4Drop::BadPort.drop();
        };
        let Some(mac) = nh.mac else {
            return Verdict::Punt(PuntReason::Resolve);
        };
        let Some(h) = frame.first_chunk_mut::<FAST_LEN>() else {
            return Ipv4Drop::Truncated.drop();
        };
        if u16::from_be_bytes([h[16], h[17]]) > out.mtu {
            return Verdict::Punt(PuntReason::FragNeeded);
        }
        let ttl = h[22];
        let old = u16::from_be_bytes([ttl, h[23]]);
        let new = u16::from_be_bytes([ttl.wrapping_sub(1), h[23]]);
        let c = packet::checksum::update16(u16::from_be_bytes([h[24], h[25]]), old, new);
        h[22] = ttl.wrapping_sub(1);
        h[24..26].copy_from_slice(&c.to_be_bytes());
        h[..6].copy_from_slice(&mac.0);
        h[6..12].copy_from_slice(&out.mac.0);
        Verdict::Tx(nh.port)
    }

    /// Route an already-validated IPv4 frame by its destination (shared with the management
    /// core, which calls it for packets released from resolution).
    #[inline]
    pub fn route(&self, frame: &mut [u8]) -> Verdict {
        let dst = {
            let ip = Ipv4Packet::new_unchecked(&frame[packet::ethernet::HEADER_LEN..]);
            ip.dst_u32()
        };
        let Some(nh) = self
            .fib
            .lpm
            .lookup(dst)
            .and_then(|i| self.fib.next_hops.get(i))
        else {
            return Verdict::Punt(PuntReason::NoRoute);
        };
        match nh.kind {
            NextHopKind::Local => Verdict::Punt(PuntReason::Local),
            NextHopKind::Blackhole => Ipv4Drop::Blackhole.drop(),
            NextHopKind::Connected => Verdict::Punt(PuntReason::Resolve),
            NextHopKind::Gateway => self.to_next_hop(&nh, frame),
        }
    }

    /// Next hop for a destination (management core).
    pub fn next_hop(&self, dst: Ipv4Addr) -> Option<NextHop> {
        self.fib
            .lpm
            .lookup(u32::from(dst))
            .and_then(|i| self.fib.next_hops.get(i))
    }

    fn local(&self, f: &mut [u8]) -> Verdict {
        let mut ip = Ipv4Packet::new_unchecked(&mut f[packet::ethernet::HEADER_LEN..]);
        if ip.protocol() != protocol::ICMP || ip.is_fragment() {
            return Verdict::Punt(PuntReason::Local);
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        {
            let Ok(mut icmp) = IcmpPacket::new_checked(ip.payload_mut()) else {
                return Ipv4Drop::IcmpBad.drop();
            };
            if icmp.msg_type() != icmp::kind::ECHO_REQUEST {
                return Verdict::Punt(PuntReason::Local);
            }
            if !icmp.verify_checksum() {
                return Ipv4Drop::IcmpBad.drop();
            }
            icmp.echo_request_to_reply();
        }
        ip.set_src_addr(dst);
        ip.set_dst_addr(src);
        // One more than we send: forwarding decrements it.
        ip.set_ttl(DEFAULT_TTL + 1);
        ip.fill_checksum();
        self.route(f)
    }
}

/// What the input pass decided for a packet.
#[derive(Debug, Clone, Copy)]
pub enum Parsed {
    /// A valid IPv4 packet that needs the FIB: its destination address.
    Lookup(u32),
    /// Finished in the first pass.
    Done(Verdict),
}

/// Largest burst the vector passes handle at once (the engine's bursts are at most this).
pub const BURST_MAX: usize = 256;

/// Per-worker scratch for the vector passes.
#[derive(Debug, Clone)]
struct Scratch {
    dst: [u32; BURST_MAX],
    nh: [u32; BURST_MAX],
}

impl Ipv4Stage {
    /// Pass 1, the IPv4 input: Ethernet, ARP, the RFC 1812 header checks (version, header
    /// length, total length, header checksum, martian addresses). No table access. The common
    /// case (an option-less IPv4 header) reads the first 34 bytes as a fixed-size array:
    /// constant offsets, no bounds checks; anything else takes the general path.
    #[inline(always)]
    pub fn parse<B: Buffer>(&self, pkt: &mut B) -> Parsed {
        let in_port = pkt.port();
        let Some(info) = self.ports.get(usize::from(in_port)) else {
            return Parsed::Done(Ipv4Drop::BadPort.drop());
        };
        let rx_checksum = pkt.rx_ip_checksum();
        let frame = pkt.data_mut();
        let len = frame.len();
        if let Some(h) = frame.first_chunk::<FAST_LEN>() {
            if h[12] == 0x08 && h[13] == 0x00 && h[14] == 0x45 {
                if h[..6] != info.mac.0 && h[0] & 1 == 0 {
                    return Parsed::Done(Ipv4Drop::OtherHost.drop());
                }
                let total = usize::from(u16::from_be_bytes([h[16], h[17]]));
                if total < packet::ipv4::HEADER_LEN {
                    return Parsed::Done(Ipv4Drop::Malformed.drop());
                }
                if total > len - packet::ethernet::HEADER_LEN {
                    return Parsed::Done(Ipv4Drop::Truncated.drop());
                }
                let Some(ip) = h[14..].first_chunk::<20>() else {
                    return Parsed::Done(Ipv4Drop::Truncated.drop());
                };
                if !checksum_sound(rx_checksum, || {
                    packet::checksum::fold(packet::checksum::sum20(ip)) == 0xffff
                }) {
                    return Parsed::Done(Ipv4Drop::BadChecksum.drop());
                }
                let src = u32::from_be_bytes([h[26], h[27], h[28], h[29]]);
                let dst = u32::from_be_bytes([h[30], h[31], h[32], h[33]]);
                if martian_src(src) {
                    return Parsed::Done(Ipv4Drop::Martian.drop());
                }
                if dst & self.bcast_bits == self.bcast_bits {
                    if let Some(v) = self.broadcast(in_port, dst, frame) {
                        return Parsed::Done(v);
                    }
                }
                if martian_dst(dst) {
                    return Parsed::Done(Ipv4Drop::Martian.drop());
                }
                return Parsed::Lookup(dst);
            }
        }
        self.parse_general(in_port, info, frame, rx_checksum)
    }

    /// Pass 1 for everything but the common case: short frames, ARP, IP options, bad versions.
    #[inline(never)]
    fn parse_general(
        &self,
        in_port: u16,
        info: &PortInfo,
        frame: &mut [u8],
        rx_checksum: RxChecksum,
    ) -> Parsed {
        let Ok(mut eth) = EthernetFrame::new_checked(&mut *frame) else {
            return Parsed::Done(Ipv4Drop::Truncated.drop());
        };
        let dst_mac = eth.dst_addr();
        if dst_mac != info.mac && !dst_mac.is_multicast() {
            return Parsed::Done(Ipv4Drop::OtherHost.drop());
        }
        match eth.ethertype() {
            ethertype::IPV4 => {}
            ethertype::ARP => return Parsed::Done(self.arp(in_port, info, &mut eth)),
            // Tagged for a VLAN the port does not carry (its own VLANs' tags came off on
            // receive), or stacked (802.1ad).
            crate::vlan::TPID | 0x88a8 => return Parsed::Done(Ipv4Drop::UnknownVlan.drop()),
            _ => return Parsed::Done(Ipv4Drop::UnknownEthertype.drop()),
        }
        let ip = match Ipv4Packet::new_checked(eth.payload()) {
            Ok(ip) => ip,
            Err(packet::Error::Truncated) => return Parsed::Done(Ipv4Drop::Truncated.drop()),
            Err(_) => return Parsed::Done(Ipv4Drop::Malformed.drop()),
        };
        if !checksum_sound(rx_checksum, || ip.verify_checksum()) {
            return Parsed::Done(Ipv4Drop::BadChecksum.drop());
        }
        let dst = ip.dst_u32();
        if martian_src(u32::from(ip.src_addr())) {
            return Parsed::Done(Ipv4Drop::Martian.drop());
        }
        if dst & self.bcast_bits == self.bcast_bits {
            if let Some(v) = self.broadcast(in_port, dst, frame) {
                return Parsed::Done(v);
            }
        }
        if martian_dst(dst) {
            return Parsed::Done(Ipv4Drop::Martian.drop());
        }
        Parsed::Lookup(dst)
    }

    /// A destination that may be a broadcast (RFC 1812 5.3.5, RFC 2644): the limited broadcast
    /// and the receiving link's directed broadcast are delivered locally, never sent back; a
    /// directed broadcast for another port's subnet is sent onto that link (to the Ethernet
    /// broadcast address) only when the port allows it, dropped and counted otherwise. `None`:
    /// not a broadcast.
    #[inline(never)]
    fn broadcast(&self, in_port: u16, dst: u32, frame: &mut [u8]) -> Option<Verdict> {
        if dst == u32::MAX {
            return Some(Verdict::Punt(PuntReason::Broadcast));
        }
        let &(_, port) = self.bcast.iter().find(|(b, _)| *b == dst)?;
        if port == in_port {
            return Some(Verdict::Punt(PuntReason::Broadcast));
        }
        if !self
            .ports
            .get(usize::from(port))?
            .forward_directed_broadcast
        {
            return Some(Ipv4Drop::DirectedBroadcast.drop());
        }
        if frame
            .get(packet::ethernet::HEADER_LEN + 8)
            .is_none_or(|&ttl| ttl <= 1)
        {
            return Some(Verdict::Punt(PuntReason::TtlExceeded));
        }
        let nh = NextHop {
            kind: NextHopKind::Connected,
            port,
            gateway: Ipv4Addr::from(dst),
            mac: Some(EthernetAddress::BROADCAST),
        };
        Some(self.to_next_hop(&nh, frame))
    }

    /// Pass 3: act on the next hop found for a parsed packet.
    #[inline(always)]
    fn finish<B: Buffer>(&self, pkt: &mut B, nh_index: Option<u32>) -> Verdict {
        let Some(nh) = nh_index.and_then(|i| self.fib.next_hops.get(i)) else {
            return Verdict::Punt(PuntReason::NoRoute);
        };
        let frame = pkt.data_mut();
        match nh.kind {
            NextHopKind::Local => self.local(frame),
            NextHopKind::Blackhole => Ipv4Drop::Blackhole.drop(),
            // parse() checked the header, so byte 22 (TTL) is there.
            _ if frame
                .get(packet::ethernet::HEADER_LEN + 8)
                .is_none_or(|&ttl| ttl <= 1) =>
            {
                Verdict::Punt(PuntReason::TtlExceeded)
            }
            NextHopKind::Connected => Verdict::Punt(PuntReason::Resolve),
            NextHopKind::Gateway => self.to_next_hop(&nh, frame),
        }
    }
}

const NO_ROUTE: u32 = u32::MAX;

impl Stage for Ipv4Stage {
    type Reason = Ipv4Drop;
    const NAME: &'static str = "ipv4";

    #[inline]
    fn process<B: Buffer>(&mut self, pkt: &mut B) -> Verdict {
        match self.parse(pkt) {
            Parsed::Done(v) => v,
            Parsed::Lookup(dst) => {
                let nh = self.fib.lpm.lookup(dst);
                self.finish(pkt, nh)
            }
        }
    }

    #[inline]
    fn process_burst<B: Buffer>(&mut self, pkts: &mut [B], verdicts: &mut [Verdict]) {
        let n = pkts.len().min(verdicts.len()).min(BURST_MAX);
        let mut scratch = self.scratch.take().unwrap_or_else(|| {
            Box::new(Scratch {
                dst: [0; BURST_MAX],
                nh: [0; BURST_MAX],
            })
        });
        // Pass 1: parse the packets still undecided (Verdict::Next on entry, the pipeline's
        // convention); those that need the FIB keep Verdict::Next as a marker.
        for i in 0..n {
            if verdicts[i] != Verdict::Next {
                continue;
            }
            match self.parse(&mut pkts[i]) {
                Parsed::Lookup(d) => {
                    self.prefetch_route::<B>(d);
                    scratch.dst[i] = d;
                }
                Parsed::Done(v) => verdicts[i] = v,
            }
        }
        let Scratch { dst, nh } = &mut *scratch;
        self.route_pass(&mut pkts[..n], &mut verdicts[..n], &dst[..n], &mut nh[..n]);
        self.scratch = Some(scratch);
    }
}

impl Ipv4Stage {
    /// Hint the FIB entries a lookup of `dst` will read (between the input and route passes).
    #[inline(always)]
    pub fn prefetch_route<B: Buffer>(&self, dst: u32) {
        self.fib.lpm.prefetch(dst, B::prefetch);
    }

    /// Passes 2 and 3 over the packets whose verdict is still [`Verdict::Next`], each to
    /// `dst[i]`: every LPM lookup back to back (the loads are independent, so their cache and
    /// TLB misses overlap), then next hop, TTL and link-layer rewrite. `nh` is scratch.
    #[inline]
    pub fn route_pass<B: Buffer>(
        &self,
        pkts: &mut [B],
        verdicts: &mut [Verdict],
        dst: &[u32],
        nh: &mut [u32],
    ) {
        for ((v, d), nh) in verdicts.iter().zip(dst).zip(nh.iter_mut()) {
            if *v == Verdict::Next {
                *nh = self.fib.lpm.lookup(*d).unwrap_or(NO_ROUTE);
            }
        }
        for ((p, v), &nh) in pkts.iter_mut().zip(verdicts.iter_mut()).zip(nh.iter()) {
            if *v == Verdict::Next {
                *v = self.finish(p, (nh != NO_ROUTE).then_some(nh));
            }
        }
    }
}

/// A small two-port stage for tests, benchmarks and fuzzing: port 0 "a" (10.0.1.1/24, its
/// subnet connected, 10.0.1.1 local), port 1 "b" (10.0.2.1/24, MTU `b_mtu`) with a default
/// route via 10.0.2.2, resolved.
pub fn example_stage(b_mtu: u16) -> (crate::fib::Fib, Ipv4Stage) {
    use crate::fib::{Fib, FibSizes};
    let mut fib = Fib::new(
        FibSizes {
            tbl8_groups: 16,
            max_routes: 100,
            max_next_hops: 64,
        },
        Arc::new(crate::qsbr::Qsbr::new(0)),
    );
    let mut add = |prefix: Ipv4Addr, len: u8, kind: NextHopKind, port: u16, gw: Ipv4Addr| {
        if let Ok(nh) = fib.next_hop_ref(kind, port, gw) {
            let _ = fib.add(prefix, len, nh);
        }
    };
    let gw = Ipv4Addr::new(10, 0, 2, 2);
    add(Ipv4Addr::UNSPECIFIED, 0, NextHopKind::Gateway, 1, gw);
    add(
        Ipv4Addr::new(10, 0, 1, 1),
        32,
        NextHopKind::Local,
        0,
        Ipv4Addr::UNSPECIFIED,
    );
    add(
        Ipv4Addr::new(10, 0, 1, 0),
        24,
        NextHopKind::Connected,
        0,
        Ipv4Addr::UNSPECIFIED,
    );
    fib.resolve(1, gw, Some(EthernetAddress([2, 0, 0, 0, 9, 9])));
    let ports: Arc<[PortInfo]> = vec![
        PortInfo {
            name: "a".into(),
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            mtu: 1500,
            addrs: vec![(Ipv4Addr::new(10, 0, 1, 1), 24)],
            forward_directed_broadcast: false,
        },
        PortInfo {
            name: "b".into(),
            mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            mtu: b_mtu,
            addrs: vec![(Ipv4Addr::new(10, 0, 2, 1), 24)],
            forward_directed_broadcast: false,
        },
    ]
    .into();
    let s = Ipv4Stage::new(fib.view(), ports);
    (fib, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::Fib;
    use packet::HeapBuffer;
    use proptest::prelude::*;

    fn stage() -> (Fib, Ipv4Stage) {
        super::example_stage(100)
    }

    /// A valid frame to the router's MAC, then mutated.
    fn frame(dst: [u8; 4], ttl: u8, proto: u8, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; 34 + len];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x10]);
        f[12..14].copy_from_slice(&[8, 0]);
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.set_version_ihl(20);
        ip.set_total_len((20 + len) as u16);
        ip.set_ttl(ttl);
        ip.set_protocol(proto);
        ip.set_src_addr(Ipv4Addr::new(10, 0, 1, 2));
        ip.set_dst_addr(Ipv4Addr::from(dst));
        ip.fill_checksum();
        f
    }

    // One stage for every case (building a FIB per case would dominate the run time).
    fn run_cases<S: Strategy>(
        strategy: S,
        case: impl Fn(&mut Ipv4Stage, S::Value) -> Result<(), TestCaseError>,
    ) {
        let (_fib, s) = stage();
        let s = std::cell::RefCell::new(s);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(2000));
        runner
            .run(&strategy, |v| case(&mut s.borrow_mut(), v))
            .unwrap();
    }

    #[test]
    fn arbitrary_frames_never_panic() {
        run_cases(
            (proptest::collection::vec(any::<u8>(), 0..120), 0u16..3),
            |s, (b, port)| {
                let mut p = HeapBuffer::from_bytes(&b);
                p.set_port(port);
                let _ = s.process(&mut p);
                Ok(())
            },
        );
    }

    /// Frames of every kind, damaged at random, in bursts of up to 64: the burst path gives
    /// each frame the verdict and the bytes the one-packet path gives it (the vector passes
    /// keep no state across a burst's packets that could leak from one to the next).
    #[test]
    fn mutated_frames_never_panic_and_bursts_agree() {
        let one = (
            any::<[u8; 4]>(),
            any::<u8>(),
            prop_oneof![Just(1u8), Just(6), Just(17), any::<u8>()],
            0usize..200,
            proptest::collection::vec((0usize..260, any::<u8>()), 0..4),
            proptest::option::of(0usize..260),
        );
        let strat = proptest::collection::vec(one, 1..64);
        run_cases(strat, |s, frames| {
            let frames: Vec<Vec<u8>> = frames
                .into_iter()
                .map(|(dst, ttl, proto, len, flips, cut)| {
                    let mut f = frame(dst, ttl, proto, len);
                    for (at, x) in flips {
                        if let Some(b) = f.get_mut(at) {
                            *b ^= x;
                        }
                    }
                    if let Some(c) = cut {
                        f.truncate(c.min(f.len()));
                    }
                    f
                })
                .collect();
            let mut burst: Vec<HeapBuffer> =
                frames.iter().map(|f| HeapBuffer::from_bytes(f)).collect();
            let mut v = vec![Verdict::Next; burst.len()]; // undecided on entry
            s.process_burst(&mut burst[..], &mut v);
            for (i, f) in frames.iter().enumerate() {
                let mut one = HeapBuffer::from_bytes(f);
                let v1 = s.process(&mut one);
                prop_assert_eq!(v1, v[i], "frame {} of {}", i, frames.len());
                prop_assert_eq!(one.data(), burst[i].data());
            }
            Ok(())
        });
    }

    #[test]
    fn forwarded_packet_is_rewritten() {
        let (_fib, mut s) = stage();
        let mut p = HeapBuffer::from_bytes(&frame([192, 0, 2, 7], 9, 17, 40));
        assert_eq!(s.process(&mut p), Verdict::Tx(1));
        let ip = Ipv4Packet::new_checked(&p.data()[14..]).unwrap();
        assert_eq!(ip.ttl(), 8);
        assert!(ip.verify_checksum());
        assert_eq!(p.data()[..6], [2, 0, 0, 0, 9, 9]);
        assert_eq!(p.data()[6..12], [2, 0, 0, 0, 0, 2]);
        // Over the output port's MTU (100): punted for fragmentation / ICMP.
        let mut big = HeapBuffer::from_bytes(&frame([192, 0, 2, 7], 9, 17, 200));
        assert_eq!(s.process(&mut big), Verdict::Punt(PuntReason::FragNeeded));
        // Connected subnet, unresolved host: punted for resolution, TTL untouched.
        let mut c = HeapBuffer::from_bytes(&frame([10, 0, 1, 9], 9, 17, 10));
        assert_eq!(s.process(&mut c), Verdict::Punt(PuntReason::Resolve));
        assert_eq!(c.data()[22], 9);
        // TTL 1 to a forwarded destination: punted for time exceeded.
        let mut t = HeapBuffer::from_bytes(&frame([192, 0, 2, 7], 1, 17, 10));
        assert_eq!(s.process(&mut t), Verdict::Punt(PuntReason::TtlExceeded));
        // UDP to the router itself: local.
        let mut l = HeapBuffer::from_bytes(&frame([10, 0, 1, 1], 64, 17, 10));
        assert_eq!(s.process(&mut l), Verdict::Punt(PuntReason::Local));
        // Another host's MAC: dropped.
        let mut o = frame([192, 0, 2, 7], 9, 17, 10);
        o[0] = 4;
        assert_eq!(
            s.process(&mut HeapBuffer::from_bytes(&o)),
            Ipv4Drop::OtherHost.drop()
        );
    }
}
