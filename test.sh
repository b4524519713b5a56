#!/usr/bin/env bash
# The whole test suite: `cargo test --workspace` (extra arguments are passed
# on), its output kept in target/test-output.log, then one closing list of
# every test that skipped for lack of a service or tool (Redis, Postgres,
# Node, Chromium) and why, or `skipped: none`. Under CI=true such a test
# fails instead of skipping. .ci/run runs exactly this.
set -uo pipefail
cd "$(dirname "$0")"
mkdir -p target
log=target/test-output.log
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Skipping tests print `SKIP <test file>::<test>: <why>` (tests/common).
skips=$(sed -n -E 's/.*SKIP ([^ ]+): (.*)$/\1\t\2/p' "$log" | sort -u)
echo
if [ -z "$skips" ]; then
    echo "skipped: none"
else
    while IFS=$'\t' read -r suite why; do
        echo "skipped: $suite — $why"
    done <<<"$skips"
fi
exit "$status"
