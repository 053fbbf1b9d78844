#!/usr/bin/env bash
# The README's `make demo`: starts a memcached on a free loopback port, runs the FilmCache example
# twice against it (the first run reads the database, the second the cache, each printing how long
# its lookup took), and stops that server. The database is a SQLite file in a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/servers.sh

workdir=$(mktemp -d)
memcached_pid=""
cleanup() {
    [ -z "$memcached_pid" ] || stop_pid "$memcached_pid"
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_memcached "$workdir"
echo "memcached (pid $memcached_pid) listens on 127.0.0.1:$memcached_port"

swift build --package-path Examples --product FilmCache
run_filmcache() {
    local args=(--servers "127.0.0.1:$memcached_port" --database "$workdir/sakila.sqlite")
    echo
    echo "\$ swift run --package-path Examples FilmCache ${args[*]}"
    swift run --skip-build --package-path Examples FilmCache "${args[@]}"
}

echo
echo "First run: memcached is empty, so FilmCache reads SQLite and caches the top five films."
run_filmcache
echo
echo "Second run, within the 60-second expiry: the rows come from memcached."
run_filmcache

echo
echo "Also: Examples/python/read_top5films.py reads the same key with python-memcached,"
echo "FilmCache --mysql mysql://user:password@host:port/sakila reads MariaDB or MySQL instead of SQLite,"
echo "and 'swift run QuickStart' runs every memcached command (MEMCACHED_SERVERS=host:port)."
