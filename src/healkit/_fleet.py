"""Fleet health: what each instance knows of an endpoint, shared through etcd leases.

An instance that takes an endpoint out (ejected by failures, down by probes)
writes a record under its own lease::

    <prefix><namespace>/health/<service>/<endpoint, percent-encoded>/<instance>

and deletes it when the endpoint is back. Every instance follows the records
of the namespace through its ``EtcdSource`` (``source.listen("health/")``), so
it can route around an endpoint before failing on it itself, once at least
``routing.fleet.quorum`` instances (itself included) report it. A dead
instance's records disappear with its lease (refreshed every TTL/3).

This module is the bookkeeping and the etcd side; the routing plugin decides
when to report and asks who reported what.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Final, final
from urllib.parse import quote, unquote

import msgspec
import structlog

from healkit._errors import EtcdError

if TYPE_CHECKING:
    from healkit._etcd import EtcdClient, LeaseKeeper, WatchEvent

__all__ = ["HEALTH", "FleetHealth", "FleetSettings", "instance_name", "parse_record_key"]

_logger: Final = structlog.get_logger("healkit")
HEALTH: Final = "health/"
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.\-]")
RETRY_PAUSE: Final = 1.0


@final
class FleetSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``routing.fleet`` table: sharing endpoint health with the other instances.

    Attributes:
        quorum: instances (this one included) that must report an endpoint out
            before this instance routes around it; 1 acts on any report.
        ttl: seconds of the lease under which this instance's reports live;
            a dead instance's reports disappear after it.

    """

    quorum: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    ttl: Annotated[int, msgspec.Meta(ge=2, le=3600)] = 10


def instance_name() -> str:
    """Return a name for this process in health records: host, process, a random part."""
    raw = f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
    return _UNSAFE.sub("-", raw)[:128]


@final
class FleetHealth:
    """The reports of this instance, and those of the fleet as seen in etcd."""

    def __init__(self, instance: str | None = None) -> None:
        self.instance = instance or instance_name()
        # (service, endpoint) -> instances that report it out, from etcd.
        self._reports: dict[tuple[str, str], set[str]] = {}
        # What this instance wants published: True (out) for each key it reports.
        self._mine: dict[tuple[str, str], bool] = {}
        self._pending: asyncio.Queue[tuple[str, str, bool]] = asyncio.Queue()

    def __repr__(self) -> str:
        return f"<FleetHealth {self.instance} {len(self._reports)} endpoints reported>"

    # -- what the router asks ------------------------------------------------------------

    def reporters(self, service: str, endpoint: str) -> int:
        """Return how many instances report ``endpoint`` of ``service`` out."""
        return len(self._reports.get((service, endpoint), ()))

    def report(self, service: str, endpoint: str, *, out: bool) -> None:
        """Say (``out=True``) or take back that this instance takes the endpoint out."""
        key = (service, endpoint)
        if self._mine.get(key, False) == out:
            return
        self._mine[key] = out
        if not out:
            del self._mine[key]
        self._pending.put_nowait((service, endpoint, out))

    # -- etcd ------------------------------------------------------------------------

    def heard(self, root: str, events: Sequence[WatchEvent]) -> None:
        """Take the health records that changed in etcd (a listener of the source)."""
        for event in events:
            parsed = parse_record_key(event.kv.key.decode("utf-8", "replace")[len(root) :])
            if parsed is None:
                continue
            service, endpoint, instance = parsed
            reporters = self._reports.setdefault((service, endpoint), set())
            if event.type == "DELETE":
                reporters.discard(instance)
                if not reporters:
                    del self._reports[(service, endpoint)]
            else:
                reporters.add(instance)

    async def publish_forever(self, client: EtcdClient, root: str, ttl: int) -> None:
        """Keep this instance's reports in etcd under a lease, until cancelled."""
        while True:
            try:
                async with client.lease(ttl) as lease:
                    # A new lease: write again everything this instance reports.
                    for service, endpoint in list(self._mine):
                        key = _key(root, service, endpoint, self.instance)
                        await client.put(key, b"out", lease=lease.id)
                    while not lease.expired:
                        service, endpoint, out = await self._next(lease)
                        key = _key(root, service, endpoint, self.instance)
                        if out:
                            await client.put(key, b"out", lease=lease.id)
                        else:
                            await client.delete(key)
            except _LeaseLostError:
                _logger.info("healkit.fleet_health_lease_renewed", instance=self.instance)
            except EtcdError as error:
                _logger.warning(
                    "healkit.fleet_health_unavailable",
                    instance=self.instance,
                    error=type(error).__name__,
                    reason=error.message,
                )
                await asyncio.sleep(RETRY_PAUSE)

    async def _next(self, lease: LeaseKeeper) -> tuple[str, str, bool]:
        """Return the next change to publish (or raise if the lease expires first)."""
        change = asyncio.ensure_future(self._pending.get())
        expiry = asyncio.ensure_future(lease.wait_expired())
        try:
            done, _ = await asyncio.wait({change, expiry}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            expiry.cancel()
            if not change.done():
                change.cancel()
        if change in done:
            return change.result()
        raise _LeaseLostError


class _LeaseLostError(EtcdError):
    """The lease expired: grant a new one and publish again."""

    def __init__(self) -> None:
        super().__init__("the fleet health lease expired")


def _key(root: str, service: str, endpoint: str, instance: str) -> str:
    return f"{root}{HEALTH}{service}/{quote(endpoint, safe='')}/{instance}"


def parse_record_key(relative: str) -> tuple[str, str, str] | None:
    """Return (service, endpoint, instance) of a health record key, relative to the root."""
    if not relative.startswith(HEALTH):
        return None
    parts = relative[len(HEALTH) :].split("/")
    if len(parts) != 3 or not all(parts):
        return None
    service, endpoint, instance = parts
    return service, unquote(endpoint), instance
