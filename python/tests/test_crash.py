"""Children killed or stopped inside locks (the test wheel has larder's crash points)."""

import random
import signal
import threading
import time

import pytest

import _workers
import larder

pytestmark = pytest.mark.skipif(
    not larder._larder.CRASH_POINTS, reason="needs the wheel built with --features crash-points"
)

child = _workers.start_child
wait_stopped = _workers.wait_stopped


def test_killed_inside_shard_lock(cache, procs):
    cache["k"] = b"before"
    p = child(procs, ["set", cache.path, "k"], "lock.held", "kill")
    assert p.wait(timeout=60) == -signal.SIGKILL
    t0 = time.monotonic()
    cache["k"] = b"after"
    assert time.monotonic() - t0 < 0.5  # within the lock timeout
    assert cache["k"] == b"after"
    assert cache.verify() == []
    assert cache.stats()["recoveries"] >= 1


def test_the_seed_design_deadlocks_where_larder_recovers(cache, procs):
    """The post-mortem's design guards its table with one multiprocessing.Lock: a worker
    killed holding it blocks every other worker for ever (here, until a timeout). The same
    death inside a larder shard lock costs the next operation nothing."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    lock, ready = ctx.Lock(), ctx.Event()
    p = ctx.Process(target=_workers.hold_lock_and_die, args=(lock, ready))
    p.start()
    try:
        assert ready.wait(60), "the worker never took the lock"
        p.join(60)
        assert p.exitcode == -signal.SIGKILL
        assert lock.acquire(timeout=2) is False, "the dead worker's lock was released"
    finally:
        if p.is_alive():
            p.kill()
            p.join(10)
    cache["k"] = b"before"
    c = child(procs, ["set", cache.path, "k"], "lock.held", "kill")
    assert c.wait(timeout=60) == -signal.SIGKILL
    t0 = time.monotonic()
    cache["k"] = b"after"
    assert time.monotonic() - t0 < 2
    assert cache["k"] == b"after"


def test_filler_killed_waiter_computes(cache, procs):
    p = child(procs, ["fill", cache.path, "f"], "fill.holding_slot", "stop")
    wait_stopped(p)
    got = []
    waiter = threading.Thread(target=lambda: got.append(cache.get_or_set("f", lambda: b"waiter")))
    waiter.start()
    time.sleep(0.2)  # the waiter is blocked on the stopped filler's slot
    assert not got
    p.kill()
    assert p.wait(timeout=60) == -signal.SIGKILL
    waiter.join(timeout=30)
    assert got == [b"waiter"]
    assert cache["f"] == b"waiter"
    assert cache.stats()["fill_handovers"] >= 1


def test_stopped_holder_timeout_then_resume(path, procs):
    c = larder.Cache(path, capacity=4 << 20, lock_timeout=0.2)
    c["k"] = b"old"
    p = child(procs, ["set", path, "k"], "lock.held", "stop")
    wait_stopped(p)
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            c["k"] = b"mine"
        waited = time.monotonic() - t0
        assert 0.15 < waited < 2.0
        assert c["k"] == b"old"  # reads are still served
        assert c.stats()["lock_timeouts"] >= 1
    finally:
        p.send_signal(signal.SIGCONT)
    assert p.wait(timeout=60) == 0
    assert c["k"] == b"child"
    c["k"] = b"mine"
    assert c["k"] == b"mine"
    assert c.verify() == []
    c.close()


def test_hammer_while_most_workers_are_killed(path, procs):
    c = larder.Cache(path, capacity=16 << 20, lock_timeout=1.0)
    stable = {i: _workers.checked_value(i, 7) for i in range(200)}
    for i, v in stable.items():
        c[b"k%d" % i] = v
    rng = random.Random()
    workers = [child(procs, ["hammer", path, str(w), "3"]) for w in range(6)]
    time.sleep(0.5)
    victims = workers[:4]
    for p in victims:
        time.sleep(rng.uniform(0.05, 0.3))
        p.kill()
    for p in victims:
        assert p.wait(timeout=60) == -signal.SIGKILL
    for p in workers[4:]:
        assert p.wait(timeout=60) == 0, "a survivor saw a torn value or failed"
    assert c.verify() == []
    for i, v in stable.items():
        assert c[b"k%d" % i] == v, "an entry no one was writing was lost"
    for i in range(200, 1200):
        v = c.get(b"k%d" % i)
        assert v is None or _workers.value_ok(v)
    c.close()
