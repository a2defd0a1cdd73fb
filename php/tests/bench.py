#!/usr/bin/env python3
"""larder vs APCu side by side, in php-cli and inside php-fpm (one pool, same run):
fetch hits and stores of 256-byte values over 1000 keys, in a loop inside one process
(ns per operation, the median of 3 runs); beside a fetch hit, a trivial FFI call and the
bare larder_get through FFI; and the cost of opening the cache in a request.

    LARDER_LIBRARY=target/release/liblarder.so python3 php/tests/bench.py [--n N]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pool import WWW, Pool, run_main  # noqa: E402

RUNS = 3


def cli(n, lib, kind, cache):
    cmd = [
        "php8.2",
        "-n",
        "-d",
        "extension=ffi",
        "-d",
        "ffi.enable=1",
        "-d",
        "extension=apcu",
        "-d",
        "apc.enable_cli=1",
        "-d",
        "apc.shm_size=64M",
        os.path.join(WWW, "lab.php"),
        "op=bench",
        f"lib={lib}",
        f"kind={kind}",
        f"n={n}",
        f"cache={cache}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out)["ns_per_op"]


def answer(reply):
    """The ns_per_op of a bench answer; an AssertionError with the answer if it failed."""
    if not reply.get("ok"):
        raise AssertionError(f"lab.php op=bench failed: {reply}")
    return reply["ns_per_op"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200000, help="operations per run")
    args = parser.parse_args()
    cache = f"php-bench-{os.getpid()}"
    pool = Pool(2, name="bench")
    rows = []
    calls = {}

    def measure(where, lib, kind):
        """The median ns per operation of RUNS runs of n operations in one process."""
        if where == "php-cli":
            runs = [cli(args.n, lib, kind, cache) for _ in range(RUNS)]
        else:
            query = dict(op="bench", lib=lib, kind=kind, n=str(args.n), cache=cache)
            runs = [answer(pool.call("lab.php", 60.0, **query)) for _ in range(RUNS)]
        return statistics.median(runs)

    try:
        for where in ("php-cli", "php-fpm"):
            for kind in ("fetch", "store"):
                larder, apcu = measure(where, "larder", kind), measure(where, "apcu", kind)
                rows.append((where, "fetch hit" if kind == "fetch" else "store", larder, apcu))
            calls[where] = (measure(where, "ffi", "trivial"), measure(where, "ffi", "get"))
        opens = {}
        for persistent in ("1", "0"):
            name = f"{cache}-open-{persistent}"
            answers = [
                pool.call("lab.php", 10.0, op="open_cost", cache=name, persistent=persistent)
                for _ in range(40)
            ]
            seen, first, later = set(), [], []
            for a in answers:
                (later if a["pid"] in seen else first).append(a["open_ns"])
                seen.add(a["pid"])
            opens[persistent] = (statistics.median(first), statistics.median(later))
    finally:
        pool.stop()
        for entry in os.listdir("/dev/shm"):
            if entry.startswith(cache):
                os.unlink(os.path.join("/dev/shm", entry))
    print(f"{args.n} operations per run, median of {RUNS} runs, 256-byte values, 1000 keys\n")
    print("| where | operation | larder ns/op | APCu ns/op | larder / APCu |")
    print("|---|---|---|---|---|")
    for where, op, larder, apcu in rows:
        print(f"| {where} | {op} | {larder:.0f} | {apcu:.0f} | {larder / apcu:.2f} |")
    print(
        "\nWhere a fetch hit's time goes (same run, ns per call, the same loop): a trivial FFI"
        " call\n(`larder_close(NULL)`, a no-op, through the FFI object Cache uses), the bare `larder_get`"
        " of a hit\nthrough FFI, and `Cache::fetch` (that call plus the PHP around it):\n"
    )
    print(
        "| where | trivial FFI call | `larder_get` hit through FFI | `Cache::fetch` hit | APCu fetch hit |"
    )
    print("|---|---|---|---|---|")
    for where, op, larder, apcu in rows:
        if op == "fetch hit":
            trivial, get = calls[where]
            print(f"| {where} | {trivial:.0f} | {get:.0f} | {larder:.0f} | {apcu:.0f} |")
    print("\n`new Larder\\Cache(name)` inside a php-fpm request (40 requests, 2 workers), ns:\n")
    print("| handle | first request of a worker | later requests (median) |")
    print("|---|---|---|")
    print(
        f"| persistent (default): the registry's re-open | {opens['1'][0]:.0f} | {opens['1'][1]:.0f} |"
    )
    print(
        f"| persistent => false: open, mmap, flock every request | {opens['0'][0]:.0f} | {opens['0'][1]:.0f} |"
    )


if __name__ == "__main__":
    run_main(main)
