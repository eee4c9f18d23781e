"""LeaseKeeper's time is its clock's: refreshes and expiry measured exactly, against a real etcd."""

from __future__ import annotations

import anyio
import pytest

from healkit.etcd import LeaseKeeper
from healkit.testing import EtcdServer, ManualClock

pytestmark = pytest.mark.anyio

# Guards against a hang, never a timing assertion: every wait ends far sooner.
GUARD = 10.0


async def asleep(clock: ManualClock) -> None:
    """Wait until the keeper sleeps on ``clock`` (its refresh is done)."""
    with anyio.fail_after(GUARD):
        await clock.wait_for_sleepers()


async def test_the_keeper_refreshes_every_third_of_the_ttl_on_its_clock(
    etcd_server: EtcdServer,
) -> None:
    clock = ManualClock(auto_advance=False)
    async with etcd_server.client() as client, client.lease(3, clock=clock) as lease:
        await client.put("/kept", b"v", lease=lease.id)
        for refreshes in range(4):  # 4 s of the clock: past the 3 s TTL
            await asleep(clock)
            assert lease.refreshes == refreshes
            clock.advance(1.0)
        await asleep(clock)
        assert lease.refreshes == 4
        assert not lease.expired
        assert clock.sleeps == [1.0] * 5
        assert await client.get("/kept") is not None
        assert await client.lease_keepalive(lease.id) == 3  # etcd knows it, TTL renewed
    async with etcd_server.client() as client:
        assert await client.get("/kept") is None  # revoked on exit


async def test_the_keeper_expires_after_a_whole_ttl_of_failed_refreshes(
    etcd_server: EtcdServer,
) -> None:
    clock = ManualClock(auto_advance=False)
    async with etcd_server.client() as client:
        keeper = LeaseKeeper(client, 3, clock=clock)
        async with keeper as lease:
            await asleep(clock)
            await etcd_server.stop()  # every refresh from now on fails
            clock.advance(1.0)  # 1 s without a refresh: retry sooner, TTL/9
            await asleep(clock)
            clock.advance(1.0)  # 2 s
            await asleep(clock)
            assert not lease.expired
            clock.advance(1.0)  # 3 s: a whole TTL
            with anyio.fail_after(GUARD):
                await lease.wait_expired()
            assert clock.sleeps == [1.0, 1 / 3, 1 / 3]
            assert clock.sleeping == 0  # the keeper stopped
            await etcd_server.start()  # so that the fixture stops it again
