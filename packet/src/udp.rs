//! UDP (RFC 768).

use crate::checksum;
use crate::ipv4::protocol;
use crate::{be16, put16, Error, Ipv4Addr, Result};

/// UDP header length.
pub const HEADER_LEN: usize = 8;

/// A view of a UDP datagram; `new_checked` verifies the length field against the buffer.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let l = usize::from(be16(b, 4));
        if l < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if l > b.len() {
            return Err(Error::Truncated);
        }
        Ok(UdpPacket { buffer })
    }
    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }
    #[inline]
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() as usize <= HEADER_LEN
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), 6)
    }
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
    #[inline]
    /// Verify against the IPv4 pseudo-header; a zero checksum means "not computed" and passes.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let seg = &self.buffer.as_ref()[..usize::from(self.len())];
        checksum::transport_sum(src.octets(), dst.octets(), protocol::UDP, seg) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    #[inline]
    pub fn set_src_port(&mut self, v: u16) {
        put16(self.buffer.as_mut(), 0, v)
    }
    #[inline]
    pub fn set_dst_port(&mut self, v: u16) {
        put16(self.buffer.as_mut(), 2, v)
    }
    #[inline]
    pub fn set_len(&mut self, v: u16) {
        put16(self.buffer.as_mut(), 4, v)
    }
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buffer.as_mut(), 6, v)
    }
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let l = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..l]
    }
    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let seg = &self.buffer.as_ref()[..usize::from(self.len())];
        let c = checksum::udp_nonzero(!checksum::transport_sum(
            src.octets(),
            dst.octets(),
            protocol::UDP,
            seg,
        ));
        self.set_checksum(c);
    }
}

/// Parsed UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
}

impl UdpRepr {
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(p: &UdpPacket<T>, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Self> {
        if p.dst_port() == 0 {
            return Err(Error::Malformed);
        }
        if !p.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        Ok(UdpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
        })
    }
    #[inline]
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }
    #[inline]
    /// Emit the header for a payload already in place, with the checksum.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        p: &mut UdpPacket<T>,
        payload_len: usize,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_len((HEADER_LEN + payload_len) as u16);
        p.fill_checksum(src, dst);
    }
}
/// Build a complete Ethernet/IPv4/UDP frame around `payload`, with valid checksums (IPv4
/// identification 0, TTL 64, DF clear). Allocates: for tests, generators and the management
/// core, never the fast path.
#[allow(clippy::too_many_arguments)]
pub fn frame(
    src_mac: crate::ethernet::EthernetAddress,
    dst_mac: crate::ethernet::EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    use crate::ethernet::{ethertype, EthernetFrame, EthernetRepr};
    use crate::ipv4::{Ipv4Packet, Ipv4Repr};
    let mut f =
        vec![
            0u8;
            crate::ethernet::HEADER_LEN + crate::ipv4::HEADER_LEN + HEADER_LEN + payload.len()
        ];
    let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
    EthernetRepr {
        src_addr: src_mac,
        dst_addr: dst_mac,
        ethertype: ethertype::IPV4,
    }
    .emit(&mut eth);
    let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
    Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: protocol::UDP,
        payload_len: HEADER_LEN + payload.len(),
        ttl: 64,
        tos: 0,
        ident: 0,
        dont_frag: false,
    }
    .emit(&mut ip);
    let mut udp = UdpPacket::new_unchecked(ip.payload_mut());
    udp.set_len((HEADER_LEN + payload.len()) as u16);
    udp.payload_mut().copy_from_slice(payload);
    UdpRepr {
        src_port: sport,
        dst_port: dport,
    }
    .emit(&mut udp, payload.len(), src, dst);
    f
}
