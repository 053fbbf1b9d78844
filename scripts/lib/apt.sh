# Installs Debian packages for the set-up scripts; source it, then call apt_install.

# apt_install PACKAGE...: installs the packages named (with none, does nothing), through sudo when
# not root. Waits (up to 10 minutes) while another apt or dpkg process holds its locks, as
# unattended upgrades on a fresh machine do. Returns non-zero when apt-get fails otherwise.
apt_install() {
    [ $# -gt 0 ] || return 0
    echo "installing: $*"
    apt_get_waiting update -qq &&
        apt_get_waiting install -y -qq "$@" >/dev/null
}

# apt_get_waiting ARGUMENT...: apt-get with the arguments given, retried while a lock is held.
# DPkg::Lock::Timeout makes apt wait for dpkg's lock; `apt-get update` takes the lists lock,
# which that option does not cover in every apt version, hence the retry on apt's lock message.
apt_get_waiting() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    local attempt output status
    for attempt in $(seq 1 120); do
        # `env` carries the variable through sudo, which resets the environment.
        if output=$($sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@" 2>&1); then
            [ -z "$output" ] || printf '%s\n' "$output"
            return 0
        fi
        status=$?
        if ! grep -qiE "could not get lock|unable to (acquire|lock)" <<<"$output"; then
            printf '%s\n' "$output" >&2
            return "$status"
        fi
        [ "$attempt" -gt 1 ] || echo "apt is busy (another process holds its lock); waiting" >&2
        sleep 5
    done
    printf '%s\n' "$output" >&2
    return "$status"
}
