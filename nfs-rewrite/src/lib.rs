//! Mirage NFS virtualization (issue 3, in progress). So far, on plain byte buffers:
//! - `wire`: XDR, ONC RPC, MOUNT v3 and every NFSv3 procedure of RFC 1813, walked to report
//!   where each file handle, `fattr3`, READDIR file id and FSINFO transfer size sits;
//! - `vfh`: the virtual file handle (SID, MCH, PFS, PIN, VIN, keyed HVC);
//! - `tables`: the per-worker transaction table and the shared lock-free handle table;
//! - `rewrite`: VFH → PFH in calls, PFH → VFH and attributes in replies, in place;
//! - `datapath`: `NfsStage`, the fast-path stage for NFSv3 over UDP around `rewrite` (address
//!   and port rewrite, IP/UDP length and checksum fix-ups, transactions, punts).
//!
//! Not yet: the stage in the engine's pipeline (config, steering by xid, the mapping queue to
//! the management core), the management core's MOUNT/portmap answers, virtual root, refusal
//! replies, recovery and checkpoints; IP fragment reassembly.
#![forbid(unsafe_code)]

pub mod admission;
pub mod checkpoint;
pub mod control;
pub mod corpus;
pub mod datapath;
pub mod policy;
pub mod replica;
pub mod rewrite;
pub mod stream;
pub mod tables;
pub mod upstream;
pub mod vfh;
pub mod web;
pub mod wire;
