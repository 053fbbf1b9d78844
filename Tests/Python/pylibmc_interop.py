"""The Python side of the pylibmc interoperability tests: the real pylibmc from PyPI writing,
reading and routing keys on servers the Swift tests started.

Every command prints one JSON document on stdout. Servers are given as a comma-separated list of
`host:port`, each optionally followed by `@weight` (pylibmc's `"host:port:weight"`), in the order
pylibmc is given them. `--behaviors` is a JSON object of pylibmc behaviors, such as
'{"ketama_weighted": true}'; the default, '{}', is libmemcached's defaults (one-at-a-time hash,
modula distribution).

    write --servers S [--behaviors B] --count N
        writes N keys of every kind of interop_values.KINDS (long text with min_compress_len 100);
        prints [{"key", "kind", "type", "value"}] (bytes as hex)
    read  --servers S [--behaviors B] --keys FILE
        reads the keys in FILE (a JSON list) with one get_multi; prints {key: {"type", "value"}}
    map   --servers S [--behaviors B] --keys FILE
        prints {key: "host:port"}, the server pylibmc picks for each key. pylibmc cannot say which
        server a key maps to, so each key is set through pylibmc (to a value naming it and the run), then
        looked for on every server with a client of that server alone; a key found on no server or
        on several fails the command. The servers should hold none of the keys beforehand.

For example, with the servers started:

    .venv-python/bin/python Tests/Python/pylibmc_interop.py map \\
        --servers 127.0.0.1:21001,127.0.0.1:21002@3 --behaviors '{"ketama": true}' --keys keys.json

Objects, and floats, which pylibmc pickles (flag 1), are JSON instead: the Client subclass below
overrides serialize and deserialize for that flag only, and leaves every other type to pylibmc.
"""

import argparse
import json
import sys
import uuid

import pylibmc

from interop_values import MIN_COMPRESS_LEN, PICKLE, describe, from_json, load, servers, to_json, written

assert pylibmc.__version__ == "1.6.3", pylibmc.__version__

# pylibmc's PYLIBMC_FLAG_TYPES: the flags that name a type (pickle, integer, long, text).
TYPE_FLAGS = 1 | 2 | 4 | 16


class JSONClient(pylibmc.Client):
    """pylibmc with JSON in place of pickle; pylibmc calls these only when a subclass overrides them."""

    def serialize(self, value):
        data, flags = super().serialize(value)
        if flags & TYPE_FLAGS == PICKLE:
            data = to_json(value)
        return data, flags

    def deserialize(self, data, flags):
        # pylibmc 1.6.3's get (not get_multi) passes None for an empty value to a Python-level
        # deserialize.
        if data is None:
            data = b""
        if flags & TYPE_FLAGS == PICKLE:
            return from_json(data)
        return super().deserialize(data, flags)


def client(args, spec=None):
    pairs = servers(spec or args.servers)
    return JSONClient(["%s:%d" % pair for pair in pairs], behaviors=json.loads(args.behaviors))


def write(args):
    mc = client(args)
    result = []
    for i in range(args.count):
        key, kind, value = written(i)
        min_compress_len = MIN_COMPRESS_LEN if kind == "compressed" else 0
        if not mc.set(key, value, min_compress_len=min_compress_len):
            sys.exit("set %s failed" % key)
        result.append(dict(key=key, kind=kind, **describe(value)))
    json.dump(result, sys.stdout)


def read(args):
    got = client(args).get_multi(load(args.keys))
    json.dump({key: describe(value) for key, value in got.items()}, sys.stdout)


def route(args):
    keys = load(args.keys)
    mc = client(args)
    # A value of this run alone, so that what an earlier run left behind is not taken for it.
    marker = "map:%s:" % uuid.uuid4()
    for key in keys:
        if not mc.set(key, marker + key):
            sys.exit("set %s failed" % key)
    mapping = {}
    for address, _ in servers(args.servers):
        found = JSONClient([address]).get_multi(keys)
        for key, value in found.items():
            if value != marker + key:
                continue
            if key in mapping:
                sys.exit("%s is on %s and %s" % (key, mapping[key], address))
            mapping[key] = address
    missing = [key for key in keys if key not in mapping]
    if missing:
        sys.exit("%d keys are on no server, such as %s" % (len(missing), missing[:5]))
    mc.delete_multi(keys)
    json.dump({key: mapping[key] for key in keys}, sys.stdout)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["write", "read", "map"])
    parser.add_argument("--servers", required=True)
    parser.add_argument("--behaviors", default="{}")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--keys")
    args = parser.parse_args()
    {"write": write, "read": read, "map": route}[args.command](args)


if __name__ == "__main__":
    main()
