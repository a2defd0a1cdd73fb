"""gets/cas, try_get, entries, set_many, delete_many, counters as ints, and a Cache as a
MutableMapping (cachetools.cached over it)."""

import collections.abc
import functools
import signal

import pytest

import _workers
import larder


def test_gets_and_cas_follow_pymemcache(cache):
    assert cache.gets("k") == (None, None)
    assert cache.gets("k", b"d", b"c") == (b"d", b"c")
    cache.set("k", b"v1")
    value, token = cache.gets("k")
    assert value == b"v1" and isinstance(token, bytes)
    # Unchanged: the same version is read again.
    assert cache.gets("k") == (b"v1", token)
    assert cache.cas("k", b"v2", token) is True
    assert cache.get("k") == b"v2"
    # The token is spent: the entry has a new version.
    assert cache.cas("k", b"v3", token) is False
    _, fresh = cache.gets("k")
    cache.set("k", b"other writer")
    assert cache.cas("k", b"v4", fresh) is False
    assert cache.get("k") == b"other writer"
    # No entry: None.
    assert cache.cas("absent", b"x", fresh) is None
    cache.delete("k")
    assert cache.cas("k", b"x", fresh) is None
    assert cache.get("k") is None


def test_cas_tokens_are_checked(cache):
    cache.set("k", b"v")
    with pytest.raises(TypeError, match="token"):
        cache.cas("k", b"x", 12)
    with pytest.raises(ValueError, match="24 bytes"):
        cache.cas("k", b"x", b"short")
    # A token no file gave out matches nothing.
    assert cache.cas("k", b"x", bytes(24)) is False
    assert cache.get("k") == b"v"


def test_cas_token_of_one_key_does_not_match_another(cache):
    cache.set("a", b"1")
    cache.set("b", b"2")
    _, token = cache.gets("a")
    assert cache.cas("b", b"x", token) is False
    assert cache.get("b") == b"2"


def test_cas_goes_through_the_serializer(path):
    with larder.Cache(path, capacity=4 << 20, serializer="json") as c:
        c.set("doc", {"n": 1})
        doc, token = c.gets("doc")
        doc["n"] += 1
        assert c.cas("doc", doc, token) is True
        assert c.get("doc") == {"n": 2}


def test_get_counter_reads_counters_as_ints(cache):
    assert cache.get_counter("hits") is None
    assert cache.get_counter("hits", 0) == 0
    assert cache.incr("hits", 5) == 5
    assert cache.incr("hits", -7) == -2
    assert cache.get_counter("hits") == -2
    # get returns the stored bytes, as for any entry.
    assert cache.get("hits") == (-2).to_bytes(8, "little", signed=True)
    cache.set("name", b"alice")
    with pytest.raises(larder.NotACounter):
        cache.get_counter("name")


def test_set_many_and_delete_many(path):
    with larder.Cache(path, capacity=4 << 20, max_value_len=64) as c:
        failed = c.set_many({"a": b"1", b"b": b"2", "big": b"x" * 65}, ttl=60)
        assert failed == ["big"]
        assert c.get_many(["a", "b", "big"]) == [b"1", b"2", None]
        assert c.delete_many(["a", "b", "absent"]) == 2
        assert c.get_many(["a", "b"]) == [None, None]
        assert c.set_many({}) == []
        with pytest.raises(TypeError):
            c.delete_many("a")


def test_delete_many_revokes_tickets(cache):
    ticket = cache.ticket("t")
    assert cache.delete_many(["t"]) == 0
    assert cache.set_with_ticket("t", b"v", ticket) is False


def test_entries_lists_every_entry(cache):
    cache.set("a", b"12345", ttl=100)
    cache.set("b", b"")
    cache.incr("n")
    got = {key: (n, ttl) for key, n, ttl in cache.entries()}
    assert set(got) == {b"a", b"b", b"n"}
    assert got[b"a"][0] == 5 and 0 < got[b"a"][1] <= 100
    assert got[b"b"] == (0, None)
    assert got[b"n"] == (8, None)


def test_entries_and_iteration_of_expired_entries(path):
    with larder.Cache(path, capacity=4 << 20, manual_clock=True) as c:
        c.set("old", b"v", ttl=1)
        c.set("new", b"v")
        c.advance_clock(2)
        assert {e[0]: e[2] for e in c.entries()} == {b"old": 0.0, b"new": None}
        assert list(c) == [b"new"]


def test_try_get_answers_without_waiting(cache):
    assert cache.try_get("k") is None
    assert cache.try_get("k", b"d") == b"d"
    cache.set("k", b"v")
    assert cache.try_get("k") == b"v"


@pytest.mark.skipif(not larder._larder.CRASH_POINTS, reason="needs the crash-points wheel")
def test_try_get_would_block_on_a_writer_stopped_mid_write(path, procs):
    c = larder.Cache(path, capacity=4 << 20, lock_timeout=0.2)
    try:
        c.set("k", b"old..")  # the length of the child's value: overwritten in place
        p = _workers.start_child(procs, ["set", path, "k"], "overwrite.mid_value", "stop")
        _workers.wait_stopped(p)
        try:
            with pytest.raises(larder.WouldBlock):
                c.try_get("k")
            with pytest.raises(BlockingIOError):
                c.try_get("k", b"default")
            with pytest.raises(TimeoutError):
                c.get("k")
        finally:
            p.send_signal(signal.SIGCONT)
        assert p.wait(timeout=60) == 0
        assert c.try_get("k") == b"child"
    finally:
        c.close()


def test_a_cache_is_a_mutable_mapping(cache):
    assert isinstance(cache, collections.abc.MutableMapping)
    assert len(cache) == 0 and list(cache) == []
    cache["a"] = b"1"
    cache.update({"b": b"2", "c": b"3"})
    assert len(cache) == 3
    assert sorted(cache) == [b"a", b"b", b"c"]
    assert sorted(cache.keys()) == [b"a", b"b", b"c"]
    assert sorted(cache.values()) == [b"1", b"2", b"3"]
    assert sorted(cache.items()) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]
    assert "a" in cache and b"a" in cache.keys()
    assert cache.pop("a") == b"1"
    assert cache.pop("a", None) is None
    assert cache.setdefault("d", b"4") == b"4"
    assert cache.setdefault("d", b"5") == b"4"
    key, value = cache.popitem()
    assert key not in cache
    left = sorted(cache)
    del cache[left[0]]
    assert sorted(cache) == left[1:]
    with pytest.raises(KeyError):
        del cache["never"]
    # A handle is equal only to itself, and hashable.
    assert cache == cache and hash(cache) == hash(cache)
    assert {cache: 1}[cache] == 1


def test_iteration_goes_shard_by_shard(path):
    with larder.Cache(path, capacity=8 << 20, shards=4) as c:
        for i in range(200):
            c[f"k{i}"] = b"v"
        shards = [c.shard_of(k) for k in c]
        assert len(shards) == 200
        assert shards == sorted(shards)
        assert len(set(shards)) == 4


def test_cachetools_cached_over_a_cache(path):
    import cachetools

    with larder.Cache(path, capacity=4 << 20, serializer="pickle") as c:
        calls = []

        @cachetools.cached(c, key=functools.partial(larder.cachetools_key, "square"))
        def square(x, scale=1):
            calls.append(x)
            return {"x": x * x * scale}

        assert square(3) == {"x": 9}
        assert square(3) == {"x": 9}
        assert square(3, scale=2) == {"x": 18}
        assert calls == [3, 3]
        # One entry per distinct call, under a bytes key.
        assert len(c) == 2
        assert all(k.startswith(b"cachetools:") for k in c)
        # Another handle (another process would do the same) sees the results.
        with larder.Cache(path, serializer="pickle") as other:
            assert other[larder.cachetools_key("square", 3)] == {"x": 9}


def test_cachetools_key_is_stable_and_refuses_what_it_cannot_key():
    assert larder.cachetools_key(1, "a", k=2.5) == larder.cachetools_key(1, "a", k=2.5)
    assert larder.cachetools_key(1) != larder.cachetools_key("1")
    assert larder.cachetools_key(1) != larder.cachetools_key(x=1)
    assert isinstance(larder.cachetools_key(), bytes)
    with pytest.raises(TypeError, match="cachetools_key cannot key argument 0"):
        larder.cachetools_key(object())


def test_importing_larder_does_not_import_asyncio():
    import subprocess
    import sys

    code = "import sys, larder; print('asyncio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
