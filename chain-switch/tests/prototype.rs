//! The public NetChain P4 prototype's own request packets (built by its client,
//! `client/nc_socket.py`, for the chain 10.0.100.1 → .2 → .3, key 2018, vgroup 0) through
//! our nodes: the replies its switches give, as the fixture file describes them.

use chain_switch::node::{role, FailoverRule};
use chain_switch::stage::{ChainDrop, ChainShared, ChainStage};
use chain_switch::wire::{self, key_from_u128, op, QueryRepr};
use packet::ipv4::Ipv4Packet;
use packet::udp::UdpPacket;
use packet::{Buffer, DropReason, HeapBuffer, Stage, Verdict};
use std::net::Ipv4Addr;
use std::sync::Arc;

const ETH: usize = 14;

fn node(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 100, n)
}

fn fixture(name: &str) -> Vec<u8> {
    let text = include_str!("fixtures/netchain-prototype-packets.txt");
    let hex = text
        .lines()
        .find_map(|l| l.strip_prefix(name).map(str::trim))
        .unwrap_or_else(|| panic!("{name} is not in the fixture"));
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Nodes `addrs` in one appliance, all in vgroup 0 with the given roles, key 2018 inserted.
fn appliance(nodes: &[(u8, u16)]) -> ChainStage {
    let addrs: Vec<_> = nodes.iter().map(|&(n, _)| node(n)).collect();
    let shared = ChainShared::new(&addrs, 1024, 16);
    for (n, &(_, bits)) in shared.nodes.iter().zip(nodes) {
        n.roles.set(0, role::MEMBER | bits, 0);
        n.store.insert(&key_from_u128(2018)).unwrap();
    }
    ChainStage::new(Arc::new(shared))
}

/// A frame edited by a test, its lengths and checksums made right again (the stage acts only
/// on queries whose checksums hold).
fn checksummed(mut f: Vec<u8>) -> Vec<u8> {
    let total = (f.len() - ETH) as u16;
    let mut ip = Ipv4Packet::new_unchecked(&mut f[ETH..]);
    ip.set_total_len(total);
    ip.fill_checksum();
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let mut u = UdpPacket::new_unchecked(ip.payload_mut());
    u.set_len(total - 20);
    u.fill_checksum(src, dst);
    f
}

fn run(st: &mut ChainStage, frame: &[u8]) -> (Verdict, Vec<u8>) {
    let mut b = HeapBuffer::from_bytes(frame);
    let v = st.process(&mut b);
    (v, b.data().to_vec())
}

/// The frame's IP addresses, UDP ports, checksums verified, and the query read back.
fn look(f: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16, u16, QueryRepr, usize) {
    let ip = Ipv4Packet::new_checked(&f[ETH..]).unwrap();
    assert!(ip.verify_checksum(), "IP checksum");
    assert_eq!(usize::from(ip.total_len()) + ETH, f.len());
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(
        udp.verify_checksum(ip.src_addr(), ip.dst_addr()),
        "UDP checksum"
    );
    let q = QueryRepr::parse(udp.payload(), 16).unwrap();
    (
        ip.src_addr(),
        ip.dst_addr(),
        udp.src_port(),
        udp.dst_port(),
        q,
        udp.payload().len(),
    )
}

const HEAD: u16 = role::HEAD;
const MID: u16 = 0;
const TAIL: u16 = role::TAIL;

#[test]
fn prototype_requests_through_a_chain_in_one_appliance() {
    let mut st = appliance(&[(1, HEAD), (2, MID), (3, TAIL)]);
    let (v, w) = run(&mut st, &fixture("write_request"));
    assert_eq!(v, Verdict::Next, "routed back to the client");
    let (src, dst, sport, dport, q, len) = look(&w);
    // WRITE reply: 38 bytes, op 13, sc 0 (the tail pops its entry and the end marker, as the
    // prototype's `pop_chain` and `pop_chain_again` do), seq 1, the key, value 0xde, vgroup 0,
    // from the tail to the client's address and port 8889.
    assert_eq!(
        (src, dst, sport, dport, len),
        (node(3), Ipv4Addr::new(10, 0, 0, 2), 40000, 8889, 38)
    );
    assert_eq!((q.op, q.sc, q.seq, q.vgroup), (op::WRITE_REPLY, 0, 1, 0));
    assert!(q.list.is_empty());
    assert_eq!(q.key, key_from_u128(2018));
    assert_eq!(q.value, wire::value_from_u64(0xde, 16));
    // Every node of the chain holds the write.
    for n in &st.shared().nodes {
        let r = n.store.get(&key_from_u128(2018)).unwrap();
        assert_eq!((r.seq, r.value[15]), (1, 0xde), "{}", n.addr);
    }
    // READ reply after that write: 50 bytes that still carry (.2, .1, 0.0.0.0), op 11, sc 3,
    // seq 0, value 0xde.
    let (v, r) = run(&mut st, &fixture("read_request"));
    assert_eq!(v, Verdict::Next);
    let (src, dst, sport, dport, q, len) = look(&r);
    assert_eq!(
        (src, dst, sport, dport, len),
        (node(3), Ipv4Addr::new(10, 0, 0, 1), 40000, 8889, 50)
    );
    assert_eq!(q.list, [node(2), node(1)]);
    assert_eq!((q.op, q.sc, q.seq, q.vgroup), (op::READ_REPLY, 3, 0, 0));
    assert_eq!(q.value, wire::value_from_u64(0xde, 16));
    let c = st.counters;
    assert_eq!((c.writes, c.reads, c.replies, c.chained), (3, 1, 2, 2));
}

/// Three appliances, one node each: the same replies, hop by hop; a duplicate is stale.
#[test]
fn prototype_requests_through_three_appliances() {
    let mut a = appliance(&[(1, HEAD)]);
    let mut b = appliance(&[(2, MID)]);
    let mut c = appliance(&[(3, TAIL)]);
    let (_, w1) = run(&mut a, &fixture("write_request"));
    let (_, dst, _, dport, q, _) = look(&w1);
    assert_eq!(
        (dst, dport, q.list.as_slice(), q.sc, q.seq),
        (node(2), 8888, &[node(2), node(3)][..], 3, 1)
    );
    let (_, w2) = run(&mut b, &w1);
    let (_, dst, _, _, q, _) = look(&w2);
    assert_eq!((dst, q.sc, q.seq), (node(3), 2, 1));
    let (_, w3) = run(&mut c, &w2);
    let (src, dst, _, dport, q, len) = look(&w3);
    assert_eq!(
        (src, dst, dport, len, q.op, q.sc, q.seq),
        (node(3), Ipv4Addr::new(10, 0, 0, 2), 8889, 38, 13, 0, 1)
    );
    // The same write again at the middle (a duplicate): stale, dropped.
    let (v, _) = run(&mut b, &w1);
    assert_eq!(v, ChainDrop::Stale.drop());
    // A read at the middle is not answered; at the tail it is.
    let (v, _) = run(
        &mut b,
        &checksummed(
            fixture("read_request")
                .iter()
                .enumerate()
                .map(|(i, &x)| if i == 33 { 2 } else { x })
                .collect(),
        ),
    );
    assert_eq!(v, ChainDrop::ReadNotTail.drop());
    let (_, r) = run(&mut c, &fixture("read_request"));
    assert_eq!(look(&r).4.value[15], 0xde);
    // Not a member, unknown key.
    let (v, _) = run(&mut appliance(&[]), &fixture("write_request"));
    assert_eq!(v, Verdict::Next, "no node here: plain IP");
    let other = appliance(&[(1, HEAD)]);
    other.shared().nodes[0].roles.set(0, 0, 0);
    let (v, _) = run(&mut other.clone(), &fixture("write_request"));
    assert_eq!(v, ChainDrop::NotMember.drop());
    other.shared().nodes[0].roles.set(0, role::MEMBER | HEAD, 0);
    other.shared().nodes[0]
        .store
        .remove(&key_from_u128(2018))
        .unwrap();
    let (v, _) = run(&mut other.clone(), &fixture("write_request"));
    assert_eq!(v, ChainDrop::UnknownKey.drop());
}

/// Fast failover: the middle node is gone; the head's appliance skips it. Then the tail is
/// gone too: the middle's successor role goes to the head, which answers.
#[test]
fn failover_skips_a_dead_node() {
    let mut a = appliance(&[(1, HEAD)]);
    let mut c = appliance(&[(3, TAIL)]);
    a.shared()
        .failover
        .replace(&[FailoverRule {
            dst: node(2),
            next: node(3),
            vgroup: Some(0),
            to: std::net::Ipv4Addr::UNSPECIFIED,
        }])
        .unwrap();
    let (_, w1) = run(&mut a, &fixture("write_request"));
    let (_, dst, _, _, q, _) = look(&w1);
    assert_eq!(
        (dst, q.list.as_slice(), q.sc),
        (node(3), &[node(3)][..], 2),
        "skipped .2"
    );
    assert_eq!(a.counters.failovers, 1);
    let (_, w2) = run(&mut c, &w1);
    let (src, _, _, dport, q, _) = look(&w2);
    assert_eq!(
        (src, dport, q.op, q.seq),
        (node(3), 8889, op::WRITE_REPLY, 1)
    );
    // The failed middle's rule for another vgroup does not apply.
    let mut other = fixture("write_request");
    other[ETH + 20 + 8 + 52] = 0;
    other[ETH + 20 + 8 + 53] = 5;
    let other = checksummed(other);
    let st = a.shared().clone();
    st.nodes[0].roles.set(5, role::MEMBER | HEAD, 0);
    let mut b = HeapBuffer::from_bytes(&other);
    // (checksums are not checked on the way in; the stage rewrites them)
    assert_eq!(a.process(&mut b), Verdict::Next);
    assert_eq!(
        Ipv4Packet::new_checked(&b.data()[ETH..])
            .unwrap()
            .dst_addr(),
        node(2)
    );
}

/// A new head (a new session) never reuses a sequence number the old head stamped.
#[test]
fn a_new_head_jumps_its_sequence() {
    let mut b = appliance(&[(2, MID)]);
    let mut c = appliance(&[(3, TAIL)]);
    let mut a = appliance(&[(1, HEAD)]);
    let (_, w1) = run(&mut a, &fixture("write_request"));
    let (_, w2) = run(&mut b, &w1);
    run(&mut c, &w2);
    // The head dies; .2 becomes head in session 1 and the client writes to it.
    b.shared().nodes[0]
        .roles
        .set(0, role::MEMBER | role::HEAD, 1);
    let req = QueryRepr::request(
        op::WRITE_REQUEST,
        &[node(2), node(3)],
        key_from_u128(2018),
        &wire::value_from_u64(7, 16),
        0,
    );
    let mut frame = fixture("write_request")[..ETH + 28].to_vec();
    frame.extend_from_slice(&req.emit(true));
    Ipv4Packet::new_unchecked(&mut frame[ETH..]).set_dst_addr(node(2));
    let frame = checksummed(frame);
    let (_, w) = run(&mut b, &frame);
    let (_, _, _, _, q, _) = look(&w);
    assert_eq!(q.seq, 1 + chain_switch::store::SESSION_JUMP);
    let (_, r) = run(&mut c, &w);
    assert_eq!(look(&r).4.seq, 1 + chain_switch::store::SESSION_JUMP);
    // The old head's late write (seq 2) is stale at the tail now.
    let (_, late) = run(&mut a, &fixture("write_request"));
    let (_, late2) = run(&mut appliance(&[(2, MID)]), &late);
    let (v, _) = run(&mut c, &late2);
    assert_eq!(v, ChainDrop::Stale.drop());
}

#[test]
fn padding_and_garbage() {
    let mut st = appliance(&[(1, HEAD), (2, MID), (3, TAIL)]);
    // Ethernet padding after the IP packet is not part of the query.
    let mut f = fixture("write_request");
    f.extend_from_slice(&[0xaa; 6]);
    let (v, w) = run(&mut st, &f);
    assert_eq!(v, Verdict::Next);
    assert_eq!(look(&w).5, 38);
    // Truncated queries: no panic, nothing stored, no reply; they pass as plain IP (not a
    // query this node understands) or are dropped.
    let full = fixture("write_request");
    let before = st.counters;
    for cut in (ETH + 28..full.len()).step_by(3) {
        let mut f = full[..cut].to_vec();
        let tl = (cut - ETH) as u16;
        f[ETH + 2..ETH + 4].copy_from_slice(&tl.to_be_bytes());
        // A sound IP header (the router's input checks that before the stage sees it).
        Ipv4Packet::new_unchecked(&mut f[ETH..]).fill_checksum();
        let mut b = HeapBuffer::from_bytes(&f);
        let v = st.process(&mut b);
        assert!(v == Verdict::Next || matches!(v, Verdict::Drop(_)), "{v:?}");
    }
    let after = st.counters;
    assert_eq!(
        (after.writes, after.replies),
        (before.writes, before.replies)
    );
    assert_eq!(
        after.passed - before.passed,
        (full.len() - ETH - 28).div_ceil(3) as u64
    );
}

/// Found by fuzzing: a read whose sc (0) disagrees with its list became a reply its own
/// parser could not read. A request's sc must count its list.
#[test]
fn sc_must_count_the_list() {
    let mut st = appliance(&[(1, HEAD), (2, MID), (3, TAIL)]);
    let f = include_bytes!("fixtures/fuzz/sc-disagrees-with-list.bin");
    let (v, _) = run(&mut st, f);
    assert_eq!(v, ChainDrop::Malformed.drop());
}

/// A write reaching a middle node with no next entry (a misconfigured chain) is dropped before
/// it changes the node's registers.
#[test]
fn list_end_at_a_middle_node_stores_nothing() {
    let mut b = appliance(&[(2, MID)]);
    let req = QueryRepr::request(
        op::WRITE_REQUEST,
        &[node(2)],
        key_from_u128(2018),
        &wire::value_from_u64(9, 16),
        0,
    );
    let mut frame = fixture("write_request")[..ETH + 28].to_vec();
    frame.extend_from_slice(&QueryRepr { seq: 5, ..req }.emit(true));
    Ipv4Packet::new_unchecked(&mut frame[ETH..]).set_dst_addr(node(2));
    let frame = checksummed(frame);
    let (v, _) = run(&mut b, &frame);
    assert_eq!(v, ChainDrop::ListEnd.drop());
    let r = b.shared().nodes[0].store.get(&key_from_u128(2018)).unwrap();
    assert_eq!((r.seq, r.value[15]), (0, 0), "nothing stored");
}
