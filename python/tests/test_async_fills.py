"""aget_or_set's fills: held by a thread of their own, so that a task collected on any
thread releases its fill at once; waiting tasks share one fill and take no executor
thread; a nested fill of a slot its own caller holds fails at once; a lookup counts once."""

import asyncio
import gc
import sys
import threading

import pytest

import larder

DEADLINE = 30


def counts(c):
    s = c.stats()
    return {k: s[k] for k in ("hits", "misses", "fills")}


def moved(before, after):
    return {k: after[k] - before[k] for k in before}


def test_a_fill_collected_on_another_thread_is_released_at_once(path):
    # The fill timeout is the wait a leaked fill would cost the main thread's get_or_set.
    c = larder.Cache(path, capacity=4 << 20, fill_timeout=3)
    box = []
    started = threading.Event()
    release = threading.Event()
    unraisable = []
    hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append

    def in_thread():
        loop = asyncio.new_event_loop()

        async def slow():
            started.set()
            await asyncio.Event().wait()

        async def until_started():
            while not started.is_set():
                await asyncio.sleep(0.001)

        box.append(loop.create_task(c.aget_or_set("k", slow)))
        loop.run_until_complete(asyncio.wait_for(until_started(), DEADLINE))
        loop.close()  # without cancelling the task; the thread lives on
        release.wait(DEADLINE)

    t = threading.Thread(target=in_thread)
    t.start()
    try:
        assert started.wait(DEADLINE)
        while t.is_alive() and not box:
            t.join(0.001)
        task = box.pop()
        del task
        gc.collect()
        assert c.get_or_set("k", lambda: b"main") == b"main"
        assert [u.exc_value for u in unraisable] == []
    finally:
        sys.unraisablehook = hook
        release.set()
        t.join(DEADLINE)
        c.close()


def test_waiting_tasks_leave_the_default_executor_free(path):
    c = larder.Cache(path, capacity=4 << 20, fill_timeout=20)
    holding = threading.Event()
    job_done = threading.Event()
    released = threading.Event()
    held_when_job_ran = []

    def fill():
        holding.set()
        job_done.wait(10)  # the fill lasts until the unrelated job has run, or 10 s
        released.set()
        return b"slow"

    filler = threading.Thread(target=lambda: c.get_or_set("k", fill))
    filler.start()

    async def main():
        loop = asyncio.get_running_loop()
        waiters = [asyncio.ensure_future(c.aget_or_set("k", lambda: b"w")) for _ in range(50)]
        await asyncio.sleep(0)  # the waiters start waiting
        started = loop.time()
        await asyncio.wait_for(
            loop.run_in_executor(None, lambda: held_when_job_ran.append(not released.is_set())),
            DEADLINE,
        )
        took = loop.time() - started
        job_done.set()
        got = await asyncio.wait_for(asyncio.gather(*waiters), DEADLINE)
        return took, got

    try:
        assert holding.wait(DEADLINE)
        took, got = asyncio.run(main())
        print(f"unrelated default-executor job with 50 waiters: {took * 1e3:.2f} ms")
        assert held_when_job_ran == [True]
        assert got == [b"slow"] * 50
    finally:
        job_done.set()
        filler.join(DEADLINE)
        c.close()


def _same_slot_key(c, key):
    return next(
        k
        for k in (f"other-{i}" for i in range(100000))
        if c._fill_slot_of(k) == c._fill_slot_of(key)
    )


def test_a_sync_fill_nested_in_its_own_slot_fails_at_once(path):
    c = larder.Cache(path, capacity=4 << 20, fill_timeout=3)
    other = _same_slot_key(c, "k")
    try:
        for nested in ("k", other):
            with pytest.raises(larder.FillSlotHeld):
                c.get_or_set("k", lambda: c.get_or_set(nested, lambda: b"inner"))
            assert c.get("k") is None
        # Outside the fill, and for a key of another slot inside it, all is as usual.
        third = next(
            f"x{i}" for i in range(1000) if c._fill_slot_of(f"x{i}") != c._fill_slot_of("k")
        )
        assert c.get_or_set("k", lambda: c.get_or_set(third, lambda: b"3") + b"k") == b"3k"
        assert c.get_or_set(other, lambda: b"o") == b"o"
    finally:
        c.close()


def test_an_async_fill_nested_in_its_own_slot_fails_at_once(path):
    c = larder.Cache(path, capacity=4 << 20, fill_timeout=3)
    other = _same_slot_key(c, "k")

    async def main():
        for nested in ("k", other):

            async def fill():
                return await c.aget_or_set(nested, lambda: b"inner")

            with pytest.raises(larder.FillSlotHeld):
                await c.aget_or_set("k", fill)
        # The sync twin inside an async fill, too.
        with pytest.raises(larder.FillSlotHeld):
            await c.aget_or_set("k", lambda: c.get_or_set(other, lambda: b"inner"))
        # A task made inside a fill, run after it ended, is not refused.
        later = []

        async def spawning():
            later.append(asyncio.ensure_future(c.aget_or_set(other, lambda: b"later")))
            return b"outer"

        assert await c.aget_or_set("k", spawning) == b"outer"
        return await asyncio.wait_for(later[0], DEADLINE)

    try:
        assert asyncio.run(main()) == b"later"
    finally:
        c.close()


def test_a_lookup_counts_once(path):
    c = larder.Cache(path, capacity=4 << 20, fill_timeout=20)
    holding = threading.Event()
    fail = threading.Event()

    def failing_fill():
        holding.set()
        fail.wait(DEADLINE)
        raise KeyError("source down")

    def sync_fill():
        with pytest.raises(KeyError):
            c.get_or_set("k", failing_fill)

    try:
        before = counts(c)
        assert asyncio.run(c.aget_or_set("a", lambda: b"a")) == b"a"
        assert moved(before, counts(c)) == {"hits": 0, "misses": 1, "fills": 1}
        before = counts(c)
        assert asyncio.run(c.aget_or_set("a", lambda: b"b")) == b"a"
        assert moved(before, counts(c)) == {"hits": 1, "misses": 0, "fills": 0}
        # A task waiting for another thread's fill, which fails: it takes the fill over.
        before = counts(c)
        filler = threading.Thread(target=sync_fill)
        filler.start()
        assert holding.wait(DEADLINE)

        async def main():
            waiter = asyncio.ensure_future(c.aget_or_set("k", lambda: b"taken over"))
            await asyncio.sleep(0)
            fail.set()
            return await asyncio.wait_for(waiter, DEADLINE)

        assert asyncio.run(main()) == b"taken over"
        filler.join(DEADLINE)
        # Two lookups (the thread's and the task's), one fill.
        assert moved(before, counts(c)) == {"hits": 0, "misses": 2, "fills": 1}
    finally:
        fail.set()
        c.close()


def test_a_fill_holder_stores_once(cache):
    from concurrent.futures import Future

    begun, done = Future(), Future()
    holder = cache._hold_fill("k", lambda kind, payload: begun.set_result((kind, payload)))
    try:
        assert begun.result(DEADLINE) == ("fill", None)
        holder.complete(b"v", None, lambda stored, error: done.set_result((stored, error)))
        assert done.result(DEADLINE) == (True, None)
        with pytest.raises(ValueError, match="ended"):
            holder.complete(b"again", None, lambda stored, error: None)
        assert cache.get("k") == b"v"
    finally:
        holder.abandon()
