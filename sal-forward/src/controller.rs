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

use crate::ctrlmsg::{self, Register};
use crate::id::{Prefix, ServiceId};
use crate::table::{Action, Mode, Rules, Target};
use std::collections::{BTreeMap, VecDeque};
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

/// The controller.
#[derive(Debug)]
pub struct Controller {
    rules: Rules,
    registrations: BTreeMap<(Prefix, Ipv4Addr), Registration>,
    ttl_ms: u64,
    delay: VecDeque<Delayed>,
    delay_cap: usize,
    delay_timeout_ms: u64,
    next_delay: u64,
    pub stats: ControllerStats,
}

/// The result of a control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Registered { prefix: Prefix, addr: Ipv4Addr },
    Unregistered { prefix: Prefix, addr: Ipv4Addr },
    Refused(String),
}

impl Controller {
    pub fn new(rules: Rules, ttl_ms: u64, delay_cap: usize, delay_timeout_ms: u64) -> Self {
        Controller {
            rules,
            registrations: BTreeMap::new(),
            ttl_ms,
            delay: VecDeque::new(),
            delay_cap,
            delay_timeout_ms,
            next_delay: 1,
            stats: ControllerStats::default(),
        }
    }

    /// The service table's writer (operator rules go through here too).
    pub fn rules(&mut self) -> &mut Rules {
        &mut self.rules
    }

    pub fn rules_ref(&self) -> &Rules {
        &self.rules
    }

    pub fn registrations(&self) -> impl Iterator<Item = (&(Prefix, Ipv4Addr), &Registration)> {
        self.registrations.iter()
    }

    /// A control message `msg` (the UDP payload of a Serval datagram to the controller's
    /// serviceID) from IP source `src`.
    pub fn control(&mut self, src: Ipv4Addr, msg: &[u8], now_ms: u64) -> Outcome {
        let r = match Register::parse(msg) {
            Ok(r) => r,
            Err(e) => {
                self.stats.refused += 1;
                let kind = msg.first().copied().and_then(ctrlmsg::Kind::from_u8);
                return Outcome::Refused(format!("{kind:?}: {e}"));
            }
        };
        let prefix = Prefix::new(r.id, r.prefix_len());
        let fwd = |addr| Target {
            action: Action::Forward,
            addr,
            weight: 1,
        };
        if r.unregister {
            self.stats.unregisters += 1;
            self.registrations.remove(&(prefix, src));
            let _ = self.rules.del(prefix, Some(0), Some(src));
            return Outcome::Unregistered { prefix, addr: src };
        }
        if r.flags & ctrlmsg::REREGISTER != 0 && r.old_addr != src {
            self.stats.reregisters += 1;
            if self.registrations.remove(&(prefix, r.old_addr)).is_some() {
                let _ = self.rules.del(prefix, Some(0), Some(r.old_addr));
            }
        }
        match self.registrations.get_mut(&(prefix, src)) {
            Some(reg) => {
                reg.refreshed_ms = now_ms;
                reg.refreshes += 1;
                self.stats.refreshes += 1;
                // The target may have been deleted by hand meanwhile: put it back.
                if let Err(e) = self.rules.add(prefix, 0, Mode::Anycast, &[fwd(src)]) {
                    self.stats.refused += 1;
                    return Outcome::Refused(e.to_string());
                }
            }
            None => {
                if let Err(e) = self.rules.add(prefix, 0, Mode::Anycast, &[fwd(src)]) {
                    self.stats.refused += 1;
                    return Outcome::Refused(e.to_string());
                }
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
        Outcome::Registered { prefix, addr: src }
    }

    /// Queue a packet whose rule is DELAY. False when the queue is full (the packet is
    /// dropped, counted).
    pub fn delay(&mut self, service: ServiceId, frame: &[u8], port: u16, now_ms: u64) -> bool {
        if self.delay.len() >= self.delay_cap {
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
        true
    }

    /// The packets waiting.
    pub fn delayed(&self) -> impl Iterator<Item = &Delayed> {
        self.delay.iter()
    }

    /// Timers: registrations past their TTL expire; delayed packets past their timeout are
    /// dropped; delayed packets whose service no longer resolves to DELAY are returned, to be
    /// matched again.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Delayed> {
        let ttl = self.ttl_ms;
        let expired: Vec<(Prefix, Ipv4Addr)> = self
            .registrations
            .iter()
            .filter(|(_, r)| now_ms.saturating_sub(r.refreshed_ms) > ttl)
            .map(|(k, _)| *k)
            .collect();
        for (p, a) in expired {
            self.registrations.remove(&(p, a));
            let _ = self.rules.del(p, Some(0), Some(a));
            self.stats.expired += 1;
        }
        let timeout = self.delay_timeout_ms;
        let before = self.delay.len();
        self.delay
            .retain(|d| now_ms.saturating_sub(d.since_ms) <= timeout);
        self.stats.delay_timeouts += (before - self.delay.len()) as u64;
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
        let mut c = Controller::new(Rules::new(table.clone()), 50_000, 4, 2000);
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
        let mut c = Controller::new(Rules::new(table.clone()), 50_000, 2, 2000);
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
}
