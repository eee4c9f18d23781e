"""Breakers of hosts nobody configured are bounded; configured endpoints keep theirs.

Thousands of distinct hosts are real HTTP connections to one loopback server:
``LoopbackResolver`` gives every ``*.test`` name the loopback address.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

import healkit
from healkit.testing import Fault, FaultServer, LoopbackResolver, ManualClock
from healkit_breaker import BreakerPlugin, State

pytestmark = pytest.mark.anyio


class Evictions:
    """An observer that keeps the StateEvicted events."""

    healkit_name = "evictions"
    healkit_observer = True

    def __init__(self) -> None:
        self.seen: list[healkit.StateEvicted] = []

    @healkit.hookimpl
    def healkit_event(self, event: object) -> None:
        if isinstance(event, healkit.StateEvicted):
            self.seen.append(event)


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


def hook(server: FaultServer, index: int, path: str = "/") -> str:
    return f"http://hook-{index}.test:{server.port}{path}"


def document(server: FaultServer, **state: Any) -> dict[str, Any]:
    return {"services": {"svc": {"endpoints": [server.url]}}, "state": state}


async def test_a_thousand_hosts_leave_at_most_the_cap_and_the_configured_endpoint_stays(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    plugin, evictions = BreakerPlugin(), Evictions()
    async with hosts_client(
        document(fault_server, max_unconfigured=1000), manual_clock, plugin, evictions
    ) as c:
        assert (await c.get("/", service="svc")).status == 200
        for index in range(1200):
            assert (await c.get(hook(fault_server, index))).status == 200
    strangers = plugin.unconfigured_breakers
    assert len(strangers) == 1000
    assert [key for key, _ in strangers.items()] == [
        (f"hook-{index}.test", f"http://hook-{index}.test:{fault_server.port}")
        for index in range(200, 1200)
    ]
    assert strangers.evictions == 200
    assert [(e.owner, e.service, e.reason) for e in evictions.seen] == [
        ("breaker", f"hook-{index}.test", "cap") for index in range(200)
    ]
    assert plugin.status("svc", fault_server.url) is not None
    assert fault_server.hits() == 1201


async def test_idle_breakers_expire_and_the_configured_one_does_not(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    plugin, evictions = BreakerPlugin(), Evictions()
    async with hosts_client(
        document(fault_server, idle_expiry=60.0), manual_clock, plugin, evictions
    ) as c:
        await c.get("/", service="svc")
        for index in range(50):
            await c.get(hook(fault_server, index))
        manual_clock.advance(60.0)
        await c.get(hook(fault_server, 50))
        await c.get("/", service="svc")
    assert [key for key, _ in plugin.unconfigured_breakers.items()] == [
        ("hook-50.test", f"http://hook-50.test:{fault_server.port}")
    ]
    assert {e.reason for e in evictions.seen} == {"idle"}
    assert len(evictions.seen) == 50
    assert plugin.status("svc", fault_server.url) is not None


async def test_an_open_breaker_of_an_unconfigured_host_is_not_evicted_to_let_calls_through(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/down", Fault.status(503), then=Fault.status(503))
    plugin = BreakerPlugin()
    config = {
        "defaults": {
            "breaker": {"consecutive_failures": 1, "open_duration": 3600, "open_duration_max": 3600}
        },
        "state": {"max_unconfigured": 100, "idle_expiry": 60.0},
    }
    async with hosts_client(config, manual_clock, plugin) as c:
        assert (await c.get(hook(fault_server, 0, "/down"))).status == 503
        for index in range(1, 301):  # three times the cap of other hosts
            await c.get(hook(fault_server, index))
        manual_clock.advance(120.0)  # idle for twice idle_expiry, open for an hour
        await c.get(hook(fault_server, 301))
        with pytest.raises(healkit.CircuitOpenError):
            await c.get(hook(fault_server, 0, "/down"))
    assert fault_server.hits("/down") == 1
    assert plugin.state("hook-0.test", f"http://hook-0.test:{fault_server.port}") is State.OPEN
    assert len(plugin.unconfigured_breakers) <= 100


async def test_a_host_that_gets_configured_keeps_its_breaker_for_good(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    plugin = BreakerPlugin()
    runtime = healkit.Runtime(
        config={"state": {"idle_expiry": 60.0}},
        plugins=[plugin],
        entry_points=False,
        clock=manual_clock,
    )
    host = hook(fault_server, 1, "")
    connector = aiohttp.TCPConnector(resolver=LoopbackResolver(), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        healkit.Client(runtime=runtime, session=session) as c,
    ):
        await c.get(f"{host}/")
        breaker = plugin.unconfigured_breakers.get(("hook-1.test", host), manual_clock.now())
        assert breaker is not None
        runtime.apply(
            {"services": {"hook-1.test": {"endpoints": [host]}}, "state": {"idle_expiry": 60.0}}
        )
        assert len(plugin.unconfigured_breakers) == 0
        manual_clock.advance(3600.0)
        await c.get(hook(fault_server, 2))
        status = plugin.status("hook-1.test", host)
    assert status is not None
    assert len(plugin.unconfigured_breakers) == 1


async def test_hosts_called_under_a_configured_service_it_does_not_name_are_bounded(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    plugin = BreakerPlugin()
    config = {
        "services": {"webhooks": {"endpoints": [fault_server.url]}},
        "state": {"max_unconfigured": 10},
    }
    async with hosts_client(config, manual_clock, plugin) as c:
        await c.get("/", service="webhooks")
        for index in range(30):
            await c.post(hook(fault_server, index), service="webhooks", data=b"{}")
    assert [key for key, _ in plugin.unconfigured_breakers.items()] == [
        ("webhooks", f"http://hook-{index}.test:{fault_server.port}") for index in range(20, 30)
    ]
    assert plugin.status("webhooks", fault_server.url) is not None
