"""Bounded state for services and endpoints nobody configured.

Plugins keep state per service or per endpoint (a retry budget, a circuit
breaker). For a service with a document of its own, and for its configured
endpoints, that state lives as long as the configuration names them. A call
by absolute URL to a host nobody configured (a webhook) or to a service name
with no document creates state too, and a stream of new hosts would create it
without end. :class:`BoundedMap` keeps such state:

* least recently used first out, at most ``capacity`` entries;
* an entry not used for ``idle_expiry`` seconds (on the runtime's clock) is
  dropped;
* every operation is O(1) (amortized: each entry is dropped at most once), so
  the first call to a new host costs the same with 10 entries or 100,000;
* every eviction is counted (:attr:`BoundedMap.evictions`) and reported to the
  map's owner, which emits a :class:`StateEvicted` event.

An owner may ask to *spare* some entries (an open circuit breaker, whose
eviction would let traffic through again): a spared entry is kept and treated
as just used, at most :data:`MAX_SPARED` times per insertion, after which the
least recently used entry goes whatever it is. The cap always holds.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Annotated, Final, Generic, Literal, TypeVar, final

import msgspec

__all__ = [
    "MAX_SPARED",
    "BoundedMap",
    "EvictionReason",
    "StateEvicted",
    "StateSettings",
]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MAX_SPARED: Final = 8
"""Entries an insertion may spare (move to the recent end) before it evicts regardless."""

EvictionReason = Literal["idle", "cap"]
"""Why an entry left: unused for ``state.idle_expiry`` seconds, or the map was full."""

DEFAULT_MAX_UNCONFIGURED: Final = 4096
DEFAULT_IDLE_EXPIRY: Final = 600.0


@final
class StateSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``state`` section of a document: bounds of the state of unconfigured keys.

    Attributes:
        max_unconfigured: entries each plugin keeps for services without a
            document and for endpoints that are not configured (one retry
            budget, one breaker each). Default 4096: a few MiB per plugin at
            most, more hosts than a service usually talks to within
            ``idle_expiry``.
        idle_expiry: seconds after which the state of such a key, unused, is
            dropped. Default 600 s: ten times the longest default open duration
            of a breaker (60 s) and sixty retry-budget windows (10 s), so an
            entry still in use is not lost.

    """

    max_unconfigured: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = DEFAULT_MAX_UNCONFIGURED
    idle_expiry: Annotated[float, msgspec.Meta(gt=0, le=7 * 24 * 3600.0)] = DEFAULT_IDLE_EXPIRY


@final
class StateEvicted(msgspec.Struct, frozen=True, kw_only=True):
    """Event: a plugin dropped the state of an unconfigured service or endpoint.

    Emitted with ``runtime.emit`` (observe it in ``healkit_event``); the
    tracing plugin counts them in ``healkit.state.evictions``.

    Attributes:
        owner: the plugin whose state it was (``"retry"``, ``"breaker"``).
        service: the service of the state.
        endpoint: the endpoint, ``None`` for per-service state.
        reason: ``"idle"`` (unused for ``state.idle_expiry``) or ``"cap"``
            (``state.max_unconfigured`` entries were in use).

    """

    owner: str
    service: str
    endpoint: str | None
    reason: EvictionReason


@final
class _Entry(Generic[V]):
    __slots__ = ("used", "value")

    def __init__(self, value: V, used: float) -> None:
        self.value = value
        self.used = used


@final
class BoundedMap(Generic[K, V]):
    """A least-recently-used map with idle expiry and a size cap, O(1) per operation.

    Not thread-safe: it lives in one event loop, like the runtime that owns it.
    Times are the runtime clock's (monotonic seconds).

    Args:
        capacity: the most entries kept.
        idle_expiry: seconds an entry may stay unused.
        spare: whether an entry about to be evicted should be kept (given the
            value and the current time); ``None`` spares nothing.
        evicted: called with the key, the value and the reason of each eviction.

    Attributes:
        evictions: entries evicted since the map was made.

    """

    __slots__ = ("_entries", "_evicted", "_spare", "capacity", "evictions", "idle_expiry")

    def __init__(
        self,
        *,
        capacity: int,
        idle_expiry: float,
        spare: Callable[[V, float], bool] | None = None,
        evicted: Callable[[K, V, EvictionReason], None] | None = None,
    ) -> None:
        _check_bounds(capacity, idle_expiry)
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._spare = spare
        self._evicted = evicted
        self.capacity = capacity
        self.idle_expiry = idle_expiry
        self.evictions = 0

    def __repr__(self) -> str:
        return f"<BoundedMap {len(self._entries)}/{self.capacity} evictions={self.evictions}>"

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        return iter(self._entries)

    def items(self) -> Iterator[tuple[K, V]]:
        """Return the entries, least recently used first (nothing is touched)."""
        return ((key, entry.value) for key, entry in self._entries.items())

    def get(self, key: K, now: float) -> V | None:
        """Return the value of ``key``, marked used at ``now``; ``None`` if absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry.used >= self.idle_expiry and not self._spared(entry, now):
            self._evict(key, entry, "idle")
            return None
        entry.used = now
        self._entries.move_to_end(key)
        return entry.value

    def put(self, key: K, value: V, now: float) -> None:
        """Store ``value`` under ``key`` as used at ``now``, making room first if needed."""
        entries = self._entries
        if key in entries:
            del entries[key]
        self.expire(now)
        if len(entries) >= self.capacity:
            self._make_room(now)
        entries[key] = _Entry(value, now)

    def pop(self, key: K) -> V | None:
        """Remove ``key`` (not an eviction: nothing is counted); return its value."""
        entry = self._entries.pop(key, None)
        return None if entry is None else entry.value

    def expire(self, now: float) -> None:
        """Evict the entries unused for ``idle_expiry`` at ``now`` (oldest first, each once)."""
        entries = self._entries
        limit = now - self.idle_expiry
        while entries:
            key, entry = next(iter(entries.items()))
            if entry.used > limit:
                return
            if self._spared(entry, now):
                entry.used = now
                entries.move_to_end(key)
            else:
                self._evict(key, entry, "idle")

    def resize(self, capacity: int, idle_expiry: float, now: float) -> None:
        """Take new bounds, evicting what no longer fits at ``now``."""
        _check_bounds(capacity, idle_expiry)
        self.capacity = capacity
        self.idle_expiry = idle_expiry
        self.expire(now)
        while len(self._entries) > capacity:
            self._make_room(now)

    def _make_room(self, now: float) -> None:
        """Evict one entry: the least recently used one not spared (MAX_SPARED looked at)."""
        entries = self._entries
        for _ in range(MAX_SPARED):
            key, entry = next(iter(entries.items()))
            if not self._spared(entry, now):
                self._evict(key, entry, "cap")
                return
            entries.move_to_end(key)
        key, entry = next(iter(entries.items()))
        self._evict(key, entry, "cap")

    def _spared(self, entry: _Entry[V], now: float) -> bool:
        spare = self._spare
        return spare is not None and spare(entry.value, now)

    def _evict(self, key: K, entry: _Entry[V], reason: EvictionReason) -> None:
        del self._entries[key]
        self.evictions += 1
        if self._evicted is not None:
            self._evicted(key, entry.value, reason)


def _check_bounds(capacity: int, idle_expiry: float) -> None:
    if capacity < 1 or not idle_expiry > 0:
        raise ValueError("capacity must be at least 1 and idle_expiry more than 0")
