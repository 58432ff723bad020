#!/usr/bin/env bash
# Replication (Mirage: a backup shadows a primary), end to end with two unmodified nfs-ganesha
# servers: beta is the backup of alpha's export (`backup_of = "alpha"`), so the virtual root
# lists alpha alone. A client (pyNfsClient, over TCP and over UDP) makes every kind of change
# under alpha (MKDIR, CREATE, WRITE — a 2 MiB file over TCP, rewritten in the middle —,
# SETATTR of mode and size, SYMLINK, RENAME, LINK, REMOVE, RMDIR); the router logs each change
# the primary answered and applies it to the backup in the primary's order: once the log is
# drained, beta's tree is identical to alpha's on disk (names, types, sizes, modes, bytes,
# link targets). Then the backup is killed: the client goes on (served by the primary alone),
# the log grows; the backup is started again and catches up from the log: identical again.
# Then the backup is killed again, changes made, and the router SIGKILLed and restarted: the
# journal on its disk keeps the changes the backup had not applied; the backup comes back and
# catches up: identical. Last, failover: the primary is SIGKILLed under a TCP and a UDP
# workload; the router fails over to the backup and neither client sees an error; the files
# on the backup's disk are what the clients wrote; the old primary is started again and gets
# the changes made without it: identical.
#
# The topology is topo_nfs in scripts/lib/netns.sh.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib/netns.sh"
topo_need_root
topo_need_nfs
trap topo_cleanup EXIT
CLIENT_PY="$(cd "$(dirname "$0")" && pwd)/nfs_replica_client.py"

# The lines after topo_nfs's beta entry are beta's.
topo_nfs "backup_of = \"alpha\""
# Both exports start with the same contents: files a client changes later, whose copies on the
# backup the router finds by name.
for s in alpha beta; do
	mkdir -p "$TOPO_DIR/$s/export/pre/deeper"
	printf 'there before the router\n' >"$TOPO_DIR/$s/export/pre/deeper/data.txt"
done
"$ROUTER_BIN" check-config "$TOPO_DIR/router.toml" >/dev/null
topo_start_router "$NS_R" "$TOPO_DIR/router.toml"
topo_nfs_wait_mounted 2
log "router up: alpha replicated to beta"
for k in wmem rmem; do ip netns exec "$NS_C" sysctl -qw "net.ipv4.tcp_$k=4096 4194304 8388608"; done

client() { ip netns exec "$NS_C" python3 "$CLIENT_PY" "$@"; }
repl() { $ROUTERCTL nfs replication --json; }
# wait_drained SECONDS: until the backup has answered every logged change.
wait_drained() {
	for _ in $(seq 1 $(($1 * 10))); do
		repl | python3 -c '
import json, sys
r = json.load(sys.stdin)[0]
sys.exit(0 if r["log"]["depth"] == 0 and r["log"]["acked"] == r["log"]["logged"] and r["backup"]["ready"] else 1)' && return 0
		sleep 0.1
	done
	$ROUTERCTL nfs replication >&2
	die "the log did not drain to the backup"
}
# same_trees: alpha's and beta's exports identical on disk.
same_trees() {
	python3 - "$TOPO_DIR/alpha/export" "$TOPO_DIR/beta/export" <<'PY'
import os, stat, sys
a, b = sys.argv[1], sys.argv[2]
def tree(top):
    out = {}
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, top)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, st.st_nlink, f.read())
    return out
ta, tb = tree(a), tree(b)
diff = sorted(k for k in set(ta) | set(tb) if ta.get(k) != tb.get(k))
if diff:
    for k in diff[:10]:
        sa, sb = ta.get(k), tb.get(k)
        print(f"  {k}: alpha {sa[:4] if sa else None} beta {sb[:4] if sb else None}", file=sys.stderr)
    sys.exit(f"{len(diff)} of {len(ta)} entries differ")
print(f"{len(ta)} entries, {sum(v[2] for v in ta.values() if v[0] == 'file')} bytes: identical")
PY
}

out=$(client tcp 10.0.1.1 root) || die "root: $out"
[ "$(tail -1 <<<"$out")" = '{"root": [".", "..", "alpha"]}' ] || die "the virtual root lists the backup: $out"
t0=$(date +%s.%N)
out=$(client tcp 10.0.1.1 work t1 $((2 << 20))) || die "work over TCP: $out"
log "tcp: $(tail -1 <<<"$out")"
out=$(client udp 10.0.1.1 work u1 100000) || die "work over UDP: $out"
log "udp: $(tail -1 <<<"$out")"
wait_drained 30
log "log drained to the backup in $(python3 -c "import time; print(round(time.time() - $t0, 1))") s from the first change"
same_trees || die "the backup differs from the primary"
$ROUTERCTL nfs replication

# The backup's copies of files it already had are found by name (LOOKUPs along the path).
out=$(client tcp 10.0.1.1 pre) || die "pre: $out"
wait_drained 30
same_trees || die "the backup differs from the primary (files there before)"

# The backup down for a while: the primary serves alone, the log grows; back: caught up.
bpid=$(cat "$TOPO_DIR/beta/ganesha.pid")
kill -KILL "$bpid"
log "backup killed"
out=$(client tcp 10.0.1.1 work t2 $((1 << 20))) || die "work over TCP with the backup down: $out"
out=$(client udp 10.0.1.1 work u2 50000) || die "work over UDP with the backup down: $out"
depth=$(repl | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["log"]["depth"])')
[ "$depth" -gt 10 ] || die "the log holds $depth entries with the backup down"
log "with the backup down: the client was served, $depth changes wait in the log"
mv "$TOPO_DIR/beta/ganesha.log" "$TOPO_DIR/beta/ganesha.log.1"
topo_ganesha "$NS_B" beta 10.0.3.2 12
topo_ganesha_wait beta
t0=$(date +%s.%N)
wait_drained 60
log "backup restarted: caught up from the log in $(python3 -c "import time; print(round(time.time() - $t0, 1))") s"
same_trees || die "the backup differs from the primary after catching up"

# The router restarted while changes wait for the backup: the journal keeps them.
before=$(repl)
bpid=$(cat "$TOPO_DIR/beta/ganesha.pid")
kill -KILL "$bpid"
out=$(client tcp 10.0.1.1 work t3 $((1 << 20))) || die "work before the router restart: $out"
kill -KILL "$ROUTER_PID"
wait "$ROUTER_PID" 2>/dev/null || true
topo_start_router "$NS_R" "$TOPO_DIR/router.toml"
topo_nfs_wait_mounted 1
python3 - "$(repl)" <<'PY' || die "the journal after the restart"
import json, sys
r = json.loads(sys.argv[1])[0]
assert r["journal"]["loaded"] > 0 and r["log"]["depth"] > 10, r
print(f"router restarted: {r['journal']['loaded']} journal records loaded, {r['log']['depth']} changes wait for the backup")
PY
out=$(client udp 10.0.1.1 work u3 50000) || die "work after the router restart: $out"
mv "$TOPO_DIR/beta/ganesha.log" "$TOPO_DIR/beta/ganesha.log.2"
topo_ganesha "$NS_B" beta 10.0.3.2 12
topo_ganesha_wait beta
wait_drained 60
same_trees || die "the backup differs from the primary after the router restart"
log "after a router SIGKILL + restart and the backup's return: identical"

# Failover: the primary killed under a workload (TCP and UDP clients at once): the router
# stops getting answers to its probes, fails over to the backup (which has every change), and
# the clients carry on with the handles they hold; no call fails. Then the old primary comes
# back: it gets the changes made meanwhile from the log (roles do not switch back).
client tcp 10.0.1.1 loop ft 8 300000 >"$TOPO_DIR/loop-tcp.out" 2>&1 &
LT=$!
TOPO_PIDS+=("$LT")
client udp 10.0.1.1 loop fu 8 20000 >"$TOPO_DIR/loop-udp.out" 2>&1 &
LU=$!
TOPO_PIDS+=("$LU")
sleep 2
apid=$(cat "$TOPO_DIR/alpha/ganesha.pid")
kill -KILL "$apid"
log "primary killed under the workload"
wait "$LT" || { cat "$TOPO_DIR/loop-tcp.out" >&2; $ROUTERCTL nfs replication >&2 || true; die "the TCP client failed across the failover"; }
wait "$LU" || { cat "$TOPO_DIR/loop-udp.out" >&2; die "the UDP client failed across the failover"; }
$ROUTERCTL nfs replication
python3 - "$(repl)" "$(tail -1 "$TOPO_DIR/loop-tcp.out")" "$(tail -1 "$TOPO_DIR/loop-udp.out")" "$TOPO_DIR/beta/export" <<'PY' || die "failover checks"
import json, os, sys
r = json.loads(sys.argv[1])[0]
assert r["failovers"] == 1 and r["active"] == "beta", r
top = sys.argv[4]
def content(name, n):
    seed = f"{name}:"
    return (seed * (n // len(seed) + 1))[:n]
for run in (json.loads(sys.argv[2]), json.loads(sys.argv[3])):
    for name, (seed, size) in run["files"].items():
        data = content(seed, size)
        head = content(f"{seed}-head", min(100, size))
        with open(os.path.join(top, run["tag"], name), "rb") as f:
            assert f.read() == (head + data[len(head):]).encode(), f"{run['tag']}/{name} on the backup's disk"
    print(f"{run['tag']}: {len(run['files'])} files written and read back, every one byte-identical on the "
          f"backup's disk; the longest step took {run['max_step_s']} s")
print(f"failover {r['failover_ms']} ms after the first unanswered probe")
PY
mv "$TOPO_DIR/alpha/ganesha.log" "$TOPO_DIR/alpha/ganesha.log.1"
topo_ganesha "$NS_S" alpha 10.0.2.2 11
topo_ganesha_wait alpha
wait_drained 60
same_trees || die "the old primary differs after it came back"
log "the old primary came back and got the changes made without it: identical"
$ROUTERCTL nfs replication
python3 - "$(repl)" "$before" <<'PY' || die "replication counters"
import json, sys
r = json.loads(sys.argv[1])[0]
assert r["conflicts"] == 0 and r["unresolved"] == 0 and r["overflow"] == 0, r
b = json.loads(sys.argv[2])[0]  # before the backup was killed the second time
# Since the restart (its counters start at 0): every change the backup had not applied before
# it — kept in the journal — and every one after.
assert r["applied"] == r["log"]["logged"] - b["log"]["logged"] and r["log"]["acked"] == r["log"]["logged"], (r, b)
assert b["resolved"] >= 2, b  # the files that were there before: found on the backup by name
l = r["log"]
print(f"before the restart: logged {b['logged']} changes, applied {b['applied']}, {b['resolved']} backup handles "
      f"found by name, max depth {b['log']['depth_max']}, max lag {b['log']['lag_ms_max']} ms; after it: "
      f"{r['applied']} applied from the journal and since, max depth {l['depth_max']}")
PY
log "PASS"
