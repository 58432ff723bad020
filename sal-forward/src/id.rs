//! serviceIDs: 256 bits, matched most significant bit first.

use std::fmt;
use std::str::FromStr;

/// A 256-bit serviceID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ServiceId(pub [u8; 32]);

impl ServiceId {
    pub const LEN: usize = 32;

    /// The original tools' decimal form: N as the first 32-bit word, big-endian, rest zero
    /// (16385 → `00004001 00…00`).
    pub fn from_u32(n: u32) -> Self {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_be_bytes());
        ServiceId(b)
    }

    /// From the wire (exactly 32 bytes).
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(ServiceId(b.try_into().ok()?))
    }

    /// Bit `i` (0 = most significant bit of byte 0).
    #[inline]
    pub fn bit(&self, i: usize) -> bool {
        self.0[i / 8] & (0x80 >> (i % 8)) != 0
    }

    /// The first `len` bits, the rest cleared.
    #[inline]
    pub fn masked(&self, len: u16) -> Self {
        let len = usize::from(len.min(256));
        let mut b = self.0;
        let full = len / 8;
        if full < 32 {
            b[full] &= !(0xffu8.checked_shr((len % 8) as u32).unwrap_or(0));
            b[full + 1..].fill(0);
        }
        ServiceId(b)
    }

    /// The decimal form when the id is one (only the first word set), else `None`.
    pub fn as_u32(&self) -> Option<u32> {
        self.0[4..]
            .iter()
            .all(|&b| b == 0)
            .then(|| u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]))
    }
}

impl fmt::Display for ServiceId {
    /// Decimal when the original tools would write it so, else 64 hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_u32() {
            Some(n) => write!(f, "{n}"),
            None => self.0.iter().try_for_each(|b| write!(f, "{b:02x}")),
        }
    }
}

impl fmt::Debug for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceId({self})")
    }
}

/// Why a serviceID or prefix did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(
        "a serviceID is a decimal number (the original tools' form) or 1 to 64 hex digits after 0x"
    )]
    Id,
    #[error("a prefix length is 0 to 256")]
    Len,
}

impl FromStr for ServiceId {
    type Err = ParseError;
    /// `16385` (decimal, the original tools' form) or `0x…`: up to 64 hex digits, most
    /// significant first (`0x4001` is the bytes 0x40 0x01 followed by zeros).
    fn from_str(s: &str) -> Result<Self, ParseError> {
        if let Some(hex) = s.strip_prefix("0x") {
            if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(ParseError::Id);
            }
            let mut b = [0u8; 32];
            for (i, c) in hex.bytes().enumerate() {
                let v = (c as char).to_digit(16).ok_or(ParseError::Id)? as u8;
                b[i / 2] |= if i % 2 == 0 { v << 4 } else { v };
            }
            return Ok(ServiceId(b));
        }
        s.parse::<u32>()
            .map(ServiceId::from_u32)
            .map_err(|_| ParseError::Id)
    }
}

/// A serviceID prefix: the first `len` bits of `id` (the rest is kept cleared).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Prefix {
    pub id: ServiceId,
    pub len: u16,
}

impl Prefix {
    /// The default rule's prefix (serviceID 0, length 0).
    pub const DEFAULT: Prefix = Prefix {
        id: ServiceId([0; 32]),
        len: 0,
    };

    pub fn new(id: ServiceId, len: u16) -> Self {
        let len = len.min(256);
        Prefix {
            id: id.masked(len),
            len,
        }
    }

    /// Whether `id` falls under this prefix.
    pub fn contains(&self, id: &ServiceId) -> bool {
        id.masked(self.len) == self.id
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.id, self.len)
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix({self})")
    }
}

impl FromStr for Prefix {
    type Err = ParseError;
    /// `ID/LEN`, or `ID` alone: a decimal id means its 32-bit word (`/32`), a hex id the bits
    /// written (4 per digit), as the original tools do.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (id, len) = match s.split_once('/') {
            Some((id, len)) => (id, Some(len.parse::<u16>().map_err(|_| ParseError::Len)?)),
            None => (s, None),
        };
        let parsed: ServiceId = id.parse()?;
        let len = match len {
            Some(l) if l <= 256 => l,
            Some(_) => return Err(ParseError::Len),
            None => match id.strip_prefix("0x") {
                Some(hex) => (hex.len() * 4) as u16,
                None => 32,
            },
        };
        Ok(Prefix::new(parsed, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_ids_are_the_first_word() {
        let id = ServiceId::from_u32(16385);
        assert_eq!(&id.0[..4], &[0, 0, 0x40, 0x01]);
        assert_eq!(id.to_string(), "16385");
        assert_eq!("16385".parse::<ServiceId>().unwrap(), id);
        let p: Prefix = "16385".parse().unwrap();
        assert_eq!((p.id, p.len), (id, 32));
        let p: Prefix = "0x00004/20".parse().unwrap();
        assert_eq!(p.len, 20);
        assert!(p.contains(&id));
        assert!(!p.contains(&ServiceId::from_u32(0x8000)));
        assert!(Prefix::DEFAULT.contains(&id));
        assert!("x".parse::<Prefix>().is_err() && "1/257".parse::<Prefix>().is_err());
    }

    #[test]
    fn masking() {
        let id = ServiceId([0xff; 32]);
        assert_eq!(id.masked(0), ServiceId::default());
        assert_eq!(id.masked(256), id);
        let m = id.masked(13);
        assert_eq!(&m.0[..3], &[0xff, 0xf8, 0]);
        assert!(id.bit(255) && !m.bit(13) && m.bit(12));
    }
}
