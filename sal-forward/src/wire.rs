//! The Service Access Layer header, as the original Serval stacks put it on the wire:
//!
//! ```text
//! IPv4 (protocol 144) | SAL base (12) | extensions | TCP or UDP (ports 0) | payload
//! base: src flowID u32 | dst flowID u32 | shl u8 (words) | protocol u8 | checksum u16
//! extension: type << 4 | length u8 (bytes, whole extension) | body  (PAD: one byte)
//!   CONTROL (20): flags, reserved, verno u32, ackno u32, nonce [8]
//!   SERVICE (36): 2 reserved, serviceID [32]
//!   SOURCE (4 + 4N): 2 reserved, N IPv4 addresses
//! ```
//!
//! The SAL checksum is the Internet checksum over the SAL header alone; the transport checksum
//! is the ordinary pseudo-header checksum over the transport segment alone.

use crate::id::ServiceId;
use packet::checksum;
use packet::Error;
use std::net::Ipv4Addr;

/// IP protocol number of Serval.
pub const PROTOCOL: u8 = 144;
/// The base header.
pub const BASE_LEN: usize = 12;
/// The longest SAL header (shl is a byte of 32-bit words).
pub const MAX_LEN: usize = 255 * 4;
pub const CONTROL_LEN: usize = 20;
pub const SERVICE_LEN: usize = 36;
/// Most addresses a SOURCE extension holds.
pub const SOURCE_MAX: usize = 20;

/// Extension types (high nibble of an extension's first byte).
pub mod ext {
    pub const PAD: u8 = 0;
    pub const CONTROL: u8 = 1;
    pub const SERVICE: u8 = 2;
    pub const ADDRESS: u8 = 3;
    pub const SOURCE: u8 = 4;
}

/// CONTROL flags.
pub mod flags {
    pub const SYN: u8 = 0x80;
    pub const RSYN: u8 = 0x40;
    pub const ACK: u8 = 0x20;
    pub const NACK: u8 = 0x10;
    pub const RST: u8 = 0x08;
    pub const FIN: u8 = 0x04;
}

/// A SAL header parsed in place: its fields and where each extension sits (offsets from the
/// header's first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sal {
    pub src_flow: u32,
    pub dst_flow: u32,
    /// Header length in bytes (base and extensions).
    pub len: usize,
    /// Transport protocol (6 TCP, 17 UDP).
    pub protocol: u8,
    pub checksum: u16,
    /// The CONTROL extension and its flags (0 without one).
    pub control: Option<usize>,
    pub flags: u8,
    /// The first SERVICE extension (the destination's) and a second one (a connectionless
    /// datagram's source service).
    pub service: Option<usize>,
    pub src_service: Option<usize>,
    /// The SOURCE extension and how many addresses it holds.
    pub source: Option<usize>,
    pub source_n: usize,
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parse the SAL header at the start of `b` (an IP payload). Checks lengths and extension
/// layout, not the checksum.
pub fn parse(b: &[u8]) -> Result<Sal, Error> {
    if b.len() < BASE_LEN {
        return Err(Error::Truncated);
    }
    let len = usize::from(b[8]) * 4;
    if len < BASE_LEN {
        return Err(Error::Malformed);
    }
    if b.len() < len {
        return Err(Error::Truncated);
    }
    let mut s = Sal {
        src_flow: be32(b, 0),
        dst_flow: be32(b, 4),
        len,
        protocol: b[9],
        checksum: u16::from_be_bytes([b[10], b[11]]),
        ..Sal::default()
    };
    let mut at = BASE_LEN;
    while at < len {
        let kind = b[at] >> 4;
        if kind == ext::PAD {
            at += 1;
            continue;
        }
        let n = usize::from(*b.get(at + 1).ok_or(Error::Malformed)?);
        if n < 2 || at + n > len {
            return Err(Error::Malformed);
        }
        match kind {
            ext::CONTROL if n == CONTROL_LEN && s.control.is_none() => {
                s.control = Some(at);
                s.flags = b[at + 2];
            }
            ext::SERVICE if n == SERVICE_LEN && s.service.is_none() => s.service = Some(at),
            ext::SERVICE if n == SERVICE_LEN && s.src_service.is_none() => s.src_service = Some(at),
            ext::SOURCE if n >= 8 && (n - 4) % 4 == 0 && (n - 4) / 4 <= SOURCE_MAX => {
                if s.source.is_some() {
                    return Err(Error::Malformed);
                }
                s.source = Some(at);
                s.source_n = (n - 4) / 4;
            }
            ext::ADDRESS => {}
            _ => return Err(Error::Malformed),
        }
        at += n;
    }
    Ok(s)
}

impl Sal {
    /// The destination serviceID (the first SERVICE extension).
    pub fn service_id(&self, b: &[u8]) -> Option<ServiceId> {
        let at = self.service?;
        ServiceId::from_slice(b.get(at + 4..at + SERVICE_LEN)?)
    }

    /// The source serviceID of a connectionless datagram (the second SERVICE extension).
    pub fn src_service_id(&self, b: &[u8]) -> Option<ServiceId> {
        let at = self.src_service?;
        ServiceId::from_slice(b.get(at + 4..at + SERVICE_LEN)?)
    }

    /// The SOURCE extension's addresses.
    pub fn source_addrs<'a>(&self, b: &'a [u8]) -> impl Iterator<Item = Ipv4Addr> + 'a {
        let (at, n) = self.source.map_or((0, 0), |at| (at, self.source_n));
        (0..n).filter_map(move |i| {
            let o = at + 4 + 4 * i;
            b.get(o..o + 4)
                .map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        })
    }

    /// A connection request: CONTROL with SYN and without ACK.
    pub fn is_syn(&self) -> bool {
        self.control.is_some() && self.flags & (flags::SYN | flags::ACK) == flags::SYN
    }

    /// A connectionless datagram: no CONTROL extension.
    pub fn is_datagram(&self) -> bool {
        self.control.is_none()
    }
}

/// Whether the SAL header `header` (exactly its `len` bytes) carries a valid checksum.
pub fn verify_checksum(header: &[u8]) -> bool {
    checksum::fold(checksum::sum(header)) == 0xffff
}

/// The CONTROL extension's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Control {
    pub flags: u8,
    pub verno: u32,
    pub ackno: u32,
    pub nonce: [u8; 8],
}

/// Addresses of a SOURCE extension, without allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceList {
    addrs: [Ipv4Addr; SOURCE_MAX],
    n: usize,
}

impl Default for SourceList {
    fn default() -> Self {
        SourceList {
            addrs: [Ipv4Addr::UNSPECIFIED; SOURCE_MAX],
            n: 0,
        }
    }
}

impl SourceList {
    pub fn from_addrs(a: &[Ipv4Addr]) -> Option<Self> {
        let mut l = SourceList::default();
        for &x in a {
            l.push(x)?;
        }
        Some(l)
    }
    /// Append; `None` when full.
    pub fn push(&mut self, a: Ipv4Addr) -> Option<()> {
        *self.addrs.get_mut(self.n)? = a;
        self.n += 1;
        Some(())
    }
    pub fn as_slice(&self) -> &[Ipv4Addr] {
        &self.addrs[..self.n]
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// A SAL header as values, for building packets (hosts, tests, the management core) and for
/// checking what was parsed. Extensions are emitted in the original's order: CONTROL, SERVICE
/// (destination), SERVICE (source), SOURCE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SalRepr {
    pub src_flow: u32,
    pub dst_flow: u32,
    pub protocol: u8,
    pub control: Option<Control>,
    pub service: Option<ServiceId>,
    pub src_service: Option<ServiceId>,
    pub source: SourceList,
}

impl SalRepr {
    /// Parse and check the checksum.
    pub fn parse(b: &[u8]) -> Result<(Self, usize), Error> {
        let s = parse(b)?;
        if !verify_checksum(&b[..s.len]) {
            return Err(Error::Checksum);
        }
        let control = s.control.map(|at| Control {
            flags: b[at + 2],
            verno: be32(b, at + 4),
            ackno: be32(b, at + 8),
            nonce: b[at + 12..at + 20].try_into().unwrap_or_default(),
        });
        let mut source = SourceList::default();
        for a in s.source_addrs(b) {
            source.push(a);
        }
        Ok((
            SalRepr {
                src_flow: s.src_flow,
                dst_flow: s.dst_flow,
                protocol: s.protocol,
                control,
                service: s.service_id(b),
                src_service: s.src_service_id(b),
                source,
            },
            s.len,
        ))
    }

    /// Header length in bytes.
    pub fn len(&self) -> usize {
        BASE_LEN
            + self.control.map_or(0, |_| CONTROL_LEN)
            + self.service.map_or(0, |_| SERVICE_LEN)
            + self.src_service.map_or(0, |_| SERVICE_LEN)
            + if self.source.is_empty() {
                0
            } else {
                4 + 4 * self.source.n
            }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Write the header (with its checksum) into the first `len()` bytes of `out`; returns the
    /// length.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        let len = self.len();
        let out = out.get_mut(..len).ok_or(Error::Truncated)?;
        out[0..4].copy_from_slice(&self.src_flow.to_be_bytes());
        out[4..8].copy_from_slice(&self.dst_flow.to_be_bytes());
        out[8] = (len / 4) as u8;
        out[9] = self.protocol;
        out[10..12].fill(0);
        let mut at = BASE_LEN;
        if let Some(c) = self.control {
            let e = &mut out[at..at + CONTROL_LEN];
            e[0] = ext::CONTROL << 4;
            e[1] = CONTROL_LEN as u8;
            e[2] = c.flags;
            e[3] = 0;
            e[4..8].copy_from_slice(&c.verno.to_be_bytes());
            e[8..12].copy_from_slice(&c.ackno.to_be_bytes());
            e[12..20].copy_from_slice(&c.nonce);
            at += CONTROL_LEN;
        }
        for id in [self.service, self.src_service].into_iter().flatten() {
            let e = &mut out[at..at + SERVICE_LEN];
            e[0] = ext::SERVICE << 4;
            e[1] = SERVICE_LEN as u8;
            e[2..4].fill(0);
            e[4..].copy_from_slice(&id.0);
            at += SERVICE_LEN;
        }
        if !self.source.is_empty() {
            let n = 4 + 4 * self.source.n;
            out[at] = ext::SOURCE << 4;
            out[at + 1] = n as u8;
            out[at + 2..at + 4].fill(0);
            for (i, a) in self.source.as_slice().iter().enumerate() {
                out[at + 4 + 4 * i..at + 8 + 4 * i].copy_from_slice(&a.octets());
            }
        }
        // The checksum field is zero here.
        let c = checksum::checksum(out);
        out[10..12].copy_from_slice(&c.to_be_bytes());
        Ok(len)
    }
}

/// A whole IPv4 datagram: `sal`, then the transport segment `segment` (TCP or UDP as
/// `sal.protocol` says, ports 0), its checksum filled in (pseudo-header, segment only). For
/// hosts, tests and benchmarks; the router never builds requests.
pub fn datagram(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, sal: &SalRepr, segment: &[u8]) -> Vec<u8> {
    let hl = sal.len();
    let total = 20 + hl + segment.len();
    let mut d = vec![0u8; total];
    packet::ipv4::Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: PROTOCOL,
        payload_len: hl + segment.len(),
        ttl,
        tos: 0,
        ident: 0,
        dont_frag: false,
    }
    .emit(&mut packet::ipv4::Ipv4Packet::new_unchecked(&mut d[..]));
    let _ = sal.emit(&mut d[20..20 + hl]);
    let seg = &mut d[20 + hl..];
    seg.copy_from_slice(segment);
    let at = match sal.protocol {
        6 => Some(16),
        17 => Some(6),
        _ => None,
    };
    if let Some(at) = at.filter(|&a| seg.len() >= a + 2) {
        seg[at..at + 2].fill(0);
        let c = !checksum::transport_sum(src.octets(), dst.octets(), sal.protocol, seg);
        let c = if sal.protocol == 17 {
            checksum::udp_nonzero(c)
        } else {
            c
        };
        seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_repr() -> impl Strategy<Value = SalRepr> {
        (
            any::<(u32, u32, bool)>(),
            proptest::option::of(any::<(u8, u32, u32, [u8; 8])>()),
            proptest::option::of(any::<[u8; 32]>()),
            proptest::option::of(any::<[u8; 32]>()),
            proptest::collection::vec(any::<u32>(), 0..=SOURCE_MAX),
        )
            .prop_map(|((sf, df, tcp), c, s, ss, src)| SalRepr {
                src_flow: sf,
                dst_flow: df,
                protocol: if tcp { 6 } else { 17 },
                control: c.map(|(flags, verno, ackno, nonce)| Control {
                    flags,
                    verno,
                    ackno,
                    nonce,
                }),
                service: s.map(ServiceId),
                // A second SERVICE only follows a first.
                src_service: s.and(ss).map(ServiceId),
                source: SourceList::from_addrs(
                    &src.iter().map(|&a| Ipv4Addr::from(a)).collect::<Vec<_>>(),
                )
                .unwrap_or_default(),
            })
            // A SOURCE extension holds at least two addresses.
            .prop_filter("SOURCE of one", |r| r.source.n != 1)
    }

    proptest! {
        #[test]
        fn emit_then_parse(r in arb_repr()) {
            let mut buf = [0u8; MAX_LEN];
            let n = r.emit(&mut buf).unwrap();
            prop_assert_eq!(n, r.len());
            let (back, len) = SalRepr::parse(&buf[..n]).unwrap();
            prop_assert_eq!(len, n);
            prop_assert_eq!(back, r);
        }

        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(s) = parse(&b) {
                prop_assert!(s.len <= b.len());
                let _ = s.service_id(&b);
                let _ = s.source_addrs(&b).count();
            }
            let _ = SalRepr::parse(&b);
        }
    }
}
