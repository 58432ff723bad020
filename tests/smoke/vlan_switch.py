#!/usr/bin/env python3
"""An 802.1Q switch in user space: one trunk port and access ports, one VLAN each.

Usage: vlan_switch.py TRUNK VID:IFACE...

A frame that arrives on an access port leaves the trunk tagged with that port's VLAN; a frame
tagged with an access port's VLAN arriving on the trunk leaves that port untagged; anything
else on the trunk (untagged frames, other VLANs) is not switched. It exists because this
machine's kernel is built without 802.1Q (CONFIG_VLAN_8021Q unset: `ip link add ... type
vlan` fails), so the hosts of the VLAN smoke test sit on plain veths behind it.

The kernel moves a received tag into the packet's metadata before packet sockets see it: the
trunk socket reads it from PACKET_AUXDATA. It prints a line of counters when stopped.
"""
import select
import signal
import socket
import struct
import sys

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_VLAN_VALID = 0x10
TPID = 0x8100


def open_port(name, aux=False):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    if aux:
        s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.bind((name, 0))
    return s


def main():
    trunk_name, access = sys.argv[1], [a.split(":", 1) for a in sys.argv[2:]]
    trunk = open_port(trunk_name, aux=True)
    by_vid = {}
    by_sock = {}
    for vid, name in access:
        s = open_port(name)
        by_vid[int(vid)] = s
        by_sock[s] = int(vid)
    counts = {"tagged_out": 0, "untagged_out": 0, "not_switched": 0}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("switching", trunk_name, access, flush=True)
    socks = [trunk] + list(by_sock)
    while not stop:
        try:
            ready, _, _ = select.select(socks, [], [], 0.5)
        except InterruptedError:
            continue
        for s in ready:
            if s is trunk:
                data, anc, _, addr = s.recvmsg(65536, socket.CMSG_SPACE(32))
                if addr[2] == PACKET_OUTGOING:
                    continue
                vid = None
                for level, kind, c in anc:
                    if level == SOL_PACKET and kind == PACKET_AUXDATA and len(c) >= 20:
                        status, _, _, _, _, tci, tpid = struct.unpack("IIIHHHH", c[:20])
                        if status & TP_STATUS_VLAN_VALID:
                            vid = tci & 0x0FFF
                if vid is None and len(data) >= 16 and struct.unpack("!H", data[12:14])[0] == TPID:
                    vid = struct.unpack("!H", data[14:16])[0] & 0x0FFF
                    data = data[:12] + data[16:]
                out = by_vid.get(vid) if vid is not None else None
                if out is None:
                    counts["not_switched"] += 1
                    continue
                out.send(data)
                counts["untagged_out"] += 1
            else:
                data, addr = s.recvfrom(65536)
                if addr[2] == PACKET_OUTGOING or len(data) < 14:
                    continue
                tag = struct.pack("!HH", TPID, by_sock[s])
                trunk.send(data[:12] + tag + data[12:])
                counts["tagged_out"] += 1
    print("vlan switch:", " ".join(f"{k} {v}" for k, v in counts.items()), flush=True)


if __name__ == "__main__":
    main()
