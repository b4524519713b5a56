#!/usr/bin/env bash
# Runs the budget scenarios against two server binaries in one run, alternating
# them round by round so both see the same machine noise, and prints one table
# of medians (BENCHMARKS.md records the output). Loopback only; about
# 4 minutes per round.
#
#   [ROUNDS=3] loadgen/ab.sh BEFORE_BINARY AFTER_BINARY [OUTPUT_DIR]
#
# Each run gets a fresh server started with the defaults plus a secret and a
# rate limit out of the way, as budget.sh starts it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: loadgen/ab.sh BEFORE_BINARY AFTER_BINARY [OUTPUT_DIR]" >&2; exit 2; }
before=$1
after=$2
out=${3:-target/ab}
for bin in "$before" "$after"; do
    [ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }
done
mkdir -p "$out"
cargo build --release -q -p loadgen
lg=target/release/loadgen

secret=budget
. loadgen/servers.sh
run() {
    local name=$1
    shift
    echo "== $name: loadgen $*" >>"$out/commands.txt"
    "$lg" "$@" --json >"$out/$name.json" 2>"$out/$name.progress"
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
    echo "before: $before ($(sha256sum "$before" | cut -c1-12))"
    echo "after: $after ($(sha256sum "$after" | cut -c1-12))"
} | tee "$out/summary.txt"
: >"$out/commands.txt"

rounds=${ROUNDS:-3}
for round in $(seq 1 "$rounds"); do
    for side in before after; do
        bin=$before
        [ "$side" = after ] && bin=$after
        echo "== round $round: $side"
        start_server "$bin"
        run "r$round-$side-burst-5000" burst --url "ws://$addr/ws" --secret budget --members 5000 --window 64 \
            --duration 10 --warmup 2 --server-pid "$pid"
        stop_server
        start_server "$bin"
        for rate in 8 32; do
            run "r$round-$side-fanout-100x50-r$rate" fanout --url "ws://$addr/ws" --secret budget --rooms 100 \
                --members 50 --senders 1 --msg-rate "$rate" --duration 10 --warmup 2 --processes 2 \
                --room-prefix "f$rate-" --user-prefix "u$rate-" --server-pid "$pid"
        done
        stop_server
        wait_timewait
        start_server "$bin"
        run "r$round-$side-idle-10000" connect --url "ws://$addr/ws" --secret budget --connections 10000 \
            --rate 5000 --room-size 1 --hold 10 --processes 2 --server-pid "$pid"
        stop_server
    done
done
python3 loadgen/ab_table.py "$out" | tee -a "$out/summary.txt"
echo "results in $out/summary.txt"
