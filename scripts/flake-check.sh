#!/usr/bin/env bash
# Runs the whole test suite N times in a row (default 20) while a CPU hog keeps the other core
# busy, and counts the failing runs. A flaky test is a bug: expect "0 of N runs failed".
# Not called by .ci/run (about 20 minutes); run it after touching timing, the pool or the fixture.
# Usage: scripts/flake-check.sh [RUNS]
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
# What `make test` installs first (memcached, the python-memcached venv, ...).
./scripts/install-deps.sh >/dev/null || exit 1
swift build --build-tests >/dev/null || exit 1

# One busy loop per core but one, so the suite always competes for CPU.
hogs=()
for _ in $(seq 2 "$(nproc)"); do
    (while :; do :; done) &
    hogs+=($!)
done
[ ${#hogs[@]} -gt 0 ] || { (while :; do :; done) & hogs+=($!); }
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT

failed=0
logs="$(mktemp -d)"
for run in $(seq 1 "$runs"); do
    if swift test --skip-build >"$logs/run-$run.log" 2>&1; then
        echo "run $run: passed"
    else
        failed=$((failed + 1))
        echo "run $run: FAILED (log: $logs/run-$run.log)"
        grep -E "^✘" "$logs/run-$run.log" | grep -v "known issue" | head -20
    fi
done
echo "$failed of $runs runs failed"
[ "$failed" -eq 0 ]
