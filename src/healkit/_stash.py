"""A typed per-object store for plugin state (the idea of pytest's Stash).

Each plugin creates its own :class:`StashKey` at import time and keeps its
per-call or per-attempt state under it, so plugins never share dicts or
globals and type checkers know what each slot holds::

    RETRY_STATE = healkit.StashKey[RetryState]("healkit_retry.state")
    call.stash[RETRY_STATE] = RetryState(...)
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast, final, overload

__all__ = ["Stash", "StashKey"]

T = TypeVar("T")
D = TypeVar("D")


@final
class StashKey(Generic[T]):
    """A key into a :class:`Stash`; identity is the key, ``name`` is for humans."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StashKey({self.name!r})"


@final
class Stash:
    """A mapping from :class:`StashKey` to values of the key's type."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: dict[StashKey[object], object] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._items[cast("StashKey[object]", key)] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast("T", self._items[cast("StashKey[object]", key)])

    def __contains__(self, key: StashKey[Any]) -> bool:
        return key in self._items

    def __delitem__(self, key: StashKey[Any]) -> None:
        del self._items[key]

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def get(self, key: StashKey[T]) -> T | None: ...
    @overload
    def get(self, key: StashKey[T], default: D) -> T | D: ...
    def get(self, key: StashKey[T], default: object = None) -> object:
        """Return the value under ``key``, or ``default``."""
        # No cast() here: this runs several times per call, and cast is a call.
        return self._items.get(key, default)  # type: ignore[arg-type]

    def setdefault(self, key: StashKey[T], default: T) -> T:
        """Return the value under ``key``, storing ``default`` first if absent."""
        return cast("T", self._items.setdefault(cast("StashKey[object]", key), default))
