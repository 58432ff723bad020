#!/usr/bin/env python3
"""Client of the web-export smoke test (nfs_web_test.sh): pyNfsClient over TCP as it comes, or
over UDP through nfs_client.py's transport shim, against the virtual server, whose export
"www" is an HTTP origin's tree.

Usage: nfs_web_client.py tcp|udp HOST MODE STATE [args]
  tree TREE        mount "/", find "www" in the virtual root (and MNT /www: the same handle),
                   list every directory of the export against TREE (the origin's files on
                   disk), GETATTR and read every file: sizes, mtimes and bytes equal; 64
                   ranged READs of big.bin at random offsets; big.bin read cold and again
                   (cached), timed; handles saved in STATE
  rofs             CREATE, MKDIR, REMOVE, WRITE, SETATTR on the export: NFS3ERR_ROFS each
  changed TREE     change.txt (its handle from STATE) has its new size, mtime and bytes
  gone             gone.txt's handle is NFS3ERR_STALE, LOOKUP of it NFS3ERR_NOENT
  down TIMEOUT     the origin is stopped: GETATTR of small.txt fails with NFS3ERR_IO within
                   TIMEOUT (+1 s), while the NFS export alpha is still served
  held TREE        after a router restart: the saved handles still work (size and bytes)
Prints one JSON object on the last line of stdout.
"""
import json
import os
import random
import sys
import time

# pyNfsClient decodes a READDIRPLUS reply's entry list recursively (three frames an entry):
# a reply of a few hundred entries needs more than Python's default depth.
sys.setrecursionlimit(20000)
PROTO = sys.argv[1]
if PROTO == "udp":
    import nfs_client  # noqa: F401  (moves pyNfsClient's RPC to UDP)
from pyNfsClient import Mount, UNCHECKED, FILE_SYNC  # noqa: E402

import nfs_common as common  # noqa: E402
from nfs_common import check, limits, lookup, names_of, read_all  # noqa: E402

AUTH = {"flavor": 1, "machine_name": "web", "uid": 0, "gid": 0, "aux_gid": [0]}
PROTO_NUM = common.UDP if PROTO == "udp" else common.TCP
ROFS, STALE, NOENT, IO = 30, 70, 2, 5


def connect(host):
    nfs, root, (mport, _) = common.mount_virtual(host, PROTO_NUM, AUTH, nfs_timeout=30)
    return nfs, root, mport


def attrs(nfs, f, what):
    return check(nfs.getattr(f), f"GETATTR {what}")["attributes"]


def same_file(nfs, f, path, rtmax, what):
    """GETATTR and READ of `f` agree with the origin's file at `path`."""
    st = os.stat(path)
    a = attrs(nfs, f, what)
    assert a["size"] == st.st_size, f"{what}: size {a['size']}, origin's {st.st_size}"
    assert a["mtime"]["seconds"] == int(st.st_mtime), f"{what}: mtime {a['mtime']}, origin's {int(st.st_mtime)}"
    assert a["mode"] & 0o777 == 0o444 and a["type"] == 1, (what, a["mode"], a["type"])
    with open(path, "rb") as fd:
        want = fd.read()
    got = read_all(nfs, f, st.st_size, rtmax)
    assert got == want, f"{what}: {len(got)} bytes read differ from the origin's {len(want)}"
    return a


def tree(host, state, top):
    nfs, root, mport = connect(host)
    rtmax, _ = limits(nfs, root)
    names = names_of(nfs, root)
    assert "www" in names, names
    www = lookup(nfs, root, "www")
    m = Mount(host=host, port=mport, timeout=5, auth=AUTH)
    m.connect()
    res = m.mnt("/www", AUTH)
    m.disconnect()
    assert res["status"] == 0 and res["mountinfo"]["fhandle"] == www, res
    handles, files, dirs, total = {}, 0, 0, 0
    todo = [("", www)]
    while todo:
        rel, d = todo.pop()
        dirs += 1
        want = sorted(os.listdir(os.path.join(top, rel)))
        got = sorted(n for n in names_of(nfs, d) if n not in (".", ".."))
        assert got == want, f"/{rel}: listed {got[:5]}… ({len(got)}), origin has {want[:5]}… ({len(want)})"
        for name in want:
            path = os.path.join(top, rel, name)
            h = lookup(nfs, d, name)
            relname = os.path.join(rel, name)
            if os.path.isdir(path):
                a = attrs(nfs, h, relname)
                assert a["type"] == 2, (relname, a["type"])
                todo.append((relname, h))
                continue
            same_file(nfs, h, path, rtmax, relname)
            files += 1
            total += os.path.getsize(path)
            if "/" not in relname:
                handles[name] = h.hex()
    # Ranged READs at random offsets of the big file.
    big = bytes.fromhex(handles["big.bin"])
    with open(os.path.join(top, "big.bin"), "rb") as fd:
        want = fd.read()
    rnd = random.Random(7)
    for _ in range(64):
        off = rnd.randrange(0, len(want))
        n = rnd.randrange(1, rtmax + 1)
        r = check(nfs.read(big, off, n), "READ big.bin")
        assert r["data"] == want[off:off + n], f"READ {n} at {off}"
        assert r["eof"] == (off + len(r["data"]) >= len(want)), (off, n, r["eof"])
    with open(state, "w") as f:
        json.dump(handles, f)
    print(json.dumps({"files": files, "dirs": dirs, "bytes": total, "rtmax": rtmax, "ranged_reads": 64,
                      "root": sorted(names)}))


def timed_read(host, state, top):
    """big.bin read whole through a fresh mount (its blocks not cached: the first READ after a
    router start), then again (cached): MiB/s each."""
    nfs, root, _ = connect(host)
    rtmax, _ = limits(nfs, root)
    big = bytes.fromhex(load(state)["big.bin"])
    with open(os.path.join(top, "big.bin"), "rb") as fd:
        want = fd.read()
    out = {}
    for what in ("cold", "cached"):
        t0 = time.monotonic()
        got = read_all(nfs, big, len(want), rtmax)
        dt = time.monotonic() - t0
        assert got == want, what
        out[what + "_mib_s"] = round(len(want) / dt / (1 << 20), 2)
    out["rtmax"] = rtmax
    print(json.dumps(out))


def load(state):
    with open(state) as f:
        return json.load(f)


def rofs(host, state):
    nfs, root, _ = connect(host)
    www = lookup(nfs, root, "www")
    small = bytes.fromhex(load(state)["small.txt"])
    st = {
        "create": nfs.create(www, "new.txt", UNCHECKED, mode=0o644, size=0)["status"],
        "mkdir": nfs.mkdir(www, "newdir", mode=0o755)["status"],
        "remove": nfs.remove(www, "small.txt")["status"],
        "write": nfs.write(small, 0, 5, "hello", FILE_SYNC)["status"],
        "setattr": nfs.setattr(small, mode=0o600)["status"],
    }
    assert all(v == ROFS for v in st.values()), st
    print(json.dumps(st))


def changed(host, state, top):
    nfs, root, _ = connect(host)
    rtmax, _ = limits(nfs, root)
    h = bytes.fromhex(load(state)["change.txt"])
    a = same_file(nfs, h, os.path.join(top, "change.txt"), rtmax, "change.txt")
    print(json.dumps({"size": a["size"], "mtime": a["mtime"]["seconds"]}))


def gone(host, state):
    nfs, root, _ = connect(host)
    www = lookup(nfs, root, "www")
    h = bytes.fromhex(load(state)["gone.txt"])
    out = {"getattr": nfs.getattr(h)["status"], "lookup": nfs.lookup(www, "gone.txt")["status"]}
    assert out == {"getattr": STALE, "lookup": NOENT}, out
    print(json.dumps(out))


def down(host, state, timeout_ms):
    nfs, root, _ = connect(host)
    h = bytes.fromhex(load(state)["small.txt"])
    t0 = time.monotonic()
    st = nfs.getattr(h)["status"]
    dt = time.monotonic() - t0
    assert st == IO, f"GETATTR with the origin down: status {st}"
    assert dt < timeout_ms / 1000 + 1, f"NFS3ERR_IO after {dt:.2f} s"
    # The other exports are served meanwhile.
    alpha = lookup(nfs, root, "alpha")
    names_of(nfs, alpha)
    attrs(nfs, alpha, "alpha")
    print(json.dumps({"status": st, "seconds": round(dt, 2), "alpha_served": True}))


def held(host, state, top):
    nfs, root, _ = connect(host)
    rtmax, _ = limits(nfs, root)
    handles = load(state)
    for name in ("small.txt", "big.bin"):
        same_file(nfs, bytes.fromhex(handles[name]), os.path.join(top, name), rtmax, name)
    print(json.dumps({"held": 2}))


def main():
    host, mode, state = sys.argv[2], sys.argv[3], sys.argv[4]
    args = sys.argv[5:]
    if mode == "tree":
        tree(host, state, args[0])
    elif mode == "timed":
        timed_read(host, state, args[0])
    elif mode == "rofs":
        rofs(host, state)
    elif mode == "changed":
        changed(host, state, args[0])
    elif mode == "gone":
        gone(host, state)
    elif mode == "down":
        down(host, state, int(args[0]))
    elif mode == "held":
        held(host, state, args[0])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
