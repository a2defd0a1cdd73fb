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
"""

import functools as _functools
import hashlib as _hashlib
import struct as _struct

from . import _larder
from ._errors import *  # noqa: F401,F403
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


class Cache(_larder.Cache):
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
    """

    __slots__ = ()

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
                return prefix + _arguments_digest(fn, args, kwargs)

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


def _arguments_digest(fn, args, kwargs):
    """The hex digest of the encoding of a call's positional arguments, then its
    keyword arguments sorted by name."""
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
        what = f"memoize cannot key {where} of {fn.__qualname__}, of type "
        what += type(value).__qualname__
        fix = "pass key= to memoize to build the cache key from the arguments yourself"
        if isinstance(e, _TooDeep):
            raise ValueError(
                f"{what}: it is nested more than {_MAX_NESTING} deep, or contains "
                f"itself; {fix}"
            ) from None
        offender = e.args[0]
        if offender is not value:
            what += f", which holds a value of type {type(offender).__qualname__}"
        raise TypeError(
            f"{what}: only bytes, str, int, float, bool, None and tuples, lists, dicts "
            f"and frozensets of them have a key (exact types, no subclasses but bool); "
            f"{fix}"
        ) from None


__all__ = ["Cache", "Ticket", *_errors_all]
