#!/usr/bin/env python3
"""Tables of a `loadgen/budget.sh` run: items 1a/1b against the floor of the
same round, item 1b beside plain send() paced like the fanout, and the fanout
rate sweep.

    python3 loadgen/budget_table.py OUTPUT_DIR
"""
import glob
import json
import os
import re
import statistics
import sys

MEMBERS = 5000  # the floor's socket count matching burst and fanout


def load(path):
    with open(path) as f:
        return json.load(f)


def per_delivery(report):
    server = report.get("server") or {}
    return server.get("cpu_us_per_delivery")


def rounds_table(out):
    floors = {}
    for path in glob.glob(os.path.join(out, "r*-floor-%d.json" % MEMBERS)):
        n = int(re.match(r"r(\d+)-", os.path.basename(path)).group(1))
        floors[n] = load(path)["cpu_us_per_send"]
    if not floors:
        return
    scenarios = {}
    for path in glob.glob(os.path.join(out, "r*-*-batched-*.json")):
        m = re.match(r"r(\d+)-(.+)\.json", os.path.basename(path))
        us = per_delivery(load(path))
        if us is not None:
            scenarios.setdefault(m.group(2), {})[int(m.group(1))] = us
    rounds = sorted(floors)
    print("== items 1a/1b: server CPU us per delivery, and its ratio to the floor (%d sockets) of the same round"
          % MEMBERS)
    print("   %-34s %s  %s" % ("scenario", "  ".join("round %d      " % r for r in rounds),
                               "median  under the floor"))
    print("   %-34s %s  %6.3f" % ("floor (us per send)", "  ".join("%6.3f        " % floors[r] for r in rounds),
                                  statistics.median(floors.values())))

    def order(name):
        rate = re.search(r"-r(\d+)-", name)
        return (not name.startswith("burst"), int(rate.group(1)) if rate else 0, "false" in name)

    for name in sorted(scenarios, key=order):
        runs = scenarios[name]
        cells = []
        under = 0
        for r in rounds:
            if r in runs:
                ratio = runs[r] / floors[r]
                under += ratio <= 1.0
                cells.append("%6.3f (%.2f)" % (runs[r], ratio))
            else:
                cells.append("%-13s" % "-")
        ratios = [runs[r] / floors[r] for r in rounds if r in runs]
        print("   %-34s %s  %6.3f  %d of %d (median ratio %.2f)" % (
            name, "  ".join(cells), statistics.median(runs.values()), under, len(ratios),
            statistics.median(ratios)))


def paced_table(out):
    """Item 1b beside plain send() in the fanout's own pattern, round by round."""
    paced = {}
    for path in glob.glob(os.path.join(out, "r*-paced-%d-r*.json" % MEMBERS)):
        m = re.match(r"r(\d+)-paced-\d+-r(\d+)\.json", os.path.basename(path))
        paced.setdefault(int(m.group(2)), {})[int(m.group(1))] = load(path)["cpu_us_per_send"]
    if not paced:
        return
    print("== item 1b beside plain send() paced like the fanout (groups of 50, 100 x msg-rate groups/s), "
          "same round: server us per delivery / paced floor us per send (ratio)")
    for rate in sorted(paced):
        floors = paced[rate]
        cells = []
        ratios = []
        for r in sorted(floors):
            path = os.path.join(out, "r%d-fanout-100x50-r%d-batched-true.json" % (r, rate))
            us = per_delivery(load(path)) if os.path.exists(path) else None
            if us is None:
                cells.append("- / %.3f" % floors[r])
            else:
                ratios.append(us / floors[r])
                cells.append("%.3f / %.3f (%.2f)" % (us, floors[r], ratios[-1]))
        print("   %7d/s  %s  median ratio %s" % (
            rate * 100 * 50, "  ".join(cells), "%.2f" % statistics.median(ratios) if ratios else "-"))


def sweep_table(out):
    rows = []
    for path in glob.glob(os.path.join(out, "sweep-fanout-100x50-r*.json")):
        rate = int(re.search(r"-r(\d+)\.json", path).group(1))
        rows.append((rate, load(path)))
    if not rows:
        return
    print("== fanout 100 x 50 rate sweep (a fresh server per rate)")
    print("   %10s %10s %9s %9s %9s %9s %8s %8s %7s" % (
        "offered/s", "delivered", "lost", "p50 ms", "p99 ms", "p99.9 ms", "server", "loadgen", "us/del"))
    for rate, r in sorted(rows):
        d = r["delivery"]
        lat = d["latency_ms"]
        us = per_delivery(r)
        print("   %10d %10.0f %9d %9.3f %9.3f %9.3f %8.2f %8.2f %7s" % (
            rate * 100 * 50, d["deliveries_per_s"], d["lost"], lat["p50_ms"], lat["p99_ms"], lat["p999_ms"],
            r["server"]["cpu_cores_measured"], r["loadgen"]["cpu_cores_measured"],
            "-" if us is None else "%.3f" % us))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip())
    rounds_table(sys.argv[1])
    paced_table(sys.argv[1])
    sweep_table(sys.argv[1])
