#!/usr/bin/env bash
# 802.1Q VLANs: one router port on a trunk carrying VLANs 10 and 20 (each a routed interface)
# beside its untagged subnet, the hosts behind a user-space 802.1Q switch (vlan_switch.py). Hosts on the two VLANs ping and run iperf3 through the router;
# a host on VLAN 30, which the router does not carry, gets nothing and its frames are counted.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib/netns.sh"
topo_need_root
trap topo_cleanup EXIT

topo_ns router NS_R
topo_ns trunk NS_T
topo_ns vlan10 NS_A
topo_ns vlan20 NS_B
topo_ns vlan30 NS_X
topo_veth "$NS_R" r0 "$NS_T" t0
ip -n "$NS_T" addr add 10.0.1.2/24 dev t0
ip -n "$NS_T" route add default via 10.0.1.1
# Each VLAN's host on an access port of a user-space 802.1Q switch in the trunk's namespace
# (this kernel has no 802.1Q devices: see vlan_switch.py).
switch_ports=()
for v in "10 $NS_A" "20 $NS_B" "30 $NS_X"; do
	set -- $v
	topo_veth "$NS_T" "a$1" "$2" h0
	ip -n "$2" addr add "10.0.$1.2/24" dev h0
	ip -n "$2" route add default via "10.0.$1.1"
	switch_ports+=("$1:a$1")
done
topo_bg "$NS_T" python3 "$(dirname "$0")/vlan_switch.py" t0 "${switch_ports[@]}" >"$TOPO_DIR/switch.log" 2>&1
SWITCH_PID=$TOPO_LAST_PID
sleep 0.5
kill -0 "$SWITCH_PID" 2>/dev/null || die "the VLAN switch did not start: $(cat "$TOPO_DIR/switch.log")"
topo_router_toml "$TOPO_ID" "$TOPO_DIR/admin.sock" "trunk r0 10.0.1.1/24" >"$TOPO_DIR/router.toml"
cat >>"$TOPO_DIR/router.toml" <<'TOML'
[[ports.vlans]]
id = 10
addresses = ["10.0.10.1/24"]
[[ports.vlans]]
id = 20
name = "office"
addresses = ["10.0.20.1/24"]
TOML
ROUTERCTL="$ROUTERCTL_BIN -s $TOPO_DIR/admin.sock"
"$ROUTER_BIN" check-config "$TOPO_DIR/router.toml" >/dev/null
topo_start_router "$NS_R" "$TOPO_DIR/router.toml"
log "router up: trunk untagged 10.0.1.1/24, VLAN 10 10.0.10.1/24, VLAN 20 (office) 10.0.20.1/24"

out=$($ROUTERCTL ports) || die "ports failed"
grep -q "trunk.10 " <<<"$out" && grep -q "office " <<<"$out" || die "ports does not list the VLANs: $out"

ip netns exec "$NS_T" ping -c 2 -i 0.2 -W 2 10.0.1.1 >/dev/null || die "untagged ping to the router"
ip netns exec "$NS_A" ping -c 2 -i 0.2 -W 2 10.0.10.1 >/dev/null || die "VLAN 10 ping to the router"
ip netns exec "$NS_B" ping -c 2 -i 0.2 -W 2 10.0.20.1 >/dev/null || die "VLAN 20 ping to the router"
ip netns exec "$NS_A" ping -c 3 -i 0.2 -W 2 10.0.20.2 >/dev/null || die "VLAN 10 -> VLAN 20 through the router"
ip netns exec "$NS_B" ping -c 2 -i 0.2 -W 2 10.0.1.2 >/dev/null || die "VLAN 20 -> untagged through the router"
log "ping ok: to the router on each interface, between the VLANs, VLAN to untagged"

# What the router sends to VLAN 20 leaves the trunk tagged 20 (the switch would not deliver
# it otherwise; checked on the wire too).
ip netns exec "$NS_T" tshark -q -i t0 -a duration:8 -w "$TOPO_DIR/trunk.pcapng" -f "vlan 20 and icmp" \
	>/dev/null 2>&1 &
TSHARK=$!
TOPO_PIDS+=("$TSHARK")
# The capture has started once its file has a header (a loaded machine can take seconds).
for _ in $(seq 1 50); do [ -s "$TOPO_DIR/trunk.pcapng" ] && break; sleep 0.1; done
sleep 0.5
ip netns exec "$NS_A" ping -c 4 -i 0.2 -W 2 10.0.20.2 >/dev/null || die "ping during the capture"
wait "$TSHARK" || true
n=$(tshark -r "$TOPO_DIR/trunk.pcapng" -Y "vlan.id == 20 && icmp && eth.src == $(ip -n "$NS_R" -br link show r0 | awk '{print $3}')" 2>/dev/null | wc -l)
[ "$n" -ge 2 ] || die "no ICMP tagged 20 from the router on the trunk ($n frames)"
log "on the wire: $n ICMP frames from the router tagged VLAN 20"

topo_bg "$NS_B" iperf3 -s -1 -p 5201 >/dev/null 2>&1
sleep 0.5
ip netns exec "$NS_A" iperf3 -c 10.0.20.2 -p 5201 -t 3 -J >"$TOPO_DIR/iperf.json" || die "iperf3 between the VLANs failed"
bps=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]))' "$TOPO_DIR/iperf.json")
[ "$bps" -gt 1000000 ] || die "iperf3 throughput $bps bit/s"
log "iperf3 VLAN 10 -> VLAN 20, 3 s: $((bps / 1000000)) Mbit/s"

! ip netns exec "$NS_X" ping -c 5 -i 0.5 -W 1 10.0.30.1 >/dev/null 2>&1 || die "VLAN 30 (not carried) got an answer"
$ROUTERCTL stats --json >"$TOPO_DIR/stats.json"
python3 - "$TOPO_DIR/stats.json" <<'PY' || die "stats"
import json, sys
s = json.load(open(sys.argv[1]))
drops = {}
for c in s["cores"]:
    for name, n in c["stages"][0]["drops"]:
        drops[name] = drops.get(name, 0) + n
# VLAN 30's host ARPs for its gateway about once a second for 3 s: each request dropped, counted.
assert drops.get("unknown-vlan", 0) >= 2, drops
print("unknown-vlan drops:", drops["unknown-vlan"])
PY
log "VLAN 30 not carried: its frames dropped and counted"
kill -TERM "$SWITCH_PID" 2>/dev/null || true
wait "$SWITCH_PID" 2>/dev/null || true
log "$(tail -1 "$TOPO_DIR/switch.log")"
log "PASS"
