"""A lease kept alive: granted on entry, refreshed in the background, revoked on exit."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self, final

from healkit._clock import SYSTEM_CLOCK, Clock
from healkit._errors import EtcdError
from healkit._log import get_logger
from healkit.etcd._messages import Lease

if TYPE_CHECKING:
    from healkit.etcd._client import EtcdClient

__all__ = ["LeaseKeeper"]

logger: Final = get_logger("healkit.etcd")


@final
class LeaseKeeper:
    """A lease granted on entry, refreshed every TTL/3 in the background, revoked on exit.

    ::

        async with etcd.lease(10) as lease:
            await etcd.put("/healkit/prod/health/me", b"up", lease=lease.id)
            ...  # the key lives while the block runs

    When refreshing fails (etcd unreachable) the keeper retries sooner; when
    etcd says the lease is gone, or no refresh succeeded for a whole TTL,
    :attr:`expired` becomes true and :meth:`wait_expired` returns. Re-granting
    and re-writing the keys is the owner's decision. Leaving the block revokes
    the lease unless it expired; a failed revoke is logged, not raised (the
    lease then ends with its TTL).

    Its pauses and its "no refresh for a whole TTL" measure are ``clock``'s:
    the system clock by default, the runtime's where a runtime keeps the
    lease, a :class:`healkit.testing.ManualClock` in tests.
    """

    __slots__ = (
        "_client",
        "_clock",
        "_expired",
        "_last_ok",
        "_lease",
        "_refreshes",
        "_task",
        "_ttl",
    )

    def __init__(self, client: EtcdClient, ttl: int, *, clock: Clock = SYSTEM_CLOCK) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be > 0 seconds")
        self._client = client
        self._clock = clock
        self._ttl = ttl
        self._lease: Lease | None = None
        self._task: asyncio.Task[None] | None = None
        self._expired = asyncio.Event()
        self._refreshes = 0
        self._last_ok = 0.0

    def __repr__(self) -> str:
        """Show the lease ID and whether it is alive."""
        if self._lease is None:
            return "<LeaseKeeper not granted>"
        state = "expired" if self.expired else "alive"
        return f"<LeaseKeeper id={self._lease.id} ttl={self._lease.ttl} {state}>"

    @property
    def id(self) -> int:
        """The lease ID."""
        return self._granted().id

    @property
    def ttl(self) -> int:
        """The TTL etcd granted, in seconds."""
        return self._granted().ttl

    @property
    def expired(self) -> bool:
        """The lease is gone (etcd said so, or no refresh succeeded for a TTL)."""
        return self._expired.is_set()

    @property
    def refreshes(self) -> int:
        """How many refreshes succeeded so far."""
        return self._refreshes

    async def wait_expired(self) -> None:
        """Return once the lease expired (it does not time out by itself)."""
        await self._expired.wait()

    def _granted(self) -> Lease:
        if self._lease is None:
            raise RuntimeError("the lease is granted on entering `async with`")
        return self._lease

    async def __aenter__(self) -> Self:
        """Grant the lease and start refreshing it."""
        if self._lease is not None:
            raise RuntimeError("a LeaseKeeper can be entered only once")
        self._lease = await self._client.lease_grant(self._ttl)
        self._last_ok = self._clock.now()
        self._task = asyncio.create_task(self._keep(self._lease))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop refreshing and revoke the lease (unless it expired)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lease = self._lease
        if lease is None or self.expired:
            return
        try:
            await self._client.lease_revoke(lease.id)
        except EtcdError as error:
            logger.warning(
                "healkit.etcd_lease_revoke_failed",
                lease=lease.id,
                error=type(error).__name__,
                reason=error.message,
            )

    async def _keep(self, lease: Lease) -> None:
        interval = max(lease.ttl / 3, 0.05)
        delay = interval
        while True:
            await self._clock.sleep(delay)
            try:
                remaining = await self._client.lease_keepalive(lease.id)
            except EtcdError as error:
                logger.warning(
                    "healkit.etcd_keepalive_failed",
                    lease=lease.id,
                    error=type(error).__name__,
                    reason=error.message,
                )
                if self._clock.now() - self._last_ok >= lease.ttl:
                    self._expire(lease, "no refresh succeeded for a whole TTL")
                    return
                delay = interval / 3
                continue
            if remaining <= 0:
                self._expire(lease, "etcd no longer knows the lease")
                return
            self._last_ok = self._clock.now()
            self._refreshes += 1
            delay = interval

    def _expire(self, lease: Lease, reason: str) -> None:
        logger.warning("healkit.etcd_lease_expired", lease=lease.id, reason=reason)
        self._expired.set()
