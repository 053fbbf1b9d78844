"""The benchmark's workloads through the Python clients users would pick instead of ours:
pylibmc, pymemcache and python-memcached, each with its defaults, as a user gets it (pymemcache's
sets are noreply=True; none of the three turns TCP_NODELAY on).

MemcachedBench runs this with --serve against the memcached it started and interleaves these runs
with its own (same server, same run, same CPU, since it is the benchmark's child). It can also run
alone against any server:

    python bench.py --server 127.0.0.1:11211 [--scale 1] [--reps 3] [--only W1,W4]
"""

import argparse
import json
import resource
import sys
import threading
import time

SMALL = bytes((0x41 + i % 26) for i in range(100))
LARGE = bytes((i * 31) & 0xFF for i in range(512 * 1024))
KEY_COUNT = 10_000
BATCH = 100


def cpu_seconds():
    # The whole process, every thread, as getrusage(RUSAGE_SELF) on the Swift side.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def mixed_operations(count, key_count):
    """The same 90% get / 10% set sequence as the Swift side (SplitMix64, same seed)."""
    mask = (1 << 64) - 1
    state = 0x9E3779B97F4A7C15
    operations = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        mixed = state
        mixed = ((mixed ^ (mixed >> 30)) * 0xBF58476D1CE4E5B9) & mask
        mixed = ((mixed ^ (mixed >> 27)) * 0x94D049BB133111EB) & mask
        mixed ^= mixed >> 31
        operations.append((mixed % key_count, (mixed >> 40) % 10 == 0))
    return operations


class Peer:
    """One client library, behind the few calls the workloads need."""

    def __init__(self, name, make):
        self.name = name
        self.make = make


def make_peers(host, port):
    import memcache
    import pylibmc
    from pymemcache.client.base import Client as PymemcacheClient

    address = f"{host}:{port}"
    return [
        Peer("pylibmc", lambda binary=False: PylibmcAdapter(pylibmc.Client([address], binary=binary))),
        Peer("pymemcache", lambda binary=False: PymemcacheAdapter(PymemcacheClient((host, port)))),
        Peer("python-memcached", lambda binary=False: PythonMemcachedAdapter(memcache.Client([address]))),
    ]


class PylibmcAdapter:
    def __init__(self, client):
        self.client = client

    def get(self, key):
        return self.client.get(key)

    def set(self, key, value):
        return self.client.set(key, value)

    def get_multi(self, keys):
        return self.client.get_multi(keys)

    def set_multi(self, mapping):
        return self.client.set_multi(mapping)


class PymemcacheAdapter:
    def __init__(self, client):
        self.client = client

    def get(self, key):
        return self.client.get(key)

    def set(self, key, value):
        # Default noreply=True: the set returns without waiting for the server.
        return self.client.set(key, value)

    def get_multi(self, keys):
        return self.client.get_many(keys)

    def set_multi(self, mapping):
        return self.client.set_many(mapping)


class PythonMemcachedAdapter:
    def __init__(self, client):
        self.client = client

    def get(self, key):
        return self.client.get(key)

    def set(self, key, value):
        return self.client.set(key, value)

    def get_multi(self, keys):
        return self.client.get_multi(keys)

    def set_multi(self, mapping):
        return self.client.set_multi(mapping)


def keys(prefix, count=KEY_COUNT):
    return [f"{prefix}{i}" for i in range(count)]


class Workloads:
    """Each workload: a setup on a client, then a step function run `count` times."""

    def __init__(self, scale):
        self.scale = scale

    def scaled(self, count):
        return max(1, round(count * self.scale))

    def all(self):
        w6_keys = keys("bench:w6:")
        w6_ops = mixed_operations(self.scaled(200_000), KEY_COUNT)
        w4_keys = keys("bench:w4:")
        w4_batches = [w4_keys[i:i + BATCH] for i in range(0, KEY_COUNT, BATCH)]
        w7_keys = keys("bench:w7:")
        w7_batches = [{k: SMALL for k in w7_keys[i:i + BATCH]} for i in range(0, KEY_COUNT, BATCH)]
        w2_keys = keys("bench:w2:")
        w3_keys = keys("bench:w3:missing:")

        def get_hit(client, count):
            for _ in range(count):
                assert client.get("bench:w1") is not None

        def set_loop(client, count):
            for i in range(count):
                client.set(w2_keys[i % KEY_COUNT], SMALL)

        def get_miss(client, count):
            for i in range(count):
                assert client.get(w3_keys[i % KEY_COUNT]) is None

        def multi_get(client, count):
            for i in range(count):
                assert len(client.get_multi(w4_batches[i % len(w4_batches)])) == BATCH

        def large(client, count):
            for _ in range(count):
                client.set("bench:w5", LARGE)
                assert len(client.get("bench:w5")) == len(LARGE)

        def mixed_slice(client, operations):
            for index, is_set in operations:
                if is_set:
                    client.set(w6_keys[index], SMALL)
                else:
                    client.get(w6_keys[index])

        def mixed(client, count):
            mixed_slice(client, w6_ops[:count])

        def multi_set(client, count):
            for i in range(count):
                client.set_multi(w7_batches[i % len(w7_batches)])
            # Reply-less sets may still be in flight: one round trip ends the run, as on the Swift side.
            client.get("rawbench:sync")

        def store_w1(client):
            client.set("bench:w1", SMALL)

        def store_w4(client):
            for key in w4_keys:
                client.set(key, SMALL)
            client.get("rawbench:sync")

        def store_w6(client):
            for key in w6_keys:
                client.set(key, SMALL)
            client.get("rawbench:sync")

        # (id, count, units per step, operations per step, setup, step, binary)
        return [
            ("W1", self.scaled(200_000), 1, 1, store_w1, get_hit, False),
            ("W2", self.scaled(200_000), 1, 1, None, set_loop, False),
            ("W3", self.scaled(200_000), 1, 1, None, get_miss, False),
            ("W4", self.scaled(5_000), BATCH, BATCH, store_w4, multi_get, False),
            ("W5", self.scaled(2_000), 2 * len(LARGE) / 1e6, 1, None, large, False),
            ("W6", len(w6_ops), 1, 1, store_w6, mixed, False),
            ("W7", self.scaled(5_000), BATCH, BATCH, None, multi_set, False),
            ("W1b", self.scaled(200_000), 1, 1, store_w1, get_hit, True),
            ("W4b", self.scaled(5_000), BATCH, BATCH, store_w4, multi_get, True),
        ], (w6_ops, mixed_slice, store_w6)


def run_threads(peer, operations, threads, mixed_slice):
    """W8: W6 split over `threads` threads, each with a client of its own, connected beforehand."""
    per = len(operations) // threads
    slices = [operations[i * per:(i + 1) * per if i + 1 < threads else len(operations)] for i in range(threads)]
    clients = [peer.make() for _ in range(threads)]
    for client in clients:
        client.get("rawbench:sync")
    workers = [threading.Thread(target=mixed_slice, args=(c, s)) for c, s in zip(clients, slices)]
    start = time.perf_counter()
    cpu = cpu_seconds()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - start, cpu_seconds() - cpu


# A peer whose run would take longer than this at full count runs fewer steps (reported): pymemcache
# with its default noreply sets and no TCP_NODELAY waits for a 40 ms delayed ACK after each set.
MAX_RUN_SECONDS = 20.0


class Server:
    """Serves MemcachedBench, which interleaves these runs with its own: one JSON command per line
    on stdin, one JSON answer per line on stdout.

    {"cmd": "prepare", "workload": "W1"} -> {"peers": [{"name": ..., "count": ...}, ...]}
    {"cmd": "run", "workload": "W1", "peer": "pylibmc"} -> {"seconds": s, "cpu": s, "count": n}
    """

    def __init__(self, host, port, scale):
        self.peers = make_peers(host, port)
        self.workloads, (self.w6_ops, self.mixed_slice, self.store_w6) = Workloads(scale).all()
        self.prepared = {}

    def prepare(self, workload_id):
        if workload_id == "W8s":
            # Fire-and-forget sets from threads: no peer here sends them the same way (each of
            # ours returns once written); the rows compare ours with raw C.
            return {"peers": []}
        if workload_id == "W8g":
            # W8's operations with every set turned into a get of the same key.
            self.w8g_ops = [(index, False) for index, _ in self.w6_ops]
            for peer in self.peers:
                self.store_w6(peer.make())
            entries = []
            for peer in self.peers:
                name = f"{peer.name}, 16 threads"
                count = self.capped(lambda n: run_threads(peer, self.w8g_ops[:n], 16, self.mixed_slice)[0],
                                    len(self.w8g_ops))
                self.prepared[("W8g", name)] = (peer, 16, count)
                entries.append({"name": name, "count": count})
            return {"peers": entries}
        if workload_id == "W8":
            for peer in self.peers:
                self.store_w6(peer.make())
            entries = []
            for threads in (4, 16):
                for peer in self.peers:
                    name = f"{peer.name}, {threads} threads"
                    count = self.capped(lambda n: run_threads(peer, self.w6_ops[:n], threads, self.mixed_slice)[0],
                                        len(self.w6_ops))
                    self.prepared[("W8", name)] = (peer, threads, count)
                    entries.append({"name": name, "count": count})
            return {"peers": entries}
        workload = next(w for w in self.workloads if w[0] == workload_id)
        _, count, _, _, setup, step, binary = workload
        entries = []
        for peer in self.peers:
            if binary and peer.name != "pylibmc":
                continue
            client = peer.make(binary)
            if setup:
                setup(client)
            name = peer.name + (", binary" if binary else "")

            def timed(n, client=client):
                start = time.perf_counter()
                step(client, n)
                return time.perf_counter() - start

            capped = self.capped(timed, count)
            self.prepared[(workload_id, name)] = (client, step, capped)
            entries.append({"name": name, "count": capped})
        return {"peers": entries}

    @staticmethod
    def capped(timed, count):
        """Warms up with 1/50 of the count (as the Swift side does) and caps the count so that one
        run stays under MAX_RUN_SECONDS."""
        warm = max(1, count // 50)
        seconds = timed(warm)
        estimate = seconds * count / warm
        if estimate <= MAX_RUN_SECONDS:
            return count
        return max(warm, int(count * MAX_RUN_SECONDS / estimate))

    def run(self, workload_id, name):
        if workload_id in ("W8", "W8g"):
            peer, threads, count = self.prepared[(workload_id, name)]
            operations = self.w6_ops if workload_id == "W8" else self.w8g_ops
            seconds, cpu = run_threads(peer, operations[:count], threads, self.mixed_slice)
            return {"seconds": seconds, "cpu": cpu, "count": count}
        client, step, count = self.prepared[(workload_id, name)]
        cpu = cpu_seconds()
        start = time.perf_counter()
        step(client, count)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "cpu": cpu_seconds() - cpu, "count": count}

    def serve(self):
        for line in sys.stdin:
            command = json.loads(line)
            try:
                if command["cmd"] == "prepare":
                    answer = self.prepare(command["workload"])
                elif command["cmd"] == "run":
                    answer = self.run(command["workload"], command["peer"])
                else:
                    answer = {"error": f"unknown command {command['cmd']}"}
            except Exception as error:  # reported to the Swift side, which stops the run
                answer = {"error": f"{type(error).__name__}: {error}"}
            print(json.dumps(answer), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="HOST:PORT of a running memcached")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default=None, help="workload IDs, such as W1,W4")
    parser.add_argument("--serve", action="store_true", help="take commands from MemcachedBench on stdin")
    arguments = parser.parse_args()
    host, port = arguments.server.rsplit(":", 1)
    server = Server(host, int(port), arguments.scale)
    if arguments.serve:
        server.serve()
        return
    # Standalone: the peers alone, interleaved, medians printed.
    ids = arguments.only.split(",") if arguments.only else [w[0] for w in server.workloads] + ["W8"]
    for workload_id in ids:
        entries = server.prepare(workload_id)["peers"]
        rates = {entry["name"]: [] for entry in entries}
        for _ in range(arguments.reps):
            for entry in entries:
                result = server.run(workload_id, entry["name"])
                units = next((w[2] for w in server.workloads if w[0] == workload_id), 1)
                rates[entry["name"]].append(result["count"] * units / result["seconds"])
        for name, values in rates.items():
            values.sort()
            print(f"{workload_id} {name}: median {values[len(values) // 2]:,.0f} (min {values[0]:,.0f}, max {values[-1]:,.0f})")


if __name__ == "__main__":
    main()
