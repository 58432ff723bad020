#!/usr/bin/env bash
# The pktgen scripts as pktgen 23.06 runs them unmodified: Lua 5.3 syntax (luac -p), then a run
# of each against tests/pktgen/stub.lua (a stub pktgen that records the calls and refuses any
# global outside pktgen's documented API and the standard library), with stats and without;
# and the stub itself must refuse what such a pktgen lacks.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v luac5.3 >/dev/null || { echo "SKIP: lua5.3 missing (scripts/deps installs it)"; exit 77; }
for f in scripts/pktgen/*.lua; do
	luac5.3 -p "$f"
	DURATION=3 lua5.3 tests/pktgen/stub.lua "$f" >/dev/null
	lua5.3 tests/pktgen/stub.lua "$f" fail-stats >/dev/null
	echo "ok $f"
done
bad=$(mktemp --suffix=.lua)
trap 'rm -f "$bad"' EXIT
for body in 'printf("x\n"); pktgen.quit()' 'pktgen.pcap("0", "on"); pktgen.quit()' \
	'pktgen.start("0"); pktgen.quit()' 'pktgen.screen("off"); pktgen.start("0"); pktgen.stop("0")'; do
	printf '%s\n' "$body" >"$bad"
	if lua5.3 tests/pktgen/stub.lua "$bad" 2>/dev/null; then
		echo "the stub accepted: $body" >&2
		exit 1
	fi
done
echo "pktgen scripts ok"
