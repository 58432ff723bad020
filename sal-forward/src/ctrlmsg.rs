//! The original Serval control messages (`ctrlmsg`), as a host's daemon sends them to its
//! service router's daemon inside Serval UDP datagrams (from serviceID 55555 to 88888 by
//! default). Header: `{type u8, retval u8, len u16, xid u32}`; a quirk of the original's remote
//! channel: `len` is in network order, `xid` in the sender's (x86: little-endian) order.

use crate::id::ServiceId;
use packet::Error;
use std::net::Ipv4Addr;

pub const HEADER_LEN: usize = 8;
pub const REGISTER_LEN: usize = 48;

/// The serviceID a host daemon sends from, and the one the router's daemon listens on.
pub const HOST_SERVICE: u32 = 55555;
pub const ROUTER_SERVICE: u32 = 88888;

/// Message types 0–13 of the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Register = 0,
    Unregister = 1,
    Resolve = 2,
    AddService = 3,
    DelService = 4,
    ModService = 5,
    GetService = 6,
    ServiceStat = 7,
    Capabilities = 8,
    Migrate = 9,
    StatsQuery = 10,
    StatsResp = 11,
    DelayNotify = 12,
    DelayVerdict = 13,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Self> {
        use Kind::*;
        const ALL: [Kind; 14] = [
            Register,
            Unregister,
            Resolve,
            AddService,
            DelService,
            ModService,
            GetService,
            ServiceStat,
            Capabilities,
            Migrate,
            StatsQuery,
            StatsResp,
            DelayNotify,
            DelayVerdict,
        ];
        ALL.get(usize::from(v)).copied()
    }
}

/// REGISTER flag: a re-registration (the host moved: `old_addr` is where it was).
pub const REREGISTER: u8 = 1;
/// REGISTER / UNREGISTER flag (ours; the original defines only REREGISTER): the sender is a
/// child controller recording (or removing) a pointer to itself for the prefix — the
/// hierarchy's upward propagation.
pub const DELEGATE: u8 = 2;

/// The common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub retval: u8,
    pub len: u16,
    pub xid: u32,
}

impl Header {
    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        let h = b.get(..HEADER_LEN).ok_or(Error::Truncated)?;
        let hd = Header {
            kind: h[0],
            retval: h[1],
            len: u16::from_be_bytes([h[2], h[3]]),
            xid: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        };
        if usize::from(hd.len) < HEADER_LEN || usize::from(hd.len) > b.len() {
            return Err(Error::Malformed);
        }
        Ok(hd)
    }

    pub fn emit(&self, out: &mut [u8]) {
        out[0] = self.kind;
        out[1] = self.retval;
        out[2..4].copy_from_slice(&self.len.to_be_bytes());
        out[4..8].copy_from_slice(&self.xid.to_le_bytes());
    }
}

/// REGISTER and UNREGISTER (the same 48-byte layout): header, flags, pad, prefix bits,
/// service flags, old IPv4 address, serviceID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Register {
    pub unregister: bool,
    pub xid: u32,
    pub flags: u8,
    pub prefix_bits: u8,
    pub service_flags: u8,
    pub old_addr: Ipv4Addr,
    pub id: ServiceId,
}

impl Register {
    /// The prefix length it registers: the original sends 0 for "the whole id" (256 bits).
    pub fn prefix_len(&self) -> u16 {
        match self.prefix_bits {
            0 => 256,
            n => u16::from(n),
        }
    }

    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        let h = Header::parse(b)?;
        let unregister = match Kind::from_u8(h.kind) {
            Some(Kind::Register) => false,
            Some(Kind::Unregister) => true,
            _ => return Err(Error::Unsupported),
        };
        if usize::from(h.len) < REGISTER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Register {
            unregister,
            xid: h.xid,
            flags: b[8],
            prefix_bits: b[10],
            service_flags: b[11],
            old_addr: Ipv4Addr::new(b[12], b[13], b[14], b[15]),
            id: ServiceId::from_slice(&b[16..48]).ok_or(Error::Truncated)?,
        })
    }

    pub fn emit(&self) -> [u8; REGISTER_LEN] {
        let mut out = [0u8; REGISTER_LEN];
        Header {
            kind: if self.unregister {
                Kind::Unregister
            } else {
                Kind::Register
            } as u8,
            retval: 0,
            len: REGISTER_LEN as u16,
            xid: self.xid,
        }
        .emit(&mut out);
        out[8] = self.flags;
        out[10] = self.prefix_bits;
        out[11] = self.service_flags;
        out[12..16].copy_from_slice(&self.old_addr.octets());
        out[16..48].copy_from_slice(&self.id.0);
        out
    }
}

/// RESOLVE (type 2; the original names the type, its layout is ours): a controller asks
/// another where a serviceID is served, and the answer comes back in the same layout.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | header (`retval` in an answer: [`Answer`]) |
/// | 8 | 1 | flags: [`RESOLVE_RECURSIVE`], [`RESOLVE_RESPONSE`] |
/// | 9 | 1 | hops the request has taken |
/// | 10 | 2 | prefix length the answer covers (0–256), big-endian |
/// | 12 | 4 | lifetime of the answer in milliseconds, big-endian |
/// | 16 | 32 | serviceID asked for |
/// | 48 | 8 × n | n ≤ 8 targets: IPv4 address, weight (big-endian u32); a referral's one target is the controller to ask next |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolve {
    pub xid: u32,
    pub recursive: bool,
    /// `None` in a request.
    pub answer: Option<Answer>,
    pub hops: u8,
    pub prefix_len: u16,
    pub lifetime_ms: u32,
    pub id: ServiceId,
    pub targets: Vec<(Ipv4Addr, u32)>,
}

pub const RESOLVE_LEN: usize = 48;
pub const RESOLVE_RECURSIVE: u8 = 1;
pub const RESOLVE_RESPONSE: u8 = 0x80;
/// Targets an answer carries at most (a rule's).
pub const RESOLVE_MAX_TARGETS: usize = 8;

/// What a RESOLVE response says (its `retval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Answer {
    /// The targets serve the prefix.
    Found = 0,
    /// Ask the one target (a controller) instead (iterative mode).
    Referral = 1,
    /// No controller on the way knows the service.
    NotFound = 2,
}

impl Resolve {
    pub fn request(xid: u32, id: ServiceId, recursive: bool, hops: u8) -> Self {
        Resolve {
            xid,
            recursive,
            answer: None,
            hops,
            prefix_len: 0,
            lifetime_ms: 0,
            id,
            targets: Vec::new(),
        }
    }

    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        let h = Header::parse(b)?;
        if h.kind != Kind::Resolve as u8 {
            return Err(Error::Unsupported);
        }
        let len = usize::from(h.len);
        if len < RESOLVE_LEN || !(len - RESOLVE_LEN).is_multiple_of(8) {
            return Err(Error::Malformed);
        }
        let n = (len - RESOLVE_LEN) / 8;
        let response = b[8] & RESOLVE_RESPONSE != 0;
        let answer = match (response, h.retval) {
            (false, _) => None,
            (true, 0) => Some(Answer::Found),
            (true, 1) => Some(Answer::Referral),
            (true, 2) => Some(Answer::NotFound),
            _ => return Err(Error::Malformed),
        };
        let prefix_len = u16::from_be_bytes([b[10], b[11]]);
        if n > RESOLVE_MAX_TARGETS || prefix_len > 256 {
            return Err(Error::Malformed);
        }
        let targets = b[RESOLVE_LEN..len]
            .chunks_exact(8)
            .map(|t| {
                (
                    Ipv4Addr::new(t[0], t[1], t[2], t[3]),
                    u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
                )
            })
            .collect::<Vec<_>>();
        if matches!(answer, Some(Answer::Found | Answer::Referral)) && targets.is_empty() {
            return Err(Error::Malformed);
        }
        Ok(Resolve {
            xid: h.xid,
            recursive: b[8] & RESOLVE_RECURSIVE != 0,
            answer,
            hops: b[9],
            prefix_len,
            lifetime_ms: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            id: ServiceId::from_slice(&b[16..48]).ok_or(Error::Truncated)?,
            targets,
        })
    }

    pub fn emit(&self) -> Vec<u8> {
        let n = self.targets.len().min(RESOLVE_MAX_TARGETS);
        let len = RESOLVE_LEN + 8 * n;
        let mut out = vec![0u8; len];
        Header {
            kind: Kind::Resolve as u8,
            retval: self.answer.map_or(0, |a| a as u8),
            len: len as u16,
            xid: self.xid,
        }
        .emit(&mut out);
        out[8] = if self.recursive { RESOLVE_RECURSIVE } else { 0 }
            | if self.answer.is_some() {
                RESOLVE_RESPONSE
            } else {
                0
            };
        out[9] = self.hops;
        out[10..12].copy_from_slice(&self.prefix_len.to_be_bytes());
        out[12..16].copy_from_slice(&self.lifetime_ms.to_be_bytes());
        out[16..48].copy_from_slice(&self.id.0);
        for (i, (a, w)) in self.targets.iter().take(n).enumerate() {
            let at = RESOLVE_LEN + 8 * i;
            out[at..at + 4].copy_from_slice(&a.octets());
            out[at + 4..at + 8].copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_layout() {
        let r = Register {
            unregister: false,
            xid: 0x0102_0304,
            flags: REREGISTER,
            prefix_bits: 32,
            service_flags: 0,
            old_addr: Ipv4Addr::new(10, 0, 0, 9),
            id: ServiceId::from_u32(16385),
        };
        let b = r.emit();
        assert_eq!(
            &b[..8],
            &[0, 0, 0, 48, 4, 3, 2, 1],
            "len big-endian, xid as the sender's"
        );
        assert_eq!(&b[16..20], &[0, 0, 0x40, 0x01]);
        assert_eq!(Register::parse(&b).unwrap(), r);
        assert_eq!(r.prefix_len(), 32);
        let mut short = b;
        short[3] = 40;
        assert!(Register::parse(&short).is_err());
        assert!(Register::parse(&b[..20]).is_err());
    }

    #[test]
    fn resolve_round_trip_and_bounds() {
        let q = Resolve::request(9, ServiceId::from_u32(3001), true, 2);
        let b = q.emit();
        assert_eq!(b.len(), RESOLVE_LEN);
        assert_eq!(&b[..4], &[2, 0, 0, 48]);
        assert_eq!((b[8], b[9]), (RESOLVE_RECURSIVE, 2));
        assert_eq!(Resolve::parse(&b).unwrap(), q);
        let a = Resolve {
            answer: Some(Answer::Found),
            prefix_len: 32,
            lifetime_ms: 30_000,
            targets: vec![
                (Ipv4Addr::new(10, 2, 1, 2), 3),
                (Ipv4Addr::new(10, 2, 1, 3), 1),
            ],
            ..q.clone()
        };
        let b = a.emit();
        assert_eq!(
            (b.len(), b[1], b[8]),
            (64, 0, RESOLVE_RECURSIVE | RESOLVE_RESPONSE)
        );
        assert_eq!(&b[48..56], &[10, 2, 1, 2, 0, 0, 0, 3]);
        assert_eq!(Resolve::parse(&b).unwrap(), a);
        // A referral without its controller, an odd length, an unknown answer: refused.
        let mut bad = b.clone();
        bad[1] = 1;
        bad[3] = 48;
        assert!(Resolve::parse(&bad).is_err());
        let mut bad = b.clone();
        bad[3] = 60;
        assert!(Resolve::parse(&bad).is_err());
        let mut bad = b;
        bad[1] = 7;
        assert!(Resolve::parse(&bad).is_err());
        let reg = Register {
            unregister: false,
            xid: 1,
            flags: DELEGATE,
            prefix_bits: 32,
            service_flags: 0,
            old_addr: Ipv4Addr::UNSPECIFIED,
            id: ServiceId::from_u32(3001),
        };
        assert!(
            Resolve::parse(&reg.emit()).is_err(),
            "a REGISTER is not a RESOLVE"
        );
    }
}
