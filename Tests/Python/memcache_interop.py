"""The Python side of the interoperability tests: the real python-memcached 1.62 writing, reading
and routing keys on servers the Swift tests started.

Every command prints one JSON document on stdout. Servers are given as a comma-separated list of
`host:port`, each optionally followed by `@weight` (python-memcached's `("host:port", weight)`).

    write  --servers S --hash H --count N     writes N keys of five kinds; prints what it wrote
    read   --servers S --hash H --keys FILE   reads the keys in FILE (a JSON list); prints what it got
    map    --servers S --hash H --keys FILE   prints the server python-memcached picks for each key
    hash   --keys FILE                        prints cmemcache_hash, crc32, adler32 and MD5 (the first
                                              4 bytes, little-endian) of each key, given in hex
"""

import argparse
import binascii
import hashlib
import json
import sys
import zlib

import memcache

assert memcache.__version__ == "1.62", memcache.__version__


class JSONPickler:
    """What python-memcached calls in place of pickle.Pickler: `JSONPickler(file, protocol=0).dump(value)`."""

    def __init__(self, file, protocol=0):
        self.file = file

    def dump(self, value):
        self.file.write(json.dumps(value).encode("utf-8"))


class JSONUnpickler:
    """What python-memcached calls in place of pickle.Unpickler: `JSONUnpickler(file).load()`."""

    def __init__(self, file):
        self.file = file

    def load(self):
        return json.loads(self.file.read().decode("utf-8"))


HASHES = {
    "default": memcache.cmemcache_hash,
    "crc32": binascii.crc32,
    "adler32": zlib.adler32,
}

KINDS = ["str", "int", "bytes", "compressed", "json"]
MIN_COMPRESS_LEN = 100


def servers(spec):
    result = []
    for item in spec.split(","):
        address, _, weight = item.partition("@")
        result.append((address, int(weight)) if weight else address)
    return result


def client(args):
    memcache.serverHashFunction = HASHES[args.hash]
    return memcache.Client(servers(args.servers), pickler=JSONPickler, unpickler=JSONUnpickler)


def value_for(kind, i):
    if kind == "str":
        return "text-%d-会-é" % i
    if kind == "int":
        return (i * 2654435761) % (2**63) - 2**62
    if kind == "bytes":
        return bytes((i * 31 + j) % 256 for j in range(i % 53))
    if kind == "compressed":
        return ("compressible text %d " % i) * 20
    return {"id": i, "name": "item-%d" % i, "tags": ["t%d" % (i % 7), "会"], "score": i / 4, "nested": {"ok": i % 2 == 0}}


def describe(value):
    """A value as JSON: its Python type and a JSON form of it (bytes as hex)."""
    if isinstance(value, bytes):
        return {"type": "bytes", "value": value.hex()}
    return {"type": type(value).__name__, "value": value}


def write(args):
    mc = client(args)
    written = []
    for i in range(args.count):
        kind = KINDS[i % len(KINDS)]
        key = "py:%s:%d" % (kind, i)
        value = value_for(kind, i)
        min_compress_len = MIN_COMPRESS_LEN if kind == "compressed" else 0
        if not mc.set(key, value, min_compress_len=min_compress_len):
            sys.exit("set %s failed" % key)
        written.append(dict(key=key, kind=kind, **describe(value)))
    json.dump(written, sys.stdout)


def read(args):
    mc = client(args)
    with open(args.keys) as file:
        keys = json.load(file)
    got = {}
    for key in keys:
        value = mc.get(key)
        if value is not None:
            got[key] = describe(value)
    json.dump(got, sys.stdout)


def route(args):
    mc = client(args)
    with open(args.keys) as file:
        keys = json.load(file)
    mapping = {}
    for key in keys:
        server, _ = mc._get_server(key.encode("utf-8"))
        mapping[key] = "%s:%d" % (server.ip, server.port)
    json.dump(mapping, sys.stdout)


def hashes(args):
    with open(args.keys) as file:
        keys = [bytes.fromhex(k) for k in json.load(file)]
    json.dump(
        [
            {
                "cmemcache": memcache.cmemcache_hash(k),
                "crc32": binascii.crc32(k),
                "adler32": zlib.adler32(k),
                "md5": int.from_bytes(hashlib.md5(k).digest()[:4], "little"),
            }
            for k in keys
        ],
        sys.stdout,
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["write", "read", "map", "hash"])
    parser.add_argument("--servers", default="")
    parser.add_argument("--hash", choices=sorted(HASHES), default="default")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--keys")
    args = parser.parse_args()
    {"write": write, "read": read, "map": route, "hash": hashes}[args.command](args)


if __name__ == "__main__":
    main()
