//! The management core's side of Serval service routing: the controller (registrations,
//! DELAY queue), operator rules, and what the stage hands over (DEMUX to the controller,
//! DELAY, FORWARD to all targets, the original's RST for an unmatched datagram).

use crate::admin::Response;
use crate::config::SalConfig;
use packet::{Buffer, Stage, Verdict};
use sal_forward::controller::{Controller, Outcome};
use sal_forward::ctrlmsg;
use sal_forward::id::{Prefix, ServiceId};
use sal_forward::stage::{SalShared, SalStage};
use sal_forward::table::{Action, Mode, Rules, Target};
use sal_forward::wire::{self, flags, Control, SalRepr};
use serde_json::json;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Priority of the controller's own DEMUX rule (above anything an operator or host adds).
pub const CONTROLLER_PRIORITY: u32 = u32::MAX;

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
    pub ctl: Controller,
    /// The management core's own stage instance (delayed packets, copies).
    stage: SalStage,
    controller: bool,
    pub rst_sent: u64,
    pub control_messages: u64,
    /// DEMUX matches for a service no one serves here (only the controller is local).
    pub demux_unhandled: u64,
}

impl SalMgmt {
    pub fn new(cfg: &SalConfig, shared: Arc<SalShared>) -> Result<Self, String> {
        let mut rules = Rules::new(shared.table.clone());
        for (i, r) in cfg.rules.iter().enumerate() {
            let spec = r.parse().map_err(|e| format!("sal.rules[{i}]: {e}"))?;
            rules
                .add(spec.prefix, spec.priority, spec.mode, &spec.targets)
                .map_err(|e| format!("sal.rules[{i}]: {e}"))?;
        }
        if let Some(path) = &cfg.rules_file {
            let what = |e: String| format!("sal.rules_file {}: {e}", path.display());
            let text = std::fs::read_to_string(path).map_err(|e| what(e.to_string()))?;
            let specs = crate::config::parse_sal_rules(&text).map_err(what)?;
            let t0 = std::time::Instant::now();
            for spec in &specs {
                rules
                    .add(spec.prefix, spec.priority, spec.mode, &spec.targets)
                    .map_err(|e| what(format!("{}: {e}", spec.prefix)))?;
            }
            tracing::info!(
                "sal: {} rules from {} in {:.2} s",
                specs.len(),
                path.display(),
                t0.elapsed().as_secs_f64()
            );
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
                cfg.registration_ttl_secs * 1000,
                cfg.delay_queue,
                cfg.delay_timeout_ms,
            ),
            shared,
            controller: cfg.controller,
            rst_sent: 0,
            control_messages: 0,
            demux_unhandled: 0,
        })
    }

    /// A Serval packet (`frame`, from `port`) the stage punted.
    pub fn input(&mut self, frame: &[u8], port: u16, now_ms: u64) -> Handled {
        let Some(ip) = crate::mgmt::ipv4_in(frame) else {
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
    pub fn poll(&mut self, now_ms: u64) -> Vec<(Vec<u8>, u16)> {
        let mut out = Vec::new();
        for d in self.ctl.poll(now_ms) {
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
        let mut sum = [0u64; 5];
        for c in cores {
            for (t, v) in sum.iter_mut().zip(&c.sal) {
                *t += v;
            }
        }
        let stage: serde_json::Map<_, _> = SalCounters::NAMES
            .iter()
            .zip(sum)
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let c = &self.ctl.stats;
        json!({
            "stage": stage,
            "rules": self.ctl.rules_ref().len(),
            "rule_capacity": self.shared.table.capacity(),
            "controller": {
                "messages": self.control_messages,
                "registers": c.registers, "reregisters": c.reregisters, "refreshes": c.refreshes,
                "unregisters": c.unregisters, "expired": c.expired, "refused": c.refused,
                "registrations": self.ctl.registrations().count(),
            },
            "delay": {
                "queued": self.ctl.delayed().count(), "delayed": c.delayed,
                "released": c.delay_released, "timeouts": c.delay_timeouts, "full": c.delay_full,
            },
            "rst_sent": self.rst_sent,
            "demux_unhandled": self.demux_unhandled,
        })
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
