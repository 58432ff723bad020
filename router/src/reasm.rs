//! IPv4 reassembly on the management core, for the applications that must see whole datagrams
//! (NFS over UDP). Bounded: datagrams in progress, one datagram's size (65,535), and a
//! timeout. Overlapping fragments drop the whole datagram (RFC 5722's rule for IPv6: overlaps
//! are how reassembly is attacked); an exact duplicate is ignored. The original fragments are
//! kept, so a datagram that turns out not to be the application's is passed on as it came.

use packet::ipv4::Ipv4Packet;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ETH: usize = packet::ethernet::HEADER_LEN;

/// (source, destination, identification, protocol): RFC 791's reassembly key.
type Key = (u32, u32, u16, u8);

#[derive(Debug)]
struct Partial {
    started: Instant,
    /// The first fragment's IP header (once it arrived).
    header: Option<Vec<u8>>,
    data: Vec<u8>,
    /// Byte ranges received (never overlapping).
    ranges: Vec<(usize, usize)>,
    /// The payload's length, once the last fragment arrived.
    total: Option<usize>,
    /// The frames as they came.
    frames: Vec<Vec<u8>>,
}

/// A reassembled datagram: the IP datagram (header and payload, no fragment flags) and the
/// frames it came in.
#[derive(Debug)]
pub struct Complete {
    pub datagram: Vec<u8>,
    pub frames: Vec<Vec<u8>>,
}

/// Counters.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ReasmStats {
    pub fragments: u64,
    pub reassembled: u64,
    pub timeouts: u64,
    pub overlaps: u64,
    pub duplicates: u64,
    /// Refused: too many datagrams in progress, or larger than an IP datagram can be.
    pub too_many: u64,
    pub too_big: u64,
    pub malformed: u64,
}

/// Datagrams in progress.
#[derive(Debug)]
pub struct Reassembler {
    parts: HashMap<Key, Partial>,
    max_parts: usize,
    timeout: Duration,
    pub stats: ReasmStats,
}

impl Reassembler {
    pub fn new(max_parts: usize, timeout: Duration) -> Self {
        Reassembler {
            parts: HashMap::new(),
            max_parts,
            timeout,
            stats: ReasmStats::default(),
        }
    }

    /// Datagrams in progress.
    pub fn pending(&self) -> usize {
        self.parts.len()
    }

    /// Add a fragment (an Ethernet frame); the whole datagram once its last piece arrived.
    pub fn add(&mut self, frame: &[u8], now: Instant) -> Option<Complete> {
        self.stats.fragments += 1;
        let Some(ip) = frame
            .get(ETH..)
            .and_then(|b| Ipv4Packet::new_checked(b).ok())
        else {
            self.stats.malformed += 1;
            return None;
        };
        let key = (
            u32::from(ip.src_addr()),
            u32::from(ip.dst_addr()),
            ip.ident(),
            ip.protocol(),
        );
        let hl = usize::from(ip.header_len());
        let off = usize::from(ip.frag_offset());
        let payload = ip.payload();
        let end = off + payload.len();
        if hl + end > 65_535 || (ip.more_frags() && payload.len() % 8 != 0) {
            self.stats.too_big += 1;
            self.parts.remove(&key);
            return None;
        }
        if !self.parts.contains_key(&key) && self.parts.len() >= self.max_parts {
            self.stats.too_many += 1;
            return None;
        }
        let p = self.parts.entry(key).or_insert_with(|| Partial {
            started: now,
            header: None,
            data: Vec::new(),
            ranges: Vec::new(),
            total: None,
            frames: Vec::new(),
        });
        if p.ranges.contains(&(off, end)) {
            self.stats.duplicates += 1;
            return None;
        }
        let beyond_total = p.total.is_some_and(|t| end > t);
        let total_short = !ip.more_frags() && p.ranges.iter().any(|&(_, b)| b > end);
        if p.ranges.iter().any(|&(a, b)| off < b && a < end) || beyond_total || total_short {
            self.stats.overlaps += 1;
            self.parts.remove(&key);
            return None;
        }
        if off == 0 {
            p.header = Some(frame[ETH..ETH + hl].to_vec());
        }
        if !ip.more_frags() {
            p.total = Some(end);
        }
        if p.data.len() < end {
            p.data.resize(end, 0);
        }
        p.data[off..end].copy_from_slice(payload);
        p.ranges.push((off, end));
        p.frames.push(frame.to_vec());
        let have: usize = p.ranges.iter().map(|&(a, b)| b - a).sum();
        match (p.total, &p.header) {
            (Some(t), Some(_)) if have == t => {}
            _ => return None,
        }
        let p = self.parts.remove(&key)?;
        let mut datagram = p.header?;
        let hl = datagram.len();
        datagram.extend_from_slice(&p.data);
        let mut h = Ipv4Packet::new_unchecked(&mut datagram[..]);
        let df = h.dont_frag();
        h.set_flags_frag(df, false, 0);
        h.set_total_len((hl + p.data.len()) as u16);
        h.fill_checksum();
        self.stats.reassembled += 1;
        Some(Complete {
            datagram,
            frames: p.frames,
        })
    }

    /// Forget datagrams whose pieces did not all arrive in time.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.timeout;
        let before = self.parts.len();
        self.parts
            .retain(|_, p| now.duration_since(p.started) < timeout);
        self.stats.timeouts += (before - self.parts.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use packet::ethernet::EthernetAddress;
    use std::net::Ipv4Addr;

    /// A UDP datagram of `n` bytes split into fragments of `step` payload bytes.
    fn fragments(n: usize, step: usize, ident: u16) -> (Vec<u8>, Vec<Vec<u8>>) {
        let payload: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
        let whole = packet::udp::frame(
            EthernetAddress([2, 0, 0, 0, 0, 1]),
            EthernetAddress([2, 0, 0, 0, 0, 2]),
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::new(10, 0, 3, 2),
            2049,
            800,
            &payload,
        );
        let ip = &whole[ETH..];
        let body = &ip[20..];
        let mut out = Vec::new();
        let mut off = 0;
        while off < body.len() {
            let end = (off + step).min(body.len());
            let mut f = whole[..ETH + 20].to_vec();
            f.extend_from_slice(&body[off..end]);
            let mut h = Ipv4Packet::new_unchecked(&mut f[ETH..]);
            h.set_ident(ident);
            h.set_total_len((20 + end - off) as u16);
            h.set_flags_frag(false, end < body.len(), off as u16);
            h.fill_checksum();
            out.push(f);
            off = end;
        }
        let mut whole_ip = ip.to_vec();
        let mut h = Ipv4Packet::new_unchecked(&mut whole_ip[..]);
        h.set_ident(ident);
        h.fill_checksum();
        (whole_ip, out)
    }

    #[test]
    fn in_any_order_and_bounded() {
        let mut r = Reassembler::new(2, Duration::from_secs(1));
        let now = Instant::now();
        let (whole, mut frags) = fragments(4000, 1480, 7);
        assert_eq!(frags.len(), 3);
        frags.swap(0, 2);
        assert!(r.add(&frags[0], now).is_none());
        assert!(r.add(&frags[0], now).is_none(), "duplicate ignored");
        assert!(r.add(&frags[1], now).is_none());
        let c = r.add(&frags[2], now).expect("complete");
        assert_eq!(c.datagram, whole);
        assert_eq!(c.frames.len(), 3);
        assert_eq!((r.stats.reassembled, r.stats.duplicates), (1, 1));
        // Overlap: the datagram is dropped.
        let (_, f2) = fragments(3000, 1480, 8);
        let mut bad = f2[1].clone();
        Ipv4Packet::new_unchecked(&mut bad[ETH..]).set_flags_frag(false, true, 8);
        assert!(r.add(&f2[0], now).is_none());
        assert!(r.add(&bad, now).is_none());
        assert_eq!(r.stats.overlaps, 1);
        assert_eq!(r.pending(), 0);
        // Bounded: two in progress at most; then a timeout frees them.
        for id in 10..13 {
            let (_, f) = fragments(3000, 1480, id);
            r.add(&f[0], now);
        }
        assert_eq!((r.pending(), r.stats.too_many), (2, 1));
        r.expire(now + Duration::from_secs(2));
        assert_eq!((r.pending(), r.stats.timeouts), (0, 2));
    }
}
