//! A NetChain client: the prototype's wire format over ordinary UDP sockets. Requests go to
//! port 8888 of the first node of the key's chain (writes head → tail, reads tail → head);
//! the tail's reply comes to port 8889 of the client's address, keeping the request's source
//! port — so each request in flight is sent from a socket of its own and its reply is known
//! by that port. A request that times out retires its socket (a late reply cannot be taken
//! for a newer request's) and makes the client fetch the master's directory again.
//!
//! Chains come from the master's directory ([`crate::control::Directory`]) or are given.

use crate::control::{self, Directory};
use crate::linear::Op;
use crate::wire::{self, op, QueryRepr, KEY_LEN};
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Fetch the whole directory from a master.
pub fn fetch_directory(master: SocketAddr, bind: Ipv4Addr) -> std::io::Result<Directory> {
    let s = UdpSocket::bind((bind, 0))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut dir = Directory::default();
    let mut buf = [0u8; 2048];
    let mut tries = 0;
    loop {
        let first = dir.chains.len() as u16;
        s.send_to(&control::directory_request(first), master)?;
        match s.recv_from(&mut buf) {
            Ok((n, from)) if from == master => {
                let Ok(p) = Directory::parse_reply(&buf[..n]) else {
                    continue;
                };
                if p.first != first || (p.first > 0 && p.epoch != dir.epoch) {
                    // The directory changed while read in pieces: start over.
                    dir = Directory::default();
                    continue;
                }
                dir.epoch = p.epoch;
                dir.value_len = p.value_len;
                dir.placement = p.placement;
                dir.chains.extend(p.chains);
                if dir.chains.len() >= usize::from(p.groups) {
                    return Ok(dir);
                }
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                tries += 1;
                if tries > 10 {
                    return Err(std::io::Error::new(
                        ErrorKind::TimedOut,
                        format!("no directory from the master at {master}"),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Nanoseconds on the wall clock (histories of several client processes merge on it).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A value as this client writes it: a number, right-aligned (the prototype's way).
pub fn value_number(v: &[u8]) -> u64 {
    let k = v.len().min(8);
    let mut b = [0u8; 8];
    b[8 - k..].copy_from_slice(&v[v.len() - k..]);
    u64::from_be_bytes(b)
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub keys: Vec<u128>,
    /// Share of writes, 0.0..=1.0.
    pub write_ratio: f64,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub duration: Duration,
    pub timeout: Duration,
    /// Tells this client's written values apart from other clients'.
    pub client_id: u32,
    /// Keep every operation (for the linearizability check).
    pub record: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub reads: u64,
    pub writes: u64,
    pub timeouts: u64,
    pub elapsed: Duration,
    /// Latencies of the answered requests, sorted (ns).
    pub latencies: Vec<u64>,
    pub history: Vec<Op>,
}

impl Report {
    pub fn ops_per_sec(&self) -> f64 {
        (self.reads + self.writes) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// The `p`-th percentile latency (0..100) in microseconds.
    pub fn percentile_us(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)] as f64 / 1000.0
    }
}

struct InFlight {
    key: u128,
    write: bool,
    value: u64,
    sent: Instant,
    invoke: u64,
}

impl InFlight {
    /// The value a reply carries when it answers this request (a write's reply echoes the
    /// value written).
    fn answered_by(&self, q: &QueryRepr) -> Option<u64> {
        let want = if self.write {
            op::WRITE_REPLY
        } else {
            op::READ_REPLY
        };
        let got = value_number(&q.value);
        (q.op == want
            && u128::from_be_bytes(q.key) == self.key
            && (!self.write || got == self.value))
            .then_some(got)
    }
}

struct Slot {
    sock: UdpSocket,
    port: u16,
    op: Option<InFlight>,
}

#[derive(Debug)]
pub struct Client {
    bind: Ipv4Addr,
    master: Option<SocketAddr>,
    dir: Directory,
    replies: UdpSocket,
    refreshed: Instant,
    /// Directory fetches after timeouts.
    pub refreshes: u64,
}

impl Client {
    /// A client on `bind` (replies arrive at its port 8889) with chains from `master`.
    pub fn connect(bind: Ipv4Addr, master: SocketAddr) -> std::io::Result<Self> {
        let dir = fetch_directory(master, bind)?;
        Self::new(bind, Some(master), dir)
    }

    /// A client with fixed chains (the prototype's way: no master).
    pub fn with_chains(
        bind: Ipv4Addr,
        chains: Vec<Vec<Ipv4Addr>>,
        value_len: usize,
    ) -> std::io::Result<Self> {
        let dir = Directory {
            epoch: 0,
            value_len: value_len as u16,
            placement: crate::placement::Placement::Hash,
            chains,
        };
        Self::new(bind, None, dir)
    }

    fn new(bind: Ipv4Addr, master: Option<SocketAddr>, dir: Directory) -> std::io::Result<Self> {
        if dir.chains.is_empty() {
            return Err(std::io::Error::other("no virtual groups"));
        }
        let replies = UdpSocket::bind((bind, wire::REPLY_PORT))?;
        Ok(Client {
            bind,
            master,
            dir,
            replies,
            refreshed: Instant::now(),
            refreshes: 0,
        })
    }

    pub fn directory(&self) -> &Directory {
        &self.dir
    }

    pub fn value_len(&self) -> usize {
        usize::from(self.dir.value_len)
    }

    fn refresh(&mut self) {
        let Some(m) = self.master else { return };
        if self.refreshed.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.refreshed = Instant::now();
        if let Ok(d) = fetch_directory(m, self.bind) {
            if !d.chains.is_empty() {
                self.dir = d;
                self.refreshes += 1;
            }
        }
    }

    fn slot(&self) -> std::io::Result<Slot> {
        let sock = UdpSocket::bind((self.bind, 0))?;
        let port = sock.local_addr()?.port();
        Ok(Slot {
            sock,
            port,
            op: None,
        })
    }

    /// Send one request from `s`; false when its group has no chain.
    fn send(&self, s: &mut Slot, key: u128, write: bool, value: u64) -> bool {
        let k: [u8; KEY_LEN] = wire::key_from_u128(key);
        let g = self.dir.placement.vgroup(&k, self.dir.chains.len() as u16);
        let Some(chain) = self
            .dir
            .chains
            .get(usize::from(g))
            .filter(|c| !c.is_empty())
        else {
            return false;
        };
        let (opc, list): (u8, Vec<Ipv4Addr>) = if write {
            (op::WRITE_REQUEST, chain.clone())
        } else {
            (op::READ_REQUEST, chain.iter().rev().copied().collect())
        };
        let v = wire::value_from_u64(if write { value } else { 0 }, self.value_len());
        let q = QueryRepr::request(opc, &list, k, &v, g);
        let to = SocketAddrV4::new(list[0], wire::REQUEST_PORT);
        s.op = Some(InFlight {
            key,
            write,
            value,
            sent: Instant::now(),
            invoke: now_ns(),
        });
        // A send that fails (no route yet) times out like a lost packet.
        let _ = s.sock.send_to(&q.emit(true), to);
        true
    }

    /// Run a workload; see [`Workload`].
    pub fn run(&mut self, w: &Workload) -> std::io::Result<Report> {
        let mut rep = Report::default();
        if w.keys.is_empty() {
            return Ok(rep);
        }
        let mut slots: Vec<Slot> = (0..w.concurrency.max(1))
            .map(|_| self.slot())
            .collect::<Result<_, _>>()?;
        let mut by_port: HashMap<u16, usize> =
            slots.iter().enumerate().map(|(i, s)| (s.port, i)).collect();
        self.replies
            .set_read_timeout(Some(Duration::from_micros(500)))?;
        let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ u64::from(w.client_id) << 32 ^ now_ns();
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut counter = 0u64;
        let vl = self.value_len();
        let start = Instant::now();
        let mut buf = [0u8; 2048];
        loop {
            let running = start.elapsed() < w.duration;
            if !running && slots.iter().all(|s| s.op.is_none()) {
                break;
            }
            if running {
                for s in slots.iter_mut().filter(|s| s.op.is_none()) {
                    let key = w.keys[(next() % w.keys.len() as u64) as usize];
                    let write = (next() % 1_000_000) as f64 / 1e6 < w.write_ratio;
                    counter += 1;
                    let value = u64::from(w.client_id) << 40 | counter;
                    if !self.send(s, key, write, value) {
                        return Err(std::io::Error::other(format!("no chain for key {key}")));
                    }
                }
            }
            match self.replies.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let Some(&i) = by_port.get(&from.port()) else {
                        continue;
                    };
                    let Ok(q) = QueryRepr::parse(&buf[..n], vl) else {
                        continue;
                    };
                    let s = &mut slots[i];
                    let Some(f) = s.op.as_ref() else { continue };
                    let Some(got) = f.answered_by(&q) else {
                        continue;
                    };
                    let done = now_ns();
                    rep.latencies.push(f.sent.elapsed().as_nanos() as u64);
                    if f.write {
                        rep.writes += 1;
                    } else {
                        rep.reads += 1;
                    }
                    if w.record {
                        rep.history.push(Op {
                            client: w.client_id,
                            key: f.key,
                            write: f.write,
                            value: got,
                            invoke: f.invoke,
                            complete: Some(done),
                        });
                    }
                    s.op = None;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e),
            }
            // Timeouts: the outcome of a write is unknown; a read tells nothing.
            let mut stale = false;
            for s in slots.iter_mut() {
                let Some(f) = s.op.as_ref() else { continue };
                if f.sent.elapsed() < w.timeout {
                    continue;
                }
                rep.timeouts += 1;
                if w.record && f.write {
                    rep.history.push(Op {
                        client: w.client_id,
                        key: f.key,
                        write: true,
                        value: f.value,
                        invoke: f.invoke,
                        complete: None,
                    });
                }
                by_port.remove(&s.port);
                let fresh = UdpSocket::bind((self.bind, 0))?;
                s.port = fresh.local_addr()?.port();
                s.sock = fresh;
                s.op = None;
                stale = true;
            }
            if stale {
                for (i, s) in slots.iter().enumerate() {
                    by_port.insert(s.port, i);
                }
                self.refresh();
            }
        }
        rep.elapsed = start.elapsed();
        rep.latencies.sort_unstable();
        Ok(rep)
    }

    /// One request, resent (from a fresh socket) until answered or `tries` run out.
    fn one(&mut self, key: u128, write: bool, value: u64, tries: usize) -> std::io::Result<Op> {
        let timeout = Duration::from_millis(300);
        for _ in 0..tries.max(1) {
            let mut s = self.slot()?;
            self.replies
                .set_read_timeout(Some(Duration::from_millis(20)))?;
            if !self.send(&mut s, key, write, value) {
                return Err(std::io::Error::other(format!("no chain for key {key}")));
            }
            let mut buf = [0u8; 2048];
            let sent = Instant::now();
            while sent.elapsed() < timeout {
                let Ok((n, from)) = self.replies.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(q) = QueryRepr::parse(&buf[..n], self.value_len()) else {
                    continue;
                };
                let Some(f) = s.op.as_ref().filter(|_| from.port() == s.port) else {
                    continue;
                };
                if let Some(value) = f.answered_by(&q) {
                    return Ok(Op {
                        client: 0,
                        key,
                        write,
                        value,
                        invoke: f.invoke,
                        complete: Some(now_ns()),
                    });
                }
            }
            self.refresh();
        }
        Err(std::io::Error::new(
            ErrorKind::TimedOut,
            format!("no answer for key {key} after {tries} tries"),
        ))
    }

    /// Read a key (its value as a number, the operation as recorded).
    pub fn get(&mut self, key: u128) -> std::io::Result<Op> {
        self.one(key, false, 0, 10)
    }

    /// Write a number to a key.
    pub fn put(&mut self, key: u128, value: u64) -> std::io::Result<Op> {
        self.one(key, true, value, 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::Placement;

    /// A client learns the master's placement with the directory (over real UDP on loopback,
    /// in two pieces), so it sends each key to the group the master put it in.
    #[test]
    fn the_directory_brings_the_placement() {
        let master = UdpSocket::bind("127.0.0.1:0").unwrap();
        master
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let addr = master.local_addr().unwrap();
        let d = Directory {
            epoch: 9,
            value_len: 16,
            placement: Placement::Range { keys: 400 },
            chains: (0..4u8)
                .map(|i| (0..200).map(|_| Ipv4Addr::new(10, 0, 9, i)).collect())
                .collect(),
        };
        let served = d.clone();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut pieces = 0;
            // Until the client stops asking.
            while let Ok((n, from)) = master.recv_from(&mut buf) {
                let first = control::parse_directory_request(&buf[..n]).unwrap();
                master.send_to(&served.reply(first), from).unwrap();
                pieces += 1;
            }
            pieces
        });
        let got = fetch_directory(addr, Ipv4Addr::LOCALHOST).unwrap();
        assert_eq!(got, d);
        let k = wire::key_from_u128(399);
        assert_eq!(got.placement.vgroup(&k, 4), 3, "range, not hash");
        assert!(t.join().unwrap() > 1, "the directory came in one piece");
    }
}
