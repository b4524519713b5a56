"""Table of loadgen/ab.sh: per scenario, the median of the rounds for each build."""
import glob
import json
import os
import re
import statistics
import sys

out = sys.argv[1]
rows = {}
for path in sorted(glob.glob(os.path.join(out, "r*-*.json"))):
    m = re.match(r"r(\d+)-(before|after)-(.+)\.json$", os.path.basename(path))
    if not m:
        continue
    _, side, scenario = m.groups()
    r = json.load(open(path))
    s = r.get("server") or {}
    d = r.get("delivery") or {}
    if scenario.startswith("idle"):
        value = s.get("rss_bytes_per_connection")
        unit = "bytes RSS per connection"
    else:
        value = s.get("cpu_us_per_delivery")
        unit = "us server CPU per delivery"
    lost = d.get("lost", 0)
    measures = [(unit, value)]
    if d.get("latency_ms"):
        measures.append(("p99 delivery latency, ms", d["latency_ms"]["p99_ms"]))
        measures.append(("deliveries per second", d.get("deliveries_per_s")))
    for unit, value in measures:
        rows.setdefault((scenario, unit), {"before": [], "after": [], "lost": 0})
        rows[(scenario, unit)][side].append(value)
    rows[(scenario, measures[0][0])]["lost"] += lost


def fmt(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    vs = ", ".join("%.3g" % v for v in values)
    return "%.3g (%s)" % (statistics.median(values), vs)


print("| scenario | measure | before: median (runs) | after: median (runs) | after / before | lost |")
print("| --- | --- | --- | --- | --- | --- |")
for (scenario, unit), v in rows.items():
    b = [x for x in v["before"] if x is not None]
    a = [x for x in v["after"] if x is not None]
    ratio = "%.2f" % (statistics.median(a) / statistics.median(b)) if a and b else "-"
    print("| %s | %s | %s | %s | %s | %d |" % (scenario, unit, fmt(v["before"]), fmt(v["after"]), ratio, v["lost"]))
