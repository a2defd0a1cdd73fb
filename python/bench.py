#!/usr/bin/env python3
"""Throughput of larder from Python beside a dict, the seed's design, diskcache and redis.

100,000 keys of 32 bytes, values of 256 bytes, uniform key choice, 90/10 and 100/0
get/set mixes, 1 and 2 processes. Every process runs the same loop over a precomputed
list of operations, so the figures compare the caches, not the load generator. The
seed's design is benches/seed_cache.py's table (one multiprocessing.Lock around a
shared_memory hash table). Prints a Markdown table with ops/s and ratios to larder, and
the get-hit latency of larder and dict.get.

    python3 python/bench.py [--seconds 2] [--peers larder,seed] [--hits-only]

Then the cost of a get hit side by side with the Rust get_into of the same keys.
"""

import argparse
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benches"))
import seed_cache  # noqa: E402

import larder  # noqa: E402

KEYS = 100_000
VALUE_LEN = 256
OPS = 1 << 16


def key(i):
    return seed_cache.key(i)


def val(i, version=0):
    return seed_cache.value(i, version, VALUE_LEN)


def plan(seed, get_pct):
    rng = random.Random(seed)
    return [(rng.random() * 100 < get_pct, key(rng.randrange(KEYS))) for _ in range(OPS)]


def loop(get, put, ops, seconds):
    v = val(1, 1)
    n = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while True:
        for is_get, k in ops:
            if is_get:
                get(k)
            else:
                put(k, v)
        n += len(ops)
        if time.perf_counter() >= end:
            break
    return n / (time.perf_counter() - start)


# Peers: setup() in the parent returns a state passed to client(state) in each worker,
# which returns (get, put, close).


class Dict:
    name = "dict (per process)"

    def setup(self):
        return None

    def client(self, _):
        d = {key(i): val(i) for i in range(KEYS)}
        return d.get, d.__setitem__, lambda: None

    def teardown(self, _):
        pass


class Larder:
    name = "larder"

    def setup(self):
        path = f"/dev/shm/larder-bench-{os.getpid()}.larder"
        c = larder.Cache(path, capacity=128 << 20, max_value_len=4096)
        for i in range(KEYS):
            c.set(key(i), val(i))
        c.close()
        return path

    def client(self, path):
        c = larder.Cache(path)
        return c.get, c.set, c.close

    def teardown(self, path):
        larder.Cache.unlink(path)


class Seed:
    name = "seed design"

    def setup(self):
        from multiprocessing import shared_memory

        slots = KEYS * 2
        shm = shared_memory.SharedMemory(
            create=True, size=slots * (seed_cache.SLOT_HDR + VALUE_LEN)
        )
        t = seed_cache.Table(shm.buf, slots, VALUE_LEN)
        for i in range(KEYS):
            t.set(key(i), val(i))
        del t
        return (shm, mp.get_context("fork").Lock())

    def client(self, state):
        shm, lock = state
        t = seed_cache.Table(shm.buf, KEYS * 2, VALUE_LEN)

        def get(k):
            with lock:
                return t.get(k)

        def put(k, v):
            with lock:
                t.set(k, v)

        return get, put, lambda: None

    def teardown(self, state):
        state[0].close()
        state[0].unlink()


class DiskCache:
    name = "diskcache (/dev/shm)"

    def setup(self):
        import diskcache

        d = tempfile.mkdtemp(dir="/dev/shm", prefix="larder-bench-dc-")
        c = diskcache.Cache(d)
        for i in range(KEYS):
            c.set(key(i), val(i))
        c.close()
        return d

    def client(self, d):
        import diskcache

        c = diskcache.Cache(d)
        return c.get, c.set, c.close

    def teardown(self, d):
        shutil.rmtree(d, ignore_errors=True)


class Redis:
    name = "redis-py (unix socket)"

    def setup(self):
        d = tempfile.mkdtemp(prefix="larder-bench-redis-")
        sock = os.path.join(d, "redis.sock")
        p = subprocess.Popen(
            [
                "redis-server",
                "--port",
                "0",
                "--unixsocket",
                sock,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        import redis

        end = time.monotonic() + 10
        while not os.path.exists(sock):
            if time.monotonic() > end:
                p.kill()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        r = redis.Redis(unix_socket_path=sock)
        pipe = r.pipeline()
        for i in range(KEYS):
            pipe.set(key(i), val(i))
        pipe.execute()
        return (p, sock, d)

    def client(self, state):
        import redis

        r = redis.Redis(unix_socket_path=state[1])
        return r.get, r.set, r.close

    def teardown(self, state):
        state[0].kill()
        state[0].wait(10)
        shutil.rmtree(state[2], ignore_errors=True)


def worker(peer, state, i, get_pct, seconds, barrier, out):
    get, put, close = peer.client(state)
    ops = plan(1000 + i, get_pct)
    barrier.wait(timeout=120)
    out.put(loop(get, put, ops, seconds))
    close()


def measure(peer, state, procs, get_pct, seconds):
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    ps = [
        ctx.Process(target=worker, args=(peer, state, i, get_pct, seconds, barrier, out))
        for i in range(procs)
    ]
    for p in ps:
        p.start()
    try:
        rates = [out.get(timeout=seconds + 180) for _ in ps]
    finally:
        for p in ps:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return sum(rates)


def available(peer):
    if isinstance(peer, DiskCache):
        try:
            import diskcache  # noqa: F401
        except ImportError:
            return "diskcache is not installed"
    if isinstance(peer, Redis):
        if shutil.which("redis-server") is None:
            return "redis-server is not on PATH"
        try:
            import redis  # noqa: F401
        except ImportError:
            return "redis-py is not installed"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--hits-only", action="store_true", help="only the get-hit costs")
    ap.add_argument(
        "--peers",
        default="dict,larder,seed,diskcache,redis",
        help="comma-separated peers of the throughput table",
    )
    args = ap.parse_args()
    if args.hits_only:
        hit_costs()
        return
    by_key = {
        "dict": Dict(),
        "larder": Larder(),
        "seed": Seed(),
        "diskcache": DiskCache(),
        "redis": Redis(),
    }
    peers = [by_key[p] for p in args.peers.split(",")]
    cols = [(90, 1), (90, 2), (100, 1), (100, 2)]
    results = {}
    for peer in peers:
        why = available(peer)
        if why:
            print(f"# {peer.name}: not measured ({why})", file=sys.stderr)
            continue
        state = peer.setup()
        try:
            for get_pct, procs in cols:
                results[(peer.name, get_pct, procs)] = measure(
                    peer, state, procs, get_pct, args.seconds
                )
                print(
                    f"# {peer.name} {get_pct}/{100 - get_pct} x{procs}: "
                    f"{results[(peer.name, get_pct, procs)]:,.0f} ops/s",
                    file=sys.stderr,
                )
        finally:
            peer.teardown(state)

    print(
        f"ops/s, sum over processes; in brackets larder / peer "
        f"({KEYS:,} keys of 32 B, {VALUE_LEN} B values, uniform, {args.seconds:g} s each, "
        f"{os.cpu_count()} CPUs)\n"
    )
    print("| peer | " + " | ".join(f"{g}/{100 - g}, {p} proc" for g, p in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for peer in peers:
        if (peer.name, 90, 1) not in results:
            print(f"| {peer.name} | " + " | ".join("not measured" for _ in cols) + " |")
            continue
        cells = []
        for g, p in cols:
            r = results[(peer.name, g, p)]
            lr = results.get(("larder", g, p))
            ratio = "" if peer.name == "larder" or not lr else f" ({lr / r:.2f}x)"
            cells.append(f"{r:,.0f}{ratio}")
        print(f"| {peer.name} | " + " | ".join(cells) + " |")
    for g in (90, 100):
        if ("larder", g, 2) in results:
            print(
                f"\nlarder {g}/{100 - g}: 2 processes / 1 = "
                f"{results[('larder', g, 2)] / results[('larder', g, 1)]:.2f}x",
                end="",
            )
    print()

    hit_costs()


def per_call(fn, calls, repeat=5):
    """Seconds per call of ``fn()`` (which makes ``calls`` calls), best of ``repeat``."""
    return min(fn() for _ in range(repeat)) / calls


def hit_costs():
    """Per get hit, one process, side by side: the Rust ``get_into`` of each key
    (``Cache._bench_get_into``: a loop in Rust, one reused buffer), the Python ``get``
    of the same keys in the same order, an empty Python loop over them, and
    ``dict.get``. Hot: 1,000 keys (in cache); uniform: all 100,000, shuffled."""
    path = f"/dev/shm/larder-bench-lat-{os.getpid()}.larder"
    c = larder.Cache(path, capacity=128 << 20, max_value_len=4096)
    try:
        for i in range(KEYS):
            c.set(key(i), val(i))
        rows = []
        for name, n_keys, rounds in (("hot", 1000, 200), ("uniform", KEYS, 4)):
            order = list(range(n_keys))
            random.Random(7).shuffle(order)
            # Made in the order they are read, as the Rust side's copies are (and as a
            # server's keys, parsed from each request, are fresh): both sides read keys
            # laid out alike.
            keys = [key(i) for i in order]
            d = {k: val(i) for i, k in enumerate(keys)}
            calls = rounds * len(keys)
            cg, dg = c.get, d.get

            def py_get():
                t = time.perf_counter()
                for _ in range(rounds):
                    for k in keys:
                        cg(k)
                return time.perf_counter() - t

            def empty():
                t = time.perf_counter()
                for _ in range(rounds):
                    for k in keys:
                        pass
                return time.perf_counter() - t

            def dict_get():
                t = time.perf_counter()
                for _ in range(rounds):
                    for k in keys:
                        dg(k)
                return time.perf_counter() - t

            rust = per_call(lambda: c._bench_get_into(keys, rounds), calls)
            chained = per_call(lambda: c._bench_get_into(keys, rounds, True), calls)
            py = per_call(py_get, calls)
            loop_ns = per_call(empty, calls)
            dct = per_call(dict_get, calls)
            rows.append((name, len(keys), rust, chained, py, loop_ns, dct))
    finally:
        c.close()
        larder.Cache.unlink(path)
    print(
        "\nget hit, one process, ns per call (best of 5): the Rust get_into of the same keys "
        "in the same order beside the Python get. Rust back to back lets one get's memory "
        "loads overlap the next one's; chained, each get starts when the last has ended, "
        "as between two calls from the interpreter. Empty loop: a Python loop over the "
        "keys that calls nothing\n"
    )
    print(
        "| keys | Rust get_into | Rust, chained | Python get | Python - Rust | "
        "Python - Rust chained | empty loop | dict.get |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, n, rust, chained, py, loop_ns, dct in rows:
        print(
            f"| {name} ({n:,}) | {rust * 1e9:.0f} | {chained * 1e9:.0f} | {py * 1e9:.0f} "
            f"| {(py - rust) * 1e9:.0f} | {(py - chained) * 1e9:.0f} | {loop_ns * 1e9:.0f} "
            f"| {dct * 1e9:.0f} |"
        )


if __name__ == "__main__":
    main()
