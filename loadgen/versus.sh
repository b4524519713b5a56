#!/usr/bin/env bash
# Runs the load scenarios against chatd and a baseline server side by side, alternating
# them round by round so both see the same machine noise, and prints one table of medians
# (BENCHMARKS.md, "Against a tokio baseline", records the output), with the kernel's
# send() floor measured in every round beside them. Loopback only; about 5½ minutes per
# round.
#
#   [ROUNDS=3] [CHATD=target/release/chatd] [BASELINE=target/release/baseline] \
#       loadgen/versus.sh [OUTPUT_DIR]
#
# BASELINE defaults to the plain tokio + tokio-tungstenite server of
# loadgen/src/bin/baseline.rs (built here with loadgen), but any server speaking the
# contract can be passed instead: it is started with JWT_SECRET, HOST and PORT=0 in its
# environment and must print `chatd listening on ADDR` once it listens. chatd is started
# with its defaults (no CORES) plus a secret and a rate limit out of the way, as ab.sh
# starts it. Every scenario run gets a fresh server process.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/versus}
chatd=${CHATD:-target/release/chatd}
cargo build --release -q -p loadgen
baseline=${BASELINE:-target/release/baseline}
for bin in "$chatd" "$baseline"; do
    [ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }
done
mkdir -p "$out"
rm -f "$out"/r*-*.json
lg=target/release/loadgen

secret=versus
. loadgen/servers.sh
# One scenario against a fresh server: run NAME LOADGEN_ARGS...
run() {
    local name=$1 bin=$2
    shift 2
    start_server "$bin"
    echo "== $name: loadgen $*" >>"$out/commands.txt"
    "$lg" "$@" --url "ws://$addr/ws" --secret versus --server-pid "$pid" --json \
        >"$out/$name.json" 2>"$out/$name.progress"
    stop_server
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
    echo "chatd: $chatd ($(sha256sum "$chatd" | cut -c1-12))"
    echo "baseline: $baseline ($(sha256sum "$baseline" | cut -c1-12))"
} | tee "$out/summary.txt"
: >"$out/commands.txt"

rounds=${ROUNDS:-3}
for round in $(seq 1 "$rounds"); do
    # The kernel's floor in the same round: plain send() of one frame per call, back to
    # back over 5,000 sockets and paced the way each fan-out sends (groups of one room's
    # members at the scenario's message rate).
    echo "== round $round: floor"
    echo "== floor: loadgen floor --sockets 5000 --frames 500000" >>"$out/commands.txt"
    "$lg" floor --sockets 5000 --frames 500000 --json >"$out/r$round-floor-back-to-back.json"
    echo "== floor: loadgen floor --sockets 5000 --frames 125000 --group 50 --group-rate 500" \
        >>"$out/commands.txt"
    "$lg" floor --sockets 5000 --frames 125000 --group 50 --group-rate 500 --json \
        >"$out/r$round-floor-fanout-100x50.json"
    echo "== floor: loadgen floor --sockets 5000 --frames 1000000 --group 500 --group-rate 400" \
        >>"$out/commands.txt"
    "$lg" floor --sockets 5000 --frames 1000000 --group 500 --group-rate 400 --json \
        >"$out/r$round-floor-fanout-10x500.json"
    for side in chatd baseline; do
        bin=$chatd
        [ "$side" = baseline ] && bin=$baseline
        echo "== round $round: $side"
        run "r$round-$side-fanout-100x50" "$bin" fanout --rooms 100 --members 50 --senders 1 \
            --msg-rate 5 --duration 10 --warmup 2 --processes 2
        run "r$round-$side-fanout-10x500" "$bin" fanout --rooms 10 --members 500 --senders 4 \
            --msg-rate 10 --duration 10 --warmup 2 --processes 2
        run "r$round-$side-burst-1000" "$bin" burst --members 1000 --window 64 --duration 10 --warmup 2
        wait_timewait
        run "r$round-$side-idle-15000" "$bin" connect --connections 15000 --rate 5000 --hold 10 \
            --processes 2
        wait_timewait
        run "r$round-$side-connect-15000" "$bin" connect --connections 15000 --rate 15000 \
            --room-size 1 --hold 1 --processes 2
    done
done
python3 loadgen/versus_table.py "$out" | tee -a "$out/summary.txt"
echo "results in $out/summary.txt"
