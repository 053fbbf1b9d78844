"""The Python side of the pymemcache interoperability tests: the real pymemcache from PyPI writing,
reading and routing keys on servers the Swift tests started.

Every command prints one JSON document on stdout. Servers are `host:port`, comma-separated.

    keys  --count N
        prints the N keys `write` writes, in order (a JSON list)
    write --routes FILE --count N
        writes N keys of every kind of interop_values.KINDS, each through a plain pymemcache
        Client of the server FILE ({key: "host:port"}) names for it, so that the values do not
        depend on key mapping; prints [{"key", "kind", "type", "value"}] (bytes as hex)
    read  --routes FILE
        reads every key of FILE from the server it names; prints {key: {"type", "value"}}
    map   --servers S --keys FILE
        prints {key: node}, the node pymemcache's HashClient (its default hasher, rendezvous
        hashing with murmur3_32 of "node-key") picks for each key of FILE (a JSON list), the
        servers given in this order in any form HashClient takes; a node is named "host:port" (an
        IPv6 host without brackets) or, for a Unix socket, by its path. No server is contacted.

For example, with the servers started:

    .venv-python/bin/python Tests/Python/pymemcache_interop.py map \\
        --servers 127.0.0.1:21001,127.0.0.1:21002 --keys keys.json

Clients use pymemcache's own serde, CompressedSerde over pickle_serde (min_compress_len 100), with
JSON in place of pickle: the `pickle` module pymemcache.serde calls is replaced by one whose
Pickler and Unpickler write and read JSON, so pymemcache still picks every flag itself (bytes 0,
str 16, int 2, anything else, bool and float included, 1; compressed adds 8).
"""

import argparse
import json
import sys
import types

import pymemcache
import pymemcache.serde
from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient

from interop_values import MIN_COMPRESS_LEN, JSONPickler, JSONUnpickler, describe, load, written

assert pymemcache.__version__ == "4.0.0", pymemcache.__version__

pymemcache.serde.pickle = types.SimpleNamespace(Pickler=JSONPickler, Unpickler=JSONUnpickler)
SERDE = pymemcache.serde.CompressedSerde(serde=pymemcache.serde.pickle_serde, min_compress_len=MIN_COMPRESS_LEN)


class Routed:
    """One plain pymemcache Client per server, each key sent to the server a routes file names."""

    def __init__(self, routes):
        self.routes = routes
        # Bounded waits: a stalled server fails the script instead of hanging the test run.
        self.clients = {
            address: Client(address, serde=SERDE, connect_timeout=10, timeout=10)
            for address in sorted(set(routes.values()))
        }

    def client(self, key):
        return self.clients[self.routes[key]]


def keys(args):
    json.dump([written(i)[0] for i in range(args.count)], sys.stdout)


def write(args):
    routed = Routed(load(args.routes))
    result = []
    for i in range(args.count):
        key, kind, value = written(i)
        if not routed.client(key).set(key, value, noreply=False):
            sys.exit("set %s failed" % key)
        result.append(dict(key=key, kind=kind, **describe(value)))
    json.dump(result, sys.stdout)


def read(args):
    routed = Routed(load(args.routes))
    got = {}
    for address, mc in routed.clients.items():
        got.update(mc.get_many([key for key, server in routed.routes.items() if server == address]))
    json.dump({key: describe(value) for key, value in got.items()}, sys.stdout)


def route(args):
    hc = HashClient(args.servers.split(","), serde=SERDE)
    # The hasher's node names: "host:port" (an IPv6 host without brackets) or a Unix socket's path.
    json.dump({key: hc.hasher.get_node(key) for key in load(args.keys)}, sys.stdout)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["keys", "write", "read", "map"])
    parser.add_argument("--servers")
    parser.add_argument("--routes")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--keys")
    args = parser.parse_args()
    {"keys": keys, "write": write, "read": read, "map": route}[args.command](args)


if __name__ == "__main__":
    main()
