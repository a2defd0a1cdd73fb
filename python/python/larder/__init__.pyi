from datetime import timedelta
from os import PathLike
from typing import Any, Callable, Iterable, List, Literal, Optional, Protocol, TypeVar, Union, overload

from typing_extensions import ParamSpec

from ._errors import (
    Corrupt as Corrupt,
    Detached as Detached,
    Incompatible as Incompatible,
    InUse as InUse,
    InvalidArgument as InvalidArgument,
    InvalidName as InvalidName,
    InvalidOptions as InvalidOptions,
    Io as Io,
    LarderError as LarderError,
    NoSpace as NoSpace,
    NotACache as NotACache,
    NotACounter as NotACounter,
    NotFound as NotFound,
    OtherBoot as OtherBoot,
    OtherPidNamespace as OtherPidNamespace,
    OtherTimeNamespace as OtherTimeNamespace,
    Overflow as Overflow,
    ProcUnavailable as ProcUnavailable,
    Timeout as Timeout,
    TooLarge as TooLarge,
    Truncated as Truncated,
    UnsafeFile as UnsafeFile,
    Version as Version,
    WouldBlock as WouldBlock,
)

from .near import NearCache as NearCache

__version__: str
DEFAULT_CAPACITY: int
DEFAULT_MAX_KEY_LEN: int
DEFAULT_MAX_VALUE_LEN: int
DEFAULT_LOCK_TIMEOUT: float
DEFAULT_FILL_TIMEOUT: float

Key = Union[bytes, str]
Seconds = Union[int, float, timedelta]
_P = ParamSpec("_P")
_R = TypeVar("_R")
_R_co = TypeVar("_R_co", covariant=True)

class _Memoized(Protocol[_P, _R_co]):
    """What Cache.memoize returns: the function, plus its keys and their invalidation."""

    @property
    def __wrapped__(self) -> Callable[_P, _R_co]: ...
    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R_co: ...
    def cache_key(self, *args: _P.args, **kwargs: _P.kwargs) -> Key: ...
    def invalidate(self, *args: _P.args, **kwargs: _P.kwargs) -> bool: ...

class Ticket:
    """A claim to store one key's value, from Cache.ticket(): opaque."""

class Cache:
    def __init__(
        self,
        name: Union[str, PathLike[str]],
        capacity: Optional[int] = None,
        max_key_len: Optional[int] = None,
        max_value_len: Optional[int] = None,
        lock_timeout: Optional[Seconds] = None,
        fill_timeout: Optional[Seconds] = None,
        mode: Optional[int] = None,
        shards: Optional[int] = None,
        expected_entry_size: Optional[int] = None,
        serializer: Any = None,
        manual_clock: bool = False,
        allow_uids: Optional[Iterable[int]] = None,
        group: Optional[int] = None,
        on_mismatch: Optional[Literal["fail", "attach", "replace"]] = None,
        generation: Optional[int] = None,
    ) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def limits(self) -> dict[str, int]: ...
    def get(self, key: Key, default: Any = None) -> Any: ...
    def __getitem__(self, key: Key) -> Any: ...
    def __setitem__(self, key: Key, value: Any) -> None: ...
    def __delitem__(self, key: Key) -> None: ...
    def __contains__(self, key: Key) -> bool: ...
    def set(self, key: Key, value: Any, ttl: Optional[Seconds] = None) -> None: ...
    def add(self, key: Key, value: Any, ttl: Optional[Seconds] = None) -> bool: ...
    def delete(self, key: Key) -> bool: ...
    def incr(self, key: Key, delta: int = 1, init: int = 0, ttl: Optional[Seconds] = None) -> int: ...
    def replace(self, key: Key, value: Any, ttl: Optional[Seconds] = None) -> bool: ...
    def get_many(self, keys: Iterable[Key], default: Any = None) -> List[Any]: ...
    def touch(self, key: Key, ttl: Optional[Seconds] = None) -> bool: ...
    def clear(self) -> int: ...
    def get_stale(self, key: Key, default: Any = None) -> Any: ...
    def get_or_set(self, key: Key, fill: Callable[[], Any], ttl: Optional[Seconds] = None) -> Any: ...
    def ticket(self, key: Key) -> Ticket: ...
    def set_with_ticket(
        self, key: Key, value: Any, ticket: Ticket, ttl: Optional[Seconds] = None
    ) -> bool: ...
    @overload
    def memoize(self, ttl: Callable[_P, _R]) -> _Memoized[_P, _R]: ...
    @overload
    def memoize(
        self, ttl: Optional[Seconds] = None, key: Optional[Callable[..., Key]] = None
    ) -> Callable[[Callable[_P, _R]], _Memoized[_P, _R]]: ...
    def stats(self) -> dict[str, Any]: ...
    def verify(self) -> list[tuple[Optional[int], str]]: ...
    def repair(self) -> dict[str, int]: ...
    def advance_clock(self, by: Seconds) -> None: ...
    @staticmethod
    def unlink(name: Union[str, PathLike[str]]) -> None: ...
    @staticmethod
    def path_of(name: Union[str, PathLike[str]]) -> str: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Cache": ...
    def __exit__(self, *args: Any) -> bool: ...
