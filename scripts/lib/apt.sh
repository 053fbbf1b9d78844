# Installs Debian packages for the set-up scripts; source it, then call apt_install.

# apt_install PACKAGE...: installs the packages named (with none, does nothing), through sudo when
# not root. Returns non-zero when apt-get fails.
apt_install() {
    [ $# -gt 0 ] || return 0
    echo "installing: $*"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # `env` carries the variable through sudo, which resets the environment.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
