#!/usr/bin/env bash
# Mirage NFS aggregation end to end: two unmodified nfs-ganesha servers (NFSv3 over UDP), each
# in its own namespace, look like one server at the router's virtual address. An independent
# client (pyNfsClient over UDP) mounts the virtual export, lists the virtual root, creates,
# writes, reads back and removes files under each server, and the bytes are checked on each
# server's disk. Then the router is killed (SIGKILL) and restarted in the middle of a workload
# on handles the client already holds: the client's next calls must succeed (from the
# checkpoint, or by recovery from the servers). A forged handle is refused and counted.
#
# The topology is topo_nfs in scripts/lib/netns.sh.
# Usage: nfs_test.sh [rtc1|rtc2] — rtc2: two run-to-completion workers, each port two queue
# pairs (af_packet fanout spreads flows over them), so calls and their replies often arrive on
# different workers and are handed to the one keeping the transaction.
set -euo pipefail
LAYOUT=${1:-rtc1}
source "$(dirname "$0")/../../scripts/lib/netns.sh"
topo_need_root
topo_need_nfs
trap topo_cleanup EXIT
CLIENT_PY="$(cd "$(dirname "$0")" && pwd)/nfs_client.py"

NFS_CHECKPOINT_SECS=3600 topo_nfs
log "ganesha servers up"
if [ "$LAYOUT" = rtc2 ]; then
	sed -i -e 's/^workers = .*/workers = [0, 1]/' -e 's/qdisc_bypass=1"/qdisc_bypass=1,qpairs=2"/' "$TOPO_DIR/router.toml"
fi
"$ROUTER_BIN" check-config "$TOPO_DIR/router.toml" >/dev/null
topo_start_router "$NS_R" "$TOPO_DIR/router.toml"
topo_nfs_wait_mounted 2
$ROUTERCTL nfs servers
log "router up, both exports mounted"

client() { ip netns exec "$NS_C" python3 "$CLIENT_PY" 10.0.1.1 "$@"; }
client_to() { local host=$1; shift; ip netns exec "$NS_C" python3 "$CLIENT_PY" "$host" "$1" /dev/null "${@:2}"; }

# 1. Mount, list, create/write/read/remove under each server; forged handle refused.
out=$(client basic "$TOPO_DIR/state.json" alpha beta) || { $ROUTERCTL stats --json >&2; die "client (basic): $out"; }
report=$(tail -1 <<<"$out")
log "client: $report"
python3 - "$report" "$TOPO_DIR" <<'PY' || die "basic checks"
import json, os, sys
r, top = json.loads(sys.argv[1]), sys.argv[2]
assert sorted(r["root_entries"]) == [".", "..", "alpha", "beta"], r["root_entries"]
assert r["wtmax"] <= 1472 and r["rtmax"] <= 1472, "FSINFO not clamped to the MTU"
fsids = set()
for name in ("alpha", "beta"):
    s = r["servers"][name]
    path = os.path.join(top, name, "export", "dir", f"file-{name}.bin")
    disk = open(path, "rb").read()
    seed = f"{name}:"
    want = (seed * (5000 // len(seed) + 1))[:5000].encode()
    assert disk == want, f"{path}: {len(disk)} bytes on disk differ from what the client wrote"
    assert s["size"] == 5000
    assert not os.path.exists(os.path.join(top, name, "export", "dir", "gone.txt")), "removed file on disk"
    assert sorted(s["dir_entries"]) == [".", "..", f"file-{name}.bin"], s["dir_entries"]
    assert s["handle_len"] == 40, "the client holds a virtual handle"
    fsids.add(s["fsid"])
assert len(fsids) == 1, f"one file system for the client, saw fsids {fsids}"
print("on-disk bytes match under both servers; one virtual fsid")
PY
stats=$($ROUTERCTL nfs stats --json)
frag=$($ROUTERCTL stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["mgmt"]["fragmented"])')
# The oversized WRITE, SYMLINK and READLINK datagrams left the router as fragments.
[ "$frag" -ge 12 ] || die "expected the router to fragment the oversized datagrams (fragmented=$frag)"
python3 - "$stats" <<'PY' || die "stats after basic"
import json, sys
s = json.loads(sys.argv[1])
assert s["control"]["bad_handles"] >= 2, s["control"]
assert s["calls_rewritten"] > 20 and s["replies_rewritten"] > 20, s
print(f"fragments punted {s['fragments_punted']}, reassembled {s['reassembly']['stats']['reassembled']}")
print(f"calls {s['calls']}, rewritten {s['calls_rewritten']}/{s['replies_rewritten']}, bad handles {s['control']['bad_handles']}, virtual root {s['control']['virtual_root']}")
PY
$ROUTERCTL nfs stats
log "basic: ok"

# 1b. A host talking NFS to a real server's own address through the router (not the virtual
# server) gets its answers, both ways untouched.
out=$(client_to 10.0.2.2 direct "$TOPO_DIR/alpha/export") || die "NFS straight to a server, through the router: $out"
direct=$(tail -1 <<<"$out")
python3 - "$direct" "$($ROUTERCTL nfs stats --json)" <<'PY' || die "direct checks"
import json, sys
d, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert d["size"] == 3000, d
assert d["fsid"] != 0x5649525455414C31, "the reply came through the virtual server (virtual fsid)"
assert s["direct_calls"] >= 6 and s["direct_replies"] >= 6, s
print(f"straight to alpha: {s['direct_calls']} calls and {s['direct_replies']} replies routed untouched "
      f"(the server's own fsid {d['fsid']:#x} and {d['handle_len']}-byte handles)")
PY
log "a host's own NFS conversation with a server: untouched"
if [ "$LAYOUT" = rtc2 ]; then
	python3 - "$($ROUTERCTL stats --json)" <<'PY' || die "two-worker checks"
import json, sys
s = json.loads(sys.argv[1])
w = [c for c in s["cores"] if c["role"] == "worker"]
assert len(w) == 2, w
rx = [sum(p["rx"] for p in c["ports"]) for c in w]
handed = sum(c["handed_off"] for c in w)
print(f"two workers received {rx[0]} and {rx[1]} frames; {handed} handed to the worker keeping the call")
assert min(rx) > 0, "one worker received nothing: the queues are not both used"
assert handed > 0, "no call or reply changed workers: the layout was not exercised"
PY
fi

# 2. Handles held across a router restart: three files per server; the first half are in
# the checkpoint, the rest only in the router's memory when it is killed.
out=$(client prepare "$TOPO_DIR/state.json" a alpha beta) || die "client (prepare a): $out"
$ROUTERCTL nfs checkpoint
out=$(client prepare "$TOPO_DIR/state.json" b alpha beta) || die "client (prepare b): $out"
client workload "$TOPO_DIR/state.json" 1 >/dev/null || die "client (warm-up workload)"

topo_kill_router_during "$TOPO_DIR/workload.out" \
	ip netns exec "$NS_C" python3 "$CLIENT_PY" 10.0.1.1 workload "$TOPO_DIR/state.json" 12
wl=$(tail -1 "$TOPO_DIR/workload.out")
log "workload across the restart: $wl"
out=$(client finish "$TOPO_DIR/state.json") || die "client (finish): $out"
stats=$($ROUTERCTL nfs stats --json)
python3 - "$stats" "$wl" <<'PY' || die "recovery checks"
import json, sys
s, wl = json.loads(sys.argv[1]), json.loads(sys.argv[2])
r, k = s["recovery"], s["checkpoint"]
print(f"after restart: {k['loaded']} handles loaded from the checkpoint; "
      f"{r['calls']} calls waited for recovery, {r['recovered']} handles recovered by "
      f"{r['walks']} walks ({r['walk_dirs']} dirs, {r['walk_entries']} entries), "
      f"longest wait {r['wait_ms_max']} ms; client: {wl['transport']['slow_calls']} slow calls, "
      f"longest call {wl['transport']['max_wait']:.2f} s, {wl['transport']['retransmits']} retransmissions")
assert k["loaded"] > 0, "nothing loaded from the checkpoint"
assert r["recovered"] > 0, "nothing needed recovery: the test did not exercise it"
assert r["failed"] == 0, r
assert wl["rounds"] >= 2, wl
PY
for s in alpha beta; do
	left=$(find "$TOPO_DIR/$s/export" -name 'held-*' | wc -l)
	[ "$left" = 0 ] || die "$s still holds $left held-* files after finish"
done
log "PASS"
