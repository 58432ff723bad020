//! Mirage NFS virtualization (issue 3, in progress). So far, on plain byte buffers:
//! - `wire`: XDR, ONC RPC, MOUNT v3 and every NFSv3 procedure of RFC 1813, walked to report
//!   where each file handle, `fattr3`, READDIR file id and FSINFO transfer size sits;
//! - `vfh`: the virtual file handle (SID, MCH, PFS, PIN, VIN, keyed HVC);
//! - `tables`: the per-worker transaction table and the shared lock-free handle table;
//! - `rewrite`: VFH → PFH in calls, PFH → VFH and attributes in replies, in place.
//!
//! Not yet: the pipeline stage around `rewrite` (IP/UDP fix-ups, steering by xid), the
//! management core's MOUNT/portmap answers, virtual root, recovery and checkpoints.
#![forbid(unsafe_code)]

pub mod rewrite;
pub mod tables;
pub mod vfh;
pub mod wire;
