//! The management core's side of Serval service routing: the controller (registrations,
//! DELAY queue), operator rules, and what the stage hands over (DEMUX to the controller,
//! DELAY, FORWARD to all targets, the original's RST for an unmatched datagram).

pub mod cli;
pub mod config;

use super::AppRequest;
use crate::admin::Response;
use crate::app::{MgmtApp, MgmtCtx, Output};
use crate::config::Config;
use config::SalConfig;
use packet::{Buffer, Stage, Verdict};
use sal_forward::controller::{Controller, Outcome, Settings};
use sal_forward::ctrlmsg;
use sal_forward::id::{Prefix, ServiceId};
use sal_forward::stage::{SalShared, SalStage};
use sal_forward::table::{Action, Mode, Rules, Target};
use sal_forward::wire::{self, flags, Control, SalRepr};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Priority of the controller's own DEMUX rule (above anything an operator or host adds).
pub const CONTROLLER_PRIORITY: u32 = u32::MAX;

/// A frame to route, and the port it came in on.
pub type Frame = (Vec<u8>, u16);

/// What the management core does with a Serval packet the stage handed over.
#[derive(Debug)]
pub enum Handled {
    /// Consumed (answered, queued or dropped and counted).
    Done,
    /// Copies to route, one per target (FORWARD to all).
    Copies(Vec<Vec<u8>>),
    /// A datagram to send from the router: (src, dst, SAL packet).
    Send(Ipv4Addr, Ipv4Addr, Vec<u8>),
    /// Not a service request after all.
    NotMine,
}

#[derive(Debug)]
pub struct SalMgmt {
    pub shared: Arc<SalShared>,
    /// The rules the config installed (a reload replaces these, not `routerctl`'s).
    installed: RuleSets,
    /// A reload's rules, checked, until it is applied.
    reloading: Option<RuleSets>,
    pub ctl: Controller,
    /// The management core's own stage instance (delayed packets, copies).
    stage: SalStage,
    controller: bool,
    pub rst_sent: u64,
    pub control_messages: u64,
    /// DEMUX matches for a service no one serves here (only the controller is local).
    pub demux_unhandled: u64,
    /// Control messages that could not be sent (no route to the controller).
    pub control_send_failed: u64,
}

/// Rule sets by (prefix, priority).
type RuleSets = BTreeMap<(Prefix, u32), (Mode, Vec<Target>)>;

/// The rules a config installs — its `rules`, then its `rules_file`'s lines — merged per
/// prefix and priority as [`Rules::add`] merges them. Errors name the rule.
fn config_rules(cfg: &SalConfig) -> Result<RuleSets, String> {
    let mut specs = Vec::new();
    for (i, r) in cfg.rules.iter().enumerate() {
        specs.push((
            format!("sal.rules[{i}]"),
            r.parse().map_err(|e| format!("sal.rules[{i}]: {e}"))?,
        ));
    }
    if let Some(path) = &cfg.rules_file {
        let what = |e: String| format!("sal.rules_file {}: {e}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| what(e.to_string()))?;
        let from = format!("sal.rules_file {}", path.display());
        specs.extend(
            config::parse_sal_rules(&text)
                .map_err(what)?
                .into_iter()
                .map(|s| (from.clone(), s)),
        );
    }
    let mut sets = RuleSets::new();
    for (from, s) in specs {
        let key = (Prefix::new(s.prefix.id, s.prefix.len), s.priority);
        let old = sets.get(&key).map(|(_, t)| t.as_slice());
        let merged =
            Rules::merged(old, &s.targets).map_err(|e| format!("{from}: {}: {e}", s.prefix))?;
        sets.insert(key, (s.mode, merged));
    }
    Ok(sets)
}

impl SalMgmt {
    pub fn new(cfg: &SalConfig, shared: Arc<SalShared>) -> Result<Self, String> {
        let mut rules = Rules::new(shared.table.clone());
        let t0 = std::time::Instant::now();
        let installed = config_rules(cfg)?;
        for ((prefix, priority), (mode, targets)) in &installed {
            rules
                .set(*prefix, *priority, *mode, targets.clone())
                .map_err(|e| format!("sal rule {prefix} (priority {priority}): {e}"))?;
        }
        if !installed.is_empty() {
            tracing::info!(
                "sal: {} rules from the config in {:.2} s",
                installed.len(),
                t0.elapsed().as_secs_f64()
            );
        }
        let hierarchy = cfg.hierarchy.as_ref().map(|h| h.settings()).transpose()?;
        if cfg.hierarchy.as_ref().is_some_and(|h| h.delay_unknown)
            && rules.get(&Prefix::DEFAULT).is_none()
        {
            rules
                .add(
                    Prefix::DEFAULT,
                    0,
                    Mode::Anycast,
                    &[Target {
                        action: Action::Delay,
                        addr: Ipv4Addr::UNSPECIFIED,
                        weight: 1,
                    }],
                )
                .map_err(|e| format!("the default DELAY rule: {e}"))?;
        }
        if cfg.controller {
            rules
                .add(
                    Prefix::new(ServiceId::from_u32(ctrlmsg::ROUTER_SERVICE), 32),
                    CONTROLLER_PRIORITY,
                    Mode::Anycast,
                    &[Target {
                        action: Action::Demux,
                        addr: Ipv4Addr::UNSPECIFIED,
                        weight: 1,
                    }],
                )
                .map_err(|e| format!("the controller's rule: {e}"))?;
        }
        let instance = shared.hits.len() - 1;
        Ok(SalMgmt {
            stage: SalStage::new(shared.clone(), instance),
            ctl: Controller::new(
                rules,
                Settings {
                    ttl_ms: cfg.registration_ttl_secs * 1000,
                    delay_cap: cfg.delay_queue,
                    delay_timeout_ms: cfg.delay_timeout_ms,
                    hierarchy,
                },
            ),
            shared,
            installed,
            reloading: None,
            controller: cfg.controller,
            rst_sent: 0,
            control_messages: 0,
            demux_unhandled: 0,
            control_send_failed: 0,
        })
    }

    /// A Serval packet (`frame`, from `port`) the stage punted.
    pub fn input(&mut self, frame: &[u8], port: u16, now_ms: u64) -> Handled {
        let Some(ip) = packet::ipv4::in_frame(frame) else {
            return Handled::NotMine;
        };
        if ip.protocol() != wire::PROTOCOL {
            return Handled::NotMine;
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let sal_bytes = ip.payload();
        let Ok(s) = wire::parse(sal_bytes) else {
            return Handled::NotMine;
        };
        let Some(id) = s.service_id(sal_bytes) else {
            return Handled::NotMine;
        };
        let Some(m) = self.shared.table.lookup(&id) else {
            // The original answers an unmatched non-SYN with a RST.
            return self.rst(&s, dst, src);
        };
        match m.action {
            Action::Demux => {
                if !self.controller || id != ServiceId::from_u32(ctrlmsg::ROUTER_SERVICE) {
                    self.demux_unhandled += 1;
                    return Handled::Done;
                }
                // UDP header (ports 0), then the control message.
                let Some(msg) = sal_bytes.get(s.len + packet::udp::HEADER_LEN..) else {
                    return Handled::Done;
                };
                self.control_messages += 1;
                match self.ctl.control(src, msg, now_ms) {
                    Outcome::Registered { prefix, addr } => {
                        tracing::debug!("sal: {addr} registered {prefix}")
                    }
                    Outcome::Unregistered { prefix, addr } => {
                        tracing::debug!("sal: {addr} unregistered {prefix}")
                    }
                    Outcome::Pointer {
                        prefix,
                        child,
                        present,
                    } => tracing::debug!("sal: pointer {prefix} -> {child}: {present}"),
                    Outcome::Resolve => {}
                    Outcome::Refused(e) => tracing::debug!("sal: control message from {src}: {e}"),
                }
                Handled::Done
            }
            Action::Delay => {
                self.ctl.delay(id, frame, port, now_ms);
                Handled::Done
            }
            Action::Forward => {
                let copies = m
                    .addrs()
                    .filter_map(|to| {
                        let mut b = packet::HeapBuffer::with_capacity(frame.len() + 128, 64);
                        b.append(frame.len()).ok()?;
                        b.data_mut().copy_from_slice(frame);
                        (self.stage.process_to(&mut b, to) == Verdict::Next)
                            .then(|| b.data().to_vec())
                    })
                    .collect();
                Handled::Copies(copies)
            }
            Action::Drop => Handled::Done,
        }
    }

    /// What the controller has to send — (destination, control message) — and the delayed
    /// packets an answer released (frame, input port).
    pub fn take_output(&mut self, now_ms: u64) -> (Vec<(Ipv4Addr, Vec<u8>)>, Vec<Frame>) {
        let msgs = self.ctl.take_outbox();
        let released = if self.ctl.take_resolved() {
            let ds = self.ctl.release();
            self.rematch(ds, now_ms)
        } else {
            Vec::new()
        };
        (msgs, released)
    }

    /// A control message as the Serval datagram that carries it — SAL header (destination
    /// and source serviceID 88888) and UDP header — from `src` to `dst`.
    pub fn control_segment(src: Ipv4Addr, dst: Ipv4Addr, msg: &[u8]) -> Vec<u8> {
        let ctl = ServiceId::from_u32(ctrlmsg::ROUTER_SERVICE);
        let repr = SalRepr {
            protocol: packet::ipv4::protocol::UDP,
            service: Some(ctl),
            src_service: Some(ctl),
            ..SalRepr::default()
        };
        let len = packet::udp::HEADER_LEN + msg.len();
        let mut udp = vec![0u8; len];
        udp[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        udp[packet::udp::HEADER_LEN..].copy_from_slice(msg);
        // The IP header is the caller's to build; the transport checksum covers its addresses.
        wire::datagram(src, dst, 64, &repr, &udp).split_off(20)
    }

    /// The original's RST: CONTROL(RST), flow ids swapped, back to the sender.
    fn rst(&mut self, s: &wire::Sal, me: Ipv4Addr, to: Ipv4Addr) -> Handled {
        if s.is_syn() {
            return Handled::Done;
        }
        let r = SalRepr {
            src_flow: s.dst_flow,
            dst_flow: s.src_flow,
            protocol: s.protocol,
            control: Some(Control {
                flags: flags::RST,
                ..Control::default()
            }),
            ..SalRepr::default()
        };
        let mut out = vec![0u8; r.len()];
        if r.emit(&mut out).is_err() {
            return Handled::Done;
        }
        self.rst_sent += 1;
        Handled::Send(me, to, out)
    }

    /// Timers: expiries, and delayed packets to match again (frame, input port).
    pub fn poll(&mut self, now_ms: u64) -> Vec<Frame> {
        let ds = self.ctl.poll(now_ms);
        self.rematch(ds, now_ms)
    }

    /// Match released packets again.
    fn rematch(&mut self, ds: Vec<sal_forward::controller::Delayed>, now_ms: u64) -> Vec<Frame> {
        let mut out = Vec::new();
        for d in ds {
            let mut b = packet::HeapBuffer::with_capacity(d.frame.len() + 128, 64);
            if b.append(d.frame.len()).is_err() {
                continue;
            }
            b.data_mut().copy_from_slice(&d.frame);
            match self.stage.process(&mut b) {
                Verdict::Next => out.push((b.data().to_vec(), d.port)),
                // Now a FORWARD-to-all rule: the copies.
                Verdict::Punt(_) => {
                    if let Handled::Copies(c) = self.input(&d.frame, d.port, now_ms) {
                        out.extend(c.into_iter().map(|f| (f, d.port)));
                    }
                }
                // Dropped by its new rule (counted by the stage's rule counters).
                _ => {}
            }
        }
        out
    }

    pub fn rule_add(
        &mut self,
        prefix: &str,
        action: &str,
        targets: &[String],
        priority: u32,
        mode: Option<&str>,
    ) -> Response {
        match sal_forward::table::RuleSpec::parse(prefix, action, targets, priority, mode) {
            Ok(spec) => {
                match self
                    .ctl
                    .rules()
                    .add(spec.prefix, spec.priority, spec.mode, &spec.targets)
                {
                    Ok(()) => Response::ok(json!({"prefix": spec.prefix.to_string()})),
                    Err(e) => Response::err(e.to_string()),
                }
            }
            Err(e) => Response::err(e),
        }
    }

    pub fn rule_del(
        &mut self,
        prefix: &str,
        priority: Option<u32>,
        target: Option<Ipv4Addr>,
    ) -> Response {
        let p: Prefix = match prefix.parse() {
            Ok(p) => p,
            Err(e) => return Response::err(format!("prefix {prefix:?}: {e}")),
        };
        match self.ctl.rules().del(p, priority, target) {
            Ok(()) => Response::ok(json!({"prefix": p.to_string()})),
            Err(e) => Response::err(format!("{p}: {e}")),
        }
    }

    pub fn rule_list(&self, limit: Option<usize>) -> Response {
        let rows = self.ctl.rules_ref().list();
        let total = rows.len();
        let v: Vec<_> = rows
            .into_iter()
            .take(limit.unwrap_or(usize::MAX))
            .map(|r| {
                json!({
                    "prefix": r.prefix.to_string(),
                    "priority": r.priority,
                    "mode": match r.mode { Mode::Anycast => "anycast", Mode::All => "all" },
                    "action": r.targets.first().map_or("drop", |t| t.action.name()),
                    "targets": r.targets.iter().filter(|t| t.action == Action::Forward)
                        .map(|t| json!({"address": t.addr.to_string(), "weight": t.weight}))
                        .collect::<Vec<_>>(),
                    "active": r.active,
                    "packets": if r.active { self.shared.rule_hits(r.slot) } else { 0 },
                })
            })
            .collect();
        Response::ok(json!({"total": total, "rules": v}))
    }

    pub fn stats(&self, cores: &[crate::counters::CoreSnapshot]) -> serde_json::Value {
        use sal_forward::stage::SalCounters;
        let sum: [u64; SalCounters::NAMES.len()] =
            crate::counters::sum_cores(cores, sal_forward::stage::SalStage::NAME);
        let stage = crate::counters::named(&SalCounters::NAMES, &sum);
        let c = &self.ctl.stats;
        json!({
            "stage": stage,
            "rules": self.ctl.rules_ref().len(),
            "rule_capacity": self.shared.table.capacity(),
            "controller": {
                "messages": self.control_messages,
                "registers": c.registers, "reregisters": c.reregisters, "refreshes": c.refreshes,
                "unregisters": c.unregisters, "expired": c.expired, "refused": c.refused,
                "delay_not_found": c.delay_not_found,
                "registrations": self.ctl.registrations().count(),
            },
            "delay": {
                "queued": self.ctl.delayed().count(), "delayed": c.delayed,
                "released": c.delay_released, "timeouts": c.delay_timeouts, "full": c.delay_full,
            },
            "resolve": self.resolve_json(),
            "rst_sent": self.rst_sent,
            "demux_unhandled": self.demux_unhandled,
        })
    }

    fn resolve_json(&self) -> serde_json::Value {
        let r = &self.ctl.resolve_stats;
        json!({
            "pointer_updates": r.pointer_updates, "pointer_removes": r.pointer_removes,
            "pointers_expired": r.pointers_expired, "adverts_sent": r.adverts_sent,
            "resolutions": r.resolutions, "requests_sent": r.requests_sent,
            "requests_received": r.requests_received, "answers_received": r.answers_received,
            "referrals_received": r.referrals_received, "not_found_received": r.not_found_received,
            "answered": r.answered, "referred": r.referred, "not_found_sent": r.not_found_sent,
            "timeouts": r.timeouts, "cached": r.cached, "cache_expired": r.cache_expired,
            "unexpected": r.unexpected, "control_send_failed": self.control_send_failed,
        })
    }

    /// The controller's place in the hierarchy: parent, mode, pointer records, cached
    /// answers, resolutions in flight, counters.
    pub fn hierarchy(&self, now_ms: u64) -> Response {
        use sal_forward::controller::Origin;
        let Some(h) = self.ctl.hierarchy() else {
            return Response::err("no controller hierarchy is configured ([sal.hierarchy])");
        };
        let pointers: Vec<_> = self
            .ctl
            .pointers()
            .map(|(p, child, t)| {
                json!({"prefix": p.to_string(), "child": child.to_string(),
                       "refreshed_secs_ago": now_ms.saturating_sub(t) / 1000})
            })
            .collect();
        let cache: Vec<_> = self
            .ctl
            .cache()
            .map(|(p, c)| {
                json!({"prefix": p.to_string(), "from": c.from.to_string(),
                       "targets": c.targets.iter().map(|(a, w)| format!("{a}:{w}")).collect::<Vec<_>>(),
                       "expires_in_ms": c.expires_ms.saturating_sub(now_ms)})
            })
            .collect();
        let pending: Vec<_> = self
            .ctl
            .pending()
            .map(|(xid, p)| {
                json!({"xid": xid, "service": p.service.to_string(), "asked": p.asked.to_string(),
                       "for": match p.origin { Origin::Local => "delayed packets".to_string(),
                                               Origin::Remote { addr, .. } => addr.to_string() },
                       "recursive": p.recursive, "tries": p.tries + 1,
                       "waiting_ms": now_ms.saturating_sub(p.sent_ms)})
            })
            .collect();
        Response::ok(json!({
            "parent": h.parent.map(|p| p.to_string()),
            "mode": h.mode.name(),
            "cache_secs": h.cache_ms / 1000,
            "pointers": pointers,
            "cache": cache,
            "pending": pending,
            "stats": self.resolve_json(),
        }))
    }

    pub fn registrations(&self, now_ms: u64) -> Response {
        let v: Vec<_> = self
            .ctl
            .registrations()
            .map(|((p, a), r)| {
                json!({
                    "prefix": p.to_string(), "address": a.to_string(),
                    "age_secs": now_ms.saturating_sub(r.first_ms) / 1000,
                    "refreshed_secs_ago": now_ms.saturating_sub(r.refreshed_ms) / 1000,
                    "refreshes": r.refreshes,
                })
            })
            .collect();
        Response::ok(json!({"registrations": v}))
    }

    pub fn delayed(&self, now_ms: u64) -> Response {
        let v: Vec<_> = self
            .ctl
            .delayed()
            .map(|d| {
                json!({"id": d.id, "service": d.service.to_string(),
                       "waiting_ms": now_ms.saturating_sub(d.since_ms), "bytes": d.frame.len()})
            })
            .collect();
        Response::ok(json!({"delayed": v}))
    }
}

impl SalMgmt {
    /// A Serval packet for the controller or the DELAY queue; what it answers goes out.
    fn frame(&mut self, ctx: &mut MgmtCtx, frame: &[u8], port: u16) -> bool {
        let mine = match self.input(frame, port, ctx.now_ms) {
            Handled::NotMine => false,
            Handled::Done => true,
            Handled::Copies(frames) => {
                for f in frames {
                    ctx.send(Output::Frame { frame: f, port });
                }
                true
            }
            Handled::Send(src, dst, payload) => {
                ctx.send(Output::Ip {
                    src,
                    dst,
                    proto: wire::PROTOCOL,
                    payload,
                });
                true
            }
        };
        self.flush(ctx);
        mine
    }

    /// Send what the controller has to say (to its parent, children, askers) and route the
    /// delayed packets an answer released.
    fn flush(&mut self, ctx: &mut MgmtCtx) {
        let (msgs, released) = self.take_output(ctx.now_ms);
        for (dst, msg) in msgs {
            let Some(src) = ctx.source_for(dst) else {
                self.control_send_failed += 1;
                continue;
            };
            ctx.send(Output::Ip {
                src,
                dst,
                proto: wire::PROTOCOL,
                payload: Self::control_segment(src, dst, &msg),
            });
        }
        for (frame, port) in released {
            ctx.send(Output::Frame { frame, port });
        }
    }
}

impl MgmtApp for SalMgmt {
    fn name(&self) -> &'static str {
        "sal"
    }

    fn punted(&mut self, ctx: &mut MgmtCtx, frame: &[u8], port: u16) -> bool {
        self.frame(ctx, frame, port)
    }

    /// A host's REGISTER to its link's broadcast (as the original's service daemon sends
    /// it) goes to the controller as if sent to the receiving port's own address, which any
    /// answer comes from.
    fn broadcast(&mut self, ctx: &mut MgmtCtx, frame: &[u8], port: u16) -> bool {
        let Some(me) = ctx.port_address(port) else {
            return false;
        };
        if packet::ipv4::in_frame(frame).is_none_or(|ip| ip.protocol() != wire::PROTOCOL) {
            return false;
        }
        let mut frame = frame.to_vec();
        let Some(Ok(mut ip)) = frame
            .get_mut(packet::ethernet::HEADER_LEN..)
            .map(packet::ipv4::Ipv4Packet::new_checked)
        else {
            return false;
        };
        ip.set_dst_addr(me);
        ip.fill_checksum();
        self.frame(ctx, &frame, port)
    }

    /// The config's rules (`sal.rules`, `sal.rules_file` and its contents) can change live;
    /// checked here, applied by [`MgmtApp::commit_reload`].
    fn prepare_reload(&mut self, new: &Config) -> Result<(), String> {
        let Some(cfg) = &new.apps.sal else {
            return Ok(());
        };
        let sets = config_rules(cfg)?;
        let rules = self.ctl.rules_ref();
        let fresh = sets
            .keys()
            .filter(|(p, _)| rules.get(p).is_none())
            .map(|(p, _)| p)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if fresh > rules.free_slots() {
            return Err(format!(
                "the rules need {fresh} more prefixes and the service table has room for {} \
                 (sal.max_rules: restart to grow it)",
                rules.free_slots()
            ));
        }
        self.reloading = Some(sets);
        Ok(())
    }

    /// The config's rule sets that went are deleted, the new and changed ones set whole;
    /// rules added since by `routerctl` or by registrations at other prefixes or priorities
    /// stay.
    fn commit_reload(&mut self, _ctx: &mut MgmtCtx) -> Option<serde_json::Value> {
        let new = self.reloading.take()?;
        let rules = self.ctl.rules();
        let (mut added, mut changed, mut removed, mut failed) = (0usize, 0usize, 0usize, None);
        for (prefix, priority) in self.installed.keys().filter(|k| !new.contains_key(k)) {
            if rules.del(*prefix, Some(*priority), None).is_ok() {
                removed += 1;
            }
        }
        for (key, set) in &new {
            match self.installed.get(key) {
                Some(old) if old == set => continue,
                Some(_) => changed += 1,
                None => added += 1,
            }
            if let Err(e) = rules.set(key.0, key.1, set.0, set.1.clone()) {
                failed.get_or_insert(format!("{} (priority {}): {e}", key.0, key.1));
            }
        }
        self.installed = new;
        Some(
            json!({"rules_added": added, "rules_changed": changed, "rules_removed": removed,
                    "rules": self.ctl.rules_ref().len(), "failed": failed}),
        )
    }

    fn timer(&mut self, ctx: &mut MgmtCtx) {
        for (frame, port) in self.poll(ctx.now_ms) {
            ctx.send(Output::Frame { frame, port });
        }
        self.flush(ctx);
    }

    fn stats(&self, ctx: &MgmtCtx) -> serde_json::Value {
        self.stats(&ctx.cores())
    }

    fn request(&mut self, ctx: &mut MgmtCtx, req: &AppRequest) -> Option<Response> {
        let now = ctx.now_ms;
        Some(match req {
            AppRequest::SalRuleAdd {
                prefix,
                action,
                targets,
                priority,
                mode,
            } => self.rule_add(prefix, action, targets, *priority, mode.as_deref()),
            AppRequest::SalRuleDel {
                prefix,
                priority,
                target,
            } => self.rule_del(prefix, *priority, *target),
            AppRequest::SalRuleList { limit } => self.rule_list(*limit),
            AppRequest::SalStats => Response::ok(self.stats(&ctx.cores())),
            AppRequest::SalRegistrations => self.registrations(now),
            AppRequest::SalDelayed => self.delayed(now),
            AppRequest::SalHierarchy => self.hierarchy(now),
            _ => return None,
        })
    }
}
