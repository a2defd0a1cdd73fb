"""larder.NearCache against a real redis-server and the wheel's ``larder listen``:
the guarantee (another client's write stops being served within the bound), a killed
listener's successor flushing, the awaitable methods leaving the event loop free, and
errors as larder's exceptions."""

import asyncio
import concurrent.futures
import os
import signal
import time

import larder
import pytest
from _redis import DEADLINE, Listening, RedisServer
from larder.near import (
    NearCacheError,
    RedisConnectionError,
    RedisError,
    RedisTimeout,
)

BOUND = 1.0


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def other(redis_server):
    """Another client of the same Redis."""
    client = redis_server.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def listening(cache, redis_server):
    listener = Listening(
        cache.path, redis_server.url, ["k:"], "--bound", f"{round(BOUND * 1000)}ms"
    )
    try:
        listener.wait_for("connected to Redis")
        yield listener
    finally:
        listener.stop()


@pytest.fixture
def near(cache, redis_server):
    n = larder.NearCache(cache, redis_server.url, ["k:"], bound=BOUND)
    try:
        yield n
    finally:
        n.close()


def wait_for_hit(near, key, value):
    """Reads ``key`` until the near cache answers it (the listener's heartbeat is
    current and the fill landed); fails after the deadline."""
    end = time.monotonic() + DEADLINE
    while True:
        before = near.stats()["hits"]
        got = near.get(key)
        assert got == value
        if near.stats()["hits"] > before:
            return
        assert time.monotonic() < end, f"no near-cache hit for {key!r}: {near.stats()}"


def test_another_clients_write_stops_being_served_within_the_bound(near, other, listening):
    other("SET", "k:a", "v1")
    wait_for_hit(near, "k:a", b"v1")
    other("SET", "k:a", "v2")
    written = time.monotonic()  # the write completed before its reply came
    end = written + DEADLINE
    while True:
        asked = time.monotonic()
        got = near.get("k:a")
        if got == b"v2":
            break
        assert got == b"v1"
        # The guarantee: a hit reflects every write completed before it minus H.
        assert asked - written < BOUND, f"v1 still served {asked - written:.3f} s after"
        assert asked < end
    # And the new value is served from the near cache again.
    wait_for_hit(near, "k:a", b"v2")


def test_a_stopped_listeners_silence_stops_hits_within_the_bound(near, other, listening):
    other("SET", "k:a", "v1")
    wait_for_hit(near, "k:a", b"v1")
    # No invalidation reaches the near cache while the listener is stopped: only the
    # heartbeat's age keeps v1 from being served past the bound.
    listening.signal(signal.SIGSTOP)
    try:
        other("SET", "k:a", "v2")
        written = time.monotonic()
        end = written + DEADLINE
        while True:
            asked = time.monotonic()
            got = near.get("k:a")
            if got == b"v2":
                break
            assert got == b"v1"
            assert asked - written < BOUND, f"v1 still served {asked - written:.3f} s after"
            assert asked < end
        before = near.stats()["bypasses"]
        assert near.get("k:a") == b"v2"
        assert near.stats()["bypasses"] == before + 1
    finally:
        listening.signal(signal.SIGCONT)


def test_a_killed_listeners_successor_flushes(cache, near, other, listening, redis_server):
    other("SET", "k:a", "v1")
    wait_for_hit(near, "k:a", b"v1")
    assert cache.get("k:a") == b"v1"
    cache.set("local:counter", b"7")  # outside the tracked prefix
    listening.signal(signal.SIGKILL)
    listening.wait()
    # Unseen by any listener: only a flush by the next one keeps v1 from being served.
    other("SET", "k:a", "v2")
    successor = Listening(
        cache.path, redis_server.url, ["k:"], "--bound", f"{round(BOUND * 1000)}ms"
    )
    try:
        line = successor.wait_for("took the lease")
        assert "from a listener that died and flushed its near cache" in line, line
        assert cache.get("k:a") is None
        assert cache.get("local:counter") == b"7"
        wait_for_hit(near, "k:a", b"v2")
    finally:
        successor.stop()


def test_without_a_listener_reads_go_to_redis(near, other):
    other("SET", "k:a", "v1")
    assert near.get("k:a") == b"v1"
    other("SET", "k:a", "v2")
    assert near.get("k:a") == b"v2"
    stats = near.stats()
    assert stats["hits"] == 0 and stats["bypasses"] == 2, stats


def test_set_and_delete_write_redis_and_drop_the_near_copy(near, other, listening):
    near.set("k:b", b"one")
    assert other("GET", "k:b") == b"one"
    wait_for_hit(near, "k:b", b"one")
    near.set(b"k:b", bytearray(b"two"), ttl=60)
    assert other("GET", "k:b") == b"two"
    assert 0 < other("PTTL", "k:b") <= 60_000
    assert near.get("k:b") == b"two"
    assert near.delete("k:b") is True
    assert other("EXISTS", "k:b") == 0
    assert near.get("k:b") is None
    assert near.get("k:b", b"dflt") == b"dflt"
    assert near.delete("k:b") is False
    # Keys outside the prefixes go to Redis only.
    near.set("other", b"x")
    before = near.stats()
    assert near.get("other") == b"x" and near.get("other") == b"x"
    after = near.stats()
    assert after["hits"] == before["hits"], (before, after)
    assert after["redis_reads"] == before["redis_reads"] + 2, (before, after)


def test_awaitables_leave_the_event_loop_free_while_redis_is_stopped(near, other, redis_server):
    async def main():
        await near.aset("k:c", b"v")
        assert await near.aget("k:c") == b"v"
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            task = asyncio.ensure_future(near.aget("k:c"))
            # Redis answers nothing while stopped: the aget cannot be done, and the
            # loop runs other work meanwhile.
            for _ in range(100):
                await asyncio.sleep(0)
            assert not task.done()
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        assert await asyncio.wait_for(task, DEADLINE) == b"v"
        assert await near.adelete("k:c") is True
        assert await near.aget("k:c", b"gone") == b"gone"

    asyncio.run(main())


def test_redis_errors_are_larders_exceptions(cache, tmp_path, redis_server):
    nowhere = f"unix://{tmp_path}/no-redis.sock"
    with pytest.raises(RedisConnectionError) as e:
        larder.NearCache(cache, nowhere, ["k:"])
    assert isinstance(e.value, ConnectionError)
    assert isinstance(e.value, larder.LarderError)
    assert isinstance(e.value, NearCacheError) and isinstance(e.value, RedisError)
    # A timeout: Redis stopped, a short io_timeout.
    n = larder.NearCache(cache, redis_server.url, ["k:"], io_timeout=0.2)
    try:
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(RedisTimeout) as e:
                n.get("k:x")
            assert isinstance(e.value, TimeoutError)
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        # Redis's own error reply (a key of another type).
        other = redis_server.client()
        try:
            other("HSET", "k:h", "f", "v")
        finally:
            other.close()
        with pytest.raises(RedisError) as e:
            n.get("k:h")
        assert "WRONGTYPE" in str(e.value)
    finally:
        n.close()


def test_bad_configurations_and_closed_handles_are_value_errors(cache, redis_server):
    with pytest.raises(larder.InvalidOptions) as e:
        larder.NearCache(cache, redis_server.url, ["k:", "k:a"])
    assert isinstance(e.value, ValueError) and "overlaps" in str(e.value)
    with pytest.raises(larder.InvalidOptions):
        larder.NearCache(cache, redis_server.url, [])
    with pytest.raises(TypeError):
        larder.NearCache(cache, redis_server.url, [1])
    n = larder.NearCache(cache, redis_server.url, ["k:"])
    n.close()
    assert n.closed
    with pytest.raises(ValueError, match="closed"):
        n.get("k:a")


def test_threads_share_one_near_cache(near, other, listening):
    for i in range(8):
        other("SET", f"k:t{i}", f"v{i}")

    def reader(n):
        for _ in range(50):
            for i in range(8):
                k = (i + n) % 8
                assert near.get(f"k:t{k}") == f"v{k}".encode()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(reader, n) for n in range(4)]:
            f.result(timeout=DEADLINE)  # a reader's failure, or a hang, fails here
    stats = near.stats()
    assert stats["hits"] + stats["redis_reads"] == 4 * 50 * 8, stats


def test_a_forked_child_uses_a_connection_of_its_own(near, other):
    other("SET", "k:f", "parent")
    assert near.get("k:f") == b"parent"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            near.set("k:f", b"child")
            code = 0 if near.get("k:f") == b"child" else 2
        finally:
            os._exit(code)
    end = time.monotonic() + DEADLINE
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish")
        time.sleep(0.01)  # a poll interval, not synchronisation
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection still answers in order.
    assert near.get("k:f") == b"child"
    assert other("GET", "k:f") == b"child"


def wait_for_a_paused_set(client):
    """Waits until Redis holds a client's SET (writes paused: ``CLIENT PAUSE … WRITE``);
    fails after the deadline."""
    end = time.monotonic() + DEADLINE
    while True:
        listing = client("CLIENT", "LIST").decode()
        for line in listing.splitlines():
            fields = dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
            if fields.get("cmd") == "set" and "b" in fields.get("flags", ""):
                return
        assert time.monotonic() < end, f"Redis holds no SET: {listing}"
        time.sleep(0.01)  # a poll interval, not synchronisation


def test_a_call_held_by_redis_does_not_hold_up_another_threads_hit(
    cache, other, listening, redis_server
):
    # A long io_timeout: the held call stays held until Redis lets it go.
    n = larder.NearCache(cache, redis_server.url, ["k:"], bound=BOUND, io_timeout=2 * DEADLINE)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        other("SET", "k:hot", "v")
        wait_for_hit(n, "k:hot", b"v")
        # Redis holds writes (reads, the listener's pings among them, go on).
        other("CLIENT", "PAUSE", str(round(3 * DEADLINE * 1000)), "WRITE")
        try:
            held = pool.submit(n.set, "other", b"x")
            wait_for_a_paused_set(other)

            def hit():
                before = n.stats()["hits"]
                got = n.get("k:hot")
                return got, n.stats()["hits"] - before

            try:
                got, hits = pool.submit(hit).result(timeout=DEADLINE)
            except concurrent.futures.TimeoutError:
                pytest.fail("a near-cache hit waited for another thread's call held by Redis")
            assert (got, hits) == (b"v", 1)
            assert not held.done(), "the held call was not in progress during the hit"
        finally:
            other("CLIENT", "UNPAUSE")
        assert held.result(timeout=DEADLINE) is None
        assert other("GET", "other") == b"x"
    finally:
        pool.shutdown(wait=True)
        n.close()
