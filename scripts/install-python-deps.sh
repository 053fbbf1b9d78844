#!/usr/bin/env bash
# Creates .venv-python in the repository root holding the real Python memcached clients from PyPI
# that the interoperability tests run against: python-memcached, pylibmc and pymemcache. Does
# nothing when the right versions are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/apt.sh

venv=.venv-python
# The pins, in one place: distribution name and version.
pins=(
    "python-memcached==1.62"
    "pylibmc==1.6.3"
    "pymemcache==4.0.0"
)

installed() {
    [ -x "$venv/bin/python" ] &&
        "$venv/bin/python" - "${pins[@]}" 2>/dev/null <<'PY'
import importlib.metadata as metadata
import sys

for pin in sys.argv[1:]:
    name, _, version = pin.partition("==")
    try:
        if metadata.version(name) != version:
            sys.exit(1)
    except metadata.PackageNotFoundError:
        sys.exit(1)
import memcache, pylibmc, pymemcache  # noqa: E401,F401 (pylibmc's C extension must load)
PY
}

installed && exit 0

# Debian's python3 ships without ensurepip; python3-venv brings it.
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import ensurepip, venv" 2>/dev/null; then
    apt_install python3 python3-venv
fi

echo "creating $venv with ${pins[*]}"
rm -rf "$venv"
python3 -m venv "$venv"
pip_install() { "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}"; }
# PyPI has pylibmc wheels (with libmemcached inside) for common Linux platforms and Pythons only;
# elsewhere pip compiles its C extension, which needs a C compiler, Python's headers, and
# libmemcached's and zlib's headers: those that are missing are installed, then pip tries again.
if ! pip_install; then
    missing=()
    command -v gcc >/dev/null 2>&1 || missing+=(gcc)
    python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
        missing+=(python3-dev)
    [ -f /usr/include/libmemcached/memcached.h ] || missing+=(libmemcached-dev)
    [ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
    [ ${#missing[@]} -gt 0 ] || { echo "pip failed, and pylibmc's build needs are all there" >&2; exit 1; }
    apt_install "${missing[@]}"
    pip_install
fi
installed || { echo "${pins[*]} did not install into $venv" >&2; exit 1; }
