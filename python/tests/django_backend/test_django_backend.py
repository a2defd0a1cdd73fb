"""larder.django.LarderCache: Django's own cache test suite (BaseCacheTests, vendored in
cache/tests.py) applied to it as Django applies it to its Redis backend, then what is
larder's own: counters shared by processes, options, the awaitable methods."""

import asyncio
import itertools
import multiprocessing
import os
import uuid

import pytest
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.test import TestCase, override_settings

import larder
import larder.django
from larder import _framework

from _django_workers import incr_many
from cache.tests import BaseCacheTests, caches_setting_for_tests

_counter = itertools.count()


def unique_location():
    """A cache file of this worker process alone."""
    return f"/dev/shm/larder-django-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex}"


def remove(location):
    try:
        larder.Cache.unlink(location)
    except FileNotFoundError:
        pass


def params(location, **options):
    return {
        "BACKEND": "larder.django.LarderCache",
        "LOCATION": location,
        "OPTIONS": {"capacity": 4 << 20, "lock_timeout": 5, **options},
    }


LOCATION = unique_location()


# As Django's RedisCacheTests: every alias of Django's test settings but "cull" and
# "zero_cull", whose MAX_ENTRIES/CULL_FREQUENCY only culling backends have (larder
# bounds the file by its capacity and evicts by itself, so this backend refuses those
# options). Without those aliases the three cull tests skip themselves, as for Redis.
@override_settings(
    CACHES=caches_setting_for_tests(base=params(LOCATION), exclude={"cull", "zero_cull"})
)
class LarderCacheTests(BaseCacheTests, TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.addClassCleanup(remove, LOCATION)

    def test_counter_is_an_int_and_a_larder_counter(self):
        cache = caches["default"]
        cache.set("hits", 41)
        raw = cache._cache.get(cache.make_key("hits"))
        self.assertEqual(raw, (41).to_bytes(8, "little", signed=True))
        self.assertEqual(cache.incr("hits"), 42)
        self.assertIs(type(cache.get("hits")), int)

    def test_values_that_are_not_counters_keep_their_type(self):
        cache = caches["default"]
        for value in (
            True,
            False,
            1.5,
            1 << 70,
            -(1 << 63) - 1,
            b"12345678",
            "1234567",
        ):
            with self.subTest(value=value):
                cache.set("v", value)
                got = cache.get("v")
                self.assertEqual(got, value)
                self.assertIs(type(got), type(value))

    def test_incr_of_a_float_or_big_int_adds_in_python(self):
        cache = caches["default"]
        cache.set("f", 1.5)
        self.assertEqual(cache.incr("f"), 2.5)
        cache.set("big", (1 << 63) - 1)
        self.assertEqual(cache.incr("big"), 1 << 63)
        self.assertEqual(cache.get("big"), 1 << 63)
        self.assertEqual(cache.decr("big"), (1 << 63) - 1)

    def test_set_many_returns_the_keys_too_large_to_store(self):
        cache = caches["default"]
        cache.set("big", "old")
        too_large = "x" * (cache._cache.limits()["max_value_len"] + 1)
        self.assertEqual(cache.set_many({"small": 1, "big": too_large}), ["big"])
        self.assertEqual(cache.get("small"), 1)
        # The old value is gone rather than left behind the failed one.
        self.assertIsNone(cache.get("big"))

    def test_set_too_large_raises_and_removes_the_old_value(self):
        cache = caches["default"]
        cache.set("big", "old")
        with self.assertRaises(larder.TooLarge):
            cache.set("big", "x" * (cache._cache.limits()["max_value_len"] + 1))
        self.assertIsNone(cache.get("big"))

    def test_get_or_set_calls_a_callable_once_per_miss(self):
        cache = caches["default"]
        calls = []

        def compute():
            calls.append(1)
            return {"answer": 42}

        self.assertEqual(cache.get_or_set("k", compute), {"answer": 42})
        self.assertEqual(cache.get_or_set("k", compute), {"answer": 42})
        self.assertEqual(len(calls), 1)
        self.assertEqual(cache.get_or_set("zero", compute, timeout=0), {"answer": 42})
        self.assertIsNone(cache.get("zero"))

    def test_aliases_of_one_file_share_one_handle(self):
        self.assertIs(caches["default"]._cache, caches["v2"]._cache)


def test_incr_is_atomic_across_processes():
    location = unique_location()
    workers = []
    try:
        cache = larder.django.LarderCache(location, params(location))
        cache.set("shared", 0)
        ctx = multiprocessing.get_context("spawn")
        start = ctx.Event()
        for _ in range(4):
            args = (location, params(location), 300, start)
            workers.append(ctx.Process(target=incr_many, args=args))
            workers[-1].start()
        start.set()
        for w in workers:
            w.join(60)
        assert [w.exitcode for w in workers] == [0, 0, 0, 0]
        assert cache.get("shared") == 1200
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join(30)
        remove(location)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"MAX_ENTRIES": 10}, "MAX_ENTRIES"),
        ({"CULL_FREQUENCY": 3}, "CULL_FREQUENCY"),
        ({"serializer": 42}, "serializer"),
    ],
)
def test_refuses_options_it_cannot_honour(options, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        larder.django.LarderCache("x", {"OPTIONS": options})


def test_refuses_an_empty_location():
    with pytest.raises(ImproperlyConfigured, match="LOCATION"):
        larder.django.LarderCache("", {})


def test_options_reach_larder_and_the_serializer():
    location = unique_location()
    try:
        cache = larder.django.LarderCache(
            location,
            {
                "OPTIONS": {
                    "CAPACITY": 2 << 20,
                    "max_value_len": 4096,
                    "serializer": "json",
                }
            },
        )
        assert cache._cache.limits()["max_value_len"] == 4096
        cache.set("j", {"a": [1, 2]})
        raw = cache._cache.get(cache.make_key("j"))
        assert raw == _framework.encode({"a": [1, 2]}, lambda v: b'{"a":[1,2]}')
        assert cache.get("j") == {"a": [1, 2]}
    finally:
        remove(location)


def test_every_payload_length_round_trips():
    # A serialized payload of 7 bytes would make an 8-byte entry, a counter's length.
    for n in range(0, 20):
        payload = bytes(range(n))
        raw = _framework.encode(payload, lambda v: v)
        assert len(raw) != 8
        assert _framework.decode(raw, lambda b: b) == payload


class AwaitableCache(larder.Cache):
    """A handle with awaitable methods: larder.Cache's own where the installed larder
    has them, else each runs its synchronous method in a thread."""

    __slots__ = ()

    def __getattr__(self, name):
        if name[:1] == "a" and name[1:] in _AWAITABLE:
            method = getattr(self, name[1:])

            async def call(*args):
                return await asyncio.to_thread(method, *args)

            return call
        raise AttributeError(name)


_AWAITABLE = {"get", "set", "add", "delete", "get_many", "incr", "touch", "get_or_set"}


class SyncOnlyCache(larder.Cache):
    """A handle without awaitable methods, whatever the installed larder has."""

    __slots__ = ()

    def __getattribute__(self, name):
        if name[:1] == "a" and name[1:] in _AWAITABLE:
            raise AttributeError(name)
        return super().__getattribute__(name)


class AwaitableBackend(larder.django.LarderCache):
    handle_class = AwaitableCache


class SyncOnlyBackend(larder.django.LarderCache):
    handle_class = SyncOnlyCache


@pytest.mark.parametrize("backend", [AwaitableBackend, SyncOnlyBackend])
def test_awaitable_methods(backend):
    location = unique_location()
    cache = backend(location, params(location))
    # Native: larder's awaitable methods; else Django's defaults (a thread each).
    assert cache._native_async is (backend is AwaitableBackend)

    async def scenario():
        assert await cache.aget("a", "missing") == "missing"
        await cache.aset("a", {"x": 1})
        assert await cache.aget("a") == {"x": 1}
        assert await cache.aadd("a", 2) is False
        assert await cache.aadd("b", 2) is True
        assert await cache.aincr("b", 5) == 7
        assert await cache.adecr("b") == 6
        with pytest.raises(ValueError):
            await cache.aincr("nope")
        assert await cache.ahas_key("b") is True
        assert await cache.aget_many(["a", "b", "c"]) == {"a": {"x": 1}, "b": 6}
        assert await cache.aset_many({"c": 3, "d": "four"}, timeout=None) == []
        assert await cache.atouch("c", 0) is True
        assert await cache.ahas_key("c") is False
        assert await cache.adelete("d") is True
        assert await cache.adelete("d") is False
        await cache.adelete_many(["a", "b"])
        assert await cache.aget_many(["a", "b"]) == {}
        assert await cache.aget_or_set("e", lambda: "computed") == "computed"
        assert await cache.aget_or_set("e", lambda: "again") == "computed"
        await cache.aclose()

    try:
        asyncio.run(scenario())
    finally:
        remove(location)
