//! The admin socket: a Unix stream socket (mode 0600, or 0660 for a configured group) speaking
//! line-delimited JSON. Each line is a [`Request`]; each answer is one [`Response`] line. A
//! malformed, oversized or unknown request gets an error response and the connection closes;
//! the router carries on.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Largest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// A request to the router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    Ports,
    Stats,
    RouteAdd {
        prefix: String,
        #[serde(default)]
        via: Option<std::net::Ipv4Addr>,
        #[serde(default)]
        port: Option<String>,
        #[serde(default)]
        blackhole: bool,
    },
    RouteDel {
        prefix: String,
    },
    RouteList {
        /// At most this many routes (the table can hold millions).
        #[serde(default)]
        limit: Option<usize>,
    },
    NeighList,
    LogLevel {
        level: String,
    },
    /// Read the config file again and apply what can change live (as SIGHUP does).
    Reload,
    /// An application's request (the registry lists them: [`crate::apps::AppRequest`]); on
    /// the wire the same `{"cmd": ...}` objects as the router's own.
    #[serde(untagged)]
    App(crate::apps::AppRequest),
}

/// What a request that does not parse gets: its command named when it has one (serde only
/// says that no variant matched).
fn bad_request(text: &str, e: &serde_json::Error) -> String {
    let cmd = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("cmd").and_then(|c| c.as_str()).map(String::from));
    match cmd {
        Some(c) => format!("bad request: unknown command {c:?}, or its arguments do not fit it"),
        None => format!("bad request: {e}"),
    }
}

impl From<crate::apps::AppRequest> for Request {
    fn from(r: crate::apps::AppRequest) -> Self {
        Request::App(r)
    }
}

/// The router's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Self {
        Response {
            ok: true,
            error: None,
            data,
        }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            data: serde_json::Value::Null,
        }
    }
}

/// A request waiting for the management core.
#[derive(Debug)]
pub struct Pending {
    pub req: Request,
    pub reply: mpsc::SyncSender<Response>,
}

/// A thread that takes a non-blocking listener's connections (`accept`) until stopped, and
/// hands each to `on`: the admin socket's and the metrics endpoint's. Stopped and joined on
/// drop.
#[derive(Debug)]
pub(crate) struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Acceptor {
    pub(crate) fn spawn<S>(
        name: &str,
        mut accept: impl FnMut() -> std::io::Result<S> + Send + 'static,
        mut on: impl FnMut(S, &Arc<AtomicBool>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let what = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    match accept() {
                        Ok(s) => on(s, &stop2),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => {
                            tracing::warn!("{what} accept: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        Ok(Acceptor {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop taking connections and wait for the thread.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The listening socket; removed from the filesystem on drop.
#[derive(Debug)]
pub struct AdminServer {
    path: PathBuf,
    acceptor: Acceptor,
}

impl AdminServer {
    /// Bind `path` and serve requests, forwarding them to the management core through `tx`.
    pub fn start(
        path: &Path,
        group: Option<&str>,
        tx: mpsc::Sender<Pending>,
    ) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match UnixStream::connect(path) {
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running router", path.display()),
                ))
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
        let listener = UnixListener::bind(path)?;
        let mode = if let Some(g) = group {
            let gid = group_id(g).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("admin.group {g:?} does not exist"),
                )
            })?;
            std::os::unix::fs::chown(path, None, Some(gid))?;
            0o660
        } else {
            0o600
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        listener.set_nonblocking(true)?;
        let active = Arc::new(AtomicUsize::new(0));
        let acceptor = Acceptor::spawn(
            "admin",
            move || listener.accept().map(|(s, _)| s),
            move |stream: UnixStream, stop| {
                if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    let mut s = stream;
                    let _ = write_response(&mut s, &Response::err("too many admin connections"));
                    return;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (tx, active, stop) = (tx.clone(), active.clone(), stop.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("admin-conn".into())
                        .spawn(move || {
                            serve(stream, &tx, &stop);
                            active.fetch_sub(1, Ordering::SeqCst);
                        });
                if spawned.is_err() {
                    tracing::warn!("admin: could not spawn a connection thread");
                }
            },
        )?;
        Ok(AdminServer {
            path: path.to_path_buf(),
            acceptor,
        })
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.acceptor.stop();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name))
            .then(|| f.get(2)?.parse().ok())
            .flatten()
    })
}

fn write_response(s: &mut UnixStream, r: &Response) -> std::io::Result<()> {
    let mut line =
        serde_json::to_vec(r).unwrap_or_else(|_| br#"{"ok":false,"error":"encoding"}"#.to_vec());
    line.push(b'\n');
    s.write_all(&line)
}

fn serve(stream: UnixStream, tx: &mpsc::Sender<Pending>, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        // Read one line, at most MAX_REQUEST + 1 bytes.
        let res = (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line);
        match res {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if line.len() > MAX_REQUEST {
                    let _ = write_response(&mut out, &Response::err("request too large"));
                    return;
                }
                continue;
            }
            Err(_) => return,
        }
        if line.len() > MAX_REQUEST || line.last() != Some(&b'\n') && line.len() > MAX_REQUEST {
            let _ = write_response(
                &mut out,
                &Response::err(format!("request larger than {MAX_REQUEST} bytes")),
            );
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let req: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let _ = write_response(&mut out, &Response::err(bad_request(text, &e)));
                return;
            }
        };
        let (rtx, rrx) = mpsc::sync_channel(1);
        if tx.send(Pending { req, reply: rtx }).is_err() {
            let _ = write_response(&mut out, &Response::err("router is shutting down"));
            return;
        }
        let resp = rrx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| Response::err("management core did not answer"));
        if write_response(&mut out, &resp).is_err() {
            return;
        }
    }
}

/// A client connection (used by `routerctl` and tests).
#[derive(Debug)]
pub struct AdminClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl AdminClient {
    pub fn connect(path: &Path) -> std::io::Result<Self> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        Ok(AdminClient {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }

    /// Send one request, wait for its response.
    pub fn call(&mut self, req: &Request) -> std::io::Result<Response> {
        let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.call_raw(&line)
    }

    /// Send raw bytes (tests use this for malformed input).
    pub fn call_raw(&mut self, bytes: &[u8]) -> std::io::Result<Response> {
        self.writer.write_all(bytes)?;
        let mut resp = String::new();
        if self.reader.read_line(&mut resp)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "router closed the connection",
            ));
        }
        serde_json::from_str(&resp).map_err(std::io::Error::other)
    }
}
