//! Arbitrary bytes never panic any parser, and parse∘emit round-trips.

use packet::arp::{ArpPacket, ArpRepr};
use packet::ethernet::EthernetAddress;
use packet::ipv4::{Ipv4Packet, Ipv4Repr};
use packet::udp::{UdpPacket, UdpRepr};
use packet::Ipv4Addr;
use proptest::prelude::*;

fn poke_all(b: &[u8]) {
    packet::exercise::all_parsers(b);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        poke_all(&b);
    }

    #[test]
    fn ethernet_frames_never_panic(mut b in proptest::collection::vec(any::<u8>(), 34..200), proto in prop_oneof![Just(1u8), Just(6), Just(17)]) {
        // An Ethernet/IPv4 frame shape so the whole chain is exercised.
        b[12] = 8;
        b[13] = 0;
        b[14] = 0x45;
        b[23] = proto;
        poke_all(&b);
    }

    #[test]
    fn plausible_headers_never_panic(mut b in proptest::collection::vec(any::<u8>(), 20..120), hl in 0u8..16, tl in any::<u16>()) {
        // Bias toward IPv4-looking input so the deeper checks run.
        b[0] = 0x40 | hl;
        b[2..4].copy_from_slice(&tl.to_be_bytes());
        poke_all(&b);
    }

    #[test]
    fn ipv4_udp_roundtrip(src in any::<u32>(), dst in any::<u32>(), ttl in 1u8.., ident in any::<u16>(), df in any::<bool>(),
                          sport in any::<u16>(), dport in 1u16.., payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let (s, d) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
        let ir = Ipv4Repr { src_addr: s, dst_addr: d, protocol: 17, payload_len: 8 + payload.len(), ttl, tos: 0, ident, dont_frag: df };
        let mut buf = vec![0u8; 20 + 8 + payload.len()];
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
        ir.emit(&mut ip);
        let mut u = UdpPacket::new_unchecked(ip.payload_mut());
        u.set_len((8 + payload.len()) as u16);
        u.payload_mut().copy_from_slice(&payload);
        let ur = UdpRepr { src_port: sport, dst_port: dport };
        ur.emit(&mut u, payload.len(), s, d);
        let ip = Ipv4Packet::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(Ipv4Repr::parse(&ip).unwrap(), ir);
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        prop_assert_eq!(UdpRepr::parse(&u, s, d).unwrap(), ur);
        prop_assert_eq!(u.payload(), &payload[..]);
    }

    #[test]
    fn ethernet_arp_roundtrip(a in any::<[u8; 6]>(), b in any::<[u8; 6]>(), sip in any::<u32>(), tip in any::<u32>(), reply in any::<bool>()) {
        let r = ArpRepr {
            operation: if reply { 2 } else { 1 },
            source_hardware_addr: EthernetAddress(a),
            source_protocol_addr: Ipv4Addr::from(sip),
            target_hardware_addr: EthernetAddress(b),
            target_protocol_addr: Ipv4Addr::from(tip),
        };
        let mut buf = [0u8; 28];
        r.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        prop_assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()).unwrap(), r);
    }
}
