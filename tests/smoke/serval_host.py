#!/usr/bin/env python3
"""A small Serval host speaking the original wire format (IP protocol 144), for the smoke test.

SAL base header {src flowID, dst flowID, shl, protocol, checksum}, CONTROL/SERVICE/SOURCE
extensions, TCP inside with ports 0 — as the original user-mode stack puts it on the wire (see
shared/reference/wire-formats.md). The TCP here is a minimal stop-and-wait one (seq/ack,
retransmission on timeout): enough to open connections to a serviceID through a service router
and exchange data host to host.

  serve  ADDR [--register ROUTER --service ID[,ID...] --refresh S --refresh-for S] [--report FILE]
      Answer SYNs for any service (SYN-ACK straight to the client, SOURCE echoed with our
      address), echo data upper-cased. Checks the SAL and TCP checksums of every packet it
      gets (the router rewrote them). Optionally registers ID with the router's controller
      (REGISTER, the original control message, from serviceID 55555 to 88888; one message
      per ID) every S seconds
      for --refresh-for seconds, then stops refreshing. Writes a JSON report on SIGTERM.
  connect ROUTER SERVICE N      open N connections in turn, one data exchange each; prints
      JSON {"instances": {addr: count}, "failed": n}
  hold ROUTER SERVICE SECONDS --want ADDR   open a connection that lands on ADDR, then
      exchange data every 0.1 s for SECONDS; prints JSON {"instance", "exchanges", "failed"}
"""
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time

PROTO = 144
SYN, RSYN, ACK, NACK, RST, FIN = 0x80, 0x40, 0x20, 0x10, 0x08, 0x04


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def service_id(n):
    return struct.pack("!I", n) + bytes(28)


def sal(src_flow, dst_flow, proto, control=None, services=(), source=()):
    ext = b""
    if control is not None:
        flags, verno, ackno, nonce = control
        ext += struct.pack("!BBBBII8s", 0x10, 20, flags, 0, verno, ackno, nonce)
    for sid in services:
        ext += struct.pack("!BBH", 0x20, 36, 0) + sid
    if source:
        ext += struct.pack("!BBH", 0x40, 4 + 4 * len(source), 0)
        ext += b"".join(socket.inet_aton(a) for a in source)
    hl = 12 + len(ext)
    h = struct.pack("!IIBBH", src_flow, dst_flow, hl // 4, proto, 0) + ext
    return h[:10] + struct.pack("!H", csum(h)) + h[12:]


def parse_sal(b):
    if len(b) < 12:
        return None
    src_flow, dst_flow, shl, proto, _ = struct.unpack("!IIBBH", b[:12])
    hl = shl * 4
    if hl < 12 or hl > len(b):
        return None
    r = {"src_flow": src_flow, "dst_flow": dst_flow, "proto": proto, "len": hl,
         "flags": None, "services": [], "source": [], "ok": csum(b[:hl]) == 0}
    at = 12
    while at < hl:
        t = b[at] >> 4
        if t == 0:
            at += 1
            continue
        n = b[at + 1]
        if n < 2 or at + n > hl:
            return None
        if t == 1:
            r["flags"], r["verno"], r["ackno"], r["nonce"] = b[at + 2], *struct.unpack("!II8s", b[at + 4:at + 20])
        elif t == 2:
            r["services"].append(struct.unpack("!I", b[at + 4:at + 8])[0])
        elif t == 4:
            r["source"] = [socket.inet_ntoa(b[at + 4 + 4 * i:at + 8 + 4 * i]) for i in range((n - 4) // 4)]
        at += n
    return r


def tcp(src, dst, seq, ack, flags, payload=b""):
    seg = struct.pack("!HHIIBBHHH", 0, 0, seq, ack, 5 << 4, flags, 8192, 0, 0) + payload
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(seg))
    c = csum(pseudo + seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def tcp_ok(src, dst, seg):
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(seg))
    return csum(pseudo + seg) == 0


TCP_SYN, TCP_ACK = 0x02, 0x10


class Host:
    def __init__(self, addr):
        self.addr = addr
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, PROTO)
        self.sock.bind((addr, 0))
        self.sock.settimeout(0.05)
        self.flow = random.randint(1, 1 << 20)

    def next_flow(self):
        self.flow += 1
        return self.flow

    def send(self, dst, payload):
        self.sock.sendto(payload, (dst, 0))

    def recv(self):
        """(ip src, ip dst, parsed SAL, SAL bytes + rest) or None on timeout."""
        try:
            pkt, _ = self.sock.recvfrom(65535)
        except socket.timeout:
            return None
        ihl = (pkt[0] & 0x0F) * 4
        src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
        body = pkt[ihl:]
        s = parse_sal(body)
        if s is None:
            return None
        return src, dst, s, body


# ---------------------------------------------------------------- server

def serve(addr, register=None, services=(), refresh=20.0, refresh_for=1e9, report=None):
    h = Host(addr)
    flows = {}  # local flow -> (client addr, client flow, next seq, expected seq)
    stats = {"addr": addr, "syns": 0, "data": 0, "bad_sal_checksum": 0, "bad_tcp_checksum": 0,
             "registers": 0, "services": {}}
    stop = threading.Event()

    def dump(*_):
        if report:
            with open(report + ".tmp", "w") as f:
                json.dump(stats, f)
            os.replace(report + ".tmp", report)
        stop.set()

    signal.signal(signal.SIGTERM, dump)

    def registrar():
        start = time.monotonic()
        xid = 1
        while not stop.is_set() and time.monotonic() - start < refresh_for:
            for service in services:
                msg = struct.pack("!BBH", 0, 0, 48) + struct.pack("<I", xid)
                msg += struct.pack("!BBBB4s", 0, 0, 32, 0, bytes(4)) + service_id(service)
                udp = struct.pack("!HHHH", 0, 0, 8 + len(msg), 0) + msg  # checksum 0: none
                h.send(register, sal(h.next_flow(), 0, 17, None,
                                     (service_id(88888), service_id(55555))) + udp)
                stats["registers"] += 1
                xid += 1
            stop.wait(refresh)

    if register:
        threading.Thread(target=registrar, daemon=True).start()
    while not stop.is_set():
        got = h.recv()
        if got is None:
            continue
        src, dst, s, body = got
        if not s["ok"]:
            stats["bad_sal_checksum"] += 1
            continue
        if s["proto"] == 6 and not tcp_ok(src, dst, body[s["len"]:]):
            stats["bad_tcp_checksum"] += 1
            continue
        seg = body[s["len"]:]
        if s["flags"] is not None and s["flags"] & SYN and not s["flags"] & ACK and s["services"]:
            stats["syns"] += 1
            svc = str(s["services"][0])
            stats["services"][svc] = stats["services"].get(svc, 0) + 1
            client = s["source"][0] if s["source"] else src
            local = h.next_flow()
            cseq = struct.unpack("!I", seg[4:8])[0]
            flows[local] = [client, s["src_flow"], 7000, cseq + 1]
            source = s["source"] + [addr] if s["source"] else []
            hdr = sal(local, s["src_flow"], 6, (SYN | ACK, 1, s["verno"] + 1, s["nonce"]),
                      (), source)
            h.send(client, hdr + tcp(addr, client, 7000, cseq + 1, TCP_SYN | TCP_ACK))
        elif s["dst_flow"] in flows and len(seg) > 20:
            f = flows[s["dst_flow"]]
            data = seg[20:]
            seq = struct.unpack("!I", seg[4:8])[0]
            if seq == f[3]:
                f[3] = seq + len(data)
                stats["data"] += 1
            hdr = sal(s["dst_flow"], f[1], 6)
            h.send(f[0], hdr + tcp(addr, f[0], f[2], f[3], TCP_ACK, data.upper()))
    dump()


# ---------------------------------------------------------------- client

def await_packet(h, want, timeout):
    """The first (src, dst, sal, body) for which want(src, sal, body) holds, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = h.recv()
        if got is not None and want(got[0], got[2], got[3]):
            return got
    return None


def connect_once(h, router, service, timeout=1.0, tries=3):
    """SYN to the router; returns (instance, flow state) or None."""
    flow = h.next_flow()
    seq = random.randint(0, 1 << 30)
    nonce = os.urandom(8)
    syn = sal(flow, 0, 6, (SYN, seq, 0, nonce), (service_id(service),))
    synack = lambda src, s, body: (s["dst_flow"] == flow and s["flags"] is not None
                                   and s["flags"] & (SYN | ACK) == SYN | ACK)
    for _ in range(tries):
        h.send(router, syn + tcp(h.addr, router, seq, 0, TCP_SYN))
        got = await_packet(h, synack, timeout)
        if got is None:
            continue
        src, _, s, body = got
        sseq = struct.unpack("!I", body[s["len"] + 4:s["len"] + 8])[0]
        st = {"peer": src, "flow": flow, "peer_flow": s["src_flow"], "seq": seq + 1,
              "ack": sseq + 1}
        # Third ACK: CONTROL(ACK) + SERVICE, straight to the instance.
        ack = sal(flow, st["peer_flow"], 6, (ACK, seq + 1, s["verno"] + 1, s["nonce"]),
                  (service_id(service),))
        h.send(src, ack + tcp(h.addr, src, seq + 1, sseq + 1, TCP_ACK))
        return st
    return None


def exchange(h, st, data, timeout=1.0, tries=3):
    hdr = sal(st["flow"], st["peer_flow"], 6)
    echo = lambda src, s, body: s["dst_flow"] == st["flow"] and body[s["len"] + 20:] == data.upper()
    for _ in range(tries):
        h.send(st["peer"], hdr + tcp(h.addr, st["peer"], st["seq"], st["ack"], TCP_ACK, data))
        if await_packet(h, echo, timeout) is not None:
            st["seq"] += len(data)
            return True
    return False


def client_addr():
    return os.environ.get("SERVAL_ADDR", "10.0.1.2")


def connect(router, service, n):
    h = Host(client_addr())
    inst, failed = {}, 0
    for i in range(n):
        st = connect_once(h, router, service)
        if st is None or not exchange(h, st, b"hello %d" % i):
            failed += 1
            continue
        inst[st["peer"]] = inst.get(st["peer"], 0) + 1
    print(json.dumps({"instances": inst, "failed": failed}))


def hold(router, service, seconds, want):
    h = Host(client_addr())
    st = None
    for _ in range(50):
        st = connect_once(h, router, service)
        if st and st["peer"] == want:
            break
        st = None
    if st is None:
        print(json.dumps({"instance": None, "exchanges": 0, "failed": 1}))
        return
    # Tell the test the flow is established.
    print(json.dumps({"established": st["peer"]}), flush=True)
    ok = failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if exchange(h, st, b"still here %d" % ok):
            ok += 1
        else:
            failed += 1
        time.sleep(0.1)
    print(json.dumps({"instance": st["peer"], "exchanges": ok, "failed": failed}))


def main():
    a = sys.argv[1:]
    opt = lambda k, d=None: a[a.index(k) + 1] if k in a else d
    if a[0] == "serve":
        services = [int(x) for x in opt("--service", "0").split(",")]
        serve(a[1], opt("--register"), services, float(opt("--refresh", "20")),
              float(opt("--refresh-for", "1e9")), opt("--report"))
    elif a[0] == "connect":
        connect(a[1], int(a[2]), int(a[3]))
    elif a[0] == "hold":
        hold(a[1], int(a[2]), float(a[3]), opt("--want"))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
