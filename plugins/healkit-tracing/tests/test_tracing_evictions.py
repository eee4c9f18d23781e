"""Evictions of unconfigured keys' state are counted, by owner and reason only."""

from __future__ import annotations

import pytest
from tracing_support import Telemetry

import healkit
from healkit.testing import FaultServer, ManualClock
from healkit_breaker import BreakerPlugin
from healkit_retry import RetryPlugin

pytestmark = pytest.mark.anyio


async def test_evictions_are_counted_without_a_series_per_host(
    fault_server: FaultServer, telemetry: Telemetry, manual_clock: ManualClock
) -> None:
    plugins = [BreakerPlugin(), RetryPlugin(), telemetry.plugin()]
    config = {"state": {"max_unconfigured": 2, "idle_expiry": 60.0}}
    async with healkit.Client(
        config=config, plugins=plugins, entry_points=False, clock=manual_clock
    ) as client:
        for index in range(5):
            await client.get(fault_server.url + "/", service=f"unknown-{index}")
        manual_clock.advance(60.0)
        await client.get(fault_server.url + "/", service="unknown-last")
    points = telemetry.points("healkit.state.evictions")
    assert {
        (p.attributes["healkit.state.owner"], p.attributes["healkit.state.reason"]): p.value
        for p in points
    } == {("breaker", "cap"): 3, ("retry", "cap"): 3, ("breaker", "idle"): 2, ("retry", "idle"): 2}
    assert all(set(p.attributes) == {"healkit.state.owner", "healkit.state.reason"} for p in points)
    assert telemetry.metrics()["healkit.state.evictions"].unit == "{entry}"
