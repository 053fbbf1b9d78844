#!/usr/bin/env bash
# Creates Benchmarks/.venv (git-ignored) holding the Python peers of the benchmark and matplotlib,
# from PyPI.
# Does nothing when they are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
source ../scripts/lib/apt.sh

venv=.venv
requirements=python/requirements.txt

installed() {
    [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import pylibmc, pymemcache, memcache, matplotlib" 2>/dev/null
}

installed && exit 0

missing=()
command -v python3 >/dev/null 2>&1 && python3 -c "import ensurepip, venv" 2>/dev/null || missing+=(python3 python3-venv)
# pylibmc compiles a C extension against libmemcached and zlib.
python3 -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
    2>/dev/null || missing+=(python3-dev)
[ -f /usr/include/libmemcached-1.0/memcached.h ] || missing+=(libmemcached-dev)
[ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
apt_install ${missing[@]+"${missing[@]}"}

echo "creating $venv with $(grep -v '^#' "$requirements" | tr '\n' ' ')"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
installed || { echo "the Python peers did not install into $venv" >&2; exit 1; }
