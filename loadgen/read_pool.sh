#!/usr/bin/env bash
# History reads under a write load, with the reads' own pool and without:
# each variant gets a fresh server and a fresh database on the shared
# Postgres, then examples/history_read_latency.rs writes RATE messages per
# second over 4 connections while reading a 100-message page (which needs
# Postgres: HISTORY_PER_ROOM=10) 50 times a second for SECS seconds.
#
#   loadgen/read_pool.sh [RATE] [SECS]
#
# SSLMODE (default disable) is the sslmode of every variant's DATABASE_URL,
# so that the variants differ only in the pool (the `shared` variant, built
# without TLS, runs only with disable).
# EXTRA="KEY=VALUE ..." adds settings to every variant's server (e.g.
# larger batches: EXTRA="PG_BATCH_SIZE=5000 PG_FLUSH_INTERVAL_MS=1000").
#
# Variants: `pool-4` (the default PG_READ_POOL_SIZE), `pool-1`, and, when
# CHATD_BEFORE names a binary built before the pool existed, `shared`
# (reads pipelined on the writer's one connection).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-2000}
SECS=${2:-20}
ADMIN=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
SSLMODE=${SSLMODE:-disable}
cargo build -q --bin chatd --example history_read_latency
EXAMPLE=target/debug/examples/history_read_latency

run() {
    local label=$1 bin=$2
    shift 2
    local db="chatd_bench_$(date +%s)_$RANDOM"
    psql -q "$ADMIN" -c "CREATE DATABASE $db"
    local log
    log=$(mktemp)
    env -i PATH="$PATH" JWT_SECRET=bench PORT=0 HOST=127.0.0.1 LOG_LEVEL=warn \
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db?sslmode=$SSLMODE" \
        HISTORY_PER_ROOM=10 RATE_LIMIT_MAX_MESSAGES=1000000000 ${EXTRA:-} "$@" \
        "$bin" >"$log" 2>&1 &
    local pid=$!
    local addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/^chatd listening on //p' "$log" | head -1)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { cat "$log" >&2; kill "$pid"; exit 1; }
    echo "$label (sslmode=$SSLMODE): $("$EXAMPLE" "$addr" bench "$RATE" "$SECS")"
    kill -TERM "$pid"
    wait "$pid" || true
    psql -q "$ADMIN" -c "DROP DATABASE $db WITH (FORCE)"
    rm -f "$log"
}

if [ -n "${CHATD_BEFORE:-}" ] && [ "$SSLMODE" = disable ]; then
    run shared "$CHATD_BEFORE"
fi
run pool-1 target/debug/chatd PG_READ_POOL_SIZE=1
run pool-4 target/debug/chatd
