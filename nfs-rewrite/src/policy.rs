//! The virtual server's export policy (fortification: authentication at the border). Checked
//! before a call leaves the router, on the fast path and on the management core alike:
//!
//! - which credential flavors are accepted (AUTH_SYS, AUTH_NONE); others get the RPC error
//!   AUTH_ERROR / AUTH_TOOWEAK, as a server refusing them would send;
//! - which client networks may use each export ([`Network`]); MNT of an export from outside
//!   them gets MNT3ERR_ACCES, and a call with one of its handles NFS3ERR_ACCES;
//! - whether only addresses that mounted through the router may call at all
//!   ([`MountedSet`], the router's rmtab: kept on the management core's disk so a restarted
//!   router still knows its clients);
//! - root squash and all squash: AUTH_SYS uid/gid 0 (or every id) become the configured
//!   anonymous ids, rewritten in place in the credential ([`squash`]).

use crate::wire::rpc::auth;
use packet::checksum::Adjust;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

/// An IPv4 network, `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Network {
    fn mask(self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len.min(32)))
        }
    }

    pub fn contains(self, a: Ipv4Addr) -> bool {
        (u32::from(a) ^ u32::from(self.addr)) & self.mask() == 0
    }
}

impl std::str::FromStr for Network {
    type Err = String;
    /// `a.b.c.d/len`, or a bare address (a /32); host bits must be zero.
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("`{s}`: not an IPv4 network (a.b.c.d/len)"))?;
        let len: u8 = match l.parse() {
            Ok(n) if n <= 32 => n,
            _ => return Err(format!("`{s}`: prefix length must be 0..=32")),
        };
        let n = Network { addr, len };
        if u32::from(addr) & !n.mask() != 0 {
            return Err(format!("`{s}`: host bits set (did you mean {}/{len}?)", {
                Ipv4Addr::from(u32::from(addr) & n.mask())
            }));
        }
        Ok(n)
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Whose ids a server's export gets squashed to the anonymous ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Squash {
    /// Credentials go to the server as the client sent them.
    #[default]
    None,
    /// uid 0 and gid 0 (also among the extra groups) become the anonymous ids.
    Root,
    /// Every uid and gid becomes the anonymous ids.
    All,
}

/// Why the policy refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A credential flavor the policy does not accept: AUTH_ERROR / AUTH_TOOWEAK.
    Flavor,
    /// The address did not mount through the router: NFS3ERR_ACCES.
    NotMounted,
}

/// Addresses that mounted through the router. One writer (the management core), lock-free
/// readers on every worker: open addressing over atomics, probes bounded by [`PROBES`] (an
/// insert that finds no slot within them fails; a lookup never reads further).
#[derive(Debug)]
pub struct MountedSet {
    slots: Box<[AtomicU32]>,
}

/// Slots a lookup or insert reads at most.
pub const PROBES: usize = 32;
const EMPTY: u32 = 0;
/// A removed address (0.0.0.0 and 255.255.255.255 are never clients, so both are free).
const GONE: u32 = u32::MAX;

impl MountedSet {
    /// Room for about `capacity` addresses (four slots each keep the probes short).
    pub fn new(capacity: usize) -> Self {
        let n = (capacity.max(1) * 4).next_power_of_two();
        MountedSet {
            slots: (0..n).map(|_| AtomicU32::new(EMPTY)).collect(),
        }
    }

    fn start(&self, a: u32) -> usize {
        // Fibonacci hashing: neighbouring addresses land far apart.
        (a.wrapping_mul(0x9E37_79B9) as usize) & (self.slots.len() - 1)
    }

    fn probe(&self, a: u32) -> impl Iterator<Item = &AtomicU32> {
        let (start, mask) = (self.start(a), self.slots.len() - 1);
        (0..PROBES.min(self.slots.len())).map(move |i| &self.slots[(start + i) & mask])
    }

    /// Whether `a` mounted (any worker, any time).
    #[inline]
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        let a = u32::from(a);
        for s in self.probe(a) {
            match s.load(Ordering::Acquire) {
                v if v == a => return true,
                EMPTY => return false,
                _ => {}
            }
        }
        false
    }

    /// Record `a` (the single writer). False: no slot within [`PROBES`], or not a client
    /// address.
    pub fn insert(&self, a: Ipv4Addr) -> bool {
        let v = u32::from(a);
        if v == EMPTY || v == GONE {
            return false;
        }
        if self.contains(a) {
            return true;
        }
        match self.probe(v).find(|s| {
            let x = s.load(Ordering::Relaxed);
            x == EMPTY || x == GONE
        }) {
            Some(s) => {
                s.store(v, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Forget `a` (the single writer).
    pub fn remove(&self, a: Ipv4Addr) {
        let v = u32::from(a);
        if let Some(s) = self.probe(v).find(|s| s.load(Ordering::Relaxed) == v) {
            s.store(GONE, Ordering::Release);
        }
    }
}

/// The virtual server's policy (what every worker shares).
#[derive(Debug)]
pub struct Policy {
    pub auth_none: bool,
    /// Only addresses in [`Policy::mounted`] may call.
    pub require_mount: bool,
    pub anonymous_uid: u32,
    pub anonymous_gid: u32,
    pub mounted: MountedSet,
    /// Per-client admission on each worker (fairness; zeros: none).
    pub admission: crate::admission::Limits,
}

impl Default for Policy {
    /// Open: AUTH_SYS and AUTH_NONE, any address, ids untouched (a server's own export
    /// policy still applies).
    fn default() -> Self {
        Policy {
            auth_none: true,
            require_mount: false,
            anonymous_uid: 65534,
            anonymous_gid: 65534,
            mounted: MountedSet::new(16),
            admission: crate::admission::Limits {
                max_inflight: 0,
                rate: 0,
                burst: 0,
                ttl_ms: 10_000,
            },
        }
    }
}

impl Policy {
    /// Whether a credential of `flavor` is accepted.
    #[inline]
    pub fn accepts(&self, flavor: u32) -> bool {
        flavor == auth::SYS || (flavor == auth::NONE && self.auth_none)
    }

    /// Whether an NFS call (other than NULL) from `client` with a credential of `flavor` may
    /// go on (its handles' exports are checked by [`Network`]s as they are decoded).
    #[inline]
    pub fn admit(&self, client: Ipv4Addr, flavor: u32) -> Result<(), Refusal> {
        if !self.accepts(flavor) {
            return Err(Refusal::Flavor);
        }
        if self.require_mount && !self.mounted.contains(client) {
            return Err(Refusal::NotMounted);
        }
        Ok(())
    }
}

/// Offset of an RPC call's credential body (after xid, type, RPC version, program, version,
/// procedure, flavor and length).
const CRED_BODY_AT: usize = 32;

/// Squash the AUTH_SYS credential of the call `msg` in place (`squash`, to `anon` = (uid,
/// gid)); every change is recorded in `csum` (the fields are 4-byte aligned in the message).
/// Returns whether anything changed. A credential of another flavor, or one that does not
/// decode, is left alone (the call was admitted, so it is AUTH_NONE: anonymous already).
pub fn squash(msg: &mut [u8], how: Squash, anon: (u32, u32), csum: &mut Adjust) -> bool {
    if how == Squash::None || be32(msg, 24) != Some(auth::SYS) {
        return false;
    }
    let Some(name_len) = be32(msg, CRED_BODY_AT + 4) else {
        return false;
    };
    let Ok(name_len) = usize::try_from(name_len) else {
        return false;
    };
    if name_len > 255 {
        return false;
    }
    let uid_at = CRED_BODY_AT + 8 + name_len.next_multiple_of(4);
    let Some(gids) = be32(msg, uid_at + 8) else {
        return false;
    };
    if gids > 16 {
        return false;
    }
    let squash_if = |v: u32, anon: u32| match how {
        Squash::All if v != anon => Some(anon),
        Squash::Root if v == 0 && anon != 0 => Some(anon),
        _ => None,
    };
    let mut changed = false;
    let fields = [(uid_at, anon.0), (uid_at + 4, anon.1)]
        .into_iter()
        .chain((0..gids as usize).map(|i| (uid_at + 12 + 4 * i, anon.1)));
    for (at, anon) in fields {
        let Some(old) = be32(msg, at) else {
            return changed;
        };
        if let Some(new) = squash_if(old, anon) {
            msg[at..at + 4].copy_from_slice(&new.to_be_bytes());
            csum.field32(old, new);
            changed = true;
        }
    }
    changed
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::rpc::{self, AuthSys, Writer};

    #[test]
    fn networks() {
        let n: Network = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains(Ipv4Addr::new(10, 1, 200, 3)));
        assert!(!n.contains(Ipv4Addr::new(10, 2, 0, 1)));
        let any: Network = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains(Ipv4Addr::new(192, 0, 2, 1)));
        let host: Network = "10.0.1.2".parse().unwrap();
        assert_eq!(host.to_string(), "10.0.1.2/32");
        assert!(!host.contains(Ipv4Addr::new(10, 0, 1, 3)));
        assert!("10.1.0.1/16"
            .parse::<Network>()
            .unwrap_err()
            .contains("10.1.0.0/16"));
        assert!("10.1.0.0/33".parse::<Network>().is_err());
        assert!("nope/8".parse::<Network>().is_err());
    }

    #[test]
    fn mounted_set_inserts_removes_and_bounds_probes() {
        let m = MountedSet::new(4);
        let a = Ipv4Addr::new(10, 0, 1, 2);
        assert!(!m.contains(a));
        assert!(m.insert(a));
        assert!(m.insert(a), "twice is once");
        assert!(m.contains(a));
        m.remove(a);
        assert!(!m.contains(a));
        assert!(!m.insert(Ipv4Addr::UNSPECIFIED));
        assert!(!m.insert(Ipv4Addr::BROADCAST));
        // 16 slots: every one fills, then inserts fail instead of probing further.
        let mut n = 0;
        for i in 1..=64u32 {
            n += usize::from(m.insert(Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert_eq!(n, 16);
        assert!(
            (1..=64u32)
                .filter(|i| m.contains(Ipv4Addr::from(0x0a00_0000 + i)))
                .count()
                == 16
        );
        // A removed slot is used again.
        let first = (1..=64u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i))
            .find(|a| m.contains(*a))
            .unwrap();
        m.remove(first);
        assert!(m.insert(Ipv4Addr::new(192, 0, 2, 9)));
    }

    #[test]
    fn admission() {
        let mut p = Policy::default();
        let a = Ipv4Addr::new(10, 0, 1, 2);
        assert_eq!(p.admit(a, auth::NONE), Ok(()));
        assert_eq!(
            p.admit(a, 6),
            Err(Refusal::Flavor),
            "RPCSEC_GSS: not checkable here"
        );
        p.auth_none = false;
        assert_eq!(p.admit(a, auth::NONE), Err(Refusal::Flavor));
        p.require_mount = true;
        assert_eq!(p.admit(a, auth::SYS), Err(Refusal::NotMounted));
        p.mounted.insert(a);
        assert_eq!(p.admit(a, auth::SYS), Ok(()));
    }

    /// A call with an AUTH_SYS credential of `name`, `uid`, `gid`, `gids`.
    fn call(name: &[u8], uid: u32, gid: u32, gids: &[u32]) -> Vec<u8> {
        let mut body = Writer::new();
        body.u32(7)
            .opaque(name)
            .u32(uid)
            .u32(gid)
            .u32(gids.len() as u32);
        gids.iter().for_each(|g| {
            body.u32(*g);
        });
        let mut w = Writer::new();
        w.u32(1).u32(0).u32(2).u32(100003).u32(3).u32(1);
        w.u32(auth::SYS).opaque(&body.buf).u32(auth::NONE).u32(0);
        w.u32(0xfeed);
        w.buf
    }

    fn cred(msg: &[u8]) -> (u32, u32, Vec<u32>) {
        let rpc::Message::Call(c) = rpc::parse(msg).unwrap() else {
            panic!()
        };
        let s = AuthSys::parse(c.cred.body).unwrap();
        let at = c.cred.body.len() - 4 * s.gids;
        let gids = c.cred.body[at..]
            .chunks(4)
            .map(|g| u32::from_be_bytes(g.try_into().unwrap()))
            .collect();
        (s.uid, s.gid, gids)
    }

    #[test]
    fn squashing_rewrites_ids_in_place_and_keeps_the_checksum_right() {
        let anon = (65534, 65533);
        for (name, how, ids, want) in [
            (
                &b"host"[..],
                Squash::Root,
                (0, 0, vec![0, 5]),
                (65534, 65533, vec![65533, 5]),
            ),
            (
                b"h",
                Squash::Root,
                (1000, 100, vec![0]),
                (1000, 100, vec![65533]),
            ),
            (
                b"",
                Squash::All,
                (1000, 100, vec![4, 5]),
                (65534, 65533, vec![65533, 65533]),
            ),
            (b"abcde", Squash::None, (0, 0, vec![]), (0, 0, vec![])),
        ] {
            let mut m = call(name, ids.0, ids.1, &ids.2);
            let before = m.clone();
            let mut csum = Adjust::default();
            let changed = squash(&mut m, how, anon, &mut csum);
            assert_eq!(changed, want != ids);
            assert_eq!(cred(&m), want, "{how:?} of {ids:?}");
            assert_eq!(m.len(), before.len());
            assert_eq!(
                &m[m.len() - 4..],
                &0xfeed_u32.to_be_bytes(),
                "arguments untouched"
            );
            // The incremental adjustment equals summing the message again.
            let sum = packet::checksum::checksum;
            assert_eq!(csum.apply(sum(&before)), sum(&m));
        }
        // AUTH_NONE and truncated credentials are left alone.
        let mut w = Writer::new();
        w.call(1, 100003, 3, 1);
        let mut m = w.buf.clone();
        assert!(!squash(&mut m, Squash::All, anon, &mut Adjust::default()));
        let mut t = call(b"host", 0, 0, &[0])[..40].to_vec();
        squash(&mut t, Squash::Root, anon, &mut Adjust::default());
    }
}
