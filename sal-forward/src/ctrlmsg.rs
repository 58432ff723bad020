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
}
