//! The NetChain prototype's query header, carried in UDP to port 8888 (requests) and 8889
//! (replies). Offsets are into the UDP payload:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 × k | chain IP list, ended by 0.0.0.0 (k ≤ 10 including the end). Writes list head → tail, reads tail → head |
//! | 4k | 1 | op: 10 READ_REQUEST, 11 READ_REPLY, 12 WRITE_REQUEST, 13 WRITE_REPLY |
//! | 4k+1 | 1 | sc: entries left including the end marker |
//! | 4k+2 | 2 | seq: the client sends 0, the head assigns |
//! | 4k+4 | 16 | key (exact match) |
//! | 4k+20 | V | value (16 bytes in the prototype; up to 128 configured) |
//! | 4k+20+V | 2 | vgroup (virtual group), stamped by the client |
//!
//! A reply whose list was fully consumed has no list at all (a write reply: 38 bytes with
//! 16-byte values); `sc` says how long the list is, so the layout is found from it — when the
//! payload's length fits a list of `sc` entries — or else by walking to the end marker.

use packet::Error;
use std::net::Ipv4Addr;

pub const REQUEST_PORT: u16 = 8888;
pub const REPLY_PORT: u16 = 8889;
/// Entries in the list at most, the end marker included.
pub const MAX_LIST: usize = 10;
pub const KEY_LEN: usize = 16;
/// The prototype's value size, and the largest this implementation stores (the paper's).
pub const PROTOTYPE_VALUE_LEN: usize = 16;
pub const MAX_VALUE_LEN: usize = 128;

/// The operation codes.
pub mod op {
    pub const READ_REQUEST: u8 = 10;
    pub const READ_REPLY: u8 = 11;
    pub const WRITE_REQUEST: u8 = 12;
    pub const WRITE_REPLY: u8 = 13;
}

/// Bytes after the list: op, sc, seq, key, value, vgroup.
pub const fn fixed_len(value_len: usize) -> usize {
    4 + KEY_LEN + value_len + 2
}

/// Where the fields of one query sit in a UDP payload (parsed in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    /// List entries present, the end marker included (0 when the list is gone).
    pub entries: usize,
    pub op: u8,
    pub sc: u8,
    pub seq: u16,
    pub vgroup: u16,
    pub value_len: usize,
}

impl Query {
    /// Offset of the op byte (the list's length in bytes).
    #[inline]
    pub fn op_at(&self) -> usize {
        4 * self.entries
    }
    #[inline]
    pub fn seq_at(&self) -> usize {
        self.op_at() + 2
    }
    #[inline]
    pub fn key_at(&self) -> usize {
        self.op_at() + 4
    }
    #[inline]
    pub fn value_at(&self) -> usize {
        self.key_at() + KEY_LEN
    }
    #[inline]
    pub fn vgroup_at(&self) -> usize {
        self.value_at() + self.value_len
    }
    /// The header's length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.op_at() + fixed_len(self.value_len)
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// List entry `i` (0: the node this query is at).
    #[inline]
    pub fn entry(&self, p: &[u8], i: usize) -> Option<Ipv4Addr> {
        if i >= self.entries {
            return None;
        }
        let b = p.get(4 * i..4 * i + 4)?;
        Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }

    #[inline]
    pub fn key<'a>(&self, p: &'a [u8]) -> &'a [u8] {
        &p[self.key_at()..self.key_at() + KEY_LEN]
    }

    #[inline]
    pub fn value<'a>(&self, p: &'a [u8]) -> &'a [u8] {
        &p[self.value_at()..self.value_at() + self.value_len]
    }
}

/// Parse a NetChain header at the start of UDP payload `p`, for values of `value_len` bytes.
pub fn parse(p: &[u8], value_len: usize) -> Result<Query, Error> {
    let fixed = fixed_len(value_len);
    if p.len() < fixed {
        return Err(Error::Truncated);
    }
    // The list's length: the one `sc` implies, when its end marker is where sc puts it; a
    // write reply whose list was consumed (the prototype's tail pops its own entry and the end
    // marker, leaving sc 0; this appliance's releases before 2026-12 left sc 1), too short for
    // any list; else walk to the end marker.
    let fits = |k: usize| {
        p.len() >= 4 * k + fixed
            && usize::from(p[4 * k + 1]) == k
            && p[4 * k - 4..4 * k] == [0; 4]
            && (0..k - 1).all(|i| p[4 * i..4 * i + 4] != [0; 4])
    };
    let entries = (1..=MAX_LIST)
        .find(|&k| fits(k))
        .or_else(|| {
            let listless_reply = p[1] == 0
                && p.len() < fixed + 4
                && matches!(p[0], op::READ_REPLY | op::WRITE_REPLY);
            (p[1] == 1 || listless_reply).then_some(0)
        })
        .or_else(|| {
            (0..MAX_LIST)
                .find(|&i| p.get(4 * i..4 * i + 4) == Some(&[0; 4]))
                .map(|i| i + 1)
        })
        .ok_or(Error::Malformed)?;
    let q = Query {
        entries,
        op: 0,
        sc: 0,
        seq: 0,
        vgroup: 0,
        value_len,
    };
    if p.len() < q.len() {
        return Err(Error::Truncated);
    }
    let at = q.op_at();
    let vg = q.vgroup_at();
    let q = Query {
        op: p[at],
        sc: p[at + 1],
        seq: u16::from_be_bytes([p[at + 2], p[at + 3]]),
        vgroup: u16::from_be_bytes([p[vg], p[vg + 1]]),
        ..q
    };
    if !(op::READ_REQUEST..=op::WRITE_REPLY).contains(&q.op) {
        return Err(Error::Unsupported);
    }
    Ok(q)
}

/// A query as a client builds it (and tests read it back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRepr {
    /// The chain, without the end marker.
    pub list: Vec<Ipv4Addr>,
    pub op: u8,
    pub sc: u8,
    pub seq: u16,
    pub key: [u8; KEY_LEN],
    pub value: Vec<u8>,
    pub vgroup: u16,
}

impl QueryRepr {
    /// A request as the prototype's client sends it: the list plus its end marker, `sc`
    /// counting both, seq 0. Writes list head → tail, reads tail → head.
    pub fn request(
        op: u8,
        list: &[Ipv4Addr],
        key: [u8; KEY_LEN],
        value: &[u8],
        vgroup: u16,
    ) -> Self {
        QueryRepr {
            list: list.to_vec(),
            op,
            sc: (list.len() + 1) as u8,
            seq: 0,
            key,
            value: value.to_vec(),
            vgroup,
        }
    }

    /// Read a query (its list without the end marker; a list-less reply has an empty list).
    pub fn parse(p: &[u8], value_len: usize) -> Result<Self, Error> {
        let q = parse(p, value_len)?;
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(q.key(p));
        Ok(QueryRepr {
            list: (0..q.entries.saturating_sub(1))
                .filter_map(|i| q.entry(p, i))
                .collect(),
            op: q.op,
            sc: q.sc,
            seq: q.seq,
            key,
            value: q.value(p).to_vec(),
            vgroup: q.vgroup,
        })
    }

    /// The bytes: the list and its end marker (none when `with_list` is false and the list is
    /// empty: a consumed reply), then the fixed fields.
    pub fn emit(&self, with_end: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 * (self.list.len() + 1) + fixed_len(self.value.len()));
        for a in &self.list {
            out.extend_from_slice(&a.octets());
        }
        if with_end {
            out.extend_from_slice(&[0; 4]);
        }
        out.push(self.op);
        out.push(self.sc);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.value);
        out.extend_from_slice(&self.vgroup.to_be_bytes());
        out
    }
}

/// A key as the prototype's client writes a number: right-aligned, big-endian, in 16 bytes.
pub fn key_from_u128(n: u128) -> [u8; KEY_LEN] {
    n.to_be_bytes()
}

/// Parse a key: a decimal number (right-aligned, as the prototype's client) or `0x` and up to
/// 32 hex digits (right-aligned).
pub fn parse_key(s: &str) -> Option<[u8; KEY_LEN]> {
    let n = match s.strip_prefix("0x") {
        Some(h) if !h.is_empty() && h.len() <= 32 => u128::from_str_radix(h, 16).ok()?,
        Some(_) => return None,
        None => s.parse::<u128>().ok()?,
    };
    Some(key_from_u128(n))
}

/// Show a key as `parse_key` reads it (decimal).
pub fn key_string(k: &[u8; KEY_LEN]) -> String {
    u128::from_be_bytes(*k).to_string()
}

/// A value from a number (right-aligned in `len` bytes, as the prototype's client).
pub fn value_from_u64(n: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let b = n.to_be_bytes();
    let k = len.min(8);
    v[len - k..].copy_from_slice(&b[8 - k..]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 100, n)
    }

    #[test]
    fn layouts() {
        let w = QueryRepr::request(
            op::WRITE_REQUEST,
            &[addr(1), addr(2), addr(3)],
            key_from_u128(2018),
            &value_from_u64(222, 16),
            0,
        );
        let b = w.emit(true);
        assert_eq!(b.len(), 54);
        let q = parse(&b, 16).unwrap();
        assert_eq!((q.entries, q.op, q.sc, q.seq, q.vgroup), (4, 12, 4, 0, 0));
        assert_eq!(q.entry(&b, 0), Some(addr(1)));
        assert_eq!(QueryRepr::parse(&b, 16).unwrap(), w);
        // A write reply: no list left, sc 0 as the prototype's tail leaves it (and sc 1, as
        // this appliance's earlier releases sent it).
        for sc in [0, 1] {
            let r = QueryRepr {
                list: vec![],
                op: op::WRITE_REPLY,
                sc,
                seq: 1,
                ..w.clone()
            };
            let b = r.emit(false);
            assert_eq!(b.len(), 38);
            let q = parse(&b, 16).unwrap();
            assert_eq!((q.entries, q.op, q.sc, q.seq), (0, 13, sc, 1));
            assert_eq!(QueryRepr::parse(&b, 16).unwrap(), r);
        }
        // A read reply keeps the rest of its list.
        let r = QueryRepr {
            list: vec![addr(2), addr(1)],
            op: op::READ_REPLY,
            sc: 3,
            ..w
        };
        let b = r.emit(true);
        assert_eq!(b.len(), 50);
        assert_eq!(parse(&b, 16).unwrap().entries, 3);
    }

    #[test]
    fn refused() {
        assert_eq!(parse(&[0; 10], 16), Err(Error::Truncated));
        // No end marker within ten entries.
        assert_eq!(parse(&[2; 80], 16), Err(Error::Malformed));
        let mut b = QueryRepr::request(op::READ_REQUEST, &[addr(3)], key_from_u128(1), &[0; 16], 0)
            .emit(true);
        b[8] = 99;
        assert_eq!(parse(&b, 16), Err(Error::Unsupported));
        assert!(parse(&b[..40], 16).is_err());
    }

    #[test]
    fn keys() {
        assert_eq!(parse_key("2018"), Some(key_from_u128(0x7e2)));
        assert_eq!(parse_key("0x7e2"), Some(key_from_u128(2018)));
        assert_eq!(key_string(&key_from_u128(2018)), "2018");
        assert_eq!(parse_key("0x"), None);
        assert_eq!(parse_key("x"), None);
        assert_eq!(value_from_u64(0xde, 16)[15], 0xde);
    }

    proptest! {
        #[test]
        fn round_trip(n in 1usize..10, op in 10u8..14, seq: u16, key: u128, vgroup: u16,
                      vlen in prop::sample::select(vec![16usize, 32, 64, 128]),
                      fill: u8, a in 1u32..u32::MAX) {
            let list: Vec<Ipv4Addr> = (0..n as u32).map(|i| Ipv4Addr::from(a.wrapping_add(i).max(1))).collect();
            let r = QueryRepr { seq, ..QueryRepr::request(op, &list, key_from_u128(key), &vec![fill; vlen], vgroup) };
            let b = r.emit(true);
            prop_assert_eq!(QueryRepr::parse(&b, vlen).unwrap(), r);
        }

        #[test]
        fn parse_never_panics(b in prop::collection::vec(any::<u8>(), 0..200), vlen in 1usize..130) {
            if let Ok(q) = parse(&b, vlen) {
                prop_assert!(q.len() <= b.len());
            }
        }
    }
}
