"""An independent implementation of libketama's continuum, to check the Swift client's consistent
distributions against.

libketama gives each server floorf(weight / total * 40.0 * servers) MD5 digests of "<name>-<i>":
the share is a C float, the product a double, rounded to a float for floorf (which for some numbers
of servers, such as 61, gives 39 digests, not 40). Each digest gives 4 points (bytes 4h..4h+3 read little-endian). A key hashes to the first 4 bytes of its
MD5, little-endian, and goes to the first point at or after that value, wrapping to the first point.

    ketama_reference.py --servers NAME[@WEIGHT],... --keys FILE   prints {key: name}
"""

import argparse
import bisect
import hashlib
import json
import math
import struct
import sys


def float32(value):
    """libketama computes the share as a C float."""
    return struct.unpack("f", struct.pack("f", value))[0]


def continuum(servers):
    total = sum(weight for _, weight in servers)
    points = []
    for name, weight in servers:
        share = float32(float32(weight) / float32(total))
        for i in range(math.floor(float32(share * 40.0 * float32(len(servers))))):
            digest = hashlib.md5(("%s-%d" % (name, i)).encode()).digest()
            for h in range(4):
                points.append((int.from_bytes(digest[4 * h : 4 * h + 4], "little"), name))
    points.sort(key=lambda point: point[0])
    return points


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", required=True)
    parser.add_argument("--keys", required=True)
    args = parser.parse_args()
    servers = []
    for item in args.servers.split(","):
        name, _, weight = item.partition("@")
        servers.append((name, int(weight) if weight else 1))
    ring = continuum(servers)
    values = [value for value, _ in ring]
    with open(args.keys) as file:
        keys = json.load(file)
    mapping = {}
    for key in keys:
        point = int.from_bytes(hashlib.md5(key.encode("utf-8")).digest()[:4], "little")
        index = bisect.bisect_left(values, point)
        mapping[key] = ring[index % len(ring)][1]
    json.dump(mapping, sys.stdout)


if __name__ == "__main__":
    main()
