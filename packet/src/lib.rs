//! Packet buffers, zero-copy header views and checksums, and the `Stage` trait.
//!
//! Header views follow smoltcp: `XPacket<T: AsRef<[u8]>>` wraps a byte buffer; `new_checked`
//! verifies the lengths once, after which no accessor can panic; `XRepr` is the parsed
//! high-level form with `parse`, `emit` and `buffer_len`. No DPDK, no threads.
#![forbid(unsafe_code)]

pub mod arp;
pub mod buffer;
pub mod checksum;
pub mod claim;
pub mod ethernet;
pub mod exercise;
pub mod icmp;
pub mod ipv4;
pub mod pcap;
pub mod seqlock;
pub mod stage;
pub mod tcp;
pub mod udp;

pub use buffer::{Buffer, BufferError, HeapBuffer, RxChecksum};
pub use stage::{DropReason, PuntReason, Stage, Verdict};

use thiserror::Error;

/// A header could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Error {
    /// Fewer bytes than the header (or its declared length) needs.
    #[error("truncated")]
    Truncated,
    /// A field has a value the format forbids.
    #[error("malformed")]
    Malformed,
    /// The checksum does not verify.
    #[error("bad checksum")]
    Checksum,
    /// Valid, but a variant this code does not handle.
    #[error("unsupported")]
    Unsupported,
}

/// Parse result.
pub type Result<T> = core::result::Result<T, Error>;

pub use std::net::Ipv4Addr;

/// Read a big-endian u16 at `at` (caller has checked bounds).
#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Read a big-endian u32 at `at` (caller has checked bounds).
#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}
