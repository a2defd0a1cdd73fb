#!/usr/bin/env python3
"""larder vs APCu side by side, in php-cli and inside php-fpm (one pool, same run):
fetch hits and stores of 256-byte values over 1000 keys, in a loop inside one process
(ns per operation, the median of 3 runs), and the cost of opening the cache in a request.

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
        "php",
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200000, help="operations per run")
    args = parser.parse_args()
    cache = f"php-bench-{os.getpid()}"
    pool = Pool(2, name="bench")
    rows = []
    try:
        for where in ("php-cli", "php-fpm"):
            for kind in ("fetch", "store"):
                result = {}
                for lib in ("larder", "apcu"):
                    if where == "php-cli":
                        runs = [cli(args.n, lib, kind, cache) for _ in range(RUNS)]
                    else:
                        runs = [
                            pool.call(
                                "lab.php",
                                60.0,
                                op="bench",
                                lib=lib,
                                kind=kind,
                                n=str(args.n),
                                cache=cache,
                            )["ns_per_op"]
                            for _ in range(RUNS)
                        ]
                    result[lib] = statistics.median(runs)
                rows.append(
                    (
                        where,
                        "fetch hit" if kind == "fetch" else "store",
                        result["larder"],
                        result["apcu"],
                    )
                )
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
