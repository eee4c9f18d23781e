"""A new configuration keeps the limits' state: slots in use, waiters, the learned limit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from limit_helpers import GatedServer, document, within

import healkit
from healkit.testing import ManualClock
from healkit_limit import LimitPlugin

pytestmark = pytest.mark.anyio


def client(config: dict[str, Any], plugin: LimitPlugin, clock: ManualClock) -> healkit.Client:
    return healkit.Client(config=config, plugins=[plugin], entry_points=False, clock=clock)


async def test_a_higher_limit_admits_the_waiters_at_once(gated: GatedServer) -> None:
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    async with client(
        document([gated.url], concurrency=1, queue=5, max_wait=60.0), plugin, clock
    ) as c:
        tasks = [asyncio.create_task(c.get("/x", service="svc")) for _ in range(3)]
        await within(gated.wait_for_active(1))
        await within(clock.wait_for_sleepers(2))
        c.runtime.apply(document([gated.url], concurrency=3, queue=5, max_wait=60.0))
        await within(gated.wait_for_active(3))
        gated.gate.set()
        responses = await asyncio.gather(*tasks)
    assert [r.status for r in responses] == [200] * 3


async def test_a_lower_limit_admits_nothing_new_until_the_attempts_in_flight_end(
    gated: GatedServer,
) -> None:
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    async with client(document([gated.url], concurrency=3), plugin, clock) as c:
        tasks = [asyncio.create_task(c.get("/x", service="svc")) for _ in range(3)]
        await within(gated.wait_for_active(3))
        c.runtime.apply(document([gated.url], concurrency=1))
        status = plugin.status("svc")
        assert status is not None
        assert (status.limit, status.in_flight) == (1, 3)  # the slots in use are kept
        with pytest.raises(healkit.ConcurrencyLimitError):
            await c.get("/x", service="svc")
        gated.gate.set()
        await asyncio.gather(*tasks)
        assert (await c.get("/x", service="svc")).status == 200


async def test_limits_turned_off_let_the_attempts_in_flight_end_normally(
    gated: GatedServer,
) -> None:
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    async with client(document([gated.url], concurrency=1), plugin, clock) as c:
        task = asyncio.create_task(c.get("/x", service="svc"))
        await within(gated.wait_for_active(1))
        c.runtime.apply(document([gated.url]))
        assert plugin.status("svc") is None
        second = asyncio.create_task(c.get("/x", service="svc"))
        await within(gated.wait_for_active(2))  # no limit any more
        gated.gate.set()
        responses = await asyncio.gather(task, second)
    assert [r.status for r in responses] == [200, 200]
