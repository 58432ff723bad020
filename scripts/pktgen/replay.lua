-- pktgen-dpdk 23.06: replay the workload pcap given with `-s 0:FILE` on port 0 at RATE percent
-- of line rate for DURATION seconds, print port 0's TX and port 1's RX rates once a second and
-- the delivered fraction, then stop the traffic and quit pktgen: it ends by itself, on an error
-- too.
--
--   RATE=100 DURATION=20 pktgen EAL-ARGS -- -P -m "1.[0-1]" -s 0:ipv4-udp64.pcap -f replay.lua
--
-- Only pktgen's documented Lua API (pktgen.set, .start, .delay, .portStats, .stop, .screen,
-- .quit) and the Lua standard library (io.write for output): no `printf` or other helper of
-- pktgen's own Lua modules, which resolve only when pktgen runs from its source folder.
-- (DURATION, not SECONDS: bash's SECONDS is the shell's own clock.)

local rate = tonumber(os.getenv("RATE") or "") or 100
local duration = tonumber(os.getenv("DURATION") or "") or 10

local function say(fmt, ...)
	io.write(string.format(fmt, ...))
	io.flush()
end

-- Port 0's packets sent and port 1's received so far.
local function totals()
	local s = pktgen.portStats("all", "port")
	if s == nil or s[0] == nil or s[1] == nil then
		error("pktgen.portStats: no stats for ports 0 and 1 (two ports are needed)")
	end
	return s[0].opackets, s[1].ipackets
end

local function run()
	-- The live screen would paint over these lines.
	pktgen.screen("off")
	pktgen.set("0", "rate", rate)
	pktgen.set("0", "count", 0) -- until stopped
	say("replay.lua: port 0 at %d%% of line rate for %d s\n", rate, duration)
	local tx0, rx0 = totals()
	local first_tx, first_rx = tx0, rx0
	pktgen.start("0")
	for i = 1, duration do
		pktgen.delay(1000)
		local tx1, rx1 = totals()
		local sent, got = tx1 - tx0, rx1 - rx0
		say("t=%3ds  port0 TX %10.3f Mpps   port1 RX %10.3f Mpps   delivered %6.2f%%\n",
			i, sent / 1e6, got / 1e6, sent > 0 and 100.0 * got / sent or 0.0)
		tx0, rx0 = tx1, rx1
	end
	pktgen.stop("0")
	pktgen.delay(500) -- what is in flight arrives
	local tx, rx = totals()
	local sent, got = tx - first_tx, rx - first_rx
	say("total: sent %d, received %d (%.2f%%)\n", sent, got, sent > 0 and 100.0 * got / sent or 0.0)
end

local ok, err = pcall(run)
if not ok then
	say("replay.lua: %s\n", tostring(err))
end
pktgen.stop("0")
pktgen.quit()
