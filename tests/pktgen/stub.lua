-- Runs a pktgen script against a stub `pktgen` table that records every call, with the
-- environment locked to what pktgen 23.06 offers unmodified: its documented Lua API
-- (pktgen.set, start, delay, portStats, stop, screen, quit) and the Lua standard library.
-- Any other global (printf, prints, pktgen.pcap, ...) fails the run, as it would on a pktgen
-- started outside its source folder. The script must end by calling pktgen.quit, with the
-- traffic stopped.
--
--   lua5.3 tests/pktgen/stub.lua SCRIPT [fail-stats]
-- fail-stats: portStats answers nothing, as with a single port; the script must still stop
-- and quit.

local script, mode = arg[1], arg[2]
local calls, now, sending, quit = {}, 0, false, {}
local function record(name, ...)
	calls[#calls + 1] = { name = name, args = { ... } }
end
local function stats()
	-- 10 Mpps offered while sending, 99 % delivered.
	return { opackets = now * 10000, ipackets = math.floor(now * 9900) }
end

local api = {
	set = function(port, what, value)
		assert(type(port) == "string" and type(what) == "string" and value ~= nil, "pktgen.set(port, what, value)")
		record("set", port, what, value)
	end,
	start = function(ports) record("start", ports); sending = true end,
	stop = function(ports) record("stop", ports); sending = false end,
	delay = function(ms)
		assert(type(ms) == "number", "pktgen.delay(ms)")
		record("delay", ms)
		if sending then now = now + ms end
	end,
	portStats = function(ports, kind)
		assert(kind == "port" or kind == "rate", "pktgen.portStats(ports, 'port'|'rate')")
		record("portStats", ports, kind)
		if mode == "fail-stats" then return { n = 0 } end
		return { [0] = stats(), [1] = stats(), n = 2 }
	end,
	screen = function(state) record("screen", state) end,
	quit = function() record("quit"); error(quit) end,
}
local pktgen = setmetatable({}, {
	__index = function(_, k)
		if api[k] == nil then error("pktgen." .. tostring(k) .. " is not in pktgen's documented Lua API", 2) end
		return api[k]
	end,
	__newindex = function(_, k) error("a script may not add pktgen." .. tostring(k), 2) end,
})

-- The standard library as lua5.3 opens it, and pktgen.
local allowed = {
	"assert", "collectgarbage", "error", "getmetatable", "ipairs", "next", "pairs", "pcall",
	"rawequal", "rawget", "rawlen", "rawset", "select", "setmetatable", "tonumber",
	"tostring", "type", "xpcall", "_VERSION", "string", "table", "math", "os", "io", "utf8",
	"coroutine",
}
local env = { pktgen = pktgen }
for _, k in ipairs(allowed) do env[k] = _G[k] end
setmetatable(env, {
	__index = function(_, k) error("global " .. tostring(k) .. " is not defined in pktgen 23.06 outside its source folder", 2) end,
	__newindex = function(_, k) error("the script sets global " .. tostring(k) .. " (use local)", 2) end,
})

local chunk = assert(loadfile(script, "t", env))
local ok, err = pcall(chunk)
if err ~= quit then
	io.stderr:write(string.format("FAIL %s: %s\n", script, ok and "ended without pktgen.quit()" or tostring(err)))
	os.exit(1)
end

local names = {}
for i, c in ipairs(calls) do names[i] = c.name end
local seq = table.concat(names, " ")
local function fail(why)
	io.stderr:write(string.format("FAIL %s: %s\ncalls: %s\n", script, why, seq))
	os.exit(1)
end
if names[#names] ~= "quit" then fail("pktgen.quit is not the last call") end
if sending then fail("traffic still running at quit") end
local first_screen = seq:find("screen")
if mode ~= "fail-stats" then
	if not seq:find("start") then fail("never started the traffic") end
	if not first_screen or first_screen > seq:find("start") then fail("the live screen is on while it prints") end
	local delays = 0
	for _, c in ipairs(calls) do if c.name == "delay" then delays = delays + 1 end end
	if delays < 2 then fail("no measurement interval") end
end
io.write(string.format("ok %s (%d calls)\n", script, #calls))
