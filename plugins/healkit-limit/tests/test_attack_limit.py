"""Red-team checks of the limit plugin: configuration changes with waiters, odd latencies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from limit_helpers import GatedServer, document, within

import healkit
from healkit.testing import FaultServer, ManualClock
from healkit_limit import LimitPlugin

pytestmark = pytest.mark.anyio


def client(config: dict[str, Any], plugin: LimitPlugin, clock: ManualClock) -> healkit.Client:
    return healkit.Client(config=config, plugins=[plugin], entry_points=False, clock=clock)


@pytest.mark.parametrize(
    "relaxed",
    [
        pytest.param({}, id="every-limit-off"),
        pytest.param({"throttle": True}, id="concurrency-off-throttle-on"),
    ],
)
async def test_turning_the_concurrency_limit_off_lets_the_waiters_go_at_once(
    gated: GatedServer, relaxed: dict[str, Any]
) -> None:
    # The clock never moves: before the fix the waiters stayed queued until
    # max_wait (60 s) ran out, or a slot of the dropped limiter came free.
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    limited = document([gated.url], concurrency=1, queue=5, max_wait=60.0)
    async with client(limited, plugin, clock) as c:
        tasks = [asyncio.create_task(c.get("/x", service="svc")) for _ in range(3)]
        await within(gated.wait_for_active(1))
        await within(clock.wait_for_sleepers(2))
        c.runtime.apply(document([gated.url], **relaxed))
        await within(gated.wait_for_active(3))
        gated.gate.set()
        responses = await within(asyncio.gather(*tasks))
    assert [r.status for r in responses] == [200] * 3


async def test_a_scope_change_lets_the_waiters_of_the_dropped_endpoint_limits_go(
    gated: GatedServer,
) -> None:
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    per_endpoint = document([gated.url], scope="endpoint", concurrency=1, queue=5, max_wait=60.0)
    async with client(per_endpoint, plugin, clock) as c:
        tasks = [asyncio.create_task(c.get("/x", service="svc")) for _ in range(2)]
        await within(gated.wait_for_active(1))
        await within(clock.wait_for_sleepers(1))
        c.runtime.apply(document([gated.url], concurrency=5))
        await within(gated.wait_for_active(2))
        gated.gate.set()
        responses = await within(asyncio.gather(*tasks))
    assert [r.status for r in responses] == [200] * 2


async def test_zero_latency_answers_keep_the_adaptive_limit(fault_server: FaultServer) -> None:
    # A clock that does not move between an attempt's start and end measures
    # 0 s: the upstream is exactly as fast as unloaded, nothing to shrink for.
    # Before the fix the gradient read 0 / 0 as "infinitely slower" and halved
    # the limit at each answer, down to min_concurrency.
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    config = document([fault_server.url], concurrency=50, adaptive=True)
    async with client(config, plugin, clock) as c:
        for _ in range(40):
            assert (await c.get("/ok", service="svc")).status == 200
    status = plugin.status("svc")
    assert status is not None
    assert (status.limit, status.min_rtt) == (50, 0.0)
