-- pktgen-dpdk 23.x: replay a workload pcap on port 0 at a given rate, report TX/RX rates of
-- both ports once a second, then stop.
--
--   pktgen EAL-ARGS -- -P -m "1.[0-1]" -s 0:target/bench/ipv4-udp64.pcap -f scripts/pktgen/replay.lua
--
-- Environment: RATE (percent of line rate, default 100), SECONDS (default 10).
-- Port 0 sends into the router; port 1 receives what the router forwards.

local rate = tonumber(os.getenv("RATE") or "100")
local seconds = tonumber(os.getenv("SECONDS") or "10")

pktgen.set("0", "rate", rate)
pktgen.set("0", "count", 0)          -- send forever, until stopped
pktgen.pcap("0", "on")               -- replay the -s file instead of the single-packet template
pktgen.clear("all")

local function totals()
	local s = pktgen.portStats("all", "port")
	return s[0].opackets, s[1].ipackets
end

pktgen.start("0")
local tx0, rx0 = totals()
for i = 1, seconds do
	pktgen.delay(1000)
	local tx1, rx1 = totals()
	printf("t=%2ds  port0 TX %10.3f Mpps   port1 RX %10.3f Mpps   delivered %6.2f%%\n",
		i, (tx1 - tx0) / 1e6, (rx1 - rx0) / 1e6,
		(tx1 > tx0) and (100.0 * (rx1 - rx0) / (tx1 - tx0)) or 0.0)
	tx0, rx0 = tx1, rx1
end
pktgen.stop("0")
pktgen.delay(500)
local tx, rx = totals()
printf("total: sent %d, received %d (%.2f%%)\n", tx, rx, tx > 0 and 100.0 * rx / tx or 0.0)
pktgen.quit()
