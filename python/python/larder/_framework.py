"""The value format the framework backends (``larder.django``, ``larder.cachelib``)
share: an ``int`` is stored as a larder counter, anything else through a serializer.

A counter is exactly 8 bytes, a little-endian ``int64``: the format of
``larder.Cache.incr``, so that a backend's ``incr`` is one atomic step in the file,
never lost between processes, and a ``get`` of a counter returns an ``int``. Every
other value is a tag byte followed by the serializer's bytes, and never 8 bytes long:
a payload of 7 bytes gets a second tag byte, so the length alone tells a counter from
any other value, whatever bytes the serializer writes.
"""

import os as _os
import struct as _struct
import threading as _threading

COUNTER = _struct.Struct("<q")
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_PLAIN = b"\x01"
_PADDED = b"\x02\x00"


def is_counter(value):
    """Whether ``value`` is stored as a counter: an ``int`` (not a ``bool``, whose
    type must come back) that fits an ``int64``."""
    return type(value) is int and _I64_MIN <= value <= _I64_MAX


def encode(value, dumps):
    """The bytes to store for ``value``; ``None`` if ``dumps`` returned ``None`` (a
    cachelib serializer's way of saying it could not serialize)."""
    if is_counter(value):
        return COUNTER.pack(value)
    payload = dumps(value)
    if payload is None:
        return None
    if isinstance(payload, str):
        payload = payload.encode()
    tag = _PADDED if len(payload) + len(_PLAIN) == COUNTER.size else _PLAIN
    return tag + payload


def decode(raw, loads):
    """The value for stored bytes ``raw``."""
    if len(raw) == COUNTER.size:
        return COUNTER.unpack(raw)[0]
    if raw[:1] == _PLAIN:
        return loads(raw[1:])
    if raw[:2] == _PADDED:
        return loads(raw[2:])
    raise ValueError(
        "this entry was not written by a larder framework backend (it is neither a "
        "counter nor a tagged serialized value): keep other writers off the "
        "backend's keys"
    )


_handles = {}
_handles_lock = _threading.Lock()


def _reset_lock():
    # A thread of the parent may have held the lock when it forked.
    global _handles_lock
    _handles_lock = _threading.Lock()


_os.register_at_fork(after_in_child=_reset_lock)


def shared_handle(cls, name, options):
    """One handle of class ``cls`` per file and options in a process, shared by every
    backend instance (Django makes one per thread) instead of one mapping each."""
    key = (cls, _os.fspath(name), repr(sorted(options.items())))
    handle = _handles.get(key)
    if handle is None or handle.closed:
        with _handles_lock:
            handle = _handles.get(key)
            if handle is None or handle.closed:
                handle = _handles[key] = cls(name, **options)
    return handle
