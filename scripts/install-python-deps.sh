#!/usr/bin/env bash
# Creates .venv-python in the repository root holding the real python-memcached from PyPI, which the
# interoperability tests run against. Does nothing when the right version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/apt.sh

venv=.venv-python
version=1.62

installed() {
    [ -x "$venv/bin/python" ] &&
        "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('python-memcached') != '$version')" \
            2>/dev/null
}

installed && exit 0

# Debian's python3 ships without ensurepip; python3-venv brings it.
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import ensurepip, venv" 2>/dev/null; then
    apt_install python3 python3-venv
fi

echo "creating $venv with python-memcached==$version"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "python-memcached==$version"
installed || { echo "python-memcached $version did not install into $venv" >&2; exit 1; }
