#!/usr/bin/env bash
# The systemd unit (deploy/router.service): systemd-analyze verifies it (with its binary paths
# pointed at this build), then its own ExecStartPre, ExecStart and ExecReload command lines run
# as systemd would run them, on the IPv4 topology: preflight passes on a good host and config
# and fails naming what to fix, the router starts, `systemctl reload` (SIGHUP) applies a
# route added to the file, SIGTERM (systemd's stop) ends it cleanly.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib/netns.sh"
topo_need_root
trap topo_cleanup EXIT
UNIT="$ROOT/deploy/router.service"

command -v systemd-analyze >/dev/null || { echo "SKIP: systemd-analyze missing"; exit 77; }
sed "s|/usr/local/bin/router|$ROUTER_BIN|g" "$UNIT" >"$TOPO_DIR/router.service"
systemd-analyze verify "$TOPO_DIR/router.service" || die "systemd-analyze verify failed"
log "unit verified"

topo_ipv4
# A unit's command line, as systemd expands it for this config.
unit_cmd() {
	sed -n "s|^$1=||p" "$TOPO_DIR/router.service" | head -1 |
		sed "s|\${ROUTER_CONFIG}|$TOPO_DIR/router.toml|g; s|\\\$MAINPID|${ROUTER_PID:-0}|g"
}
pre=$(unit_cmd ExecStartPre)
out=$($pre) || die "preflight failed on a good host: $out"
grep -q "config .*valid" <<<"$out" || die "preflight output: $out"
# A config naming a PCI port that is not there: refused before anything starts.
sed 's|device = "net_af_packet1,iface=r1,qdisc_bypass=1"|device = "0000:7f:1f.7"|' "$TOPO_DIR/router.toml" >"$TOPO_DIR/bad.toml"
if out=$($ROUTER_BIN preflight "$TOPO_DIR/bad.toml" 2>&1); then die "preflight passed a missing PCI port: $out"; fi
grep -q "no PCI device 0000:7f:1f.7" <<<"$out" || die "preflight does not name the missing device: $out"
log "preflight ok"

start=$(unit_cmd ExecStart)
topo_bg "$NS_R" $start >"$TOPO_DIR/router.log" 2>&1
ROUTER_PID=$TOPO_LAST_PID
for _ in $(seq 1 100); do $ROUTERCTL status >/dev/null 2>&1 && break; sleep 0.1; done
$ROUTERCTL status >/dev/null || { cat "$TOPO_DIR/router.log"; die "ExecStart did not start the router"; }
ip netns exec "$NS_C" ping -c 2 -i 0.2 -W 2 10.0.2.2 >/dev/null || die "ping through the router"

ip -n "$NS_S" addr add 10.88.0.1/32 dev lo
printf '[[routes]]\nprefix = "10.88.0.0/16"\nvia = "10.0.2.2"\n' >>"$TOPO_DIR/router.toml"
reload=$(unit_cmd ExecReload)
$reload || die "ExecReload failed"
for _ in $(seq 1 50); do ip netns exec "$NS_C" ping -c 1 -W 1 10.88.0.1 >/dev/null 2>&1 && break; sleep 0.1; done
ip netns exec "$NS_C" ping -c 1 -W 2 10.88.0.1 >/dev/null || die "the route added by systemctl reload does not forward"
log "reload ok"

kill -TERM "$ROUTER_PID"
wait "$ROUTER_PID" || die "router exited non-zero on SIGTERM"
grep -q "stopped" "$TOPO_DIR/router.log" || die "no clean stop in the log"
log "PASS service"
