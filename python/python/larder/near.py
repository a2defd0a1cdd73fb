"""larder as each host's near cache in front of Redis or Valkey.

Worker processes read through a :class:`NearCache`: a hit comes from the host's larder
file; a miss reads Redis and fills larder. Writes and deletes go to Redis and drop the
key locally. One listener per host, ``larder listen NAME --redis URL --prefix P``
(installed with this package), keeps the near cache current through Redis client-side
caching; while none is running (or its heartbeat is older than ``bound``), readers go
to Redis. A hit reflects every write to a tracked prefix that completed more than
``bound`` seconds before it. ::

    import larder
    cache = larder.Cache("near", capacity=256 << 20)
    near = larder.NearCache(cache, "redis://127.0.0.1:6379", ["user:"], bound=1.0)
    near.set("user:1", b"alice")
    near.get("user:1")            # b"alice"; from larder once the listener runs
    await near.aget("user:1")     # the same, in a thread of the event loop's executor

Keys are ``bytes`` or ``str`` (UTF-8); values are bytes-like and come back as
``bytes``. The prefixes and the bound must be the listener's (``--prefix``,
``--bound``). Errors of the cache file raise larder's exceptions; Redis's raise
:class:`RedisError` (also a ``ConnectionError`` or ``TimeoutError`` when Redis could
not be reached or did not answer within ``io_timeout``).
"""

import functools as _functools

from . import _larder
from ._errors import LarderError

__all__ = [
    "NearCache",
    "NearCacheError",
    "RedisConnectionError",
    "RedisError",
    "RedisTimeout",
]


class NearCacheError(LarderError):
    """An error of the near cache that is not the cache file's (a server the
    listener cannot keep the near cache current with, say)."""


class RedisError(NearCacheError):
    """Redis refused a command or failed to answer it."""


class RedisConnectionError(RedisError, ConnectionError):
    """Redis could not be reached, or the connection broke (after one retry on a new
    connection)."""


class RedisTimeout(RedisError, TimeoutError):
    """Redis did not answer within ``io_timeout``."""


class NearCache(_larder.NearCache):
    """A worker's read-through client of Redis with larder as the near cache.

    ``NearCache(cache, url, prefixes, bound=1.0, io_timeout=5.0, ttl_cap=300.0)``:
    ``cache`` is a :class:`larder.Cache`, ``url`` a ``redis://`` or ``unix://`` URL,
    ``prefixes`` the tracked key prefixes (other keys always go to Redis). Durations are
    seconds or ``timedelta``.

    Threads share one object: each call takes an idle Redis connection of the object's
    pool, or opens one when none is idle, and gives it back after, so threads calling at
    once each have a connection of their own (the pool grows to the most threads that
    ever called at once, and keeps those connections until ``close``). A near-cache hit
    never waits for another thread's Redis round trip. A connection whose call failed
    because Redis could not be reached or did not answer in time is closed, not reused.
    After ``fork`` the child closes the connections it inherited and opens its own.
    ``stats()`` sums what every call completed in this process did (a call still in
    progress counts once it returns).

    The ``a*`` methods run the same calls in the event loop's default executor, so the
    loop's thread never waits on Redis or on a lock of the file. ``aget`` does so for a
    hit too: the reader under it (``larder_redis::NearCache``) has no call that answers
    a hit without, on a miss, going on to Redis in the same call, and a hit itself takes
    a shard lock of the file (a wait of up to the cache's ``lock_timeout`` behind another
    process).
    """

    async def aget(self, key, default=None):
        """``get`` without blocking the event loop (in an executor thread, hit or
        miss)."""
        return await self._in_executor(self.get, key, default)

    async def aset(self, key, value, ttl=None):
        """``set`` without blocking the event loop."""
        return await self._in_executor(self.set, key, value, ttl)

    async def adelete(self, key):
        """``delete`` without blocking the event loop."""
        return await self._in_executor(self.delete, key)

    @staticmethod
    async def _in_executor(fn, *args):
        import asyncio  # on first use: importing it costs more than importing larder

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _functools.partial(fn, *args))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
