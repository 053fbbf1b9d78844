# Helpers for scripts that run real servers on loopback; source it, then call the functions.
# Every server is stopped by the pid these functions record, never by name.

# start_memcached DIR: starts memcached on a free loopback port, which memcached picks itself
# (`-p -1` writes "TCP INET: <port>" to MEMCACHED_PORT_FILENAME), with its log in DIR.
# Sets memcached_pid and memcached_port.
start_memcached() {
    local dir=$1
    local port_file="$dir/memcached.port"
    local user_args=()
    # memcached refuses to run as root unless told which user to run as.
    [ "$(id -u)" -eq 0 ] && user_args=(-u root)
    MEMCACHED_PORT_FILENAME="$port_file" memcached -l 127.0.0.1 -p -1 -U 0 "${user_args[@]}" \
        >"$dir/memcached.log" 2>&1 &
    memcached_pid=$!
    for _ in $(seq 1 100); do
        grep -q 'TCP INET: [0-9]' "$port_file" 2>/dev/null && break
        kill -0 "$memcached_pid" 2>/dev/null || break
        sleep 0.05
    done
    memcached_port=$(sed -n 's/^TCP INET: \([0-9]*\).*/\1/p' "$port_file" 2>/dev/null | head -n1)
    if [ -z "$memcached_port" ]; then
        echo "memcached did not start:" >&2
        cat "$dir/memcached.log" >&2
        return 1
    fi
}

# stop_pid PID [SECONDS]: SIGTERM, then SIGKILL if PID is still running after SECONDS (default 30).
stop_pid() {
    local pid=$1 tenths=$((${2:-30} * 10))
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 "$tenths"); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
