#!/usr/bin/env bash
# The virtual NFS server's export policy (fortification: authentication at the border), end to
# end with two unmodified nfs-ganesha servers (which squash nothing themselves):
# - alpha is open to every client; beta only to 10.0.1.0/25, with root squash to 4242:4343;
# - AUTH_NONE is refused (AUTH_TOOWEAK), and only addresses that mounted through the router
#   may call at all (the mount table on disk, so a restarted router still knows them).
# A client at 10.0.1.2 (pyNfsClient, over TCP and over UDP) creates files as uid 0 on both: on
# beta's disk they belong to 4242:4343, on alpha's to root. The same host from 10.0.1.200
# (outside beta's networks) is refused MNT /beta and every beta handle, sees only alpha in the
# virtual root; from 10.0.1.201, which never mounted, every call is refused. Then the router
# is killed and restarted: the first client's handles still work (its mount was kept).
#
# The topology is topo_nfs in scripts/lib/netns.sh.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib/netns.sh"
topo_need_root
for bin in ganesha.nfsd rpcbind; do
	command -v "$bin" >/dev/null || { echo "SKIP: $bin missing (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind)"; exit 77; }
done
export PYTHONPATH="$ROOT/target/pylib${PYTHONPATH:+:$PYTHONPATH}"
python3 -c 'import pyNfsClient' 2>/dev/null || { echo "SKIP: pyNfsClient missing (scripts/deps installs it into target/pylib)"; exit 77; }
trap topo_cleanup EXIT
CLIENT_PY="$(cd "$(dirname "$0")" && pwd)/nfs_policy_client.py"

topo_nfs "clients = [\"10.0.1.0/25\"]
squash = \"root\"
[nfs.policy]
auth_none = false
require_mount = true
mount_table = \"$TOPO_DIR/rmtab\"
anonymous_uid = 4242
anonymous_gid = 4343"
# The squashed user must be able to create files on beta.
chmod 0777 "$TOPO_DIR/beta/export"
log "ganesha servers up"
"$ROUTER_BIN" check-config "$TOPO_DIR/router.toml" >/dev/null
topo_start_router "$NS_R" "$TOPO_DIR/router.toml"
topo_nfs_wait_mounted 2
log "router up, both exports mounted"

# as_client ADDR PROTO MODE ARGS...: run the client with ADDR as the client namespace's source.
as_client() {
	local addr=$1 proto=$2
	shift 2
	ip -n "$NS_C" route replace 10.0.1.0/24 dev c0 src "$addr"
	ip netns exec "$NS_C" python3 "$CLIENT_PY" "$proto" 10.0.1.1 "$1" "$TOPO_DIR/state-$proto.json" "${@:2}"
}
# pyNfsClient writes each call with one send(): buffers that hold a WRITE whole (as in
# nfs_tcp_test.sh).
ip netns exec "$NS_C" sysctl -qw net.ipv4.tcp_wmem="4096 4194304 8388608"
ip -n "$NS_C" addr add 10.0.1.200/24 dev c0
ip -n "$NS_C" addr add 10.0.1.201/24 dev c0

for proto in tcp udp; do
	# 1. Inside both exports' networks: files created as root.
	out=$(as_client 10.0.1.2 "$proto" owners alpha beta) || { $ROUTERCTL nfs stats --json >&2; die "owners ($proto): $out"; }
	r=$(tail -1 <<<"$out")
	log "$proto owners: $r"
	python3 - "$r" "$TOPO_DIR" "$proto" <<'PY' || die "owner checks ($proto)"
import json, os, sys
r, top, proto = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
assert r["root_entries"] == [".", "..", "alpha", "beta"], r
for name, want in (("alpha", (0, 0)), ("beta", (4242, 4343))):
    e = r["exports"][name]
    st = os.stat(os.path.join(top, name, "export", f"owned-{proto}.bin"))
    assert (st.st_uid, st.st_gid) == want, f"{name}: owner on disk {st.st_uid}:{st.st_gid}, want {want}"
    assert (e["uid"], e["gid"]) == want, e
    assert st.st_size == e["size"] == 200_000, (st.st_size, e)
    assert e["mount_handle_is_lookup_handle"], f"MNT /{name} and LOOKUP {name} differ"
print("created as uid 0: alpha's file is root's on disk, beta's is 4242:4343 (squashed at the router)")
PY

	# 2. AUTH_NONE: refused with AUTH_TOOWEAK (MSG_DENIED, AUTH_ERROR, 5).
	out=$(as_client 10.0.1.2 "$proto" authnone) || die "authnone ($proto): $out"
	[ "$(tail -1 <<<"$out")" = '{"getattr": [1, 1, 5], "mnt": [1, 1, 5]}' ] || die "AUTH_NONE ($proto): $out"

	# 3. Outside beta's networks.
	out=$(as_client 10.0.1.200 "$proto" outsider alpha beta) || die "outsider ($proto): $out"
	r=$(tail -1 <<<"$out")
	log "$proto outsider: $r"
	[ "$r" = '{"mnt_denied": 13, "mnt_ok": 0, "root_entries": [".", "..", "alpha"], "lookup_denied": 13, "denied_file": 13, "denied_dir": 13, "ok_file": 0}' ] ||
		die "outsider ($proto): $r"

	# 4. Never mounted.
	out=$(as_client 10.0.1.201 "$proto" unmounted) || die "unmounted ($proto): $out"
	[ "$(tail -1 <<<"$out")" = '{"alpha": 13, "beta": 13}' ] || die "unmounted ($proto): $out"
done

stats=$($ROUTERCTL nfs stats --json)
python3 - "$stats" <<'PY' || die "policy counters"
import json, sys
p = json.loads(sys.argv[1])["policy"]
r = p["refused"]
print(f"refused: flavor {r['flavor']}, network {r['network']}, unmounted {r['unmounted']}, "
      f"mounts {r['mount']}; squashed {p['squashed']}; {len(p['mounts'])} mounts recorded")
assert r["flavor"] >= 4 and r["network"] >= 6 and r["unmounted"] >= 4 and r["mount"] >= 2, r
assert p["squashed"] > 0, p
clients = {m["client"] for m in p["mounts"]}
assert clients == {"10.0.1.2", "10.0.1.200"}, p["mounts"]
assert p["mount_table"]["written"] > 0, p["mount_table"]
PY
$ROUTERCTL nfs stats | grep -A3 '^policy'
grep -q '^10.0.1.2 /beta$' "$TOPO_DIR/rmtab" || die "the mount table on disk lacks 10.0.1.2 /beta: $(cat "$TOPO_DIR/rmtab")"

# 5. A restarted router knows who mounted: the first client's handles keep working.
kill -KILL "$ROUTER_PID"
wait "$ROUTER_PID" 2>/dev/null || true
topo_start_router "$NS_R" "$TOPO_DIR/router.toml"
topo_nfs_wait_mounted 2
log "router killed and restarted"
for proto in tcp udp; do
	out=$(as_client 10.0.1.2 "$proto" held) || die "held ($proto): $out"
	[ "$(tail -1 <<<"$out")" = '{"alpha": 200000, "beta": 200000}' ] || die "held ($proto): $out"
	out=$(as_client 10.0.1.201 "$proto" unmounted) || die "unmounted after restart ($proto): $out"
	[ "$(tail -1 <<<"$out")" = '{"alpha": 13, "beta": 13}' ] || die "unmounted after restart ($proto): $out"
done
loaded=$($ROUTERCTL nfs stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["policy"]["mount_table"]["loaded"])')
[ "$loaded" -ge 3 ] || die "mounts loaded after the restart: $loaded"
log "after the restart: $loaded mounts loaded, the mounted client served, the other refused"
log "PASS"
