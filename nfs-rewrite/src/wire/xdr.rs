//! XDR (RFC 4506) reading with positions: a cursor over a buffer that knows its offset, so
//! the rewrite stage can edit fields in place. Primitives are nom's big-endian number parsers;
//! every read is bounds-checked and returns an error instead of panicking.

use nom::number::complete::{be_u32, be_u64};
use thiserror::Error;

/// Why a message could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum XdrError {
    #[error("message truncated")]
    Truncated,
    #[error("field out of range")]
    Invalid,
    #[error("unsupported value")]
    Unsupported,
}

/// Result of a decode step.
pub type Result<T> = core::result::Result<T, XdrError>;

/// Largest NFSv3 file handle.
pub const FHSIZE3: usize = 64;

/// A reading position in an XDR buffer.
#[derive(Debug, Clone, Copy)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

#[inline]
fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// A cursor at `pos` of `buf`.
    pub fn at(buf: &'a [u8], pos: usize) -> Self {
        Cursor {
            buf,
            pos: pos.min(buf.len()),
        }
    }

    /// Current offset.
    #[inline]
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The whole buffer.
    pub fn buffer(&self) -> &'a [u8] {
        self.buf
    }

    #[inline]
    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// An unsigned 32-bit integer.
    #[inline]
    pub fn u32(&mut self) -> Result<u32> {
        let (_, v) =
            be_u32::<_, nom::error::Error<&[u8]>>(self.rest()).map_err(|_| XdrError::Truncated)?;
        self.pos += 4;
        Ok(v)
    }

    /// An unsigned 64-bit integer.
    #[inline]
    pub fn u64(&mut self) -> Result<u64> {
        let (_, v) =
            be_u64::<_, nom::error::Error<&[u8]>>(self.rest()).map_err(|_| XdrError::Truncated)?;
        self.pos += 8;
        Ok(v)
    }

    /// A boolean (0 or 1; anything else is invalid).
    #[inline]
    pub fn bool(&mut self) -> Result<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(XdrError::Invalid),
        }
    }

    /// Skip `n` bytes (already a multiple of 4 for fixed XDR items).
    #[inline]
    pub fn skip(&mut self, n: usize) -> Result<()> {
        if n > self.remaining() {
            return Err(XdrError::Truncated);
        }
        self.pos += n;
        Ok(())
    }

    /// Fixed-length opaque of `n` bytes (padded to 4): its bytes.
    pub fn opaque_fixed(&mut self, n: usize) -> Result<&'a [u8]> {
        let start = self.pos;
        self.skip(pad4(n))?;
        Ok(&self.buf[start..start + n])
    }

    /// Variable-length opaque of at most `max` bytes: (offset of the length word, bytes).
    pub fn opaque_var(&mut self, max: usize) -> Result<(usize, &'a [u8])> {
        let at = self.pos;
        let n = self.u32()? as usize;
        if n > max {
            return Err(XdrError::Invalid);
        }
        let data = self.opaque_fixed(n)?;
        Ok((at, data))
    }

    /// A string (as opaque bytes) of at most `max` bytes.
    pub fn string(&mut self, max: usize) -> Result<&'a [u8]> {
        self.opaque_var(max).map(|(_, d)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_positions() {
        let b = [
            0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9,
        ];
        let mut c = Cursor::new(&b);
        assert_eq!(c.opaque_var(10).unwrap(), (0, &b"abc"[..]));
        assert_eq!(c.pos(), 8);
        assert!(c.bool().unwrap());
        assert_eq!(c.u64().unwrap(), 9);
        assert_eq!(c.u32(), Err(XdrError::Truncated));
    }

    #[test]
    fn limits() {
        let b = [0, 0, 0, 65];
        assert_eq!(Cursor::new(&b).opaque_var(64), Err(XdrError::Invalid));
        let b = [0, 0, 0, 8, 1, 2];
        assert_eq!(Cursor::new(&b).opaque_var(64), Err(XdrError::Truncated));
        let b = [0, 0, 0, 2];
        assert_eq!(Cursor::new(&b).bool(), Err(XdrError::Invalid));
        let b = [0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            Cursor::new(&b).opaque_var(usize::MAX),
            Err(XdrError::Truncated)
        );
    }
}
