#!/usr/bin/env bash
# Installs what the build, the tests and the demo need, and only what is missing.
set -euo pipefail

missing=()
pkg-config --exists libmemcached 2>/dev/null || missing+=(libmemcached-dev)
[ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
command -v memcached >/dev/null 2>&1 || [ -x /usr/bin/memcached ] || missing+=(memcached)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)

if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
