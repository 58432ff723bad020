//! The management core's side of the virtual NFS server: the handle table's single writer
//! (mappings the workers learn), the controller (portmap, MOUNT, the virtual root, recovery,
//! calls the workers could not rewrite), reassembly of fragmented calls and replies, the
//! TCP side (`[nfs.tcp]`), and the handle-table checkpoints.

use config::{NfsConfig, NfsTransport};
use tcp::{Buffers, NfsTcp};
pub mod cli;
pub mod config;
pub mod tcp;

use super::{AppRequest, EventRings};
use crate::admin::Response;
use crate::app::{udp_datagram, MgmtApp, MgmtCtx, Output};
use crate::reasm::Reassembler;
use nfs_rewrite::control::Controller;
use nfs_rewrite::datapath::{NfsEvent, NfsShared};
use packet::ethernet::HEADER_LEN as ETH_LEN;
use packet::Stage as _;
use serde_json::json;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The portmapper's well-known port.
pub const PORTMAP_PORT: u16 = 111;

/// Handle-table checkpoint bookkeeping.
#[derive(Debug, Default)]
struct Checkpoints {
    last: Option<Instant>,
    /// The background write in progress.
    writer: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    written: u64,
    failed: u64,
    last_entries: usize,
    loaded: usize,
    last_error: Option<String>,
}

/// The mount table's file (`nfs.policy.mount_table`).
#[derive(Debug, Default)]
struct MountTable {
    loaded: usize,
    dropped: usize,
    written: u64,
    failed: u64,
    last_error: Option<String>,
}

/// The virtual NFS server on the management core.
#[derive(Debug)]
pub struct NfsMgmt {
    cfg: NfsConfig,
    /// State shared with the workers (this core is the handle table's single writer).
    shared: Arc<NfsShared>,
    /// Where the workers' stages report (handle mappings, transactions), and their rings.
    rings: Arc<EventRings<NfsEvent>>,
    events: Vec<rtrb::Consumer<NfsEvent>>,
    ctl: Controller,
    /// The virtual server over TCP (`[nfs.tcp]`).
    tcp: Option<NfsTcp>,
    ckpt: Checkpoints,
    mount_table: MountTable,
    /// Reassembly of the fragmented datagrams the workers punt.
    reasm: Reassembler,
    /// Calls the controller answered itself (portmap, MOUNT, the virtual root, errors).
    answered: u64,
}

impl NfsMgmt {
    /// `mtu`: the smallest port MTU (the TCP stack's segment size).
    pub fn new(
        cfg: NfsConfig,
        shared: Arc<NfsShared>,
        rings: Arc<EventRings<NfsEvent>>,
        mtu: u16,
    ) -> Self {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        let mut ctl = Controller::new(shared.clone(), cfg.mount_port, epoch);
        for w in &cfg.web {
            ctl.web.add(w.spec());
        }
        ctl.repl.failover_ms = cfg.failover_ms;
        if let (false, Some(path)) = (ctl.repl.is_empty(), cfg.journal_path()) {
            match ctl.repl.open_journal(&path) {
                Ok(n) => tracing::info!(
                    "nfs: replication journal {}: {n} records loaded",
                    path.display()
                ),
                Err(e) => tracing::warn!("nfs: replication journal: {e} (kept in memory only)"),
            }
            if ctl.repl.exports.iter().any(|x| x.active != x.sid) {
                shared
                    .diverted
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let tcp = new_tcp(&cfg, mtu);
        ctl.tcp = tcp.is_some();
        let mut m = NfsMgmt {
            cfg,
            shared,
            rings,
            events: Vec::new(),
            ctl,
            tcp,
            ckpt: Checkpoints::default(),
            mount_table: MountTable::default(),
            reasm: Reassembler::new(64, Duration::from_secs(2)),
            answered: 0,
        };
        m.load_checkpoint();
        m.load_mount_table();
        m
    }

    /// Load the mount table named in the policy, if there is one: a restarted router knows
    /// who mounted (mounts the policy no longer allows are dropped).
    fn load_mount_table(&mut self) {
        let Some(path) = self.cfg.policy.mount_table.clone() else {
            return;
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let (kept, dropped) = self.ctl.load_mounts(&text);
                self.mount_table.loaded = kept;
                self.mount_table.dropped = dropped;
                tracing::info!(
                    "nfs: {kept} mounts loaded from {} ({dropped} dropped: refused by the policy or unreadable)",
                    path.display()
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                self.mount_table.last_error = Some(format!("{}: {e}", path.display()));
                tracing::warn!("nfs: mount table {}: {e}", path.display());
            }
        }
    }

    /// Save the mount table if it changed (a few lines: written here, atomically).
    fn save_mount_table(&mut self) {
        let Some(path) = self.cfg.policy.mount_table.as_ref() else {
            return;
        };
        if !self.ctl.take_mounts_changed() {
            return;
        }
        let text = self.ctl.mounts_text();
        match nfs_rewrite::checkpoint::write_atomic(path, text.as_bytes()) {
            Ok(()) => self.mount_table.written += 1,
            Err(e) => {
                self.mount_table.failed += 1;
                self.mount_table.last_error = Some(format!("{}: {e}", path.display()));
                tracing::warn!("nfs: mount table {}: {e}", path.display());
            }
        }
    }

    /// Load the handle-table checkpoint named in the config, if there is one.
    fn load_checkpoint(&mut self) {
        let Some(path) = self.cfg.checkpoint.clone() else {
            return;
        };
        let sh = &self.shared;
        match std::fs::read(&path) {
            Ok(bytes) => match nfs_rewrite::checkpoint::decode_into(&bytes, &sh.key, &sh.handles) {
                Ok(n) => {
                    self.ckpt.loaded = n;
                    tracing::info!("nfs: {n} handles loaded from {}", path.display());
                }
                Err(e) => {
                    self.ckpt.last_error = Some(format!("{}: {e}", path.display()));
                    tracing::warn!("nfs: checkpoint {} not used: {e}", path.display());
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!("nfs: no checkpoint at {} yet", path.display());
            }
            Err(e) => {
                self.ckpt.last_error = Some(format!("{}: {e}", path.display()));
                tracing::warn!("nfs: checkpoint {}: {e}", path.display());
            }
        }
    }

    /// Write the checkpoint now, on this core. Returns (entries, bytes, path).
    fn checkpoint_now(&mut self) -> Result<(usize, usize, PathBuf), String> {
        let path = self
            .cfg
            .checkpoint
            .clone()
            .ok_or("nfs.checkpoint is not configured")?;
        if let Some(w) = self.ckpt.writer.take() {
            let _ = w.join();
        }
        let (bytes, n) = nfs_rewrite::checkpoint::encode(&self.shared.handles, &self.shared.key);
        self.ckpt.last = Some(Instant::now());
        match nfs_rewrite::checkpoint::write_atomic(&path, &bytes) {
            Ok(()) => {
                self.ckpt.written += 1;
                self.ckpt.last_entries = n;
                Ok((n, bytes.len(), path))
            }
            Err(e) => {
                self.ckpt.failed += 1;
                let e = format!("{}: {e}", path.display());
                self.ckpt.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// The periodic checkpoint: the table is copied here, written by a helper thread (the
    /// file system must not stall the management core).
    fn checkpoint_timer(&mut self) {
        let (Some(path), secs) = (self.cfg.checkpoint.clone(), self.cfg.checkpoint_secs) else {
            return;
        };
        if secs == 0
            || self
                .ckpt
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_secs(secs))
        {
            return;
        }
        if let Some(w) = &self.ckpt.writer {
            if !w.is_finished() {
                return;
            }
        }
        if let Some(w) = self.ckpt.writer.take() {
            match w.join() {
                Ok(Ok(())) => self.ckpt.written += 1,
                Ok(Err(e)) => {
                    self.ckpt.failed += 1;
                    self.ckpt.last_error = Some(format!("{}: {e}", path.display()));
                }
                Err(_) => self.ckpt.failed += 1,
            }
        }
        let (bytes, entries) =
            nfs_rewrite::checkpoint::encode(&self.shared.handles, &self.shared.key);
        self.ckpt.last = Some(Instant::now());
        self.ckpt.last_entries = entries;
        self.ckpt.writer = std::thread::Builder::new()
            .name("nfs-checkpoint".into())
            .spawn(move || nfs_rewrite::checkpoint::write_atomic(&path, &bytes))
            .ok();
    }

    /// Send what the controller has queued (its own calls to servers, clients' calls it
    /// forwards).
    fn flush(&mut self, ctx: &mut MgmtCtx) {
        for d in self.ctl.drain() {
            if self.tcp.is_some() {
                let own = d.src.1 == nfs_rewrite::upstream::CLIENT_PORT
                    && d.src.0 == self.cfg.virtual_address;
                match self.server_transport(d.dst) {
                    // The router's own calls to a server reached over TCP go on its
                    // connection.
                    Some((sid, NfsTransport::Tcp | NfsTransport::TcpOnly)) if own => {
                        if let Some(t) = self.tcp.as_mut() {
                            t.proxy.upstream_call(d.dst, sid, d.payload, ctx.now_ms);
                        }
                        continue;
                    }
                    // A UDP client's call, forwarded from here, for a server without UDP.
                    Some((_, NfsTransport::TcpOnly)) => {
                        self.datagram_over_tcp(ctx, d.src, d.dst, d.payload);
                        continue;
                    }
                    _ => {}
                }
            }
            ctx.udp(d.src, d.dst, d.payload);
        }
    }

    /// The server (id and transport) whose NFS or MOUNT service is at `dst`.
    fn server_transport(&self, dst: (Ipv4Addr, u16)) -> Option<(u16, NfsTransport)> {
        self.cfg.servers.iter().find_map(|s| {
            (s.address == dst.0 && (s.nfs_port == dst.1 || s.mount_port == dst.1))
                .then_some((s.sid, s.transport))
        })
    }

    /// A UDP client's call (rewritten; its transaction with the controller) for a server
    /// without UDP: carried on the router's TCP connection, answered by UDP when it returns.
    fn datagram_over_tcp(
        &mut self,
        ctx: &mut MgmtCtx,
        client: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        msg: Vec<u8>,
    ) {
        let (Some(t), Some(x)) = (self.tcp.as_mut(), msg.get(..4)) else {
            return;
        };
        let key = nfs_rewrite::tables::TxKey {
            client: u32::from(client.0),
            port: client.1,
            xid: u32::from_be_bytes([x[0], x[1], x[2], x[3]]),
        };
        match self.ctl.take_transaction(key, ctx.now_ms) {
            Some(tx) => t.proxy.datagram_call(dst, client, tx, msg, ctx.now_ms),
            None => ctx.unhandled += 1,
        }
    }

    /// Run the TCP stack and the NFS streams; send what they produce (no more than the inject
    /// ring takes now: the rest waits in the stack). Returns how many packets went out.
    fn flush_tcp(&mut self, ctx: &mut MgmtCtx) -> usize {
        let Some(t) = self.tcp.as_mut() else {
            return 0;
        };
        if !t.active() {
            return 0;
        }
        let delivered = t.poll(&mut self.ctl, ctx.now_ms);
        let had_upstream = !delivered.is_empty();
        let mut datagrams = Vec::new();
        for d in delivered {
            match d {
                nfs_rewrite::stream::Delivery::Upstream(msg) => {
                    self.ctl.upstream_reply(&msg, ctx.now_ms)
                }
                nfs_rewrite::stream::Delivery::Datagram { client, msg } => {
                    datagrams.push((client, msg))
                }
            }
        }
        let packets = t.take_output(ctx.room);
        let n = packets.len();
        for p in packets {
            ctx.send(Output::Datagram(p));
        }
        let from = (self.cfg.virtual_address, self.cfg.nfs_port);
        for (client, msg) in datagrams {
            ctx.udp(from, client, msg);
        }
        if had_upstream {
            self.flush(ctx);
        }
        n
    }

    /// Take what the workers' stages report: handle mappings (this core is the handle
    /// table's only writer) and transactions of fragmented replies. Returns how many.
    fn poll_events(&mut self, now_ms: u64, budget: usize) -> usize {
        if self.events.is_empty() {
            self.events = self.rings.take();
        }
        let mut n = 0;
        for ring in &mut self.events {
            while n < budget {
                let Ok(e) = ring.pop() else {
                    break;
                };
                match e {
                    NfsEvent::Mapping { hid, pfh, len } => {
                        self.shared.handles.insert(hid, &pfh[..usize::from(len)]);
                    }
                    NfsEvent::Transaction { key, tx } => self.ctl.adopt(key, tx, now_ms),
                }
                n += 1;
            }
        }
        n
    }

    /// A UDP datagram (a frame's, or one reassembled here) for the controller: calls to the
    /// virtual server's portmap, MOUNT and NFS ports, replies to the controller's own client
    /// port, and server replies the workers had no call for. True when it was the
    /// controller's (answered or not).
    fn datagram(&mut self, ctx: &mut MgmtCtx, datagram: &[u8]) -> bool {
        // Mappings the workers learned go in first: the call at hand may need one.
        self.poll_events(ctx.now_ms, usize::MAX);
        let Some((src, dst, payload)) = udp_datagram(datagram) else {
            return false;
        };
        let n = &self.cfg;
        let virt = n.virtual_address;
        if dst.0 != virt {
            // A UDP client's call a worker rewrote for a server without UDP.
            if self.tcp.is_some()
                && self
                    .ctl
                    .shared()
                    .server_at(dst.0, dst.1)
                    .is_some_and(|s| s.bridge)
            {
                self.datagram_over_tcp(ctx, src, dst, payload.to_vec());
                return true;
            }
            // A server's reply to a client that no worker had the call of.
            let Some(sid) = self.ctl.shared().server_at(src.0, src.1).map(|s| s.sid) else {
                return false;
            };
            if let Some(reply) = self.ctl.server_reply(payload, sid, dst, ctx.now_ms) {
                ctx.udp((virt, n.nfs_port), dst, reply);
            }
            if self.ctl.has_output() {
                self.flush(ctx);
            }
            return true;
        }
        if dst.1 == nfs_rewrite::upstream::CLIENT_PORT {
            self.ctl.upstream_reply(payload, ctx.now_ms);
            self.flush(ctx);
            return true;
        }
        if dst.1 != PORTMAP_PORT && dst.1 != n.mount_port && dst.1 != n.nfs_port {
            return false;
        }
        match self.ctl.answer(payload, src, ctx.now_ms) {
            Some(reply) => {
                self.answered += 1;
                ctx.udp(dst, src, reply);
            }
            None => ctx.unhandled += 1,
        }
        self.flush(ctx);
        true
    }

    /// The aggregated servers and their mount state.
    fn servers(&self, now: u64) -> Response {
        let ctl = &self.ctl;
        let v: Vec<_> = self
            .shared
            .servers
            .iter()
            .map(|s| {
                let st = ctl.upstream.servers.iter().find(|x| x.sid == s.sid);
                let m = st.and_then(|x| x.mounted.as_ref());
                json!({"sid": s.sid, "name": s.name, "address": s.addr.to_string(),
                       "nfs_port": s.nfs_port, "mount_port": s.mount_port, "export": s.export,
                       "mounted": m.is_some(),
                       "mounted_secs": m.map(|m| now.saturating_sub(m.since_ms) as f64 / 1000.0),
                       "mounts": st.map_or(0, |x| x.mounts),
                       "walk": st.map(|x| x.walk_method.name()),
                       "root_handle": m.map(|m| m.root_pfh.iter().map(|b| format!("{b:02x}")).collect::<String>()),
                       "fsid": m.map(|m| m.root_pfs), "root_fileid": m.map(|m| m.root_pin),
                       "fsstat": m.and_then(|m| m.fsstat).map(|f| json!({"tbytes": f[0], "fbytes": f[1], "abytes": f[2], "tfiles": f[3], "ffiles": f[4], "afiles": f[5]})),
                       "fsinfo": m.and_then(|m| m.fsinfo).map(|f| json!({"rtmax": f[0], "wtmax": f[1], "dtpref": f[2]})),
                       "transport": self.cfg.servers.iter().find(|x| x.sid == s.sid).map(|x| x.transport),
                       "last_error": st.and_then(|x| x.last_error.clone())})
            })
            .collect();
        Response::ok(json!(v))
    }

    /// The replicated exports, as `routerctl nfs replication` shows them.
    fn replication(&self, now: u64) -> serde_json::Value {
        let name = |sid: u16| self.shared.server(sid).map(|s| s.name.clone());
        let mounted = |sid: u16| self.ctl.upstream.mounted(sid).is_some();
        let v: Vec<_> = self
            .ctl
            .repl
            .report(now)
            .into_iter()
            .map(|r| {
                let s = r.stats;
                let role = |sid: u16| if sid == r.active { "active" } else { "passive" };
                json!({"export": name(r.sid), "active": name(r.active),
                       "primary": {"sid": r.sid, "name": name(r.sid), "role": role(r.sid),
                                   "mounted": mounted(r.sid)},
                       "backup": {"sid": r.backup, "name": name(r.backup), "role": role(r.backup),
                                  "mounted": mounted(r.backup), "ready": r.backup_ready,
                                  "handles": r.backup_handles},
                       "failovers": s.failovers, "failover_ms": s.failover_ms,
                       "probe_misses": s.misses, "recovered": s.recovered,
                       "log": {"depth": r.depth, "bytes": r.log_bytes, "logged": r.logged_seq,
                               "acked": r.acked, "lag_ms": r.lag_ms, "depth_max": s.depth_max,
                               "lag_ms_max": s.lag_ms_max},
                       "inflight": r.inflight.map(|(w, tries)| json!({"work": w, "tries": tries})),
                       "logged": s.logged, "applied": s.applied, "conflicts": s.conflicts,
                       "unresolved": s.unresolved, "resolved": s.resolved, "resends": s.resends,
                       "overflow": s.overflow, "names": self.ctl.repl.names(),
                       "journal": self.ctl.repl.journal.as_ref().map(|j| json!({
                           "path": j.path.display().to_string(), "bytes": j.bytes,
                           "records": j.records, "loaded": j.loaded,
                           "compactions": j.compactions, "failed": j.failed,
                           "last_error": j.last_error})),
                       "last_error": r.last_error})
            })
            .collect();
        json!(v)
    }

    /// The web exports, as `routerctl nfs web` shows them.
    fn web(&self) -> serde_json::Value {
        let v: Vec<_> = self
            .ctl
            .web
            .report()
            .into_iter()
            .map(|r| {
                let s = r.stats;
                json!({"name": r.name, "url": r.base, "lifetime_ms": r.lifetime_ms,
                       "timeout_ms": r.timeout_ms, "connections": r.connections,
                       "cache": {"bytes": r.cache_bytes, "max": r.cache_max,
                                 "blocks": r.cache_blocks, "evicted": s.evicted},
                       "resources": r.resources, "held": r.held,
                       "requests_running": r.requests_running,
                       "calls": s.calls, "hits": s.hits, "misses": s.misses,
                       "fetches": s.fetches, "fetched_bytes": s.fetched_bytes,
                       "fetch_ms_avg": if s.fetches > 0 { s.fetch_ms as f64 / s.fetches as f64 } else { 0.0 },
                       "not_modified": s.not_modified, "changed": s.changed, "gone": s.gone,
                       "errors": {"timeout": s.timeouts, "connect": s.connect_errors,
                                  "status": s.status_errors, "other": s.other_errors},
                       "answered": {"io": s.io_errors, "stale": s.stale, "rofs": s.rofs},
                       "hold_full": s.hold_full, "queue_full": s.queue_full,
                       "walk": {"pages": s.walk_pages, "found": s.walk_found},
                       "last_error": r.last_error})
            })
            .collect();
        json!(v)
    }

    /// The client and server connections of the TCP side.
    fn connections(&self, now: u64) -> Response {
        let Some(t) = &self.tcp else {
            return Response::err("NFS over TCP is disabled ([nfs.tcp] enabled = false)");
        };
        let v: Vec<_> = t
            .proxy
            .connections(now)
            .into_iter()
            .map(|c| {
                json!({"kind": c.kind, "peer": format!("{}:{}", c.peer.0, c.peer.1),
                       "local_port": c.local_port, "sid": c.sid, "state": c.state,
                       "bytes_in": c.bytes_in, "bytes_out": c.bytes_out,
                       "inflight": c.inflight, "queued": c.queued,
                       "age_secs": c.age_ms as f64 / 1000.0, "calls": c.calls})
            })
            .collect();
        Response::ok(json!(v))
    }
}

/// The TCP side of the virtual NFS server, when `[nfs.tcp]` is enabled.
fn new_tcp(n: &NfsConfig, mtu: u16) -> Option<NfsTcp> {
    let t = &n.tcp;
    if !t.enabled {
        return None;
    }
    let max_io = t.max_io;
    let cfg = nfs_rewrite::stream::StreamConfig {
        limits: nfs_rewrite::rewrite::Limits {
            max_io,
            max_dir: max_io,
        },
        max_record: max_io as usize + 64 * 1024,
        max_inflight: t.max_inflight,
        max_output: 4 * (max_io as usize + 64 * 1024),
        max_leg_output: 8 * (max_io as usize + 64 * 1024),
        max_connections: t.max_connections,
        max_per_client: t.max_per_client,
        idle_ms: t.idle_secs * 1000,
        call_timeout_ms: 120_000,
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    Some(NfsTcp::new(
        n.virtual_address,
        &[PORTMAP_PORT, n.mount_port, n.nfs_port],
        cfg,
        Buffers {
            client: t.client_buffer_kib * 1024,
            server: t.server_buffer_kib * 1024,
        },
        usize::from(mtu),
        seed,
        0,
    ))
}

impl MgmtApp for NfsMgmt {
    fn name(&self) -> &'static str {
        "nfs"
    }

    /// A TCP segment to the virtual server (a client's, or a server's on the router's own
    /// connection) goes to the TCP stack; a UDP datagram to the controller.
    fn local(&mut self, ctx: &mut MgmtCtx, frame: &[u8], _port: u16) -> bool {
        let Some(ip) = frame.get(ETH_LEN..) else {
            return false;
        };
        if let Some(t) = self.tcp.as_mut() {
            if t.wants(ip) {
                t.input(ip);
                return true;
            }
        }
        self.datagram(ctx, ip)
    }

    /// Calls and replies the workers punted; fragments are reassembled first, and a datagram
    /// that turns out not to be the controller's goes on as the fragments it came in.
    fn punted(&mut self, ctx: &mut MgmtCtx, frame: &[u8], port: u16) -> bool {
        if packet::ipv4::in_frame(frame).is_some_and(|ip| ip.is_fragment()) {
            if let Some(c) = self.reasm.add(frame, Instant::now()) {
                if !self.datagram(ctx, &c.datagram) {
                    for f in c.frames {
                        ctx.send(Output::Frame { frame: f, port });
                    }
                }
            }
            return true;
        }
        frame
            .get(ETH_LEN..)
            .is_some_and(|ip| self.datagram(ctx, ip))
    }

    fn poll(&mut self, ctx: &mut MgmtCtx) -> usize {
        let web = self.ctl.poll_web(ctx.now_ms);
        if web > 0 || self.ctl.has_output() {
            self.flush(ctx);
        }
        web + self.poll_events(ctx.now_ms, 1024) + self.flush_tcp(ctx)
    }

    fn timer(&mut self, ctx: &mut MgmtCtx) {
        self.ctl.poll(ctx.now_ms);
        for dead in self.ctl.repl.take_failovers() {
            let again = self
                .tcp
                .as_mut()
                .map_or(0, |t| t.proxy.abandon(dead, &mut self.ctl, ctx.now_ms));
            tracing::warn!(
                "nfs: server {dead} stopped answering: failed over to its pair ({again} TCP calls sent again)"
            );
        }
        // TCP clients are offered what every server takes (FSINFO), up to the config's.
        if let Some(t) = self.tcp.as_mut() {
            let cap = self.cfg.tcp.max_io;
            let m = self.ctl.upstream.transfer_max().map_or(cap, |m| m.min(cap));
            t.proxy.cfg.limits.max_io = m.max(4096);
        }
        self.flush(ctx);
        self.checkpoint_timer();
        self.save_mount_table();
        self.reasm.expire(Instant::now());
    }

    /// The workers' counters summed and named, the handle table, the controller's answers,
    /// mounts and recovery, checkpoints.
    fn stats(&self, ctx: &MgmtCtx) -> serde_json::Value {
        use nfs_rewrite::datapath::NfsCounters;
        use nfs_rewrite::wire::nfs3::Proc;
        let n = &self.shared;
        let ctl = &self.ctl;
        let sum: [u64; NfsCounters::WIDTH] =
            crate::counters::sum_cores(&ctx.cores(), nfs_rewrite::datapath::NfsStage::NAME);
        let k = NfsCounters::from_values(&sum);
        let by_proc = |a: &[u64; 22]| -> serde_json::Map<String, serde_json::Value> {
            Proc::ALL
                .iter()
                .filter(|p| a[**p as usize] > 0)
                .map(|p| (p.name().to_string(), json!(a[*p as usize])))
                .collect()
        };
        let c = ctl.stats;
        let u = ctl.upstream.stats;
        // The workers' drops of the NFS stage, by reason, summed.
        let cores = ctx.cores();
        let drop_of = |reason: &str| -> u64 {
            cores
                .iter()
                .flat_map(|c| &c.stages)
                .filter(|s| s.name == nfs_rewrite::datapath::NfsStage::NAME)
                .flat_map(|s| &s.drops)
                .filter(|(r, _)| r == reason)
                .map(|(_, n)| n)
                .sum()
        };
        let tcp = self.tcp.as_ref().map(|t| {
            let s = t.proxy.stats;
            let k = t.counters;
            json!({"connections": t.proxy.clients(), "accepted": s.accepted,
                   "refused_total_limit": s.refused_total,
                   "refused_per_client_limit": s.refused_per_client, "closed": s.closed,
                   "idle_closed": s.idle_closed, "bad_records": s.bad_records,
                   "garbage": s.garbage, "calls": s.calls, "answered": s.answered,
                   "forwarded": s.forwarded, "replies": s.replies,
                   "orphan_replies": s.orphan_replies, "unmatched_replies": s.unmatched_replies,
                   "rewrite_failed": s.rewrite_failed, "paused_inflight": s.paused_inflight,
                   "paused_output": s.paused_output, "paused_server": s.paused_leg,
                   "server_connects": s.leg_connects, "server_failures": s.leg_failures,
                   "resent": s.resent, "timed_out": s.timed_out,
                   "router_calls": s.upstream_calls, "router_repeats": s.upstream_repeats,
                   "abandoned": s.abandoned,
                   "datagram_calls": s.datagram_calls,
                   "bytes_in": s.bytes_in,
                   "bytes_out": s.bytes_out, "packets_in": k.packets_in,
                   "packets_out": k.packets_out, "queue_full": k.queue_full,
                   "resets": k.resets, "max_io": t.proxy.cfg.limits.max_io})
        });
        let control = json!({"portmap": c.portmap, "mount": c.mount, "nfs_null": c.nfs_null,
                        "virtual_root": c.virtual_root, "web": c.web, "bad_handles": c.bad_handles,
                        "stale_handles": c.stale_handles, "xdev": c.xdev,
                        "recover_waiting": c.recover_waiting, "unanswered": c.unanswered,
                        "forwarded": c.forwarded, "replies_forwarded": c.replies_forwarded,
                        "released": c.released, "held_now": ctl.held(), "hold_full": c.hold_full,
                        "unmatched_replies": c.unmatched_replies, "adopted": c.adopted,
                        "garbage_args": c.garbage_args, "bad_names": c.bad_names,
                        "long_names": c.long_names, "prog_unavail": c.prog_unavail,
                        "prog_mismatch": c.prog_mismatch, "proc_unavail": c.proc_unavail});
        let policy = json!({
            "auth_none": n.policy.auth_none,
            "require_mount": n.policy.require_mount,
            "anonymous_uid": n.policy.anonymous_uid,
            "anonymous_gid": n.policy.anonymous_gid,
            "exports": n.servers.iter().map(|s| json!({
                "name": s.name,
                "clients": s.clients.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                "squash": format!("{:?}", s.squash).to_lowercase()})).collect::<Vec<_>>(),
            "mounts": ctl.mounts().map(|(a, p)| json!({"client": a.to_string(), "path": p})).collect::<Vec<_>>(),
            "refused": {"flavor": c.refused_flavor, "network": c.refused_network,
                        "unmounted": c.refused_unmounted, "mount": c.mount_refused,
                        "mount_table_full": c.mount_table_full},
            "squashed": k.squashed + c.squashed,
            "client_max_inflight": self.cfg.policy.client_max_inflight,
            "client_rate": self.cfg.policy.client_rate,
            "dropped": {"client_limit": drop_of("client-limit"),
                        "rate_limited": drop_of("rate-limited")},
            "mount_table": {"path": self.cfg.policy.mount_table.as_ref().map(|p| p.display().to_string()),
                            "loaded": self.mount_table.loaded, "dropped": self.mount_table.dropped,
                            "written": self.mount_table.written, "failed": self.mount_table.failed,
                            "last_error": self.mount_table.last_error},
        });
        json!({
            "tcp": tcp,
            "calls": k.calls.iter().sum::<u64>(),
            "replies": k.replies.iter().sum::<u64>(),
            "answered": self.answered,
            "calls_by_proc": by_proc(&k.calls),
            "replies_by_proc": by_proc(&k.replies),
            "calls_rewritten": k.calls_rewritten,
            "replies_rewritten": k.replies_rewritten,
            "fragments_passed": k.fragments_passed,
            "direct_calls": k.direct_calls,
            "direct_replies": k.direct_replies,
            "mappings_dropped": k.mappings_dropped,
            "handles": n.handles.len(),
            "handle_capacity": n.handles.capacity(),
            "handle_inserts": n.handles.stats.inserts.load(Ordering::Relaxed),
            "handle_evictions": n.handles.stats.evictions.load(Ordering::Relaxed),
            "servers": n.servers.len(),
            "servers_mounted": ctl.upstream.servers.iter().filter(|s| s.mounted.is_some()).count(),
            "limits": {"max_io": n.limits.max_io, "max_dir": n.limits.max_dir},
            "fragments_punted": k.fragments_punted,
            "reassembly": {"pending": self.reasm.pending(), "stats": self.reasm.stats},
            "control": control,
            "policy": policy,
            "recovery": {"calls": u.recovery_calls, "recovered": u.recovered,
                         "failed": u.recovery_failed, "waiting_now": ctl.upstream.waiting(),
                         "wait_ms_total": u.wait_ms_total, "wait_ms_max": u.wait_ms_max,
                         "walks": u.walks, "walking_now": ctl.upstream.walking(),
                         "walk_dirs": u.walk_dirs, "walk_entries": u.walk_entries,
                         "walk_lookups": u.walk_lookups, "readdirplus_refused": u.readdirplus_refused,
                         "retransmits": u.retransmits, "timeouts": u.timeouts,
                         "stray_replies": u.stray_replies},
            "checkpoint": {"path": self.cfg.checkpoint.as_ref().map(|p| p.display().to_string()),
                           "loaded": self.ckpt.loaded, "written": self.ckpt.written,
                           "failed": self.ckpt.failed, "last_entries": self.ckpt.last_entries,
                           "last_age_secs": self.ckpt.last.map(|t| t.elapsed().as_secs_f64()),
                           "last_error": self.ckpt.last_error},
        })
    }

    fn request(&mut self, ctx: &mut MgmtCtx, req: &AppRequest) -> Option<Response> {
        Some(match req {
            AppRequest::NfsServers => self.servers(ctx.now_ms),
            AppRequest::NfsStats => Response::ok(self.stats(ctx)),
            AppRequest::NfsConnections => self.connections(ctx.now_ms),
            AppRequest::NfsWeb => Response::ok(self.web()),
            AppRequest::NfsReplication => Response::ok(self.replication(ctx.now_ms)),
            AppRequest::NfsCheckpoint => {
                let t0 = Instant::now();
                match self.checkpoint_now() {
                    Ok((entries, bytes, path)) => Response::ok(json!({
                        "entries": entries, "bytes": bytes, "path": path.display().to_string(),
                        "ms": t0.elapsed().as_secs_f64() * 1000.0})),
                    Err(e) => Response::err(e),
                }
            }
            _ => return None,
        })
    }

    /// A last checkpoint on the way out (a killed router keeps its last periodic one).
    fn stop(&mut self) {
        if self.cfg.checkpoint.is_some() {
            if let Err(e) = self.checkpoint_now() {
                tracing::warn!("nfs: final checkpoint: {e}");
            }
        }
    }
}

/// What every worker's NFS stage shares, from the `[nfs]` section. Its key comes from the
/// config's [`config::HandleSecret`], which exists only valid (never a default key every
/// attacker knows).
/// `workers`: how many workers run the stage (the per-client limits are shared out).
pub fn shared(
    n: &NfsConfig,
    limits: nfs_rewrite::rewrite::Limits,
    workers: usize,
) -> Arc<NfsShared> {
    let key = n.handle_secret.key();
    let servers: Vec<nfs_rewrite::datapath::Server> = n
        .servers
        .iter()
        .map(|s| nfs_rewrite::datapath::Server {
            sid: s.sid,
            name: s.name.clone(),
            addr: s.address,
            nfs_port: s.nfs_port,
            mount_port: s.mount_port,
            export: s.export.clone(),
            mch: key.mount_checksum(s.sid, s.export.as_bytes()),
            bridge: s.transport == NfsTransport::TcpOnly,
            clients: s.clients.iter().map(|c| c.0).collect(),
            squash: s.squash.into(),
            pair: match (
                &s.backup_of,
                n.servers
                    .iter()
                    .find(|b| b.backup_of.as_deref() == Some(&s.name)),
            ) {
                (Some(p), _) => nfs_rewrite::datapath::Pair::Backup {
                    primary: n.servers.iter().find(|x| &x.name == p).map_or(0, |x| x.sid),
                },
                (None, Some(b)) => nfs_rewrite::datapath::Pair::Primary { backup: b.sid },
                (None, None) => nfs_rewrite::datapath::Pair::None,
            },
        })
        .collect();
    let replicated = servers
        .iter()
        .filter(|s| matches!(s.pair, nfs_rewrite::datapath::Pair::Primary { .. }))
        .map(|s| s.sid)
        .collect();
    let p = &n.policy;
    Arc::new(NfsShared {
        key,
        handles: Arc::new(nfs_rewrite::tables::HandleTable::new(n.handles)),
        virtual_addr: n.virtual_address,
        nfs_port: n.nfs_port,
        virtual_fsid: n.virtual_fsid,
        limits,
        servers,
        policy: nfs_rewrite::policy::Policy {
            auth_none: p.auth_none,
            require_mount: p.require_mount,
            anonymous_uid: p.anonymous_uid,
            anonymous_gid: p.anonymous_gid,
            mounted: nfs_rewrite::policy::MountedSet::new(p.max_mounts),
            admission: admission_limits(p, n.transaction_ttl_ms, workers),
        },
        replicated,
        diverted: Default::default(),
    })
}

/// Each worker's share of the per-client limits (a client's calls spread over the workers by
/// their xids; rounded up, so a limit never becomes 0 = none).
fn admission_limits(
    p: &config::NfsPolicyConfig,
    ttl_ms: u64,
    workers: usize,
) -> nfs_rewrite::admission::Limits {
    let w = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
    let share = |v: u32| v.div_ceil(w);
    let burst = p.client_burst.unwrap_or((p.client_rate / 10).max(1));
    nfs_rewrite::admission::Limits {
        max_inflight: share(p.client_max_inflight),
        rate: share(p.client_rate),
        burst: share(burst),
        ttl_ms,
    }
}
