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

# start_router NS CONFIG [LOG]: start the router in NS and wait until its admin socket answers
# (its output goes to LOG, default $TOPO_DIR/router.log; its PID is in ROUTER_PID).
topo_start_router() {
	local ns=$1 cfg=$2 log=${3:-$TOPO_DIR/router.log} sock
	sock=$(sed -n 's/^socket *= *"\(.*\)"/\1/p' "$cfg" | head -1)
	topo_bg "$ns" "$ROUTER_BIN" run --config "$cfg" >"$log" 2>&1
	ROUTER_PID=$TOPO_LAST_PID
	for _ in $(seq 1 100); do
		if "$ROUTERCTL_BIN" -s "$sock" status >/dev/null 2>&1; then
			return 0
		fi
		kill -0 "$ROUTER_PID" 2>/dev/null || { cat "$log" >&2; die "router exited during start-up"; }
		sleep 0.1
	done
	cat "$log" >&2
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
	# rpcbind leaves its socket file behind when it is stopped.
	[ -z "${TOPO_RPCBIND:-}" ] || rpcbind_alive || rm -f /run/rpcbind.sock
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
	topo_router_toml "$TOPO_ID" "$TOPO_DIR/admin.sock" "client r0 10.0.1.1/24" "server r1 10.0.2.1/24" \
		>"$TOPO_DIR/router.toml"
	printf '%s\n' "${1:-}" >>"$TOPO_DIR/router.toml"
	ROUTERCTL="$ROUTERCTL_BIN -s $TOPO_DIR/admin.sock"
}

# topo_router_toml EAL_PREFIX SOCKET PORT...: print a router config for namespace tests (DPDK
# af_packet ports, no hugepages, one worker); each PORT is "name iface address/len".
topo_router_toml() {
	local prefix=$1 sock=$2 i=0 port
	shift 2
	cat <<TOML
[eal]
args = ["--no-pci", "--no-huge", "-m", "256", "--file-prefix", "$prefix", "-l", "0"]
[dataplane]
workers = [${ROUTER_WORKER_CPU:-1}]
idle_sleep_max_us = 200
[mempool]
mbufs = 4095
[admin]
socket = "$sock"
TOML
	for port in "$@"; do
		set -- $port
		printf '[[ports]]\nname = "%s"\ndevice = "net_af_packet%d,iface=%s,qdisc_bypass=1"\naddresses = ["%s"]\n' "$1" "$i" "$2" "$3"
		i=$((i + 1))
	done
}

# Does an rpcbind accept connections on its Unix socket?
rpcbind_alive() {
	python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' \
		/run/rpcbind.sock 2>/dev/null
}

# ganesha NS NAME ADDR EXPORT_ID: an nfs-ganesha NFSv3 server (VFS FSAL, UDP on) in NS, exporting
# $TOPO_DIR/NAME/export. topo_ganesha_wait NAME waits until it serves.
topo_ganesha() {
	local ns=$1 name=$2 addr=$3 id=$4 dir="$TOPO_DIR/$2" udp=true transports="UDP, TCP"
	# A fifth argument "tcp-only": the server has no UDP at all.
	if [ "${5:-}" = tcp-only ]; then udp=false transports=TCP; fi
	mkdir -p "$dir/export"
	cat >"$dir/ganesha.conf" <<CONF
NFS_CORE_PARAM {
	NFS_Port = 2049; MNT_Port = 20048; NFS_Protocols = 3;
	Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = $udp; Bind_addr = $addr;
	# ganesha's FSINFO offers 1 MiB writes, but its default receive buffer (1 MiB) cannot
	# hold a 1 MiB WRITE's record (data + RPC header): give it room.
	MaxRPCRecvBufferSize = 2097152;
}
NFSV4 { Graceless = true; }
EXPORT {
	Export_Id = $id; Path = $dir/export; Pseudo = /$name; Protocols = 3; Transports = $transports;
	Access_Type = RW; Squash = No_Root_Squash; SecType = sys; FSAL { Name = VFS; }
}
CONF
	# ganesha registers with rpcbind at start-up only; one rpcbind (reached through its Unix
	# socket from any namespace) serves all. Reuse one that answers; a socket file nobody
	# listens on (left by an rpcbind that was killed, or by the package's install) is removed.
	if ! rpcbind_alive; then
		rm -f /run/rpcbind.sock
		topo_bg "$ns" rpcbind -f
		TOPO_RPCBIND=1
		for _ in $(seq 1 50); do rpcbind_alive && break; sleep 0.1; done
		rpcbind_alive || die "rpcbind did not start"
	fi
	topo_bg "$ns" ganesha.nfsd -F -f "$dir/ganesha.conf" -L "$dir/ganesha.log" -p "$dir/ganesha.pid"
}
topo_ganesha_wait() {
	local log="$TOPO_DIR/$1/ganesha.log"
	for _ in $(seq 1 150); do
		grep -q "NFS SERVER INITIALIZED" "$log" 2>/dev/null && return 0
		sleep 0.1
	done
	tail -20 "$log" >&2 || true
	die "ganesha $1 did not start"
}

# A second server namespace "beta" (10.0.3.2/24 behind the router's 10.0.3.1 on r2): put
# $TOPO_BETA_PORT in the router config given to topo_ipv4, then call topo_beta.
TOPO_BETA_PORT='[[ports]]
name = "beta"
device = "net_af_packet2,iface=r2,qdisc_bypass=1"
addresses = ["10.0.3.1/24"]'
topo_beta() {
	topo_ns beta NS_B
	topo_veth "$NS_R" r2 "$NS_B" b0
	ip -n "$NS_B" addr add 10.0.3.2/24 dev b0
	ip -n "$NS_B" route add default via 10.0.3.1
}

# The NFS topology (extra router TOML may follow in $1): topo_ipv4 (its server namespace is "alpha", 10.0.2.2) plus a second server
# namespace "beta" (10.0.3.2/24 behind the router's 10.0.3.1), an nfs-ganesha server in each,
# and the router's [nfs] section: the virtual server at 10.0.1.1 aggregating both exports.
#   client 10.0.1.2 --c0|r0-- router 10.0.1.1 (virtual server) --r1|s0-- alpha 10.0.2.2
#                                                               --r2|b0-- beta  10.0.3.2
# topo_need_nfs [TOOL...]: skip (exit 77, with the reason) unless nfs-ganesha, rpcbind, the
# extra TOOLs and pyNfsClient (installed by scripts/deps into target/pylib) are here; puts
# target/pylib on PYTHONPATH.
topo_need_nfs() {
	local bin
	for bin in ganesha.nfsd rpcbind "$@"; do
		command -v "$bin" >/dev/null || { echo "SKIP: $bin missing (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind nftables tshark)"; exit 77; }
	done
	export PYTHONPATH="$ROOT/target/pylib${PYTHONPATH:+:$PYTHONPATH}"
	python3 -c 'import pyNfsClient' 2>/dev/null || { echo "SKIP: pyNfsClient missing (scripts/deps installs it into target/pylib)"; exit 77; }
}

topo_nfs() {
	local beta_transport=tcp
	[ -n "${NFS_BETA_TCP_ONLY:-}" ] && beta_transport=tcp-only
	topo_ipv4 "$TOPO_BETA_PORT
[nfs]
virtual_address = \"10.0.1.1\"
handle_secret = \"$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')\"
checkpoint = \"$TOPO_DIR/handles.ckpt\"
checkpoint_secs = ${NFS_CHECKPOINT_SECS:-10}
[[nfs.servers]]
sid = 1
name = \"alpha\"
address = \"10.0.2.2\"
export = \"$TOPO_DIR/alpha/export\"
[[nfs.servers]]
sid = 2
name = \"beta\"
address = \"10.0.3.2\"
export = \"$TOPO_DIR/beta/export\"
transport = \"$beta_transport\"
${1:-}"
	topo_beta
	# NFS_BETA_TCP_ONLY=1: the second server has no UDP.
	topo_ganesha "$NS_S" alpha 10.0.2.2 11
	topo_ganesha "$NS_B" beta 10.0.3.2 12 "${NFS_BETA_TCP_ONLY:+tcp-only}"
	topo_ganesha_wait alpha
	topo_ganesha_wait beta
}

# topo_kill_router_during LOG CMD...: run CMD (a client workload) in the background with its
# output in LOG, SIGKILL the router 3 s in, start it again (same config) a second later, and
# wait for CMD, which must succeed.
topo_kill_router_during() {
	local out=$1 wl
	shift
	"$@" >"$out" 2>&1 &
	wl=$!
	TOPO_PIDS+=("$wl")
	sleep 3
	kill -KILL "$ROUTER_PID"
	wait "$ROUTER_PID" 2>/dev/null || true
	log "router killed (SIGKILL) mid-workload"
	sleep 1
	topo_start_router "$NS_R" "$TOPO_DIR/router.toml"
	log "router restarted"
	wait "$wl" || { cat "$out" >&2; die "the workload failed across the router restart"; }
}

# Wait until the router has mounted every export of its [nfs] section.
topo_nfs_wait_mounted() {
	local want=${1:-2}
	for _ in $(seq 1 100); do
		[ "$($ROUTERCTL nfs stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["servers_mounted"])')" = "$want" ] && return 0
		sleep 0.1
	done
	$ROUTERCTL nfs servers >&2 || true
	die "the router did not mount the exports"
}

# topo_netchain N: NetChain appliances n1..nN (one router each, in its own namespace, one node
# at its port address 10.0.9.I) and a clients namespace (10.0.9.100 and .101, $NS_C) on one
# bridged segment; a shared secret in $TOPO_DIR/secret. Routers n1..nN are started (PIDs in
# NC_PID[I]); topo_netchain_start I starts another one already laid out (up to NC_MAX, default N).
declare -A NC_PID NC_NS
topo_netchain() {
	local n=$1 i ns
	topo_ns clients NS_C
	topo_ns core NS_CORE
	ip -n "$NS_CORE" link add br0 type bridge
	ip -n "$NS_CORE" link set br0 up
	topo_veth "$NS_C" c0 "$NS_CORE" cc
	ip -n "$NS_CORE" link set cc master br0
	ip -n "$NS_C" addr add 10.0.9.100/24 dev c0
	ip -n "$NS_C" addr add 10.0.9.101/24 dev c0
	printf 'netchain-%s\n' "$(od -An -tx8 -N16 /dev/urandom | tr -d ' \n')" >"$TOPO_DIR/secret"
	for i in $(seq 1 "${NC_MAX:-$n}"); do
		topo_ns "n$i" ns
		NC_NS[$i]=$ns
		topo_veth "$ns" "p$i" "$NS_CORE" "b$i"
		ip -n "$NS_CORE" link set "b$i" master br0
		{
			topo_router_toml "$TOPO_ID-n$i" "$TOPO_DIR/n$i.sock" "core p$i 10.0.9.$i/24"
			printf '[chain]\nmax_keys = 4096\nsecret_file = "%s"\n[[chain.nodes]]\naddress = "10.0.9.%s"\n' \
				"$TOPO_DIR/secret" "$i"
		} >"$TOPO_DIR/n$i.toml"
		"$ROUTER_BIN" check-config "$TOPO_DIR/n$i.toml" >/dev/null
	done
	for i in $(seq 1 "$n"); do topo_netchain_start "$i"; done
}

topo_netchain_start() {
	topo_start_router "${NC_NS[$1]}" "$TOPO_DIR/n$1.toml" "$TOPO_DIR/n$1.log"
	NC_PID[$1]=$ROUTER_PID
}

# topo_etcd NS: a single-node etcd in NS on 127.0.0.1:2379, data in $TOPO_DIR/etcd.
topo_etcd() {
	local ns=$1
	command -v etcd >/dev/null || die "etcd missing (apt-get install etcd-server etcd-client)"
	topo_bg "$ns" etcd --name nc --data-dir "$TOPO_DIR/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster nc=http://127.0.0.1:2380 --log-level error >"$TOPO_DIR/etcd.log" 2>&1
	for _ in $(seq 1 100); do
		ip netns exec "$ns" etcdctl --endpoints 127.0.0.1:2379 endpoint health >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	cat "$TOPO_DIR/etcd.log" >&2
	die "etcd did not come up"
}

# topo_netchain_master N [EXTRA]: the chain master config for appliances n1..nN (8 groups, 3
# replicas, etcd) in $TOPO_DIR/master.toml; EXTRA lines are added.
topo_netchain_master() {
	local n=$1 i
	{
		printf 'listen = "10.0.9.100:8891"\nsecret_file = "%s"\nvgroups = 8\nreplicas = 3\n' "$TOPO_DIR/secret"
		printf 'etcd = "127.0.0.1:2379"\nping_ms = 100\nfail_after = 3\n%s\n' "${2:-}"
		for i in $(seq 1 "$n"); do
			printf '[[appliances]]\ncontrol = "10.0.9.%s:8890"\nnodes = ["10.0.9.%s"]\n' "$i" "$i"
		done
	} >"$TOPO_DIR/master.toml"
}

# topo_web TREE: an HTTP origin serving directory TREE (nginx, autoindex on) in its own
# namespace "web" at 10.0.9.2:8080, linked to the router's namespace over a kernel veth (the
# router's host side, 10.0.9.1 on rw: web exports are fetched with the host's own TCP). Its
# config, logs and temp files go in $TOPO_DIR/nginx; its PID is in WEB_PID.
topo_web() {
	local tree=$1 d="$TOPO_DIR/nginx"
	mkdir -p "$d/tmp"
	# Its worker runs as root: $TOPO_DIR is private (mode 0700) to every other user.
	cat >"$d/nginx.conf" <<CONF
user root;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log;
events { worker_connections 256; }
http {
	access_log $d/access.log;
	client_body_temp_path $d/tmp/body;
	proxy_temp_path $d/tmp/proxy;
	fastcgi_temp_path $d/tmp/fastcgi;
	uwsgi_temp_path $d/tmp/uwsgi;
	scgi_temp_path $d/tmp/scgi;
	server {
		listen 10.0.9.2:8080;
		root $tree;
		autoindex on;
	}
}
CONF
	topo_ns web NS_W
	topo_veth "$NS_R" rw "$NS_W" w0
	ip -n "$NS_R" addr add 10.0.9.1/24 dev rw
	ip -n "$NS_W" addr add 10.0.9.2/24 dev w0
	topo_bg "$NS_W" nginx -c "$d/nginx.conf" -g "daemon off;"
	WEB_PID=$TOPO_LAST_PID
	for _ in $(seq 1 50); do
		ip netns exec "$NS_R" python3 -c 'import socket; socket.create_connection(("10.0.9.2", 8080), 1)' 2>/dev/null && return 0
		sleep 0.1
	done
	cat "$d/error.log" >&2 || true
	die "nginx did not start"
}
