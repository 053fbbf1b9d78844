#!/usr/bin/env bash
# Installs what the build, the tests and the demo need, and only what is missing.
# Usage: install-deps.sh [--examples]
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"

missing=()
pkg-config --exists libmemcached 2>/dev/null || missing+=(libmemcached-dev)
[ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
command -v memcached >/dev/null 2>&1 || [ -x /usr/bin/memcached ] || missing+=(memcached)
# The twemproxy tests run the real proxy in front of three memcached servers.
command -v nutcracker >/dev/null 2>&1 || [ -x /usr/sbin/nutcracker ] || [ -x /usr/bin/nutcracker ] || missing+=(nutcracker)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
# The SASL tests create a Cyrus password database and authenticate with PLAIN.
command -v saslpasswd2 >/dev/null 2>&1 || [ -x /usr/sbin/saslpasswd2 ] || missing+=(sasl2-bin)
ls /usr/lib/*/sasl2/libplain.so* >/dev/null 2>&1 || missing+=(libsasl2-modules)
# --examples: also the C headers the Examples package (FilmCache) builds against.
if [ "${1:-}" = "--examples" ]; then
    pkg-config --exists libmariadb 2>/dev/null || missing+=(libmariadb-dev)
    [ -f /usr/include/sqlite3.h ] || missing+=(libsqlite3-dev)
fi

apt_install ${missing[@]+"${missing[@]}"}

# The real python-memcached the interoperability tests run against, in .venv-python.
"$(dirname "$0")/install-python-deps.sh"
