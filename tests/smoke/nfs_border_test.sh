#!/usr/bin/env bash
# The virtual NFS server's border (fortification), end to end with two unmodified nfs-ganesha
# servers (which squash nothing themselves). First the export policy:
# - alpha is open to every client; beta only to 10.0.1.0/25, with root squash to 4242:4343;
# - AUTH_NONE is refused (AUTH_TOOWEAK), and only addresses that mounted through the router
#   may call at all (the mount table on disk, so a restarted router still knows them).
# A client at 10.0.1.2 (pyNfsClient, over TCP and over UDP) creates files as uid 0 on both: on
# beta's disk they belong to 4242:4343, on alpha's to root. The same host from 10.0.1.200
# (outside beta's networks) is refused MNT /beta and every beta handle, sees only alpha in the
# virtual root; from 10.0.1.201, which never mounted, every call is refused. Then the router
# is killed and restarted: the first client's handles still work (its mount was kept).
# Then faulty requests: 10,000 malformed calls generated from the codec (nfs-bench --mode
# corpus: truncations, trailing bytes, flipped handle bits, bad lengths, bad names, WRITE counts
# above the data, unknown procedures, wrong versions, broken headers) over TCP and over UDP to
# each server's export: every one gets the error a server would send (or, with a broken
# header, is dropped and counted), and packet captures on the servers' own links show that
# none of them reached a server.
#
# The topology is topo_nfs in scripts/lib/netns.sh.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib/netns.sh"
topo_need_root
topo_need_nfs dumpcap tshark
trap topo_cleanup EXIT
CAP_PIDS=()
CLIENT_PY="$(cd "$(dirname "$0")" && pwd)/nfs_border_client.py"

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

# Faulty requests never reach a server. The corpus client is 10.0.1.2, whose UDP calls the
# router forwards with that source address: the servers' captures must hold none from it.
# (Over TCP every call reaches a server on the router's own connections: those are counted
# instead, `tcp.forwarded` grows by nfs-bench's own CREATE and REMOVE only.)
NFS_BENCH="$(dirname "$ROUTER_BIN")/nfs-bench"
[ -x "$NFS_BENCH" ] || die "nfs-bench missing next to the router ($NFS_BENCH): cargo build --release --workspace --bins"
for ns_if in "$NS_S:s0:alpha" "$NS_B:b0:beta"; do
	IFS=: read -r ns ifc name <<<"$ns_if"
	ip netns exec "$ns" dumpcap -q -i "$ifc" -f "src host 10.0.1.2" -w "$TOPO_DIR/$name-corpus.pcapng" 2>"$TOPO_DIR/$name-dumpcap.log" &
	TOPO_PIDS+=("$!")
	CAP_PIDS+=("$!")
done
sleep 1
ip -n "$NS_C" route replace 10.0.1.0/24 dev c0 src 10.0.1.2
counters() {
	$ROUTERCTL stats --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
drops = sum(n for c in s["cores"] for st in c["stages"] if st["name"] == "nfs" for r, n in st["drops"] if r == "malformed")
t = s["nfs"]["tcp"]
print(json.dumps({"malformed_drops": drops, "tcp_garbage": t["garbage"], "tcp_forwarded": t["forwarded"], "garbage_args": s["nfs"]["control"]["garbage_args"]}))'
}
before=$(counters)
declare -a corpus_out
for name in alpha beta; do
	out=$(ip netns exec "$NS_C" "$NFS_BENCH" --server 10.0.1.1 --export / --dir "$name" --mode corpus --count 10000 --seed "${#name}") ||
		die "corpus ($name): $out"
	corpus_out+=("$out")
done
after=$(counters)
sleep 1
for p in "${CAP_PIDS[@]}"; do kill -INT "$p"; done
for p in "${CAP_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
python3 - "$before" "$after" "$TOPO_DIR" "${corpus_out[@]}" <<'PY' || die "corpus checks"
import json, subprocess, sys
before, after, top = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
runs = [json.loads(r) for r in sys.argv[4:]]
silent = {"tcp": 0, "udp": 0}
for name, r in zip(("alpha", "beta"), runs):
    for proto in ("tcp", "udp"):
        t = r[proto]
        assert t["sent"] == 10000 and t["wrong"] == 0, (name, proto, {k: v for k, v in t["by_kind"].items() if v["wrong"]})
        k = t["by_kind"]
        assert all(v["unanswered"] == 0 for kind, v in k.items() if kind != "truncated-header"), (name, proto, k)
        assert k["truncated-header"]["unanswered"] == k["truncated-header"]["sent"], k
        assert t["right"] + t["unanswered"] == t["sent"], t
        silent[proto] += t["unanswered"]
    assert r["udp"]["control_ok"], r["udp"]
    print(f"{name}: 2 x 10000 malformed calls, " + ", ".join(
        f"{kind} {v['sent']}" for kind, v in sorted(r["udp"]["by_kind"].items())) + ": every answer right")
d = {k: after[k] - before[k] for k in before}
print(f"router: {d['garbage_args']} GARBAGE_ARGS answered, {d['malformed_drops']} undecodable UDP headers dropped, "
      f"{d['tcp_garbage']} over TCP counted as garbage; TCP calls forwarded {d['tcp_forwarded']}")
assert d["malformed_drops"] >= silent["udp"], (d, silent)
assert d["tcp_garbage"] >= silent["tcp"], (d, silent)
assert d["tcp_forwarded"] == 2 * len(runs), f"malformed TCP calls reached a server: {d}"
# Each server's capture holds the client's one valid GETATTR after the corpus (and its
# retransmissions, if any): the capture works, and no malformed call is in it.
for name, r in zip(("alpha", "beta"), runs):
    xids = subprocess.run(["tshark", "-r", f"{top}/{name}-corpus.pcapng", "-T", "fields", "-e", "rpc.xid"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert xids and set(xids) == {r["udp"]["control_xid"]}, f"{name}'s capture: xids {sorted(set(xids))[:10]} ({len(xids)} packets)"
print("the servers' captures: only the valid GETATTR after each corpus, no malformed call")
PY
log "corpus: no malformed call reached a server"

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
