"""What the UDP and the TCP NFS test clients share: mounting the virtual export through
portmap, and pyNfsClient's calls with their results checked. The transport is the caller's:
nfs_client.py moves pyNfsClient to UDP, nfs_tcp_client.py uses its own TCP as it comes."""
import pyNfsClient
from pyNfsClient import Mount, NFSv3, Portmap, MNT3_OK, NFS3_OK, FILE_SYNC

UDP, TCP = 17, 6


def fh(res_handle):
    """The handle bytes out of pyNfsClient's nested result dicts."""
    h = res_handle
    while isinstance(h, dict):
        h = h.get("data", h.get("handle"))
    return h


def check(res, what):
    if res["status"] != NFS3_OK:
        raise SystemExit(f"{what}: NFS status {res['status']}")
    return res["resok"] if "resok" in res else res


def ports(host, proto, timeout=5):
    """The MOUNT and NFS ports of `host` for `proto` (UDP or TCP), from its portmapper."""
    pm = Portmap(host, timeout=timeout)
    pm.connect()
    mport = pm.getport(pyNfsClient.MOUNT_PROGRAM, 3, proto)
    nport = pm.getport(pyNfsClient.NFS_PROGRAM, 3, proto)
    pm.disconnect()
    return mport, nport


def mount_virtual(host, proto, auth, timeout=5, nfs_timeout=5, export="/"):
    """Mount `export` ("/" of the virtual server): (an NFSv3 client, the root handle, (mount,
    nfs) ports)."""
    mport, nport = ports(host, proto, timeout)
    mnt = Mount(host=host, port=mport, timeout=timeout, auth=auth)
    mnt.connect()
    res = mnt.mnt(export, auth)
    if res["status"] != MNT3_OK:
        raise SystemExit(f"MNT {export}: {res}")
    root = res["mountinfo"]["fhandle"]
    mnt.disconnect()
    nfs = NFSv3(host, nport, nfs_timeout, auth)
    nfs.connect()
    return nfs, root, (mport, nport)


def names_of(nfs, dirfh):
    """Every name in a directory (READDIRPLUS, continued by cookie until eof)."""
    out, cookie, verf = [], 0, "\0" * 8
    while True:
        r = check(nfs.readdirplus(dirfh, cookie=cookie, cookie_verf=verf), "READDIRPLUS")
        ents = r["reply"]["entries"]
        e = ents[0] if ents else None
        while e:
            out.append(e["name"].decode())
            cookie = e["cookie"]
            e = e["nextentry"][0] if e["nextentry"] else None
        # pyNfsClient takes the verifier as text (it encodes it as UTF-8).
        verf = r["cookieverf"].decode("latin-1") if max(r["cookieverf"]) < 0x80 else "0"
        if r["reply"]["eof"] or not ents:
            return out


def lookup(nfs, dirfh, name):
    return fh(check(nfs.lookup(dirfh, name), f"LOOKUP {name}")["object"])


def write_all(nfs, f, data, wtmax, offset=0):
    """Write `data` in wtmax pieces. pyNfsClient sends str(data).encode(): give it text."""
    assert isinstance(data, str)
    for at in range(0, len(data), wtmax):
        chunk = data[at:at + wtmax]
        r = check(nfs.write(f, offset + at, len(chunk), chunk, FILE_SYNC), "WRITE")
        assert r["count"] == len(chunk), r


def read_all(nfs, f, size, rtmax):
    got = b""
    while len(got) < size:
        r = check(nfs.read(f, len(got), min(rtmax, size - len(got))), "READ")
        got += r["data"]
        if r["eof"] or not r["data"]:
            break
    return got


def content(name, n):
    seed = f"{name}:"
    return (seed * (n // len(seed) + 1))[:n]


def limits(nfs, root):
    r = check(nfs.fsinfo(root), "FSINFO")
    return r["rtmax"], r["wtmax"]
