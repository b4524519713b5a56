# Sourced by budget.sh, ab.sh and versus.sh: start and stop one server, and
# wait for the sockets a run left in TIME_WAIT. The caller sets `out` (where
# the server log and summary go) and `secret` (its JWT_SECRET).

pid=""
addr=""

# start_server BINARY [VAR=VALUE...]: a fresh server on an ephemeral port with
# the rate limit out of the way; sets `pid` and `addr` once it listens (the
# servers print `chatd listening on ADDR`).
start_server() {
    local bin=$1 log="$out/server.log"
    shift
    env JWT_SECRET="$secret" PORT=0 HOST=127.0.0.1 RATE_LIMIT_MAX_MESSAGES=1000000000 LOG_LEVEL=warn \
        "$@" "$bin" >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
        grep -q "listening on" "$log" && break
        sleep 0.1
    done
    addr=$(sed -n 's/^chatd listening on //p' "$log")
    [ -n "$addr" ] || { cat "$log"; exit 1; }
}

stop_server() {
    kill -TERM "$pid"
    wait "$pid" || true
}

# Connections closed by a run sit in TIME_WAIT for 60 s (the server closes
# first, as RFC 6455 asks); 15,000 of them cut the next connect run's rate by
# 11-25% (BENCHMARKS.md), so connection runs start once they are gone.
wait_timewait() {
    for _ in $(seq 1 90); do
        [ "$(ss -tan state time-wait | wc -l)" -lt 1000 ] && return
        sleep 1
    done
    echo "   (still $(ss -tan state time-wait | wc -l) TIME_WAIT sockets after 90 s; measuring anyway)" |
        tee -a "$out/summary.txt"
}
