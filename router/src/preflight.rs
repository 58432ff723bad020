//! `router preflight`: what must hold on the host before `router run` can start with a config,
//! checked without starting DPDK — the systemd unit's `ExecStartPre`. Each check says what it
//! found, and what to do when it fails.

use crate::config::{BackendKind, Config};
use std::path::Path;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    /// What was found, or (failed) what to do about it.
    pub detail: String,
}

fn check(what: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        what: what.into(),
        ok,
        detail: detail.into(),
    }
}

/// A PCI address (`0000:03:00.0`, or `03:00.0` in domain 0) at the start of a port's device
/// string (before its `,devargs`), in sysfs's spelling.
pub fn pci_address(device: &str) -> Option<String> {
    let dev = device.split(',').next()?;
    let full = if dev.matches(':').count() == 1 {
        format!("0000:{dev}")
    } else {
        dev.to_string()
    };
    let b = full.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b.get(r)
            .is_some_and(|s| s.iter().all(u8::is_ascii_hexdigit))
    };
    (full.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && matches!(b[11], b'0'..=b'7'))
    .then(|| full.to_ascii_lowercase())
}

/// Drivers a DPDK poll-mode driver can use a NIC through: the user-space I/O ones, and the
/// bifurcated ones whose PMD works beside the kernel driver (Mellanox).
const DPDK_DRIVERS: [&str; 5] = [
    "vfio-pci",
    "uio_pci_generic",
    "igb_uio",
    "mlx5_core",
    "mlx4_core",
];

/// Run every check for `cfg` against the host's `/sys` and `/proc` (given as `sys`, `proc_`).
pub fn run(cfg: &Config, sys: &Path, proc_: &Path) -> Vec<Check> {
    let mut out = vec![check("config", true, "valid")];
    if cfg.dataplane.backend == BackendKind::Soft {
        out.push(check(
            "backend",
            true,
            "soft (pcap/memory ports): nothing else to check",
        ));
        return out;
    }
    let no_huge = cfg.eal.args.iter().any(|a| a == "--no-huge");
    if no_huge {
        out.push(check("hugepages", true, "not used (--no-huge in eal.args)"));
    } else {
        let mut total = 0u64;
        let mut free = 0u64;
        let mut sizes = Vec::new();
        if let Ok(dirs) = std::fs::read_dir(sys.join("kernel/mm/hugepages")) {
            for d in dirs.flatten() {
                let read = |f: &str| -> u64 {
                    std::fs::read_to_string(d.path().join(f))
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(0)
                };
                let (n, f) = (read("nr_hugepages"), read("free_hugepages"));
                if n > 0 {
                    sizes.push(format!(
                        "{n} x {}",
                        d.file_name()
                            .to_string_lossy()
                            .trim_start_matches("hugepages-")
                    ));
                }
                total += n;
                free += f;
            }
        }
        out.push(if total == 0 {
            check(
                "hugepages",
                false,
                "none reserved: run scripts/setup (or echo 1024 > /proc/sys/vm/nr_hugepages), or put --no-huge in eal.args",
            )
        } else if free == 0 {
            check("hugepages", false, format!("{} reserved, none free (another DPDK process holds them?)", sizes.join(", ")))
        } else {
            check("hugepages", true, format!("{} reserved, {free} free", sizes.join(", ")))
        });
        let mounts = std::fs::read_to_string(proc_.join("mounts")).unwrap_or_default();
        let mounted = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some("hugetlbfs"));
        out.push(match mounted {
            Some(l) => check(
                "hugetlbfs",
                true,
                l.split_whitespace().nth(1).unwrap_or("").to_string(),
            ),
            None => check(
                "hugetlbfs",
                false,
                "not mounted: mount -t hugetlbfs nodev /dev/hugepages (scripts/setup does)",
            ),
        });
    }
    for p in &cfg.ports {
        let Some(addr) = pci_address(&p.device) else {
            out.push(check(
                format!("port {}", p.name),
                true,
                format!("{} (a virtual device)", p.device),
            ));
            continue;
        };
        let dev = sys.join("bus/pci/devices").join(&addr);
        if !dev.exists() {
            out.push(check(
                format!("port {}", p.name),
                false,
                format!("no PCI device {addr} (lspci -D lists them)"),
            ));
            continue;
        }
        let driver = std::fs::read_link(dev.join("driver"))
            .ok()
            .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()));
        out.push(match driver {
            Some(d) if DPDK_DRIVERS.contains(&d.as_str()) => {
                check(format!("port {}", p.name), true, format!("{addr} bound to {d}"))
            }
            Some(d) => check(
                format!("port {}", p.name),
                false,
                format!("{addr} is bound to the kernel driver {d}: dpdk-devbind.py -b vfio-pci {addr} (take it down first)"),
            ),
            None => check(
                format!("port {}", p.name),
                false,
                format!("{addr} has no driver: modprobe vfio-pci; dpdk-devbind.py -b vfio-pci {addr}"),
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        assert_eq!(pci_address("0000:03:00.0").as_deref(), Some("0000:03:00.0"));
        assert_eq!(
            pci_address("03:00.1,rx_queues=2").as_deref(),
            Some("0000:03:00.1")
        );
        assert_eq!(pci_address("0000:AF:00.0").as_deref(), Some("0000:af:00.0"));
        assert_eq!(pci_address("net_af_packet0,iface=r0"), None);
        assert_eq!(pci_address("net_memif0,role=server"), None);
        assert_eq!(pci_address("0000:03:00.9"), None);
    }

    #[test]
    fn hugepages_and_bindings_against_a_sysfs_tree() {
        let root = std::env::temp_dir().join(format!("preflight-{}", std::process::id()));
        let (sys, proc_) = (root.join("sys"), root.join("proc"));
        let hp = sys.join("kernel/mm/hugepages/hugepages-2048kB");
        std::fs::create_dir_all(&hp).unwrap();
        std::fs::create_dir_all(&proc_).unwrap();
        std::fs::write(hp.join("nr_hugepages"), "0\n").unwrap();
        std::fs::write(hp.join("free_hugepages"), "0\n").unwrap();
        std::fs::write(proc_.join("mounts"), "proc /proc proc rw 0 0\n").unwrap();
        for (addr, driver) in [("0000:03:00.0", "vfio-pci"), ("0000:03:00.1", "ixgbe")] {
            let dev = sys.join("bus/pci/devices").join(addr);
            std::fs::create_dir_all(&dev).unwrap();
            let drv = sys.join("bus/pci/drivers").join(driver);
            std::fs::create_dir_all(&drv).unwrap();
            std::os::unix::fs::symlink(&drv, dev.join("driver")).unwrap();
        }
        let cfg = Config::parse(
            r#"
[[ports]]
name = "a"
device = "0000:03:00.0"
[[ports]]
name = "b"
device = "03:00.1"
[[ports]]
name = "c"
device = "0000:04:00.0"
"#,
        )
        .unwrap();
        let failed = |checks: &[Check]| -> Vec<String> {
            checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.what, c.detail))
                .collect()
        };
        let f = failed(&run(&cfg, &sys, &proc_));
        assert_eq!(f.len(), 4, "{f:#?}");
        assert!(f[0].starts_with("hugepages: none reserved"), "{f:#?}");
        assert!(f[1].starts_with("hugetlbfs: not mounted"), "{f:#?}");
        assert!(
            f[2].contains(
                "bound to the kernel driver ixgbe: dpdk-devbind.py -b vfio-pci 0000:03:00.1"
            ),
            "{f:#?}"
        );
        assert!(
            f[3].starts_with("port c: no PCI device 0000:04:00.0"),
            "{f:#?}"
        );
        std::fs::write(hp.join("nr_hugepages"), "512\n").unwrap();
        std::fs::write(hp.join("free_hugepages"), "500\n").unwrap();
        std::fs::write(
            proc_.join("mounts"),
            "nodev /dev/hugepages hugetlbfs rw 0 0\n",
        )
        .unwrap();
        let checks = run(&cfg, &sys, &proc_);
        assert_eq!(failed(&checks).len(), 2);
        assert!(checks
            .iter()
            .any(|c| c.ok && c.detail == "512 x 2048kB reserved, 500 free"));
        assert!(checks
            .iter()
            .any(|c| c.ok && c.detail == "0000:03:00.0 bound to vfio-pci"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
