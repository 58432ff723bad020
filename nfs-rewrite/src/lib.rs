//! Mirage NFS virtualization (issue 3, in progress): the wire codecs so far — XDR, ONC RPC,
//! MOUNT v3 and every NFSv3 procedure of RFC 1813 — written to tell the rewrite stage exactly
//! where each file handle, each `fattr3` and each FSINFO transfer size sits in a message.
#![forbid(unsafe_code)]

pub mod tables;
pub mod vfh;
pub mod wire;
