//! The soft backend: pcap-file ports and in-memory wires on heap buffers, for tests and for
//! machines without DPDK. Each queue has its own uncontended mutex (one poller per queue);
//! this backend is for correctness, not speed — the DPDK backend is the fast path.

use super::{Backend, DriverStats, PortDesc};
use packet::ethernet::EthernetAddress;
use packet::{pcap, Buffer, HeapBuffer};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Most RX queues a soft port spreads its frames over.
pub const MAX_QUEUES: usize = 16;

/// The far end of an in-memory port: tests push frames in and read what the router sent.
/// With several RX queues ([`SoftBackend::with_rx_queues`]) a frame goes to the queue its
/// flow hashes to, as a NIC's RSS does: IPv4 addresses and TCP/UDP ports (not of fragments),
/// symmetric (both directions of a flow on one queue); anything else to queue 0.
#[derive(Debug, Default)]
pub struct Wire {
    rx: [Mutex<VecDeque<Vec<u8>>>; MAX_QUEUES],
    queues: AtomicUsize,
    tx: Mutex<Vec<Vec<u8>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The soft ports' RSS: a symmetric hash of a frame's IPv4 addresses and transport ports.
fn flow_hash(f: &[u8]) -> u32 {
    if f.get(12..14) != Some(&[0x08, 0x00][..]) || f.len() < 34 {
        return 0;
    }
    let word = |at: usize| u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
    let mut h = word(26) ^ word(30);
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let fragment = u16::from_be_bytes([f[20], f[21]]) & 0x3fff != 0;
    if !fragment && matches!(f[23], 6 | 17) && f.len() >= 14 + ihl + 4 {
        h ^= word(14 + ihl).rotate_left(16) ^ word(14 + ihl);
    }
    h.wrapping_mul(0x9e37_79b1)
}

impl Wire {
    /// Queue a frame for the router to receive.
    pub fn inject(&self, frame: &[u8]) {
        let n = self.queues.load(Ordering::Relaxed).clamp(1, MAX_QUEUES);
        let q = (flow_hash(frame) >> 16) as usize % n;
        lock(&self.rx[q]).push_back(frame.to_vec());
    }
    /// Take every frame the router transmitted so far.
    pub fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *lock(&self.tx))
    }
    /// Frames still waiting to be received.
    pub fn pending(&self) -> usize {
        self.rx.iter().map(|q| lock(q).len()).sum()
    }
}

/// How to build one soft port.
#[derive(Debug, Clone)]
pub enum SoftPortSpec {
    /// Read frames from `rx` (if any) at start; write transmitted frames to `tx` at shutdown.
    Pcap {
        rx: Option<PathBuf>,
        tx: Option<PathBuf>,
    },
    /// An in-memory wire.
    Memory(Arc<Wire>),
}

#[derive(Debug)]
struct SoftPort {
    wire: Arc<Wire>,
    tx_file: Option<PathBuf>,
    stats: [AtomicU64; 4],
}

/// The soft backend.
#[derive(Debug)]
pub struct SoftBackend {
    descs: Vec<PortDesc>,
    ports: Vec<SoftPort>,
}

impl SoftBackend {
    /// Build ports from specs (names and MACs given by the caller), one RX queue each.
    pub fn new(specs: Vec<(String, EthernetAddress, SoftPortSpec)>) -> std::io::Result<Self> {
        Self::with_rx_queues(specs, 1)
    }

    /// Ports with `queues` RX queues each (at most [`MAX_QUEUES`]), frames spread over them
    /// by flow ([`Wire`]): one per run-to-completion worker.
    pub fn with_rx_queues(
        specs: Vec<(String, EthernetAddress, SoftPortSpec)>,
        queues: usize,
    ) -> std::io::Result<Self> {
        let queues = queues.clamp(1, MAX_QUEUES);
        let mut descs = Vec::new();
        let mut ports = Vec::new();
        for (name, mac, spec) in specs {
            let (wire, tx_file, device) = match spec {
                SoftPortSpec::Memory(w) => {
                    w.queues.store(queues, Ordering::Relaxed);
                    (w, None, "memory".to_string())
                }
                SoftPortSpec::Pcap { rx, tx } => {
                    let w = Arc::new(Wire::default());
                    w.queues.store(queues, Ordering::Relaxed);
                    if let Some(rx) = &rx {
                        for r in pcap::read_file(rx)? {
                            w.inject(&r.data);
                        }
                    }
                    let dev = format!(
                        "pcap:rx={},tx={}",
                        rx.as_ref().map_or("-".into(), |p| p.display().to_string()),
                        tx.as_ref().map_or("-".into(), |p| p.display().to_string())
                    );
                    (w, tx, dev)
                }
            };
            descs.push(PortDesc {
                name,
                device,
                mac,
                rx_queues: queues as u16,
                tx_queues: u16::MAX,
                driver: "soft".into(),
            });
            ports.push(SoftPort {
                wire,
                tx_file,
                stats: Default::default(),
            });
        }
        Ok(SoftBackend { descs, ports })
    }
}

impl Backend for SoftBackend {
    type Buf = HeapBuffer;

    fn ports(&self) -> &[PortDesc] {
        &self.descs
    }

    fn rx_burst(&self, port: u16, queue: u16, out: &mut Vec<HeapBuffer>) -> usize {
        let Some(p) = self.ports.get(usize::from(port)) else {
            return 0;
        };
        let Some(rx) = p.wire.rx.get(usize::from(queue)) else {
            return 0;
        };
        let room = out.capacity() - out.len();
        let mut rx = lock(rx);
        let n = room.min(rx.len());
        for frame in rx.drain(..n) {
            let mut b = HeapBuffer::from_bytes(&frame);
            b.set_port(port);
            p.stats[0].fetch_add(1, Ordering::Relaxed);
            p.stats[1].fetch_add(frame.len() as u64, Ordering::Relaxed);
            out.push(b);
        }
        n
    }

    fn tx_burst(&self, port: u16, _queue: u16, pkts: &mut Vec<HeapBuffer>) -> usize {
        let Some(p) = self.ports.get(usize::from(port)) else {
            return 0;
        };
        let n = pkts.len();
        let mut tx = lock(&p.wire.tx);
        for b in pkts.drain(..) {
            p.stats[2].fetch_add(1, Ordering::Relaxed);
            p.stats[3].fetch_add(b.len() as u64, Ordering::Relaxed);
            tx.push(b.data().to_vec());
        }
        n
    }

    fn alloc(&self) -> Option<HeapBuffer> {
        Some(HeapBuffer::new())
    }

    fn register_thread(&self) -> Result<(), String> {
        Ok(())
    }

    fn driver_stats(&self, port: u16) -> Option<DriverStats> {
        let p = self.ports.get(usize::from(port))?;
        Some(DriverStats {
            ipackets: p.stats[0].load(Ordering::Relaxed),
            ibytes: p.stats[1].load(Ordering::Relaxed),
            opackets: p.stats[2].load(Ordering::Relaxed),
            obytes: p.stats[3].load(Ordering::Relaxed),
            ..Default::default()
        })
    }

    fn pool_free(&self) -> Option<u64> {
        None
    }

    fn shutdown(&self) {
        for p in &self.ports {
            let Some(path) = &p.tx_file else { continue };
            let frames = lock(&p.wire.tx).clone();
            let res = std::fs::File::create(path).and_then(|f| {
                let mut w = pcap::Writer::new(std::io::BufWriter::new(f), pcap::LINKTYPE_ETHERNET)?;
                for (i, fr) in frames.iter().enumerate() {
                    w.write(i as u64 * 1000, fr)?;
                }
                w.finish().map(|_| ())
            });
            if let Err(e) = res {
                tracing::error!("writing {}: {e}", path.display());
            }
        }
    }
}
