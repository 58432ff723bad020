//! Drive every parser and accessor over arbitrary bytes: shared by the property tests and the
//! fuzz targets. Nothing here may panic, whatever the input.

use crate::arp::{ArpPacket, ArpRepr};
use crate::ethernet::{EthernetFrame, EthernetRepr};
use crate::icmp::{IcmpPacket, IcmpRepr};
use crate::ipv4::{Ipv4Packet, Ipv4Repr};
use crate::tcp::{TcpPacket, TcpRepr};
use crate::udp::{UdpPacket, UdpRepr};
use crate::Ipv4Addr;

/// Parse `b` as every header this crate knows (each at offset 0, and the IPv4 chain from an
/// Ethernet frame), touching every accessor. Returns how many parses succeeded.
pub fn all_parsers(b: &[u8]) -> usize {
    let mut ok = 0;
    if let Ok(e) = EthernetFrame::new_checked(b) {
        let _ = (e.src_addr(), e.dst_addr(), e.ethertype());
        ok += usize::from(EthernetRepr::parse(&e).is_ok());
        ok += ipv4_chain(e.payload());
    }
    if let Ok(a) = ArpPacket::new_checked(b) {
        let _ = (
            a.operation(),
            a.sender_hardware_addr(),
            a.target_protocol_addr(),
        );
        ok += usize::from(ArpRepr::parse(&a).is_ok());
    }
    ok += ipv4_chain(b);
    if let Ok(i) = IcmpPacket::new_checked(b) {
        let _ = (i.msg_type(), i.echo_ident(), i.data().len());
        ok += usize::from(IcmpRepr::parse(&i).is_ok());
    }
    let (s, d) = (Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8));
    if let Ok(u) = UdpPacket::new_checked(b) {
        let _ = (u.src_port(), u.payload().len());
        ok += usize::from(UdpRepr::parse(&u, s, d).is_ok());
    }
    if let Ok(t) = TcpPacket::new_checked(b) {
        let _ = (t.options().len(), t.payload().len(), t.flags());
        ok += usize::from(TcpRepr::parse(&t, s, d).is_ok());
    }
    ok += usize::from(crate::pcap::parse(b).is_ok());
    ok
}

fn ipv4_chain(b: &[u8]) -> usize {
    let Ok(ip) = Ipv4Packet::new_checked(b) else {
        return 0;
    };
    let _ = (
        ip.ttl(),
        ip.options().len(),
        ip.frag_offset(),
        ip.verify_checksum(),
    );
    let mut ok = usize::from(Ipv4Repr::parse(&ip).is_ok());
    let (s, d) = (ip.src_addr(), ip.dst_addr());
    match ip.protocol() {
        crate::ipv4::protocol::UDP => {
            if let Ok(u) = UdpPacket::new_checked(ip.payload()) {
                ok += usize::from(UdpRepr::parse(&u, s, d).is_ok());
            }
        }
        crate::ipv4::protocol::TCP => {
            if let Ok(t) = TcpPacket::new_checked(ip.payload()) {
                ok += usize::from(TcpRepr::parse(&t, s, d).is_ok());
            }
        }
        crate::ipv4::protocol::ICMP => {
            if let Ok(i) = IcmpPacket::new_checked(ip.payload()) {
                ok += usize::from(IcmpRepr::parse(&i).is_ok());
            }
        }
        _ => {}
    }
    ok
}
