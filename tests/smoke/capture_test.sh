#!/usr/bin/env bash
# Packet capture of a running router with DPDK's own dpdk-dumpcap (pdump): the router on
# hugepages (a --no-huge primary's memory is private to it, so no capture tool can attach),
# dumpcap attached as a secondary process, a ping captured with a BPF filter, the pcapng
# checked with tshark: the echo requests and replies, both directions of the port; the
# router's own counters unchanged in meaning, and it carries on after dumpcap detaches.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib/netns.sh"
topo_need_root
command -v dpdk-dumpcap >/dev/null || { echo "SKIP: dpdk-dumpcap missing (apt-get install dpdk-dev)"; exit 77; }
command -v tshark >/dev/null || { echo "SKIP: tshark missing (scripts/deps installs it)"; exit 77; }

# Hugepages for this test only: what was reserved is restored, the mount removed.
HP=/proc/sys/vm/nr_hugepages
HP_WAS=$(cat "$HP")
[ "$HP_WAS" -ge 128 ] || echo 128 >"$HP"
[ "$(cat "$HP")" -ge 128 ] || { echo 0 >"$HP"; echo "SKIP: could not reserve 128 hugepages"; exit 77; }
HUGE=$(mktemp -d /tmp/router-huge.XXXXXX)
cleanup() {
	topo_cleanup
	umount "$HUGE" 2>/dev/null || true
	rmdir "$HUGE" 2>/dev/null || true
	echo "$HP_WAS" >"$HP"
}
trap cleanup EXIT
mount -t hugetlbfs -o pagesize=2M nodev "$HUGE"
topo_ipv4
sed -i "s|\"--no-huge\", \"-m\", \"256\"|\"--huge-dir\", \"$HUGE\", \"-m\", \"128\"|" "$TOPO_DIR/router.toml"
sed -i 's/^idle_sleep_max_us = \(.*\)/idle_sleep_max_us = \1\ncapture = true/' "$TOPO_DIR/router.toml"
grep -q "^capture = true" "$TOPO_DIR/router.toml" || die "could not turn capture on"
grep -q -- "--huge-dir" "$TOPO_DIR/router.toml" || die "could not put the router on hugepages"
topo_start_router "$NS_R" "$TOPO_DIR/router.toml"
ip netns exec "$NS_C" ping -c 1 -W 2 10.0.2.2 >/dev/null || die "ping through the router"

# Port 0 (the client side), ICMP only, until 7 packets: the port unreachable for the UDP
# datagram below, 3 echo requests in, 3 replies out.
PCAP="$TOPO_DIR/ping.pcapng"
topo_bg "$NS_R" dpdk-dumpcap --file-prefix="$TOPO_ID" -i 0 -f icmp -c 7 -w "$PCAP" >"$TOPO_DIR/dumpcap.log" 2>&1
DUMPCAP=$TOPO_LAST_PID
for _ in $(seq 1 100); do grep -q "Packets captured" "$TOPO_DIR/dumpcap.log" && break; sleep 0.1; done
grep -q "Packets captured" "$TOPO_DIR/dumpcap.log" || { cat "$TOPO_DIR/dumpcap.log"; die "dumpcap did not attach"; }
# Other traffic on the port meanwhile: the filter leaves it out.
ip netns exec "$NS_C" bash -c 'echo hi >/dev/udp/10.0.2.2/9' || true
ip netns exec "$NS_C" ping -c 3 -i 0.2 -W 2 10.0.2.2 >/dev/null || die "ping during the capture"
for _ in $(seq 1 50); do kill -0 "$DUMPCAP" 2>/dev/null || break; sleep 0.1; done
kill -0 "$DUMPCAP" 2>/dev/null && { cat "$TOPO_DIR/dumpcap.log"; die "dumpcap did not stop after 7 packets"; }
wait "$DUMPCAP" || { cat "$TOPO_DIR/dumpcap.log"; die "dumpcap failed"; }

out=$(tshark -r "$PCAP" -T fields -e icmp.type -e ip.src -e ip.dst 2>/dev/null)
log "captured: $(tr '\n' ';' <<<"$out")"
[ "$(grep -c '^8	10.0.1.2	10.0.2.2$' <<<"$out")" = 3 ] || die "3 echo requests expected: $out"
[ "$(grep -c '^0	10.0.2.2	10.0.1.2$' <<<"$out")" = 3 ] || die "3 echo replies expected: $out"
tshark -r "$PCAP" -Y 'udp && !icmp' 2>/dev/null | grep -q . && die "the BPF filter let UDP through"
capinfos -t "$PCAP" 2>/dev/null | grep -q pcapng || die "not a pcapng file"

# The router is unaffected once dumpcap is gone.
ip netns exec "$NS_C" ping -c 2 -i 0.2 -W 2 10.0.2.2 >/dev/null || die "ping after the capture"
kill -TERM "$ROUTER_PID"
wait "$ROUTER_PID" || die "router exited non-zero on SIGTERM"
log "PASS capture"
