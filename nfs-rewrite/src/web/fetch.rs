//! The HTTP side of a web export: a small pool of threads per origin, each running blocking
//! HTTP/1.1 requests with `ureq` (keep-alive connections, shared by the pool's threads), fed
//! by a bounded queue. The management core only ever `try_send`s jobs and `try_recv`s
//! results, so a slow or dead origin never blocks packet processing, nor another origin.

use super::listing::{self, Link};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};
use ureq::http::{Response, StatusCode};
use ureq::{Agent, Body, ResponseExt};

/// What a cached copy of a resource is validated with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// What a job asks of the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The resource's attributes: HEAD for a file (following a redirect to `name/`, which
    /// makes it a directory), GET of the index page for a directory. Conditional when the
    /// job has validators.
    Meta { dir: bool },
    /// Bytes `start..=end` of a file (`Range:`, with `If-Range:` its validator).
    Range { start: u64, end: u64 },
}

/// One request for the pool.
#[derive(Debug, Clone)]
pub struct Job {
    /// The node it is for (the web export's handle id).
    pub pin: u64,
    pub url: String,
    pub want: Want,
    pub validators: Validators,
}

/// What the origin answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 304: the cached copy is current.
    NotModified,
    /// An index page: its entries.
    Dir {
        links: Vec<Link>,
        validators: Validators,
        /// Last-Modified, in seconds since the epoch.
        mtime: Option<u64>,
        /// A digest of the page (a listing without validators changed when it changes).
        digest: u64,
    },
    /// A file's attributes; `body` when the whole of it came (a GET answered 200: no
    /// Content-Length to a HEAD, or an origin that ignores ranges, or a changed resource).
    File {
        size: u64,
        validators: Validators,
        mtime: Option<u64>,
        body: Option<Vec<u8>>,
    },
    /// 206: bytes from `start`.
    Range { start: u64, data: Vec<u8> },
    /// 404 or 410: the resource is gone.
    Gone(u16),
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// No answer within the export's timeout.
    Timeout,
    /// No connection (refused, unreachable, reset).
    Connect(String),
    /// An answer the router cannot use (5xx, 416, 403, …).
    Status(u16),
    /// A whole body above the limit the router buffers.
    TooBig,
    Other(String),
}

impl FetchError {
    /// The counter it is shown under.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Timeout => "timeout",
            FetchError::Connect(_) => "connect",
            FetchError::Status(_) => "status",
            FetchError::TooBig => "too_big",
            FetchError::Other(_) => "other",
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Timeout => f.write_str("timed out"),
            FetchError::Connect(e) => write!(f, "no connection: {e}"),
            FetchError::Status(s) => write!(f, "HTTP status {s}"),
            FetchError::TooBig => f.write_str("body above the buffer limit"),
            FetchError::Other(e) => f.write_str(e),
        }
    }
}

/// A finished job.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub pin: u64,
    pub want: Want,
    pub result: Result<Answer, FetchError>,
    /// Bytes of body received.
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Pool settings.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Threads, and keep-alive connections kept, to the origin.
    pub connections: usize,
    /// Jobs queued at most (more are refused: the call waits for the client's retransmission).
    pub queue: usize,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// The largest whole body buffered (a file answered without ranges).
    pub body_max: u64,
}

/// The request threads of one origin.
#[derive(Debug)]
pub struct Pool {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Fetched>,
    busy: Arc<AtomicUsize>,
}

impl Pool {
    /// Start `cfg.connections` threads named `web-NAME`.
    pub fn start(name: &str, cfg: PoolConfig) -> std::io::Result<Pool> {
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(cfg.timeout))
            .max_idle_connections(cfg.connections)
            .max_idle_connections_per_host(cfg.connections)
            .user_agent(concat!("router-nfs-web/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let (jobs, rx) = mpsc::sync_channel::<Job>(cfg.queue);
        let (tx, done) = mpsc::channel();
        let rx = Arc::new(Mutex::new(rx));
        let busy = Arc::new(AtomicUsize::new(0));
        for i in 0..cfg.connections.max(1) {
            let (agent, rx, tx, busy) = (agent.clone(), rx.clone(), tx.clone(), busy.clone());
            std::thread::Builder::new()
                .name(format!("web-{name}-{i}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for a job: one thread at a time
                    // takes the next one.
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else {
                        return; // the export is gone
                    };
                    busy.fetch_add(1, Ordering::Relaxed);
                    let out = run(&agent, &job, cfg.body_max);
                    busy.fetch_sub(1, Ordering::Relaxed);
                    if tx.send(out).is_err() {
                        return;
                    }
                })?;
        }
        Ok(Pool {
            jobs: Some(jobs),
            done,
            busy,
        })
    }

    /// Queue a job; false when the queue is full.
    pub fn submit(&self, job: Job) -> bool {
        match self.jobs.as_ref().map(|j| j.try_send(job)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => false,
        }
    }

    /// A finished job, if any.
    pub fn try_done(&self) -> Option<Fetched> {
        self.done.try_recv().ok()
    }

    /// Requests running now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }
}

impl Drop for Pool {
    /// Closing the queue ends the threads (each after its request at hand).
    fn drop(&mut self) {
        self.jobs = None;
    }
}

/// Run one job.
fn run(agent: &Agent, job: &Job, body_max: u64) -> Fetched {
    let t = Instant::now();
    let mut bytes = 0;
    let result = match job.want {
        Want::Meta { dir: true } => listing_at(agent, &job.url, &job.validators, &mut bytes),
        Want::Meta { dir: false } => meta(agent, job, body_max, &mut bytes),
        Want::Range { start, end } => range(agent, job, start, end, body_max, &mut bytes),
    };
    Fetched {
        pin: job.pin,
        want: job.want,
        result,
        bytes,
        elapsed: t.elapsed(),
    }
}

fn error(e: ureq::Error) -> FetchError {
    match e {
        ureq::Error::Timeout(_) => FetchError::Timeout,
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => FetchError::Timeout,
        ureq::Error::Io(e) => FetchError::Connect(e.to_string()),
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            FetchError::Connect(e.to_string())
        }
        ureq::Error::BodyExceedsLimit(_) => FetchError::TooBig,
        e => FetchError::Other(e.to_string()),
    }
}

fn header(r: &Response<Body>, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn validators(r: &Response<Body>) -> Validators {
    Validators {
        etag: header(r, "etag"),
        last_modified: header(r, "last-modified"),
    }
}

fn mtime(v: &Validators) -> Option<u64> {
    let t = httpdate::parse_http_date(v.last_modified.as_deref()?).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// A request with the conditional headers of `v`.
fn conditional<B>(mut req: ureq::RequestBuilder<B>, v: &Validators) -> ureq::RequestBuilder<B> {
    if let Some(e) = &v.etag {
        req = req.header("If-None-Match", e);
    }
    if let Some(l) = &v.last_modified {
        req = req.header("If-Modified-Since", l);
    }
    req
}

/// 304, 404/410 and other failures, common to every answer.
fn settled(status: StatusCode) -> Option<Result<Answer, FetchError>> {
    match status.as_u16() {
        304 => Some(Ok(Answer::NotModified)),
        404 | 410 => Some(Ok(Answer::Gone(status.as_u16()))),
        200 | 206 => None,
        s => Some(Err(FetchError::Status(s))),
    }
}

fn read_body(r: &mut Response<Body>, max: u64, bytes: &mut u64) -> Result<Vec<u8>, FetchError> {
    let body = r
        .body_mut()
        .with_config()
        .limit(max)
        .read_to_vec()
        .map_err(error)?;
    *bytes += body.len() as u64;
    Ok(body)
}

/// GET of an index page.
fn listing_at(
    agent: &Agent,
    url: &str,
    v: &Validators,
    bytes: &mut u64,
) -> Result<Answer, FetchError> {
    let mut r = conditional(agent.get(url), v).call().map_err(error)?;
    if let Some(done) = settled(r.status()) {
        return done;
    }
    // Index pages are small; 16 MiB holds ~100,000 entries.
    let body = read_body(&mut r, 16 << 20, bytes)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    let validators = validators(&r);
    Ok(Answer::Dir {
        links: listing::links(&body),
        mtime: mtime(&validators),
        validators,
        digest: h.finish(),
    })
}

/// HEAD of a file (a redirect to `name/` makes it a directory: its index is read).
fn meta(agent: &Agent, job: &Job, body_max: u64, bytes: &mut u64) -> Result<Answer, FetchError> {
    let r = conditional(agent.head(&job.url), &job.validators)
        .call()
        .map_err(error)?;
    if let Some(done) = settled(r.status()) {
        return done;
    }
    let last = r.get_uri().path().to_string();
    if last.ends_with('/') && !job.url.ends_with('/') {
        let url = r.get_uri().to_string();
        return listing_at(agent, &url, &Validators::default(), bytes);
    }
    let validators = validators(&r);
    let length = header(&r, "content-length").and_then(|l| l.trim().parse::<u64>().ok());
    match length {
        Some(size) => Ok(Answer::File {
            size,
            mtime: mtime(&validators),
            validators,
            body: None,
        }),
        // No length to a HEAD (a chunked resource): the body tells.
        None => {
            let mut r = agent.get(&job.url).call().map_err(error)?;
            if let Some(done) = settled(r.status()) {
                return done;
            }
            let body = read_body(&mut r, body_max, bytes)?;
            let validators = self::validators(&r);
            Ok(Answer::File {
                size: body.len() as u64,
                mtime: mtime(&validators),
                validators,
                body: Some(body),
            })
        }
    }
}

/// GET of a byte range, valid only for the copy the validators name.
fn range(
    agent: &Agent,
    job: &Job,
    start: u64,
    end: u64,
    body_max: u64,
    bytes: &mut u64,
) -> Result<Answer, FetchError> {
    let mut req = agent
        .get(&job.url)
        .header("Range", &format!("bytes={start}-{end}"));
    let v = &job.validators;
    // A strong ETag, else the date: an origin whose copy changed answers 200 with all of it.
    let if_range = v
        .etag
        .as_ref()
        .filter(|e| !e.starts_with("W/"))
        .or(v.last_modified.as_ref());
    if let Some(ir) = if_range {
        req = req.header("If-Range", ir);
    }
    let mut r = req.call().map_err(error)?;
    if let Some(done) = settled(r.status()) {
        return done;
    }
    if r.status() == StatusCode::PARTIAL_CONTENT {
        // Content-Range: bytes START-END/TOTAL
        let from = header(&r, "content-range")
            .and_then(|c| {
                let c = c.trim().strip_prefix("bytes")?.trim();
                c.split('-').next()?.trim().parse::<u64>().ok()
            })
            .ok_or_else(|| FetchError::Other("206 without a Content-Range".into()))?;
        let data = read_body(&mut r, end - start + 1, bytes)?;
        return Ok(Answer::Range { start: from, data });
    }
    let body = read_body(&mut r, body_max, bytes)?;
    let validators = validators(&r);
    Ok(Answer::File {
        size: body.len() as u64,
        mtime: mtime(&validators),
        validators,
        body: Some(body),
    })
}
