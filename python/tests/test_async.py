"""The awaitable a* methods: each means what its blocking twin means, and none stalls the
event loop while another process holds a key's fill or is stopped holding a shard lock
(the test wheel has larder's crash points to stop it there)."""

import asyncio
import selectors
import signal
import threading
import time

import pytest

import _workers
import larder

needs_crash_points = pytest.mark.skipif(
    not larder._larder.CRASH_POINTS, reason="needs the wheel built with --features crash-points"
)

# The criterion: no tick of the loop comes more than this late, not counting the
# time the loop's thread waited for a CPU, nor the time the kernel took beyond the
# selector's timeout to wake it (neither is the doing of a call made on the loop).
MAX_STALL = 0.005
TICK = 0.001


def runqueue_wait():
    """Seconds the calling thread has spent runnable but waiting for a CPU (field 2 of
    its schedstat), or None where the kernel does not say."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class TimedSelector(selectors.DefaultSelector):
    """The loop's selector, adding up how much longer than asked its waits took: on a
    virtual machine an idle CPU's timer can wake the thread milliseconds late, with the
    thread neither running nor queued meanwhile. A wait for the GIL once the selector
    returns counts here too: the raw bound in ``assert_no_stall`` catches a thread that
    holds the GIL while it waits for a lock, which lasts as long as the lock's timeout."""

    overslept = 0.0

    def select(self, timeout=None):
        started = time.perf_counter()
        try:
            return super().select(timeout)
        finally:
            if timeout is not None and timeout > 0:
                late = time.perf_counter() - started - timeout
                TimedSelector.overslept += max(late, 0.0)


def run(main):
    """``asyncio.run(main)`` on a loop with a TimedSelector."""
    loop = asyncio.SelectorEventLoop(TimedSelector())
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def assert_no_stall(attempt, hard=0.1):
    """Runs ``attempt()`` (one whole scenario, which checks its own outcome, runs its loop
    with ``run`` and returns its ticker) and checks that no tick of its loop came more
    than MAX_STALL late, less the time the loop's thread waited on a run queue and the
    time its selector overslept meanwhile, and none more than ``hard`` late at all: a call
    that blocks the loop for a lock or fill (``hard`` is below the scenario's timeouts)
    breaks one or the other."""
    if runqueue_wait() is None:
        pytest.skip("no /proc/self/task/<tid>/schedstat: cannot tell stalls from the scheduler")
    ticker = attempt()
    assert ticker.ticks > 0
    stalls = (round(ticker.worst * 1e3, 2), round(ticker.worst_raw * 1e3, 2))
    assert ticker.worst < MAX_STALL, f"the loop stalled (less waits not its own, raw): {stalls} ms"
    assert ticker.worst_raw < hard, f"the loop stalled (less waits not its own, raw): {stalls} ms"


class Ticker:
    """A coroutine that sleeps TICK at a time and records how late each wake-up is, less
    the time the thread waited for a CPU and its selector overslept meanwhile (``worst``),
    and raw (``worst_raw``): the longest the loop was kept from running it. Entering it
    returns once its first tick is under way, so that it times whatever the body does
    from its first statement on, inline work that never yields included."""

    def __init__(self):
        self.worst = 0.0
        self.worst_raw = 0.0
        self.ticks = 0
        self._task = None
        self._ticking = asyncio.Event()

    async def _run(self):
        while True:
            queued = runqueue_wait()
            overslept = TimedSelector.overslept
            before = time.perf_counter()
            self._ticking.set()
            await asyncio.sleep(TICK)
            late = time.perf_counter() - before - TICK
            self.worst_raw = max(self.worst_raw, late)
            not_own = runqueue_wait() - queued + TimedSelector.overslept - overslept
            self.worst = max(self.worst, late - not_own)
            self.ticks += 1

    async def __aenter__(self):
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._ticking.wait()
        return self

    async def __aexit__(self, *exc):
        self._task.cancel()
        return False


def scenario(call):
    """The same calls, through ``call(name, *args)``; returns what they returned (a
    ticket or CAS token by its type)."""
    out = [call("get", "k", b"default")]
    out.append(call("set", "k", b"v", 60))
    out.append(call("add", "k", b"w"))
    out.append(call("add", "k2", b"w", 60))
    out.append(call("get", "k"))
    out.append(call("get_many", ["k", "k2", "absent"], b"-"))
    out.append(call("incr", "n", 5, 1))
    out.append(call("incr", "n"))
    out.append(call("touch", "k", 120))
    out.append(call("touch", "absent"))
    value, token = call("gets", "k")
    out += [value, type(token)]
    out.append(call("gets", "absent", b"d", b"c"))
    out.append(call("cas", "k", b"v2", token))
    out.append(call("cas", "k", b"v3", token))
    out.append(call("cas", "absent", b"x", token))
    ticket = call("ticket", "t")
    out.append(type(ticket))
    out.append(call("set_with_ticket", "t", b"tv", ticket))
    stale = call("ticket", "t")
    out.append(call("delete", "t"))
    out.append(call("set_with_ticket", "t", b"tv2", stale))
    out.append(call("delete", "k"))
    out.append(call("delete", "k"))
    out.append(call("get_or_set", "g", lambda: b"g1"))
    out.append(call("get_or_set", "g", lambda: b"g2"))
    out.append(call("get", "k2"))
    return out


def test_each_async_method_means_what_its_twin_means():
    from conftest import remove, unique_path

    paths = [unique_path(), unique_path()]
    sync, aio = (larder.Cache(p, capacity=4 << 20) for p in paths)
    loop = asyncio.new_event_loop()
    try:
        expected = scenario(lambda name, *args: getattr(sync, name)(*args))
        got = scenario(lambda name, *args: loop.run_until_complete(getattr(aio, "a" + name)(*args)))
        assert got == expected
        assert sorted(aio) == sorted(sync) == [b"g", b"k2", b"n"]
        assert aio.get_counter("n") == sync.get_counter("n") == 7
    finally:
        loop.close()
        sync.close()
        aio.close()
        for p in paths:
            remove(p)


def test_aget_or_set_takes_a_coroutine_function_and_gives_the_stored_value(path):
    async def main(c):
        async def fill():
            await asyncio.sleep(0)
            return (1, 2)

        first = await c.aget_or_set("pair", fill)
        again = await c.aget_or_set("pair", lambda: (3, 4))
        return first, again

    with larder.Cache(path, capacity=4 << 20, serializer="json") as c:
        # The filler gets the value read back through the serializer, as everyone.
        assert asyncio.run(main(c)) == ([1, 2], [1, 2])
        assert c.get("pair") == [1, 2]


def test_a_failing_fill_stores_nothing_and_raises(cache):
    async def fill():
        raise KeyError("source down")

    async def main():
        with pytest.raises(KeyError):
            await cache.aget_or_set("k", fill)
        return await cache.aget_or_set("k", lambda: b"next")

    assert asyncio.run(main()) == b"next"


def test_sync_get_or_set_refuses_a_coroutine_function(cache):
    async def fill():
        return b"v"

    with pytest.raises(TypeError, match="aget_or_set"):
        cache.get_or_set("k", fill)
    assert cache.get("k") is None


def test_a_cancelled_filler_hands_the_fill_to_a_waiting_task(cache):
    def attempt():
        key = f"k{time.monotonic_ns()}"

        async def main():
            inside = asyncio.Event()

            async def slow():
                inside.set()
                await asyncio.Event().wait()  # until cancelled

            filler = asyncio.ensure_future(cache.aget_or_set(key, slow))
            await asyncio.wait_for(inside.wait(), 30)
            # The fill is held by this thread: the waiter waits in the executor.
            waiter = asyncio.ensure_future(cache.aget_or_set(key, lambda: b"waiter"))
            async with Ticker() as ticker:
                await asyncio.sleep(0.05)
                assert not waiter.done()
                filler.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await filler
                got = await asyncio.wait_for(waiter, 30)
            return got, ticker

        got, ticker = run(main())
        assert got == b"waiter"
        assert cache.get(key) == b"waiter"
        return ticker

    assert_no_stall(attempt)


@needs_crash_points
def test_a_cancelled_filler_hands_the_fill_to_another_process(cache, procs):
    async def main():
        inside = asyncio.Event()

        async def slow():
            inside.set()
            await asyncio.Event().wait()  # until cancelled

        filler = asyncio.ensure_future(cache.aget_or_set("k", slow))
        await asyncio.wait_for(inside.wait(), 30)
        # A process wanting the key waits for this task's fill: its lookup is counted
        # as a miss before it waits.
        misses = cache.stats()["misses"]
        p = _workers.start_child(procs, ["fill", cache.path, "k"])
        deadline = time.monotonic() + 30
        while cache.stats()["misses"] == misses:
            assert p.poll() is None and time.monotonic() < deadline
            await asyncio.sleep(0.001)
        assert p.poll() is None
        filler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await filler
        return p

    p = asyncio.run(main())
    assert p.wait(timeout=60) == 0
    assert cache.get("k") == b"child-fill"


@needs_crash_points
def test_loop_never_stalls_while_another_process_holds_the_fill(cache, procs):
    def attempt():
        key = f"f{time.monotonic_ns()}"
        p = _workers.start_child(procs, ["fill", cache.path, key], "fill.holding_slot", "stop")
        _workers.wait_stopped(p)

        async def main():
            async with Ticker() as ticker:
                getter = asyncio.ensure_future(cache.aget_or_set(key, lambda: b"mine"))
                # Other work goes on meanwhile, hits inline.
                cache.set("other", b"o")
                for _ in range(50):
                    assert await cache.aget("other") == b"o"
                    await asyncio.sleep(TICK)
                assert not getter.done()
                p.kill()  # the filler dies holding the fill: this task computes instead
                got = await asyncio.wait_for(getter, 30)
            return got, ticker

        got, ticker = run(main())
        assert p.wait(timeout=60) == -signal.SIGKILL
        assert got == b"mine"
        assert cache.get(key) == b"mine"
        assert ticker.ticks >= 50
        return ticker

    assert_no_stall(attempt)


@needs_crash_points
def test_loop_never_stalls_while_a_stopped_process_holds_a_shard_lock(path, procs):
    c = larder.Cache(path, capacity=4 << 20, lock_timeout=0.2)

    def attempt():
        c["k"] = b"old"
        p = _workers.start_child(procs, ["set", path, "k"], "lock.held", "stop")
        _workers.wait_stopped(p)

        async def main():
            outcomes = []
            async with Ticker() as ticker:
                for name, args in [
                    ("aset", ("k", b"mine")),
                    ("aadd", ("k", b"mine")),
                    ("adelete", ("k",)),
                    ("aincr", ("k",)),
                    ("atouch", ("k", 10)),
                    ("acas", ("k", b"mine", bytes(24))),
                    ("aset_with_ticket", ("k", b"mine", c.ticket("k"))),
                ]:
                    try:
                        await getattr(c, name)(*args)
                        outcomes.append((name, "done"))
                    except TimeoutError:
                        outcomes.append((name, "timeout"))
                # Reads are served without the lock.
                outcomes.append(("aget", await c.aget("k")))
            return outcomes, ticker

        try:
            outcomes, ticker = run(main())
        finally:
            p.send_signal(signal.SIGCONT)
        assert p.wait(timeout=60) == 0
        writes = [o for o in outcomes if o[0] != "aget"]
        # acas of a token the shard never gave out is refused before the lock.
        assert [o for o in writes if o[1] == "done"] == [("acas", "done")]
        assert ("aget", b"old") in outcomes
        assert c["k"] == b"child"
        return ticker

    try:
        assert_no_stall(attempt)
    finally:
        c.close()


@needs_crash_points
def test_a_fill_stores_without_stalling_while_the_shard_lock_is_held(path, procs):
    c = larder.Cache(path, capacity=4 << 20, lock_timeout=5)
    c["k"] = b"old"
    # Keys of the shard the stopped writer locks.
    keys = (f"fill-{i}" for i in range(100000) if c.shard_of(f"fill-{i}") == c.shard_of("k"))

    def attempt():
        key = next(keys)
        p = _workers.start_child(procs, ["set", path, "k"], "lock.held", "stop")
        _workers.wait_stopped(p)

        async def main():
            async def fill():
                # The store waits for the lock: the stopped writer resumes meanwhile.
                asyncio.get_running_loop().call_later(0.1, p.send_signal, signal.SIGCONT)
                return b"filled"

            async with Ticker() as ticker:
                got = await c.aget_or_set(key, fill)
            return got, ticker

        try:
            got, ticker = run(main())
        finally:
            p.send_signal(signal.SIGCONT)
        assert p.wait(timeout=60) == 0
        assert got == b"filled"
        assert c[key] == b"filled"
        return ticker

    try:
        assert_no_stall(attempt, hard=0.05)  # SIGCONT comes 0.1 s in
    finally:
        c.close()


@needs_crash_points
def test_aget_waits_off_the_loop_for_a_writer_stopped_mid_write(path, procs):
    c = larder.Cache(path, capacity=4 << 20, lock_timeout=0.2)

    def attempt():
        c["k"] = b"old.."  # the length of the child's value: overwritten in place
        p = _workers.start_child(procs, ["set", path, "k"], "overwrite.mid_value", "stop")
        _workers.wait_stopped(p)

        async def main():
            async with Ticker() as ticker:
                with pytest.raises(TimeoutError):
                    await c.aget("k")
                with pytest.raises(TimeoutError):
                    await c.aget_many(["k"])
                with pytest.raises(TimeoutError):
                    await c.agets("k")
                with pytest.raises(TimeoutError):
                    await c.aget_or_set("k", lambda: b"never")
            return ticker

        try:
            ticker = run(main())
        finally:
            p.send_signal(signal.SIGCONT)
        assert p.wait(timeout=60) == 0
        assert c["k"] == b"child"
        return ticker

    try:
        assert_no_stall(attempt)
    finally:
        c.close()


@needs_crash_points
def test_an_awaitable_write_that_falls_back_to_a_thread_serializes_once(path, procs):
    """aset, aadd, acas and aset_with_ticket call the serializer once, whichever path
    stores: here the inline try finds the shard lock held by a stopped process, and the
    write is made again in larder's executor once that process resumes."""
    import json

    calls = []

    class Counting:
        def dumps(self, value):
            calls.append(value)
            return json.dumps(value).encode()

        def loads(self, data):
            return json.loads(data)

    with larder.Cache(path, capacity=4 << 20, lock_timeout=5, serializer=Counting()) as c:
        c["k"] = 0
        same_shard = [f"w-{i}" for i in range(100000) if c.shard_of(f"w-{i}") == c.shard_of("k")]
        c[same_shard[2]] = 0
        _, token = c.gets(same_shard[2])
        ticket = c.ticket(same_shard[3])
        calls.clear()
        writes = [
            ("aset", (same_shard[0], [1]), None),
            ("aadd", (same_shard[1], [2]), True),
            ("acas", (same_shard[2], [3], token), True),
            ("aset_with_ticket", (same_shard[3], [4], ticket), True),
        ]
        for name, args, expected in writes:
            p = _workers.start_child(procs, ["set", path, "k"], "lock.held", "stop")
            _workers.wait_stopped(p)

            async def write():
                asyncio.get_running_loop().call_later(0.05, p.send_signal, signal.SIGCONT)
                return await getattr(c, name)(*args)

            try:
                assert asyncio.run(write()) == expected, name
            finally:
                p.send_signal(signal.SIGCONT)
            assert p.wait(timeout=60) == 0
        assert calls == [[1], [2], [3], [4]]
        assert [c[k] for k in same_shard[:4]] == [[1], [2], [3], [4]]
