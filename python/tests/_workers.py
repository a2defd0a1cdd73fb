"""Functions run in pool workers and child processes (importable by spawn workers)."""

import os
import struct
import sys
import time
import zlib

import larder

_INHERITED = None


def start_child(procs, args, at=None, action=None):
    """Runs this file with ``args`` in a child process (appended to ``procs``, the
    fixture that kills what is left); with ``at``, the child's larder acts there
    (``LARDER_CRASH_AT``) as ``action`` says (kill, stop)."""
    import subprocess

    env = dict(os.environ)
    env.pop("LARDER_CRASH_AT", None)
    if at:
        env["LARDER_CRASH_AT"] = at
        env["LARDER_CRASH_ACTION"] = action
    p = subprocess.Popen([sys.executable, __file__, *args], env=env)
    procs.append(p)
    return p


def wait_stopped(p, deadline=30):
    """Returns once process ``p`` is stopped (SIGSTOP at a crash point)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        assert p.poll() is None, "child exited instead of stopping"
        time.sleep(0.01)  # poll interval; the deadline above bounds the wait
    raise AssertionError("child did not stop in time")


def checked_value(i, version, n=256):
    body = struct.pack("<QQ", i, version) + bytes(n - 24)
    return body + struct.pack("<Q", zlib.crc32(body))


def value_ok(v):
    if len(v) < 24:
        return False
    (crc,) = struct.unpack("<Q", v[-8:])
    return zlib.crc32(v[:-8]) == crc


def set_and_get(cache, i):
    cache.set(f"pool:{i}", b"v%d" % i)
    return os.getpid(), cache.get(f"pool:{i}"), cache.get("shared")


def inherited_set_and_get(i):
    return set_and_get(_INHERITED, i)


def fill_once(cache, key, counter_key):
    def fill():
        # Count fills: add of a unique key per filler.
        cache.set(f"{counter_key}:{os.getpid()}:{time.monotonic_ns()}", b"1")
        time.sleep(0.2)
        return b"computed"

    return cache.get_or_set(key, fill)


def hammer(path, worker, seconds):
    """Writes self-checking values to keys 1000.. and reads keys 0..; exit 3 on a torn
    value."""
    import random

    c = larder.Cache(path)
    rng = random.Random(worker)
    version = worker << 32
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        i = rng.randrange(1000, 1200)
        version += 1
        c.set(b"k%d" % i, checked_value(i, version))
        j = rng.randrange(0, 1200)
        v = c.get(b"k%d" % j)
        if v is not None and not value_ok(v):
            print(f"torn value at key {j}", file=sys.stderr)
            sys.exit(3)
    sys.exit(0)


def paused_fill(dir):
    open(os.path.join(dir, "in-fill"), "w").close()
    end = time.monotonic() + 60
    while not os.path.exists(os.path.join(dir, "revoked")):
        if time.monotonic() > end:
            raise TimeoutError("the parent never revoked the token")
        time.sleep(0.001)  # poll interval; the deadline above bounds the wait
    return b"claims:alice"


def hold_lock_and_die(lock, ready):
    """The seed design's failure: a worker killed while it holds the table's lock."""
    import signal

    lock.acquire()
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)


def memoize_probe(cache):
    """A memoized function with the same module and qualname in every process that
    imports this file, so that processes can compare the keys of their calls."""

    @cache.memoize
    def probe(*args, **kwargs):
        raise AssertionError("only the probe's keys are used")

    return probe


def serve_memoize_keys(path):
    """Writes hash("larder") on the first line of stdout, then reads pickled
    ``(args, kwargs)`` calls from stdin until EOF and writes each call's memoize key on
    a line."""
    import pickle

    probe = memoize_probe(larder.Cache(path))
    print(hash("larder"), flush=True)
    while True:
        try:
            args, kwargs = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        print(probe.cache_key(*args, **kwargs), flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "hammer":
        hammer(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    elif cmd == "set":
        # Crash-point child: one set (LARDER_CRASH_AT decides where it dies or stops).
        c = larder.Cache(sys.argv[2])
        c.set(sys.argv[3], b"child")
    elif cmd == "fill":
        c = larder.Cache(sys.argv[2])
        c.get_or_set(sys.argv[3], lambda: b"child-fill")
    elif cmd == "paused-fill":
        # A fill that reads the token's state, then pauses until the parent has revoked
        # the token (argv[4]/revoked exists); prints what get_or_set returned.
        c = larder.Cache(sys.argv[2])
        sys.stdout.buffer.write(c.get_or_set(sys.argv[3], lambda: paused_fill(sys.argv[4])))
    sys.exit(0)
