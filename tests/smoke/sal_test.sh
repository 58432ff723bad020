#!/usr/bin/env bash
# Serval service routing end to end: a client and two instances of a service, each in its own
# namespace, the router (DPDK af_packet) between. A Serval host of our own
# (tests/smoke/serval_host.py, the original wire format over raw IP protocol 144) opens
# connections to a serviceID through the router and exchanges data host to host:
#   1. weights 3:1 — the instances see about 3:1 of the new connections;
#   2. an established flow to alpha keeps exchanging data while alpha's target is removed,
#      and every new connection goes to beta;
#   3. beta registers a second service with the router's controller (REGISTER, the original
#      control message) and is reached with no manual rule; when it stops refreshing, the
#      registration and its rule expire and new SYNs are no longer forwarded.
# The instances check the SAL and TCP checksums of every packet the router rewrote.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib/netns.sh"
topo_need_root
trap topo_cleanup EXIT
HOST_PY="$(cd "$(dirname "$0")" && pwd)/serval_host.py"

topo_ipv4 "$TOPO_BETA_PORT
[sal]
registration_ttl_secs = 3
[[sal.rules]]
prefix = \"7777\"
action = \"forward\"
targets = [\"10.0.2.2:3\", \"10.0.3.2:1\"]
"
topo_beta
"$ROUTER_BIN" check-config "$TOPO_DIR/router.toml" >/dev/null
topo_start_router "$NS_R" "$TOPO_DIR/router.toml"
log "router up"

topo_bg "$NS_S" python3 "$HOST_PY" serve 10.0.2.2 --report "$TOPO_DIR/alpha.json"
ALPHA=$TOPO_LAST_PID
topo_bg "$NS_B" python3 "$HOST_PY" serve 10.0.3.2 --report "$TOPO_DIR/beta.json" \
	--register 10.0.3.1 --service 2222 --refresh 1 --refresh-for 4
BETA=$TOPO_LAST_PID
client() { ip netns exec "$NS_C" python3 "$HOST_PY" "$@"; }
count() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["instances"].get(sys.argv[2], 0))' "$1" "$2"; }
sleep 0.5

# 1. Weighted anycast.
out=$(client connect 10.0.1.1 7777 200)
log "200 connections to 7777 (weights 3:1): $out"
a=$(count "$out" 10.0.2.2) b=$(count "$out" 10.0.3.2)
[ $((a + b)) -ge 195 ] || die "connections failed: $out"
[ "$a" -ge 125 ] && [ "$a" -le 175 ] || die "alpha got $a of $((a + b)), expected about 3/4"
$ROUTERCTL sal rule list

# 2. An established flow to alpha, then alpha's target goes.
ip netns exec "$NS_C" python3 "$HOST_PY" hold 10.0.1.1 7777 3 --want 10.0.2.2 >"$TOPO_DIR/hold.out" &
HOLD=$!
for _ in $(seq 1 50); do grep -q established "$TOPO_DIR/hold.out" && break; sleep 0.1; done
grep -q established "$TOPO_DIR/hold.out" || die "no flow to alpha: $(cat "$TOPO_DIR/hold.out")"
$ROUTERCTL sal rule del 7777 10.0.2.2
out=$(client connect 10.0.1.1 7777 40)
log "40 connections after removing alpha: $out"
[ "$(count "$out" 10.0.3.2)" -ge 39 ] && [ "$(count "$out" 10.0.2.2)" = 0 ] || die "new SYNs still reach alpha: $out"
wait "$HOLD" || true
held=$(tail -1 "$TOPO_DIR/hold.out")
log "established flow: $held"
python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["instance"]=="10.0.2.2" and d["exchanges"]>=20 and d["failed"]==0, d' "$held" \
	|| die "the established flow did not finish: $held"

# 3. Registration: beta registered 2222 (refreshing every second for 4 s).
$ROUTERCTL sal registrations
out=$(client connect 10.0.1.1 2222 10)
log "10 connections to the registered 2222: $out"
[ "$(count "$out" 10.0.3.2)" = 10 ] || die "the registered service is not reached: $out"
$ROUTERCTL sal rule list | grep -q '^2222/32' || die "no rule for the registration"
log "waiting for the registration to expire (refresh stopped after 4 s, TTL 3 s)"
for _ in $(seq 1 150); do
	[ "$($ROUTERCTL sal registrations --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["registrations"]))')" = 0 ] && break
	sleep 0.1
done
! $ROUTERCTL sal rule list | grep -q '^2222/32' || die "the registration's rule did not expire"
out=$(client connect 10.0.1.1 2222 2)
[ "$(count "$out" 10.0.3.2)" = 0 ] || die "an expired service is still forwarded: $out"
log "expired: new SYNs to 2222 are dropped ($out)"

$ROUTERCTL sal stats
kill -TERM "$ALPHA" "$BETA"
for _ in $(seq 1 50); do [ -s "$TOPO_DIR/alpha.json" ] && [ -s "$TOPO_DIR/beta.json" ] && break; sleep 0.1; done
python3 - "$TOPO_DIR/alpha.json" "$TOPO_DIR/beta.json" <<'PY' || die "instance checks"
import json, sys
for p in sys.argv[1:]:
    r = json.load(open(p))
    print(f"{r['addr']}: {r['syns']} SYNs, {r['data']} data segments, bad SAL checksums {r['bad_sal_checksum']}, bad TCP checksums {r['bad_tcp_checksum']}, registers sent {r['registers']}")
    assert r["bad_sal_checksum"] == 0 and r["bad_tcp_checksum"] == 0, r
    assert r["syns"] > 0, r
PY
stats=$($ROUTERCTL sal stats --json)
python3 -c 'import json,sys; d=json.loads(sys.argv[1]); c=d["controller"]; assert c["registers"]>=1 and c["refreshes"]>=2 and c["expired"]>=1, c; assert d["stage"]["forwarded"]>=240, d["stage"]' "$stats" \
	|| die "controller counters: $stats"
log PASS
