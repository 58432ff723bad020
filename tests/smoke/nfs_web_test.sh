#!/usr/bin/env bash
# Web exports (mutation, Gecko-style), end to end: the virtual server's entry "www" is a tree
# served by a real nginx (autoindex on) in its own namespace, which the router reaches over its
# host-side management link (the HTTP side runs off the fast path, on the kernel's TCP). Beside
# it, the two ganesha exports as always.
#   client 10.0.1.2 --c0|r0-- router 10.0.1.1 --r1|s0-- alpha, --r2|b0-- beta (DPDK ports)
#                             router's kernel 10.0.9.1 --rw|w0-- origin 10.0.9.2:8080 (nginx)
# An independent client (pyNfsClient, over TCP and over UDP) lists the export and every
# directory (one of 500 entries), reads every file (one of 3 MiB) with its size and mtime
# equal to the origin's, and 64 ranged READs at random offsets; changes are refused (ROFS);
# after a router SIGKILL + restart its handles still work (found again by walking the index
# pages), and the 3 MiB file is timed cold and cached; a file changed on the origin is seen
# changed after the cache lifetime, a removed one goes STALE; with the origin stopped, calls
# get NFS3ERR_IO within the configured timeout while the NFS exports are still served.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib/netns.sh"
topo_need_root
topo_need_nfs
command -v nginx >/dev/null || { echo "SKIP: nginx missing (apt-get install nginx-light)"; exit 77; }
trap topo_cleanup EXIT
CLIENT_PY="$(cd "$(dirname "$0")" && pwd)/nfs_web_client.py"
LIFETIME=2
TIMEOUT_MS=2000

# The origin's tree.
WWW=$TOPO_DIR/www
mkdir -p "$WWW/tree/dir500" "$WWW/tree/sub/nested"
python3 - "$WWW/tree" <<'PY'
import os, sys
top = sys.argv[1]
def put(rel, data):
    with open(os.path.join(top, rel), "wb") as f:
        f.write(data)
put("small.txt", b"hello from the web\n" * 100)
put("big.bin", os.urandom(3 << 20))
put("change.txt", b"before\n")
put("gone.txt", b"soon gone\n")
put("with space & more.txt", b"a name to escape\n")
put("sub/nested/deep.txt", b"deep\n" * 1000)
for i in range(500):
    put(f"dir500/entry-{i:03d}.txt", f"entry {i}\n".encode() * (i + 1))
PY
topo_nfs "[[nfs.web]]
name = \"www\"
url = \"http://10.0.9.2:8080/\"
lifetime_secs = $LIFETIME
timeout_ms = $TIMEOUT_MS
cache_mib = 16"
topo_web "$WWW/tree"
"$ROUTER_BIN" check-config "$TOPO_DIR/router.toml" >/dev/null
topo_start_router "$NS_R" "$TOPO_DIR/router.toml"
topo_nfs_wait_mounted 2
log "router up: alpha, beta and the web export www (nginx at 10.0.9.2:8080)"

client() {
	local proto=$1
	shift
	ip netns exec "$NS_C" python3 "$CLIENT_PY" "$proto" 10.0.1.1 "$1" "$TOPO_DIR/web-$proto.json" "${@:2}"
}
last() { tail -1 <<<"$1"; }

for proto in tcp udp; do
	out=$(client "$proto" tree "$WWW/tree") || { $ROUTERCTL nfs web >&2 || true; die "tree ($proto): $out"; }
	log "$proto tree: $(last "$out")"
	out=$(client "$proto" rofs) || die "rofs ($proto): $out"
	log "$proto changes refused: $(last "$out")"
done
$ROUTERCTL nfs web
python3 - "$($ROUTERCTL nfs web --json)" <<'PY' || die "web counters"
import json, sys
w = json.loads(sys.argv[1])[0]
assert w["answered"]["rofs"] == 10, w["answered"]
assert w["hits"] > 0 and w["misses"] > 0 and w["resources"] >= 510, w
assert w["cache"]["bytes"] <= w["cache"]["max"], w["cache"]
PY

# A restarted router (no state about the web export at all) finds the handles clients hold
# by walking the index pages; the big file is read cold, then cached.
kill -KILL "$ROUTER_PID"
wait "$ROUTER_PID" 2>/dev/null || true
topo_start_router "$NS_R" "$TOPO_DIR/router.toml"
topo_nfs_wait_mounted 2
log "router killed and restarted"
out=$(client tcp timed "$WWW/tree") || die "timed: $out"
TIMED=$(last "$out")
log "3 MiB file over TCP: $TIMED"
for proto in tcp udp; do
	out=$(client "$proto" held "$WWW/tree") || die "held ($proto): $out"
done
log "handles held across the restart: served"

# Changes on the origin, seen after the cache lifetime.
printf 'after the change: longer than before\n' >"$WWW/tree/change.txt"
touch -d "@$(($(date +%s) + 60))" "$WWW/tree/change.txt"
rm "$WWW/tree/gone.txt"
sleep $((LIFETIME + 1))
for proto in tcp udp; do
	out=$(client "$proto" changed "$WWW/tree") || die "changed ($proto): $out"
	log "$proto changed: $(last "$out")"
	out=$(client "$proto" gone) || die "gone ($proto): $out"
	log "$proto gone: $(last "$out")"
done

# The origin unreachable (its packets dropped: requests time out), then stopped (connections
# refused): NFS3ERR_IO within the timeout either way, the NFS exports still served.
ip netns exec "$NS_W" nft -f - <<'NFT'
table inet blackhole {
	chain input { type filter hook input priority 0; policy drop; }
}
NFT
sleep $((LIFETIME + 1))
for proto in tcp udp; do
	out=$(client "$proto" down "$TIMEOUT_MS") || die "unreachable ($proto): $out"
	log "$proto origin unreachable: $(last "$out")"
done
ip netns exec "$NS_W" nft delete table inet blackhole
kill -TERM "$WEB_PID"
wait "$WEB_PID" 2>/dev/null || true
sleep $((LIFETIME + 1))
for proto in tcp udp; do
	out=$(client "$proto" down "$TIMEOUT_MS") || die "down ($proto): $out"
	log "$proto origin down: $(last "$out")"
done

stats=$($ROUTERCTL nfs web --json)
$ROUTERCTL nfs web
python3 - "$stats" "$TIMED" <<'PY' || die "web counters"
import json, sys
w = json.loads(sys.argv[1])[0]
timed = json.loads(sys.argv[2])
a, e = w["answered"], w["errors"]
assert w["hits"] > 0 and w["misses"] > 0 and w["fetches"] > 0, w
assert w["changed"] >= 1 and w["gone"] >= 1, w
assert a["stale"] >= 2 and a["io"] >= 4, a
assert e["connect"] >= 1 and e["timeout"] >= 1, e
assert w["walk"]["found"] >= 1, w["walk"]
assert w["cache"]["bytes"] <= w["cache"]["max"], w["cache"]
print(f"web export: {w['calls']} calls, hits {w['hits']}, misses {w['misses']}, {w['fetches']} requests; "
      f"3 MiB READ over TCP: cold {timed['cold_mib_s']} MiB/s, cached {timed['cached_mib_s']} MiB/s (rtmax {timed['rtmax']})")
PY
log "PASS"
