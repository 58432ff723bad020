//! Golden bytes for every header view, in the smoltcp manner — deconstruct, construct, parse,
//! emit — from frames the Linux stack put on a veth (offloads off, so every checksum is real):
//! `linux-udp-tcp.pcap` (UDP datagram, the kernel's ICMP port unreachable for it, TCP SYN with
//! options, the RST answering it) and `linux-ping.pcap` (ARP request and reply, ICMP echo
//! request and reply).

use packet::arp::{self, ArpPacket, ArpRepr};
use packet::ethernet::{ethertype, EthernetAddress, EthernetFrame, EthernetRepr};
use packet::icmp::{self, IcmpPacket, IcmpRepr};
use packet::ipv4::{protocol, Ipv4Packet, Ipv4Repr};
use packet::tcp::{self, TcpPacket, TcpRepr};
use packet::udp::{UdpPacket, UdpRepr};
use packet::{pcap, Ipv4Addr};

fn frames(name: &str) -> Vec<Vec<u8>> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    pcap::read_file(path)
        .unwrap()
        .into_iter()
        .map(|r| r.data)
        .collect()
}

const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const HOST_MAC: EthernetAddress = EthernetAddress([2, 0xaa, 0, 0, 0, 1]);
const PEER_MAC: EthernetAddress = EthernetAddress([2, 0xbb, 0, 0, 0, 1]);

#[test]
fn ethernet_ipv4_udp() {
    let f = &frames("linux-udp-tcp.pcap")[0];
    // Deconstruct.
    let eth = EthernetFrame::new_checked(&f[..]).unwrap();
    assert_eq!(
        (eth.src_addr(), eth.dst_addr(), eth.ethertype()),
        (HOST_MAC, PEER_MAC, ethertype::IPV4)
    );
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert_eq!((ip.version(), ip.header_len(), ip.total_len()), (4, 20, 31));
    assert_eq!(
        (
            ip.ident(),
            ip.ttl(),
            ip.protocol(),
            ip.dont_frag(),
            ip.is_fragment()
        ),
        (0xf1f1, 64, protocol::UDP, true, false)
    );
    assert_eq!(
        (ip.src_addr(), ip.dst_addr(), ip.checksum()),
        (HOST, PEER, 0x32da)
    );
    assert!(ip.verify_checksum());
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!(
        (udp.src_port(), udp.dst_port(), udp.len(), udp.checksum()),
        (40063, 9, 11, 0xdae3)
    );
    assert_eq!(udp.payload(), b"hi\n");
    assert!(udp.verify_checksum(HOST, PEER));
    // Parse.
    let er = EthernetRepr::parse(&eth).unwrap();
    let ir = Ipv4Repr::parse(&ip).unwrap();
    let ur = UdpRepr::parse(&udp, HOST, PEER).unwrap();
    assert_eq!(
        ir,
        Ipv4Repr {
            src_addr: HOST,
            dst_addr: PEER,
            protocol: protocol::UDP,
            payload_len: 11,
            ttl: 64,
            tos: 0,
            ident: 0xf1f1,
            dont_frag: true
        }
    );
    assert_eq!(
        ur,
        UdpRepr {
            src_port: 40063,
            dst_port: 9
        }
    );
    // Emit: the same bytes.
    let mut out = vec![0u8; f.len()];
    let mut e = EthernetFrame::new_unchecked(&mut out[..]);
    er.emit(&mut e);
    let mut i = Ipv4Packet::new_unchecked(e.payload_mut());
    ir.emit(&mut i);
    let mut u = UdpPacket::new_unchecked(i.payload_mut());
    u.payload_mut_unchecked_for_test(b"hi\n");
    ur.emit(&mut u, 3, HOST, PEER);
    assert_eq!(&out, f);
    // Construct field by field.
    let mut out = vec![0u8; f.len()];
    {
        let mut e = EthernetFrame::new_unchecked(&mut out[..]);
        e.set_dst_addr(PEER_MAC);
        e.set_src_addr(HOST_MAC);
        e.set_ethertype(ethertype::IPV4);
        let mut i = Ipv4Packet::new_unchecked(e.payload_mut());
        i.set_version_ihl(20);
        i.set_total_len(31);
        i.set_ident(0xf1f1);
        i.set_flags_frag(true, false, 0);
        i.set_ttl(64);
        i.set_protocol(protocol::UDP);
        i.set_src_addr(HOST);
        i.set_dst_addr(PEER);
        i.fill_checksum();
        let mut u = UdpPacket::new_unchecked(i.payload_mut());
        u.set_src_port(40063);
        u.set_dst_port(9);
        u.set_len(11);
        u.payload_mut().copy_from_slice(b"hi\n");
        u.fill_checksum(HOST, PEER);
    }
    assert_eq!(&out, f);
}

/// Test helper: write a UDP payload before the header's length field is set.
trait PayloadForTest {
    fn payload_mut_unchecked_for_test(&mut self, data: &[u8]);
}
impl PayloadForTest for UdpPacket<&mut [u8]> {
    fn payload_mut_unchecked_for_test(&mut self, data: &[u8]) {
        self.set_len((8 + data.len()) as u16);
        self.payload_mut().copy_from_slice(data);
    }
}

#[test]
fn icmp_port_unreachable_quotes_the_datagram() {
    let fr = frames("linux-udp-tcp.pcap");
    let (orig, f) = (&fr[0], &fr[1]);
    let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
    assert_eq!(
        (ip.src_addr(), ip.dst_addr(), ip.protocol(), ip.ident()),
        (PEER, HOST, protocol::ICMP, 0xf5ce)
    );
    let pkt = IcmpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!(
        (pkt.msg_type(), pkt.msg_code(), pkt.checksum()),
        (icmp::kind::DEST_UNREACHABLE, icmp::unreach::PORT, 0x131c)
    );
    assert!(pkt.verify_checksum());
    let r = IcmpRepr::parse(&pkt).unwrap();
    assert_eq!(
        r,
        IcmpRepr::DstUnreachable {
            code: icmp::unreach::PORT,
            mtu: 0,
            data: &orig[14..]
        }
    );
    let mut out = vec![0u8; r.buffer_len()];
    r.emit(&mut IcmpPacket::new_unchecked(&mut out[..]));
    assert_eq!(out, ip.payload());
}

#[test]
fn tcp_syn_with_options_and_rst() {
    let fr = frames("linux-udp-tcp.pcap");
    let syn = &fr[2];
    let ip = Ipv4Packet::new_checked(&syn[14..]).unwrap();
    let t = TcpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!(
        (t.src_port(), t.dst_port(), t.seq_number(), t.ack_number()),
        (53020, 9, 2_989_115_148, 0)
    );
    assert_eq!(
        (t.header_len(), t.flags(), t.window_len(), t.checksum()),
        (40, tcp::flags::SYN, 64240, 0x270a)
    );
    assert!(t.syn() && !t.ack());
    assert_eq!(t.options().len(), 20);
    assert_eq!(t.options()[..4], [2, 4, 0x05, 0xb4], "MSS 1460");
    assert!(t.verify_checksum(HOST, PEER));
    let r = TcpRepr::parse(&t, HOST, PEER).unwrap();
    assert_eq!(r.flags, tcp::flags::SYN);

    // The RST has no options: emit reproduces it exactly.
    let rst = &fr[3];
    let ip = Ipv4Packet::new_checked(&rst[14..]).unwrap();
    let t = TcpPacket::new_checked(ip.payload()).unwrap();
    let r = TcpRepr::parse(&t, PEER, HOST).unwrap();
    assert_eq!(
        r,
        TcpRepr {
            src_port: 9,
            dst_port: 53020,
            seq_number: 0,
            ack_number: 2_989_115_149,
            flags: tcp::flags::RST | tcp::flags::ACK,
            window_len: 0
        }
    );
    let mut out = vec![0u8; 20];
    r.emit(&mut TcpPacket::new_unchecked(&mut out[..]), PEER, HOST);
    assert_eq!(out, ip.payload());
    // A flipped bit fails the checksum.
    let mut bad = ip.payload().to_vec();
    bad[4] ^= 1;
    assert!(!TcpPacket::new_checked(&bad[..])
        .unwrap()
        .verify_checksum(PEER, HOST));
}

#[test]
fn arp_request_and_reply() {
    let fr = frames("linux-ping.pcap");
    let req = ArpPacket::new_checked(&fr[0][14..]).unwrap();
    let r = ArpRepr::parse(&req).unwrap();
    assert_eq!(
        r,
        ArpRepr {
            operation: arp::op::REQUEST,
            source_hardware_addr: HOST_MAC,
            source_protocol_addr: HOST,
            target_hardware_addr: EthernetAddress::ZERO,
            target_protocol_addr: PEER,
        }
    );
    let mut out = vec![0u8; arp::PACKET_LEN];
    r.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
    assert_eq!(out, fr[0][14..42]);
    let rep = ArpRepr::parse(&ArpPacket::new_checked(&fr[1][14..]).unwrap()).unwrap();
    assert_eq!(
        (
            rep.operation,
            rep.source_hardware_addr,
            rep.target_hardware_addr
        ),
        (arp::op::REPLY, PEER_MAC, HOST_MAC)
    );
}

#[test]
fn icmp_echo_request_to_reply_in_place() {
    let fr = frames("linux-ping.pcap");
    let (req, rep) = (&fr[2], &fr[3]);
    let ip = Ipv4Packet::new_checked(&req[14..]).unwrap();
    let p = IcmpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!(
        (p.msg_type(), p.echo_ident(), p.echo_seq_no(), p.checksum()),
        (icmp::kind::ECHO_REQUEST, 10066, 1, 0x2eb3)
    );
    let IcmpRepr::EchoRequest { data, .. } = IcmpRepr::parse(&p).unwrap() else {
        panic!("not an echo request")
    };
    assert_eq!(data.len(), 24);
    // The incremental request→reply rewrite gives exactly the kernel's reply.
    let mut icmp_bytes = ip.payload().to_vec();
    IcmpPacket::new_unchecked(&mut icmp_bytes[..]).echo_request_to_reply();
    assert_eq!(icmp_bytes, rep[34..]);
}

#[test]
fn ttl_decrement_matches_full_recompute() {
    let fr = frames("linux-ping.pcap");
    let mut a = fr[2][14..34].to_vec();
    let mut b = a.clone();
    Ipv4Packet::new_unchecked(&mut a[..]).decrement_ttl();
    {
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_ttl(63);
        p.fill_checksum();
    }
    assert_eq!(a, b);
}

#[test]
fn truncated_and_malformed_are_errors() {
    let f = &frames("linux-udp-tcp.pcap")[0];
    for n in 0..f.len() {
        let _ = EthernetFrame::new_checked(&f[..n]).map(|e| e.payload().len());
        if n >= 14 {
            let r = Ipv4Packet::new_checked(&f[14..n]);
            if n < f.len() {
                assert_eq!(r.unwrap_err(), packet::Error::Truncated, "cut at {n}");
            }
        }
    }
    let mut v6 = f[14..].to_vec();
    v6[0] = 0x65;
    assert_eq!(
        Ipv4Packet::new_checked(&v6[..]).unwrap_err(),
        packet::Error::Malformed
    );
    let mut short_hl = f[14..].to_vec();
    short_hl[0] = 0x44;
    assert_eq!(
        Ipv4Packet::new_checked(&short_hl[..]).unwrap_err(),
        packet::Error::Malformed
    );
    let mut badlen = f[34..].to_vec();
    badlen[4..6].copy_from_slice(&4u16.to_be_bytes());
    assert_eq!(
        UdpPacket::new_checked(&badlen[..]).unwrap_err(),
        packet::Error::Malformed
    );
}
