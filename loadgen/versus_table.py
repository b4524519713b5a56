"""Table of loadgen/versus.sh: per scenario and measure, the median of the rounds for
each server and the ratio chatd / baseline (below 1: chatd needs less, or is faster for
latency; above 1 for deliveries per second: chatd delivers more)."""
import glob
import json
import os
import re
import statistics
import sys

out = sys.argv[1]
rows = {}
for path in sorted(glob.glob(os.path.join(out, "r*-*.json"))):
    m = re.match(r"r(\d+)-(chatd|baseline)-(.+)\.json$", os.path.basename(path))
    if not m:
        continue
    _, side, scenario = m.groups()
    r = json.load(open(path))
    s = r.get("server") or {}
    d = r.get("delivery") or {}
    c = r.get("connections") or {}
    if scenario.startswith("idle"):
        measures = [
            ("bytes RSS per connection", s.get("rss_bytes_per_connection")),
            ("us server CPU per connection", s.get("cpu_us_per_connection")),
            ("p99 handshake latency, ms", (c.get("handshake_ms") or {}).get("p99_ms")),
        ]
    else:
        lat = d.get("latency_ms") or {}
        measures = [
            ("us server CPU per delivery", s.get("cpu_us_per_delivery")),
            ("p50 delivery latency, ms", lat.get("p50_ms")),
            ("p99 delivery latency, ms", lat.get("p99_ms")),
            ("deliveries per second", d.get("deliveries_per_s")),
        ]
    for i, (unit, value) in enumerate(measures):
        row = rows.setdefault((scenario, unit), {"chatd": [], "baseline": [], "bad": {}})
        row[side].append(value)
        if i == 0:
            # Lost / reordered messages and dropped or failed connections, summed over
            # the rounds, per server.
            bad = row["bad"].setdefault(side, [0, 0, 0])
            bad[0] += d.get("lost", 0)
            bad[1] += d.get("reordered", 0)
            bad[2] += c.get("dropped", 0) + c.get("failed", 0)


def num(v):
    if abs(v) >= 1e6:
        return "%.3g M" % (v / 1e6)
    if abs(v) >= 1e4:
        return "%.3g k" % (v / 1e3)
    if abs(v) >= 1e3:
        return "%.0f" % v
    return "%.3g" % v


def fmt(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return "%s (%s)" % (num(statistics.median(values)), ", ".join(num(v) for v in values))


def fmt_bad(bad):
    return " / ".join(
        "%s %d/%d/%d" % (side, *bad[side]) for side in ("chatd", "baseline") if side in bad
    )


print("| scenario | measure | chatd: median (runs) | baseline: median (runs) | chatd / baseline "
      "| lost/reordered/dropped |")
print("| --- | --- | --- | --- | --- | --- |")
for (scenario, unit), v in rows.items():
    a = [x for x in v["chatd"] if x is not None]
    b = [x for x in v["baseline"] if x is not None]
    ratio = "%.2f" % (statistics.median(a) / statistics.median(b)) if a and b and statistics.median(b) else "-"
    print("| %s | %s | %s | %s | %s | %s |"
          % (scenario, unit, fmt(v["chatd"]), fmt(v["baseline"]), ratio, fmt_bad(v["bad"])))
