"""Scrape the router's metrics endpoint and check it with the Prometheus project's own
OpenMetrics parser (Debian's python3-prometheus-client), strict: a malformed line, a family
written twice, a counter without _total, a missing # EOF all fail the parse.

Usage: metrics_check.py URL STATS_JSON [SHOW]
STATS_JSON is `routerctl stats --json`, taken just before: every counter scraped after it must
be at least as large, and the ports, cores and stages it lists must all be there. SHOW, a
regular expression, prints the sample lines it matches.
"""

import json
import re
import sys
import urllib.error
import urllib.request

from prometheus_client.openmetrics import parser

url, stats_path = sys.argv[1], sys.argv[2]
stats = json.load(open(stats_path))

with urllib.request.urlopen(url, timeout=10) as r:
    ctype = r.headers.get("Content-Type", "")
    text = r.read().decode()
assert ctype.startswith("application/openmetrics-text"), ctype
if len(sys.argv) > 3:
    for line in text.splitlines():
        if re.search(sys.argv[3], line):
            print(line)
families = {f.name: f for f in parser.text_string_to_metric_families(text)}


def samples(name):
    f = families.get(name)
    assert f is not None, f"family {name} missing; have {sorted(families)[:20]}..."
    return f.samples


def value(name, **labels):
    for s in samples(name):
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"{name} has no sample {labels}: {samples(name)}")


assert families["router_port_rx_packets"].type == "counter"
for p in stats["ports"]:
    rx = value("router_port_rx_packets", port=p["name"], device=p["device"])
    tx = value("router_port_tx_packets", port=p["name"])
    assert rx >= p["rx"] > 0 and tx >= p["tx"] > 0, (p, rx, tx)
    assert value("router_port_driver_ipackets", port=p["name"]) >= p["driver"]["ipackets"]
for c in stats["cores"]:
    core = str(c["core"])
    assert value("router_core_polls", core=core, role=c["role"]) >= c["polls"]
    for st in c["stages"]:
        assert value("router_stage_packets", core=core, stage=st["name"]) >= st["packets"]
        for reason, n in st["drops"]:
            assert value("router_stage_drops", core=core, stage=st["name"], reason=reason) >= n
assert value("router_mgmt_arp_learned") >= stats["mgmt"]["arp_learned"] >= 2
assert value("router_mgmt_punts", reason="arp") >= 1
assert value("router_fib_routes") == stats["fib"]["routes"]
assert value("router_uptime_seconds") >= stats["uptime_secs"]

# Anything but GET /metrics is refused with a status, not a hang.
for path, code in (("/", 404), ("/metrics/x", 404)):
    try:
        urllib.request.urlopen(url.rsplit("/", 1)[0] + path, timeout=10)
        raise AssertionError(f"{path} answered 200")
    except urllib.error.HTTPError as e:
        assert e.code == code, (path, e.code)
print(f"metrics ok: {len(families)} families, {sum(len(f.samples) for f in families.values())} samples")
