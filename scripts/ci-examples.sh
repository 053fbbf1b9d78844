#!/usr/bin/env bash
# Runs the FilmCache example end to end against real servers on loopback, as .ci/run does:
# memcached on a free port, Debian's MariaDB server in a temporary data directory, the embedded
# SQLite database, and python-memcached reading what Swift cached. Installs what is missing first,
# stops every server it started by pid on every path, and ends with "examples: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/servers.sh
source scripts/lib/apt.sh
root=$(pwd)
started=$SECONDS
export PATH="$PATH:/usr/sbin:/sbin"

workdir=$(mktemp -d "${TMPDIR:-/tmp}/filmcache.XXXXXX")
memcached_pid=""
mariadb_pid=""
cleanup() {
    [ -z "$mariadb_pid" ] || stop_pid "$mariadb_pid" 60
    [ -z "$memcached_pid" ] || stop_pid "$memcached_pid"
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# MARK: - Install

./scripts/install-deps.sh --examples
missing=()
command -v mariadbd >/dev/null 2>&1 || missing+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
apt_install ${missing[@]+"${missing[@]}"}

# install-deps.sh has made .venv-python with python-memcached 1.62 (scripts/install-python-deps.sh).
python=.venv-python/bin/python

# MARK: - Build

swift build --package-path Examples --product FilmCache 2>&1 | tee "$workdir/build.log"
if grep -E "^$root/Examples/(FilmCache|CMariaDB)/.*: warning:" "$workdir/build.log"; then
    echo "warnings in the examples" >&2
    exit 1
fi
filmcache="$(swift build --package-path Examples --show-bin-path)/FilmCache"

# MARK: - Servers

start_memcached "$workdir"
servers="127.0.0.1:$memcached_port"
echo "memcached (pid $memcached_pid) listens on $servers"

# MariaDB in its own data directory, with no option file (--no-defaults) so that nothing from
# /etc/mysql applies, on a free loopback port and a socket in the work directory.
datadir="$workdir/mariadb"
socket="$workdir/mariadb.sock"
mkdir -p "$datadir"
user_args=()
[ "$(id -u)" -eq 0 ] && user_args=(--user=root)
install_db=$(command -v mariadb-install-db || command -v mysql_install_db)
"$install_db" --no-defaults --datadir="$datadir" "${user_args[@]}" --auth-root-authentication-method=normal \
    --skip-test-db >"$workdir/mariadb-install.log" 2>&1 || {
    cat "$workdir/mariadb-install.log" >&2
    exit 1
}
# mariadbd has no "pick a free port and tell me" option: ask the kernel for one that is free now.
mariadb_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mariadbd=$(command -v mariadbd || command -v mysqld)
"$mariadbd" --no-defaults --datadir="$datadir" "${user_args[@]}" --skip-networking=0 --bind-address=127.0.0.1 \
    --port="$mariadb_port" --socket="$socket" --pid-file="$workdir/mariadb.pid" --log-error="$workdir/mariadb.err" \
    --skip-name-resolve --skip-log-bin --innodb-buffer-pool-size=32M >"$workdir/mariadb.out" 2>&1 &
mariadb_pid=$!
as_root=(mariadb --no-defaults --socket="$socket" --user=root)
for _ in $(seq 1 300); do
    "${as_root[@]}" -e 'SELECT 1' >/dev/null 2>&1 && break
    kill -0 "$mariadb_pid" 2>/dev/null || break
    sleep 0.1
done
"${as_root[@]}" -e 'SELECT 1' >/dev/null 2>&1 || {
    echo "MariaDB did not start:" >&2
    cat "$workdir/mariadb.out" "$workdir/mariadb.err" >&2
    exit 1
}
echo "MariaDB (pid $mariadb_pid) listens on 127.0.0.1:$mariadb_port and $socket"

# The seed's database, user and password; the table comes from FilmCache itself, so SQLite and
# MariaDB hold the same generated rows.
"${as_root[@]}" <<'SQL'
CREATE DATABASE sakila;
CREATE USER 'sakila'@'127.0.0.1' IDENTIFIED BY 'password';
CREATE USER 'sakila'@'localhost' IDENTIFIED BY 'password';
GRANT SELECT ON sakila.* TO 'sakila'@'127.0.0.1';
GRANT SELECT ON sakila.* TO 'sakila'@'localhost';
SQL
"$filmcache" --print-sql | "${as_root[@]}" sakila

# MARK: - Checks

passed=0
failed=0
# check NAME EXPECTED ACTUAL: compares two texts and counts the result.
check() {
    if [ "$2" == "$3" ]; then
        passed=$((passed + 1))
        echo "ok: $1"
    else
        failed=$((failed + 1))
        echo "FAILED: $1"
        diff <(printf '%s\n' "$2") <(printf '%s\n' "$3") || true
    fi
}
# run_filmcache NAME ARGS...: runs FilmCache, shows its output, and keeps it without the timing
# line (which must be there) in $output.
run_filmcache() {
    local name=$1 log="$workdir/run.log"
    shift
    echo
    echo "--- $name: FilmCache $*"
    "$filmcache" "$@" >"$log" 2>&1 || echo "(exit status $?)" >>"$log"
    cat "$log"
    grep -q '^Lookup took [0-9.]* ms (' "$log" || echo "(no timing line)" >>"$log"
    output=$(grep -v '^Lookup took [0-9.]* ms (' "$log" || true)
}

rows="2, ACE GOLDFINGER
7, AIRPLANE SIERRA
8, AIRPORT POLLOCK
10, ALADDIN CALENDAR
13, ALI FOREVER"
loaded="Loaded data from memcached
$rows"

check "MariaDB holds the 300 generated films, the seed's five alone at 4.99" $'300\t5' \
    "$("${as_root[@]}" --batch --skip-column-names sakila -e 'SELECT COUNT(*), SUM(rental_rate = 4.99) FROM film')"

tcp="mysql://sakila:password@127.0.0.1:$mariadb_port/sakila"
run_filmcache "MariaDB over TCP, empty cache" --servers "$servers" --mysql "$tcp"
check "first MariaDB run updates memcached" "Updated memcached with MariaDB data" "$output"
run_filmcache "MariaDB over TCP, within the expiry" --servers "$servers" --mysql "$tcp"
check "second MariaDB run loads the rows from memcached" "$loaded" "$output"

echo
echo "--- python-memcached with a JSON unpickler reads what Swift cached"
output=$("$python" Examples/python/read_top5films.py --servers "$servers" 2>&1 || true)
echo "$output"
check "python-memcached reads the MariaDB rows" "$loaded" "$output"

run_filmcache "MariaDB over the Unix socket, --refresh, 1-second expiry" --servers "$servers" --refresh --expiry 1 \
    --mysql "mysql://sakila:password@localhost/sakila?socket=$socket"
check "--refresh over the socket reads MariaDB again" "Updated memcached with MariaDB data" "$output"

# memcached's clock ticks once a second, so an item with a 1-second expiry is gone within 2.
sleep 2.5
export XDG_CACHE_HOME="$workdir/cache"
run_filmcache "SQLite at the default path, after the expiry" --servers "$servers"
check "first SQLite run creates the database and updates memcached" \
    "Created the film table (300 films) in $XDG_CACHE_HOME/swift-libmemcached/FilmCache/sakila.sqlite
Updated memcached with SQLite data" "$output"
run_filmcache "SQLite, within the expiry" --servers "$servers"
check "second SQLite run loads the rows from memcached" "$loaded" "$output"
output=$(MEMCACHED_SERVERS="$servers" "$python" Examples/python/read_top5films.py 2>&1 || true)
check "python-memcached reads the SQLite rows (servers from MEMCACHED_SERVERS)" "$loaded" "$output"

# QuickStart runs every command but flush_all unless asked: FilmCache's rows survive it.
swift build --product QuickStart >/dev/null
quickstart="$(swift build --show-bin-path)/QuickStart"
output=$(MEMCACHED_SERVERS="$servers" "$quickstart" 2>&1 || true)
check "QuickStart skips flush_all without --flush" \
    "flush() skipped: it empties every server, other programs' keys too; run with --flush to include it" \
    "$(grep '^flush()' <<<"$output")"
run_filmcache "SQLite, after QuickStart" --servers "$servers"
check "the rows are still cached after QuickStart" "$loaded" "$output"
output=$(MEMCACHED_SERVERS="$servers" "$quickstart" --flush 2>&1 || true)
check "QuickStart --flush flushes" 'get("films") after flush -> nil' "$(grep '^get("films") after flush' <<<"$output")"

# Port 1 on loopback: nothing listens there, so every memcached call fails at once.
run_filmcache "memcached unreachable" --servers 127.0.0.1:1
check "without memcached the rows still come from the database" \
    "$(printf '%s\n' "Loaded data from SQLite; memcached was not updated" "$rows")" \
    "$(grep -v '^warning: ' <<<"$output")"
check "without memcached a warning says so for the read and for the write" \
    "warning: cannot read top5films from memcached
warning: cannot update memcached" "$(grep -o '^warning: cannot [a-z0-9 ]*memcached' <<<"$output")"

echo
echo "ci-examples took $((SECONDS - started)) s"
echo "examples: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
