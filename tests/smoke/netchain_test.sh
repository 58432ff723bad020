#!/usr/bin/env bash
# NetChain end to end: four appliances (routers on DPDK af_packet), each in its own namespace
# and each one NetChain node, on a shared segment; clients, the chain master and etcd in
# another namespace:
#
#   clients 10.0.9.100, .101 + master + etcd --+-- core bridge --+-- n1 10.0.9.1
#                                                                +-- n2 10.0.9.2
#                                                                +-- n3 10.0.9.3
#                                                                +-- n4 10.0.9.4 (spare)
#
# The master places 8 virtual groups on n1..n3 (3 replicas: every chain has all three, in
# different orders) and inserts 200 keys through the authenticated control channel. Two
# clients run a concurrent read/write workload (half writes) over the keys, recording every
# operation, while:
#   1. n2 is killed: the master fails it over (where it was a middle node, its predecessor's
#      failover table skips it; where it was head or tail, the chain shrinks);
#   2. the master is killed and restarted: it resumes from etcd, the chains serve meanwhile;
#   3. n4 is added: recovery brings it into every group, one at a time.
# Then every key is read once more, and the whole history must be linearizable per key (so
# every acknowledged write is readable).
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib/netns.sh"
topo_need_root
trap topo_cleanup EXIT
NETCHAIN_BIN=${NETCHAIN_BIN:-$ROOT/target/release/netchain}

NC_MAX=4 topo_netchain 3
ctl() { local n=$1; shift; "$ROUTERCTL_BIN" -s "$TOPO_DIR/n$n.sock" "$@"; }
topo_netchain_start 4
log "four appliances up (n4 not known to the master yet)"
topo_etcd "$NS_C"
log "etcd up"
topo_netchain_master 3
start_master() {
	topo_bg "$NS_C" "$NETCHAIN_BIN" master --config "$TOPO_DIR/master.toml"
	MASTER=$TOPO_LAST_PID
}
start_master 2>>"$TOPO_DIR/master.log"
ncli() { ip netns exec "$NS_C" "$NETCHAIN_BIN" "$@"; }
admin() { ncli admin --master 10.0.9.100:8891 --secret-file "$TOPO_DIR/secret" "$@"; }
status() { admin status | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
for _ in $(seq 1 50); do admin status >/dev/null 2>&1 && break; sleep 0.1; done
[ "$(status 'len([a for a in d["appliances"] if a["alive"]])')" = 3 ] || die "the master does not see three appliances"
admin insert --range 1 200 >/dev/null
[ "$(status 'd["keys"]')" = 200 ] || die "keys not inserted"
for i in 1 2 3; do
	k=$(ctl "$i" --json chain nodes | python3 -c 'import json,sys; print(json.load(sys.stdin)["nodes"][0]["keys"])')
	[ "$k" = 200 ] || die "n$i holds $k keys, expected 200 (every chain has all three nodes)"
done
log "master placed 8 groups on n1..n3, 200 keys on each"
status '"\n".join("  group %d: %s" % (g["vgroup"], " -> ".join(g["chain"])) for g in d["groups"])' >&2

# A wrong secret is refused (no answer).
printf 'wrong\n' >"$TOPO_DIR/wrong"
if timeout 2 ip netns exec "$NS_C" "$NETCHAIN_BIN" admin --master 10.0.9.100:8891 \
	--secret-file "$TOPO_DIR/wrong" status >/dev/null 2>&1; then
	die "the master answered a request signed with the wrong secret"
fi

bench() {
	topo_bg "$NS_C" "$NETCHAIN_BIN" bench --master 10.0.9.100:8891 --bind "$1" --client-id "$2" \
		--keys 200 --writes 0.5 --concurrency 8 --duration 16 --timeout-ms 300 \
		--history "$TOPO_DIR/history-$2" >"$TOPO_DIR/bench-$2.out" 2>&1
}
bench 10.0.9.100 1
B1=$TOPO_LAST_PID
bench 10.0.9.101 2
B2=$TOPO_LAST_PID
sleep 3

log "killing n2 (PID ${NC_PID[2]})"
kill -KILL "${NC_PID[2]}"
for _ in $(seq 1 50); do
	[ "$(status '[a["alive"] for a in d["appliances"]][1]')" = False ] && break
	sleep 0.1
done
[ "$(status '[a["alive"] for a in d["appliances"]][1]')" = False ] || die "the master did not notice n2's death"
log "failover done: $(status '"; ".join(" -> ".join(g["chain"]) for g in d["groups"])')"
sleep 1

log "restarting the master"
kill -KILL "$MASTER"
DOWN=$(date +%s%N)
sleep 1
UP=$(date +%s%N)
start_master 2>>"$TOPO_DIR/master.log"
for _ in $(seq 1 50); do admin status >/dev/null 2>&1 && break; sleep 0.1; done
[ "$(status 'd["resumed"]')" = True ] || die "the restarted master did not resume from etcd"
grep -q "resuming from etcd" "$TOPO_DIR/master.log" || die "no resume in the master's log"
sleep 1

log "adding n4: recovery"
admin add --control 10.0.9.4:8890 --node 10.0.9.4 >/dev/null
for _ in $(seq 1 100); do
	[ "$(status 'd["under_replicated"]')" = 0 ] && break
	sleep 0.1
done
[ "$(status 'd["under_replicated"]')" = 0 ] || die "recovery did not finish: $(admin status)"
grep "recovery:" "$TOPO_DIR/master.log" >&2 || true
k=$(ctl 4 --json chain nodes | python3 -c 'import json,sys; print(json.load(sys.stdin)["nodes"][0]["keys"])')
[ "$k" = 200 ] || die "n4 holds $k keys after recovery, expected 200"

wait "$B1" || { cat "$TOPO_DIR/bench-1.out" >&2; die "client 1 failed"; }
wait "$B2" || { cat "$TOPO_DIR/bench-2.out" >&2; die "client 2 failed"; }
cat "$TOPO_DIR/bench-1.out" "$TOPO_DIR/bench-2.out" >&2
# Every key once more, after the run.
ncli bench --master 10.0.9.100:8891 --bind 10.0.9.100 --client-id 3 --keys 200 --writes 0 \
	--duration 0 --final-read --history "$TOPO_DIR/history-3" >/dev/null
ops=$(cat "$TOPO_DIR"/history-* | wc -l)
acked=$(awk '$3 == "w" && $6 != "-"' "$TOPO_DIR"/history-1 "$TOPO_DIR"/history-2 | wc -l)
[ "$acked" -gt 1000 ] || die "only $acked acknowledged writes"
served=$(awk -v a="$DOWN" -v b="$UP" '$6 != "-" && $5 >= a && $6 <= b' "$TOPO_DIR"/history-1 "$TOPO_DIR"/history-2 | wc -l)
[ "$served" -gt 1000 ] || die "only $served operations answered while the master was down"
log "history: $ops operations, $acked acknowledged writes; $served answered while the master was down"
out=$(ncli check "$TOPO_DIR"/history-1 "$TOPO_DIR"/history-2 "$TOPO_DIR"/history-3) ||
	die "linearizability check failed: $out"
log "$out"
for i in 1 3 4; do
	log "n$i: $(ctl "$i" --json chain stats | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["stage"], "control", d["control"])')"
done
f=$(for i in 1 3 4; do ctl "$i" --json chain stats; done | python3 -c '
import json,sys
dec=json.JSONDecoder(); s=sys.stdin.read(); i=0; t=0
while i < len(s):
    if s[i].isspace(): i+=1; continue
    d,i=dec.raw_decode(s,i); t+=d["stage"]["failovers"]
print(t)')
[ "$f" -gt 0 ] || die "no query took a failover rule"
n4=$(ctl 4 --json chain stats | python3 -c 'import json,sys; d=json.load(sys.stdin)["stage"]; print(d["writes"], d["replies"])')
set -- $n4
[ "$1" -gt 0 ] && [ "$2" -gt 0 ] || die "n4 took no traffic after recovery (writes, replies: $n4)"
log "PASS: failover, master restart from etcd, recovery onto n4; $f queries took failover rules"
