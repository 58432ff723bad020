//! `nfs-bench`: an NFSv3-over-TCP load generator for the TCP virtual server, built on this
//! crate's codecs. One TCP connection, calls pipelined up to `--inflight` at once.
//!
//! - `io`: create a file, WRITE `--size-mib` MiB in `--io`-byte transfers (UNSTABLE, then
//!   COMMIT), READ it back and check every byte, remove it; prints MiB/s both ways;
//! - `meta`: GETATTR and LOOKUP alternating for `--duration` seconds; prints operations per
//!   second and latency percentiles;
//! - `corpus`: `--count` malformed calls ([`nfs_rewrite::corpus`]) on the file and its
//!   directory, each sent over TCP and over UDP; every answer is checked against the error
//!   a server would give; prints the tally by kind (a fortification test, not a benchmark);
//! - `getattr-udp`: GETATTR over UDP for `--duration` seconds, `--inflight` at once (resent
//!   after 1 s, as a UDP client does): operations per second and latency percentiles;
//! - `flood-udp`: GETATTR over UDP as fast as the socket takes them for `--duration` seconds,
//!   never waiting: calls sent and answered per second (the flood of the fairness benchmark).
//!
//! The UDP modes send from `--bind` (an address of the client's host) if given.
//!
//! Point it at the virtual server (`--export /` and `--dir NAME`: the export's name in the
//! virtual root) or straight at a server (`--export /its/path`), with the same work, to
//! compare the two. Prints one JSON object.

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use nfs_rewrite::wire::nfs3::Proc;
use nfs_rewrite::wire::record::{frame, RecordReader};
use nfs_rewrite::wire::rpc::{self, program, Writer};
use nfs_rewrite::wire::Cursor;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Io,
    Meta,
    Corpus,
    GetattrUdp,
    FloodUdp,
}

#[derive(Debug, Parser)]
#[command(about = "NFSv3-over-TCP load: pipelined READ/WRITE or GETATTR/LOOKUP")]
struct Args {
    /// The server (or the virtual server's address).
    #[arg(long)]
    server: std::net::Ipv4Addr,
    #[arg(long, default_value_t = 20048)]
    mount_port: u16,
    #[arg(long, default_value_t = 2049)]
    nfs_port: u16,
    /// The export to mount ("/" on the virtual server).
    #[arg(long)]
    export: String,
    /// A directory to LOOKUP under the export first (the server's name in the virtual root).
    #[arg(long)]
    dir: Option<String>,
    #[arg(long, value_enum, default_value = "io")]
    mode: Mode,
    /// io: file size (MiB).
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
    /// io: bytes per READ/WRITE.
    #[arg(long, default_value_t = 1 << 20)]
    io: u32,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    /// meta: seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// corpus: malformed calls per transport.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// corpus: the generator's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// getattr-udp, flood-udp: the local address to send from.
    #[arg(long)]
    bind: Option<std::net::Ipv4Addr>,
    /// corpus: the largest UDP call (long names are kept within it: one datagram, no IP
    /// fragments).
    #[arg(long, default_value_t = 1400)]
    udp_max: usize,
}

/// One connection: calls out, replies in, matched by xid.
struct Conn {
    s: TcpStream,
    reader: RecordReader,
    ready: Vec<Vec<u8>>,
    xid: u32,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Self> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            s,
            reader: RecordReader::new(4 << 20),
            ready: Vec::new(),
            xid: std::process::id() << 12,
        })
    }

    /// Send a call (args after the header); returns its xid.
    fn send(&mut self, prog: u32, proc_: u32, args: &[u8]) -> Result<u32> {
        self.xid = self.xid.wrapping_add(1);
        let mut w = Writer::new();
        w.call_sys(self.xid, prog, 3, proc_, 0, 0).fixed(args);
        self.s.write_all(&frame(&w.buf))?;
        Ok(self.xid)
    }

    /// The next reply: (xid, results).
    fn recv(&mut self) -> Result<(u32, Vec<u8>)> {
        let msg = self.recv_message()?;
        match rpc::parse(&msg) {
            Ok(rpc::Message::Reply(rpc::Reply::Accepted {
                xid,
                stat: rpc::AcceptStat::Success { results_at },
                ..
            })) => Ok((xid, msg[results_at..].to_vec())),
            other => bail!("RPC error: {other:?}"),
        }
    }

    /// The next whole message.
    fn recv_message(&mut self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 256 * 1024];
        while self.ready.is_empty() {
            let n = self.s.read(&mut buf)?;
            if n == 0 {
                bail!("connection closed by the server");
            }
            let ready = &mut self.ready;
            self.reader
                .feed(&buf[..n], |r| {
                    ready.push(r);
                    true
                })
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(self.ready.remove(0))
    }

    fn call(&mut self, prog: u32, proc_: u32, args: &[u8]) -> Result<Vec<u8>> {
        let x = self.send(prog, proc_, args)?;
        let (y, res) = self.recv()?;
        if x != y {
            bail!("reply to xid {y}, expected {x}");
        }
        Ok(res)
    }

    /// One NFSv3 call with arguments built by `build`, answered NFS3_OK: the results after
    /// the status.
    fn nfs(&mut self, p: Proc, what: &str, build: impl FnOnce(&mut Writer)) -> Result<Vec<u8>> {
        let res = self.call(program::NFS, p as u32, &args(build))?;
        ok(&res, what)?;
        Ok(res[4..].to_vec())
    }
}

/// nfsstat3 first; OK or an error naming `what`.
fn ok<'a>(res: &'a [u8], what: &str) -> Result<Cursor<'a>> {
    let mut c = Cursor::new(res);
    let st = c.u32().map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    if st != 0 {
        bail!("{what}: nfsstat3 {st}");
    }
    Ok(c)
}

fn handle(c: &mut Cursor<'_>) -> Result<Vec<u8>> {
    let (_, h) = c
        .opaque_var(64)
        .map_err(|e| anyhow::anyhow!("handle: {e}"))?;
    Ok(h.to_vec())
}

fn post_op_fh(c: &mut Cursor<'_>) -> Result<Vec<u8>> {
    if !c.bool().map_err(|e| anyhow::anyhow!("{e}"))? {
        bail!("no handle in the reply");
    }
    handle(c)
}

fn args(f: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut w = Writer::new();
    f(&mut w);
    w.buf
}

fn pattern(offset: u64, n: usize) -> Vec<u8> {
    (0..n as u64)
        .map(|i| ((offset + i).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Pipelined calls: `make(i)` builds call i's (proc, args); `check(i, results)` checks its
/// reply. Returns the latencies (µs).
fn pipeline(
    conn: &mut Conn,
    count: usize,
    inflight: usize,
    deadline: Option<Instant>,
    mut make: impl FnMut(usize) -> (u32, Vec<u8>),
    mut check: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<Vec<u64>> {
    let mut out: HashMap<u32, (usize, Instant)> = HashMap::new();
    let mut lat = Vec::new();
    let mut next = 0;
    loop {
        let open = deadline.is_none_or(|d| Instant::now() < d);
        while open && next < count && out.len() < inflight {
            let (p, a) = make(next);
            let x = conn.send(program::NFS, p, &a)?;
            out.insert(x, (next, Instant::now()));
            next += 1;
        }
        if out.is_empty() {
            return Ok(lat);
        }
        let (x, res) = conn.recv()?;
        let Some((i, t0)) = out.remove(&x) else {
            bail!("reply to no call of ours (xid {x})");
        };
        lat.push(t0.elapsed().as_micros() as u64);
        check(i, &res)?;
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    let mut mnt = Conn::open(SocketAddr::from((a.server, a.mount_port)))?;
    let res = mnt.call(
        program::MOUNT,
        1,
        &args(|w| {
            w.opaque(a.export.as_bytes());
        }),
    )?;
    let mut c = Cursor::new(&res);
    if c.u32()? != 0 {
        bail!("MNT {} refused", a.export);
    }
    let root = handle(&mut c)?;
    let mut conn = Conn::open(SocketAddr::from((a.server, a.nfs_port)))?;
    let dir = match &a.dir {
        Some(d) => {
            let res = conn.nfs(Proc::Lookup, "LOOKUP", |w| {
                w.opaque(&root).opaque(d.as_bytes());
            })?;
            handle(&mut Cursor::new(&res))?
        }
        None => root,
    };
    let name = format!("nfs-bench-{}.bin", std::process::id());
    let res = conn.nfs(Proc::Create, "CREATE", |w| {
        // UNCHECKED, sattr3: mode 0644, nothing else set.
        w.opaque(&dir).opaque(name.as_bytes()).u32(0);
        w.bool(true)
            .u32(0o644)
            .bool(false)
            .bool(false)
            .bool(false)
            .u32(0)
            .u32(0);
    })?;
    let file = post_op_fh(&mut Cursor::new(&res))?;
    let report = match a.mode {
        Mode::Io => {
            let size = a.size_mib << 20;
            let chunks = size.div_ceil(u64::from(a.io)) as usize;
            let len = |i: usize| (size - i as u64 * u64::from(a.io)).min(u64::from(a.io)) as usize;
            let t0 = Instant::now();
            pipeline(
                &mut conn,
                chunks,
                a.inflight,
                None,
                |i| {
                    let off = i as u64 * u64::from(a.io);
                    let data = pattern(off, len(i));
                    let w = args(|w| {
                        w.opaque(&file)
                            .u64(off)
                            .u32(data.len() as u32)
                            .u32(0)
                            .opaque(&data);
                    });
                    (Proc::Write as u32, w)
                },
                |_, res| ok(res, "WRITE").map(|_| ()),
            )?;
            conn.nfs(Proc::Commit, "COMMIT", |w| {
                w.opaque(&file).u64(0).u32(0);
            })?;
            let write_s = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            pipeline(
                &mut conn,
                chunks,
                a.inflight,
                None,
                |i| {
                    let off = i as u64 * u64::from(a.io);
                    let w = args(|w| {
                        w.opaque(&file).u64(off).u32(len(i) as u32);
                    });
                    (Proc::Read as u32, w)
                },
                |i, res| {
                    let mut c = ok(res, "READ")?;
                    if c.bool()? {
                        c.skip(84)?;
                    }
                    let _count = c.u32()?;
                    let _eof = c.bool()?;
                    let (_, data) = c.opaque_var(usize::MAX)?;
                    if data != pattern(i as u64 * u64::from(a.io), len(i)).as_slice() {
                        bail!(
                            "READ of chunk {i}: {} bytes that differ from those written",
                            data.len()
                        );
                    }
                    Ok(())
                },
            )?;
            let read_s = t1.elapsed().as_secs_f64();
            let mib = size as f64 / (1 << 20) as f64;
            serde_json::json!({"mode": "io", "size_mib": a.size_mib, "io": a.io,
                "inflight": a.inflight, "write_s": write_s, "read_s": read_s,
                "write_mib_s": mib / write_s, "read_mib_s": mib / read_s})
        }
        Mode::Corpus => {
            let tcp = corpus_over_tcp(&mut conn, &file, &dir, &a)?;
            let udp = corpus_over_udp(SocketAddr::from((a.server, a.nfs_port)), &file, &dir, &a)?;
            serde_json::json!({"mode": "corpus", "count": a.count, "seed": a.seed,
                "tcp": tcp, "udp": udp})
        }
        Mode::GetattrUdp | Mode::FloodUdp => {
            getattr_udp(SocketAddr::from((a.server, a.nfs_port)), &file, &a)?
        }
        Mode::Meta => {
            let deadline = Instant::now() + Duration::from_secs_f64(a.duration);
            let t0 = Instant::now();
            let name_b = name.clone();
            let mut lat = pipeline(
                &mut conn,
                usize::MAX,
                a.inflight,
                Some(deadline),
                |i| {
                    if i % 2 == 0 {
                        (
                            Proc::Getattr as u32,
                            args(|w| {
                                w.opaque(&file);
                            }),
                        )
                    } else {
                        (
                            Proc::Lookup as u32,
                            args(|w| {
                                w.opaque(&dir).opaque(name_b.as_bytes());
                            }),
                        )
                    }
                },
                |i, res| ok(res, if i % 2 == 0 { "GETATTR" } else { "LOOKUP" }).map(|_| ()),
            )?;
            let secs = t0.elapsed().as_secs_f64();
            let (p50, p99) = percentiles(&mut lat);
            serde_json::json!({"mode": "meta", "inflight": a.inflight, "ops": lat.len(),
                "seconds": secs, "ops_per_sec": lat.len() as f64 / secs,
                "p50_us": p50, "p99_us": p99})
        }
    };
    conn.nfs(Proc::Remove, "REMOVE", |w| {
        w.opaque(&dir).opaque(name.as_bytes());
    })?;
    println!("{report}");
    Ok(())
}

/// The tally of one transport's corpus, by kind: sent, answered right, answered wrong,
/// unanswered (right only for the calls whose header does not decode).
#[derive(Default)]
struct Tally(std::collections::BTreeMap<&'static str, [u64; 4]>);

impl Tally {
    fn count(&mut self, kind: &'static str, i: usize) {
        self.0.entry(kind).or_default()[i] += 1;
    }
    fn json(&self) -> serde_json::Value {
        let by_kind: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    serde_json::json!({"sent": v[0], "right": v[1], "wrong": v[2],
                    "unanswered": v[3]}),
                )
            })
            .collect();
        let sum = |i: usize| self.0.values().map(|v| v[i]).sum::<u64>();
        serde_json::json!({"sent": sum(0), "right": sum(1), "wrong": sum(2),
            "unanswered": sum(3), "by_kind": by_kind})
    }
}

fn xid_of(msg: &[u8]) -> u32 {
    msg.get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The corpus over the TCP connection, 32 calls in flight (the unanswerable ones are sent
/// without waiting).
fn corpus_over_tcp(
    conn: &mut Conn,
    file: &[u8],
    dir: &[u8],
    a: &Args,
) -> Result<serde_json::Value> {
    use nfs_rewrite::corpus::{answered_right, generate, Expect};
    let corpus = generate(file, dir, a.count, a.seed, 0x7c00_0000, usize::MAX);
    let mut t = Tally::default();
    let mut out: HashMap<u32, usize> = HashMap::new();
    let mut next = 0;
    while next < corpus.len() || !out.is_empty() {
        while next < corpus.len() && out.len() < 32 {
            let m = &corpus[next];
            conn.s.write_all(&frame(&m.msg))?;
            t.count(m.kind, 0);
            if m.expect == Expect::Silent {
                t.count(m.kind, 3);
            } else {
                out.insert(xid_of(&m.msg), next);
            }
            next += 1;
        }
        if out.is_empty() {
            continue;
        }
        let r = conn.recv_message()?;
        let Some(i) = out.remove(&xid_of(&r)) else {
            bail!(
                "corpus over TCP: a reply to no call of ours (xid {:#x})",
                xid_of(&r)
            );
        };
        let m = &corpus[i];
        t.count(
            m.kind,
            if answered_right(&r, xid_of(&m.msg), m.expect) {
                1
            } else {
                2
            },
        );
    }
    Ok(t.json())
}

/// The corpus over UDP (calls of at most `--udp-max` bytes), one call at a time (each waits up to 2 s for its answer; one resend
/// after 1 s, as a client would).
fn corpus_over_udp(to: SocketAddr, file: &[u8], dir: &[u8], a: &Args) -> Result<serde_json::Value> {
    use nfs_rewrite::corpus::{answered_right, generate, Expect};
    let corpus = generate(file, dir, a.count, a.seed, 0x7d00_0000, a.udp_max);
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.connect(to)?;
    let mut t = Tally::default();
    let mut buf = vec![0u8; 65536];
    for m in &corpus {
        t.count(m.kind, 0);
        s.send(&m.msg)?;
        if m.expect == Expect::Silent {
            t.count(m.kind, 3);
            continue;
        }
        let xid = xid_of(&m.msg);
        let t0 = Instant::now();
        let mut resent = false;
        let got = loop {
            let left = Duration::from_secs(2).saturating_sub(t0.elapsed());
            if left.is_zero() {
                break None;
            }
            s.set_read_timeout(Some(left.min(Duration::from_secs(1))))?;
            match s.recv(&mut buf) {
                Ok(n) if xid_of(&buf[..n]) == xid => break Some(buf[..n].to_vec()),
                Ok(_) => {} // a late answer to an earlier call
                Err(_) if !resent => {
                    resent = true;
                    s.send(&m.msg)?;
                }
                Err(_) => {}
            }
        };
        match got {
            Some(r) => t.count(
                m.kind,
                if answered_right(&r, xid, m.expect) {
                    1
                } else {
                    2
                },
            ),
            None => t.count(m.kind, 3),
        }
    }
    // Then one valid GETATTR, xid CONTROL_XID: the one call of this client a server's capture
    // should hold (it shows the capture would have seen the others).
    let mut w = Writer::new();
    w.call_sys(CONTROL_XID, program::NFS, 3, Proc::Getattr as u32, 0, 0)
        .opaque(file);
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut control = false;
    for _ in 0..5 {
        s.send(&w.buf)?;
        if let Ok(n) = s.recv(&mut buf) {
            if xid_of(&buf[..n]) == CONTROL_XID {
                control = answered_right(
                    &buf[..n],
                    CONTROL_XID,
                    nfs_rewrite::corpus::Expect::Status(0),
                );
                break;
            }
        }
    }
    let mut j = t.json();
    j["control_xid"] = serde_json::json!(format!("{CONTROL_XID:#x}"));
    j["control_ok"] = serde_json::json!(control);
    Ok(j)
}

/// The valid call after the UDP corpus.
const CONTROL_XID: u32 = 0x7dff_ffff;

/// GETATTR on `file` over UDP for `--duration`: closed loop with `--inflight` calls out
/// (getattr-udp), or open loop, sending without waiting (flood-udp).
fn getattr_udp(to: SocketAddr, file: &[u8], a: &Args) -> Result<serde_json::Value> {
    let flood = a.mode == Mode::FloodUdp;
    let s = std::net::UdpSocket::bind((a.bind.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED), 0))?;
    s.connect(to)?;
    s.set_read_timeout(Some(Duration::from_millis(if flood { 1 } else { 100 })))?;
    let mut call = Writer::new();
    call.call_sys(0, program::NFS, 3, Proc::Getattr as u32, 0, 0)
        .opaque(file);
    let mut call = call.buf;
    let base = (std::process::id() << 16) ^ 0x4741_0000;
    let send = |s: &std::net::UdpSocket, call: &mut [u8], xid: u32| {
        call[..4].copy_from_slice(&xid.to_be_bytes());
        s.send(call)
    };
    // xid → (sent at, first sent at).
    let mut out: HashMap<u32, (Instant, Instant)> = HashMap::new();
    let (mut next, mut sent, mut answered, mut resent) = (0u32, 0u64, 0u64, 0u64);
    let mut lat = Vec::new();
    let mut buf = vec![0u8; 65536];
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(a.duration);
    while Instant::now() < end {
        if flood {
            // Send a burst, then take what has come back without waiting.
            for _ in 0..64 {
                next = next.wrapping_add(1);
                if send(&s, &mut call, base.wrapping_add(next)).is_ok() {
                    sent += 1;
                }
            }
            s.set_nonblocking(true)?;
            while let Ok(n) = s.recv(&mut buf) {
                answered += u64::from(n >= 24);
            }
            s.set_nonblocking(false)?;
            continue;
        }
        while out.len() < a.inflight {
            next = next.wrapping_add(1);
            let x = base.wrapping_add(next);
            send(&s, &mut call, x)?;
            sent += 1;
            let now = Instant::now();
            out.insert(x, (now, now));
        }
        match s.recv(&mut buf) {
            Ok(n) if n >= 4 => {
                if let Some((_, first)) = out.remove(&xid_of(&buf[..n])) {
                    let Ok(rpc::Message::Reply(rpc::Reply::Accepted {
                        stat: rpc::AcceptStat::Success { results_at },
                        ..
                    })) = rpc::parse(&buf[..n])
                    else {
                        bail!("GETATTR: not a successful RPC reply");
                    };
                    ok(&buf[results_at..n], "GETATTR")?;
                    answered += 1;
                    lat.push(first.elapsed().as_micros() as u64);
                }
            }
            _ => {
                let now = Instant::now();
                for (x, (at, _)) in out.iter_mut() {
                    if now.duration_since(*at) > Duration::from_secs(1) {
                        *at = now;
                        resent += 1;
                        send(&s, &mut call, *x)?;
                    }
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let (p50, p99) = percentiles(&mut lat);
    Ok(
        serde_json::json!({"mode": if flood { "flood-udp" } else { "getattr-udp" },
        "inflight": a.inflight, "seconds": secs, "sent_per_sec": sent as f64 / secs,
        "ops_per_sec": answered as f64 / secs, "resent": resent,
        "p50_us": p50, "p99_us": p99}),
    )
}

/// The median and 99th percentile of latencies (µs; 0 when there are none).
fn percentiles(lat: &mut [u64]) -> (u64, u64) {
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    (pct(0.5), pct(0.99))
}
