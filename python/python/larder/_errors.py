"""The exceptions larder raises: one class per Rust ``larder::Error`` variant.

Each derives from :class:`LarderError` and from the builtin a Python caller would catch
anyway (``TimeoutError`` for lock and fill timeouts, ``ValueError`` for bad names,
options and sizes, ``PermissionError`` for unsafe files, ...). The message says what
happened and what to do about it in this package's terms (``larder.Cache(name)``,
``larder.Cache.unlink(name)``, the ``larder`` command), never a Rust call.
"""

import errno as _errno


class LarderError(Exception):
    """Base of every larder error (also raised as is for an error this build does not name)."""


class InvalidName(LarderError, ValueError):
    """The cache name is neither a valid bare name nor a path."""


class InvalidOptions(LarderError, ValueError):
    """The options cannot make a working cache."""


class TooLarge(LarderError, ValueError):
    """A key or value is over the file's limits; nothing was stored."""


class Incompatible(LarderError, ValueError):
    """The file exists with other creation parameters (or another layout)."""


class Version(LarderError):
    """The file is a larder cache of another format version."""


class NotACache(LarderError):
    """The file is not a larder cache."""


class Corrupt(LarderError):
    """Something read from the file failed a check."""


class UnsafeFile(LarderError, PermissionError):
    """The file may not be trusted (symlink, foreign owner, world-writable, ...)."""


class Truncated(LarderError):
    """The file is shorter than its header says."""


class OtherBoot(LarderError):
    """The file was created during another boot."""


class OtherPidNamespace(LarderError):
    """The file was created in another pid namespace."""


class OtherTimeNamespace(LarderError):
    """The file was created in another time namespace."""


class Detached(LarderError):
    """The file was replaced or removed and this handle cannot attach to the new one."""


class NoSpace(LarderError, OSError):
    """No room on the file system for a new cache file (errno ENOSPC)."""


class Timeout(LarderError, TimeoutError):
    """A lock or another process's fill was not available before its deadline."""


class WouldBlock(LarderError, BlockingIOError):
    """A non-waiting operation would have had to wait for a lock."""


class InUse(LarderError):
    """An offline operation needs the file to itself, and processes are attached."""


class NotFound(LarderError, FileNotFoundError):
    """No cache file exists at this path (opening without creation parameters attaches)."""


class ProcUnavailable(LarderError, OSError):
    """/proc is not mounted here: larder needs it (the boot id and the namespaces that
    make sharing safe) and refuses to create or attach without it (errno ENOENT)."""


class Io(LarderError, OSError):
    """Any other error from the operating system; ``errno`` is set."""


class NotACounter(LarderError, TypeError):
    """``incr`` found a value that is not a counter (8 bytes, a little-endian int64)."""


class Overflow(LarderError, OverflowError):
    """``incr`` would take the counter outside int64; nothing was changed."""


class InvalidArgument(LarderError, ValueError):
    """A call's arguments do not fit together."""


class FillSlotHeld(LarderError, RuntimeError):
    """A ``get_or_set``, ``aget_or_set`` or memoized call made inside the fill of another
    whose key shares its fill slot (the same key, or one in 256 other keys): it would
    wait for a fill its own caller holds. Raised at once; nothing was computed."""


__all__ = [
    "LarderError",
    "FillSlotHeld",
    "NotACounter",
    "Overflow",
    "InvalidArgument",
    "InvalidName",
    "InvalidOptions",
    "TooLarge",
    "Incompatible",
    "Version",
    "NotACache",
    "Corrupt",
    "UnsafeFile",
    "Truncated",
    "OtherBoot",
    "OtherPidNamespace",
    "OtherTimeNamespace",
    "Detached",
    "NoSpace",
    "Timeout",
    "WouldBlock",
    "InUse",
    "NotFound",
    "ProcUnavailable",
    "Io",
]

del _errno
