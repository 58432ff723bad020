//! The DPDK backend: EAL initialisation, one mbuf pool, ethdev ports (any PMD — PCI NICs or
//! `net_af_packet`, `net_pcap`, `net_null`, `net_ring`, `net_tap` vdevs) with one RX and TX
//! queue per worker (run-to-completion) or one each (split), and `Mbuf`, the packet buffer.
//!
//! This module and `dpdk-sys` are the only places with `unsafe`.
#![allow(unsafe_code)]

use super::{Backend, DriverStats, PortDesc};
use crate::config::{Config, Placement};
use dpdk_sys as sys;
use packet::ethernet::EthernetAddress;
use packet::{Buffer, BufferError, RxChecksum};
use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::sync::OnceLock;
use thiserror::Error;

/// DPDK set-up failures.
#[derive(Debug, Error)]
pub enum DpdkError {
    #[error("EAL init failed ({0}); EAL arguments were: {1}")]
    Eal(String, String),
    #[error("mbuf pool: {0} (mempool.mbufs / mempool.mbuf_size, or give EAL more memory with -m)")]
    Pool(String),
    #[error("ports[{index}] ({device}): {msg}")]
    Port {
        index: usize,
        device: String,
        msg: String,
    },
}

fn errno_str(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    unsafe { CStr::from_ptr(sys::rte_strerror(code.abs())) }
        .to_string_lossy()
        .into_owned()
}

fn rte_errno() -> i32 {
    // SAFETY: reads the calling thread's rte_errno through the shim; no preconditions.
    unsafe { sys::shim_rte_errno() }
}

/// A packet in a DPDK mbuf (single segment), owned: dropping it returns it to its pool.
#[repr(transparent)]
#[derive(Debug)]
pub struct Mbuf(NonNull<sys::rte_mbuf>);

// SAFETY: an Mbuf is the only owner of its rte_mbuf; DPDK allows an mbuf to be freed or
// transmitted by any registered lcore, and the engine moves each Mbuf to one thread at a time.
unsafe impl Send for Mbuf {}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf; it came from rx_burst or pktmbuf_alloc and is freed once.
        unsafe { sys::shim_rte_pktmbuf_free(self.0.as_ptr()) }
    }
}

impl Mbuf {
    #[inline]
    fn m(&self) -> &sys::rte_mbuf {
        // SAFETY: the pointer is valid and uniquely owned for the Mbuf's lifetime.
        unsafe { self.0.as_ref() }
    }
    #[inline]
    fn m_mut(&mut self) -> &mut sys::rte_mbuf {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { self.0.as_mut() }
    }
}

impl Buffer for Mbuf {
    #[inline]
    fn data(&self) -> &[u8] {
        let m = self.m();
        // SAFETY: buf_addr + data_off .. + data_len lies inside the mbuf's data room
        // (DPDK's invariant for a single-segment mbuf), and we own the mbuf.
        unsafe {
            std::slice::from_raw_parts(
                (m.buf_addr as *const u8).add(usize::from(m.data_off)),
                usize::from(m.data_len),
            )
        }
    }
    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        let m = self.m_mut();
        // SAFETY: as in `data`, with exclusive access through &mut self.
        unsafe {
            std::slice::from_raw_parts_mut(
                (m.buf_addr as *mut u8).add(usize::from(m.data_off)),
                usize::from(m.data_len),
            )
        }
    }
    #[inline]
    fn headroom(&self) -> usize {
        usize::from(self.m().data_off)
    }
    #[inline]
    fn tailroom(&self) -> usize {
        let m = self.m();
        usize::from(m.buf_len) - usize::from(m.data_off) - usize::from(m.data_len)
    }
    fn prepend(&mut self, n: usize) -> Result<(), BufferError> {
        if n > self.headroom() {
            return Err(BufferError::NoHeadroom);
        }
        let m = self.m_mut();
        m.data_off -= n as u16;
        m.data_len += n as u16;
        m.pkt_len += n as u32;
        Ok(())
    }
    fn adj(&mut self, n: usize) -> Result<(), BufferError> {
        if n > self.len() {
            return Err(BufferError::OutOfRange);
        }
        let m = self.m_mut();
        m.data_off += n as u16;
        m.data_len -= n as u16;
        m.pkt_len -= n as u32;
        Ok(())
    }
    fn append(&mut self, n: usize) -> Result<(), BufferError> {
        if n > self.tailroom() {
            return Err(BufferError::NoTailroom);
        }
        let m = self.m_mut();
        m.data_len += n as u16;
        m.pkt_len += n as u32;
        Ok(())
    }
    fn trim(&mut self, n: usize) -> Result<(), BufferError> {
        if n > self.len() {
            return Err(BufferError::OutOfRange);
        }
        let m = self.m_mut();
        m.data_len -= n as u16;
        m.pkt_len -= n as u32;
        Ok(())
    }
    #[inline]
    fn rx_ip_checksum(&self) -> RxChecksum {
        let flags = self.m().ol_flags & u64::from(sys::RTE_MBUF_F_RX_IP_CKSUM_MASK);
        if flags == u64::from(sys::RTE_MBUF_F_RX_IP_CKSUM_GOOD) {
            RxChecksum::Good
        } else if flags == u64::from(sys::RTE_MBUF_F_RX_IP_CKSUM_BAD) {
            RxChecksum::Bad
        } else {
            // UNKNOWN, or NONE (the header is sound but its checksum field is not filled in:
            // software verifies, and drops it, rather than forward a wrong checksum).
            RxChecksum::Unknown
        }
    }
    #[inline]
    fn port(&self) -> u16 {
        self.m().port
    }
    #[inline]
    fn set_port(&mut self, port: u16) {
        self.m_mut().port = port;
    }
    #[inline]
    fn prefetch(p: *const u8) {
        // rte_prefetch0: PREFETCHT0 into every cache level.
        #[cfg(target_arch = "x86_64")]
        // SAFETY: PREFETCHT0 is a hint. It never faults, whatever the address, and changes no
        // memory and no architectural state, so no pointer validity is required.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = p;
    }
}

/// Bits of `rte_ethdev.h` that are `RTE_BIT64()` macros (bindgen does not expand them).
mod bits {
    pub const RSS_IPV4: u64 = 1 << 2;
    pub const RSS_FRAG_IPV4: u64 = 1 << 3;
    pub const RSS_NONFRAG_IPV4_TCP: u64 = 1 << 4;
    pub const RSS_NONFRAG_IPV4_UDP: u64 = 1 << 5;
    pub const RSS_NONFRAG_IPV4_OTHER: u64 = 1 << 7;
    pub const RX_OFFLOAD_IPV4_CKSUM: u64 = 1 << 1;
}

/// The RSS hash functions the router asks for: IPv4 addresses, and TCP/UDP ports of
/// unfragmented packets (fragments hash by addresses only, so all of a datagram's fragments
/// reach one worker).
const RSS_HF: u64 = bits::RSS_IPV4
    | bits::RSS_FRAG_IPV4
    | bits::RSS_NONFRAG_IPV4_TCP
    | bits::RSS_NONFRAG_IPV4_UDP
    | bits::RSS_NONFRAG_IPV4_OTHER;

/// How a port is configured: RSS over several RX queues where the device hashes (the
/// functions masked by what it offers, a symmetric Toeplitz key so both directions of a flow
/// land on one queue) and RX IPv4 checksum offload where offered. What the device lacks stays
/// off: software does that part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSetup {
    /// `rss_hf` asked for (0: no RSS).
    pub rss_hf: u64,
    /// The RSS key (empty: the driver's own).
    pub rss_key: Vec<u8>,
    /// RX offloads asked for.
    pub rx_offloads: u64,
}

impl PortSetup {
    /// For a device offering `rss_offloads` hash functions with a key of `key_size` bytes and
    /// `rx_capa` RX offloads, serving `queues` RX queues.
    pub fn for_device(queues: u16, rss_offloads: u64, key_size: u8, rx_capa: u64) -> PortSetup {
        let rss_hf = if queues > 1 { RSS_HF & rss_offloads } else { 0 };
        // 0x6d5a repeated: Toeplitz over (src, dst) and (dst, src) gives one hash (Woo and
        // Park, "Scalable TCP session monitoring with symmetric receive-side scaling").
        let rss_key = if rss_hf != 0 {
            (0..usize::from(key_size))
                .map(|i| if i % 2 == 0 { 0x6d } else { 0x5a })
                .collect()
        } else {
            Vec::new()
        };
        PortSetup {
            rss_hf,
            rss_key,
            rx_offloads: rx_capa & bits::RX_OFFLOAD_IPV4_CKSUM,
        }
    }

    /// What is on, for the port's start-up log line.
    pub fn describe(&self) -> String {
        let rss = if self.rss_hf == 0 {
            "no RSS".to_string()
        } else {
            format!(
                "RSS {:#x}{}",
                self.rss_hf,
                if self.rss_key.is_empty() {
                    " (driver key)"
                } else {
                    " (symmetric key)"
                }
            )
        };
        let csum = if self.rx_offloads & bits::RX_OFFLOAD_IPV4_CKSUM != 0 {
            "RX IPv4 checksum offload"
        } else {
            "IPv4 checksums in software"
        };
        format!("{rss}, {csum}")
    }
}

/// EAL may be initialised once per process.
static EAL: OnceLock<Result<(), String>> = OnceLock::new();

/// Initialise EAL with `args` (argv[0] included), once per process.
pub fn eal_init(args: &[String]) -> Result<(), DpdkError> {
    let res = EAL.get_or_init(|| {
        let cargs: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_str()).unwrap_or_default())
            .collect();
        let mut argv: Vec<*mut std::os::raw::c_char> =
            cargs.iter().map(|c| c.as_ptr() as *mut _).collect();
        argv.push(std::ptr::null_mut());
        // SAFETY: argv holds argc valid NUL-terminated strings followed by NULL; EAL may permute
        // the pointer array but not the strings, which outlive the call (EAL copies what it keeps).
        let rc = unsafe { sys::rte_eal_init(cargs.len() as i32, argv.as_mut_ptr()) };
        if rc < 0 {
            Err(errno_str(rte_errno()))
        } else {
            Ok(())
        }
    });
    res.clone().map_err(|e| DpdkError::Eal(e, args.join(" ")))
}

/// The DPDK device layer.
#[derive(Debug)]
pub struct DpdkBackend {
    pool: NonNull<sys::rte_mempool>,
    /// Our port index → DPDK port id.
    ids: Vec<u16>,
    descs: Vec<PortDesc>,
    /// Chained (multi-segment) mbufs dropped at RX, per port (rare: frames above the data
    /// room; an atomic add only then).
    chained: Vec<std::sync::atomic::AtomicU64>,
    /// `dataplane.capture`: pdump is initialised and the engine's threads stay unregistered.
    capture: bool,
}

// SAFETY: the mempool is thread-safe by DPDK's design (per-lcore caches for registered lcores,
// a lock-free ring underneath); ethdev queues are used by one thread each (the engine's rule);
// the remaining fields are immutable after init.
unsafe impl Send for DpdkBackend {}
// SAFETY: as above.
unsafe impl Sync for DpdkBackend {}

/// Build the EAL argument vector for a config: the user's `eal.args`, one `--vdev` or `-a`
/// per port, and a core list when the user gave none.
pub fn eal_args(cfg: &Config) -> Vec<String> {
    let mut v = vec!["router".to_string()];
    v.extend(cfg.eal.args.iter().cloned());
    let has_cores = cfg
        .eal
        .args
        .iter()
        .any(|a| a == "-l" || a == "-c" || a.starts_with("--lcores") || a.starts_with("-l"));
    if !has_cores {
        v.push("-l".into());
        v.push(cfg.dataplane.mgmt_cpu.unwrap_or(0).to_string());
    }
    for p in &cfg.ports {
        if crate::preflight::pci_address(&p.device).is_some() {
            v.push("-a".into());
        } else {
            v.push("--vdev".into());
        }
        v.push(p.device.clone());
    }
    v
}

impl DpdkBackend {
    /// Initialise EAL, create the mbuf pool and start every port of the config.
    pub fn init(cfg: &Config) -> Result<Self, DpdkError> {
        let args = eal_args(cfg);
        tracing::info!("EAL: {}", args.join(" "));
        eal_init(&args)?;
        let queues: u16 = match cfg.dataplane.placement {
            Placement::RunToCompletion => cfg.dataplane.workers.len() as u16,
            Placement::Split => 1,
        };
        let name = CString::new(format!("router_pool_{}", std::process::id())).unwrap_or_default();
        // SAFETY: EAL is initialised; the name is NUL-terminated; sizes are validated by config.
        let pool = unsafe {
            sys::rte_pktmbuf_pool_create(
                name.as_ptr(),
                cfg.mempool.mbufs,
                cfg.mempool.cache,
                0,
                cfg.mempool.mbuf_size,
                -1,
            )
        };
        let pool = NonNull::new(pool).ok_or_else(|| DpdkError::Pool(errno_str(rte_errno())))?;
        let mut ids = Vec::new();
        let mut descs = Vec::new();
        for (index, p) in cfg.ports.iter().enumerate() {
            let perr = |msg: String| DpdkError::Port {
                index,
                device: p.device.clone(),
                msg,
            };
            // EAL names a PCI device by its full address (domain included).
            let dev_name = crate::preflight::pci_address(&p.device)
                .unwrap_or_else(|| p.device.split(',').next().unwrap_or_default().to_string());
            let dev_name = dev_name.as_str();
            let cname =
                CString::new(dev_name).map_err(|_| perr("device name has a NUL byte".into()))?;
            let mut id: u16 = 0;
            // SAFETY: valid C string and out-pointer.
            let rc = unsafe { sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
            if rc != 0 {
                return Err(perr(format!(
                    "no such DPDK device {dev_name:?} ({})",
                    errno_str(rc)
                )));
            }
            let mut info = sys::rte_eth_dev_info::default();
            // SAFETY: valid port id and out-pointer to a default-initialised struct.
            let rc = unsafe { sys::rte_eth_dev_info_get(id, &mut info) };
            if rc != 0 {
                return Err(perr(format!("dev_info_get: {}", errno_str(rc))));
            }
            if info.max_rx_queues < queues || info.max_tx_queues < queues {
                return Err(perr(format!(
                    "{queues} queues needed for {} workers, the device has {} RX / {} TX (net_pcap: repeat rx_pcap=/tx_pcap=; net_af_packet: qpairs=N)",
                    cfg.dataplane.workers.len(),
                    info.max_rx_queues,
                    info.max_tx_queues
                )));
            }
            let mut setup = PortSetup::for_device(
                queues,
                info.flow_type_rss_offloads,
                info.hash_key_size,
                info.rx_offload_capa,
            );
            let mut conf = sys::rte_eth_conf::default();
            if setup.rss_hf != 0 {
                conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
                conf.rx_adv_conf.rss_conf.rss_hf = setup.rss_hf;
                if !setup.rss_key.is_empty() {
                    conf.rx_adv_conf.rss_conf.rss_key = setup.rss_key.as_mut_ptr();
                    conf.rx_adv_conf.rss_conf.rss_key_len = setup.rss_key.len() as u8;
                }
            }
            conf.rxmode.offloads = setup.rx_offloads;
            // SAFETY: valid port id; conf asks only for what dev_info offers, and rss_key (if
            // set) points at setup.rss_key, alive across the call (ethdev copies the key).
            let rc = unsafe { sys::rte_eth_dev_configure(id, queues, queues, &conf) };
            if rc != 0 {
                return Err(perr(format!("configure: {}", errno_str(rc))));
            }
            let (mut rxd, mut txd) = (p.rx_desc, p.tx_desc);
            // SAFETY: valid port id and out-pointers.
            unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut rxd, &mut txd) };
            // SAFETY: valid port id.
            let socket = unsafe { sys::rte_eth_dev_socket_id(id) };
            let socket = if socket < 0 { u32::MAX } else { socket as u32 };
            for q in 0..queues {
                // SAFETY: configured port, queue < configured count, pool valid; NULL conf = defaults.
                let rc = unsafe {
                    sys::rte_eth_rx_queue_setup(id, q, rxd, socket, std::ptr::null(), pool.as_ptr())
                };
                if rc != 0 {
                    return Err(perr(format!("rx queue {q}: {}", errno_str(rc))));
                }
                // SAFETY: as above.
                let rc =
                    unsafe { sys::rte_eth_tx_queue_setup(id, q, txd, socket, std::ptr::null()) };
                if rc != 0 {
                    return Err(perr(format!("tx queue {q}: {}", errno_str(rc))));
                }
            }
            // SAFETY: valid port id. Virtual devices may not support MTU changes: warn only.
            let rc = unsafe { sys::rte_eth_dev_set_mtu(id, p.mtu) };
            if rc != 0 {
                tracing::debug!("port {}: set MTU {}: {}", p.name, p.mtu, errno_str(rc));
            }
            // SAFETY: configured port with all queues set up.
            let rc = unsafe { sys::rte_eth_dev_start(id) };
            if rc != 0 {
                return Err(perr(format!("start: {}", errno_str(rc))));
            }
            if p.promiscuous {
                // SAFETY: started port.
                unsafe { sys::rte_eth_promiscuous_enable(id) };
            }
            let mut mac = sys::rte_ether_addr::default();
            // SAFETY: valid port id and out-pointer.
            unsafe { sys::rte_eth_macaddr_get(id, &mut mac) };
            let driver = if info.driver_name.is_null() {
                String::new()
            } else {
                // SAFETY: driver_name is a static NUL-terminated string owned by the driver.
                unsafe { CStr::from_ptr(info.driver_name) }
                    .to_string_lossy()
                    .into_owned()
            };
            tracing::info!("port {} ({}): dpdk port {id}, driver {driver}, {queues} queue pairs, {rxd}/{txd} descriptors, {}", p.name, p.device, setup.describe());
            ids.push(id);
            descs.push(PortDesc {
                name: p.name.clone(),
                device: p.device.clone(),
                mac: EthernetAddress(mac.addr_bytes),
                rx_queues: queues,
                tx_queues: queues,
                driver,
            });
        }
        // Packet capture by DPDK's own tools (`dpdk-dumpcap`, `dpdk-pdump`): they attach as
        // secondary processes (same --file-prefix; hugepages, since a --no-huge primary's
        // memory is private) and ask for copies of a port's RX or TX; until one does, the
        // burst paths are untouched.
        let capture = cfg.dataplane.capture;
        if capture {
            // SAFETY: EAL is initialised, the ports are started; called once.
            let rc = unsafe { sys::rte_pdump_init() };
            if rc != 0 {
                tracing::warn!(
                    "pdump: {} (dpdk-dumpcap will not attach)",
                    errno_str(rte_errno())
                );
            } else if cfg
                .eal
                .args
                .iter()
                .any(|a| a == "--no-huge" || a == "--in-memory")
            {
                tracing::warn!(
                    "capture: eal.args has --no-huge or --in-memory, so no capture tool can attach"
                );
            } else {
                tracing::info!("capture: dpdk-dumpcap --file-prefix=PREFIX -i PORT attaches (workers run without lcore mempool caches)");
            }
        }
        let chained = ids.iter().map(|_| Default::default()).collect();
        Ok(DpdkBackend {
            pool,
            ids,
            descs,
            chained,
            capture,
        })
    }
}

const MAX_BURST: usize = 256;

impl Backend for DpdkBackend {
    type Buf = Mbuf;

    fn ports(&self) -> &[PortDesc] {
        &self.descs
    }

    #[inline]
    fn rx_burst(&self, port: u16, queue: u16, out: &mut Vec<Mbuf>) -> usize {
        let Some(&id) = self.ids.get(usize::from(port)) else {
            return 0;
        };
        let start = out.len();
        let spare = out.spare_capacity_mut();
        let room = spare.len().min(MAX_BURST) as u16;
        if room == 0 {
            return 0;
        }
        // SAFETY: the driver writes at most `room` valid mbuf pointers into the Vec's spare
        // capacity (Mbuf is repr(transparent) over NonNull<rte_mbuf>, and rx_burst never stores
        // NULL in the first `n` slots); this thread owns (port, queue) for RX. We then extend
        // the length over exactly the `n` slots written.
        let n = unsafe {
            let n = usize::from(sys::shim_rte_eth_rx_burst(
                id,
                queue,
                spare.as_mut_ptr().cast::<*mut sys::rte_mbuf>(),
                room,
            ));
            out.set_len(start + n);
            n
        };
        for m in &mut out[start..] {
            m.set_port(port);
        }
        // Chained mbufs (frames above the data room) are not handled: drop them, keep the
        // rest of the burst in order, and count them as dropped, not received.
        if out[start..].iter().any(|m| m.m().nb_segs != 1) {
            let mut kept = start;
            for i in start..out.len() {
                if out[i].m().nb_segs == 1 {
                    out.swap(kept, i);
                    kept += 1;
                }
            }
            let dropped = out.len() - kept;
            out.truncate(kept);
            if let Some(c) = self.chained.get(usize::from(port)) {
                c.fetch_add(dropped as u64, std::sync::atomic::Ordering::Relaxed);
            }
            return kept - start;
        }
        n
    }

    #[inline]
    fn tx_burst(&self, port: u16, queue: u16, pkts: &mut Vec<Mbuf>) -> usize {
        let Some(&id) = self.ids.get(usize::from(port)) else {
            return 0;
        };
        let mut sent = 0usize;
        while sent < pkts.len() {
            let chunk = (pkts.len() - sent).min(MAX_BURST);
            // SAFETY: Mbuf is repr(transparent) over NonNull<rte_mbuf>, so the Vec's buffer is an
            // array of valid rte_mbuf pointers; this thread owns (port, queue) for TX. The driver
            // takes ownership of the first `n` mbufs.
            let n = usize::from(unsafe {
                sys::shim_rte_eth_tx_burst(
                    id,
                    queue,
                    pkts.as_mut_ptr().add(sent).cast::<*mut sys::rte_mbuf>(),
                    chunk as u16,
                )
            });
            sent += n;
            if n < chunk {
                break;
            }
        }
        let left = pkts.len() - sent;
        // SAFETY: the first `sent` mbufs now belong to the driver: move the unsent tail to the
        // front and shrink the length without running their destructors. Both ranges are inside
        // the Vec's initialised length; ptr::copy handles the overlap.
        unsafe {
            std::ptr::copy(pkts.as_ptr().add(sent), pkts.as_mut_ptr(), left);
            pkts.set_len(left);
        }
        sent
    }

    fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is valid for the backend's lifetime.
        let m = unsafe { sys::shim_rte_pktmbuf_alloc(self.pool.as_ptr()) };
        NonNull::new(m).map(Mbuf)
    }

    fn register_thread(&self) -> Result<(), String> {
        // Registering a thread EAL did not start turns multi-process off, and with it every
        // capture tool.
        if self.capture {
            return Ok(());
        }
        // SAFETY: no preconditions; returns LCORE_ID_ANY (u32::MAX) for unregistered threads.
        if unsafe { sys::shim_rte_lcore_id() } != u32::MAX {
            return Ok(());
        }
        // SAFETY: EAL is initialised (the backend exists only after eal_init).
        if unsafe { sys::rte_thread_register() } != 0 {
            return Err(format!("rte_thread_register: {}", errno_str(rte_errno())));
        }
        Ok(())
    }

    fn driver_stats(&self, port: u16) -> Option<DriverStats> {
        let id = *self.ids.get(usize::from(port))?;
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: valid port id and out-pointer.
        if unsafe { sys::rte_eth_stats_get(id, &mut s) } != 0 {
            return None;
        }
        Some(DriverStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
            rx_chained_dropped: self
                .chained
                .get(usize::from(port))
                .map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed)),
        })
    }

    fn pool_free(&self) -> Option<u64> {
        // SAFETY: the pool is valid.
        Some(u64::from(unsafe {
            sys::shim_rte_mempool_avail_count(self.pool.as_ptr())
        }))
    }

    fn shutdown(&self) {
        if self.capture {
            // SAFETY: EAL is initialised; capture clients are told to detach before the ports go.
            unsafe { sys::rte_pdump_uninit() };
        }
        for (&id, d) in self.ids.iter().zip(&self.descs) {
            // SAFETY: valid port ids; the engine threads that used them have been joined.
            unsafe {
                sys::rte_eth_dev_stop(id);
                sys::rte_eth_dev_close(id);
            }
            tracing::info!("port {} closed", d.name);
        }
        // SAFETY: every port is closed and no mbuf is alive (engine and management core dropped).
        unsafe { sys::rte_eal_cleanup() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Toeplitz hash NICs compute for RSS (Microsoft's RSS specification).
    fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
        let mut h = 0u32;
        let window = |bit: usize| -> u32 {
            (0..32).fold(0u32, |w, i| {
                let b = bit + i;
                let set = key.get(b / 8).is_some_and(|k| k & (0x80 >> (b % 8)) != 0);
                (w << 1) | u32::from(set)
            })
        };
        for (i, byte) in input.iter().enumerate() {
            for j in 0..8 {
                if byte & (0x80 >> j) != 0 {
                    h ^= window(i * 8 + j);
                }
            }
        }
        h
    }

    #[test]
    fn rss_only_with_queues_and_only_what_the_device_offers() {
        let one = PortSetup::for_device(1, u64::MAX, 40, u64::MAX);
        assert_eq!((one.rss_hf, one.rss_key.len()), (0, 0));
        assert_eq!(one.rx_offloads, bits::RX_OFFLOAD_IPV4_CKSUM);
        // A device hashing IPv4 and TCP only (and IPv6, not asked for).
        let offered = bits::RSS_IPV4 | bits::RSS_NONFRAG_IPV4_TCP | (1 << 8);
        let two = PortSetup::for_device(2, offered, 40, 1 << 2);
        assert_eq!(two.rss_hf, bits::RSS_IPV4 | bits::RSS_NONFRAG_IPV4_TCP);
        assert_eq!(two.rss_key.len(), 40);
        assert_eq!(two.rx_offloads, 0, "no IPv4 checksum offload offered");
        // No hashing at all (net_af_packet, net_pcap): no RSS, no key.
        let none = PortSetup::for_device(4, 0, 40, 0);
        assert_eq!((none.rss_hf, none.rss_key.len()), (0, 0));
        // A device with no settable key keeps its own.
        let keyless = PortSetup::for_device(2, u64::MAX, 0, 0);
        assert!(keyless.rss_hf != 0 && keyless.rss_key.is_empty());
    }

    /// Both directions of a flow hash alike with the key the router sets, so a reply reaches
    /// the worker its request did; the hash still tells flows apart.
    #[test]
    fn the_rss_key_is_symmetric() {
        let key = PortSetup::for_device(2, u64::MAX, 40, 0).rss_key;
        let tuple = |src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16| {
            let mut v = Vec::new();
            v.extend_from_slice(&src);
            v.extend_from_slice(&dst);
            v.extend_from_slice(&sp.to_be_bytes());
            v.extend_from_slice(&dp.to_be_bytes());
            v
        };
        let mut seen = std::collections::HashSet::new();
        for i in 0..200u16 {
            let a = [10, 0, (i >> 8) as u8, i as u8];
            let b = [192, 168, 7, (i % 251) as u8];
            let (sp, dp) = (1024 + i * 7, 2049);
            let there = toeplitz(&key, &tuple(a, b, sp, dp));
            assert_eq!(there, toeplitz(&key, &tuple(b, a, dp, sp)), "flow {i}");
            assert_eq!(
                toeplitz(&key, &a.iter().chain(&b).copied().collect::<Vec<_>>()),
                toeplitz(&key, &b.iter().chain(&a).copied().collect::<Vec<_>>())
            );
            seen.insert(there);
        }
        assert!(
            seen.len() > 150,
            "{} distinct hashes of 200 flows",
            seen.len()
        );
    }
}
