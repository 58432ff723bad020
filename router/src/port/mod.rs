//! Ports: the engine is generic over a [`Backend`] that owns the devices and moves bursts of
//! buffers. `dpdk` drives DPDK ethdev (any PMD: real NICs, `net_af_packet`, `net_pcap`,
//! `net_null`, `net_ring`, `net_tap`); `soft` runs pcap files and in-memory wires for tests on
//! machines without DPDK.

#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod soft;

use packet::ethernet::EthernetAddress;
use packet::Buffer;
use serde::Serialize;

/// A port as the engine sees it once started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortDesc {
    pub name: String,
    pub device: String,
    pub mac: EthernetAddress,
    pub rx_queues: u16,
    pub tx_queues: u16,
    pub driver: String,
}

/// Counters kept by the driver itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DriverStats {
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    /// Dropped by the device for lack of RX descriptors or buffers.
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    pub rx_nombuf: u64,
    /// Multi-segment frames dropped at RX (the engine takes single-segment frames only).
    pub rx_chained_dropped: u64,
}

/// The device layer. Queue ownership is the engine's discipline: exactly one thread polls an
/// RX queue and one thread transmits on a TX queue.
pub trait Backend: Send + Sync + 'static {
    /// The packet buffer type.
    type Buf: Buffer + Send + 'static;

    /// Ports, indexed by port id.
    fn ports(&self) -> &[PortDesc];
    /// Receive up to `out.capacity() - out.len()` packets, appending; returns the count.
    fn rx_burst(&self, port: u16, queue: u16, out: &mut Vec<Self::Buf>) -> usize;
    /// Transmit from the front of `pkts`; sent packets are removed, the rest stay (the caller
    /// counts and frees them). Returns the number sent.
    fn tx_burst(&self, port: u16, queue: u16, pkts: &mut Vec<Self::Buf>) -> usize;
    /// A fresh empty buffer (management core; not on the fast path).
    fn alloc(&self) -> Option<Self::Buf>;
    /// Called first thing on every engine thread (DPDK: registers the thread with EAL).
    fn register_thread(&self) -> Result<(), String>;
    /// The driver's counters for a port.
    fn driver_stats(&self, port: u16) -> Option<DriverStats>;
    /// Buffers still free in the pool, when known.
    fn pool_free(&self) -> Option<u64>;
    /// Stop and release every port (after the engine threads are joined).
    fn shutdown(&self);
}
