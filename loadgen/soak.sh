#!/usr/bin/env bash
# The soak run: chatd with its defaults holds about 15,000 connections carrying
# messages while about 300 short-lived connections a second come and go, for
# 10 minutes after a 10 minute warm-up; loadgen samples the server's RSS and its
# connection gauge once a second. Writes the JSON report, the progress lines,
# the plot and a summary under OUTPUT_DIR and prints a verdict: RSS growth over
# the measured interval (flat: within SOAK_FLAT_PCT %), errors, lost messages.
# Exits 0 when all three pass, 1 otherwise. Loopback only; every step is
# bounded in time (about 21 minutes with the defaults).
#
# The warm-up must fill every bounded store to its bound, or its filling reads
# as growth: the in-memory history keeps HISTORY_PER_ROOM (1,000) messages per
# room, about 500 bytes each, and at 2 messages a second per room it is full
# after 500 s, inside the 600 s warm-up (at 1 a second it would still be
# filling for 1,000 s: +77% over a 60 s warm-up and 600 s measured, all of it
# history; BENCHMARKS.md, Soak).
#
#   [SOAK_SECS=600] [SOAK_WARMUP=600] [SOAK_ROOMS=150] [SOAK_MEMBERS=100] \
#   [SOAK_MSG_RATE=2] [SOAK_CHURN_RATE=300] [SOAK_FLAT_PCT=5] \
#   loadgen/soak.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/soak}
secs=${SOAK_SECS:-600}
warmup=${SOAK_WARMUP:-600}
rooms=${SOAK_ROOMS:-150}
members=${SOAK_MEMBERS:-100}
msg_rate=${SOAK_MSG_RATE:-2}
churn_rate=${SOAK_CHURN_RATE:-300}
flat_pct=${SOAK_FLAT_PCT:-5}
mkdir -p "$out"
cargo build --release -p chatd -p loadgen >"$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
lg=target/release/loadgen

# The server as the README starts it: release build, default settings (every
# core, pinning as by default), JWT_SECRET set. Two changes: it listens on a
# free loopback port (PORT=0, HOST=127.0.0.1) so it cannot clash with another
# server on this machine, and RATE_LIMIT_MAX_MESSAGES is raised because each
# sender sends SOAK_MSG_RATE messages a second (120 a minute at the default
# rate), above the default 30 per minute: refused messages would count as lost.
log="$out/server.log"
env -u CORES -u PIN_CORES JWT_SECRET=soak PORT=0 HOST=127.0.0.1 \
    RATE_LIMIT_MAX_MESSAGES=1000000 target/release/chatd >"$log" 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
addr=""
for _ in $(seq 1 100); do
    addr=$(sed -n 's/^chatd listening on //p' "$log")
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$addr" ] || { echo "chatd did not start:"; cat "$log"; exit 1; }
port=${addr##*:}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), RLIMIT_NOFILE $(ulimit -Hn)"
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src loadgen || echo ' (with uncommitted changes)')"
    echo "server: pid $pid on 127.0.0.1:$port, defaults + JWT_SECRET, RATE_LIMIT_MAX_MESSAGES=1000000"
} | tee "$out/summary.txt"

args=(churn --url "ws://127.0.0.1:$port/ws" --secret soak
    --rooms "$rooms" --members "$members" --senders 1 --msg-rate "$msg_rate"
    --churn-rate "$churn_rate" --churn-hold 1 --churn-rooms 10
    --warmup "$warmup" --duration "$secs" --grace 5 --rate 2000 --processes 2
    --server-pid "$pid" --metrics-path /metrics
    --timeline-svg "$out/soak.svg" --svg "$out/latency.svg" --json)
echo "command: loadgen ${args[*]}" | tee -a "$out/summary.txt"
# loadgen stops itself at its hard deadline; this bound covers a hang before it.
timeout $((secs + warmup + 300)) "$lg" "${args[@]}" >"$out/soak.json" 2>"$out/progress.txt"

# The server's own counters after the run (errors, close reasons, refusals).
python3 - "$port" >"$out/metrics.txt" <<'PY'
import sys, urllib.request
print(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode())
PY

python3 - "$out/soak.json" "$out/metrics.txt" "$flat_pct" <<'PY' | tee -a "$out/summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
flat_pct = float(sys.argv[3])
c, ch, d, tl = r["connections"], r["churn"], r["delivery"], r["timeline"]
tr = tl["rss_trend"]
mib = lambda b: b / 1048576.0
print("held: %d of %d established, %d failed, %d dropped" % (
    c["established"], c["planned"], c["failed"], c["dropped"]))
measured = d["measured_s"]
print("churn: %d attempted, %d established (%.1f/s over %.0f s warm-up + measured), %d failed, %d dropped; handshake p50 %.2f p99 %.2f ms" % (
    ch["attempted"], ch["established"], ch["established"] / (measured + r["config"]["warmup_s"]),
    measured + r["config"]["warmup_s"], ch["failed"], ch["dropped"],
    ch["handshake_ms"]["p50_ms"], ch["handshake_ms"]["p99_ms"]))
print("messages: %d sent in the measured %.0f s, %d delivered of %d expected (%.0f/s), %d lost, %d unsent, %d reordered, %d duplicates; latency p50 %.2f p99 %.2f max %.2f ms" % (
    d["sent_measured"], measured, d["delivered_measured"], d["expected_measured"], d["deliveries_per_s"],
    d["lost"], d["unsent"], d["reordered"], d["duplicates"],
    d["latency_ms"]["p50_ms"], d["latency_ms"]["p99_ms"], d["latency_ms"]["max_ms"]))
conns = [p["server_connections"] for p in tl["points"]
         if p["phase"] == "measuring" and p["server_connections"] is not None]
if conns:
    print("server connections while measuring: %d to %d (%d samples, %d failed scrapes)" % (
        min(conns), max(conns), len(conns), tl["scrape_failures"]))
s = r["server"]
print("server cpu: %.2f cores measured; loadgen %.2f cores" % (
    s["cpu_cores_measured"], r["loadgen"]["cpu_cores_measured"]))
errors = (c["failed"] + c["dropped"] + ch["failed"] + ch["dropped"]
          + sum(r["errors"].values()) + r["bad_frames"])
lost = d["lost"] + d["unsent"]
ok_rss = tr is not None and abs(tr["growth_pct"]) <= flat_pct
if tr:
    print("rss: %.1f MiB before connecting, %.1f MiB at warm-up end (t=%.0f s), %.1f MiB at the end (t=%.0f s): growth %+.2f%%, peak %+.2f%%, slope %+.0f KiB/min" % (
        mib(s["rss_before_bytes"]), mib(tr["start_bytes"]), tr["from_s"], mib(tr["end_bytes"]), tr["to_s"],
        tr["growth_pct"], tr["peak_growth_pct"], tr["slope_bytes_per_min"] / 1024))
server_errors = [l for l in open(sys.argv[2]) if l.startswith("chat_errors_total") and not l.rstrip().endswith(" 0")]
if server_errors:
    print("server chat_errors_total: " + "; ".join(l.strip() for l in server_errors))
print("VERDICT: %s (rss growth %s within %g%%: %s; errors %d: %s; lost %d: %s)" % (
    "PASS" if ok_rss and errors == 0 and lost == 0 else "FAIL",
    "%+.2f%%" % tr["growth_pct"] if tr else "unknown", flat_pct, "ok" if ok_rss else "NOT FLAT",
    errors, "ok" if errors == 0 else "FAIL", lost, "ok" if lost == 0 else "FAIL"))
sys.exit(0 if ok_rss and errors == 0 and lost == 0 else 1)
PY
