#!/usr/bin/env python3
"""What the other php-fpm workers do when one is stopped, then SIGKILLed, while it holds
the cache's lock: APCu (inside apcu_entry's generator, which runs under APCu's lock) vs
larder (inside Larder\\Cache::entry's generator, which holds the key's fill). Same run,
same pool.

    LARDER_LIBRARY=target/release/liblarder.so python3 php/tests/kill_compare.py [--wait S]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fcgi  # noqa: E402
from pool import Pool, kill, process_state, run_main, wait_until  # noqa: E402


def timed(fn):
    t = time.monotonic()
    try:
        return fn(), (time.monotonic() - t) * 1000
    except fcgi.FcgiTimeout:
        return None, None


def store_kill(pool, wait):
    """A worker of a second pool stops inside a store (crash point set.mid_value) holding
    the only shard's lock, then is SIGKILLed."""
    cache = dict(cache=f"php-kill-compare-store-{os.getpid()}", capacity=str(8 << 20), shards="1")
    victim = Pool(
        1, {"LARDER_CRASH_AT": "set.mid_value", "LARDER_CRASH_ACTION": "stop"}, name="victim"
    )
    rows = []
    try:
        assert pool.call("op.php", **cache, op="store", key="cold", value="v")["ok"]
        victim.submit("op.php", **cache, op="store", key="hot", value="x" * 1000)
        holder = wait_until(victim.stopped_workers, 10, "the larder writer stops inside its store")
        answer, ms = timed(lambda: pool.call("op.php", wait, **cache, op="fetch", key="cold"))
        what = (
            "still blocked" if answer is None else ("served" if answer["ok"] else answer["status"])
        )
        rows.append(
            (
                "larder",
                "fetch, same shard, writer stopped inside a store",
                (
                    f"{what} in {ms:.1f} ms (lock_timeout_ms 500)"
                    if ms
                    else f"still blocked after {wait} s"
                ),
            )
        )
        for pid in holder:
            kill(pid)
        wait_until(
            lambda: all(process_state(p) in (None, "Z") for p in holder), 10, "the writer dies"
        )
        answer, ms = timed(lambda: pool.call("op.php", wait, **cache, op="fetch", key="cold"))
        rows.append(
            (
                "larder",
                "fetch, same shard, after SIGKILL of the writer",
                (
                    f"served in {ms:.1f} ms (shard repaired)"
                    if answer and answer["ok"]
                    else f"{answer}"
                ),
            )
        )
    finally:
        victim.stop()
        for entry in os.listdir("/dev/shm"):
            if entry.startswith(cache["cache"] + ".larder"):
                os.unlink(os.path.join("/dev/shm", entry))
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--wait", type=float, default=3.0, help="seconds to wait for a blocked request"
    )
    parser.add_argument(
        "--crash-points",
        action="store_true",
        help="LARDER_LIBRARY has the crash points: also kill a larder worker inside a store",
    )
    args = parser.parse_args()
    cache = dict(cache=f"php-kill-compare-{os.getpid()}", capacity=str(8 << 20))
    pool = Pool(6, name="kill")
    rows = []
    try:
        # larder
        assert pool.call("op.php", **cache, op="store", key="cold", value="v")["ok"]
        before = set(pool.stopped_workers())
        pool.submit("lab.php", **cache, op="stop_entry", key="hot", value="first")
        holder = wait_until(
            lambda: set(pool.stopped_workers()) - before, 10, "the larder holder stops"
        )
        waiter = pool.submit("op.php", 30.0, **cache, op="entry", key="hot", value="second")
        answer, ms = timed(lambda: pool.call("op.php", args.wait, **cache, op="fetch", key="cold"))
        rows.append(
            (
                "larder",
                "fetch of another key, holder stopped",
                f"served in {ms:.1f} ms" if answer else f"still blocked after {args.wait} s",
            )
        )
        answer, ms = timed(
            lambda: pool.call("op.php", args.wait, **cache, op="store", key="cold2", value="v")
        )
        rows.append(
            (
                "larder",
                "store of another key, holder stopped",
                f"served in {ms:.1f} ms" if answer else f"still blocked after {args.wait} s",
            )
        )
        t = time.monotonic()
        for pid in holder:
            kill(pid)
        result = waiter.result(30.0)
        handover_ms = (time.monotonic() - t) * 1000
        rows.append(
            (
                "larder",
                "entry() of the same key, after SIGKILL of the holder",
                f"computed by the waiter {handover_ms:.1f} ms after the kill (generated={result['generated']})",
            )
        )
        answer, ms = timed(lambda: pool.call("op.php", args.wait, **cache, op="fetch", key="cold"))
        rows.append(
            (
                "larder",
                "fetch after the kill",
                f"served in {ms:.1f} ms" if answer else f"still blocked after {args.wait} s",
            )
        )
        larder_after = ms
        if args.crash_points:
            rows += store_kill(pool, args.wait)

        # APCu, same pool (last: it does not recover)
        assert pool.call("lab.php", op="apcu_store", key="cold", value="v")["ok"]
        before = set(pool.stopped_workers())
        pool.submit("lab.php", 60.0, op="apcu_stop_entry", key="hot", value="first")
        holder = wait_until(
            lambda: set(pool.stopped_workers()) - before, 10, "the APCu holder stops"
        )
        answer, ms = timed(lambda: pool.call("lab.php", args.wait, op="apcu_fetch", key="cold"))
        rows.append(
            (
                "APCu",
                "fetch of another key, holder stopped",
                f"served in {ms:.1f} ms" if answer else f"still blocked after {args.wait} s",
            )
        )
        for pid in holder:
            kill(pid)
        wait_until(
            lambda: all(process_state(p) in (None, "Z") for p in holder), 10, "the holder dies"
        )
        answer, ms = timed(lambda: pool.call("lab.php", args.wait, op="apcu_fetch", key="cold"))
        rows.append(
            (
                "APCu",
                "fetch after SIGKILL of the holder",
                f"served in {ms:.1f} ms" if answer else f"still blocked after {args.wait} s",
            )
        )
        apcu_after = ms
    finally:
        pool.stop()
        for entry in os.listdir("/dev/shm"):
            if entry.startswith(cache["cache"] + ".larder"):
                os.unlink(os.path.join("/dev/shm", entry))
    print("| cache | request from another worker | what happened |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if apcu_after is None and larder_after is not None:
        print(
            f"\nAfter the kill: larder served in {larder_after:.1f} ms; APCu still blocked after {args.wait} s "
            f"(ratio > {args.wait * 1000 / larder_after:.0f}x, and APCu never recovers: its lock is not robust)."
        )


if __name__ == "__main__":
    run_main(main)
