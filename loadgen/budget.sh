#!/usr/bin/env bash
# Measures every item of the performance budget in one run, against the
# plain-send() floor measured in the same run (BENCHMARKS.md records the
# output). Loopback only; every step is bounded in time (about 20 minutes
# with the default three rounds).
#
#   [ROUNDS=3] loadgen/budget.sh [OUTPUT_DIR]
#
# The tables at the end of summary.txt come from loadgen/budget_table.py.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/budget}
mkdir -p "$out"
cargo build --release -p chatd -p loadgen >/dev/null
lg=target/release/loadgen

secret=budget
. loadgen/servers.sh
run() {
    local name=$1
    shift
    echo "== $name: loadgen $*" | tee -a "$out/summary.txt"
    "$lg" "$@" --json >"$out/$name.json" 2>"$out/$name.progress"
    python3 - "$out/$name.json" <<'PY' | tee -a "$out/summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
c = r["connections"]
print("   connections %d/%d, %.0f/s, handshake p50 %.2f p99 %.2f ms" % (
    c["established"], c["planned"], c["rate_per_s"], c["handshake_ms"]["p50_ms"], c["handshake_ms"]["p99_ms"]))
d = r.get("delivery")
if d:
    l = d["latency_ms"]
    print("   deliveries/s %.0f, lost %d, reordered %d, latency p50 %.3f p99 %.3f p99.9 %.3f max %.3f ms" % (
        d["deliveries_per_s"], d["lost"], d["reordered"], l["p50_ms"], l["p99_ms"], l["p999_ms"], l["max_ms"]))
s = r.get("server")
if s:
    per = s.get("cpu_us_per_delivery")
    print("   server cpu %.2f cores, %s us/delivery, %.1f us/connection, rss %d bytes/connection" % (
        s["cpu_cores_measured"], "%.3f" % per if per is not None else "-", s["cpu_us_per_connection"],
        s["rss_bytes_per_connection"]))
g = r.get("loadgen")
if g:
    print("   loadgen cpu %.2f cores" % g["cpu_cores_measured"])
PY
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
    echo "commit: $(git rev-parse --short HEAD)"
} | tee "$out/summary.txt"

# Items 1a and 1b in ROUNDS rounds. Each round measures the floor first and
# then every burst and fanout run, so each figure is compared with a floor
# taken minutes earlier (the floor of one round differs from the next by up
# to a third on this VM). Burst and fanout run with the batched writer (the
# default) and without it (BATCHED_SENDS=false, every connection sending its
# own frames): the baseline of the same round. Fanout runs at 20 k, 40 k,
# 80 k and 160 k deliveries/s (--msg-rate 4, 8, 16, 32 per room).
rounds=${ROUNDS:-3}
for round in $(seq 1 "$rounds"); do
    for n in 1000 5000; do
        echo "== round $round: floor --sockets $n" | tee -a "$out/summary.txt"
        "$lg" floor --sockets "$n" --frames 500000 --json >"$out/r$round-floor-$n.json"
        python3 -c "import json;r=json.load(open('$out/r$round-floor-$n.json'));print('   %.3f us sender CPU per send, %d sockets' % (r['cpu_us_per_send'], r['sockets']))" | tee -a "$out/summary.txt"
    done
    # The same sends paced as fanout 100 x 50 sends them (a group of 50 per
    # chat message, 100 rooms x --msg-rate groups a second, the sender asleep
    # in between): what plain send() pays for the sparse pattern itself.
    # Shown beside item 1b; the item is judged against the floor above.
    for rate in 4 8 16 32; do
        groups=$((rate * 100))
        echo "== round $round: floor --sockets 5000 --group 50 --group-rate $groups" | tee -a "$out/summary.txt"
        "$lg" floor --sockets 5000 --frames $((groups * 50 * 5)) --group 50 --group-rate "$groups" --json \
            >"$out/r$round-paced-5000-r$rate.json"
        python3 -c "import json;r=json.load(open('$out/r$round-paced-5000-r$rate.json'));print('   %.3f us sender CPU per send, %.0f sends/s' % (r['cpu_us_per_send'], r['sends_per_s']))" | tee -a "$out/summary.txt"
    done
    for batched in true false; do
        start_server target/release/chatd CORES=2 BATCHED_SENDS=$batched
        url="ws://$addr/ws"
        run "r$round-burst-5000-batched-$batched" burst --url "$url" --secret budget --members 5000 --window 64 \
            --duration 10 --warmup 2 --server-pid "$pid"
        stop_server
        start_server target/release/chatd CORES=2 BATCHED_SENDS=$batched
        url="ws://$addr/ws"
        for rate in 4 8 16 32; do
            run "r$round-fanout-100x50-r$rate-batched-$batched" fanout --url "$url" --secret budget --rooms 100 \
                --members 50 --senders 1 --msg-rate "$rate" --duration 10 --warmup 2 --processes 2 \
                --room-prefix "f$rate-" --user-prefix "u$rate-" --server-pid "$pid"
        done
        stop_server
    done
done

# The maximum delivery rate (item 3 is measured at half of it): fanout at
# rising rates, a fresh server per rate, up to where the load generator can
# no longer deliver what it offers.
for rate in 8 12 16 20 24 28 32 64 200 400; do
    start_server target/release/chatd CORES=2
    url="ws://$addr/ws"
    run "sweep-fanout-100x50-r$rate" fanout --url "$url" --secret budget --rooms 100 --members 50 --senders 1 \
        --msg-rate "$rate" --duration 10 --warmup 2 --processes 2 --server-pid "$pid"
    stop_server
done

# The connection items start once the previous runs' TIME_WAIT sockets are
# gone (see wait_timewait in servers.sh).
wait_timewait
start_server target/release/chatd CORES=2
url="ws://$addr/ws"
run idle-19000 connect --url "$url" --secret budget --connections 19000 --rate 5000 --room-size 1 --hold 35 \
    --processes 2 --server-pid "$pid"
stop_server

# Item 4: offered above the target, so the figure is the rate reached.
for attempt in 1 2 3; do
    wait_timewait
    start_server target/release/chatd CORES=2
    url="ws://$addr/ws"
    run "connect-15000-$attempt" connect --url "$url" --secret budget --connections 15000 --rate 15000 \
        --room-size 1 --hold 1 --processes 2 --server-pid "$pid"
    stop_server
done
python3 loadgen/budget_table.py "$out" | tee -a "$out/summary.txt"
echo "results in $out/summary.txt"
