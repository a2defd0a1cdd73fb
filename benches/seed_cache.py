#!/usr/bin/env python3
"""The seed's design, re-implemented for larder's multi-process benchmark.

A fixed-slot hash table (open addressing, linear probing) in one
multiprocessing.shared_memory block, every get and set behind one
multiprocessing.Lock, run by N processes on the workload of larder::workload:
32-byte keys "larder-bench-key" + 16 hex digits, values of the given length that
start with (key index, version), Zipf(0.99) (Gray et al., scattered over the key
space as larder's sampler does) or uniform key choice, and a get/set mix.

This is the design of the post-mortem in ../shared/seed/ (not its code): one lock
for the whole table, no robust recovery. It is here to put its throughput beside
larder's; the comparison crosses languages (the fair one comes with a Python
binding).

Prints one line:
  seed-python processes=N ops=... seconds=... ops_per_sec=... per_process=...
  p50_ns=... p99_ns=... p999_ns=... gets=... hits=...
Every wait has a deadline; workers that do not finish are terminated.
"""

import argparse
import multiprocessing as mp
import random
import struct
import sys
import time
import zlib
from multiprocessing import shared_memory

KEY_LEN = 32
# Slot: used flag (1 byte), key, value length (4 bytes), value.
SLOT_HDR = 1 + KEY_LEN + 4
SAMPLE_EVERY = 64
SCATTER = (2_654_435_761, 2_246_822_519, 3_266_489_917)


def key(i):
    return b"larder-bench-key" + b"%016x" % i


def value(i, version, n):
    body = struct.pack("<QQ", i, version) + bytes(n - 24)
    return body + struct.pack("<Q", zlib.crc32(body))


def gcd(a, b):
    while b:
        a, b = b, a % b
    return a


class Zipf:
    """YCSB's ZipfianGenerator (Gray et al.), ranks scattered like larder's."""

    def __init__(self, n, theta):
        self.n = n
        self.theta = theta
        self.alpha = 1.0 / (1.0 - theta)
        self.zetan = sum(1.0 / (i ** theta) for i in range(1, n + 1))
        zeta2 = 1.0 + 0.5 ** theta
        self.eta = (1.0 - (2.0 / n) ** (1.0 - theta)) / (1.0 - zeta2 / self.zetan)
        self.half = 0.5 ** theta
        self.mult = next((m for m in SCATTER if gcd(m % n, n) == 1), 1)

    def sample(self, rng):
        u = rng.random()
        uz = u * self.zetan
        if uz < 1.0:
            rank = 0
        elif uz < 1.0 + self.half:
            rank = min(1, self.n - 1)
        else:
            rank = min(int(self.n * (self.eta * u - self.eta + 1.0) ** self.alpha), self.n - 1)
        return rank * self.mult % self.n


class Table:
    def __init__(self, buf, slots, value_len):
        self.buf = buf
        self.slots = slots
        self.slot_size = SLOT_HDR + value_len

    def _find(self, k):
        buf, ss = self.buf, self.slot_size
        h = zlib.crc32(k) % self.slots
        for _ in range(self.slots):
            off = h * ss
            if buf[off] == 0:
                return off, False
            if buf[off + 1:off + 1 + KEY_LEN] == k:
                return off, True
            h = (h + 1) % self.slots
        raise RuntimeError("table full")

    def get(self, k):
        off, found = self._find(k)
        if not found:
            return None
        n = int.from_bytes(self.buf[off + 1 + KEY_LEN:off + SLOT_HDR], "little")
        return bytes(self.buf[off + SLOT_HDR:off + SLOT_HDR + n])

    def set(self, k, v):
        off, _ = self._find(k)
        buf = self.buf
        buf[off + 1:off + 1 + KEY_LEN] = k
        buf[off + 1 + KEY_LEN:off + SLOT_HDR] = len(v).to_bytes(4, "little")
        buf[off + SLOT_HDR:off + SLOT_HDR + len(v)] = v
        buf[off] = 1


def worker(i, args, shm, lock, barrier, out):
    table = Table(shm.buf, args.keys * 2, args.value_len)
    rng = random.Random(args.seed * 1_000_003 + i)
    sampler = Zipf(args.keys, 0.99) if args.dist == "zipf" else None
    n = args.keys
    get_pct = args.get_percent
    version = (i + 1) << 40
    ops = gets = hits = 0
    samples = []
    try:
        barrier.wait(timeout=args.start_timeout)
    except Exception as e:  # BrokenBarrierError or timeout
        out.put((i, None, str(e)))
        return
    start = time.perf_counter()
    end = start + args.seconds
    now = start
    while now < end:
        for _ in range(64):
            is_get = rng.random() * 100 < get_pct
            idx = sampler.sample(rng) if sampler else rng.randrange(n)
            k = key(idx)
            v = None
            if not is_get:
                version += 1
                v = value(idx, version, args.value_len)
            timed = ops % SAMPLE_EVERY == 0
            t0 = time.perf_counter_ns() if timed else 0
            with lock:
                if is_get:
                    got = table.get(k)
                else:
                    table.set(k, v)
            if timed:
                samples.append(time.perf_counter_ns() - t0)
            ops += 1
            if is_get:
                gets += 1
                if got is not None:
                    hits += 1
        now = time.perf_counter()
    del table
    out.put((i, (ops, now - start, gets, hits, samples), None))


def quantile(sorted_values, q):
    if not sorted_values:
        return 0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--value-len", type=int, default=256)
    p.add_argument("--dist", choices=["uniform", "zipf"], default="zipf")
    p.add_argument("--get-percent", type=int, default=95)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--start-timeout", type=float, default=30.0)
    args = p.parse_args()
    if args.value_len < 24 or args.keys < 1 or args.processes < 1:
        sys.exit("value-len >= 24, keys >= 1 and processes >= 1")

    ctx = mp.get_context("fork")
    slots = args.keys * 2
    shm = shared_memory.SharedMemory(create=True, size=slots * (SLOT_HDR + args.value_len))
    procs = []
    try:
        table = Table(shm.buf, slots, args.value_len)
        for i in range(args.keys):
            table.set(key(i), value(i, 0, args.value_len))
        del table
        lock = ctx.Lock()
        barrier = ctx.Barrier(args.processes)
        out = ctx.Queue()
        procs = [
            ctx.Process(target=worker, args=(i, args, shm, lock, barrier, out))
            for i in range(args.processes)
        ]
        for pr in procs:
            pr.start()
        results = []
        deadline = time.monotonic() + args.start_timeout + args.seconds + 30
        for _ in procs:
            left = max(0.0, deadline - time.monotonic())
            i, res, err = out.get(timeout=left)
            if err is not None:
                sys.exit(f"worker {i}: {err}")
            results.append(res)
        for pr in procs:
            pr.join(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for pr in procs:
            if pr.is_alive():
                pr.kill()
                pr.join(timeout=5)
        shm.close()
        shm.unlink()

    ops = sum(r[0] for r in results)
    rate = sum(r[0] / r[1] for r in results if r[1] > 0)
    seconds = max(r[1] for r in results)
    gets = sum(r[2] for r in results)
    hits = sum(r[3] for r in results)
    samples = sorted(s for r in results for s in r[4])
    print(
        f"seed-python processes={args.processes} ops={ops} seconds={seconds:.3f} "
        f"ops_per_sec={rate:.1f} per_process={rate / args.processes:.1f} "
        f"p50_ns={quantile(samples, 0.5)} p99_ns={quantile(samples, 0.99)} "
        f"p999_ns={quantile(samples, 0.999)} gets={gets} hits={hits}"
    )


if __name__ == "__main__":
    main()
