import datetime
import errno
import pickle

import pytest

import larder


def test_mapping_protocol(cache):
    cache["a"] = b"1"
    assert cache["a"] == b"1"
    assert cache[b"a"] == b"1"  # str keys are their UTF-8 bytes
    assert "a" in cache and "b" not in cache
    with pytest.raises(KeyError):
        cache["b"]
    del cache["a"]
    with pytest.raises(KeyError):
        del cache["a"]
    assert cache.get("a") is None
    assert cache.get("a", b"d") == b"d"


def test_values_are_bytes_like_and_copied(cache):
    cache.set("ba", bytearray(b"xy"))
    cache.set("mv", memoryview(b"abcdef")[1:3])
    import array

    cache.set("arr", array.array("B", [1, 2]))
    assert cache.get("ba") == b"xy" and type(cache.get("ba")) is bytes
    assert cache.get("mv") == b"bc"
    assert cache.get("arr") == b"\x01\x02"
    with pytest.raises(TypeError):
        cache.set("i", 5)
    with pytest.raises(TypeError):
        cache.set("s", "text")
    with pytest.raises(TypeError):
        cache.set(5, b"v")


def test_add_delete_touch_clear(cache):
    assert cache.add("k", b"1")
    assert not cache.add("k", b"2")
    assert cache["k"] == b"1"
    assert cache.touch("k", ttl=60)
    assert not cache.touch("missing")
    assert cache.delete("k")
    assert not cache.delete("k")
    cache["x"] = b"1"
    cache["y"] = b"2"
    assert cache.clear() == 2
    assert "x" not in cache


def test_ttl_manual_clock(path):
    c = larder.Cache(path, capacity=4 << 20, manual_clock=True)
    c.set("t", b"v", ttl=datetime.timedelta(seconds=10))
    c.set("f", b"v", ttl=2.5)
    c.set("n", b"v")
    c.advance_clock(5)
    assert c.get("f") is None
    assert c.get_stale("f") == (b"v", True)
    assert c.get_stale("t") == (b"v", False)
    assert c.get_stale("missing") is None
    assert c["n"] == b"v"
    c.advance_clock(datetime.timedelta(seconds=6))
    assert "t" not in c
    with pytest.raises(ValueError):
        c.set("k", b"v", ttl=-1)
    c.close()
    with pytest.raises(ValueError):
        larder.Cache(path).advance_clock(1)


def test_get_or_set_single_call_and_errors(cache):
    calls = []

    def fill():
        calls.append(1)
        return b"v"

    assert cache.get_or_set("k", fill) == b"v"
    assert cache.get_or_set("k", fill) == b"v"
    assert len(calls) == 1

    class Boom(Exception):
        pass

    def bad():
        raise Boom("no")

    with pytest.raises(Boom):
        cache.get_or_set("bad", bad)
    assert "bad" not in cache
    with pytest.raises(TypeError):
        cache.get_or_set("bad", lambda: 42)
    assert "bad" not in cache


def test_memoize(path):
    c = larder.Cache(path, capacity=4 << 20, serializer="pickle")
    calls = []

    @c.memoize(ttl=60)
    def square(x, scale=1):
        calls.append(x)
        return {"v": x * x * scale}

    assert square(3) == {"v": 9}
    assert square(3) == {"v": 9}
    assert square(3, scale=2) == {"v": 18}
    assert calls == [3, 3]

    @c.memoize(key=lambda x: f"custom:{x}")
    def ident(x):
        return x

    assert ident("a") == "a"
    assert c.get("custom:a") == "a"

    @c.memoize
    def bare(x):
        return x + 1

    assert bare(1) == 2 and bare(1) == 2
    c.close()


def test_serializers(path):
    j = larder.Cache(path, capacity=4 << 20, serializer="json")
    j["o"] = {"a": [1, 2]}
    assert j["o"] == {"a": [1, 2]}
    raw = larder.Cache(path)
    assert raw["o"] == b'{"a": [1, 2]}'

    class Upper:
        def dumps(self, s):
            return s.upper().encode()

        def loads(self, b):
            return b.decode()

    u = larder.Cache(path, serializer=Upper())
    u["s"] = "abc"
    assert u["s"] == "ABC"
    with pytest.raises(ValueError):
        larder.Cache(path, serializer="yaml")
    with pytest.raises(TypeError):
        larder.Cache(path, serializer=object())
    for c in (j, raw, u):
        c.close()


def test_exceptions(path, cache):
    with pytest.raises(larder.NotFound) as e:
        larder.Cache(path + ".none")
    assert isinstance(e.value, FileNotFoundError) and "no cache at" in str(e.value)
    with pytest.raises(larder.InvalidName) as e:
        larder.Cache("bad name!")
    assert isinstance(e.value, ValueError) and isinstance(e.value, larder.LarderError)
    with pytest.raises(larder.TooLarge):
        cache.set("k" * 300, b"")
    with pytest.raises(ValueError):
        cache.set("k", bytes(100 << 10))
    with pytest.raises(larder.InvalidOptions):
        larder.Cache(path + ".x", capacity=1 << 20, max_value_len=1 << 20)
    with pytest.raises(larder.Incompatible):
        larder.Cache(cache.path, capacity=8 << 20)
    with pytest.raises(larder.InvalidOptions):
        larder.Cache(path + ".y", capacity=4 << 20, mode=0o666)
    with pytest.raises(larder.Io) as e:
        larder.Cache("/proc/larder-cannot-be-here/c", capacity=4 << 20)
    assert isinstance(e.value, OSError) and e.value.errno is not None
    assert issubclass(larder.Timeout, TimeoutError)
    assert issubclass(larder.WouldBlock, BlockingIOError)
    assert issubclass(larder.UnsafeFile, PermissionError)
    assert issubclass(larder.NoSpace, OSError)
    assert errno.ENOENT  # errno module usable


def test_attach_uses_file_parameters(path):
    a = larder.Cache(path, capacity=4 << 20, max_value_len=2048)
    b = larder.Cache(path)
    assert b.limits()["max_value_len"] == 2048
    a["k"] = b"v"
    assert b["k"] == b"v"
    assert larder.Cache.path_of("name") == "/dev/shm/name.larder4"
    a.close()
    b.close()


def test_pickle_and_context_manager(path):
    with larder.Cache(path, capacity=4 << 20, serializer="json", lock_timeout=0.25) as c:
        c["k"] = [1]
        d = pickle.loads(pickle.dumps(c))
        assert type(d) is larder.Cache
        assert d["k"] == [1]
        assert d._pickle_state()["lock_timeout"] == 0.25
        assert repr(c).startswith("larder.Cache(")
    assert c.closed
    with pytest.raises(ValueError):
        c.get("k")
    d.close()


def test_pickle_recreates_removed_file(path):
    c = larder.Cache(path, capacity=4 << 20)
    blob = pickle.dumps(c)
    c.close()
    larder.Cache.unlink(path)
    d = pickle.loads(blob)
    assert d.limits()["capacity"] == 4 << 20
    d.close()


def test_stats_verify_repair(cache):
    cache["k"] = b"v"
    cache.get("k")
    cache.get("missing")
    s = cache.stats()
    assert s["hits"] >= 1 and s["misses"] >= 1 and s["entries"] == 1
    assert len(s["shards"]) == s["shard_count"]
    assert cache.verify() == []
    r = cache.repair()
    assert r["shards"] == s["shard_count"] and r["dropped"] == 0
    assert cache["k"] == b"v"


def test_gil_released_while_waiting(cache):
    """A thread waiting in get_or_set for another thread's fill lets Python run."""
    import threading
    import time

    started = threading.Event()
    ticks = []

    def slow():
        started.set()
        time.sleep(0.3)
        return b"slow"

    t = threading.Thread(target=lambda: cache.get_or_set("g", slow))
    t.start()
    assert started.wait(10)
    waiter = threading.Thread(target=lambda: ticks.append(cache.get_or_set("g", lambda: b"x")))
    waiter.start()
    deadline = time.monotonic() + 0.2
    n = 0
    while time.monotonic() < deadline:
        n += 1
    t.join(10)
    waiter.join(10)
    assert ticks == [b"slow"]
    assert n > 1000


def test_incr_replace_get_many(cache):
    assert cache.incr("fails") == 1
    assert cache.incr("fails", 4) == 5
    assert cache.incr("quota", -1, init=100, ttl=60) == 99
    assert cache.get("fails") == (5).to_bytes(8, "little", signed=True)
    cache.set("name", b"alice")
    with pytest.raises(larder.NotACounter) as e:
        cache.incr("name")
    assert isinstance(e.value, TypeError)
    cache.set("max", (2**63 - 1).to_bytes(8, "little", signed=True))
    with pytest.raises(OverflowError):
        cache.incr("max")
    assert cache.replace("absent", b"v") is False
    assert "absent" not in cache
    assert cache.replace("name", b"bob") is True
    with pytest.raises(TypeError):
        cache.get_many("name")
    assert cache.get_many(["name", "nope", b"fails"], default=b"-") == [
        b"bob",
        b"-",
        (5).to_bytes(8, "little", signed=True),
    ]


def test_the_filler_gets_what_every_other_caller_gets(path):
    c = larder.Cache(path, capacity=4 << 20, serializer="json")
    try:
        first = c.get_or_set("pair", lambda: (1, 2))
        again = c.get_or_set("pair", lambda: (3, 4))
        assert first == again == [1, 2]
        assert c.get("pair") == [1, 2]
    finally:
        c.close()
