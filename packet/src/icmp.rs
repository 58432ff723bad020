//! ICMPv4 (RFC 792): echo, destination unreachable, time exceeded.

use crate::checksum;
use crate::{be16, put16, Error, Result};

/// Message types.
pub mod kind {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
}

/// Destination-unreachable codes.
pub mod unreach {
    pub const NET: u8 = 0;
    pub const HOST: u8 = 1;
    pub const PROTOCOL: u8 = 2;
    pub const PORT: u8 = 3;
    pub const FRAG_NEEDED: u8 = 4;
}

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const IDENT: usize = 4;
    pub const SEQ: usize = 6;
    pub const MTU: usize = 6;
}

/// ICMP header length (type, code, checksum, 4 bytes of rest-of-header).
pub const HEADER_LEN: usize = 8;

/// A view of an ICMP message.
#[derive(Debug, Clone)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        IcmpPacket { buffer }
    }
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(IcmpPacket { buffer })
    }
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT)
    }
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SEQ)
    }
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref())) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    #[inline]
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v
    }
    #[inline]
    pub fn set_msg_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v
    }
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM, v)
    }
    #[inline]
    pub fn set_echo_ident(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::IDENT, v)
    }
    #[inline]
    pub fn set_echo_seq_no(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::SEQ, v)
    }
    #[inline]
    /// Rest-of-header word (unused = 0, or next-hop MTU for frag-needed).
    pub fn set_rest(&mut self, v: u32) {
        self.buffer.as_mut()[4..8].copy_from_slice(&v.to_be_bytes())
    }
    #[inline]
    pub fn set_next_hop_mtu(&mut self, mtu: u16) {
        put16(self.buffer.as_mut(), field::MTU, mtu)
    }
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(c);
    }
    #[inline]
    /// Turn an echo request into an echo reply in place, patching the checksum (RFC 1624).
    pub fn echo_request_to_reply(&mut self) {
        let c = checksum::update16(
            self.checksum(),
            u16::from(kind::ECHO_REQUEST) << 8 | u16::from(self.msg_code()),
            u16::from(kind::ECHO_REPLY) << 8 | u16::from(self.msg_code()),
        );
        self.set_msg_type(kind::ECHO_REPLY);
        self.set_checksum(c);
    }
}

/// Parsed ICMP message (the kinds the router sends or answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpRepr<'a> {
    EchoRequest {
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    EchoReply {
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    /// `data` is the offending IP header plus at least 8 bytes of its payload.
    DstUnreachable {
        code: u8,
        mtu: u16,
        data: &'a [u8],
    },
    TimeExceeded {
        code: u8,
        data: &'a [u8],
    },
}

impl<'a> IcmpRepr<'a> {
    #[inline]
    pub fn parse<T: AsRef<[u8]> + ?Sized>(p: &'a IcmpPacket<&'a T>) -> Result<Self> {
        if !p.verify_checksum() {
            return Err(Error::Checksum);
        }
        let b = p.buffer.as_ref();
        let data = &b[HEADER_LEN..];
        Ok(match (p.msg_type(), p.msg_code()) {
            (kind::ECHO_REQUEST, 0) => IcmpRepr::EchoRequest {
                ident: p.echo_ident(),
                seq_no: p.echo_seq_no(),
                data,
            },
            (kind::ECHO_REPLY, 0) => IcmpRepr::EchoReply {
                ident: p.echo_ident(),
                seq_no: p.echo_seq_no(),
                data,
            },
            (kind::DEST_UNREACHABLE, code) => IcmpRepr::DstUnreachable {
                code,
                mtu: be16(b, field::MTU),
                data,
            },
            (kind::TIME_EXCEEDED, code) => IcmpRepr::TimeExceeded { code, data },
            _ => return Err(Error::Unsupported),
        })
    }
    #[inline]
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match self {
                IcmpRepr::EchoRequest { data, .. }
                | IcmpRepr::EchoReply { data, .. }
                | IcmpRepr::DstUnreachable { data, .. }
                | IcmpRepr::TimeExceeded { data, .. } => data.len(),
            }
    }
    #[inline]
    /// Emit into a buffer of at least `buffer_len()` bytes, with the checksum.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut IcmpPacket<T>) {
        p.set_rest(0);
        let data = match *self {
            IcmpRepr::EchoRequest {
                ident,
                seq_no,
                data,
            } => {
                p.set_msg_type(kind::ECHO_REQUEST);
                p.set_msg_code(0);
                p.set_echo_ident(ident);
                p.set_echo_seq_no(seq_no);
                data
            }
            IcmpRepr::EchoReply {
                ident,
                seq_no,
                data,
            } => {
                p.set_msg_type(kind::ECHO_REPLY);
                p.set_msg_code(0);
                p.set_echo_ident(ident);
                p.set_echo_seq_no(seq_no);
                data
            }
            IcmpRepr::DstUnreachable { code, mtu, data } => {
                p.set_msg_type(kind::DEST_UNREACHABLE);
                p.set_msg_code(code);
                p.set_next_hop_mtu(mtu);
                data
            }
            IcmpRepr::TimeExceeded { code, data } => {
                p.set_msg_type(kind::TIME_EXCEEDED);
                p.set_msg_code(code);
                data
            }
        };
        p.data_mut()[..data.len()].copy_from_slice(data);
        p.fill_checksum();
    }
}
