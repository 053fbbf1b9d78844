#!/usr/bin/env bash
# The web-framework integrations and FilmService, as .ci/run runs them: the Hummingbird persist
# driver's and the Vapor drivers' tests (each package with its framework's own testing tools,
# against real memcached), then FilmService over real HTTP on loopback: the first /films/top5
# comes from SQLite, the second from memcached, /visits keeps a session in memcached, and
# /metrics counts what happened. Prints how long each part took; stops what it started by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/servers.sh
source scripts/lib/apt.sh
root=$(pwd)
# One build folder for the three packages: they share most of their dependencies (SwiftNIO, its
# TLS and BoringSSL, swift-crypto, Hummingbird), which are then built once, not three times.
scratch="$root/.build-integrations"

workdir=$(mktemp -d "${TMPDIR:-/tmp}/filmservice.XXXXXX")
memcached_pid=""
service_pid=""
cleanup() {
    local status=$?
    [ -z "$service_pid" ] || stop_pid "$service_pid"
    [ -z "$memcached_pid" ] || stop_pid "$memcached_pid"
    if [ "$status" -ne 0 ]; then
        for log in "$workdir/service.log" "$workdir/memcached.log"; do
            [ -f "$log" ] && { echo "--- $log" >&2; cat "$log" >&2; }
        done
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

./scripts/install-deps.sh --examples
command -v curl >/dev/null 2>&1 || apt_install curl

# Builds a package and runs its tests, failing on a warning in its own sources.
test_package() {
    local path=$1 started=$SECONDS
    swift build --package-path "$path" --scratch-path "$scratch" --build-tests 2>&1 | tee "$workdir/build.log"
    if grep -E "^$root/$path/(Sources|Tests)/.*: warning:" "$workdir/build.log"; then
        echo "warnings in $path" >&2
        exit 1
    fi
    swift test --package-path "$path" --scratch-path "$scratch" --skip-build
    echo "$path: built and tested in $((SECONDS - started)) s"
}

test_package Integrations/HummingbirdMemcached
test_package Integrations/VaporMemcached

# MARK: - FilmService over HTTP

started=$SECONDS
swift build --package-path Examples --scratch-path "$scratch" --product FilmService 2>&1 | tee "$workdir/build.log"
if grep -E "^$root/Examples/(FilmService|Sakila)/.*: warning:" "$workdir/build.log"; then
    echo "warnings in FilmService" >&2
    exit 1
fi
service="$(swift build --package-path Examples --scratch-path "$scratch" --show-bin-path)/FilmService"
echo "FilmService built in $((SECONDS - started)) s"

start_memcached "$workdir"
MEMCACHED_SERVERS="127.0.0.1:$memcached_port" FILMSERVICE_PORT=0 FILMSERVICE_DATABASE="$workdir/sakila.sqlite" \
    "$service" >"$workdir/service.log" 2>&1 &
service_pid=$!
port=""
for _ in $(seq 1 300); do
    port=$(sed -n 's/^FilmService listening on 127.0.0.1:\([0-9]*\)$/\1/p' "$workdir/service.log" | head -n1)
    [ -n "$port" ] && break
    kill -0 "$service_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$port" ]; then
    echo "FilmService did not start:" >&2
    cat "$workdir/service.log" >&2
    exit 1
fi
url="http://127.0.0.1:$port"
failures=0
# check WHAT EXPECTED ACTUAL: EXPECTED is somewhere in ACTUAL.
check() {
    local what=$1 expected=$2 actual=$3
    if [[ "$actual" == *"$expected"* ]]; then
        echo "ok: $what"
    else
        echo "FAILED: $what: expected $expected in: $actual" >&2
        failures=$((failures + 1))
    fi
}
# check_metric WHAT LINE METRICS: LINE is one whole line of METRICS ("... 1" is not "... 10").
check_metric() {
    if grep -qxF -- "$2" <<<"$3"; then
        echo "ok: $1"
    else
        echo "FAILED: $1: no line '$2' in:" >&2
        grep -E '^(memcached|filmservice)_' <<<"$3" >&2 || true
        failures=$((failures + 1))
    fi
}

first=$(curl -sS --fail "$url/films/top5")
second=$(curl -sS --fail "$url/films/top5")
check "the first lookup reads the database" '"source":"database"' "$first"
check "the second lookup reads memcached" '"source":"memcached"' "$second"
check "the seed's first film" '"title":"ACE GOLDFINGER"' "$second"
same=$(python3 -c 'import json, sys; a, b = (json.loads(x)["films"] for x in sys.argv[1:]); print(len(a) == 5 and a == b)' \
    "$first" "$second")
check "the same five films both times" "True" "$same"

metrics=$(curl -sS --fail "$url/metrics")
# One lookup missed and one hit: the library counts a cache-aside lookup as its caller's get (its
# lock and its second read under the lock are its own), and the service counts where it answered.
check_metric "one lookup answered by the database" 'filmservice_top5_lookups_total{source="database"} 1' "$metrics"
check_metric "one lookup answered by memcached" 'filmservice_top5_lookups_total{source="memcached"} 1' "$metrics"
check_metric "memcached counted one hit" 'memcached_command_outcomes_total{command="get",outcome="hit"} 1' "$metrics"
check_metric "memcached counted one miss" 'memcached_command_outcomes_total{command="get",outcome="miss"} 1' "$metrics"
check_metric "the films were stored once" 'memcached_command_outcomes_total{command="set",outcome="stored"} 1' "$metrics"
check "the pool's gauges" 'memcached_pool_connections{state="open"}' "$metrics"

jar="$workdir/cookies"
check "a first visit starts a session" '"count":1' "$(curl -sS --fail -c "$jar" -b "$jar" "$url/visits")"
check "a second visit finds it in memcached" '"count":2' "$(curl -sS --fail -c "$jar" -b "$jar" "$url/visits")"
metrics=$(curl -sS --fail "$url/metrics")
# The session was created with add, read with get, and updated with gets and cas, which keep
# its expiry.
check_metric "the session was created" 'memcached_command_outcomes_total{command="add",outcome="stored"} 1' "$metrics"
check_metric "the session was updated" 'memcached_command_outcomes_total{command="cas",outcome="stored"} 1' "$metrics"

# A graceful shutdown: SIGTERM, the server stops, the memcached client closes, exit status 0.
kill -TERM "$service_pid"
for _ in $(seq 1 300); do
    kill -0 "$service_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$service_pid" 2>/dev/null; then
    echo "FAILED: FilmService did not stop within 30 s of SIGTERM" >&2
    failures=$((failures + 1))
else
    status=0
    wait "$service_pid" || status=$?
    if [ "$status" -eq 0 ]; then echo "ok: FilmService shut down gracefully"; else
        echo "FAILED: FilmService exited with status $status on SIGTERM" >&2
        failures=$((failures + 1))
    fi
    service_pid=""
fi
echo "FilmService: checked over HTTP in $((SECONDS - started)) s, $failures failed"
[ "$failures" -eq 0 ]
