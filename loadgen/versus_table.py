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
    if scenario.startswith("connect"):
        measures = [
            ("connections per second", c.get("rate_per_s")),
            ("us server CPU per connection", s.get("cpu_us_per_connection")),
            ("p99 handshake latency, ms", (c.get("handshake_ms") or {}).get("p99_ms")),
        ]
    elif scenario.startswith("idle"):
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


# The kernel's floor, measured in the same rounds: sender CPU per plain send().
floors = {}
for path in sorted(glob.glob(os.path.join(out, "r*-floor-*.json"))):
    m = re.match(r"r(\d+)-floor-(.+)\.json$", os.path.basename(path))
    if m:
        floors.setdefault(m.group(2), []).append(json.load(open(path)).get("cpu_us_per_send"))
if floors:
    print()
    print("| floor (plain send(), same rounds) | us sender CPU per send: median (runs) "
          "| chatd / floor | baseline / floor |")
    print("| --- | --- | --- | --- |")
    for name, values in floors.items():
        values = [v for v in values if v is not None]
        scenario = name if name.startswith("fanout") else None
        row = rows.get((scenario, "us server CPU per delivery")) if scenario else None
        ratios = ["-", "-"]
        if row and values:
            f = statistics.median(values)
            for i, side in enumerate(("chatd", "baseline")):
                got = [x for x in row[side] if x is not None]
                if got:
                    ratios[i] = "%.2f" % (statistics.median(got) / f)
        print("| %s | %s | %s | %s |" % (name, fmt(values), ratios[0], ratios[1]))
