#!/usr/bin/env python3
"""Client of the NFS export-policy smoke test (nfs_border_test.sh), on pyNfsClient over TCP as
it comes, or over UDP through nfs_client.py's transport shim (the fast path).

Usage: nfs_border_client.py tcp|udp HOST MODE STATE [args]
  owners NAME...        mount "/" and "/NAME", create and write a file as uid 0 under each
                        export; report the owner the server gave it and save the handles
  outsider OK DENIED    from an address outside DENIED's networks: MNT /DENIED refused,
                        "/" mounts, the root lists only what it may use, DENIED's handles
                        (from STATE) refused, OK's served
  unmounted             without mounting: every handle of STATE refused with NFS3ERR_ACCES
  held                  every handle of STATE still served (after a router restart)
  authnone              raw AUTH_NONE calls (MNT, GETATTR): AUTH_ERROR / AUTH_TOOWEAK
Prints one JSON object on the last line of stdout.
"""
import json
import socket
import struct
import sys

PROTO = sys.argv[1]
if PROTO == "udp":
    import nfs_client  # noqa: F401  (moves pyNfsClient's RPC to UDP)
from pyNfsClient import Mount, NFSv3, UNCHECKED, MNT3_OK  # noqa: E402

import nfs_common as common  # noqa: E402
from nfs_common import check, content, fh, limits, lookup, names_of, read_all, write_all  # noqa: E402

ROOT = {"flavor": 1, "machine_name": "policy", "uid": 0, "gid": 0, "aux_gid": [0]}
ACCES = 13
PROTO_NUM = common.UDP if PROTO == "udp" else common.TCP


def load(state):
    with open(state) as f:
        return json.load(f)


def nfs_client_for(host):
    _, nport = common.ports(host, PROTO_NUM)
    nfs = NFSv3(host, nport, 5, ROOT)
    nfs.connect()
    return nfs


def mnt(host, path):
    mport, _ = common.ports(host, PROTO_NUM)
    m = Mount(host=host, port=mport, timeout=5, auth=ROOT)
    m.connect()
    res = m.mnt(path, ROOT)
    m.disconnect()
    return res


def owners(host, state, names):
    nfs, root, _ = common.mount_virtual(host, PROTO_NUM, ROOT)
    rtmax, wtmax = limits(nfs, root)
    out = {"root_entries": sorted(names_of(nfs, root)), "exports": {}}
    handles = {}
    for name in names:
        d = lookup(nfs, root, name)
        res = mnt(host, f"/{name}")
        if res["status"] != MNT3_OK:
            raise SystemExit(f"MNT /{name}: {res}")
        by_mount = fh(res["mountinfo"]["fhandle"])
        fname = f"owned-{PROTO}.bin"
        f = fh(check(nfs.create(d, fname, UNCHECKED, mode=0o644), f"CREATE {name}")["obj"])
        data = content(f"{name}-{PROTO}", 200_000)
        write_all(nfs, f, data, wtmax)
        if read_all(nfs, f, len(data), rtmax) != data.encode():
            raise SystemExit(f"{name}: read back differs")
        a = check(nfs.getattr(f), "GETATTR")["attributes"]
        out["exports"][name] = {"uid": a["uid"], "gid": a["gid"], "size": a["size"],
                                "mount_handle_is_lookup_handle": by_mount == d}
        handles[name] = {"dir": d.hex(), "file": f.hex(), "name": fname}
    handles["root"] = fh(root).hex()
    with open(state, "w") as s:
        json.dump(handles, s)
    print(json.dumps(out))


def status_of(nfs, handle_hex):
    return nfs.getattr(bytes.fromhex(handle_hex))["status"]


def outsider(host, state, ok, denied):
    st = load(state)
    out = {"mnt_denied": mnt(host, f"/{denied}")["status"], "mnt_ok": mnt(host, f"/{ok}")["status"]}
    nfs, root, _ = common.mount_virtual(host, PROTO_NUM, ROOT)
    out["root_entries"] = sorted(names_of(nfs, root))
    out["lookup_denied"] = nfs.lookup(root, denied)["status"]
    out["denied_file"] = status_of(nfs, st[denied]["file"])
    out["denied_dir"] = status_of(nfs, st[denied]["dir"])
    out["ok_file"] = status_of(nfs, st[ok]["file"])
    print(json.dumps(out))


def unmounted(host, state):
    st = load(state)
    nfs = nfs_client_for(host)
    print(json.dumps({n: status_of(nfs, st[n]["file"]) for n in st if n != "root"}))


def held(host, state):
    st = load(state)
    nfs = nfs_client_for(host)
    out = {}
    for n in st:
        if n == "root":
            continue
        f = bytes.fromhex(st[n]["file"])
        a = check(nfs.getattr(f), f"GETATTR {n}")["attributes"]
        out[n] = a["size"]
    print(json.dumps(out))


def raw_call(host, port, prog, proc, args):
    """One AUTH_NONE call; the reply's (reply_stat, reject_stat, auth_stat or accept words)."""
    msg = struct.pack("!LLLLLLLLLL", 0x504f4c49, 0, 2, prog, 3, proc, 0, 0, 0, 0) + args
    if PROTO == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(msg, (host, port))
        r = s.recv(65536)
    else:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(struct.pack("!L", 0x80000000 | len(msg)) + msg)
        n = struct.unpack("!L", s.recv(4))[0] & 0x7FFFFFFF
        r = b""
        while len(r) < n:
            r += s.recv(n - len(r))
    s.close()
    return list(struct.unpack("!LLLLL", r[:20]))


def authnone(host, state):
    st = load(state)
    mport, nport = common.ports(host, PROTO_NUM)
    root = bytes.fromhex(st["root"])
    getattr_args = struct.pack("!L", len(root)) + root
    path = b"/"
    mnt_args = struct.pack("!L", len(path)) + path + b"\0" * 3
    print(json.dumps({"getattr": raw_call(host, nport, 100003, 1, getattr_args)[2:],
                      "mnt": raw_call(host, mport, 100005, 1, mnt_args)[2:]}))


def main():
    host, mode, state, args = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
    if mode == "owners":
        owners(host, state, args)
    elif mode == "outsider":
        outsider(host, state, *args)
    elif mode == "unmounted":
        unmounted(host, state)
    elif mode == "held":
        held(host, state)
    elif mode == "authnone":
        authnone(host, state)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
