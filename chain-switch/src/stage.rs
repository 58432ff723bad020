//! The NetChain stage (fast path): the router's IPv4 input hands it the packets
//! it claims, their IPv4 headers checked, before routing. A UDP datagram to port 8888 carrying a
//! query:
//!
//! - addressed to one of this appliance's nodes: the node acts for the query's virtual group —
//!   a **read** at the tail copies the stored value in and becomes the reply; a **write** at
//!   the head stamps `stored seq + 1` (a new session jumps, see [`crate::store`]) and stores
//!   the value, at any other node it is applied only when newer (else dropped as stale). Then
//!   the node's list entry is popped (sc − 1); the tail's write reply also drops the end
//!   marker. A reply swaps the IP addresses (the node answers the client), takes op 11 / 13 and
//!   UDP destination port 8889; anything else goes on to the next entry — processed again
//!   right here when that node is this appliance's too;
//! - headed for a node the failover table says is gone (destination, next entry, vgroup): the
//!   dead node's entry is popped and the query goes to the next (fast failover);
//! - otherwise it is plain IP.
//!
//! Lengths are rewritten and the IP and UDP checksums updated (RFC 1624) when the packet
//! changed; a query whose IP header checksum is wrong is dropped before a node acts; routing then
//! decrements the TTL and rewrites the MACs.

use crate::node::{role, Detour, Failover, Node};
use crate::store::Write;
use crate::wire::{self, op, KEY_LEN};
use packet::checksum::{self, Adjust};
use packet::claim::{Claim, Claimed, ClaimingStage, On};
use packet::ipv4::Ipv4Packet;
use packet::udp::UdpPacket;
use packet::{drop_reasons, Buffer, DropReason, Stage, Verdict};
use std::net::Ipv4Addr;
use std::sync::Arc;

drop_reasons! {
    /// Why the NetChain stage drops a packet.
    pub enum ChainDrop {
        Malformed = "malformed",
        /// The node is not in the query's virtual group.
        NotMember = "not-member",
        UnknownKey = "unknown-key",
        /// A read reached a node that is not the group's tail.
        ReadNotTail = "read-not-tail",
        /// A write older than (or as old as) what the node holds.
        Stale = "stale",
        /// Another worker held the key's registers at that moment.
        Busy = "busy",
        /// Writes for the group are stopped (recovery).
        Stopped = "stopped",
        /// The list ended before a tail answered (a misconfigured chain).
        ListEnd = "list-end",
    }
}

/// What the stage shares with the management core: this appliance's nodes and the failover
/// table.
#[derive(Debug)]
pub struct ChainShared {
    pub nodes: Vec<Node>,
    pub failover: Failover,
    pub value_len: usize,
}

impl ChainShared {
    pub fn new(addrs: &[Ipv4Addr], keys: usize, value_len: usize) -> Self {
        ChainShared {
            nodes: addrs
                .iter()
                .map(|&a| Node::new(a, keys, value_len))
                .collect(),
            failover: Failover::default(),
            value_len,
        }
    }

    #[inline]
    pub fn node(&self, addr: Ipv4Addr) -> Option<&Node> {
        self.nodes.iter().find(|n| n.addr == addr)
    }
}

/// One worker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChainCounters {
    pub reads: u64,
    pub writes: u64,
    /// Replies sent to clients (reads and writes answered at a tail).
    pub replies: u64,
    /// Queries passed on to the next node of their chain.
    pub chained: u64,
    /// Dead nodes skipped by the failover table.
    pub failovers: u64,
    /// NetChain queries for other hosts, routed as plain IP.
    pub passed: u64,
}

impl ChainCounters {
    pub const NAMES: [&'static str; 6] = [
        "reads",
        "writes",
        "replies",
        "chained",
        "failovers",
        "passed",
    ];
    pub fn values(&self) -> [u64; 6] {
        [
            self.reads,
            self.writes,
            self.replies,
            self.chained,
            self.failovers,
            self.passed,
        ]
    }
}

/// The NetChain stage of one worker.
#[derive(Debug, Clone)]
pub struct ChainStage {
    shared: Arc<ChainShared>,
    pub counters: ChainCounters,
}

const ETH: usize = packet::ethernet::HEADER_LEN;
/// Ethernet + IPv4 (no options) + UDP: where the query starts.
const QUERY_AT: usize = ETH + 20 + 8;

/// What one node did with a query.
enum Step {
    /// Popped and headed for the next entry.
    Next,
    /// Turned into the reply to the client.
    Reply,
}

impl ChainStage {
    pub fn new(shared: Arc<ChainShared>) -> Self {
        ChainStage {
            shared,
            counters: ChainCounters::default(),
        }
    }

    pub fn shared(&self) -> &Arc<ChainShared> {
        &self.shared
    }

    /// Pop the query's first list entry (4 bytes at the front of the UDP payload): sc − 1.
    /// `popped`: entries of `q`'s list already popped from the packet.
    #[inline]
    fn pop<B: Buffer>(
        pkt: &mut B,
        q: &wire::Query,
        popped: usize,
        sum: &mut Adjust,
    ) -> Result<(), ChainDrop> {
        let op_at = (QUERY_AT + q.op_at())
            .checked_sub(4 * popped)
            .ok_or(ChainDrop::Malformed)?;
        let d = pkt.data_mut();
        let (Some(&op), Some(&sc)) = (d.get(op_at), d.get(op_at + 1)) else {
            return Err(ChainDrop::Malformed);
        };
        d[op_at + 1] = sc.saturating_sub(1);
        sum.field16(
            u16::from_be_bytes([op, sc]),
            u16::from_be_bytes([op, d[op_at + 1]]),
        );
        // The rest moves by 4 bytes: its 16-bit words, and their sum, stay.
        sum.remove(&d[QUERY_AT..QUERY_AT + 4]);
        pkt.splice(QUERY_AT, 4, 0).map_err(|_| ChainDrop::Malformed)
    }

    /// The node `n` acts on the query in `pkt` (IP destination = its address).
    #[inline]
    fn at_node<B: Buffer>(
        counters: &mut ChainCounters,
        n: &Node,
        pkt: &mut B,
        q: &wire::Query,
        sum: &mut Adjust,
    ) -> Result<Step, ChainDrop> {
        let (bits, session) = n.roles.get(q.vgroup);
        if bits & role::MEMBER == 0 {
            return Err(ChainDrop::NotMember);
        }
        let p = &pkt.data()[QUERY_AT..];
        let key: &[u8; KEY_LEN] = q.key(p).try_into().map_err(|_| ChainDrop::Malformed)?;
        let slot = n.store.find(key).ok_or(ChainDrop::UnknownKey)?;
        let tail = bits & role::TAIL != 0;
        match q.op {
            op::READ_REQUEST => {
                if !tail {
                    return Err(ChainDrop::ReadNotTail);
                }
                counters.reads += 1;
                let v = QUERY_AT + q.value_at();
                let out = &mut pkt.data_mut()[v..v + q.value_len];
                // The value's bytes leave the checksum before the stored ones replace them.
                sum.remove(out);
                n.store.read(slot, out).ok_or(ChainDrop::Busy)?;
                sum.add(out);
                Self::pop(pkt, q, 0, sum)?;
                Self::reply(counters, pkt, 4 * (q.entries - 1), op::READ_REPLY, sum);
                Ok(Step::Reply)
            }
            op::WRITE_REQUEST => {
                if bits & role::STOPPED != 0 {
                    return Err(ChainDrop::Stopped);
                }
                // A node that is not the tail needs a next entry: checked before the write.
                if !tail && q.entries <= 2 {
                    return Err(ChainDrop::ListEnd);
                }
                let w = if bits & role::HEAD != 0 {
                    n.store.write_head(slot, key, q.value(p), session)
                } else {
                    n.store.write_newer(slot, key, q.value(p), q.seq)
                };
                let seq = match w {
                    Write::Applied(s) => s,
                    Write::Stale => return Err(ChainDrop::Stale),
                    Write::Busy => return Err(ChainDrop::Busy),
                };
                counters.writes += 1;
                let s = QUERY_AT + q.seq_at();
                sum.field16(q.seq, seq);
                pkt.data_mut()[s..s + 2].copy_from_slice(&seq.to_be_bytes());
                Self::pop(pkt, q, 0, sum)?;
                if tail {
                    // The list is down to its end marker: it goes too, and sc with it (0), as
                    // the prototype's tail pops again (`pop_chain_again`).
                    let mut left = q.entries - 1;
                    if left == 1 {
                        Self::pop(pkt, q, 1, sum)?;
                        left = 0;
                    }
                    Self::reply(counters, pkt, 4 * left, op::WRITE_REPLY, sum);
                    return Ok(Step::Reply);
                }
                Ok(Step::Next)
            }
            _ => Err(ChainDrop::Malformed),
        }
    }

    /// Make the query (its op byte at `op_at`) the reply to the client (the IP source): the
    /// addresses swap (the node answering is the destination it was sent to).
    #[inline]
    fn reply<B: Buffer>(
        counters: &mut ChainCounters,
        pkt: &mut B,
        op_at: usize,
        reply_op: u8,
        sum: &mut Adjust,
    ) {
        counters.replies += 1;
        let d = pkt.data_mut();
        let mut ip = Ipv4Packet::new_unchecked(&mut d[ETH..]);
        let (client, me) = (ip.src_addr(), ip.dst_addr());
        ip.set_src_addr(me);
        ip.set_dst_addr(client);
        UdpPacket::new_unchecked(&mut d[ETH + 20..]).set_dst_port(wire::REPLY_PORT);
        let at = QUERY_AT + op_at;
        let old = u16::from_be_bytes([d[at], d[at + 1]]);
        d[at] = reply_op;
        sum.field16(old, u16::from_be_bytes([d[at], d[at + 1]]));
    }

    /// Lengths and checksums after the query changed: RFC 1624 updates from the headers as
    /// they came in (`orig`) and the edits to the query (`sum`) — no pass over the packet.
    #[inline]
    fn finish<B: Buffer>(pkt: &mut B, orig: &Orig, mut sum: Adjust) {
        let d = pkt.data_mut();
        let udp_len = (d.len() - ETH - 20) as u16;
        let (src, dst) = {
            let mut ip = Ipv4Packet::new_unchecked(&mut d[ETH..]);
            ip.set_total_len(20 + udp_len);
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            let mut h = Adjust::default();
            h.field16(20 + orig.udp_len, 20 + udp_len);
            h.field32(orig.src.into(), src.into());
            h.field32(orig.dst.into(), dst.into());
            ip.set_checksum(h.apply(orig.ip_checksum));
            (src, dst)
        };
        let mut u = UdpPacket::new_unchecked(&mut d[ETH + 20..]);
        u.set_len(udp_len);
        if orig.udp_checksum != 0 {
            // The length sits in the header and in the pseudo-header; so do the addresses.
            sum.field16(orig.udp_len, udp_len);
            sum.field16(orig.udp_len, udp_len);
            sum.field32(orig.src.into(), src.into());
            sum.field32(orig.dst.into(), dst.into());
            sum.field16(wire::REQUEST_PORT, u.dst_port());
            u.set_checksum(checksum::udp_nonzero(sum.apply(orig.udp_checksum)));
        }
    }

    /// The headers as they came in (the IPv4 input checked the IP header's checksum: its
    /// addresses steer the query). The UDP checksum is not verified here — a switch does not, and Ethernet's
    /// FCS guards the links — but it is updated, not recomputed, so a query damaged on the way
    /// keeps a wrong checksum and its client discards the reply.
    #[inline]
    fn verified(d: &[u8]) -> Result<Orig, ChainDrop> {
        let ip = Ipv4Packet::new_unchecked(&d[ETH..]);
        let udp = UdpPacket::new_unchecked(&d[ETH + 20..]);
        let udp_len = udp.len();
        if usize::from(udp_len) != d.len() - ETH - 20 {
            return Err(ChainDrop::Malformed);
        }
        Ok(Orig {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            ip_checksum: ip.checksum(),
            udp_len,
            udp_checksum: udp.checksum(),
        })
    }
}

/// A query's headers before the stage changed them.
struct Orig {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ip_checksum: u16,
    udp_len: u16,
    udp_checksum: u16,
}

impl ClaimingStage for ChainStage {
    /// NetChain queries (UDP to the request port), whatever their destination: a node's own
    /// address, or a failed node's that this switch detours around.
    fn claims(&self) -> Vec<Claim> {
        vec![Claim {
            on: On::AnyDst,
            protocol: packet::ipv4::protocol::UDP,
            port: Some(wire::REQUEST_PORT),
            fragments: false,
        }]
    }

    fn process_claimed<B: Buffer>(
        &mut self,
        pkts: &mut [B],
        claimed: &[Claimed],
        verdicts: &mut [Verdict],
    ) {
        packet::claim::for_each_claimed(pkts, claimed, verdicts, |p, c| self.claimed(p, c));
    }
}

impl Stage for ChainStage {
    type Reason = ChainDrop;
    const NAME: &'static str = "netchain";

    /// A packet that has not been through the router's IPv4 input (tests, fuzzing).
    #[inline]
    fn process<B: Buffer>(&mut self, pkt: &mut B) -> Verdict {
        self.process_unclaimed(pkt)
    }
}

impl ChainStage {
    /// One claimed packet (its IPv4 header checked by the input).
    #[inline]
    fn claimed<B: Buffer>(&mut self, pkt: &mut B, c: &Claimed) -> Verdict {
        let d = pkt.data();
        // The prototype's queries: an option-less header, not fragmented.
        if d.len() < QUERY_AT
            || usize::from(c.ip_at) != ETH
            || usize::from(c.l4_at) != ETH + 20
            || c.fragment
        {
            return Verdict::Next;
        }
        let ip = Ipv4Packet::new_unchecked(&d[ETH..]);
        if ip.protocol() != packet::ipv4::protocol::UDP
            || u16::from_be_bytes([d[ETH + 22], d[ETH + 23]]) != wire::REQUEST_PORT
        {
            return Verdict::Next;
        }
        let total = usize::from(ip.total_len());
        if total < 28 || ETH + total > d.len() {
            return ChainDrop::Malformed.drop();
        }
        // Drop any Ethernet padding: the query ends where the IP packet does.
        let pad = d.len() - ETH - total;
        if pad > 0 && pkt.trim(pad).is_err() {
            return ChainDrop::Malformed.drop();
        }
        // Borrow the shared state and the counters apart (no reference-count traffic per packet).
        let ChainStage { shared, counters } = self;
        let shared: &ChainShared = shared;
        let vl = shared.value_len;
        let mut changed = false;
        let mut orig: Option<Orig> = None;
        let mut sum = Adjust::default();
        for _ in 0..=wire::MAX_LIST {
            let d = pkt.data();
            let Ok(q) = wire::parse(&d[QUERY_AT..], vl) else {
                if changed {
                    return ChainDrop::Malformed.drop();
                }
                // Not a query this node understands: plain IP.
                counters.passed += 1;
                return Verdict::Next;
            };
            if q.op != op::READ_REQUEST && q.op != op::WRITE_REQUEST {
                break;
            }
            // A request's sc counts its list (the prototype's client sets it so); the pops
            // below keep them in step.
            if usize::from(q.sc) != q.entries {
                return ChainDrop::Malformed.drop();
            }
            let dst = Ipv4Packet::new_unchecked(&d[ETH..]).dst_addr();
            if let Some(n) = shared.node(dst) {
                if orig.is_none() {
                    match Self::verified(d) {
                        Ok(o) => orig = Some(o),
                        Err(r) => return r.drop(),
                    }
                }
                match Self::at_node(counters, n, pkt, &q, &mut sum) {
                    Ok(Step::Reply) => {
                        changed = true;
                        break;
                    }
                    Ok(Step::Next) => {
                        counters.chained += 1;
                        changed = true;
                    }
                    Err(r) => return r.drop(),
                }
            } else {
                let p = &d[QUERY_AT..];
                let next = q.entry(p, 1).unwrap_or(Ipv4Addr::UNSPECIFIED);
                let detour = shared.failover.lookup(dst, next, q.vgroup);
                let acts = match detour {
                    // Skipping needs a next entry: a dead last node is nobody's to skip.
                    Detour::Skip => !next.is_unspecified(),
                    Detour::To(_) => true,
                    Detour::None => false,
                };
                if acts && orig.is_none() {
                    match Self::verified(d) {
                        Ok(o) => orig = Some(o),
                        Err(r) => return r.drop(),
                    }
                }
                match detour {
                    Detour::Skip if acts => {
                        counters.failovers += 1;
                        if let Err(r) = Self::pop(pkt, &q, 0, &mut sum) {
                            return r.drop();
                        }
                    }
                    Detour::To(a) => {
                        // Recovery put `a` in the dead node's place: the entry becomes it.
                        counters.failovers += 1;
                        let e = &mut pkt.data_mut()[QUERY_AT..QUERY_AT + 4];
                        let old = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
                        sum.field32(old, a.into());
                        e.copy_from_slice(&a.octets());
                    }
                    _ => {
                        if !changed {
                            counters.passed += 1;
                        }
                        break;
                    }
                }
                changed = true;
            }
            // Headed for the (new) first entry.
            let d = pkt.data_mut();
            let next = [
                d[QUERY_AT],
                d[QUERY_AT + 1],
                d[QUERY_AT + 2],
                d[QUERY_AT + 3],
            ];
            Ipv4Packet::new_unchecked(&mut d[ETH..]).set_dst_addr(Ipv4Addr::from(next));
        }
        if let (true, Some(o)) = (changed, orig.as_ref()) {
            Self::finish(pkt, o, sum);
        }
        Verdict::Next
    }
}
