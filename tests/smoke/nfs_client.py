#!/usr/bin/env python3
"""NFSv3-over-UDP client for the NFS smoke test, built on pyNfsClient (an independent NFSv3
implementation from PyPI: it packs every call and unpacks every reply).

pyNfsClient speaks TCP only; `UdpTransport` is the small shim that moves it to UDP:
- the call goes out as one datagram (without the TCP record mark) and the reply comes back
  as one, re-framed with a record mark so pyNfsClient's reader is satisfied;
- every call gets its own xid (pyNfsClient uses int(time.time()), the same for every call
  within a second), and replies with another xid (late answers to earlier retransmissions)
  are skipped;
- calls are retransmitted every RETRY seconds until TOTAL has passed, as UDP NFS clients do;
  that is what carries a client across a router restart.

Usage: nfs_client.py SERVER_ADDR MODE STATE_FILE [args]
  basic  NAME...        mount the virtual export, list the virtual root, and under each named
                        server create, write, read back and remove files (see main below)
  prepare TAG NAME...   create files under each server and add their handles to STATE_FILE
  workload SECONDS      read, verify and extend the files of STATE_FILE in a loop
  finish                read back and remove the files of STATE_FILE
  direct EXPORT         straight to a server's own address: mount EXPORT, write, read back
Prints one JSON object per mode on the last line of stdout.
"""
import json
import os
import socket
import struct
import sys
import time

from pyNfsClient import NFSv3, NFS3ERR_BADHANDLE, NFS3ERR_NOENT, UNCHECKED, FILE_SYNC
from pyNfsClient.rpc import RPC

import nfs_common as common
from nfs_common import check, content, fh, limits, lookup, names_of, read_all, write_all

RETRY = 0.5
TOTAL = 60.0
AUTH = {"flavor": 1, "machine_name": "smoke", "uid": 0, "gid": 0, "aux_gid": [0]}


class UdpTransport:
    """A socket-like object for pyNfsClient's RPC: send() takes a record-marked call, recv()
    hands back the matching reply, record-marked."""

    next_xid = (os.getpid() << 16) & 0xFFFFFFFF
    stats = {"calls": 0, "retransmits": 0, "slow_calls": 0, "max_wait": 0.0, "stray": 0}

    def __init__(self, host, port):
        self.addr = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("", 0))
        self.pending = b""

    def send(self, framed):
        msg = bytearray(framed[4:])
        UdpTransport.next_xid = (UdpTransport.next_xid + 1) & 0xFFFFFFFF
        xid = UdpTransport.next_xid
        struct.pack_into("!L", msg, 0, xid)
        st = UdpTransport.stats
        st["calls"] += 1
        t0 = time.monotonic()
        while True:
            self.sock.sendto(bytes(msg), self.addr)
            deadline = time.monotonic() + RETRY
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.sock.settimeout(left)
                try:
                    data, _ = self.sock.recvfrom(65536)
                except socket.timeout:
                    break
                if len(data) >= 4 and struct.unpack("!L", data[:4])[0] == xid:
                    waited = time.monotonic() - t0
                    st["max_wait"] = max(st["max_wait"], waited)
                    if waited > 1.0:
                        st["slow_calls"] += 1
                    self.pending = struct.pack("!L", 0x80000000 | len(data)) + data
                    return len(framed)
                st["stray"] += 1
            if time.monotonic() - t0 > TOTAL:
                raise TimeoutError(f"no reply from {self.addr} in {TOTAL}s")
            st["retransmits"] += 1

    def recv(self, n):
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def close(self):
        self.sock.close()


def udp_connect(self):
    self.client = UdpTransport(self.host, self.port)
    RPC.connections.append(self)


RPC.connect = udp_connect


def mount_virtual(host):
    return common.mount_virtual(host, common.UDP, AUTH)


def direct(host, export):
    """Straight to a server (not the virtual server): mount its export, write a file, read
    it back, remove it; the handles must be the server's own (not 40-byte virtual ones)."""
    nfs, root, _ = common.mount_virtual(host, common.UDP, AUTH, export=export)
    rtmax, wtmax = limits(nfs, root)
    f = fh(check(nfs.create(root, "direct.txt", UNCHECKED, mode=0o644), "CREATE")["obj"])
    data = content("direct", 3000)
    write_all(nfs, f, data, min(wtmax, 1024))
    if read_all(nfs, f, len(data), min(rtmax, 1024)) != data.encode():
        raise SystemExit("direct: read back differs")
    a = check(nfs.getattr(f), "GETATTR")["attributes"]
    check(nfs.remove(root, "direct.txt"), "REMOVE")
    print(json.dumps({"root_handle_len": len(root), "handle_len": len(f), "fsid": a["fsid"],
                      "size": a["size"], "transport": UdpTransport.stats}))


def basic(host, names):
    nfs, root, ports = mount_virtual(host)
    rtmax, wtmax = limits(nfs, root)
    listed = names_of(nfs, root)
    report = {"ports": ports, "root_entries": listed, "rtmax": rtmax, "wtmax": wtmax,
              "servers": {}}
    for n in names:
        if n not in listed:
            raise SystemExit(f"virtual root lists {listed}, not {n}")
        d = lookup(nfs, root, n)
        # A directory and a file in it, 5000 bytes written in wtmax pieces and read back.
        r = check(nfs.mkdir(d, "dir", mode=0o755), "MKDIR")
        sub = fh(r["obj"])
        r = check(nfs.create(sub, f"file-{n}.bin", UNCHECKED, mode=0o644), "CREATE")
        f = fh(r["obj"])
        data = content(n, 5000)
        write_all(nfs, f, data, wtmax)
        back = read_all(nfs, f, len(data), rtmax)
        if back != data.encode():
            raise SystemExit(f"{n}: read back {len(back)} bytes that differ from what was written")
        a = check(nfs.getattr(f), "GETATTR")["attributes"]
        # A second file to remove, checked through LOOKUP afterwards.
        r = check(nfs.create(sub, "gone.txt", UNCHECKED, mode=0o644), "CREATE")
        write_all(nfs, fh(r["obj"]), "short-lived", wtmax)
        check(nfs.remove(sub, "gone.txt"), "REMOVE")
        if nfs.lookup(sub, "gone.txt")["status"] != NFS3ERR_NOENT:
            raise SystemExit("removed file still found")
        report["servers"][n] = {"dir_entries": names_of(nfs, sub), "size": a["size"],
                                "fileid": a["fileid"], "fsid": a["fsid"],
                                "handle_len": len(f)}
        # Larger than the MTU on purpose, as a client that ignores wtmax would: an 1800-byte
        # WRITE and a SYMLINK with a 1700-byte target leave the client as IP fragments, and
        # the READLINK reply leaves the server in fragments. (With DPDK's af_packet PMD the
        # kernel reassembles fragments before the router sees them — its fanout sets
        # PACKET_FANOUT_FLAG_DEFRAG — so the router gets whole datagrams larger than the MTU,
        # rewrites them, and fragments them again; its own reassembly is tested on in-memory
        # ports in router/tests/nfs_pipeline.rs.)
        big = content(f"{n}-big", 1800)
        fb = fh(check(nfs.create(sub, "big.bin", UNCHECKED, mode=0o644), "CREATE")["obj"])
        check(nfs.write(fb, 0, len(big), big, FILE_SYNC), "WRITE (fragmented call)")
        if read_all(nfs, fb, len(big), rtmax) != big.encode():
            raise SystemExit(f"{n}: the fragmented WRITE did not read back")
        target = "/" + content(f"{n}-link", 1699)
        link = fh(check(nfs.symlink(sub, "long-link", target), "SYMLINK (fragmented call)")["obj"])
        got = check(nfs.readlink(link), "READLINK (fragmented reply)")["data"]
        if got != target.encode():
            raise SystemExit(f"{n}: READLINK gave {len(got)} bytes, not the {len(target)}-byte target")
        check(nfs.remove(sub, "big.bin"), "REMOVE")
        check(nfs.remove(sub, "long-link"), "REMOVE")
        report["servers"][n]["fragmented"] = {"write": len(big), "readlink": len(got)}
        # A forged handle: one bit flipped.
        forged = bytearray(f)
        forged[20] ^= 0x04
        st = nfs.getattr(bytes(forged))["status"]
        if st != NFS3ERR_BADHANDLE:
            raise SystemExit(f"forged handle got status {st}, not NFS3ERR_BADHANDLE")
    report["transport"] = UdpTransport.stats
    print(json.dumps(report))


def prepare(host, state, tag, names):
    """Create three files under each server (in a subdirectory, so a recovery walk has a
    tree to search) and add their handles to STATE_FILE."""
    nfs, root, _ = mount_virtual(host)
    rtmax, wtmax = limits(nfs, root)
    files = json.load(open(state))["files"] if os.path.exists(state) else []
    for n in names:
        top = lookup(nfs, root, n)
        r = check(nfs.mkdir(top, f"held-{tag}", mode=0o755), "MKDIR")
        d = fh(r["obj"])
        for i in range(3):
            name = f"held-{tag}-{i}.bin"
            r = check(nfs.create(d, name, UNCHECKED, mode=0o644), "CREATE")
            f = fh(r["obj"])
            data = content(f"{n}{tag}{i}", 2000)
            write_all(nfs, f, data, wtmax)
            files.append({"server": n, "name": name, "handle": f.hex(), "dir": d.hex(),
                          "top": top.hex(), "subdir": f"held-{tag}", "size": len(data),
                          "data": data.encode().hex()})
    json.dump({"files": files, "rtmax": rtmax, "wtmax": wtmax}, open(state, "w"))
    print(json.dumps({"prepared": len(files), "transport": UdpTransport.stats}))


def held(host, state):
    s = json.load(open(state))
    nport = common.ports(host, common.UDP)[1]
    nfs = NFSv3(host, nport, 5, AUTH)
    nfs.connect()
    return nfs, s


def workload(host, state, seconds):
    """Use only handles held from `prepare`: GETATTR, READ and verify, append a record."""
    nfs, s = held(host, state)
    end = time.monotonic() + seconds
    ops = rounds = 0
    while time.monotonic() < end:
        for f in s["files"]:
            h = bytes.fromhex(f["handle"])
            a = check(nfs.getattr(h), "GETATTR")["attributes"]
            if a["size"] != f["size"]:
                raise SystemExit(f"{f['name']}: size {a['size']}, expected {f['size']}")
            back = read_all(nfs, h, f["size"], s["rtmax"])
            if back != bytes.fromhex(f["data"]):
                raise SystemExit(f"{f['name']}: content differs")
            rec = f"round {rounds}\n"
            write_all(nfs, h, rec, s["wtmax"], offset=f["size"])
            f["size"] += len(rec)
            f["data"] = (back + rec.encode()).hex()
            ops += 3
        rounds += 1
    json.dump(s, open(state, "w"))
    print(json.dumps({"rounds": rounds, "ops": ops, "transport": UdpTransport.stats}))


def finish(host, state):
    nfs, s = held(host, state)
    for f in s["files"]:
        h = bytes.fromhex(f["handle"])
        back = read_all(nfs, h, f["size"], s["rtmax"])
        if back != bytes.fromhex(f["data"]):
            raise SystemExit(f"{f['name']}: content differs at the end")
        check(nfs.remove(bytes.fromhex(f["dir"]), f["name"]), "REMOVE")
    dirs = {(f["top"], f["subdir"]) for f in s["files"]}
    for top, sub in sorted(dirs):
        check(nfs.rmdir(bytes.fromhex(top), sub), "RMDIR")
    print(json.dumps({"removed": len(s["files"]), "rmdir": len(dirs),
                      "transport": UdpTransport.stats}))


def main():
    host, mode, state = sys.argv[1], sys.argv[2], sys.argv[3]
    args = sys.argv[4:]
    if mode == "basic":
        basic(host, args)
    elif mode == "direct":
        direct(host, args[0])
    elif mode == "prepare":
        prepare(host, state, args[0], args[1:])
    elif mode == "workload":
        workload(host, state, float(args[0]))
    elif mode == "finish":
        finish(host, state)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
