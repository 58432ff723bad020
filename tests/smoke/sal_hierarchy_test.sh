#!/usr/bin/env bash
# Serval controller hierarchy end to end: three routers (DPDK af_packet), each in its own
# namespace, each running a service controller — a root and two leaves — on a shared core
# segment; a client behind leaf B, a service instance behind leaf A:
#
#   client 10.1.1.2 --| leaf B 10.1.1.1 / 10.9.0.2 |--+           +--| leaf A 10.9.0.3 / 10.2.1.1 |-- server 10.2.1.2
#                                                      +-- core --+
#                                           root 10.9.0.1 --------+
#
# The server registers serviceIDs 3001 and 3002 with leaf A (REGISTER, the original control
# message). Leaf A points the root at itself for both (pointer records). The client, which
# only knows leaf B, opens connections to them:
#   1. leaf B iterative: the first SYN to 3001 is delayed, B asks the root (a referral to A),
#      then A (the answer), installs a rule and releases the SYN; the next connections hit
#      B's cached rule with no resolution;
#   2. leaf B restarted in recursive mode: 3002 — B asks the root, the root asks A on its
#      behalf and caches the answer on the way; again the next connections hit the cache;
#   3. the server stops (no refreshes): its registrations expire at A, A withdraws its pointer
#      records, and the root drops them and the answer it cached.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib/netns.sh"
topo_need_root
trap topo_cleanup EXIT
HOST_PY="$(cd "$(dirname "$0")" && pwd)/serval_host.py"

topo_ns client NS_C
topo_ns server NS_S
topo_ns core NS_CORE
topo_ns leafb NS_LB
topo_ns root NS_RT
topo_ns leafa NS_LA
ip -n "$NS_CORE" link add br0 type bridge
ip -n "$NS_CORE" link set br0 up
topo_veth "$NS_C" c0 "$NS_LB" b0
topo_veth "$NS_LB" b1 "$NS_CORE" cb
topo_veth "$NS_RT" r1 "$NS_CORE" cr
topo_veth "$NS_LA" a1 "$NS_CORE" ca
topo_veth "$NS_LA" a0 "$NS_S" s0
for p in cb cr ca; do ip -n "$NS_CORE" link set "$p" master br0; done
ip -n "$NS_C" addr add 10.1.1.2/24 dev c0
ip -n "$NS_C" route add default via 10.1.1.1
ip -n "$NS_S" addr add 10.2.1.2/24 dev s0
ip -n "$NS_S" route add default via 10.2.1.1

# router_config NAME EXTRA_TOML PORT...: $TOPO_DIR/NAME.toml (PORT: "name iface address/len").
router_config() {
	local name=$1 extra=$2
	shift 2
	{
		topo_router_toml "$TOPO_ID-$name" "$TOPO_DIR/$name.sock" "$@"
		printf '%s\n' "$extra"
	} >"$TOPO_DIR/$name.toml"
	"$ROUTER_BIN" check-config "$TOPO_DIR/$name.toml" >/dev/null
}
SAL_COMMON='[sal]
registration_ttl_secs = 3'
hier() { printf '[sal.hierarchy]\n%s\nrefresh_secs = 1\nresolve_timeout_ms = 500\ncache_secs = 30\n' "$1"; }
leafb_config() {
	router_config leafb "[[routes]]
prefix = \"10.2.1.0/24\"
via = \"10.9.0.3\"
$SAL_COMMON
$(hier "parent = \"10.9.0.1\"
mode = \"$1\"")" "clients b0 10.1.1.1/24" "core b1 10.9.0.2/24"
}
router_config root "$SAL_COMMON
$(hier 'mode = "recursive"')" "core r1 10.9.0.1/24"
router_config leafa "[[routes]]
prefix = \"10.1.1.0/24\"
via = \"10.9.0.2\"
$SAL_COMMON
$(hier 'parent = "10.9.0.1"')" "core a1 10.9.0.3/24" "servers a0 10.2.1.1/24"
leafb_config iterative

topo_start_router "$NS_RT" "$TOPO_DIR/root.toml" "$TOPO_DIR/root.log"
topo_start_router "$NS_LA" "$TOPO_DIR/leafa.toml" "$TOPO_DIR/leafa.log"
topo_start_router "$NS_LB" "$TOPO_DIR/leafb.toml" "$TOPO_DIR/leafb.log"
LEAFB_PID=$ROUTER_PID
ctl() { local n=$1; shift; "$ROUTERCTL_BIN" -s "$TOPO_DIR/$n.sock" "$@"; }
log "three routers up: root, leaf A, leaf B (iterative)"

topo_bg "$NS_S" python3 "$HOST_PY" serve 10.2.1.2 --report "$TOPO_DIR/server.json" \
	--register 10.2.1.1 --service 3001,3002 --refresh 1
SERVER=$TOPO_LAST_PID

# json NAME CMD... -- PYEXPR: evaluate PYEXPR over the JSON answer `d` of `routerctl CMD`.
json() {
	local n=$1 expr
	shift
	local args=()
	while [ "$1" != -- ]; do args+=("$1"); shift; done
	expr=$2
	ctl "$n" --json "${args[@]}" | python3 -c "import json,sys; d=json.load(sys.stdin); print($expr)"
}
pointers() { json root sal hierarchy -- '" ".join(sorted(p["prefix"] + ">" + p["child"] for p in d["pointers"]))'; }
want_pointers='3001/32>10.9.0.3 3002/32>10.9.0.3'
for _ in $(seq 1 50); do [ "$(pointers)" = "$want_pointers" ] && break; sleep 0.1; done
[ "$(pointers)" = "$want_pointers" ] || die "the root has pointer records '$(pointers)', expected '$want_pointers'"
log "root's pointer records: $(pointers)"
ctl root sal hierarchy

client() { ip netns exec "$NS_C" env SERVAL_ADDR=10.1.1.2 python3 "$HOST_PY" "$@"; }
count() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["instances"].get("10.2.1.2", 0), d["failed"])' "$1"; }
stat() { json leafb sal hierarchy -- "d['stats']['$1']"; }
rule_packets() { json "$1" sal rule list -- "sum(r['packets'] for r in d['rules'] if r['prefix'] == '$2/32' and r['action'] == 'forward')"; }

# through_leafb SERVICE "RESOLUTIONS REQUESTS REFERRALS ANSWERS" WHY: 5 connections to SERVICE
# through leaf B all succeed; B resolved it once, with the counts given; only the first SYN
# waited, the rest hit the rule the answer installed.
through_leafb() {
	local svc=$1 want=$2 why=$3 out r hits
	out=$(client connect 10.1.1.1 "$svc" 5)
	log "leaf B $(json leafb sal hierarchy -- 'd["mode"]'), 5 connections to $svc: $out"
	[ "$(count "$out")" = "5 0" ] || die "connections to $svc through the hierarchy failed: $out"
	ctl leafb sal hierarchy
	r="$(stat resolutions) $(stat requests_sent) $(stat referrals_received) $(stat answers_received)"
	[ "$r" = "$want" ] || die "leaf B (resolutions, requests, referrals, answers) = $r, expected $want ($why)"
	[ "$(json leafb sal stats -- 'd["delay"]["delayed"]')" = 1 ] || die "more than the first SYN to $svc was delayed"
	hits=$(rule_packets leafb "$svc")
	[ "$hits" -ge 5 ] || die "B's cached rule for $svc matched $hits SYNs"
	log "leaf B: one resolution ($why); the cached rule took $hits SYNs"
}

# 1. Iterative.
through_leafb 3001 "1 2 1 1" "the root's referral, then A's answer"
[ "$(json root sal hierarchy -- 'd["stats"]["referred"]')" -ge 1 ] || die "the root gave no referral"

# 2. Recursive: leaf B restarted in recursive mode (its soft state starts empty).
kill -TERM "$LEAFB_PID"
for _ in $(seq 1 50); do kill -0 "$LEAFB_PID" 2>/dev/null || break; sleep 0.1; done
leafb_config recursive
topo_start_router "$NS_LB" "$TOPO_DIR/leafb.toml" "$TOPO_DIR/leafb2.log"
log "leaf B restarted in recursive mode"
through_leafb 3002 "1 1 0 1" "the root asked A on B's behalf"
ctl root sal hierarchy
[ "$(json root sal hierarchy -- '[c["prefix"] for c in d["cache"]]')" = "['3002/32']" ] \
	|| die "the root did not cache the answer it passed on"
log "the root cached the answer it passed on"

# 3. The server stops refreshing: records go along the path.
kill -TERM "$SERVER"
for _ in $(seq 1 100); do [ -z "$(pointers)" ] && break; sleep 0.1; done
[ -z "$(pointers)" ] || die "the root still has pointer records: $(pointers)"
[ "$(json root sal hierarchy -- 'len(d["cache"])')" = 0 ] || die "the root kept the answer for a withdrawn service"
[ "$(json leafa sal registrations -- 'len(d["registrations"])')" = 0 ] || die "leaf A kept the registrations"
log "registrations expired at leaf A; its pointer records and the root's cached answer are gone"
ctl leafa sal stats
log PASS
