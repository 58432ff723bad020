//! A web export against a real origin: Python's `http.server` (the index pages
//! `python3 -m http.server` writes; no byte ranges, so every file comes whole; no validators on
//! index pages). The calls go through `Controller::decide`, the code both of the virtual
//! server's transports use, as a TCP client's would; held calls come back through
//! `poll_web` / `take_released` as they do in the router. The namespace test
//! (tests/smoke/nfs_web_test.sh) runs the same against nginx, with real NFS clients.

use nfs_rewrite::control::{Controller, Outcome, Peer};
use nfs_rewrite::datapath::NfsShared;
use nfs_rewrite::rewrite::Limits;
use nfs_rewrite::tables::HandleTable;
use nfs_rewrite::vfh::HandleKey;
use nfs_rewrite::web::WebSpec;
use nfs_rewrite::wire::nfs3::{stat, Proc};
use nfs_rewrite::wire::rpc::{self, program, Writer};
use nfs_rewrite::wire::{mount, Cursor};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PEER: Peer = Peer::Stream(1, Ipv4Addr::new(10, 0, 1, 2));
const LIMITS: Limits = Limits {
    max_io: 65_536,
    max_dir: 32_768,
};

/// A python3 http.server on loopback serving a directory of its own; stopped and removed
/// on drop.
struct Origin {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Origin {
    fn start() -> Option<Origin> {
        let dir = std::env::temp_dir().join(format!("nfs-web-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).ok()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let o = Origin { child, dir, port };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(o)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn key() -> HandleKey {
    HandleKey::from_hex("0f0e0d0c0b0a09080706050403020100").unwrap()
}

fn controller(port: u16) -> Controller {
    let shared = Arc::new(NfsShared {
        key: key(),
        handles: Arc::new(HandleTable::new(1024)),
        virtual_addr: Ipv4Addr::new(10, 0, 1, 1),
        nfs_port: 2049,
        virtual_fsid: 0x5649_5254,
        limits: LIMITS,
        servers: vec![],
        policy: Default::default(),
        replicated: vec![],
        diverted: Default::default(),
    });
    let mut c = Controller::new(shared, 20048, 1_700_000_000);
    c.web.add(WebSpec {
        name: "www".into(),
        base: format!("http://127.0.0.1:{port}/"),
        cache_bytes: 4 << 20,
        lifetime_ms: 300,
        timeout_ms: 2000,
        connections: 2,
    });
    c
}

/// The virtual server's answer to `msg`, waiting (as a held stream call does) for the origin.
fn ask(c: &mut Controller, msg: &[u8], start: Instant) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = start.elapsed().as_millis() as u64;
        match c.decide(msg, PEER, now, LIMITS) {
            Outcome::Reply(r) => return r,
            Outcome::Forward { .. } => panic!("a web call was forwarded"),
            Outcome::Nothing => loop {
                assert!(Instant::now() < deadline, "no answer from the web export");
                std::thread::sleep(Duration::from_millis(2));
                c.poll_web(start.elapsed().as_millis() as u64);
                if !c.take_released().is_empty() {
                    break;
                }
            },
        }
    }
}

/// The results of a successful RPC reply.
fn results(r: &[u8]) -> Cursor<'_> {
    match rpc::parse(r) {
        Ok(rpc::Message::Reply(rpc::Reply::Accepted {
            stat: rpc::AcceptStat::Success { results_at },
            ..
        })) => Cursor::at(r, results_at),
        other => panic!("not a successful reply: {other:?}"),
    }
}

struct Client {
    c: Controller,
    start: Instant,
    xid: u32,
}

impl Client {
    fn call(&mut self, p: Proc, args: impl FnOnce(&mut Writer)) -> Vec<u8> {
        self.xid += 1;
        let mut w = Writer::new();
        w.call_sys(self.xid, program::NFS, 3, p as u32, 0, 0);
        args(&mut w);
        ask(&mut self.c, &w.buf, self.start)
    }

    fn mount(&mut self, path: &str) -> Vec<u8> {
        self.xid += 1;
        let mut w = Writer::new();
        w.call_sys(self.xid, program::MOUNT, 3, mount::proc_::MNT, 0, 0)
            .opaque(path.as_bytes());
        let r = ask(&mut self.c, &w.buf, self.start);
        let mut cur = results(&r);
        assert_eq!(cur.u32().unwrap(), 0, "MNT {path}");
        cur.opaque_var(64).unwrap().1.to_vec()
    }

    /// LOOKUP: (status, handle, size).
    fn lookup(&mut self, dir: &[u8], name: &str) -> (u32, Vec<u8>, u64) {
        let r = self.call(Proc::Lookup, |w| {
            w.opaque(dir).opaque(name.as_bytes());
        });
        let mut cur = results(&r);
        let st = cur.u32().unwrap();
        if st != stat::OK {
            return (st, vec![], 0);
        }
        let h = cur.opaque_var(64).unwrap().1.to_vec();
        assert_eq!(cur.u32().unwrap(), 1, "LOOKUP {name}: no attributes");
        let a = cur.opaque_fixed(84).unwrap();
        (st, h, u64::from_be_bytes(a[20..28].try_into().unwrap()))
    }

    /// GETATTR: (status, type, size, mtime).
    fn getattr(&mut self, h: &[u8]) -> (u32, u32, u64, u32) {
        let r = self.call(Proc::Getattr, |w| {
            w.opaque(h);
        });
        let mut cur = results(&r);
        let st = cur.u32().unwrap();
        if st != stat::OK {
            return (st, 0, 0, 0);
        }
        let a = cur.opaque_fixed(84).unwrap();
        let be32 = |i: usize| u32::from_be_bytes(a[i..i + 4].try_into().unwrap());
        (
            st,
            be32(0),
            u64::from_be_bytes(a[20..28].try_into().unwrap()),
            be32(68),
        )
    }

    /// READ: (status, data, eof).
    fn read(&mut self, h: &[u8], offset: u64, count: u32) -> (u32, Vec<u8>, bool) {
        let r = self.call(Proc::Read, |w| {
            w.opaque(h).u64(offset).u32(count);
        });
        let mut cur = results(&r);
        let st = cur.u32().unwrap();
        if st != stat::OK {
            return (st, vec![], false);
        }
        assert_eq!(cur.u32().unwrap(), 1);
        cur.opaque_fixed(84).unwrap();
        let n = cur.u32().unwrap();
        let eof = cur.u32().unwrap() == 1;
        let data = cur.opaque_var(1 << 20).unwrap().1.to_vec();
        assert_eq!(data.len(), n as usize);
        (st, data, eof)
    }

    fn read_all(&mut self, h: &[u8], size: u64) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            let (st, d, eof) = self.read(h, got.len() as u64, 65_536);
            assert_eq!(st, stat::OK);
            got.extend_from_slice(&d);
            if eof || d.is_empty() || got.len() as u64 >= size {
                return got;
            }
        }
    }

    /// READDIR: every name, following cookies.
    fn names(&mut self, dir: &[u8]) -> Vec<String> {
        let (mut out, mut cookie) = (Vec::new(), 0u64);
        loop {
            let r = self.call(Proc::Readdir, |w| {
                w.opaque(dir).u64(cookie).fixed(&[0; 8]).u32(2048);
            });
            let mut cur = results(&r);
            assert_eq!(cur.u32().unwrap(), stat::OK);
            if cur.u32().unwrap() == 1 {
                cur.opaque_fixed(84).unwrap();
            }
            cur.opaque_fixed(8).unwrap();
            while cur.u32().unwrap() == 1 {
                cur.u64().unwrap();
                out.push(String::from_utf8(cur.string(255).unwrap().to_vec()).unwrap());
                cookie = cur.u64().unwrap();
            }
            if cur.u32().unwrap() == 1 {
                return out;
            }
        }
    }
}

fn mtime_of(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

#[test]
fn web_export_on_python_http_server() {
    let Some(mut origin) = Origin::start() else {
        println!("SKIP: python3 -m http.server did not start (python3 missing?)");
        return;
    };
    let dir = origin.dir.clone();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    std::fs::write(dir.join("a b.txt"), b"escaped name\n").unwrap();
    std::fs::write(dir.join("sub/inner.txt"), b"inner\n").unwrap();
    let mut cl = Client {
        c: controller(origin.port),
        start: Instant::now(),
        xid: 0,
    };
    let www = cl.mount("/www");
    let root = cl.mount("/");
    let (st, via_lookup, _) = cl.lookup(&root, "www");
    assert_eq!((st, &via_lookup), (stat::OK, &www));

    let mut names = cl.names(&www);
    names.sort();
    assert_eq!(names, [".", "..", "a b.txt", "big.bin", "sub"]);

    // Files: size, mtime and bytes as on the origin; reads at offsets across blocks.
    let (st, bigh, size) = cl.lookup(&www, "big.bin");
    assert_eq!((st, size), (stat::OK, big.len() as u64));
    let (_, ty, _, mtime) = cl.getattr(&bigh);
    assert_eq!((ty, mtime), (1, mtime_of(&dir.join("big.bin"))));
    assert_eq!(cl.read_all(&bigh, size), big);
    for (off, n) in [(65_530u64, 20u32), (131_072, 65_536), (299_990, 100)] {
        let (st, d, eof) = cl.read(&bigh, off, n);
        let end = (off as usize + n as usize).min(big.len());
        assert_eq!((st, d.as_slice()), (stat::OK, &big[off as usize..end]));
        assert_eq!(eof, end == big.len());
    }
    let (st, sp, _) = cl.lookup(&www, "a b.txt");
    assert_eq!(st, stat::OK);
    assert_eq!(cl.read_all(&sp, 13), b"escaped name\n");
    let (st, sub, _) = cl.lookup(&www, "sub");
    assert_eq!((st, cl.getattr(&sub).1), (stat::OK, 2));
    let (st, inner, _) = cl.lookup(&sub, "inner.txt");
    assert_eq!(st, stat::OK);
    assert_eq!(cl.lookup(&www, "missing").0, stat::NOENT);
    assert_eq!(cl.lookup(&bigh, "x").0, stat::NOTDIR);

    // Read-only.
    let r = cl.call(Proc::Write, |w| {
        w.opaque(&bigh).u64(0).u32(1).u32(2).opaque(b"x");
    });
    assert_eq!(results(&r).u32().unwrap(), stat::ROFS);
    let r = cl.call(Proc::Create, |w| {
        // UNCHECKED, then a sattr3 that sets nothing.
        w.opaque(&www).opaque(b"new").u32(0);
        for _ in 0..6 {
            w.u32(0);
        }
    });
    assert_eq!(results(&r).u32().unwrap(), stat::ROFS);

    // Changed on the origin: seen after the lifetime; removed: stale.
    std::fs::write(dir.join("a b.txt"), b"a longer, changed text\n").unwrap();
    std::fs::remove_file(dir.join("sub/inner.txt")).unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // a new second: a new Last-Modified
    std::fs::write(dir.join("a b.txt"), b"a longer, changed text\n").unwrap();
    let (st, _, size, mtime) = cl.getattr(&sp);
    assert_eq!((st, size), (stat::OK, 23));
    assert_eq!(mtime, mtime_of(&dir.join("a b.txt")));
    assert_eq!(cl.read_all(&sp, 23), b"a longer, changed text\n");
    assert_eq!(cl.getattr(&inner).0, stat::STALE);

    // A restarted router (nothing known of the export) finds the handles by walking.
    cl.c = controller(origin.port);
    assert_eq!(cl.read_all(&bigh, big.len() as u64), big);
    assert_eq!(cl.getattr(&sub).1, 2);
    // A handle of nothing the origin has: stale once the walk has read every page.
    let mut forged = bigh.clone();
    forged[20] ^= 1; // the PIN: the HVC no longer verifies
    assert_eq!(cl.getattr(&forged).0, stat::BADHANDLE);
    assert_eq!(cl.getattr(&inner).0, stat::STALE);
    let report = &cl.c.web.report()[0];
    assert!(
        report.stats.walk_found >= 1 && report.stats.walk_pages >= 1,
        "{:?}",
        report.stats
    );

    // The origin stopped: NFS3ERR_IO (after the lifetime, when it is asked again).
    origin.stop();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(cl.getattr(&bigh).0, stat::IO);
    let s = cl.c.web.report()[0].stats;
    assert!(s.connect_errors >= 1 && s.io_errors >= 1, "{s:?}");
}
