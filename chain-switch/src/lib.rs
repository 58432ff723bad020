//! NetChain (NSDI 2018) switch nodes, wire compatible with the public P4 prototype:
//!
//! - [`wire`]: the query header (chain IP list, op, sc, seq, key, value, vgroup) on UDP
//!   8888/8889;
//! - [`store`]: one node's registers — key index, sequence and value registers in fixed
//!   arrays, written by workers without waiting;
//! - [`node`]: roles per virtual group (head, middle, tail, stopped) and the failover table;
//! - [`stage`]: the fast-path stage — reads at the tail, writes down the chain, replies,
//!   fast failover;
//! - [`control`]: the authenticated control channel between the chain master and each
//!   appliance's management core, and the master's directory for clients;
//! - [`placement`]: keys to virtual groups, virtual groups to chains (consistent hashing);
//! - [`master`]: the chain master — placement, failover, recovery, membership in etcd;
//! - [`client`]: a client over UDP sockets (get, put, concurrent workloads with history);
//! - [`linear`]: a linearizability checker for recorded histories;
//! - [`etcd`]: etcd's v3 JSON gateway (the master's store, the benchmark's baseline).
#![forbid(unsafe_code)]

pub mod client;
pub mod control;
pub mod etcd;
pub mod linear;
pub mod master;
pub mod node;
pub mod placement;
pub mod stage;
pub mod store;
pub mod wire;
