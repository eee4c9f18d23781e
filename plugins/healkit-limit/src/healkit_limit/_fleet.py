"""The live instances of the fleet, counted from the fleet health records in etcd.

Every instance whose routing shares health (``routing.fleet`` on a service)
keeps a record under ``<namespace root>instances/<instance>``, attached to its
lease: written when its fleet health starts, revoked when it stops, gone with
the lease's TTL when it crashes. Counting those records through the runtime's
:class:`healkit.etcd.EtcdSource` (``source.listen("instances/")``) gives the
fleet's size with no store of its own: the limit plugin divides a fleet-wide
rate by it.

While etcd cannot be reached the source delivers nothing, and the last count
stays; after a reconnection the source's resynchronization brings the records
that came and went in between.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, final

import anyio

import healkit
from healkit.etcd import EtcdSource, WatchEvent
from healkit_limit._limiter import wait_event

__all__ = ["INSTANCES", "MAX_INSTANCES", "FleetCount"]

INSTANCES: Final = "instances/"
"""Where fleet health keeps one record per live instance, under the namespace root."""
MAX_INSTANCES: Final = 10_000
"""The most instance records kept: beyond it, more are not counted (a bound on hostile input)."""


@final
class FleetCount:
    """The number of live instances, as the fleet health records in etcd show it.

    Attributes:
        size: the live instances, at least 1 (this one).

    """

    __slots__ = ("_changed", "_names", "_root", "_seen", "_unlisten", "size")

    def __init__(self, changed: Callable[[int], None]) -> None:
        self._changed = changed
        self._names: set[bytes] = set()
        self._root = b""
        self._unlisten: Callable[[], None] | None = None
        self._seen = anyio.Event()
        self.size = 1

    def __repr__(self) -> str:
        following = "following" if self._unlisten is not None else "idle"
        return f"<FleetCount {self.size} instances, {following}>"

    @property
    def seen(self) -> bool:
        """Whether a record was seen: before, the fleet's size is unknown."""
        return self._seen.is_set()

    async def wait_seen(self, clock: healkit.Clock, seconds: float) -> bool:
        """Wait at most ``seconds`` on ``clock`` for a first record; return whether one came."""
        await wait_event(clock, seconds, self._seen)
        return self._seen.is_set()

    @property
    def following(self) -> bool:
        """Whether the records are followed (a source was given)."""
        return self._unlisten is not None

    def follow(self, source: EtcdSource) -> None:
        """Follow the instance records of ``source``'s namespace (once)."""
        if self._unlisten is None:
            self._root = (source.root + INSTANCES).encode()
            self._unlisten = source.listen(INSTANCES, self._heard)

    def stop(self) -> None:
        """Stop following; forget the records (a runtime started again counts anew)."""
        unlisten, self._unlisten = self._unlisten, None
        if unlisten is not None:
            unlisten()
        self._names.clear()
        self._seen = anyio.Event()
        self.size = 1

    def _heard(self, events: Sequence[WatchEvent], revision: int, *, replace: bool) -> None:
        """Take the records that changed, or with ``replace`` every record there (a listener)."""
        del revision
        names, root = self._names, self._root
        if replace:
            names.clear()
        for event in events:
            key = event.kv.key
            if not key.startswith(root) or len(key) == len(root) or b"/" in key[len(root) :]:
                continue  # not an instance record
            if event.type == "DELETE":
                names.discard(key)
            elif len(names) < MAX_INSTANCES:
                names.add(key)
        if names:
            self._seen.set()
        size = max(1, len(names))
        if size != self.size:
            self.size = size
            self._changed(size)
