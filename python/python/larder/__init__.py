"""larder: a crash-proof cache that many processes on one Linux host share.

One memory-mapped file in /dev/shm, guarded by robust process-shared mutexes: a worker
SIGKILLed while holding a lock costs the others nothing but a repair of that shard; a
stopped one costs them a ``TimeoutError``, never a hang. ::

    import larder
    cache = larder.Cache("authz", capacity=64 << 20)   # creates or attaches
    cache.set("token:abc", b"claims", ttl=300)
    cache.get("token:abc")                              # b"claims"

Keys are ``bytes`` or ``str`` (UTF-8; ``"k"`` and ``b"k"`` are the same key). Values
are any bytes-like object and come back as ``bytes`` copied out of the file, unless a
``serializer=`` is given (``"pickle"``, ``"json"`` or an object with ``dumps`` and
``loads``). Unpickling runs code chosen by whoever wrote the bytes, so a pickle
serializer is only as safe as the file's permissions: every process that can write
the file (its owner, and its group with ``mode=0o660``) can run code in every reader.

A revoked token stays revoked. Every write of a key but ``touch`` (``delete``, even of
a key that is not cached, ``set``, ``add``, ``replace``, ``incr``, ``clear``) fences
off the fills of that key in flight, in every process: a ``get_or_set`` (or memoized
call) whose key is revoked while it computes returns its value to its caller but does
not store it. Cache-aside code of one's own gets the same with a ticket, taken on a
miss before reading what the value is computed from::

    claims = cache.get("token:abc")
    if claims is None:
        ticket = cache.ticket("token:abc")
        claims = validate("abc")       # meanwhile another worker may revoke the token
        cache.set_with_ticket("token:abc", claims, ticket, ttl=300)  # False if it did

In an event loop, the ``a*`` methods (``aget``, ``aset``, ``aget_or_set``, ...) are
awaitable twins of the calls: a hit, or a write whose lock is free, completes inline
with no thread hop; a call that would wait (a lock another process holds) waits in a
thread of larder's own executor (``WAIT_THREADS`` threads, apart from the loop's default
executor), so the loop never stalls. ``aget_or_set`` takes a coroutine function (or a
plain one) as its fill, with single flight across processes; its fill is held by a
thread of its own, and the tasks of a process waiting for one fill share it.

A ``Cache`` is a ``collections.abc.MutableMapping`` of its fresh entries (``len``,
iteration shard by shard, ``keys``, ``items``, ``values``), so
``cachetools.cached(cache, key=larder.cachetools_key)`` caches a function's results
in it.
"""

import collections.abc as _abc
import functools as _functools
import hashlib as _hashlib
import inspect as _inspect
import contextvars as _contextvars
import struct as _struct
import threading as _threading
import time as _time

from . import _larder
from ._errors import *  # noqa: F401,F403
from ._errors import FillSlotHeld as _FillSlotHeld
from ._errors import Timeout as _Timeout
from ._errors import WouldBlock as _WouldBlock
from ._errors import __all__ as _errors_all
from .near import NearCache  # noqa: F401  (larder.near: the Redis near cache)

__version__ = _larder.__version__
Ticket = _larder.Ticket
DEFAULT_CAPACITY = _larder.DEFAULT_CAPACITY
DEFAULT_MAX_KEY_LEN = _larder.DEFAULT_MAX_KEY_LEN
DEFAULT_MAX_VALUE_LEN = _larder.DEFAULT_MAX_VALUE_LEN
DEFAULT_LOCK_TIMEOUT = _larder.DEFAULT_LOCK_TIMEOUT
DEFAULT_FILL_TIMEOUT = _larder.DEFAULT_FILL_TIMEOUT


def _unpickle(cls, state):
    """Re-attaches a pickled handle by path (creating the file with its own
    parameters if it was removed meanwhile)."""
    from ._errors import Incompatible

    runtime = {
        "lock_timeout": state["lock_timeout"],
        "fill_timeout": state["fill_timeout"],
        "serializer": state["serializer"],
        "manual_clock": state["manual_clock"],
        "allow_uids": state.get("allow_uids"),
    }
    try:
        return cls(
            state["name"],
            capacity=state["capacity"],
            max_key_len=state["max_key_len"],
            max_value_len=state["max_value_len"],
            mode=state["mode"],
            shards=state["shards"],
            expected_entry_size=state["expected_entry_size"],
            **runtime,
        )
    except Incompatible:
        # Replaced by a file with other parameters: use it with its own.
        return cls(state["name"], **runtime)


def _asyncio():
    """asyncio, imported on first use: most processes never await a cache call, and
    importing asyncio costs more than importing larder."""
    import asyncio

    return asyncio


# Larder's own executor for the calls that wait (a lock another process holds, a reader
# that meets a writer mid-write): bounded, and apart from the loop's default executor, so
# that waiting cache calls never delay an application's run_in_executor(None, ...) jobs.
# Each wait ends within lock_timeout. Fills are not waited for here: a fill is begun and
# held by a thread of its own (Cache._hold_fill), one per key a process is filling.
WAIT_THREADS = 8
_waits = None
_waits_lock = _threading.Lock()


def _wait_executor():
    global _waits
    with _waits_lock:
        if _waits is None:
            from concurrent.futures import ThreadPoolExecutor

            _waits = ThreadPoolExecutor(WAIT_THREADS, thread_name_prefix="larder-wait")
        return _waits


async def _off_loop(fn, *args):
    """``fn(*args)`` in a thread of larder's own executor."""
    loop = _asyncio().get_running_loop()
    return await loop.run_in_executor(_wait_executor(), _functools.partial(fn, *args))


def _await_result(cf, timeout):
    """Awaits the concurrent future ``cf`` (set from another thread) for at most
    ``timeout`` seconds (then ``asyncio.TimeoutError``). Cancelling the awaiting task
    leaves ``cf`` alone: other tasks may await it too."""
    asyncio = _asyncio()
    loop = asyncio.get_running_loop()
    mine = loop.create_future()

    def settle(done):
        if not mine.done():
            exc = done.exception()
            if exc is not None:
                mine.set_exception(exc)
            else:
                mine.set_result(done.result())

    def on_done(done):
        try:
            loop.call_soon_threadsafe(settle, done)
        except RuntimeError:
            pass  # the loop is closed: nobody awaits any more

    cf.add_done_callback(on_done)
    return asyncio.wait_for(mine, timeout)


def _setter(cf):
    """A callback ``(result, error)`` for a holder thread, settling ``cf``."""

    def settle(result, error):
        if error is not None:
            cf.set_exception(error)
        else:
            cf.set_result(result)

    return settle


# The fill slots held by the fills this context is computing: a get_or_set inside a fill
# for a key of a slot its own caller holds would wait for itself until the fill timeout.
_held = _contextvars.ContextVar("larder_held_fill_slots", default=())


class _Held:
    """One fill slot held by a fill in progress; ``active`` until the fill ends (a task
    made inside the fill keeps a copy of the context past it)."""

    __slots__ = ("path", "slot", "active")

    def __init__(self, path, slot):
        self.path = path
        self.slot = slot
        self.active = True


def _refuse_nested(cache, key, held):
    """Raises FillSlotHeld if a fill in progress in this context holds ``key``'s slot."""
    path = cache.path
    slot = cache._fill_slot_of(key)
    for h in held:
        if h.active and h.slot == slot and h.path == path:
            raise _FillSlotHeld(
                f"get_or_set of {key!r} inside the fill of a key of the same fill slot "
                f"(the same key, or one in 256 others) would wait for its own fill: "
                f"compute this value without get_or_set, or use another cache for it"
            )


def _run_holding(cache, key, fill):
    """``fill()``, with ``key``'s fill slot marked held by this context meanwhile."""
    mark = _Held(cache.path, cache._fill_slot_of(key))
    token = _held.set(_held.get() + (mark,))
    try:
        return fill()
    finally:
        mark.active = False
        _forget(token)


def _forget(token):
    """Restores the held slots of the context ``token`` was made in. A coroutine closed
    by the garbage collector runs its ``finally`` in another context, where there is
    nothing to restore (``active`` already says the slot is free)."""
    try:
        _held.reset(token)
    except ValueError:
        pass


# The fills of this process in flight, by (cache path, key): one concurrent future each,
# set to the stored (or found) bytes, or to None if the fill was abandoned. Tasks that
# want a key another task of the process is filling wait for its future: one fill, and
# no thread, however many tasks wait.
_flights = {}
_flights_lock = _threading.Lock()


class _ItemsView(_abc.ItemsView):
    """``Cache.items()``: a key that expires or is removed between the listing of its
    shard and the read of its value is skipped."""

    __slots__ = ()

    def __iter__(self):
        miss = object()
        for key in self._mapping:
            value = self._mapping.get(key, miss)
            if value is not miss:
                yield (key, value)


class _ValuesView(_abc.ValuesView):
    """``Cache.values()``, skipping keys gone since their shard was listed."""

    __slots__ = ()

    def __iter__(self):
        miss = object()
        for key in self._mapping:
            value = self._mapping.get(key, miss)
            if value is not miss:
                yield value


class Cache(_larder.Cache, _abc.MutableMapping):
    """A handle on one cache file; see the module's documentation.

    ``Cache(name)`` with no creation parameter attaches to an existing file with its own
    parameters (``FileNotFoundError`` if there is none); with any of ``capacity``,
    ``max_key_len``, ``max_value_len``, ``mode``, ``shards``, ``expected_entry_size`` it
    creates the file, or attaches if it exists with the same parameters.
    ``allow_uids=[0]`` also accepts a file owned by those uids (by default only the
    caller's own): workers attaching to a file their master created as root. ``group=``
    (a gid) gives a file this call creates that group (with ``mode=0o660``, the pool's
    workers share it through the group). ``on_mismatch=`` says what to do with an existing
    file of other parameters: ``"fail"`` (the default: ``Incompatible``), ``"attach"``
    (use its own), or ``"replace"``, which replaces it only if it is older than these
    parameters (a lower ``generation=``, or the same one with no limit larger and one
    smaller), so old and new workers of a deploy starting side by side end on the new
    file without flapping. Handles work in
    a ``fork``ed child and pickle (re-attaching by path) for ``spawn`` and
    ``forkserver`` workers.

    How long a call can block: a read (``get``, ``get_many``, ``gets``, ``in``, ...)
    takes no lock unless a writer is mid-write in its shard, and then waits at most
    ``lock_timeout`` (0.5 s by default) for that shard's lock; a write (``set``,
    ``add``, ``delete``, ``incr``, ``touch``, ``cas``, ``set_with_ticket``, ...) waits
    at most ``lock_timeout`` for its shard's lock; ``clear``, ``verify`` and
    ``repair`` at most ``lock_timeout`` per shard; ``get_or_set`` and ``memoize``
    the lock timeout, then at most ``fill_timeout`` (5 s by default) for another
    process's fill of the key (plus its own fill's run time). Any call, once per
    250 ms, checks that the path still names its file (at most ``lock_timeout``).
    Past a deadline, ``larder.Timeout`` (a ``TimeoutError``). While it waits, the GIL
    is released. ``try_get`` never waits (``WouldBlock``); the ``a*`` methods never
    block the event loop.

    As a ``MutableMapping``: ``len(cache)`` is the number of entries the file holds
    (expired ones not yet reclaimed included, from counters, no lock); iteration
    yields the keys (``bytes``) of the fresh entries one shard at a time, each shard
    locked only while its keys are copied; ``items()`` and ``values()`` skip keys that
    vanish meanwhile. Two handles are equal only if they are the same object (a
    mapping's content comparison would read the whole file), and handles hash by
    identity.
    """

    __slots__ = ()
    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__

    def items(self):
        """The ``(key, value)`` pairs of the fresh entries, shard by shard."""
        return _ItemsView(self)

    def values(self):
        """The values of the fresh entries, shard by shard."""
        return _ValuesView(self)

    # Awaitable twins (Django's names). Each tries its call without waiting, inline;
    # only a call that would wait for another process runs in the executor.

    async def aget(self, key, default=None):
        """``get`` that never blocks the event loop."""
        try:
            return self.try_get(key, default)
        except _WouldBlock:
            return await _off_loop(self.get, key, default)

    async def aget_many(self, keys, default=None):
        """``get_many`` that never blocks the event loop."""
        if isinstance(keys, (str, bytes)):
            raise TypeError("aget_many takes an iterable of keys, not one key")
        keys = list(keys)
        try:
            return [self.try_get(k, default) for k in keys]
        except _WouldBlock:
            return await _off_loop(self.get_many, keys, default)

    async def aset(self, key, value, ttl=None):
        """``set`` that never blocks the event loop."""
        value = self._serialize_once(value)  # one dumps(), whichever path stores
        try:
            return self._try_set(key, value, ttl)
        except _WouldBlock:
            return await _off_loop(self.set, key, value, ttl)

    async def aadd(self, key, value, ttl=None):
        """``add`` that never blocks the event loop."""
        value = self._serialize_once(value)  # one dumps(), whichever path stores
        try:
            return self._try_add(key, value, ttl)
        except _WouldBlock:
            return await _off_loop(self.add, key, value, ttl)

    async def adelete(self, key):
        """``delete`` that never blocks the event loop."""
        try:
            return self._try_delete(key)
        except _WouldBlock:
            return await _off_loop(self.delete, key)

    async def aincr(self, key, delta=1, init=0, ttl=None):
        """``incr`` that never blocks the event loop."""
        try:
            return self._try_incr(key, delta, init, ttl)
        except _WouldBlock:
            return await _off_loop(self.incr, key, delta, init, ttl)

    async def atouch(self, key, ttl=None):
        """``touch`` that never blocks the event loop."""
        try:
            return self._try_touch(key, ttl)
        except _WouldBlock:
            return await _off_loop(self.touch, key, ttl)

    async def agets(self, key, default=None, cas_default=None):
        """``gets`` that never blocks the event loop."""
        try:
            return self._try_gets(key, default, cas_default)
        except _WouldBlock:
            return await _off_loop(self.gets, key, default, cas_default)

    async def acas(self, key, value, cas, ttl=None):
        """``cas`` that never blocks the event loop."""
        value = self._serialize_once(value)  # one dumps(), whichever path stores
        try:
            return self._try_cas(key, value, cas, ttl)
        except _WouldBlock:
            return await _off_loop(self.cas, key, value, cas, ttl)

    async def aticket(self, key):
        """``ticket`` that never blocks the event loop."""
        try:
            return self._try_ticket(key)
        except _WouldBlock:
            return await _off_loop(self.ticket, key)

    async def aset_with_ticket(self, key, value, ticket, ttl=None):
        """``set_with_ticket`` that never blocks the event loop."""
        value = self._serialize_once(value)  # one dumps(), whichever path stores
        try:
            return self._try_set_with_ticket(key, value, ticket, ttl)
        except _WouldBlock:
            return await _off_loop(self.set_with_ticket, key, value, ticket, ttl)

    def get_or_set(self, key, fill, ttl=None):
        """The value for ``key``, computed by ``fill()`` and stored if missing, with at
        most one process computing it at a time. Inside a fill, a ``get_or_set`` (or
        ``aget_or_set``, or memoized call) for a key of the same fill slot (the same key,
        or one in 256 others) raises ``FillSlotHeld`` at once: it would wait for the
        fill its own caller holds."""
        held = _held.get()
        if held:
            _refuse_nested(self, key, held)
        return super().get_or_set(key, lambda: _run_holding(self, key, fill), ttl)

    async def aget_or_set(self, key, fill, ttl=None):
        """``get_or_set`` for an event loop: the value of ``key``, computed by
        ``fill()`` (a coroutine function, or a plain function) and stored if missing,
        with at most one process computing it at a time.

        A hit returns inline. On a miss, the key's fill is begun and held by a thread
        of its own, while this coroutine awaits ``fill()`` on the loop; the store is
        made by that thread too (waiting up to ``lock_timeout`` for the shard lock),
        so nothing waits on the loop. Tasks of the process that want a key being
        filled wait for that one fill (at most ``fill_timeout``), with no thread each;
        a cancelled waiter costs nothing more. If ``fill()`` raises, or this task is
        cancelled or garbage-collected (from any thread), the fill is abandoned and a
        waiter computes instead, as when a filling process dies. A fill is held at
        most ``fill_timeout``: a ``fill()`` that runs longer returns its value to this
        caller without storing it (waiters would have given up by then). The caller
        gets the stored value read back through the serializer, exactly what every
        other caller gets. Inside a fill, raises ``FillSlotHeld`` as ``get_or_set``.
        """
        held = _held.get()
        if held:
            _refuse_nested(self, key, held)
        try:
            found, value = self._try_get_counting_hits(key)
            if found:
                return value
        except _WouldBlock:
            pass
        asyncio = _asyncio()
        flight_key = (self.path, key.encode() if isinstance(key, str) else bytes(key))
        deadline = _time.monotonic() + self.fill_timeout + self.lock_timeout
        while True:
            with _flights_lock:
                flight = _flights.get(flight_key)
                leading = flight is None
                if leading:
                    from concurrent.futures import Future

                    flight = _flights[flight_key] = Future()
            if leading:
                data = None
                try:
                    data = await self._lead_fill(key, fill, ttl, deadline)
                finally:
                    with _flights_lock:
                        del _flights[flight_key]
                    flight.set_result(data)
                return self._decode(data)
            try:
                data = await _await_result(flight, max(0.0, deadline - _time.monotonic()))
            except asyncio.TimeoutError:
                raise _Timeout(
                    "aget_or_set: another task's fill of this key lasted longer than the "
                    "fill timeout"
                ) from None
            if data is not None:
                return self._decode(data)
            # The filling task gave up (its fill failed or it was cancelled): try again.

    async def _lead_fill(self, key, fill, ttl, deadline):
        """Begins the fill of ``key`` on its holder thread, computes it if this process
        got it, and has the holder store it; returns the stored (or found) bytes."""
        from concurrent.futures import Future

        asyncio = _asyncio()
        begun = Future()
        holder = self._hold_fill(key, lambda kind, payload: begun.set_result((kind, payload)))
        try:
            # The holder's own wait ends within the fill and lock timeouts.
            try:
                kind, payload = await _await_result(begun, deadline - _time.monotonic() + 5)
            except asyncio.TimeoutError:
                raise _Timeout("aget_or_set: the fill's thread did not report") from None
            if kind == "error":
                raise payload
            if kind == "value":
                return payload
            mark = _Held(self.path, self._fill_slot_of(key))
            token = _held.set(_held.get() + (mark,))
            try:
                value = fill()
                if _inspect.isawaitable(value):
                    value = await value
            finally:
                mark.active = False
                _forget(token)
            data = self._encode(value)
            done = Future()
            try:
                holder.complete(data, ttl, _setter(done))
            except ValueError:
                return data  # held past the fill timeout: returned, not stored
            try:
                await _await_result(done, self.lock_timeout + 5)
            except asyncio.TimeoutError:
                raise _Timeout("aget_or_set: the fill's thread did not store it") from None
            return data
        finally:
            holder.abandon()

    def __reduce__(self):
        return (_unpickle, (type(self), self._pickle_state()))

    def memoize(self, ttl=None, key=None):
        """Decorator: caches the function's results, with single flight across
        processes (one process computes a missing result while the others wait for it).

        A call's key is ``"memoize:<module>.<qualname>:"`` followed by the hex BLAKE2b
        digest (16 bytes) of an encoding of its arguments' types and values, never of
        their ``repr``, ``id()`` or ``hash()``: the same in every process and under any
        ``PYTHONHASHSEED``. Two calls share an entry only if their arguments are the
        same in type and value, element by element:

        * accepted: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, and
          ``tuple``, ``list``, ``dict`` and ``frozenset`` of them, nested up to 100
          deep. Only these exact types: a subclass (an ``IntEnum``, a ``namedtuple``,
          an ``OrderedDict``, a ``str`` subclass) is refused rather than keyed as its
          base value, since it may behave differently for the same value;
        * ``1``, ``True``, ``1.0`` and ``"1"`` are four keys, as are ``b"a"`` and
          ``"a"``, ``(1, 2)`` and ``[1, 2]``. A float is keyed by its exact bits:
          ``0.0`` and ``-0.0`` are two keys, and a NaN shares a key only with a NaN
          of the same bits (``float("nan")`` always has the same);
        * the order of a dict's items, of a frozenset's members and of the keyword
          arguments does not matter;
        * arguments are taken as passed, as by ``functools.lru_cache``: ``f(1)``,
          ``f(x=1)`` and ``f(1, scale=1)`` (a default made explicit) are three keys.

        Any other argument (an object, a method's ``self``, a ``set``) raises
        ``TypeError`` naming it, and one nested deeper (or containing itself)
        ``ValueError``, before the function runs. Functions of the same module and
        qualname (closures made by one factory) share their keys.

        ``key=`` is for those cases, or to choose the keys that other code reads or
        deletes: ``key(*args, **kwargs)`` returns a call's cache key (``bytes`` or
        ``str``), e.g. ``key=lambda user: f"perms:{user.uid}"``, and is used as is, so
        it must tell apart every pair of calls whose results differ.

        The wrapper has ``cache_key(*args, **kwargs)``, the key of the call with those
        arguments, and ``invalidate(*args, **kwargs)``, which deletes that call's
        entry and returns whether there was one. Results go through the cache's
        serializer, so without one the function returns bytes-like values.
        ``@cache.memoize`` without parentheses works too.
        """
        if callable(ttl) and key is None:
            return self.memoize()(ttl)

        def decorate(fn):
            prefix = f"memoize:{fn.__module__}.{fn.__qualname__}:"

            def cache_key(*args, **kwargs):
                """The cache key of the call with these arguments."""
                if key is not None:
                    return key(*args, **kwargs)
                return prefix + _arguments_digest(fn.__qualname__, args, kwargs)

            def invalidate(*args, **kwargs):
                """Deletes the cached result of the call with these arguments; returns
                whether there was one."""
                return self.delete(cache_key(*args, **kwargs))

            @_functools.wraps(fn)
            def wrapper(*args, **kwargs):
                k = cache_key(*args, **kwargs)
                return self.get_or_set(k, lambda: fn(*args, **kwargs), ttl)

            wrapper.cache_key = cache_key
            wrapper.invalidate = invalidate
            return wrapper

        return decorate


# Arguments nested deeper are refused: real arguments are far shallower, and a list that
# contains itself would otherwise recurse until the interpreter's recursion limit.
_MAX_NESTING = 100
# Domain separation for the digest; a change to the encoding changes this, so that keys
# of an older encoding are never read as keys of the new one.
_DIGEST_PERSON = b"larder.memoize.1"
_LENGTH = _struct.Struct(">Q")
_FLOAT = _struct.Struct(">d")


class _Unkeyable(Exception):
    """Raised inside the encoder, with the value that has no encoding; the caller turns
    it into a TypeError that names the argument."""


class _TooDeep(Exception):
    """Raised inside the encoder; the caller turns it into a ValueError that names the
    argument."""


def _encode(value, out, depth):
    """Appends to ``out`` (a bytearray) the encoding of ``value``: a tag byte, then the
    length and bytes of a ``bytes``, ``str`` (UTF-8) or ``int`` (two's complement), the
    8 IEEE-754 bytes of a float, or the length and items of a container. Every encoding
    is self-delimiting, so a sequence of them concatenates unambiguously; a dict's items
    and a frozenset's members are sorted by their encodings, so iteration order (which
    follows ``hash()``, and so PYTHONHASHSEED, for str) does not matter."""
    kind = type(value)
    if kind is str:
        # surrogatepass: a str may hold lone surrogates; the encoding stays one-to-one.
        _put_bytes(out, b"s", value.encode("utf-8", "surrogatepass"))
    elif kind is int:
        size = value.bit_length() // 8 + 1  # room for the sign bit
        _put_bytes(out, b"i", value.to_bytes(size, "big", signed=True))
    elif kind is bytes:
        _put_bytes(out, b"b", value)
    elif value is None:
        out += b"N"
    elif kind is bool:
        out += b"T" if value else b"F"
    elif kind is float:
        out += b"f"
        out += _FLOAT.pack(value)
    elif depth >= _MAX_NESTING and kind in (tuple, list, dict, frozenset):
        raise _TooDeep
    elif kind is tuple or kind is list:
        out += b"t" if kind is tuple else b"l"
        out += _LENGTH.pack(len(value))
        for item in value:
            _encode(item, out, depth + 1)
    elif kind is dict:
        items = []
        for k, v in value.items():
            item = bytearray()
            _encode(k, item, depth + 1)
            _encode(v, item, depth + 1)
            items.append(item)
        _put_sorted(out, b"d", items)
    elif kind is frozenset:
        members = []
        for member in value:
            item = bytearray()
            _encode(member, item, depth + 1)
            members.append(item)
        _put_sorted(out, b"z", members)
    else:
        raise _Unkeyable(value)


def _put_bytes(out, tag, data):
    out += tag
    out += _LENGTH.pack(len(data))
    out += data


def _put_sorted(out, tag, items):
    out += tag
    out += _LENGTH.pack(len(items))
    for item in sorted(items):
        out += item


def cachetools_key(*args, **kwargs):
    """A ``bytes`` key of a call's arguments, for ``cachetools.cached(cache,
    key=larder.cachetools_key)`` with a ``larder.Cache`` as the cache (cachetools'
    own ``hashkey`` is a tuple, which larder cannot key, and whose ``hash()`` differs
    between processes).

    The key is ``b"cachetools:"`` and the hex BLAKE2b digest of the arguments'
    encoding, as ``Cache.memoize`` keys its calls: the same in every process, with the
    same rules (``bytes``, ``str``, ``int``, ``float``, ``bool``, ``None`` and tuples,
    lists, dicts and frozensets of them; anything else raises ``TypeError``, and one
    nested more than 100 deep, or containing itself, ``ValueError``). It does
    not include the function: functions sharing a cache pass their own name, e.g.
    ``key=functools.partial(larder.cachetools_key, "perms")``.
    """
    return b"cachetools:" + _arguments_digest(None, args, kwargs).encode()


def _arguments_digest(fn, args, kwargs):
    """The hex digest of the encoding of a call's positional arguments, then its
    keyword arguments sorted by name; ``fn`` is the memoized function's qualname for
    errors (None: ``cachetools_key``'s)."""
    out = bytearray(_LENGTH.pack(len(args)))
    for position, value in enumerate(args):
        _encode_argument(fn, f"argument {position}", value, out)
    out += _LENGTH.pack(len(kwargs))
    for name in sorted(kwargs):
        # A keyword's name is a str, or a str subclass the function sees as a str.
        _put_bytes(out, b"s", str.encode(name, "utf-8", "surrogatepass"))
        _encode_argument(fn, f"keyword argument {name!r}", kwargs[name], out)
    return _hashlib.blake2b(out, digest_size=16, person=_DIGEST_PERSON).hexdigest()


def _encode_argument(fn, where, value, out):
    try:
        _encode(value, out, 0)
    except (_Unkeyable, _TooDeep) as e:
        if fn is None:
            what = f"cachetools_key cannot key {where}, of type "
            fix = "pass cachetools.cached a key= function of your own for it"
        else:
            what = f"memoize cannot key {where} of {fn}, of type "
            fix = "pass key= to memoize to build the cache key from the arguments yourself"
        what += type(value).__qualname__
        if isinstance(e, _TooDeep):
            raise ValueError(
                f"{what}: it is nested more than {_MAX_NESTING} deep, or contains " f"itself; {fix}"
            ) from None
        offender = e.args[0]
        if offender is not value:
            what += f", which holds a value of type {type(offender).__qualname__}"
        raise TypeError(
            f"{what}: only bytes, str, int, float, bool, None and tuples, lists, dicts "
            f"and frozensets of them have a key (exact types, no subclasses but bool); "
            f"{fix}"
        ) from None


__all__ = ["Cache", "Ticket", "cachetools_key", *_errors_all]
