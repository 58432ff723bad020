//! Internet checksum (RFC 1071), full and incremental (RFC 1624).

/// One's-complement sum of `data` folded into 32 bits (not yet complemented).
/// Odd trailing byte is padded with zero, as RFC 1071 says.
#[inline]
pub fn sum(data: &[u8]) -> u32 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Add the two 32-bit halves so carries stay inside 64 bits.
        acc += v >> 32;
        acc += v & 0xffff_ffff;
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    fold64(acc)
}

#[inline]
fn fold64(acc: u64) -> u32 {
    // Two steps always suffice: after the first the value fits in 33 bits.
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc as u32
}

/// Fold a 32-bit partial sum into 16 bits (not complemented).
#[inline]
pub fn fold(acc: u32) -> u16 {
    // Branch-free: three steps cover any 32-bit sum (17 bits after the first, then 16).
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// Sum of a 20-byte IPv4 header (no options), the fast path's common case.
#[inline]
pub fn sum20(h: &[u8; 20]) -> u32 {
    let w = |i: usize| u64::from(u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    fold64(w(0) + w(4) + w(8) + w(12) + w(16))
}

/// Add partial sums.
#[inline]
pub fn combine(parts: &[u32]) -> u32 {
    fold64(parts.iter().map(|&p| u64::from(p)).sum())
}

/// The checksum field value for `data` (complement of the folded sum).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// Pseudo-header partial sum for TCP/UDP over IPv4.
#[inline]
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], protocol: u8, length: u16) -> u32 {
    u32::from(u16::from_be_bytes([src[0], src[1]]))
        + u32::from(u16::from_be_bytes([src[2], src[3]]))
        + u32::from(u16::from_be_bytes([dst[0], dst[1]]))
        + u32::from(u16::from_be_bytes([dst[2], dst[3]]))
        + u32::from(protocol)
        + u32::from(length)
}

/// Folded one's-complement sum of a TCP or UDP segment with its IPv4 pseudo-header: 0xffff
/// when a segment carrying its checksum verifies; the complement is the checksum to store
/// (computed over the segment with a zero checksum field).
#[inline]
pub fn transport_sum(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8]) -> u16 {
    let ph = pseudo_header_v4(src, dst, protocol, segment.len() as u16);
    fold(combine(&[ph, sum(segment)]))
}

/// RFC 1624 eqn. 3: update checksum `hc` when a 16-bit field changes from `old` to `new`.
/// `HC' = ~(~HC + ~m + m')`.
#[inline]
pub fn update16(hc: u16, old: u16, new: u16) -> u16 {
    let acc = u32::from(!hc) + u32::from(!old) + u32::from(new);
    !fold(acc)
}

/// RFC 1624 update for a 32-bit field (an IPv4 address).
#[inline]
pub fn update32(hc: u16, old: u32, new: u32) -> u16 {
    let acc = u32::from(!hc)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + (new >> 16)
        + (new & 0xffff);
    !fold(acc)
}

/// RFC 1624 update for an arbitrary run of bytes at an even offset changing from `old` to `new`
/// (same length). Odd-length runs are padded with zero, so callers must pass even-aligned runs.
#[inline]
pub fn update_bytes(hc: u16, old: &[u8], new: &[u8]) -> u16 {
    let acc = u32::from(!hc) + u32::from(!fold(sum(old))) + u32::from(fold(sum(new)));
    !fold(fold(acc) as u32)
}

/// A running RFC 1624 adjustment of a checksum, for edits of a checksummed region: bytes
/// removed, bytes added, fields changed. Every edit must sit at an even offset of the region,
/// and data that moves (a splice that grows or shrinks the region) must move by an even
/// number of bytes, so its 16-bit words and their sum stay the same.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Adjust(u64);

impl Adjust {
    /// Bytes that left the region.
    #[inline]
    pub fn remove(&mut self, old: &[u8]) {
        self.0 += u64::from(!fold(sum(old)));
    }

    /// Bytes that joined the region.
    #[inline]
    pub fn add(&mut self, new: &[u8]) {
        self.0 += u64::from(fold(sum(new)));
    }

    /// A 16-bit field changed.
    #[inline]
    pub fn field16(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// A 32-bit field (an IPv4 address) changed.
    #[inline]
    pub fn field32(&mut self, old: u32, new: u32) {
        self.field16((old >> 16) as u16, (new >> 16) as u16);
        self.field16(old as u16, new as u16);
    }

    /// The checksum field `hc` after every edit recorded.
    #[inline]
    pub fn apply(self, hc: u16) -> u16 {
        !fold(fold64(u64::from(!hc) + self.0))
    }
}

/// UDP special case: a computed checksum of zero is sent as 0xffff.
#[inline]
pub fn udp_nonzero(c: u16) -> u16 {
    if c == 0 {
        0xffff
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn odd_length() {
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    proptest! {
        #[test]
        fn wide_sum_matches_naive(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut naive: u32 = 0;
            for ch in data.chunks(2) {
                let w = if ch.len() == 2 { u16::from_be_bytes([ch[0], ch[1]]) } else { u16::from(ch[0]) << 8 };
                naive += u32::from(w);
            }
            prop_assert_eq!(fold(sum(&data)), fold(naive));
        }

        #[test]
        fn sum20_matches_sum(h in proptest::array::uniform20(any::<u8>())) {
            prop_assert_eq!(fold(sum20(&h)), fold(sum(&h)));
        }

        #[test]
        fn fold_is_complete(x in any::<u32>()) {
            let mut naive = x;
            while naive >> 16 != 0 { naive = (naive & 0xffff) + (naive >> 16); }
            prop_assert_eq!(u32::from(fold(x)), naive);
        }

        #[test]
        fn incremental_matches_full(mut data in proptest::collection::vec(any::<u8>(), 4..100), pos in 0usize..48, new in any::<u16>()) {
            let pos = (pos % (data.len() / 2)) * 2;
            let before = checksum(&data);
            let old = u16::from_be_bytes([data[pos], data[pos + 1]]);
            data[pos..pos + 2].copy_from_slice(&new.to_be_bytes());
            let after = checksum(&data);
            // One's complement has two zeros; compare the summed values.
            let inc = update16(before, old, new);
            prop_assert_eq!(fold(u32::from(!inc)) % 0xffff, fold(u32::from(!after)) % 0xffff);
        }

        #[test]
        fn incremental32_matches_full(mut data in proptest::collection::vec(any::<u8>(), 8..100), new in any::<u32>()) {
            let before = checksum(&data);
            let old = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
            data[4..8].copy_from_slice(&new.to_be_bytes());
            let after = checksum(&data);
            let inc = update32(before, old, new);
            prop_assert_eq!(fold(u32::from(!inc)) % 0xffff, fold(u32::from(!after)) % 0xffff);
        }

        #[test]
        fn adjust_follows_splices_and_fields(
            mut data in proptest::collection::vec(any::<u8>(), 64..200),
            at in 0usize..30, old_words in 0usize..12, new in proptest::collection::vec(any::<u8>(), 0..24),
            field in any::<u32>(),
        ) {
            // Region: data with a 32-bit field at 0; splice at an even offset, an even length
            // removed and an even length added (the rest moves by an even amount).
            let before = checksum(&data);
            let at = 4 + at * 2;
            let old_len = (old_words * 2).min(data.len() - at);
            let new = &new[..new.len() & !1];
            let mut adj = Adjust::default();
            adj.remove(&data[at..at + old_len]);
            adj.add(new);
            data.splice(at..at + old_len, new.iter().copied());
            let f = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            adj.field32(f, field);
            data[..4].copy_from_slice(&field.to_be_bytes());
            let after = checksum(&data);
            prop_assert_eq!(fold(u32::from(!adj.apply(before))) % 0xffff, fold(u32::from(!after)) % 0xffff);
        }

        #[test]
        fn incremental_bytes_matches_full(mut data in proptest::collection::vec(any::<u8>(), 40..100), new in proptest::collection::vec(any::<u8>(), 16)) {
            let before = checksum(&data);
            let old = data[8..24].to_vec();
            data[8..24].copy_from_slice(&new);
            let after = checksum(&data);
            let inc = update_bytes(before, &old, &new);
            prop_assert_eq!(fold(u32::from(!inc)) % 0xffff, fold(u32::from(!after)) % 0xffff);
        }
    }
}
