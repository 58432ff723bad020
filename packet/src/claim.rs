//! Claims: what an application owns of the IPv4 traffic, as DPDK grout's
//! `l4_input_register_port` and VPP's `udp_register_dst_port` register it.
//!
//! The router's IPv4 input validates every packet once (RFC 1812: version, header length,
//! total length, header checksum, martians, TTL) and then looks up the [`ClaimSet`]: a packet
//! some application claims goes to that application's stage with its header offsets recorded
//! in a [`Claimed`] entry; everything else is routed untouched. Application stages trust what
//! the input checked and read the recorded offsets instead of parsing again.

use crate::buffer::Buffer;
use crate::stage::{Stage, Verdict};
use std::net::Ipv4Addr;

/// Which addresses a claim is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum On {
    /// Packets to this address.
    Dst(Ipv4Addr),
    /// Packets from this address.
    Src(Ipv4Addr),
    /// Packets to any address (by protocol and port only).
    AnyDst,
}

/// One kind of packet an application owns. Claimed packets are the ones an application
/// rewrites and sends on, so the IPv4 input answers those whose TTL would expire on the way out
/// (ICMP time exceeded) before the application sees them. Traffic an application consumes on
/// the management core is not claimed: it reaches the management core as local delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Claim {
    pub on: On,
    /// IP protocol.
    pub protocol: u8,
    /// Transport port: the destination port for [`On::Dst`] and [`On::AnyDst`], the source
    /// port for [`On::Src`]; `None` for any (or for a protocol without ports).
    pub port: Option<u16>,
    /// IP fragments matching the address and protocol are claimed too (their ports cannot be
    /// read: a claim with `fragments` takes every fragment of the address).
    pub fragments: bool,
}

impl Claim {
    /// UDP to `addr:port`.
    pub fn udp_to(addr: Ipv4Addr, port: u16) -> Claim {
        Claim {
            on: On::Dst(addr),
            protocol: crate::ipv4::protocol::UDP,
            port: Some(port),
            fragments: false,
        }
    }
    /// UDP from `addr:port`.
    pub fn udp_from(addr: Ipv4Addr, port: u16) -> Claim {
        Claim {
            on: On::Src(addr),
            protocol: crate::ipv4::protocol::UDP,
            port: Some(port),
            fragments: false,
        }
    }
    /// The same claim, with the address's fragments.
    pub fn with_fragments(self) -> Claim {
        Claim {
            fragments: true,
            ..self
        }
    }
}

/// A claimed packet of a burst: its index in the burst and where its headers are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Claimed {
    /// Index in the burst (and in its verdicts).
    pub index: u16,
    /// Offset of the IPv4 header in the frame.
    pub ip_at: u16,
    /// Offset of the transport header (the IPv4 payload).
    pub l4_at: u16,
    /// The packet is an IP fragment (its transport header may be absent).
    pub fragment: bool,
}

impl Claimed {
    /// For a frame that has not been through the router's IPv4 input (a stage driven on its
    /// own, or the management core's reassembled packets): the same header checks the input
    /// makes (Ethernet type, version, header length, total length, header checksum). `None`
    /// for anything that would not reach an application.
    pub fn validate(frame: &[u8], index: u16) -> Option<Claimed> {
        const ETH: usize = crate::ethernet::HEADER_LEN;
        if frame.get(12..14)? != [0x08, 0x00] {
            return None;
        }
        let ip = crate::ipv4::Ipv4Packet::new_checked(frame.get(ETH..)?).ok()?;
        if !ip.verify_checksum() {
            return None;
        }
        Some(Claimed {
            index,
            ip_at: ETH as u16,
            l4_at: (ETH + usize::from(ip.header_len())) as u16,
            fragment: ip.is_fragment(),
        })
    }
}

/// Give each claimed packet of a burst the verdict `f` decides for it.
#[inline]
pub fn for_each_claimed<B: Buffer>(
    pkts: &mut [B],
    claimed: &[Claimed],
    verdicts: &mut [Verdict],
    mut f: impl FnMut(&mut B, &Claimed) -> Verdict,
) {
    for c in claimed {
        let i = usize::from(c.index);
        if let (Some(p), Some(v)) = (pkts.get_mut(i), verdicts.get_mut(i)) {
            *v = f(p, c);
        }
    }
}

/// A stage that processes the packets its application claims.
pub trait ClaimingStage: Stage {
    /// What the application owns.
    fn claims(&self) -> Vec<Claim>;

    /// Process the claimed packets of a burst: each entry of `claimed` names a packet of
    /// `pkts` (and its verdict, [`Verdict::Next`] on entry) and where its headers are. A
    /// verdict left [`Verdict::Next`] means "route it" (rewritten or not).
    fn process_claimed<B: Buffer>(
        &mut self,
        pkts: &mut [B],
        claimed: &[Claimed],
        verdicts: &mut [Verdict],
    );

    /// One packet that has not been through the IPv4 input: validated as the input would, then
    /// processed like a claimed one if the stage claims it (the stage's own checks decide).
    fn process_unclaimed<B: Buffer>(&mut self, pkt: &mut B) -> Verdict {
        let Some(c) = Claimed::validate(pkt.data(), 0) else {
            return Verdict::Next;
        };
        let mut v = [Verdict::Next];
        self.process_claimed(std::slice::from_mut(pkt), &[c], &mut v);
        v[0]
    }
}

/// The claims of every application, looked up once per packet by the IPv4 input. Most packets
/// are nobody's: a protocol bitmap and an address filter turn those away with a few loads.
#[derive(Debug, Clone, Default)]
pub struct ClaimSet {
    claims: Vec<(Claim, u8)>,
    protocols: [u64; 4],
    addrs: [u64; FILTER_WORDS],
    any_dst: bool,
}

const FILTER_WORDS: usize = 16;

#[inline]
fn filter_bit(a: u32) -> (usize, u64) {
    let h = a.wrapping_mul(0x9e37_79b1) >> 22; // 10 bits
    ((h >> 6) as usize % FILTER_WORDS, 1u64 << (h & 63))
}

/// What the claim lookup reads of a validated packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: u32,
    pub dst: u32,
    pub protocol: u8,
    pub fragment: bool,
    /// Transport ports (zero when the packet has none or is a fragment).
    pub sport: u16,
    pub dport: u16,
}

impl ClaimSet {
    /// Add `app`'s claims.
    pub fn add(&mut self, app: u8, claims: impl IntoIterator<Item = Claim>) {
        for c in claims {
            self.protocols[usize::from(c.protocol >> 6)] |= 1 << (c.protocol & 63);
            match c.on {
                On::Dst(a) | On::Src(a) => {
                    let (w, b) = filter_bit(u32::from(a));
                    self.addrs[w] |= b;
                }
                On::AnyDst => self.any_dst = true,
            }
            self.claims.push((c, app));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// Every claim with its application.
    pub fn claims(&self) -> &[(Claim, u8)] {
        &self.claims
    }

    /// Could a packet of this protocol between these addresses be claimed? (No port read yet.)
    #[inline(always)]
    pub fn maybe(&self, protocol: u8, src: u32, dst: u32) -> bool {
        if self.protocols[usize::from(protocol >> 6)] & (1 << (protocol & 63)) == 0 {
            return false;
        }
        if self.any_dst {
            return true;
        }
        let ((ws, bs), (wd, bd)) = (filter_bit(src), filter_bit(dst));
        self.addrs[ws] & bs != 0 || self.addrs[wd] & bd != 0
    }

    /// The application that claims `f`, the first in the order they were added.
    #[inline]
    pub fn lookup(&self, f: &Flow) -> Option<u8> {
        self.claims.iter().find_map(|(c, app)| {
            if c.protocol != f.protocol || (f.fragment && !c.fragments) {
                return None;
            }
            let (addr_ok, port) = match c.on {
                On::Dst(a) => (u32::from(a) == f.dst, f.dport),
                On::Src(a) => (u32::from(a) == f.src, f.sport),
                On::AnyDst => (!f.fragment, f.dport),
            };
            let port_ok = f.fragment || c.port.is_none_or(|p| p == port);
            (addr_ok && port_ok).then_some(*app)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src: [u8; 4], dst: [u8; 4], protocol: u8, sport: u16, dport: u16) -> Flow {
        Flow {
            src: u32::from(Ipv4Addr::from(src)),
            dst: u32::from(Ipv4Addr::from(dst)),
            protocol,
            fragment: false,
            sport,
            dport,
        }
    }

    #[test]
    fn claims_match_address_protocol_and_port() {
        let mut s = ClaimSet::default();
        let virt = Ipv4Addr::new(10, 0, 9, 9);
        let server = Ipv4Addr::new(10, 0, 2, 10);
        s.add(
            0,
            [
                Claim::udp_to(virt, 2049).with_fragments(),
                Claim::udp_from(server, 2049).with_fragments(),
            ],
        );
        s.add(
            1,
            [Claim {
                on: On::AnyDst,
                protocol: 17,
                port: Some(8888),
                fragments: false,
            }],
        );
        s.add(
            2,
            [Claim {
                on: On::Dst(Ipv4Addr::new(10, 0, 1, 1)),
                protocol: 144,
                port: None,
                fragments: false,
            }],
        );
        assert_eq!(
            s.lookup(&flow([10, 0, 1, 5], [10, 0, 9, 9], 17, 700, 2049)),
            Some(0)
        );
        assert_eq!(
            s.lookup(&flow([10, 0, 1, 5], [10, 0, 9, 9], 17, 700, 2050)),
            None
        );
        assert_eq!(
            s.lookup(&flow([10, 0, 1, 5], [10, 0, 9, 9], 6, 700, 2049)),
            None
        );
        assert_eq!(
            s.lookup(&flow([10, 0, 2, 10], [10, 0, 1, 5], 17, 2049, 700)),
            Some(0)
        );
        assert_eq!(
            s.lookup(&flow([10, 0, 2, 10], [10, 0, 1, 5], 17, 2050, 700)),
            None
        );
        assert_eq!(
            s.lookup(&flow([1, 2, 3, 4], [5, 6, 7, 8], 17, 1, 8888)),
            Some(1)
        );
        assert_eq!(
            s.lookup(&flow([1, 2, 3, 4], [10, 0, 1, 1], 144, 0, 0)),
            Some(2)
        );
        assert_eq!(
            s.lookup(&flow([1, 2, 3, 4], [10, 0, 1, 2], 144, 0, 0)),
            None
        );
        let mut frag = flow([10, 0, 1, 5], [10, 0, 9, 9], 17, 0, 0);
        frag.fragment = true;
        assert_eq!(s.lookup(&frag), Some(0));
        frag.dst = u32::from(Ipv4Addr::new(5, 6, 7, 8));
        assert_eq!(
            s.lookup(&frag),
            None,
            "fragments are not claimed by port alone"
        );
    }

    #[test]
    fn the_filter_never_turns_away_a_claimed_packet() {
        let mut s = ClaimSet::default();
        let addrs: Vec<Ipv4Addr> = (0..200u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i * 7919))
            .collect();
        for (i, a) in addrs.iter().enumerate() {
            s.add(i as u8, [Claim::udp_to(*a, 2049)]);
        }
        for a in &addrs {
            assert!(s.maybe(17, 0x0101_0101, u32::from(*a)));
        }
        assert!(!s.maybe(6, 0, u32::from(addrs[0])), "protocol bitmap");
        let unclaimed = (0..10_000u32)
            .filter(|i| s.maybe(17, 0xc0a8_0000 + i, 0xc0a9_0000 + i))
            .count();
        assert!(unclaimed < 10_000, "the filter passes everything");
    }
}
