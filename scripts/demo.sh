#!/usr/bin/env bash
# Starts a memcached on a free loopback port, runs the demo against it, and stops that server.
set -euo pipefail
cd "$(dirname "$0")/.."

workdir=$(mktemp -d)
port_file="$workdir/port"
user_args=()
[ "$(id -u)" -eq 0 ] && user_args=(-u root)

MEMCACHED_PORT_FILENAME="$port_file" memcached -l 127.0.0.1 -p -1 -U 0 "${user_args[@]}" >"$workdir/memcached.log" 2>&1 &
server_pid=$!
cleanup() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    rm -rf "$workdir"
}
trap cleanup EXIT

for _ in $(seq 1 100); do
    grep -q 'TCP INET: [0-9]' "$port_file" 2>/dev/null && break
    sleep 0.05
done
port=$(sed -n 's/^TCP INET: \([0-9]*\).*/\1/p' "$port_file" | head -n1)
[ -n "$port" ] || { echo "memcached did not start:"; cat "$workdir/memcached.log"; exit 1; }
echo "memcached (pid $server_pid) listens on 127.0.0.1:$port"

swift build --product QuickStart
MEMCACHED_SERVERS="127.0.0.1:$port" swift run --skip-build QuickStart
