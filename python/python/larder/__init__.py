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
"""

import functools as _functools
import hashlib as _hashlib

from . import _larder
from ._errors import *  # noqa: F401,F403
from ._errors import __all__ as _errors_all

__version__ = _larder.__version__
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
    creates the file, or attaches if it exists with the same parameters. Handles work in
    a ``fork``ed child and pickle (re-attaching by path) for ``spawn`` and
    ``forkserver`` workers.
    """

    __slots__ = ()

    def __reduce__(self):
        return (_unpickle, (type(self), self._pickle_state()))

    def memoize(self, ttl=None, key=None):
        """Decorator: caches the function's results with single flight across processes.

        ``key(*args, **kwargs)`` gives the cache key (bytes or str); by default it is the
        function's qualified name and a hash of the arguments' ``repr``. Results go
        through the cache's serializer, so without one the function returns bytes-like
        values. ``@cache.memoize`` without parentheses works too.
        """
        if callable(ttl) and key is None:
            return self.memoize()(ttl)

        def decorate(fn):
            prefix = f"memoize:{fn.__module__}.{fn.__qualname__}:"

            @_functools.wraps(fn)
            def wrapper(*args, **kwargs):
                if key is not None:
                    k = key(*args, **kwargs)
                else:
                    r = repr((args, sorted(kwargs.items()))).encode()
                    k = prefix + _hashlib.blake2b(r, digest_size=16).hexdigest()
                return self.get_or_set(k, lambda: fn(*args, **kwargs), ttl)

            return wrapper

        return decorate


__all__ = ["Cache", *_errors_all]
