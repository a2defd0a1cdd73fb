"""A cachelib cache (and Flask-Caching backend) over one larder file that every worker
process shares::

    from larder.cachelib import LarderCache
    cache = LarderCache("authz", default_timeout=300, capacity=64 << 20)

    # Flask-Caching
    app.config.update(
        CACHE_TYPE="larder.cachelib.LarderCache",
        CACHE_ARGS=["authz"],                      # the file: /dev/shm/authz, or a path
        CACHE_OPTIONS={"capacity": 64 << 20},      # larder.Cache's arguments
        CACHE_DEFAULT_TIMEOUT=300,
    )

Keyword arguments beyond cachelib's own (``default_timeout``, ``key_prefix``,
``ignore_delete_many_errors``) are ``larder.Cache``'s (``capacity``,
``max_value_len``, ``lock_timeout``, ...). cachelib's semantics: a timeout of ``0``
never expires, ``None`` is ``default_timeout``, and a negative one expires at once;
``inc``/``dec`` of a missing key create it at ``delta`` (with ``default_timeout``).
Values go through ``self.serializer`` (pickle by default, replaceable per instance as
Flask-Caching does), except an ``int`` that fits 64 bits: it is stored as a larder
counter, so ``inc``/``dec`` are one atomic step for every process. ``clear`` empties
the whole file, whatever the ``key_prefix``.
"""

from cachelib.base import BaseCache
from cachelib.serializers import BaseSerializer

import larder

from . import _framework

_STORE_ERRORS = (larder.TooLarge, larder.NoSpace)


class LarderCache(BaseCache):
    """cachelib's ``BaseCache`` over a ``larder.Cache``; see the module's
    documentation."""

    serializer = BaseSerializer()
    # The handle's class: a subclass of larder.Cache may replace it.
    handle_class = larder.Cache

    def __init__(
        self,
        name=None,
        default_timeout=300,
        key_prefix=None,
        ignore_delete_many_errors=True,
        **options,
    ):
        if not name:
            raise TypeError(
                "larder.cachelib.LarderCache needs the cache file's name (in /dev/shm) "
                'or path: LarderCache("authz", ...), or with Flask-Caching '
                'CACHE_ARGS=["authz"] (or CACHE_OPTIONS={"name": "authz"})'
            )
        BaseCache.__init__(self, default_timeout)
        self.ignore_delete_many_errors = ignore_delete_many_errors
        self.key_prefix = key_prefix or ""
        self._name = name
        self._options = options
        self._handle = None

    @classmethod
    def factory(cls, app, config, args, kwargs):
        """Flask-Caching's constructor hook (it calls the class itself when
        ``CACHE_TYPE`` names it by this module's path, since that contains
        "cachelib"): the ``CACHE_KEY_PREFIX`` becomes the ``key_prefix``."""
        kwargs.setdefault("key_prefix", config.get("CACHE_KEY_PREFIX"))
        return cls(*args, **kwargs)

    @property
    def _cache(self):
        handle = self._handle
        if handle is None or handle.closed:
            handle = self._handle = _framework.shared_handle(
                self.handle_class, self._name, self._options
            )
        return handle

    def _key(self, key):
        prefix = self.key_prefix
        return f"{prefix if isinstance(prefix, str) else prefix()}{key}"

    def _ttl(self, timeout):
        """larder's TTL for a cachelib timeout: None for never, 0 for at once."""
        seconds = self._normalize_timeout(timeout)
        if seconds == 0:
            return None
        return max(0, seconds)

    def _decode(self, raw):
        return None if raw is None else _framework.decode(raw, self.serializer.loads)

    def get(self, key):
        return self._decode(self._cache.get(self._key(key)))

    def get_many(self, *keys):
        raws = self._cache.get_many([self._key(k) for k in keys])
        return [self._decode(raw) for raw in raws]

    def set(self, key, value, timeout=None):
        data = _framework.encode(value, self.serializer.dumps)
        if data is None:
            return False
        key = self._key(key)
        ttl = self._ttl(timeout)
        if ttl == 0:
            self._cache.delete(key)
            return True
        try:
            self._cache.set(key, data, ttl)
        except _STORE_ERRORS:
            self._forget(key)
            return False
        return True

    def _forget(self, key):
        """After a failed store: never leave the value it was meant to replace (a key
        too long to store has none, and its delete fails the same way)."""
        try:
            self._cache.delete(key)
        except larder.TooLarge:
            pass

    def add(self, key, value, timeout=None):
        data = _framework.encode(value, self.serializer.dumps)
        if data is None:
            return False
        key = self._key(key)
        ttl = self._ttl(timeout)
        if ttl == 0:
            return key not in self._cache
        try:
            return self._cache.add(key, data, ttl)
        except _STORE_ERRORS:
            return False

    def set_many(self, mapping, timeout=None):
        cache = self._cache
        ttl = self._ttl(timeout)
        if not hasattr(cache, "set_many") or ttl == 0:
            return [k for k, v in mapping.items() if self.set(k, v, timeout)]
        dumps = self.serializer.dumps
        encoded = {k: _framework.encode(v, dumps) for k, v in mapping.items()}
        keys = {self._key(k): k for k, data in encoded.items() if data is not None}
        failed = set(cache.set_many({k: encoded[name] for k, name in keys.items()}, ttl))
        for key in failed:
            self._forget(key)
        return [name for key, name in keys.items() if key not in failed]

    def delete(self, key):
        return self._cache.delete(self._key(key))

    def delete_many(self, *keys):
        cache = self._cache
        if hasattr(cache, "delete_many"):
            try:
                cache.delete_many([self._key(k) for k in keys])
                # A key that was not there is deleted too, as cachelib says.
                return list(keys)
            except larder.LarderError:
                pass  # key by key below, to tell which failed
        deleted = []
        for key in keys:
            try:
                self._cache.delete(self._key(key))
            except larder.LarderError as e:
                if not self.ignore_delete_many_errors:
                    raise RuntimeError(f"Failed to delete key {key!r}: {e}") from e
            else:
                # A key that was not there is deleted too, as cachelib says.
                deleted.append(key)
        return deleted

    def has(self, key):
        return self._key(key) in self._cache

    def clear(self):
        self._cache.clear()
        return True

    def inc(self, key, delta=1):
        k = self._key(key)
        if _framework.is_counter(delta):
            try:
                return self._cache.incr(k, delta, 0, self._ttl(None))
            except (larder.NotACounter, larder.Overflow):
                pass
        # Not a counter (a float, an int beyond 64 bits): cachelib's read, add, write.
        value = (self.get(key) or 0) + delta
        return value if self.set(key, value) else None

    def dec(self, key, delta=1):
        return self.inc(key, -delta)
