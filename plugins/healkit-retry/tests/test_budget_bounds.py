"""Retry budgets of services nobody configured are bounded; configured ones keep theirs.

Distinct hosts are real HTTP connections to one loopback server:
``LoopbackResolver`` gives every ``*.test`` name the loopback address.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from retry_support import Events

import healkit
from healkit.testing import Fault, FaultServer, LoopbackResolver, ManualClock
from healkit_retry import RetryPlugin

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def hosts_client(
    config: dict[str, Any], clock: ManualClock, *plugins: object
) -> AsyncIterator[healkit.Client]:
    """A client whose session sends every ``*.test`` host to loopback."""
    connector = aiohttp.TCPConnector(resolver=LoopbackResolver(), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        healkit.Client(
            config=config, session=session, plugins=plugins, entry_points=False, clock=clock
        ) as client,
    ):
        yield client


def evicted(events: Events) -> list[healkit.StateEvicted]:
    return [e for e in events.seen if isinstance(e, healkit.StateEvicted)]


async def test_a_thousand_webhook_hosts_leave_at_most_the_cap(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    plugin, events = RetryPlugin(), Events()
    config = {
        "services": {"svc": {"endpoints": [fault_server.url]}},
        "state": {"max_unconfigured": 1000},
    }
    async with hosts_client(config, manual_clock, plugin, events) as c:
        await c.get("/", service="svc")
        for index in range(1200):
            await c.post(f"http://hook-{index}.test:{fault_server.port}/", data=b"{}")
    budgets = plugin.unconfigured_budgets
    assert len(budgets) == 1000
    assert list(budgets) == [f"hook-{index}.test" for index in range(200, 1200)]
    assert budgets.evictions == 200
    assert [(e.owner, e.service, e.endpoint, e.reason) for e in evicted(events)] == [
        ("retry", f"hook-{index}.test", None, "cap") for index in range(200)
    ]
    assert "svc" in plugin._budgets  # a configured service's budget is never evicted
    assert "svc" not in budgets


async def test_budgets_of_unknown_service_names_expire_when_idle(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    plugin, events = RetryPlugin(), Events()
    config = {
        "services": {"svc": {"endpoints": [fault_server.url]}},
        "state": {"idle_expiry": 30.0},
    }
    async with hosts_client(config, manual_clock, plugin, events) as c:
        await c.get("/", service="svc")
        for index in range(40):
            await c.get(fault_server.url + "/", service=f"unknown-{index}")
        manual_clock.advance(30.0)
        await c.get(fault_server.url + "/", service="unknown-new")
    assert list(plugin.unconfigured_budgets) == ["unknown-new"]
    assert [e.reason for e in evicted(events)] == ["idle"] * 40
    assert "svc" in plugin._budgets


async def test_an_evicted_budget_comes_back_empty_and_still_bounds_retries(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(503))
    plugin = RetryPlugin()
    retry = {"attempts": 3, "budget_ratio": 0.0, "budget_min_retries_per_second": 0.1}
    config = {"defaults": {"retry": retry}, "state": {"max_unconfigured": 2}}
    failing = f"http://hook-0.test:{fault_server.port}/"
    async with hosts_client(config, manual_clock, plugin) as c:
        for _ in range(3):
            with pytest.raises(healkit.HTTPStatusError):
                await c.get(failing)
        assert fault_server.hits() == 4  # one retry in the window (0.1/s * 10 s), then none
        for index in (1, 2):  # hook-0's budget leaves
            with pytest.raises(healkit.HTTPStatusError):
                await c.get(f"http://hook-{index}.test:{fault_server.port}/")
        assert "hook-0.test" not in plugin.unconfigured_budgets
        fault_server.reset()
        fault_server.set_default(Fault.status(503))
        with pytest.raises(healkit.HTTPStatusError):
            await c.get(failing)
    assert fault_server.hits() == 2  # a fresh budget: one retry again, no more
