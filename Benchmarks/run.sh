#!/usr/bin/env bash
# The benchmark in one command: installs what is missing, builds in release mode, starts its own
# memcached on a free loopback port, runs every workload through raw C, our API and the Python
# peers, and writes the Markdown report to Benchmarks/results/latest.md and its main results as
# an image, Benchmarks/results/latest.png.
#
#   Benchmarks/run.sh            full counts (about 40 minutes on 2 cores)
#   Benchmarks/run.sh --quick    a tenth of every count
#   Benchmarks/run.sh --help     every option
set -euo pipefail
cd "$(dirname "$0")"
source ../scripts/lib/apt.sh

../scripts/install-deps.sh
command -v strace >/dev/null 2>&1 ||
    apt_install strace || echo "strace unavailable: syscall counts will be skipped"
command -v memcaslap >/dev/null 2>&1 ||
    apt_install libmemcached-tools || echo "memcaslap unavailable: the server's view will leave it out"
./python/setup.sh
swift build -c release --product MemcachedBench
.build/release/MemcachedBench "$@"
# The report's main results as a picture, beside it.
case " $* " in
*" --help "* | *" -h "* | *" --markdown "*) ;;
*) .venv/bin/python python/plot.py results/latest.md results/latest.png ;;
esac
