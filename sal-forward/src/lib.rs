//! Serval (NSDI 2012) service routing, wire compatible with the original stack:
//!
//! - [`wire`]: the Service Access Layer header (IP protocol 144) and its CONTROL, SERVICE and
//!   SOURCE extensions, parsed in place and emitted byte for byte as the original does;
//! - [`id`]: 256-bit serviceIDs and prefixes;
//! - [`table`]: the service table — longest-prefix match on serviceIDs, rules with priorities
//!   and weighted target sets, read by every worker without locks while the management core
//!   updates it;
//! - [`stage`]: the fast-path stage: SYNs and connectionless datagrams with a SERVICE
//!   extension are matched and forwarded (or dropped, delayed, delivered locally);
//! - [`ctrlmsg`]: the original control messages (REGISTER, UNREGISTER, …).
#![forbid(unsafe_code)]

pub mod controller;
pub mod ctrlmsg;
pub mod id;
pub mod stage;
pub mod table;
pub mod wire;

pub use id::{Prefix, ServiceId};
