//! The control channel: the chain master talks to each appliance's management core over UDP
//! (port [`CONTROL_PORT`] of one of the appliance's port addresses). It is a network port, so
//! every message — requests and replies — carries an HMAC-SHA256 tag under a shared secret, and
//! an appliance takes a request only when its id is not below the last one it took (a master
//! numbers its requests from the clock in microseconds, so a restarted master keeps climbing;
//! a resent request repeats its id, and every request is idempotent).
//!
//! A message: `"NCC1"`, kind (a reply sets 0x80), status (0 ok, else an error whose text is
//! the body), 2 bytes zero, id (u64), the body, then the 32-byte tag over all before it. All
//! integers big-endian.
//!
//! | kind | request body | reply body |
//! |---|---|---|
//! | 1 ping | — | boot id u64, value length u16, key capacity u32, n u8, n × (node u32, keys u32) |
//! | 2 roles | node u32, n u16, n × (vgroup u16, role bits u16, session u16) | count u32 |
//! | 3 insert | node u32, n u16, n × key | count u32 (new keys) |
//! | 4 remove | node u32, n u16, n × key | count u32 (removed) |
//! | 5 failover | offset u16, total u16, n u16, n × rule (dst u32, next u32, to u32, vgroup u16, any u8) | count u32 |
//! | 6 get | node u32, n u16, n × key | n u16, n × record-or-absent |
//! | 7 set | node u32, n u16, n × record | count u32 |
//! | 8 admin | JSON | JSON (the master's own admin requests) |
//!
//! A record: key, seq u16, session u16, value length u8, value (get marks an absent key with
//! value length 255). A failover table larger than one datagram goes in pieces; the appliance
//! replaces its table when the piece ending at `total` arrives.
//!
//! The master's **directory** for clients is read-only and not signed: `"NCD1"`, first vgroup
//! u16 → `"NCD1"`, epoch u64, vgroups u16, value length u16, first u16, n u16,
//! n × (entries u8, entries × node u32) — each vgroup's chain head → tail, as many as fit.

use crate::node::FailoverRule;
use crate::store::Record;
use crate::wire::KEY_LEN;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::Ipv4Addr;

pub const CONTROL_PORT: u16 = 8890;
/// Where a master listens for clients (directory) and its admin requests.
pub const MASTER_PORT: u16 = 8891;
const MAGIC: &[u8; 4] = b"NCC1";
const DIR_MAGIC: &[u8; 4] = b"NCD1";
const HEADER: usize = 16;
pub const TAG_LEN: usize = 32;
/// A control datagram's payload at most (one Ethernet frame).
pub const MAX_DATAGRAM: usize = 1400;
/// Room for a body in one datagram.
pub const MAX_BODY: usize = MAX_DATAGRAM - HEADER - TAG_LEN;
pub const RESPONSE: u8 = 0x80;

pub mod kind {
    pub const PING: u8 = 1;
    pub const ROLES: u8 = 2;
    pub const INSERT: u8 = 3;
    pub const REMOVE: u8 = 4;
    pub const FAILOVER: u8 = 5;
    pub const GET: u8 = 6;
    pub const SET: u8 = 7;
    pub const ADMIN: u8 = 8;
}

/// Roles entries, keys, records and rules one request carries at most.
pub const ROLES_PER_MSG: usize = (MAX_BODY - 6) / 6;
pub const KEYS_PER_MSG: usize = (MAX_BODY - 6) / KEY_LEN;
pub const RULES_PER_MSG: usize = (MAX_BODY - 6) / 15;
pub fn records_per_msg(value_len: usize) -> usize {
    (MAX_BODY - 6) / (KEY_LEN + 5 + value_len)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not a control message")]
    NotControl,
    #[error("bad authentication tag")]
    BadTag,
    #[error("truncated or malformed body")]
    Malformed,
    #[error("request id {0} is older than the last one taken")]
    Replayed(u64),
    #[error("{0}")]
    Refused(String),
}

/// A request from the master to an appliance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ping,
    Roles {
        node: Ipv4Addr,
        /// (vgroup, role bits, session); bits 0 leaves the group.
        groups: Vec<(u16, u16, u16)>,
    },
    Insert {
        node: Ipv4Addr,
        keys: Vec<[u8; KEY_LEN]>,
    },
    Remove {
        node: Ipv4Addr,
        keys: Vec<[u8; KEY_LEN]>,
    },
    Failover {
        offset: u16,
        total: u16,
        rules: Vec<FailoverRule>,
    },
    Get {
        node: Ipv4Addr,
        keys: Vec<[u8; KEY_LEN]>,
    },
    Set {
        node: Ipv4Addr,
        records: Vec<Record>,
    },
    Admin(String),
}

/// An appliance's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Pong {
        boot: u64,
        value_len: u16,
        capacity: u32,
        nodes: Vec<(Ipv4Addr, u32)>,
    },
    Count(u32),
    Records(Vec<Option<Record>>),
    Admin(String),
}

/// Reads a body front to back.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Malformed);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn addr(&mut self) -> Result<Ipv4Addr, Error> {
        Ok(Ipv4Addr::from(self.u32()?))
    }
    fn key(&mut self) -> Result<[u8; KEY_LEN], Error> {
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(self.take(KEY_LEN)?);
        Ok(k)
    }
    fn keys(&mut self) -> Result<Vec<[u8; KEY_LEN]>, Error> {
        let n = self.u16()?;
        (0..n).map(|_| self.key()).collect()
    }
    /// A record; `None` for get's absent marker.
    fn record(&mut self) -> Result<Option<Record>, Error> {
        let key = self.key()?;
        let seq = self.u16()?;
        let session = self.u16()?;
        let len = self.u8()?;
        if len == 255 {
            return Ok(None);
        }
        let value = self.take(usize::from(len))?.to_vec();
        Ok(Some(Record {
            key,
            seq,
            session,
            value,
        }))
    }
    fn end(&self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Malformed)
        }
    }
}

fn put_keys(out: &mut Vec<u8>, keys: &[[u8; KEY_LEN]]) {
    out.extend_from_slice(&(keys.len() as u16).to_be_bytes());
    for k in keys {
        out.extend_from_slice(k);
    }
}

fn put_record(out: &mut Vec<u8>, r: Option<&Record>, key: &[u8; KEY_LEN]) {
    out.extend_from_slice(key);
    match r {
        Some(r) => {
            out.extend_from_slice(&r.seq.to_be_bytes());
            out.extend_from_slice(&r.session.to_be_bytes());
            out.push(r.value.len().min(254) as u8);
            out.extend_from_slice(&r.value[..r.value.len().min(254)]);
        }
        None => out.extend_from_slice(&[0, 0, 0, 0, 255]),
    }
}

impl Request {
    pub fn kind(&self) -> u8 {
        match self {
            Request::Ping => kind::PING,
            Request::Roles { .. } => kind::ROLES,
            Request::Insert { .. } => kind::INSERT,
            Request::Remove { .. } => kind::REMOVE,
            Request::Failover { .. } => kind::FAILOVER,
            Request::Get { .. } => kind::GET,
            Request::Set { .. } => kind::SET,
            Request::Admin(_) => kind::ADMIN,
        }
    }

    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Request::Ping => {}
            Request::Roles { node, groups } => {
                out.extend_from_slice(&node.octets());
                out.extend_from_slice(&(groups.len() as u16).to_be_bytes());
                for (g, b, s) in groups {
                    for v in [g, b, s] {
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                }
            }
            Request::Insert { node, keys }
            | Request::Remove { node, keys }
            | Request::Get { node, keys } => {
                out.extend_from_slice(&node.octets());
                put_keys(&mut out, keys);
            }
            Request::Failover {
                offset,
                total,
                rules,
            } => {
                for v in [offset, total, &(rules.len() as u16)] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                for r in rules {
                    for a in [r.dst, r.next, r.to] {
                        out.extend_from_slice(&a.octets());
                    }
                    out.extend_from_slice(&r.vgroup.unwrap_or(0).to_be_bytes());
                    out.push(u8::from(r.vgroup.is_none()));
                }
            }
            Request::Set { node, records } => {
                out.extend_from_slice(&node.octets());
                out.extend_from_slice(&(records.len() as u16).to_be_bytes());
                for r in records {
                    put_record(&mut out, Some(r), &r.key);
                }
            }
            Request::Admin(j) => out.extend_from_slice(j.as_bytes()),
        }
        out
    }

    pub fn parse(kind: u8, body: &[u8]) -> Result<Self, Error> {
        let mut c = Cursor(body);
        let r = match kind {
            kind::PING => Request::Ping,
            kind::ROLES => {
                let node = c.addr()?;
                let n = c.u16()?;
                let groups = (0..n)
                    .map(|_| Ok((c.u16()?, c.u16()?, c.u16()?)))
                    .collect::<Result<_, Error>>()?;
                Request::Roles { node, groups }
            }
            kind::INSERT | kind::REMOVE | kind::GET => {
                let node = c.addr()?;
                let keys = c.keys()?;
                match kind {
                    kind::INSERT => Request::Insert { node, keys },
                    kind::REMOVE => Request::Remove { node, keys },
                    _ => Request::Get { node, keys },
                }
            }
            kind::FAILOVER => {
                let (offset, total, n) = (c.u16()?, c.u16()?, c.u16()?);
                let rules = (0..n)
                    .map(|_| {
                        let (dst, next, to) = (c.addr()?, c.addr()?, c.addr()?);
                        let g = c.u16()?;
                        let any = c.u8()? != 0;
                        Ok(FailoverRule {
                            dst,
                            next,
                            vgroup: (!any).then_some(g),
                            to,
                        })
                    })
                    .collect::<Result<_, Error>>()?;
                Request::Failover {
                    offset,
                    total,
                    rules,
                }
            }
            kind::SET => {
                let node = c.addr()?;
                let n = c.u16()?;
                let records = (0..n)
                    .map(|_| c.record()?.ok_or(Error::Malformed))
                    .collect::<Result<_, Error>>()?;
                Request::Set { node, records }
            }
            kind::ADMIN => {
                let s = std::str::from_utf8(c.take(body.len())?).map_err(|_| Error::Malformed)?;
                Request::Admin(s.to_string())
            }
            _ => return Err(Error::Malformed),
        };
        c.end()?;
        Ok(r)
    }
}

impl Reply {
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Reply::Pong {
                boot,
                value_len,
                capacity,
                nodes,
            } => {
                out.extend_from_slice(&boot.to_be_bytes());
                out.extend_from_slice(&value_len.to_be_bytes());
                out.extend_from_slice(&capacity.to_be_bytes());
                out.push(nodes.len().min(255) as u8);
                for (a, k) in nodes.iter().take(255) {
                    out.extend_from_slice(&a.octets());
                    out.extend_from_slice(&k.to_be_bytes());
                }
            }
            Reply::Count(n) => out.extend_from_slice(&n.to_be_bytes()),
            Reply::Records(rs) => {
                out.extend_from_slice(&(rs.len() as u16).to_be_bytes());
                for r in rs {
                    let key = r.as_ref().map_or([0; KEY_LEN], |r| r.key);
                    put_record(&mut out, r.as_ref(), &key);
                }
            }
            Reply::Admin(j) => out.extend_from_slice(j.as_bytes()),
        }
        out
    }

    /// The reply to a request of `kind`.
    pub fn parse(kind: u8, body: &[u8]) -> Result<Self, Error> {
        let mut c = Cursor(body);
        let r = match kind {
            kind::PING => {
                let boot = c.u64()?;
                let value_len = c.u16()?;
                let capacity = c.u32()?;
                let n = c.u8()?;
                let nodes = (0..n)
                    .map(|_| Ok((c.addr()?, c.u32()?)))
                    .collect::<Result<_, Error>>()?;
                Reply::Pong {
                    boot,
                    value_len,
                    capacity,
                    nodes,
                }
            }
            kind::GET => {
                let n = c.u16()?;
                Reply::Records((0..n).map(|_| c.record()).collect::<Result<_, _>>()?)
            }
            kind::ADMIN => {
                let s = std::str::from_utf8(c.take(body.len())?).map_err(|_| Error::Malformed)?;
                Reply::Admin(s.to_string())
            }
            kind::ROLES | kind::INSERT | kind::REMOVE | kind::FAILOVER | kind::SET => {
                Reply::Count(c.u32()?)
            }
            _ => return Err(Error::Malformed),
        };
        c.end()?;
        Ok(r)
    }
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

/// A message on the wire: header, body, tag.
pub fn seal(secret: &[u8], kind: u8, status: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[kind, status, 0, 0]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    let mut m = mac(secret);
    m.update(&out);
    out.extend_from_slice(&m.finalize().into_bytes());
    out
}

/// A message whose tag checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened<'a> {
    pub kind: u8,
    pub status: u8,
    pub id: u64,
    pub body: &'a [u8],
}

/// Check a message's tag (in constant time) and split it.
pub fn open<'a>(secret: &[u8], msg: &'a [u8]) -> Result<Opened<'a>, Error> {
    if msg.len() < HEADER + TAG_LEN || &msg[..4] != MAGIC {
        return Err(Error::NotControl);
    }
    let (signed, tag) = msg.split_at(msg.len() - TAG_LEN);
    let mut m = mac(secret);
    m.update(signed);
    m.verify_slice(tag).map_err(|_| Error::BadTag)?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&signed[8..16]);
    Ok(Opened {
        kind: signed[4],
        status: signed[5],
        id: u64::from_be_bytes(id),
        body: &signed[HEADER..],
    })
}

/// A request as the master sends it.
pub fn request(secret: &[u8], id: u64, r: &Request) -> Vec<u8> {
    seal(secret, r.kind(), 0, id, &r.body())
}

/// The appliance's (or master's) answer to request `id` of `kind`: a reply or a refusal.
pub fn respond(secret: &[u8], kind: u8, id: u64, r: Result<Reply, String>) -> Vec<u8> {
    match r {
        Ok(r) => seal(secret, kind | RESPONSE, 0, id, &r.body()),
        Err(e) => seal(secret, kind | RESPONSE, 1, id, e.as_bytes()),
    }
}

/// Read the answer to request `id` of `kind`.
pub fn read_response(secret: &[u8], kind: u8, id: u64, msg: &[u8]) -> Result<Reply, Error> {
    let o = open(secret, msg)?;
    if o.kind != kind | RESPONSE || o.id != id {
        return Err(Error::NotControl);
    }
    if o.status != 0 {
        return Err(Error::Refused(String::from_utf8_lossy(o.body).into_owned()));
    }
    Reply::parse(kind, o.body)
}

/// The receiving side's replay guard: requests are taken in id order (a resent one repeats
/// the last id).
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplayGuard {
    last: u64,
}

impl ReplayGuard {
    pub fn admit(&mut self, id: u64) -> Result<(), Error> {
        if id < self.last {
            return Err(Error::Replayed(id));
        }
        self.last = id;
        Ok(())
    }
}

/// Request ids from the clock: microseconds since the epoch, then one up per request.
#[derive(Debug)]
pub struct Ids(u64);

impl Default for Ids {
    fn default() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Ids(now)
    }
}

impl Ids {
    pub fn next_id(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// The directory: each virtual group's chain, head → tail.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Directory {
    pub epoch: u64,
    pub value_len: u16,
    /// How keys map to the groups.
    pub placement: crate::placement::Placement,
    pub chains: Vec<Vec<Ipv4Addr>>,
}

/// One directory answer ([`Directory::parse_reply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryPiece {
    pub epoch: u64,
    /// Groups in the whole directory.
    pub groups: u16,
    pub value_len: u16,
    pub placement: crate::placement::Placement,
    /// The group of the first chain here.
    pub first: u16,
    pub chains: Vec<Vec<Ipv4Addr>>,
}

pub fn directory_request(first: u16) -> Vec<u8> {
    let mut v = DIR_MAGIC.to_vec();
    v.extend_from_slice(&first.to_be_bytes());
    v
}

/// The first vgroup a directory request asks from.
pub fn parse_directory_request(p: &[u8]) -> Option<u16> {
    (p.len() == 6 && &p[..4] == DIR_MAGIC).then(|| u16::from_be_bytes([p[4], p[5]]))
}

impl Directory {
    /// The answer to a request from `first`: as many chains as fit.
    pub fn reply(&self, first: u16) -> Vec<u8> {
        let mut v = DIR_MAGIC.to_vec();
        v.extend_from_slice(&self.epoch.to_be_bytes());
        v.extend_from_slice(&(self.chains.len() as u16).to_be_bytes());
        v.extend_from_slice(&self.value_len.to_be_bytes());
        // Placement: 0 hash, 1 range (then the key space's size).
        let (kind, keys) = match self.placement {
            crate::placement::Placement::Hash => (0u8, 0u64),
            crate::placement::Placement::Range { keys } => (1, keys),
        };
        v.push(kind);
        v.extend_from_slice(&keys.to_be_bytes());
        v.extend_from_slice(&first.to_be_bytes());
        let at = v.len();
        v.extend_from_slice(&[0, 0]);
        let mut n = 0u16;
        for c in self.chains.iter().skip(usize::from(first)) {
            if v.len() + 1 + 4 * c.len() > MAX_DATAGRAM {
                break;
            }
            v.push(c.len() as u8);
            for a in c {
                v.extend_from_slice(&a.octets());
            }
            n += 1;
        }
        v[at..at + 2].copy_from_slice(&n.to_be_bytes());
        v
    }

    /// Read one answer.
    pub fn parse_reply(p: &[u8]) -> Result<DirectoryPiece, Error> {
        let mut c = Cursor(p);
        if c.take(4)? != DIR_MAGIC {
            return Err(Error::NotControl);
        }
        let (epoch, groups, value_len) = (c.u64()?, c.u16()?, c.u16()?);
        let placement = match (c.u8()?, c.u64()?) {
            (0, _) => crate::placement::Placement::Hash,
            (1, keys) => crate::placement::Placement::Range { keys },
            _ => return Err(Error::Malformed),
        };
        let (first, n) = (c.u16()?, c.u16()?);
        let chains = (0..n)
            .map(|_| {
                let k = c.u8()?;
                (0..k).map(|_| c.addr()).collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()?;
        c.end()?;
        Ok(DirectoryPiece {
            epoch,
            groups,
            value_len,
            placement,
            first,
            chains,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 9, n)
    }

    #[test]
    fn requests_round_trip_and_are_authenticated() {
        let k = b"secret";
        let reqs = [
            Request::Ping,
            Request::Roles {
                node: a(1),
                groups: vec![(0, 3, 1), (7, 1, 0)],
            },
            Request::Insert {
                node: a(1),
                keys: vec![[1; 16], [2; 16]],
            },
            Request::Failover {
                offset: 0,
                total: 2,
                rules: vec![
                    FailoverRule {
                        dst: a(2),
                        next: Ipv4Addr::UNSPECIFIED,
                        vgroup: Some(4),
                        to: a(4),
                    },
                    FailoverRule {
                        dst: a(2),
                        next: a(3),
                        vgroup: None,
                        to: Ipv4Addr::UNSPECIFIED,
                    },
                ],
            },
            Request::Set {
                node: a(4),
                records: vec![Record {
                    key: [9; 16],
                    seq: 77,
                    session: 2,
                    value: vec![5; 16],
                }],
            },
            Request::Admin("{\"op\":\"status\"}".into()),
        ];
        for (i, r) in reqs.iter().enumerate() {
            let m = request(k, 100 + i as u64, r);
            let o = open(k, &m).unwrap();
            assert_eq!(o.id, 100 + i as u64);
            assert_eq!(&Request::parse(o.kind, o.body).unwrap(), r);
            // Wrong secret, or any bit flipped: refused.
            assert_eq!(open(b"other", &m), Err(Error::BadTag));
            for bit in [0usize, 5 * 8, m.len() * 8 - 1] {
                let mut bad = m.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(open(k, &bad).is_err(), "bit {bit}");
            }
        }
        assert!(open(k, b"short").is_err());
    }

    #[test]
    fn replies_round_trip() {
        let k = b"s";
        let rec = Record {
            key: [3; 16],
            seq: 5,
            session: 0,
            value: vec![1; 16],
        };
        for (kd, r) in [
            (
                kind::PING,
                Reply::Pong {
                    boot: 42,
                    value_len: 16,
                    capacity: 65536,
                    nodes: vec![(a(1), 10)],
                },
            ),
            (kind::GET, Reply::Records(vec![Some(rec), None])),
            (kind::SET, Reply::Count(3)),
        ] {
            let m = respond(k, kd, 9, Ok(r.clone()));
            assert_eq!(read_response(k, kd, 9, &m).unwrap(), r);
            // Not the answer to another request.
            assert!(read_response(k, kd, 10, &m).is_err());
        }
        let m = respond(k, kind::INSERT, 1, Err("the store is full".into()));
        assert_eq!(
            read_response(k, kind::INSERT, 1, &m),
            Err(Error::Refused("the store is full".into()))
        );
    }

    #[test]
    fn replay_guard_takes_ids_in_order() {
        let mut g = ReplayGuard::default();
        g.admit(10).unwrap();
        g.admit(10).unwrap();
        g.admit(11).unwrap();
        assert_eq!(g.admit(9), Err(Error::Replayed(9)));
    }

    #[test]
    fn bodies_fit_one_datagram() {
        let keys = vec![[7u8; 16]; KEYS_PER_MSG];
        let m = request(b"s", 1, &Request::Insert { node: a(1), keys });
        assert!(m.len() <= MAX_DATAGRAM);
        let records = vec![
            Record {
                key: [1; 16],
                seq: 1,
                session: 0,
                value: vec![0; 128]
            };
            records_per_msg(128)
        ];
        let m = request(
            b"s",
            1,
            &Request::Set {
                node: a(1),
                records,
            },
        );
        assert!(m.len() <= MAX_DATAGRAM);
        let rules = vec![
            FailoverRule {
                dst: a(1),
                next: a(2),
                vgroup: None,
                to: a(3)
            };
            RULES_PER_MSG
        ];
        let m = request(
            b"s",
            1,
            &Request::Failover {
                offset: 0,
                total: RULES_PER_MSG as u16,
                rules,
            },
        );
        assert!(m.len() <= MAX_DATAGRAM);
    }

    #[test]
    fn directory_in_pieces() {
        let d = Directory {
            epoch: 3,
            value_len: 16,
            placement: crate::placement::Placement::Range { keys: 1 << 40 },
            chains: (0..200).map(|i| vec![a(1), a(2), a(i as u8)]).collect(),
        };
        let mut got = Vec::new();
        while got.len() < 200 {
            let first = got.len() as u16;
            assert_eq!(
                parse_directory_request(&directory_request(first)),
                Some(first)
            );
            let r = d.reply(first);
            assert!(r.len() <= MAX_DATAGRAM);
            let p = Directory::parse_reply(&r).unwrap();
            assert_eq!(
                (p.epoch, p.groups, p.value_len, p.placement, p.first),
                (3, 200, 16, d.placement, first)
            );
            assert!(!p.chains.is_empty());
            got.extend(p.chains);
        }
        assert_eq!(got, d.chains);
    }
}
