"""larder.cachelib.LarderCache: cachelib's own reusable test classes (vendored in
cachelib_suite/) applied to it as cachelib applies them to its Redis cache, then what
is larder's own: counters, timeouts, the file shared by processes."""

import multiprocessing
import pickle

import pytest
from cachelib.serializers import BaseSerializer

import larder
from larder import _framework
from larder.cachelib import LarderCache

from cachelib_suite.clear import ClearTests
from cachelib_suite.common import CommonTests
from cachelib_suite.delete_many_with_prefix import DeleteManyWithPrefixTests
from cachelib_suite.has import HasTests
from cachelib_suite.serializer import SerializerTests


class SillySerializer(BaseSerializer):
    """A pointless serializer only for testing (as cachelib's own tests have)."""

    def dumps(self, value):
        return repr(value).encode()

    def loads(self, bvalue):
        return eval(bvalue.decode())


class CustomCache(LarderCache):
    """The cache with a non-default serializer."""

    serializer = SillySerializer()


OPTIONS = {"capacity": 4 << 20, "lock_timeout": 5}


@pytest.fixture(params=[None, "test-key-prefix:"], ids=["no_key_prefix", "with_key_prefix"])
def key_prefix(request):
    return request.param


@pytest.fixture(params=[LarderCache, CustomCache])
def cache_factory(request, path, key_prefix):
    """As cachelib's Redis tests: a cache emptied on creation (flushdb there), each
    test on a file of its own."""

    def _factory(self, *args, **kwargs):
        kwargs.setdefault("key_prefix", key_prefix)
        cache = request.param(path, *args, **OPTIONS, **kwargs)
        cache.clear()
        return cache

    request.cls.cache_factory = _factory


# All of cachelib's reusable classes apply; none is excluded.
@pytest.mark.usefixtures("cache_factory")
class TestLarderCache(
    CommonTests, ClearTests, HasTests, DeleteManyWithPrefixTests, SerializerTests
):
    def test_int_is_a_larder_counter(self):
        cache = self.cache_factory()
        assert cache.set("n", 41)
        raw = cache._cache.get(cache._key("n"))
        assert raw == (41).to_bytes(8, "little", signed=True)
        assert cache.inc("n") == 42
        assert type(cache.get("n")) is int

    def test_inc_of_a_float_or_big_int_adds_in_python(self):
        cache = self.cache_factory()
        assert cache.set("f", 1.5)
        assert cache.inc("f") == 2.5
        assert cache.set("big", (1 << 63) - 1)
        assert cache.inc("big") == 1 << 63
        assert cache.get("big") == 1 << 63

    def test_negative_timeout_stores_nothing(self):
        cache = self.cache_factory()
        assert cache.set("k", "old")
        assert cache.set("k", "new", timeout=-1)
        assert cache.get("k") is None
        assert cache.add("k", "v", timeout=-1)
        assert not cache.has("k")

    def test_too_large_a_value_is_not_stored_and_removes_the_old_one(self):
        cache = self.cache_factory()
        too_large = "x" * (cache._cache.limits()["max_value_len"] + 1)
        assert cache.set("big", "old")
        assert cache.set("big", too_large) is False
        assert cache.get("big") is None
        assert cache.add("big", too_large) is False
        assert cache.set_many({"small": 1, "big": too_large}) == ["small"]
        too_long = "k" * (cache._cache.limits()["max_key_len"] + 1)
        assert cache.set(too_long, 1) is False


class Unpicklable:
    def __getstate__(self):
        raise pickle.PickleError()


def test_unpicklable_value_is_not_stored(path):
    # cachelib's serializer logs a PickleError and returns None.
    cache = LarderCache(path, **OPTIONS)
    assert cache.set("k", "old")
    assert cache.set("k", Unpicklable()) is False
    assert cache.add("other", Unpicklable()) is False
    assert cache.get("k") == "old"
    assert not cache.has("other")


def test_missing_name_is_a_clear_error():
    with pytest.raises(TypeError, match="CACHE_ARGS"):
        LarderCache(default_timeout=10)


def test_factory_takes_flask_caching_key_prefix(path):
    cache = LarderCache.factory(
        None, {"CACHE_KEY_PREFIX": "app1:"}, [path], {"default_timeout": 5, **OPTIONS}
    )
    assert cache.set("k", "v")
    assert cache._cache.get("app1:k") == _framework.encode("v", cache.serializer.dumps)
    assert cache.default_timeout == 5


def _inc_many(path, n, start):
    if not start.wait(30):
        raise TimeoutError("the test never started the workers")
    cache = LarderCache(path, **OPTIONS)
    for _ in range(n):
        cache.inc("shared")


def test_inc_is_atomic_across_processes(path):
    cache = LarderCache(path, **OPTIONS)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers = [ctx.Process(target=_inc_many, args=(path, 300, start)) for _ in range(4)]
    try:
        for w in workers:
            w.start()
        start.set()
        for w in workers:
            w.join(60)
        assert [w.exitcode for w in workers] == [0, 0, 0, 0]
        # Created by the first inc, never lost by a concurrent one.
        assert cache.get("shared") == 1200
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join(30)


def test_a_plain_handle_and_the_backend_share_counters(path):
    cache = LarderCache(path, **OPTIONS)
    plain = larder.Cache(path, **OPTIONS)
    plain.incr("hits", 5)
    assert cache.get("hits") == 5
    assert cache.inc("hits") == 6
