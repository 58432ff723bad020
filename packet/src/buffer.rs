//! Packet buffers: a contiguous frame with headroom and tailroom that stages edit in place.
//!
//! The engine's DPDK mbufs and the test-only [`HeapBuffer`] both implement [`Buffer`], so every
//! stage runs unchanged on either.

use thiserror::Error;

/// Why a buffer edit was refused. Nothing is changed when an edit fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BufferError {
    #[error("not enough headroom")]
    NoHeadroom,
    #[error("not enough tailroom")]
    NoTailroom,
    #[error("range outside the packet")]
    OutOfRange,
}

/// What the port found of a received frame's IPv4 header checksum (RX checksum offload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxChecksum {
    /// Not checked by the port: software verifies it.
    Unknown,
    /// The port verified it.
    Good,
    /// The port found it wrong.
    Bad,
}

/// A single-segment packet buffer.
pub trait Buffer {
    /// The packet bytes.
    fn data(&self) -> &[u8];
    /// The packet bytes, writable.
    fn data_mut(&mut self) -> &mut [u8];
    /// Free bytes before the packet.
    fn headroom(&self) -> usize;
    /// Free bytes after the packet.
    fn tailroom(&self) -> usize;
    /// Grow the packet by `n` bytes at the front (contents of the new bytes unspecified).
    fn prepend(&mut self, n: usize) -> Result<(), BufferError>;
    /// Remove `n` bytes from the front.
    fn adj(&mut self, n: usize) -> Result<(), BufferError>;
    /// Grow the packet by `n` bytes at the end (contents unspecified).
    fn append(&mut self, n: usize) -> Result<(), BufferError>;
    /// Remove `n` bytes from the end.
    fn trim(&mut self, n: usize) -> Result<(), BufferError>;
    /// The port the packet arrived on (or will leave by, once a stage has chosen).
    fn port(&self) -> u16;
    /// Set the port.
    fn set_port(&mut self, port: u16);

    /// Ask the CPU to start loading the cache line holding `p` (table slots a later pass of a
    /// burst will read, so that the burst's misses overlap). Only a hint: it never faults and
    /// never reads memory architecturally, so any address is fine. Backends on hardware with
    /// a prefetch instruction implement it; the default does nothing.
    #[inline]
    fn prefetch(_p: *const u8)
    where
        Self: Sized,
    {
    }

    /// The IPv4 header checksum as the receiving port found it; buffers of ports without
    /// RX checksum offload (and every buffer not received from a port) say `Unknown`.
    #[inline]
    fn rx_ip_checksum(&self) -> RxChecksum {
        RxChecksum::Unknown
    }

    /// Packet length.
    #[inline]
    fn len(&self) -> usize {
        self.data().len()
    }

    /// True when the packet has no bytes.
    #[inline]
    fn is_empty(&self) -> bool {
        self.data().is_empty()
    }

    /// Replace `old_len` bytes at `offset` by a gap of `new_len` bytes, moving whichever side of
    /// the packet is shorter (the front via headroom, the back via tailroom). The gap's contents
    /// are unspecified; the caller writes them. Bytes outside the range keep their values.
    fn splice(&mut self, offset: usize, old_len: usize, new_len: usize) -> Result<(), BufferError> {
        let len = self.len();
        let end = offset.checked_add(old_len).ok_or(BufferError::OutOfRange)?;
        if end > len {
            return Err(BufferError::OutOfRange);
        }
        if new_len == old_len {
            return Ok(());
        }
        let tail = len - end;
        if new_len > old_len {
            let grow = new_len - old_len;
            if offset <= tail && self.headroom() >= grow {
                self.prepend(grow)?;
                self.data_mut().copy_within(grow..grow + offset, 0);
            } else if self.tailroom() >= grow {
                self.append(grow)?;
                self.data_mut().copy_within(end..end + tail, end + grow);
            } else if self.headroom() >= grow {
                self.prepend(grow)?;
                self.data_mut().copy_within(grow..grow + offset, 0);
            } else {
                return Err(BufferError::NoTailroom);
            }
        } else {
            let shrink = old_len - new_len;
            if offset <= tail {
                self.data_mut().copy_within(0..offset, shrink);
                self.adj(shrink)?;
            } else {
                self.data_mut().copy_within(end..end + tail, end - shrink);
                self.trim(shrink)?;
            }
        }
        Ok(())
    }
}

/// Default headroom of a [`HeapBuffer`], as DPDK's `RTE_PKTMBUF_HEADROOM`.
pub const DEFAULT_HEADROOM: usize = 128;
/// Default capacity of a [`HeapBuffer`] (headroom + a jumbo-ish frame).
pub const DEFAULT_CAPACITY: usize = 2048 + DEFAULT_HEADROOM;

/// A heap-backed buffer for tests, pcap files and the in-memory ports (not the DPDK fast path).
#[derive(Clone, PartialEq, Eq)]
pub struct HeapBuffer {
    storage: Box<[u8]>,
    start: usize,
    end: usize,
    port: u16,
}

impl std::fmt::Debug for HeapBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapBuffer")
            .field("len", &self.len())
            .field("port", &self.port)
            .finish()
    }
}

impl HeapBuffer {
    /// An empty buffer with the default headroom and capacity.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY, DEFAULT_HEADROOM)
    }

    /// An empty buffer of `capacity` bytes with `headroom` reserved at the front.
    pub fn with_capacity(capacity: usize, headroom: usize) -> Self {
        let headroom = headroom.min(capacity);
        HeapBuffer {
            storage: vec![0u8; capacity].into_boxed_slice(),
            start: headroom,
            end: headroom,
            port: 0,
        }
    }

    /// A buffer that takes `bytes` as its storage, without a copy: no headroom, no tailroom
    /// (edits in place; a splice that needs room fails).
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let end = bytes.len();
        HeapBuffer {
            storage: bytes.into_boxed_slice(),
            start: 0,
            end,
            port: 0,
        }
    }

    /// The data as a `Vec` (without a copy when it starts at the storage's start).
    pub fn into_vec(self) -> Vec<u8> {
        if self.start == 0 {
            let mut v = self.storage.into_vec();
            v.truncate(self.end);
            v
        } else {
            self.storage[self.start..self.end].to_vec()
        }
    }

    /// A buffer holding a copy of `bytes` (grown to fit when larger than the default capacity).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let cap = DEFAULT_CAPACITY.max(bytes.len() + DEFAULT_HEADROOM + 64);
        let mut b = Self::with_capacity(cap, DEFAULT_HEADROOM);
        b.end = b.start + bytes.len();
        b.storage[b.start..b.end].copy_from_slice(bytes);
        b
    }
}

impl Default for HeapBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl Buffer for HeapBuffer {
    fn data(&self) -> &[u8] {
        &self.storage[self.start..self.end]
    }
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.end]
    }
    fn headroom(&self) -> usize {
        self.start
    }
    fn tailroom(&self) -> usize {
        self.storage.len() - self.end
    }
    fn prepend(&mut self, n: usize) -> Result<(), BufferError> {
        if n > self.start {
            return Err(BufferError::NoHeadroom);
        }
        self.start -= n;
        Ok(())
    }
    fn adj(&mut self, n: usize) -> Result<(), BufferError> {
        if n > self.len() {
            return Err(BufferError::OutOfRange);
        }
        self.start += n;
        Ok(())
    }
    fn append(&mut self, n: usize) -> Result<(), BufferError> {
        if n > self.tailroom() {
            return Err(BufferError::NoTailroom);
        }
        self.end += n;
        Ok(())
    }
    fn trim(&mut self, n: usize) -> Result<(), BufferError> {
        if n > self.len() {
            return Err(BufferError::OutOfRange);
        }
        self.end -= n;
        Ok(())
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn set_port(&mut self, port: u16) {
        self.port = port;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn splice_keeps_surrounding_bytes(data in proptest::collection::vec(any::<u8>(), 1..600),
                                          off in any::<prop::sample::Index>(),
                                          old in 0usize..80, new in 0usize..80, head in 0usize..200) {
            let mut b = HeapBuffer::with_capacity(head + data.len() + 100, head);
            b.append(data.len()).unwrap();
            b.data_mut().copy_from_slice(&data);
            let off = off.index(data.len());
            let old = old.min(data.len() - off);
            match b.splice(off, old, new) {
                Ok(()) => {
                    let out = b.data();
                    prop_assert_eq!(out.len(), data.len() - old + new);
                    prop_assert_eq!(&out[..off], &data[..off]);
                    prop_assert_eq!(&out[off + new..], &data[off + old..]);
                }
                Err(_) => {
                    // Refused edits change nothing.
                    prop_assert_eq!(b.data(), &data[..]);
                    prop_assert!(new > old);
                }
            }
        }
    }

    #[test]
    fn splice_out_of_range() {
        let mut b = HeapBuffer::from_bytes(&[1, 2, 3]);
        assert_eq!(b.splice(2, 5, 1), Err(BufferError::OutOfRange));
        assert_eq!(b.data(), &[1, 2, 3]);
    }
}
