"""What the pylibmc and pymemcache interoperability scripts share: the values they write, how they
print what they read, and JSON in place of pickle for the values a Python client pickles.

Every kind of value the Swift side has a type for, by key index: text, integers (negative, past
Int64 into UInt64), booleans, floats, bytes, long text (compressed when over MIN_COMPRESS_LEN),
dicts, lists, and empty text or bytes.
"""

import json

KINDS = ["str", "int", "bigint", "bool", "float", "bytes", "compressed", "json", "list", "empty"]
MIN_COMPRESS_LEN = 100
PICKLE = 1


def value_for(kind, i):
    if kind == "str":
        return "text-%d-会-é" % i
    if kind == "int":
        return (i * 0x9E3779B97F4A7C15) % (2**63) - 2**62
    if kind == "bigint":
        return 2**63 + i * 7919
    if kind == "bool":
        return i % 3 == 0
    if kind == "float":
        return (i * 0.37 - 100.0) / 3.0
    if kind == "bytes":
        return bytes((i * 31 + j) % 256 for j in range(1 + i % 53))
    if kind == "compressed":
        return ("compressible text %d " % i) * 20
    if kind == "json":
        return {"id": i, "name": "item-%d" % i, "tags": ["t%d" % (i % 7), "会"], "score": i / 4, "nested": {"ok": i % 2 == 0}}
    if kind == "list":
        return ["l%d" % i, "会", str(i % 5)]
    if kind == "empty":
        return "" if (i // len(KINDS)) % 2 == 0 else b""
    raise ValueError(kind)


def written(i):
    """The key, kind and value written at index i."""
    kind = KINDS[i % len(KINDS)]
    return "py:%s:%d" % (kind, i), kind, value_for(kind, i)


def describe(value):
    """A value as JSON: its Python type and a JSON form of it (bytes as hex)."""
    if isinstance(value, bytes):
        return {"type": "bytes", "value": value.hex()}
    return {"type": type(value).__name__, "value": value}


def to_json(value):
    return json.dumps(value).encode("utf-8")


def from_json(data):
    return json.loads(bytes(data).decode("utf-8"))


class JSONPickler:
    """pickle.Pickler's interface (`Pickler(file, protocol).dump(value)`), writing JSON."""

    def __init__(self, file, protocol=None):
        self.file = file

    def dump(self, value):
        self.file.write(to_json(value))


class JSONUnpickler:
    """pickle.Unpickler's interface (`Unpickler(file).load()`), reading JSON."""

    def __init__(self, file):
        self.file = file

    def load(self):
        return from_json(self.file.read())


def servers(spec):
    """`host:port[@weight],...` as (address, weight) pairs."""
    result = []
    for item in spec.split(","):
        address, _, weight = item.partition("@")
        result.append((address, int(weight) if weight else 1))
    return result


def load(path):
    with open(path) as file:
        return json.load(file)
