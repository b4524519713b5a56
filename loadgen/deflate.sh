#!/usr/bin/env bash
# permessage-deflate in the fan-out: four runs, plain and compressed, with
# 150-byte and 2,000-byte message content, each against a fresh server. Prints
# one table (BENCHMARKS.md records it): deliveries, server CPU per delivery,
# loopback bytes per delivery, and the server's compression counters.
#
#   loadgen/deflate.sh [OUTPUT_DIR]
#
# BIN and LOADGEN name other binaries (then nothing is built); ROOMS, MEMBERS
# and DURATION change the scenario (100 rooms x 50 members, one sender per
# room at 5 messages/s: 25,000 deliveries/s for 20 s) for a quick check.
#
# Plain: the server with its defaults and loadgen without --deflate.
# Compressed: WS_COMPRESSION=true and loadgen --deflate (every member
# negotiates; loadgen's own frames stay uncompressed). Both pad content with
# words (--text-padding), which compress like chat text; dots would flatter
# deflate. MAX_MESSAGE_LENGTH is raised so 2,000 bytes is a legal message.
# Loopback bytes (/sys/class/net/lo tx_bytes over the whole run, TCP/IP
# headers and the senders' frames included) per measured delivery are an
# upper bound of what one delivery puts on the wire.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/deflate}
bin=${BIN:-target/release/chatd}
lg=${LOADGEN:-target/release/loadgen}
rooms=${ROOMS:-100}
members=${MEMBERS:-50}
duration=${DURATION:-20}
mkdir -p "$out"
[ -n "${BIN:-}${LOADGEN:-}" ] || cargo build --release -q -p chatd -p loadgen
secret=deflate
. loadgen/servers.sh

metric() {
    curl -s "http://$addr/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
    echo "server: $bin ($(sha256sum "$bin" | cut -c1-12))"
    printf '%-16s %12s %14s %14s %12s %12s %12s\n' run deliveries/s "cpu us/deliv" "lo bytes/deliv" compressions "comp deliv" "saved/deliv"
} | tee "$out/summary.txt"
for size in 150 2000; do
    for mode in plain deflate; do
        name="$mode-$size"
        if [ "$mode" = deflate ]; then
            start_server "$bin" MAX_MESSAGE_LENGTH=5000 WS_COMPRESSION=true
            flag=--deflate
        else
            start_server "$bin" MAX_MESSAGE_LENGTH=5000
            flag=
        fi
        tx0=$(cat /sys/class/net/lo/statistics/tx_bytes)
        # shellcheck disable=SC2086
        "$lg" fanout --url "ws://$addr/ws" --secret "$secret" --rooms "$rooms" --members "$members" \
            --msg-rate 5 --duration "$duration" --size "$size" --text-padding $flag \
            --server-pid "$pid" --json >"$out/$name.json" 2>"$out/$name.progress"
        tx1=$(cat /sys/class/net/lo/statistics/tx_bytes)
        sleep 1.2 # the scrape is cached for a second
        frames=$(metric chat_ws_compressed_frames_total)
        delivs=$(metric chat_ws_compressed_deliveries_total)
        saved=$(metric chat_ws_compression_saved_bytes_total)
        stop_server
        python3 - "$out/$name.json" "$name" "$((tx1 - tx0))" "$frames" "$delivs" "$saved" <<'PY' | tee -a "$out/summary.txt"
import json, sys
path, name, tx, frames, delivs, saved = sys.argv[1:]
r = json.load(open(path))
d = r["delivery"]
n = d["delivered_measured"]
total = d["delivered"]
cpu = r["server"]["cpu_us_per_delivery"]
print(f"{name:<16} {d['deliveries_per_s']:>12.0f} {cpu:>14.2f} {int(tx) / total:>14.0f} "
      f"{frames:>12} {delivs:>12} {int(saved) / max(int(delivs), 1):>12.0f}")
PY
    done
done
