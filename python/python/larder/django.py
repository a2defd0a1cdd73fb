"""A Django cache backend over one larder file that every worker process shares::

    CACHES = {
        "default": {
            "BACKEND": "larder.django.LarderCache",
            "LOCATION": "authz",               # /dev/shm/authz, or a path on a tmpfs
            "TIMEOUT": 300,
            "OPTIONS": {"capacity": 64 << 20, "max_value_len": 1 << 20},
        }
    }

``OPTIONS`` are ``larder.Cache``'s arguments (``capacity``, ``max_key_len``,
``max_value_len``, ``shards``, ``lock_timeout``, ``fill_timeout``, ``mode``,
``expected_entry_size``, ``allow_uids``, ``group``, ``on_mismatch``, ``generation``;
names are case-insensitive), plus ``serializer``: ``"pickle"`` (the default, as for
Django's own backends), ``"json"``, or an object with ``dumps`` and ``loads``, used
for every value but an ``int``. An ``int`` that fits 64 bits is stored as a larder
counter, so ``incr``/``decr`` are one atomic step in the file for every process.

Django's semantics: ``TIMEOUT``/``timeout=None`` never expires, ``0`` or less
expires at once (the key is deleted, nothing is stored); ``KEY_PREFIX``, ``VERSION``
and ``KEY_FUNCTION`` shape the keys; ``incr``/``decr`` raise ``ValueError`` on a
missing key; ``set_many`` returns the keys it could not store; ``clear`` empties the
whole file, like Redis's ``FLUSHDB``. ``get_or_set`` with a callable computes a
missing value in one process at a time (larder's single flight). The ``a*`` methods
use ``larder.Cache``'s awaitable methods where the installed larder has them, and
Django's thread-pool defaults otherwise.
"""

import json
import pickle

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured

import larder

from . import _framework

# Options of Django's culling backends that mean nothing here: larder's capacity bounds
# the file, and it evicts by itself.
_CULL_OPTIONS = ("max_entries", "cull_frequency")
_MISS = object()


class _JsonSerializer:
    @staticmethod
    def dumps(value):
        return json.dumps(value, separators=(",", ":")).encode()

    @staticmethod
    def loads(data):
        return json.loads(data)


class _PickleSerializer:
    @staticmethod
    def dumps(value):
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data):
        return pickle.loads(data)


def _serializer(spec):
    if spec is None or spec == "pickle":
        return _PickleSerializer
    if spec == "json":
        return _JsonSerializer
    if hasattr(spec, "dumps") and hasattr(spec, "loads"):
        return spec
    raise ImproperlyConfigured(
        f'OPTIONS["serializer"] is "pickle", "json" or an object with dumps and '
        f"loads, not {spec!r}"
    )


class LarderCache(BaseCache):
    """Django's cache API over a ``larder.Cache``; see the module's documentation."""

    # The handle's class: a subclass of larder.Cache (tests use one with awaitable
    # methods to exercise the native a* path).
    handle_class = larder.Cache

    def __init__(self, location, params):
        super().__init__(params)
        if not location:
            raise ImproperlyConfigured(
                "larder.django.LarderCache needs a LOCATION: the cache file's name "
                "(in /dev/shm) or its path"
            )
        options = {str(k).lower(): v for k, v in (params.get("OPTIONS") or {}).items()}
        culling = [k for k in _CULL_OPTIONS if k in options]
        if culling:
            raise ImproperlyConfigured(
                f"larder.django.LarderCache has no {', '.join(culling).upper()}: the "
                f'file\'s size is OPTIONS["capacity"] (bytes), and a full file evicts '
                f"by itself (S3-FIFO)"
            )
        serializer = _serializer(options.pop("serializer", None))
        self._dumps = serializer.dumps
        self._loads = serializer.loads
        self._location = location
        self._options = options
        self._handle = None

    @property
    def _cache(self):
        """The process's handle on the file, attached on first use."""
        handle = self._handle
        if handle is None or handle.closed:
            handle = self._handle = _framework.shared_handle(
                self.handle_class, self._location, self._options
            )
        return handle

    def get_backend_timeout(self, timeout=DEFAULT_TIMEOUT):
        """The TTL in seconds for larder (``None``: never expires; ``0``: expires at
        once, so nothing is stored)."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else max(0, timeout)

    def _encode(self, value):
        return _framework.encode(value, self._dumps)

    def _decode(self, raw):
        return _framework.decode(raw, self._loads)

    # Every operation is written once, as a generator that yields the larder calls it
    # makes, ("method", args...), and receives their results (or has their exceptions
    # thrown into it): _run makes them on the handle, _arun awaits the handle's
    # awaitable variants ("a" + method).

    def _run(self, op):
        cache = self._cache
        result = error = None
        while True:
            try:
                call = op.send(result) if error is None else op.throw(error)
            except StopIteration as stop:
                return stop.value
            try:
                result, error = getattr(cache, call[0])(*call[1:]), None
            except Exception as e:  # handed to the operation, which may handle it
                result, error = None, e

    async def _arun(self, op):
        cache = self._cache
        result = error = None
        while True:
            try:
                call = op.send(result) if error is None else op.throw(error)
            except StopIteration as stop:
                return stop.value
            try:
                result, error = await getattr(cache, "a" + call[0])(*call[1:]), None
            except Exception as e:
                result, error = None, e

    @property
    def _native_async(self):
        return hasattr(self._cache, "aget")

    def _get(self, key, default, version):
        raw = yield ("get", self.make_and_validate_key(key, version=version))
        return default if raw is None else self._decode(raw)

    def _set(self, key, value, timeout, version):
        key = self.make_and_validate_key(key, version=version)
        data = self._encode(value)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            yield ("delete", key)
            return
        try:
            yield ("set", key, data, ttl)
        except (larder.TooLarge, larder.NoSpace):
            yield from self._forget(key)
            raise

    def _forget(self, key):
        """After a failed store: never leave the value it was meant to replace (a key
        too long to store has none, and its delete fails the same way)."""
        try:
            yield ("delete", key)
        except larder.TooLarge:
            pass

    def _add(self, key, value, timeout, version):
        key = self.make_and_validate_key(key, version=version)
        data = self._encode(value)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            # It would have been added, and expired at once.
            return (yield ("get", key)) is None
        return (yield ("add", key, data, ttl))

    def _touch(self, key, timeout, version):
        key = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            return (yield ("delete", key))
        return (yield ("touch", key, ttl))

    def _delete(self, key, version):
        return bool((yield ("delete", self.make_and_validate_key(key, version=version))))

    def _has_key(self, key, version):
        return (yield ("get", self.make_and_validate_key(key, version=version))) is not None

    def _get_many(self, keys, version):
        keys = {self.make_and_validate_key(k, version=version): k for k in keys}
        if not keys:
            return {}
        raws = yield ("get_many", list(keys))
        return {keys[k]: self._decode(raw) for k, raw in zip(keys, raws) if raw is not None}

    def _set_many(self, data, timeout, version):
        items = {self.make_and_validate_key(k, version=version): (k, v) for k, v in data.items()}
        ttl = self.get_backend_timeout(timeout)
        failed = []
        for key, (original, value) in items.items():
            if ttl == 0:
                yield ("delete", key)
                continue
            encoded = self._encode(value)
            try:
                yield ("set", key, encoded, ttl)
            except (larder.TooLarge, larder.NoSpace):
                yield from self._forget(key)
                failed.append(original)
        return failed

    def _delete_many(self, keys, version):
        for key in [self.make_and_validate_key(k, version=version) for k in keys]:
            yield ("delete", key)

    def _incr(self, name, delta, version):
        key = self.make_and_validate_key(name, version=version)
        if (yield ("get", key)) is None:
            raise ValueError(f"Key '{name}' not found.")
        if _framework.is_counter(delta):
            # One atomic step in the file. Were the key removed or expired since the
            # check above, it is created at delta, with the default timeout, as
            # Django's own get-then-set incr would.
            ttl = self.get_backend_timeout(DEFAULT_TIMEOUT)
            try:
                return (yield ("incr", key, delta, 0, ttl))
            except (larder.NotACounter, larder.Overflow):
                pass
        # Not a counter (a float, a None, an int beyond 64 bits): Django's generic
        # read, add, write, which raises TypeError for a value that does not add.
        raw = yield ("get", key)
        if raw is None:
            raise ValueError(f"Key '{name}' not found.")
        value = self._decode(raw) + delta
        data = self._encode(value)
        yield ("set", key, data, self.get_backend_timeout(DEFAULT_TIMEOUT))
        return value

    # Django's API.

    def get(self, key, default=None, version=None):
        return self._run(self._get(key, default, version))

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        self._run(self._set(key, value, timeout, version))

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._run(self._add(key, value, timeout, version))

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return self._run(self._touch(key, timeout, version))

    def delete(self, key, version=None):
        return self._run(self._delete(key, version))

    def has_key(self, key, version=None):
        return self.make_and_validate_key(key, version=version) in self._cache

    def get_many(self, keys, version=None):
        return self._run(self._get_many(keys, version))

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        cache = self._cache
        ttl = self.get_backend_timeout(timeout)
        if not hasattr(cache, "set_many") or ttl == 0:
            return self._run(self._set_many(data, timeout, version))
        names = {}
        encoded = {}
        for name, value in data.items():
            key = self.make_and_validate_key(name, version=version)
            names[key] = name
            encoded[key] = self._encode(value)
        failed = cache.set_many(encoded, ttl)
        for key in failed:
            self._run(self._forget(key))
        return [names[key] for key in failed]

    def delete_many(self, keys, version=None):
        cache = self._cache
        if not hasattr(cache, "delete_many"):
            return self._run(self._delete_many(keys, version))
        cache.delete_many([self.make_and_validate_key(k, version=version) for k in keys])

    def incr(self, key, delta=1, version=None):
        return self._run(self._incr(key, delta, version))

    def get_or_set(self, key, default, timeout=DEFAULT_TIMEOUT, version=None):
        ttl = self.get_backend_timeout(timeout)
        if not callable(default) or ttl == 0:
            return super().get_or_set(key, default, timeout, version)
        # Single flight: one process computes a missing value while the others wait.
        raw = self._cache.get_or_set(
            self.make_and_validate_key(key, version=version),
            lambda: self._encode(default()),
            ttl,
        )
        return self._decode(raw)

    def clear(self):
        self._cache.clear()

    def close(self, **kwargs):
        # Django closes caches after every request; the mapping is kept for the next.
        pass

    # The awaitable API: larder's own awaitable methods, never a wait on the event
    # loop's thread; Django's thread-pool defaults where the handle has none.

    async def aget(self, key, default=None, version=None):
        if not self._native_async:
            return await super().aget(key, default, version)
        return await self._arun(self._get(key, default, version))

    async def aset(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        if not self._native_async:
            return await super().aset(key, value, timeout, version)
        await self._arun(self._set(key, value, timeout, version))

    async def aadd(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        if not self._native_async:
            return await super().aadd(key, value, timeout, version)
        return await self._arun(self._add(key, value, timeout, version))

    async def atouch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        if not self._native_async:
            return await super().atouch(key, timeout, version)
        return await self._arun(self._touch(key, timeout, version))

    async def adelete(self, key, version=None):
        if not self._native_async:
            return await super().adelete(key, version)
        return await self._arun(self._delete(key, version))

    async def ahas_key(self, key, version=None):
        if not self._native_async:
            return await super().ahas_key(key, version)
        return await self._arun(self._has_key(key, version))

    async def aget_many(self, keys, version=None):
        if not self._native_async:
            return await super().aget_many(keys, version)
        return await self._arun(self._get_many(keys, version))

    async def aset_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        if not self._native_async:
            return await super().aset_many(data, timeout, version)
        return await self._arun(self._set_many(data, timeout, version))

    async def adelete_many(self, keys, version=None):
        if not self._native_async:
            return await super().adelete_many(keys, version)
        await self._arun(self._delete_many(keys, version))

    async def aincr(self, key, delta=1, version=None):
        if not self._native_async:
            return await super().aincr(key, delta, version)
        return await self._arun(self._incr(key, delta, version))

    async def aget_or_set(self, key, default, timeout=DEFAULT_TIMEOUT, version=None):
        ttl = self.get_backend_timeout(timeout)
        cache = self._cache
        if not callable(default) or ttl == 0 or not hasattr(cache, "aget_or_set"):
            return await super().aget_or_set(key, default, timeout, version)
        raw = await cache.aget_or_set(
            self.make_and_validate_key(key, version=version),
            lambda: self._encode(default()),
            ttl,
        )
        return self._decode(raw)

    async def aclose(self, **kwargs):
        pass
