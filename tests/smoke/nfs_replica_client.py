#!/usr/bin/env python3
"""Client of the replication smoke test (nfs_replica_test.sh): pyNfsClient over TCP as it
comes, or over UDP through nfs_client.py's transport shim, on the replicated export "alpha"
of the virtual server (its backup, beta, is not in the virtual root).

Usage: nfs_replica_client.py tcp|udp HOST MODE [args]
  root            the virtual root's entries
  loop TAG S SIZE for S seconds: CREATE, WRITE, rewrite the head, READ back and check, GETATTR
                  files of SIZE bytes under alpha/TAG; prints them and the longest step
  pre             change pre/deeper/data.txt (on both servers before the router started) and
                  create a file beside it
  work TAG SIZE   under alpha: MKDIR TAG, TAG/sub; CREATE files and write them (one of SIZE
                  bytes, in wtmax pieces, another rewritten at an offset), SETATTR a mode and a
                  size (truncate), SYMLINK, RENAME within TAG, LINK, REMOVE, RMDIR; every
                  change read back through the router
Prints one JSON object on the last line of stdout.
"""
import json
import sys
import time

PROTO = sys.argv[1]
if PROTO == "udp":
    import nfs_client  # noqa: F401  (moves pyNfsClient's RPC to UDP)
from pyNfsClient import UNCHECKED, NFS3ERR_NOENT  # noqa: E402

import nfs_common as common  # noqa: E402
from nfs_common import check, content, fh, limits, lookup, names_of, read_all, write_all  # noqa: E402

AUTH = {"flavor": 1, "machine_name": "replica", "uid": 0, "gid": 0, "aux_gid": [0]}
PROTO_NUM = common.UDP if PROTO == "udp" else common.TCP


def connect(host):
    nfs, root, _ = common.mount_virtual(host, PROTO_NUM, AUTH, nfs_timeout=30)
    return nfs, root


def work(host, tag, size):
    nfs, root = connect(host)
    rtmax, wtmax = limits(nfs, root)
    alpha = lookup(nfs, root, "alpha")
    d = fh(check(nfs.mkdir(alpha, tag, mode=0o755), "MKDIR")["obj"])
    sub = fh(check(nfs.mkdir(d, "sub", mode=0o750), "MKDIR sub")["obj"])
    big = fh(check(nfs.create(d, "big.bin", UNCHECKED, mode=0o644), "CREATE")["obj"])
    data = content(f"{tag}-big", size)
    write_all(nfs, big, data, wtmax)
    # A rewrite in the middle.
    patch = content(f"{tag}-patch", min(wtmax, 3000))
    write_all(nfs, big, patch, wtmax, offset=size // 3)
    want = data[:size // 3] + patch + data[size // 3 + len(patch):]
    assert read_all(nfs, big, size, rtmax) == want.encode(), "big.bin read back differs"
    small = fh(check(nfs.create(sub, "small.txt", UNCHECKED, mode=0o600), "CREATE small")["obj"])
    write_all(nfs, small, content(f"{tag}-small", 5000), wtmax)
    check(nfs.setattr(small, mode=0o640), "SETATTR mode")
    check(nfs.setattr(small, size=1234), "SETATTR size")
    assert check(nfs.getattr(small), "GETATTR")["attributes"]["size"] == 1234
    check(nfs.symlink(d, "link", "sub/small.txt"), "SYMLINK")
    check(nfs.rename(d, "big.bin", d, "renamed.bin"), "RENAME")
    assert nfs.lookup(d, "big.bin")["status"] == NFS3ERR_NOENT
    check(nfs.link(small, d, "hard.txt"), "LINK")
    gone = fh(check(nfs.create(d, "gone.txt", UNCHECKED, mode=0o644), "CREATE gone")["obj"])
    write_all(nfs, gone, "short-lived", wtmax)
    check(nfs.remove(d, "gone.txt"), "REMOVE")
    check(nfs.mkdir(d, "empty", mode=0o755), "MKDIR empty")
    check(nfs.rmdir(d, "empty"), "RMDIR")
    # A file created before a name the client only got by LOOKUP is changed.
    again = lookup(nfs, d, "renamed.bin")
    write_all(nfs, again, content(f"{tag}-tail", 100), wtmax, offset=size)
    print(json.dumps({"tag": tag, "entries": sorted(names_of(nfs, d)), "size": size + 100}))


def pre(host):
    """Change a file that was on both servers before the router started: pre/deeper/data.txt."""
    nfs, root = connect(host)
    _, wtmax = limits(nfs, root)
    alpha = lookup(nfs, root, "alpha")
    deeper = lookup(nfs, lookup(nfs, alpha, "pre"), "deeper")
    f = lookup(nfs, deeper, "data.txt")
    write_all(nfs, f, "changed through the router\n", wtmax)
    check(nfs.setattr(f, mode=0o604), "SETATTR")
    check(nfs.create(deeper, "new.txt", UNCHECKED, mode=0o644), "CREATE")
    print(json.dumps({"pre": True}))


def loop(host, tag, seconds, size):
    """For SECONDS: create a file, write it, read it back and check it, rewrite its start;
    every call must succeed (retransmissions allowed). Prints the files and the longest time
    one step took."""
    nfs, root = connect(host)
    rtmax, wtmax = limits(nfs, root)
    alpha = lookup(nfs, root, "alpha")
    d = fh(check(nfs.mkdir(alpha, tag, mode=0o755), "MKDIR")["obj"])
    end = time.monotonic() + seconds
    files, stall, i = {}, 0.0, 0
    while time.monotonic() < end:
        t0 = time.monotonic()
        name = f"f{i:04d}.bin"
        f = fh(check(nfs.create(d, name, UNCHECKED, mode=0o644), f"CREATE {name}")["obj"])
        data = content(f"{tag}-{i}", size)
        write_all(nfs, f, data, wtmax)
        head = content(f"{tag}-{i}-head", min(100, size))
        write_all(nfs, f, head, wtmax)
        want = (head + data[len(head):]).encode()
        got = read_all(nfs, f, size, rtmax)
        assert got == want, f"{name}: read back {len(got)} bytes, not what was written"
        assert check(nfs.getattr(f), "GETATTR")["attributes"]["size"] == size
        files[name] = [f"{tag}-{i}", size]
        stall = max(stall, time.monotonic() - t0)
        i += 1
    print(json.dumps({"tag": tag, "files": files, "max_step_s": round(stall, 2)}))


def main():
    host, mode = sys.argv[2], sys.argv[3]
    if mode == "root":
        nfs, root = connect(host)
        print(json.dumps({"root": sorted(names_of(nfs, root))}))
    elif mode == "loop":
        loop(host, sys.argv[4], float(sys.argv[5]), int(sys.argv[6]))
    elif mode == "pre":
        pre(host)
    elif mode == "work":
        work(host, sys.argv[4], int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
