#!/usr/bin/env python3
"""Reads the rows FilmCache cached under top5films, with python-memcached, and prints them as the
MySQL manual's Python example does.

FilmCache (Swift) stores the rows as JSON under flag 1, python-memcached's "pickled" flag. A
python-memcached client reads them when it is given a JSON unpickler instead of pickle's, as the
manual advises for data shared between languages; the pickler below makes it write JSON as well.

    pip install python-memcached==1.62
    python3 Examples/python/read_top5films.py --servers 127.0.0.1:11211
"""

import argparse
import json
import os
import sys

import memcache


class JSONPickler:
    """Stands in for pickle.Pickler: python-memcached calls Pickler(file, protocol=...).dump(value)."""

    def __init__(self, file, protocol=None):
        self.file = file

    def dump(self, value):
        self.file.write(json.dumps(value, separators=(",", ":")).encode("utf-8"))


class JSONUnpickler:
    """Stands in for pickle.Unpickler: python-memcached calls Unpickler(file).load()."""

    def __init__(self, file):
        self.file = file

    def load(self):
        return json.loads(self.file.read().decode("utf-8"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--servers",
        default=os.environ.get("MEMCACHED_SERVERS") or "127.0.0.1:11211",
        help="comma-separated host:port list (default: $MEMCACHED_SERVERS, then 127.0.0.1:11211)",
    )
    args = parser.parse_args()

    memc = memcache.Client(args.servers.split(","), pickler=JSONPickler, unpickler=JSONUnpickler)
    popularfilms = memc.get("top5films")
    if not popularfilms:
        # python-memcached answers None both for a miss and for a value its unpickler rejects.
        print("top5films is not in memcached, or is not JSON: run FilmCache first", file=sys.stderr)
        return 1
    print("Loaded data from memcached")
    for row in popularfilms:
        print("%s, %s" % (row["film_id"], row["title"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
