//! The service controller on the management core (sans I/O: the router hands it datagrams
//! and the time, and sends what it returns).
//!
//! - **Registrations**: a host's daemon sends REGISTER / UNREGISTER (the original control
//!   messages) as Serval UDP datagrams to serviceID 88888; the registered address is the
//!   datagram's IP source. REGISTER adds a FORWARD target (priority 0, weight 1) for the
//!   serviceID prefix, REREGISTER moves it from the old address, UNREGISTER removes it. Soft
//!   state: a registration not refreshed within the TTL (the original: 50 s; hosts refresh
//!   every 20 s) expires and its target goes.
//! - **DELAY**: packets whose rule is DELAY wait here (bounded; the original: 1024) until a rule
//!   change makes their service resolve to something else — they are then released to be
//!   matched again — or until they time out (dropped, counted).
//! - **Hierarchy**: a controller may have a parent. Every prefix it knows (registered by its
//!   hosts, or pointed to by its children) goes up as a pointer record — a REGISTER with the
//!   [`DELEGATE`] flag, from the controller's own address, refreshed like a host's and expiring
//!   like one; UNREGISTER (or expiry) removes it along the path. So the root knows every
//!   service and each controller knows which child holds it. A delayed packet's service is
//!   resolved with RESOLVE messages: up the tree until a controller knows it, then down to the
//!   one that holds the address. **Iterative**: each controller answers the asker with a
//!   referral to the next one to ask. **Recursive**: each asks the next on the asker's behalf.
//!   An answer is cached with its lifetime — as a FORWARD rule — at every controller it
//!   passes, which answers later requests from the cache; the delayed packets are released
//!   to the new rule, or dropped on a negative answer.

use crate::ctrlmsg::{self, Answer, Register, Resolve, DELEGATE};
use crate::id::{Prefix, ServiceId};
use crate::table::{Action, BitTrie, Mode, Rules, Target};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;

/// One host's registration of a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    pub first_ms: u64,
    pub refreshed_ms: u64,
    pub refreshes: u64,
}

/// What the controller counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControllerStats {
    pub registers: u64,
    pub reregisters: u64,
    pub refreshes: u64,
    pub unregisters: u64,
    pub expired: u64,
    /// Messages that did not parse, of another kind, or could not be applied (table full).
    pub refused: u64,
    pub delayed: u64,
    pub delay_released: u64,
    pub delay_timeouts: u64,
    pub delay_full: u64,
    /// Delayed packets dropped because their service resolved to nothing.
    pub delay_not_found: u64,
}

/// What the hierarchy counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolveStats {
    /// Pointer records a child added or refreshed, removed, or let expire.
    pub pointer_updates: u64,
    pub pointer_removes: u64,
    pub pointers_expired: u64,
    /// Pointer records (REGISTER / UNREGISTER with DELEGATE) sent to the parent.
    pub adverts_sent: u64,
    /// RESOLVE requests this controller sent (its own, on an asker's behalf, retries).
    pub requests_sent: u64,
    pub requests_received: u64,
    /// Resolutions started for delayed packets.
    pub resolutions: u64,
    pub answers_received: u64,
    pub referrals_received: u64,
    pub not_found_received: u64,
    /// Answers this controller gave from its table (registrations, rules, its cache).
    pub answered: u64,
    pub referred: u64,
    pub not_found_sent: u64,
    pub timeouts: u64,
    /// Answers cached (FORWARD rules installed), and cached answers expired.
    pub cached: u64,
    pub cache_expired: u64,
    /// Responses nobody was waiting for (late, duplicated, or from the wrong controller).
    pub unexpected: u64,
}

/// How a controller asks about a service it does not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResolveMode {
    /// Each controller asked answers with a referral to the next one to ask.
    #[default]
    Iterative,
    /// Each controller asked asks the next on the asker's behalf.
    Recursive,
}

impl ResolveMode {
    pub fn name(self) -> &'static str {
        match self {
            ResolveMode::Iterative => "iterative",
            ResolveMode::Recursive => "recursive",
        }
    }
}

/// A controller's place in the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hierarchy {
    /// The parent controller (none: this is a root).
    pub parent: Option<Ipv4Addr>,
    pub mode: ResolveMode,
    /// The lifetime of an answer this controller gives from its own registrations.
    pub cache_ms: u64,
    /// How often pointer records are refreshed at the parent (below its registration TTL).
    pub refresh_ms: u64,
    /// A request unanswered this long is sent again; after [`RETRIES`] it fails.
    pub timeout_ms: u64,
}

/// Resends of an unanswered RESOLVE before it fails.
pub const RETRIES: u8 = 2;
/// Controllers a resolution may pass through (a loop guard).
pub const MAX_HOPS: u8 = 16;

/// How a controller is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Registrations and pointer records live this long without a refresh.
    pub ttl_ms: u64,
    pub delay_cap: usize,
    pub delay_timeout_ms: u64,
    pub hierarchy: Option<Hierarchy>,
}

/// A packet waiting for its service to resolve.
#[derive(Debug, Clone)]
pub struct Delayed {
    pub id: u64,
    pub service: ServiceId,
    pub since_ms: u64,
    /// The frame as it arrived, and its input port.
    pub frame: Vec<u8>,
    pub port: u16,
}

/// Who a resolution is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Packets in this controller's DELAY queue.
    Local,
    /// Another controller's request.
    Remote { addr: Ipv4Addr, xid: u32 },
}

/// A RESOLVE this controller sent and waits on.
#[derive(Debug, Clone)]
pub struct PendingResolve {
    pub service: ServiceId,
    pub origin: Origin,
    pub asked: Ipv4Addr,
    pub recursive: bool,
    pub hops: u8,
    pub sent_ms: u64,
    pub tries: u8,
    msg: Vec<u8>,
}

/// An answer cached as a FORWARD rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub targets: Vec<(Ipv4Addr, u32)>,
    pub expires_ms: u64,
    /// The controller that answered.
    pub from: Ipv4Addr,
}

/// The controller.
#[derive(Debug)]
pub struct Controller {
    rules: Rules,
    registrations: BTreeMap<(Prefix, Ipv4Addr), Registration>,
    set: Settings,
    delay: VecDeque<Delayed>,
    next_delay: u64,
    /// Pointer records: prefix → the children holding it (last refresh).
    pointers: BTreeMap<Prefix, BTreeMap<Ipv4Addr, u64>>,
    pointer_index: BitTrie<()>,
    /// What the parent has been told.
    advertised: BTreeSet<Prefix>,
    last_refresh_ms: u64,
    cache: BTreeMap<Prefix, Cached>,
    pending: BTreeMap<u32, PendingResolve>,
    next_xid: u32,
    outbox: Vec<(Ipv4Addr, Vec<u8>)>,
    resolved: bool,
    pub stats: ControllerStats,
    pub resolve_stats: ResolveStats,
}

/// The result of a control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Registered {
        prefix: Prefix,
        addr: Ipv4Addr,
    },
    Unregistered {
        prefix: Prefix,
        addr: Ipv4Addr,
    },
    /// A child's pointer record was added or refreshed (`true`) or removed.
    Pointer {
        prefix: Prefix,
        child: Ipv4Addr,
        present: bool,
    },
    /// A RESOLVE request or response, handled.
    Resolve,
    Refused(String),
}

const ANY: Ipv4Addr = Ipv4Addr::UNSPECIFIED;
const BROADCAST: Ipv4Addr = Ipv4Addr::BROADCAST;

fn forward(addr: Ipv4Addr, weight: u32) -> Target {
    Target {
        action: Action::Forward,
        addr,
        weight,
    }
}

impl Controller {
    pub fn new(rules: Rules, set: Settings) -> Self {
        Controller {
            rules,
            registrations: BTreeMap::new(),
            set,
            delay: VecDeque::new(),
            next_delay: 1,
            pointers: BTreeMap::new(),
            pointer_index: BitTrie::new(),
            advertised: BTreeSet::new(),
            last_refresh_ms: 0,
            cache: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_xid: 1,
            outbox: Vec::new(),
            resolved: false,
            stats: ControllerStats::default(),
            resolve_stats: ResolveStats::default(),
        }
    }

    /// The service table's writer (operator rules go through here too).
    pub fn rules(&mut self) -> &mut Rules {
        &mut self.rules
    }

    pub fn rules_ref(&self) -> &Rules {
        &self.rules
    }

    pub fn hierarchy(&self) -> Option<&Hierarchy> {
        self.set.hierarchy.as_ref()
    }

    pub fn registrations(&self) -> impl Iterator<Item = (&(Prefix, Ipv4Addr), &Registration)> {
        self.registrations.iter()
    }

    /// Pointer records: (prefix, child, last refresh).
    pub fn pointers(&self) -> impl Iterator<Item = (Prefix, Ipv4Addr, u64)> + '_ {
        self.pointers
            .iter()
            .flat_map(|(p, m)| m.iter().map(move |(a, t)| (*p, *a, *t)))
    }

    pub fn cache(&self) -> impl Iterator<Item = (&Prefix, &Cached)> {
        self.cache.iter()
    }

    pub fn pending(&self) -> impl Iterator<Item = (&u32, &PendingResolve)> {
        self.pending.iter()
    }

    /// Control messages to send: (controller address, message). The router wraps each in a
    /// Serval UDP datagram from and to serviceID 88888.
    pub fn take_outbox(&mut self) -> Vec<(Ipv4Addr, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    /// Whether an answer arrived since the last call (delayed packets may be released).
    pub fn take_resolved(&mut self) -> bool {
        std::mem::take(&mut self.resolved)
    }

    /// A control message `msg` (the UDP payload of a Serval datagram to the controller's
    /// serviceID) from IP source `src`.
    pub fn control(&mut self, src: Ipv4Addr, msg: &[u8], now_ms: u64) -> Outcome {
        if msg.first() == Some(&(ctrlmsg::Kind::Resolve as u8)) {
            return match Resolve::parse(msg) {
                Ok(r) => self.resolve_msg(src, r, now_ms),
                Err(e) => self.refuse(format!("RESOLVE: {e}")),
            };
        }
        let r = match Register::parse(msg) {
            Ok(r) => r,
            Err(e) => {
                let kind = msg.first().copied().and_then(ctrlmsg::Kind::from_u8);
                return self.refuse(format!("{kind:?}: {e}"));
            }
        };
        let prefix = Prefix::new(r.id, r.prefix_len());
        if r.flags & DELEGATE != 0 {
            return self.pointer(prefix, src, !r.unregister, now_ms);
        }
        if r.unregister {
            self.stats.unregisters += 1;
            if self.registrations.remove(&(prefix, src)).is_some() {
                self.drop_target(prefix, src);
            }
            self.advertise(prefix);
            return Outcome::Unregistered { prefix, addr: src };
        }
        if r.flags & ctrlmsg::REREGISTER != 0 && r.old_addr != src {
            self.stats.reregisters += 1;
            if self.registrations.remove(&(prefix, r.old_addr)).is_some() {
                self.drop_target(prefix, r.old_addr);
            }
        }
        // New or refreshed, the target is (re)installed: it may have been deleted by hand.
        if let Err(e) = self.rules.add(prefix, 0, Mode::Anycast, &[forward(src, 1)]) {
            return self.refuse(e.to_string());
        }
        match self.registrations.get_mut(&(prefix, src)) {
            Some(reg) => {
                reg.refreshed_ms = now_ms;
                reg.refreshes += 1;
                self.stats.refreshes += 1;
            }
            None => {
                self.stats.registers += 1;
                self.registrations.insert(
                    (prefix, src),
                    Registration {
                        first_ms: now_ms,
                        refreshed_ms: now_ms,
                        refreshes: 0,
                    },
                );
            }
        }
        self.advertise(prefix);
        Outcome::Registered { prefix, addr: src }
    }

    fn refuse(&mut self, why: String) -> Outcome {
        self.stats.refused += 1;
        Outcome::Refused(why)
    }

    /// Remove the FORWARD target `addr` of `prefix` (priority 0) unless a registration or a
    /// cached answer still wants it.
    fn drop_target(&mut self, prefix: Prefix, addr: Ipv4Addr) {
        let cached = self
            .cache
            .get(&prefix)
            .is_some_and(|c| c.targets.iter().any(|t| t.0 == addr));
        if !cached && !self.registrations.contains_key(&(prefix, addr)) {
            let _ = self.rules.del(prefix, Some(0), Some(addr));
        }
    }

    /// A child's pointer record for `prefix`.
    fn pointer(&mut self, prefix: Prefix, child: Ipv4Addr, present: bool, now: u64) -> Outcome {
        if present {
            self.resolve_stats.pointer_updates += 1;
            self.pointers.entry(prefix).or_default().insert(child, now);
            self.pointer_index.insert(&prefix, ());
        } else {
            self.resolve_stats.pointer_removes += 1;
            self.remove_pointer(prefix, child);
        }
        self.advertise(prefix);
        Outcome::Pointer {
            prefix,
            child,
            present,
        }
    }

    fn remove_pointer(&mut self, prefix: Prefix, child: Ipv4Addr) {
        let Some(m) = self.pointers.get_mut(&prefix) else {
            return;
        };
        m.remove(&child);
        if m.is_empty() {
            self.pointers.remove(&prefix);
            self.pointer_index.remove(&prefix);
        }
        // Answers learned for services under the prefix are stale now.
        let stale: Vec<Prefix> = self
            .cache
            .keys()
            .filter(|p| p.len >= prefix.len && p.id.masked(prefix.len) == prefix.id)
            .copied()
            .collect();
        for p in stale {
            self.uncache(p);
        }
    }

    /// Tell the parent whether this controller still knows `prefix`.
    fn advertise(&mut self, prefix: Prefix) {
        let Some(parent) = self.set.hierarchy.and_then(|h| h.parent) else {
            return;
        };
        if prefix.len == 0 {
            return; // a default rule is not a service to point at
        }
        let known = self.pointers.contains_key(&prefix)
            || self
                .registrations
                .range((prefix, ANY)..=(prefix, BROADCAST))
                .next()
                .is_some();
        let told = self.advertised.contains(&prefix);
        if known != told {
            self.send_pointer(parent, prefix, known);
            if known {
                self.advertised.insert(prefix);
            } else {
                self.advertised.remove(&prefix);
            }
        }
    }

    fn send_pointer(&mut self, parent: Ipv4Addr, prefix: Prefix, present: bool) {
        let msg = Register {
            unregister: !present,
            xid: self.xid(),
            flags: DELEGATE,
            // The original's 0 means the whole id.
            prefix_bits: if prefix.len >= 256 {
                0
            } else {
                prefix.len as u8
            },
            service_flags: 0,
            old_addr: ANY,
            id: prefix.id,
        }
        .emit();
        self.resolve_stats.adverts_sent += 1;
        self.outbox.push((parent, msg.to_vec()));
    }

    fn xid(&mut self) -> u32 {
        let x = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(1).max(1);
        x
    }

    /// Queue a packet whose rule is DELAY; with a hierarchy, resolve its service. False when
    /// the queue is full (the packet is dropped, counted).
    pub fn delay(&mut self, service: ServiceId, frame: &[u8], port: u16, now_ms: u64) -> bool {
        if self.delay.len() >= self.set.delay_cap {
            self.stats.delay_full += 1;
            return false;
        }
        self.stats.delayed += 1;
        self.delay.push_back(Delayed {
            id: self.next_delay,
            service,
            since_ms: now_ms,
            frame: frame.to_vec(),
            port,
        });
        self.next_delay += 1;
        if let Some(h) = self.set.hierarchy {
            let waiting = self
                .pending
                .values()
                .any(|p| p.origin == Origin::Local && p.service == service);
            if !waiting {
                self.resolve_stats.resolutions += 1;
                let recursive = h.mode == ResolveMode::Recursive;
                self.resolve(Origin::Local, service, recursive, 0, now_ms);
            }
        }
        true
    }

    /// The packets waiting.
    pub fn delayed(&self) -> impl Iterator<Item = &Delayed> {
        self.delay.iter()
    }

    fn resolve_msg(&mut self, src: Ipv4Addr, r: Resolve, now: u64) -> Outcome {
        match r.answer {
            None => {
                self.resolve_stats.requests_received += 1;
                let origin = Origin::Remote {
                    addr: src,
                    xid: r.xid,
                };
                self.resolve(origin, r.id, r.recursive, r.hops, now);
            }
            Some(a) => self.response(src, r, a, now),
        }
        Outcome::Resolve
    }

    /// Resolve `id` for `origin`: from the table, else through the child that holds it, else
    /// through the parent.
    fn resolve(&mut self, origin: Origin, id: ServiceId, recursive: bool, hops: u8, now: u64) {
        if let Some(m) = self.rules.table().lookup(&id) {
            if m.action == Action::Forward {
                let prefix = Prefix::new(id, m.prefix_len);
                let lifetime = match self.cache.get(&prefix) {
                    Some(c) => c.expires_ms.saturating_sub(now),
                    None => self.set.hierarchy.map_or(0, |h| h.cache_ms),
                };
                let targets: Vec<_> = m.targets().collect();
                return self.reply(origin, Answer::Found, id, m.prefix_len, lifetime, targets);
            }
        }
        let asker = match origin {
            Origin::Remote { addr, .. } => Some(addr),
            Origin::Local => None,
        };
        let parent = self.set.hierarchy.and_then(|h| h.parent);
        let child = self.pointer_index.lookup(&id).and_then(|(len, ())| {
            let m = self.pointers.get(&Prefix::new(id, len))?;
            m.keys().copied().find(|&c| Some(c) != asker)
        });
        // Up only when the request did not come from the parent (it knows no better).
        let next = child.or(parent.filter(|&p| Some(p) != asker));
        match next {
            Some(_) if hops >= MAX_HOPS => {
                self.reply(origin, Answer::NotFound, id, 0, 0, Vec::new())
            }
            Some(to) if recursive || origin == Origin::Local => {
                self.ask(origin, id, recursive, to, hops + 1, now)
            }
            Some(to) => self.reply(origin, Answer::Referral, id, 0, 0, vec![(to, 1)]),
            None => self.reply(origin, Answer::NotFound, id, 0, 0, Vec::new()),
        }
    }

    fn ask(
        &mut self,
        origin: Origin,
        id: ServiceId,
        recursive: bool,
        to: Ipv4Addr,
        hops: u8,
        now: u64,
    ) {
        let xid = self.xid();
        let msg = Resolve::request(xid, id, recursive, hops).emit();
        self.resolve_stats.requests_sent += 1;
        self.outbox.push((to, msg.clone()));
        self.pending.insert(
            xid,
            PendingResolve {
                service: id,
                origin,
                asked: to,
                recursive,
                hops,
                sent_ms: now,
                tries: 0,
                msg,
            },
        );
    }

    fn reply(
        &mut self,
        origin: Origin,
        answer: Answer,
        id: ServiceId,
        prefix_len: u16,
        lifetime_ms: u64,
        targets: Vec<(Ipv4Addr, u32)>,
    ) {
        match origin {
            Origin::Remote { addr, xid } => {
                let rs = &mut self.resolve_stats;
                match answer {
                    Answer::Found => rs.answered += 1,
                    Answer::Referral => rs.referred += 1,
                    Answer::NotFound => rs.not_found_sent += 1,
                }
                let msg = Resolve {
                    xid,
                    recursive: false,
                    answer: Some(answer),
                    hops: 0,
                    prefix_len,
                    lifetime_ms: lifetime_ms.min(u64::from(u32::MAX)) as u32,
                    id,
                    targets,
                }
                .emit();
                self.outbox.push((addr, msg));
            }
            Origin::Local if answer == Answer::NotFound => {
                let before = self.delay.len();
                self.delay.retain(|d| d.service != id);
                self.stats.delay_not_found += (before - self.delay.len()) as u64;
            }
            // Found: the new rule releases the packets; a referral is followed in `response`.
            Origin::Local => {}
        }
    }

    fn response(&mut self, src: Ipv4Addr, r: Resolve, answer: Answer, now: u64) {
        let Some(p) = self.pending.get(&r.xid) else {
            self.resolve_stats.unexpected += 1;
            return;
        };
        if p.asked != src || p.service != r.id {
            self.resolve_stats.unexpected += 1;
            return;
        }
        let Some(p) = self.pending.remove(&r.xid) else {
            return;
        };
        match answer {
            Answer::Found => {
                self.resolve_stats.answers_received += 1;
                let prefix = Prefix::new(r.id, r.prefix_len);
                self.install(prefix, &r.targets, src, now + u64::from(r.lifetime_ms));
                self.resolved = true;
                self.reply(
                    p.origin,
                    Answer::Found,
                    r.id,
                    r.prefix_len,
                    u64::from(r.lifetime_ms),
                    r.targets,
                );
            }
            Answer::Referral => {
                self.resolve_stats.referrals_received += 1;
                match r.targets.first() {
                    Some(&(to, _)) if p.hops < MAX_HOPS => {
                        self.ask(p.origin, p.service, p.recursive, to, p.hops + 1, now)
                    }
                    _ => self.reply(p.origin, Answer::NotFound, p.service, 0, 0, Vec::new()),
                }
            }
            Answer::NotFound => {
                self.resolve_stats.not_found_received += 1;
                self.reply(p.origin, Answer::NotFound, p.service, 0, 0, Vec::new());
            }
        }
    }

    /// Cache an answer as FORWARD targets of `prefix` (priority 0, like a registration).
    fn install(
        &mut self,
        prefix: Prefix,
        targets: &[(Ipv4Addr, u32)],
        from: Ipv4Addr,
        expires_ms: u64,
    ) {
        if self.cache.contains_key(&prefix) {
            self.uncache(prefix);
        }
        let ts: Vec<Target> = targets.iter().map(|&(a, w)| forward(a, w)).collect();
        if self.rules.add(prefix, 0, Mode::Anycast, &ts).is_err() {
            return; // table full: answered, not cached
        }
        self.resolve_stats.cached += 1;
        self.cache.insert(
            prefix,
            Cached {
                targets: targets.to_vec(),
                expires_ms,
                from,
            },
        );
    }

    fn uncache(&mut self, prefix: Prefix) {
        if let Some(c) = self.cache.remove(&prefix) {
            for (a, _) in c.targets {
                self.drop_target(prefix, a);
            }
        }
    }

    /// Timers: registrations and pointer records past their TTL expire (and leave the
    /// parent), pointer records are refreshed at the parent, cached answers expire,
    /// unanswered requests are resent or fail, delayed packets past their timeout are dropped;
    /// delayed packets whose service no longer resolves to DELAY are returned, to be matched
    /// again.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Delayed> {
        self.expire(now_ms);
        self.release()
    }

    fn expire(&mut self, now: u64) {
        let ttl = self.set.ttl_ms;
        let expired: Vec<(Prefix, Ipv4Addr)> = self
            .registrations
            .iter()
            .filter(|(_, r)| now.saturating_sub(r.refreshed_ms) > ttl)
            .map(|(k, _)| *k)
            .collect();
        for (p, a) in expired {
            self.registrations.remove(&(p, a));
            self.drop_target(p, a);
            self.stats.expired += 1;
            self.advertise(p);
        }
        let gone: Vec<(Prefix, Ipv4Addr, u64)> = self
            .pointers()
            .filter(|(_, _, t)| now.saturating_sub(*t) > ttl)
            .collect();
        for (p, c, _) in gone {
            self.resolve_stats.pointers_expired += 1;
            self.remove_pointer(p, c);
            self.advertise(p);
        }
        let old: Vec<Prefix> = self
            .cache
            .iter()
            .filter(|(_, c)| c.expires_ms <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in old {
            self.resolve_stats.cache_expired += 1;
            self.uncache(p);
        }
        if let Some(h) = self.set.hierarchy {
            if let Some(parent) = h.parent {
                if now.saturating_sub(self.last_refresh_ms) >= h.refresh_ms {
                    self.last_refresh_ms = now;
                    let told: Vec<Prefix> = self.advertised.iter().copied().collect();
                    for p in told {
                        self.send_pointer(parent, p, true);
                    }
                }
            }
            let late: Vec<u32> = self
                .pending
                .iter()
                .filter(|(_, p)| now.saturating_sub(p.sent_ms) >= h.timeout_ms)
                .map(|(x, _)| *x)
                .collect();
            for x in late {
                let Some(p) = self.pending.get_mut(&x) else {
                    continue;
                };
                if p.tries < RETRIES {
                    p.tries += 1;
                    p.sent_ms = now;
                    self.resolve_stats.requests_sent += 1;
                    self.outbox.push((p.asked, p.msg.clone()));
                } else if let Some(p) = self.pending.remove(&x) {
                    self.resolve_stats.timeouts += 1;
                    self.reply(p.origin, Answer::NotFound, p.service, 0, 0, Vec::new());
                }
            }
        }
        let timeout = self.set.delay_timeout_ms;
        let before = self.delay.len();
        self.delay
            .retain(|d| now.saturating_sub(d.since_ms) <= timeout);
        self.stats.delay_timeouts += (before - self.delay.len()) as u64;
    }

    /// Delayed packets whose service no longer resolves to DELAY, to be matched again.
    pub fn release(&mut self) -> Vec<Delayed> {
        let table = self.rules.table().clone();
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.delay.len());
        for d in self.delay.drain(..) {
            match table.lookup(&d.service) {
                Some(m) if m.action == Action::Delay => keep.push_back(d),
                _ => out.push(d),
            }
        }
        self.delay = keep;
        self.stats.delay_released += out.len() as u64;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::ServiceTable;
    use std::sync::Arc;

    fn flat(ttl_ms: u64, delay_cap: usize, delay_timeout_ms: u64) -> Settings {
        Settings {
            ttl_ms,
            delay_cap,
            delay_timeout_ms,
            hierarchy: None,
        }
    }

    fn reg(id: u32, unregister: bool, flags: u8, old: Ipv4Addr) -> Vec<u8> {
        Register {
            unregister,
            xid: 7,
            flags,
            prefix_bits: 32,
            service_flags: 0,
            old_addr: old,
            id: ServiceId::from_u32(id),
        }
        .emit()
        .to_vec()
    }

    #[test]
    fn register_refresh_move_unregister_expire() {
        let table = Arc::new(ServiceTable::new(64));
        let mut c = Controller::new(Rules::new(table.clone()), flat(50_000, 4, 2000));
        let (a, b) = (Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 3, 2));
        let id = ServiceId::from_u32(16385);
        let z = Ipv4Addr::UNSPECIFIED;
        assert!(matches!(
            c.control(a, &reg(16385, false, 0, z), 0),
            Outcome::Registered { .. }
        ));
        assert_eq!(table.lookup(&id).unwrap().addrs().collect::<Vec<_>>(), [a]);
        c.control(b, &reg(16385, false, 0, z), 1000);
        assert_eq!(table.lookup(&id).unwrap().len(), 2);
        // a refreshes at 20 s, b does not: at 60 s b has expired.
        c.control(a, &reg(16385, false, 0, z), 20_000);
        c.control(a, &reg(16385, false, 0, z), 40_000);
        c.poll(60_000);
        assert_eq!(table.lookup(&id).unwrap().addrs().collect::<Vec<_>>(), [a]);
        assert_eq!(c.stats.expired, 1);
        // a moves to b (REREGISTER from the new address, naming the old).
        c.control(b, &reg(16385, false, ctrlmsg::REREGISTER, a), 61_000);
        assert_eq!(table.lookup(&id).unwrap().addrs().collect::<Vec<_>>(), [b]);
        c.control(b, &reg(16385, true, 0, z), 62_000);
        assert!(table.lookup(&id).is_none());
        assert!(matches!(c.control(b, &[1, 2, 3], 0), Outcome::Refused(_)));
        assert_eq!(
            (c.stats.registers, c.stats.refreshes, c.stats.unregisters),
            (3, 2, 1)
        );
    }

    #[test]
    fn delayed_packets_wait_release_or_time_out() {
        let table = Arc::new(ServiceTable::new(64));
        let mut c = Controller::new(Rules::new(table.clone()), flat(50_000, 2, 2000));
        let delay = Target {
            action: Action::Delay,
            addr: Ipv4Addr::UNSPECIFIED,
            weight: 1,
        };
        c.rules()
            .add(Prefix::DEFAULT, 0, Mode::Anycast, &[delay])
            .unwrap();
        let id = ServiceId::from_u32(5);
        assert!(c.delay(id, b"one", 0, 0));
        assert!(c.delay(ServiceId::from_u32(6), b"two", 0, 500));
        assert!(!c.delay(id, b"three", 0, 600), "bounded");
        assert!(c.poll(1000).is_empty(), "still DELAY");
        // A host registers service 5: its packet is released, 6's times out later.
        c.control(
            Ipv4Addr::new(10, 0, 2, 2),
            &reg(5, false, 0, Ipv4Addr::UNSPECIFIED),
            1500,
        );
        let out = c.poll(1600);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].frame, b"one");
        assert!(c.poll(2600).is_empty());
        assert_eq!(c.delayed().count(), 0);
        assert_eq!(
            (
                c.stats.delay_released,
                c.stats.delay_timeouts,
                c.stats.delay_full
            ),
            (1, 1, 1)
        );
    }

    /// Three controllers — a root and two leaves — joined by a "network" that delivers every
    /// message each sends (counting them).
    struct Tree {
        nodes: Vec<(Ipv4Addr, Arc<ServiceTable>, Controller)>,
        delivered: usize,
    }

    const ROOT: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
    const LEAF_B: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
    const LEAF_A: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 3);
    const HOST: Ipv4Addr = Ipv4Addr::new(10, 2, 1, 2);

    impl Tree {
        fn new(mode: ResolveMode) -> Self {
            let node = |addr, parent| {
                let table = Arc::new(ServiceTable::new(64));
                let mut c = Controller::new(
                    Rules::new(table.clone()),
                    Settings {
                        ttl_ms: 3000,
                        delay_cap: 16,
                        delay_timeout_ms: 2000,
                        hierarchy: Some(Hierarchy {
                            parent,
                            mode,
                            cache_ms: 5000,
                            refresh_ms: 1000,
                            timeout_ms: 300,
                        }),
                    },
                );
                // Unknown services wait for resolution.
                let delay = Target {
                    action: Action::Delay,
                    addr: ANY,
                    weight: 1,
                };
                c.rules()
                    .add(Prefix::DEFAULT, 0, Mode::Anycast, &[delay])
                    .unwrap();
                (addr, table, c)
            };
            Tree {
                nodes: vec![
                    node(ROOT, None),
                    node(LEAF_B, Some(ROOT)),
                    node(LEAF_A, Some(ROOT)),
                ],
                delivered: 0,
            }
        }

        fn at(&mut self, addr: Ipv4Addr) -> &mut Controller {
            &mut self.nodes.iter_mut().find(|n| n.0 == addr).unwrap().2
        }

        fn table(&self, addr: Ipv4Addr) -> &ServiceTable {
            &self.nodes.iter().find(|n| n.0 == addr).unwrap().1
        }

        /// Where `addr`'s table forwards `svc` (nothing when it delays or drops it).
        fn forwards(&self, addr: Ipv4Addr, svc: &ServiceId) -> Vec<Ipv4Addr> {
            self.table(addr)
                .lookup(svc)
                .filter(|m| m.action == Action::Forward)
                .map_or(Vec::new(), |m| m.addrs().collect())
        }

        /// Deliver until quiet; messages to `lost` vanish.
        fn run(&mut self, now: u64, lost: Option<Ipv4Addr>) {
            loop {
                let mut msgs = Vec::new();
                for n in &mut self.nodes {
                    let from = n.0;
                    msgs.extend(n.2.take_outbox().into_iter().map(|(to, m)| (from, to, m)));
                }
                if msgs.is_empty() {
                    return;
                }
                for (from, to, m) in msgs {
                    if Some(to) == lost {
                        continue;
                    }
                    self.delivered += 1;
                    if let Some(n) = self.nodes.iter_mut().find(|n| n.0 == to) {
                        n.2.control(from, &m, now);
                    }
                }
            }
        }
    }

    fn hierarchy_resolves(mode: ResolveMode) {
        let mut t = Tree::new(mode);
        let svc = ServiceId::from_u32(3001);
        let z = Ipv4Addr::UNSPECIFIED;
        // The host registers with leaf A; the pointer goes up to the root (not to leaf B).
        t.at(LEAF_A).control(HOST, &reg(3001, false, 0, z), 0);
        t.run(0, None);
        let p = Prefix::new(svc, 32);
        assert_eq!(t.at(ROOT).pointers().collect::<Vec<_>>(), [(p, LEAF_A, 0)]);
        assert_eq!(t.at(LEAF_B).pointers().count(), 0);
        // A SYN for it reaches leaf B: DELAY, resolution, a FORWARD rule, the packet released.
        assert!(t.at(LEAF_B).delay(svc, b"syn", 0, 10));
        assert!(
            t.at(LEAF_B).delay(svc, b"syn again", 0, 11),
            "one resolution for both"
        );
        assert_eq!(t.at(LEAF_B).pending().count(), 1);
        t.run(12, None);
        let m = t.table(LEAF_B).lookup(&svc).unwrap();
        assert_eq!((m.action, m.prefix_len), (Action::Forward, 32));
        assert_eq!(m.addrs().collect::<Vec<_>>(), [HOST]);
        assert!(t.at(LEAF_B).take_resolved());
        assert_eq!(t.at(LEAF_B).release().len(), 2);
        let (b, root) = (t.at(LEAF_B).resolve_stats, t.at(ROOT).resolve_stats);
        match mode {
            ResolveMode::Iterative => {
                // B asked the root (a referral to A), then A.
                assert_eq!(
                    (b.requests_sent, b.referrals_received, b.answers_received),
                    (2, 1, 1)
                );
                assert_eq!((root.referred, root.cached), (1, 0));
                assert!(
                    t.forwards(ROOT, &svc).is_empty(),
                    "the answer did not pass the root"
                );
            }
            ResolveMode::Recursive => {
                // B asked the root only; the root asked A and cached the answer on the way.
                assert_eq!(
                    (b.requests_sent, b.referrals_received, b.answers_received),
                    (1, 0, 1)
                );
                assert_eq!(
                    (root.requests_sent, root.answers_received, root.cached),
                    (1, 1, 1)
                );
                assert_eq!(t.forwards(ROOT, &svc), [HOST]);
            }
        }
        // The next SYN hits B's cache: no DELAY, no message.
        let sent = t.delivered;
        assert_eq!(
            t.table(LEAF_B).lookup(&svc).unwrap().action,
            Action::Forward
        );
        t.run(20, None);
        assert_eq!(t.delivered, sent);
        // The cache expires at B (5 s): a SYN is delayed and resolved again.
        t.at(LEAF_B).poll(5100);
        assert_eq!(t.table(LEAF_B).lookup(&svc).unwrap().action, Action::Delay);
        assert_eq!(t.at(LEAF_B).resolve_stats.cache_expired, 1);
        // Unknown services get a negative answer: the delayed packet is dropped.
        assert!(t.at(LEAF_B).delay(ServiceId::from_u32(4040), b"x", 0, 5200));
        t.run(5200, None);
        assert_eq!(t.at(LEAF_B).delayed().count(), 0);
        assert_eq!(t.at(LEAF_B).stats.delay_not_found, 1);
        // Unregistration removes the records along the path (and the root's cached answer).
        t.at(LEAF_A).control(HOST, &reg(3001, true, 0, z), 5300);
        t.run(5300, None);
        assert_eq!(t.at(ROOT).pointers().count(), 0);
        assert!(t.forwards(ROOT, &svc).is_empty());
        assert!(t.forwards(LEAF_A, &svc).is_empty());
    }

    #[test]
    fn hierarchy_iterative() {
        hierarchy_resolves(ResolveMode::Iterative);
    }

    #[test]
    fn hierarchy_recursive() {
        hierarchy_resolves(ResolveMode::Recursive);
    }

    #[test]
    fn pointers_refresh_expire_and_requests_retry() {
        let mut t = Tree::new(ResolveMode::Recursive);
        let z = Ipv4Addr::UNSPECIFIED;
        t.at(LEAF_A).control(HOST, &reg(3001, false, 0, z), 0);
        t.run(0, None);
        // The host keeps refreshing; leaf A refreshes its pointer every second.
        for now in (1000..=6000).step_by(1000) {
            t.at(LEAF_A).control(HOST, &reg(3001, false, 0, z), now);
            t.at(LEAF_A).poll(now);
            t.at(ROOT).poll(now);
            t.run(now, None);
        }
        assert_eq!(t.at(ROOT).pointers().count(), 1, "refreshed, not expired");
        // The host stops: at A the registration expires after 3 s and the pointer is withdrawn.
        t.at(LEAF_A).poll(9100);
        t.run(9100, None);
        assert_eq!(t.at(LEAF_A).stats.expired, 1);
        assert_eq!(t.at(ROOT).pointers().count(), 0);
        // A pointer whose child goes silent expires at the root by itself.
        t.at(LEAF_A).control(HOST, &reg(3002, false, 0, z), 10_000);
        t.run(10_000, None);
        assert_eq!(t.at(ROOT).pointers().count(), 1);
        t.at(ROOT).poll(13_100);
        assert_eq!(t.at(ROOT).pointers().count(), 0);
        assert_eq!(t.at(ROOT).resolve_stats.pointers_expired, 1);
        // A request to a controller that never answers is resent twice, then fails.
        t.at(LEAF_A).control(HOST, &reg(3003, false, 0, z), 14_000);
        t.run(14_000, None);
        let svc = ServiceId::from_u32(3003);
        assert!(t.at(LEAF_B).delay(svc, b"syn", 0, 14_000));
        t.run(14_000, Some(ROOT));
        for now in [14_300, 14_600, 14_900] {
            t.at(LEAF_B).poll(now);
            t.run(now, Some(ROOT));
        }
        let b = t.at(LEAF_B).resolve_stats;
        assert_eq!((b.requests_sent, b.timeouts), (3, 1));
        assert_eq!(t.at(LEAF_B).stats.delay_not_found, 1);
        // Messages that are not for anyone waiting are counted, not acted on.
        let stray = Resolve {
            answer: Some(Answer::Found),
            prefix_len: 32,
            lifetime_ms: 1000,
            targets: vec![(HOST, 1)],
            ..Resolve::request(999, svc, false, 0)
        };
        t.at(LEAF_B).control(ROOT, &stray.emit(), 15_000);
        assert_eq!(t.at(LEAF_B).resolve_stats.unexpected, 1);
        assert_eq!(t.table(LEAF_B).lookup(&svc).unwrap().action, Action::Delay);
    }
}
