//! The IPv4 router stage: Ethernet input, ARP answers for own addresses, header checks, local
//! delivery (ICMP echo answered in place), TTL with incremental checksum, LPM lookup and the
//! next hop's link-layer rewrite. Everything it cannot finish is punted to the management core.

use crate::fib::{FibView, NextHop, NextHopKind};
use packet::arp::{self, ArpPacket, ArpRepr};
use packet::ethernet::{ethertype, EthernetAddress, EthernetFrame};
use packet::icmp::{self, IcmpPacket};
use packet::ipv4::{protocol, Ipv4Packet};
use packet::{drop_reasons, Buffer, DropReason, PuntReason, Stage, Verdict};
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
}

impl PortInfo {
    #[inline]
    fn owns(&self, ip: Ipv4Addr) -> bool {
        self.addrs.iter().any(|(a, _)| *a == ip)
    }
}

/// TTL of packets the router originates.
pub const DEFAULT_TTL: u8 = 64;

/// The IPv4 forwarding stage.
#[derive(Debug, Clone)]
pub struct Ipv4Stage {
    fib: Arc<FibView>,
    ports: Arc<[PortInfo]>,
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
        Ipv4Stage { fib, ports }
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

    /// Send `frame` (Ethernet + IPv4, TTL already checked) to next hop `nh`: decrement TTL,
    /// write MACs. `Err` is the verdict when that cannot be done on the fast path.
    #[inline]
    pub fn to_next_hop(&self, nh: &NextHop, frame: &mut [u8]) -> Verdict {
        let Some(out) = self.ports.get(usize::from(nh.port)) else {
            return Ipv4Drop::BadPort.drop();
        };
        let Some(mac) = nh.mac else {
            return Verdict::Punt(PuntReason::Resolve);
        };
        let mut eth = EthernetFrame::new_unchecked(&mut *frame);
        let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
        if ip.total_len() > out.mtu {
            return Verdict::Punt(PuntReason::FragNeeded);
        }
        ip.decrement_ttl();
        eth.set_dst_addr(mac);
        eth.set_src_addr(out.mac);
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

impl Stage for Ipv4Stage {
    type Reason = Ipv4Drop;
    const NAME: &'static str = "ipv4";

    #[inline]
    fn process<B: Buffer>(&mut self, pkt: &mut B) -> Verdict {
        let in_port = pkt.port();
        let Some(info) = self.ports.get(usize::from(in_port)) else {
            return Ipv4Drop::BadPort.drop();
        };
        let frame = pkt.data_mut();
        let Ok(mut eth) = EthernetFrame::new_checked(&mut *frame) else {
            return Ipv4Drop::Truncated.drop();
        };
        let dst_mac = eth.dst_addr();
        if dst_mac != info.mac && !dst_mac.is_multicast() {
            return Ipv4Drop::OtherHost.drop();
        }
        match eth.ethertype() {
            ethertype::IPV4 => {}
            ethertype::ARP => return self.arp(in_port, info, &mut eth),
            _ => return Ipv4Drop::UnknownEthertype.drop(),
        }
        let (dst, ttl) = {
            let ip = match Ipv4Packet::new_checked(eth.payload()) {
                Ok(ip) => ip,
                Err(packet::Error::Truncated) => return Ipv4Drop::Truncated.drop(),
                Err(_) => return Ipv4Drop::Malformed.drop(),
            };
            if !ip.verify_checksum() {
                return Ipv4Drop::BadChecksum.drop();
            }
            if martian_src(u32::from(ip.src_addr())) || martian_dst(ip.dst_u32()) {
                return Ipv4Drop::Martian.drop();
            }
            (ip.dst_u32(), ip.ttl())
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
            NextHopKind::Local => self.local(pkt.data_mut()),
            NextHopKind::Blackhole => Ipv4Drop::Blackhole.drop(),
            _ if ttl <= 1 => Verdict::Punt(PuntReason::TtlExceeded),
            NextHopKind::Connected => Verdict::Punt(PuntReason::Resolve),
            NextHopKind::Gateway => self.to_next_hop(&nh, pkt.data_mut()),
        }
    }
}
