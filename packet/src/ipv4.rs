//! IPv4 headers (RFC 791).

use crate::checksum;
use crate::{be16, ip_at, put16, Error, Ipv4Addr, Result};

/// IP protocol numbers this engine knows.
pub mod protocol {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    /// Serval's Service Access Layer.
    pub const SERVAL: u8 = 144;
}

mod field {
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

/// Minimum header length.
pub const HEADER_LEN: usize = 20;

/// A view of an IPv4 packet. `new_checked` verifies that the header and the total length fit
/// in the buffer and that the header length is sane; the buffer may be longer (link padding).
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Ipv4Packet { buffer };
        p.check_len()?;
        Ok(p)
    }

    #[inline]
    /// Verify lengths: version 4, 20 ≤ IHL·4 ≤ total length ≤ buffer length.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 {
            return Err(Error::Malformed);
        }
        let hl = usize::from(self.header_len());
        if hl < HEADER_LEN {
            return Err(Error::Malformed);
        }
        let tl = usize::from(self.total_len());
        if tl < hl {
            return Err(Error::Malformed);
        }
        if len < hl || len < tl {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }
    #[inline]
    /// Header length in bytes.
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }
    #[inline]
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }
    #[inline]
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }
    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT)
    }
    #[inline]
    pub fn dont_frag(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & 0x4000 != 0
    }
    #[inline]
    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & 0x2000 != 0
    }
    #[inline]
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (be16(self.buffer.as_ref(), field::FLG_OFF) & 0x1fff) << 3
    }
    #[inline]
    /// True when this is any fragment of a larger datagram.
    pub fn is_fragment(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & 0x3fff != 0
    }
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        ip_at(self.buffer.as_ref(), field::SRC)
    }
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        ip_at(self.buffer.as_ref(), field::DST)
    }
    #[inline]
    /// Destination as a host-order u32 (FIB key).
    pub fn dst_u32(&self) -> u32 {
        crate::be32(self.buffer.as_ref(), field::DST)
    }
    #[inline]
    /// The header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        let hl = usize::from(self.header_len());
        let b = self.buffer.as_ref();
        let s = match b.first_chunk::<20>() {
            Some(h) if hl == HEADER_LEN => checksum::sum20(h),
            _ => checksum::sum(&b[..hl]),
        };
        checksum::fold(s) == 0xffff
    }
    #[inline]
    /// Options bytes.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.header_len())]
    }
    #[inline]
    /// The payload, bounded by the total length (link padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[usize::from(self.header_len())..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    #[inline]
    pub fn set_version_ihl(&mut self, header_len: u8) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) & 0x0f);
    }
    #[inline]
    pub fn set_tos(&mut self, v: u8) {
        self.buffer.as_mut()[field::TOS] = v
    }
    #[inline]
    pub fn set_total_len(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::LENGTH, v)
    }
    #[inline]
    pub fn set_ident(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::IDENT, v)
    }
    #[inline]
    /// Set DF/MF and the offset (bytes, multiple of 8).
    pub fn set_flags_frag(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let v = (u16::from(dont_frag) << 14) | (u16::from(more_frags) << 13) | (offset >> 3);
        put16(self.buffer.as_mut(), field::FLG_OFF, v)
    }
    #[inline]
    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v
    }
    #[inline]
    pub fn set_protocol(&mut self, v: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = v
    }
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM, v)
    }
    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC..field::SRC + 4].copy_from_slice(&a.octets())
    }
    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST..field::DST + 4].copy_from_slice(&a.octets())
    }
    #[inline]
    /// Compute and store the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = usize::from(self.header_len());
        let c = checksum::checksum(&self.buffer.as_ref()[..hl]);
        self.set_checksum(c);
    }
    /// Decrement TTL by one and patch the checksum incrementally (RFC 1624). Returns the new TTL.
    #[inline]
    pub fn decrement_ttl(&mut self) -> u8 {
        let b = self.buffer.as_mut();
        let ttl = b[field::TTL].wrapping_sub(1);
        let old = u16::from_be_bytes([b[field::TTL], b[field::PROTOCOL]]);
        let new = u16::from_be_bytes([ttl, b[field::PROTOCOL]]);
        b[field::TTL] = ttl;
        let c = checksum::update16(be16(b, field::CHECKSUM), old, new);
        put16(b, field::CHECKSUM, c);
        ttl
    }
    #[inline]
    /// Rewrite the destination, patching the header checksum incrementally.
    pub fn rewrite_dst(&mut self, a: Ipv4Addr) {
        let old = self.dst_u32();
        let c = checksum::update32(self.checksum(), old, u32::from(a));
        self.set_dst_addr(a);
        self.set_checksum(c);
    }
    #[inline]
    /// Rewrite the source, patching the header checksum incrementally.
    pub fn rewrite_src(&mut self, a: Ipv4Addr) {
        let old = u32::from(self.src_addr());
        let c = checksum::update32(self.checksum(), old, u32::from(a));
        self.set_src_addr(a);
        self.set_checksum(c);
    }
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = usize::from(self.header_len());
        let tl = usize::from(self.total_len());
        &mut self.buffer.as_mut()[hl..tl]
    }
}

/// Parsed IPv4 header (options are not represented; `parse` accepts and skips them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: u8,
    pub payload_len: usize,
    pub ttl: u8,
    pub tos: u8,
    pub ident: u16,
    pub dont_frag: bool,
}

impl Ipv4Repr {
    #[inline]
    /// Parse a non-fragmented packet with a valid checksum.
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) -> Result<Self> {
        p.check_len()?;
        if !p.verify_checksum() {
            return Err(Error::Checksum);
        }
        if p.more_frags() || p.frag_offset() != 0 {
            return Err(Error::Unsupported);
        }
        Ok(Ipv4Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            protocol: p.protocol(),
            payload_len: usize::from(p.total_len()) - usize::from(p.header_len()),
            ttl: p.ttl(),
            tos: p.tos(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
        })
    }
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }
    #[inline]
    /// Emit a 20-byte header with its checksum.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Ipv4Packet<T>) {
        p.set_version_ihl(HEADER_LEN as u8);
        p.set_tos(self.tos);
        p.set_total_len((HEADER_LEN + self.payload_len) as u16);
        p.set_ident(self.ident);
        p.set_flags_frag(self.dont_frag, false, 0);
        p.set_ttl(self.ttl);
        p.set_protocol(self.protocol);
        p.set_src_addr(self.src_addr);
        p.set_dst_addr(self.dst_addr);
        p.fill_checksum();
    }
}

/// The IPv4 packet an Ethernet frame carries, if its header is sound (version, header length,
/// total length; not the checksum). The frame's type is not checked.
pub fn in_frame(frame: &[u8]) -> Option<Ipv4Packet<&[u8]>> {
    Ipv4Packet::new_checked(frame.get(crate::ethernet::HEADER_LEN..)?).ok()
}

#[inline]
/// Parse "a.b.c.d/len" into (address, prefix length).
pub fn parse_prefix(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().ok()?),
        None => (s, 32),
    };
    if l > 32 {
        return None;
    }
    Some((a.parse().ok()?, l))
}

#[inline]
/// The network mask of a prefix length as a u32.
pub fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}
