# Shared helpers for network-namespace topologies (sourced by scripts/demo and tests/smoke/*).
# Everything created here is named with $TOPO_ID and removed by topo_cleanup: only our own
# namespaces and the processes we started (by PID).

TOPO_ID=${TOPO_ID:-rt$$}
TOPO_DIR=${TOPO_DIR:-$(mktemp -d /tmp/router-$TOPO_ID.XXXXXX)}
TOPO_NS=()
TOPO_PIDS=()
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
ROUTER_BIN=${ROUTER_BIN:-$ROOT/target/release/router}
ROUTERCTL_BIN=${ROUTERCTL_BIN:-$ROOT/target/release/routerctl}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

topo_need_root() {
	if [ "$(id -u)" != 0 ]; then
		echo "SKIP: needs root for network namespaces (run as root: sudo $0)"
		exit 77
	fi
	command -v ip >/dev/null || die "iproute2 missing (apt-get install iproute2)"
}

# ns NAME VAR: create namespace $TOPO_ID-NAME with loopback up; store its full name in VAR.
# (Not a $(...) call: the namespace must be recorded in this shell for cleanup.)
topo_ns() {
	local n="$TOPO_ID-$1"
	ip netns add "$n"
	TOPO_NS+=("$n")
	ip -n "$n" link set lo up
	printf -v "$2" '%s' "$n"
}

# Offloads off so frames crossing af_packet carry real checksums and are never GSO-sized.
topo_no_offload() {
	local ns=$1 ifc=$2
	ip netns exec "$ns" ethtool -K "$ifc" rx off tx off tso off gso off gro off >/dev/null 2>&1 || true
}

# veth NS1 IF1 NS2 IF2: a veth pair between two namespaces, up, offloads off, no IPv6 chatter.
topo_veth() {
	local ns1=$1 if1=$2 ns2=$3 if2=$4
	ip link add "$if1" netns "$ns1" type veth peer name "$if2" netns "$ns2"
	for side in "$ns1 $if1" "$ns2 $if2"; do
		set -- $side
		ip netns exec "$1" sysctl -qw "net.ipv6.conf.$2.disable_ipv6=1" || true
		ip -n "$1" link set "$2" up
		topo_no_offload "$1" "$2"
	done
}

# bg NS CMD...: run CMD in namespace NS in the background, remember its PID (in TOPO_LAST_PID).
topo_bg() {
	local ns=$1; shift
	ip netns exec "$ns" "$@" &
	TOPO_LAST_PID=$!
	TOPO_PIDS+=("$TOPO_LAST_PID")
}

# start_router NS CONFIG: start the router in NS and wait until its admin socket answers.
topo_start_router() {
	local ns=$1 cfg=$2 sock
	sock=$(sed -n 's/^socket *= *"\(.*\)"/\1/p' "$cfg" | head -1)
	topo_bg "$ns" "$ROUTER_BIN" run --config "$cfg" >"$TOPO_DIR/router.log" 2>&1
	ROUTER_PID=$TOPO_LAST_PID
	for _ in $(seq 1 100); do
		if "$ROUTERCTL_BIN" -s "$sock" status >/dev/null 2>&1; then
			return 0
		fi
		kill -0 "$ROUTER_PID" 2>/dev/null || { cat "$TOPO_DIR/router.log" >&2; die "router exited during start-up"; }
		sleep 0.1
	done
	cat "$TOPO_DIR/router.log" >&2
	die "router did not open $sock"
}

topo_cleanup() {
	local p
	for p in "${TOPO_PIDS[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in "${TOPO_PIDS[@]}"; do
		for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	for n in "${TOPO_NS[@]}"; do
		ip netns del "$n" 2>/dev/null || true
	done
	[ -n "${TOPO_KEEP_DIR:-}" ] || rm -rf "$TOPO_DIR"
}

# The standard three-namespace IPv4 topology used by the demo and the smoke tests:
#   client 10.0.1.2/24 --c0|r0-- router (DPDK af_packet) --r1|s0-- server 10.0.2.2/24
# Writes the router config to $TOPO_DIR/router.toml. Extra TOML may follow in $1.
topo_ipv4() {
	topo_ns client NS_C
	topo_ns router NS_R
	topo_ns server NS_S
	topo_veth "$NS_C" c0 "$NS_R" r0
	topo_veth "$NS_R" r1 "$NS_S" s0
	ip -n "$NS_C" addr add 10.0.1.2/24 dev c0
	ip -n "$NS_C" route add default via 10.0.1.1
	ip -n "$NS_S" addr add 10.0.2.2/24 dev s0
	ip -n "$NS_S" route add default via 10.0.2.1
	cat >"$TOPO_DIR/router.toml" <<TOML
[eal]
args = ["--no-pci", "--no-huge", "-m", "256", "--file-prefix", "$TOPO_ID", "-l", "0"]
[dataplane]
workers = [${ROUTER_WORKER_CPU:-1}]
idle_sleep_max_us = 200
[mempool]
mbufs = 4095
[[ports]]
name = "client"
device = "net_af_packet0,iface=r0,qdisc_bypass=1"
addresses = ["10.0.1.1/24"]
[[ports]]
name = "server"
device = "net_af_packet1,iface=r1,qdisc_bypass=1"
addresses = ["10.0.2.1/24"]
[admin]
socket = "$TOPO_DIR/admin.sock"
${1:-}
TOML
	ROUTERCTL="$ROUTERCTL_BIN -s $TOPO_DIR/admin.sock"
}
