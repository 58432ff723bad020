#!/usr/bin/env python3
"""NFSv3-over-TCP client for the NFS TCP smoke test: pyNfsClient as it comes (its own TCP
transport, record marking included), pointed at the virtual server.

Usage: nfs_tcp_client.py SERVER_ADDR MODE [args]
  basic NAME...          portmap (TCP), mount, list the virtual root; under each server: a
                         4 MiB file written and read back in wtmax pieces, renamed, a rename
                         across servers (XDEV), removals
  mixed ID NAME ROUNDS   one connection doing mixed operations in its own directory
  big NAME MIB           write MIB MiB to NAME/big.bin, read it back, compare, remove
  prepare STATE NAME...  create files under each server, keep their handles in STATE
  workload STATE SECS    GETATTR/READ/verify/append on the handles of STATE in a loop; a
                         broken connection is re-opened (as a client does) and the call retried
  finish STATE           read back and remove the files of STATE
Prints one JSON object on the last line of stdout.
"""
import json
import os
import sys
import time

from pyNfsClient import NFSv3, NFS3ERR_NOENT, NFS3ERR_XDEV, UNCHECKED, FILE_SYNC

import nfs_common as common
from nfs_common import TCP, check, content, fh, limits, lookup, names_of, read_all, write_all

AUTH = {"flavor": 1, "machine_name": "smoke-tcp", "uid": 0, "gid": 0, "aux_gid": [0]}


def ports(host):
    return common.ports(host, TCP, 10)


def mount_virtual(host):
    return common.mount_virtual(host, TCP, AUTH, timeout=10, nfs_timeout=30)


def write_read(nfs, f, data, wtmax, rtmax):
    """Write `data` to `f` and read it back, checking every byte: (write s, read s)."""
    t0 = time.monotonic()
    write_all(nfs, f, data, wtmax)
    t1 = time.monotonic()
    back = read_all(nfs, f, len(data), rtmax)
    t2 = time.monotonic()
    if back != data.encode():
        raise SystemExit(f"read back {len(back)} bytes that differ from the {len(data)} written")
    return t1 - t0, t2 - t1


def basic(host, names):
    t0 = time.monotonic()
    nfs, root, prt = mount_virtual(host)
    rtmax, wtmax = limits(nfs, root)
    listed = names_of(nfs, root)
    report = {"ports": prt, "root_entries": listed, "rtmax": rtmax, "wtmax": wtmax,
              "servers": {}}
    dirs = {}
    for n in names:
        if n not in listed:
            raise SystemExit(f"virtual root lists {listed}, not {n}")
        d = lookup(nfs, root, n)
        sub = fh(check(nfs.mkdir(d, "tcpdir", mode=0o755), "MKDIR")["obj"])
        dirs[n] = sub
        f = fh(check(nfs.create(sub, "big.bin", UNCHECKED, mode=0o644), "CREATE")["obj"])
        write_s, read_s = write_read(nfs, f, content(n, 4 << 20), wtmax, rtmax)
        check(nfs.rename(sub, "big.bin", sub, "renamed.bin"), "RENAME within a server")
        if nfs.lookup(sub, "big.bin")["status"] != NFS3ERR_NOENT:
            raise SystemExit("renamed file still found under its old name")
        f2 = lookup(nfs, sub, "renamed.bin")
        a = check(nfs.getattr(f2), "GETATTR")["attributes"]
        g = fh(check(nfs.create(sub, "gone.txt", UNCHECKED, mode=0o644), "CREATE")["obj"])
        write_all(nfs, g, "short-lived", wtmax)
        check(nfs.remove(sub, "gone.txt"), "REMOVE")
        if nfs.lookup(sub, "gone.txt")["status"] != NFS3ERR_NOENT:
            raise SystemExit("removed file still found")
        report["servers"][n] = {"size": a["size"], "fsid": a["fsid"], "handle_len": len(f2),
                                "dir_entries": names_of(nfs, sub),
                                "write_mib_s": 4 / max(write_s, 1e-6),
                                "read_mib_s": 4 / max(read_s, 1e-6)}
    if len(names) >= 2:
        a, b = names[0], names[1]
        st = nfs.rename(dirs[a], "renamed.bin", dirs[b], "moved.bin")["status"]
        report["rename_across"] = st
        if st != NFS3ERR_XDEV:
            raise SystemExit(f"RENAME across servers gave {st}, not NFS3ERR_XDEV")
    report["seconds"] = time.monotonic() - t0
    print(json.dumps(report))


def mixed(host, ident, name, rounds):
    nfs, root, _ = mount_virtual(host)
    rtmax, wtmax = limits(nfs, root)
    top = lookup(nfs, root, name)
    d = fh(check(nfs.mkdir(top, f"mixed-{ident}", mode=0o755), "MKDIR")["obj"])
    ops = 0
    for i in range(rounds):
        fname = f"f{i}.bin"
        f = fh(check(nfs.create(d, fname, UNCHECKED, mode=0o644), "CREATE")["obj"])
        data = content(f"{ident}-{i}", 100_000 + 7919 * i)
        write_all(nfs, f, data, wtmax)
        if read_all(nfs, f, len(data), rtmax) != data.encode():
            raise SystemExit(f"client {ident}: {fname} read back differs")
        if check(nfs.getattr(f), "GETATTR")["attributes"]["size"] != len(data):
            raise SystemExit(f"client {ident}: {fname} has the wrong size")
        if lookup(nfs, d, fname) != f:
            raise SystemExit(f"client {ident}: LOOKUP gave another handle")
        check(nfs.rename(d, fname, d, f"r{i}.bin"), "RENAME")
        if f"r{i}.bin" not in names_of(nfs, d):
            raise SystemExit(f"client {ident}: renamed file not listed")
        check(nfs.remove(d, f"r{i}.bin"), "REMOVE")
        ops += 7
    check(nfs.rmdir(top, f"mixed-{ident}"), "RMDIR")
    print(json.dumps({"client": ident, "ops": ops}))


def big(host, name, mib):
    nfs, root, _ = mount_virtual(host)
    rtmax, wtmax = limits(nfs, root)
    top = lookup(nfs, root, name)
    f = fh(check(nfs.create(top, "big-loss.bin", UNCHECKED, mode=0o644), "CREATE")["obj"])
    data = os.urandom(mib << 19).hex()
    write_s, read_s = write_read(nfs, f, data, wtmax, rtmax)
    check(nfs.remove(top, "big-loss.bin"), "REMOVE")
    print(json.dumps({"bytes": len(data), "write_s": write_s, "read_s": read_s}))


class Session:
    """A client that re-opens its connection when it breaks and retries the call (what an
    NFS client does across a server or router restart), timing the longest stall."""

    def __init__(self, host):
        self.host = host
        self.nport = None
        self.nfs = None
        self.max_stall = 0.0
        self.reconnects = 0

    def open(self):
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.nport is None:
                    self.nport = ports(self.host)[1]
                self.nfs = NFSv3(self.host, self.nport, 5, AUTH)
                self.nfs.connect()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def call(self, what, fn):
        t0 = time.monotonic()
        while True:
            try:
                res = fn(self.nfs)
                self.max_stall = max(self.max_stall, time.monotonic() - t0)
                return check(res, what)
            except SystemExit:
                raise
            except Exception:
                if time.monotonic() - t0 > 60:
                    raise SystemExit(f"{what}: no answer for 60 s")
                self.reconnects += 1
                try:
                    self.nfs.disconnect()
                except Exception:
                    pass
                time.sleep(0.2)
                self.open()


def prepare(host, state, names):
    nfs, root, _ = mount_virtual(host)
    rtmax, wtmax = limits(nfs, root)
    files = []
    for n in names:
        top = lookup(nfs, root, n)
        d = fh(check(nfs.mkdir(top, "held", mode=0o755), "MKDIR")["obj"])
        for i in range(3):
            name = f"held-{i}.bin"
            f = fh(check(nfs.create(d, name, UNCHECKED, mode=0o644), "CREATE")["obj"])
            data = content(f"{n}{i}", 3000)
            write_all(nfs, f, data, wtmax)
            files.append({"name": name, "handle": f.hex(), "dir": d.hex(), "top": top.hex(),
                          "size": len(data), "data": data.encode().hex()})
    json.dump({"files": files, "rtmax": rtmax, "wtmax": wtmax}, open(state, "w"))
    print(json.dumps({"prepared": len(files)}))


def workload(host, state, seconds):
    s = json.load(open(state))
    c = Session(host)
    c.open()
    end = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < end:
        for f in s["files"]:
            h = bytes.fromhex(f["handle"])
            a = c.call("GETATTR", lambda n: n.getattr(h))["attributes"]
            if a["size"] != f["size"]:
                raise SystemExit(f"{f['name']}: size {a['size']}, expected {f['size']}")
            back = c.call("READ", lambda n: n.read(h, 0, s["rtmax"]))["data"]
            if back != bytes.fromhex(f["data"]):
                raise SystemExit(f"{f['name']}: content differs")
            rec = f"round {rounds}\n"
            c.call("WRITE", lambda n: n.write(h, f["size"], len(rec), rec, FILE_SYNC))
            f["size"] += len(rec)
            f["data"] = (back + rec.encode()).hex()
        rounds += 1
    json.dump(s, open(state, "w"))
    print(json.dumps({"rounds": rounds, "reconnects": c.reconnects, "max_stall": c.max_stall}))


def finish(host, state):
    s = json.load(open(state))
    nfs, root, _ = mount_virtual(host)
    for f in s["files"]:
        h = bytes.fromhex(f["handle"])
        if read_all(nfs, h, f["size"], s["rtmax"]) != bytes.fromhex(f["data"]):
            raise SystemExit(f"{f['name']}: content differs at the end")
        check(nfs.remove(bytes.fromhex(f["dir"]), f["name"]), "REMOVE")
    for top, in sorted({(f["top"],) for f in s["files"]}):
        check(nfs.rmdir(bytes.fromhex(top), "held"), "RMDIR")
    print(json.dumps({"removed": len(s["files"])}))


def main():
    host, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if mode == "basic":
        basic(host, args)
    elif mode == "mixed":
        mixed(host, args[0], args[1], int(args[2]))
    elif mode == "big":
        big(host, args[0], int(args[1]))
    elif mode == "prepare":
        prepare(host, args[0], args[1:])
    elif mode == "workload":
        workload(host, args[0], float(args[1]))
    elif mode == "finish":
        finish(host, args[0])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
