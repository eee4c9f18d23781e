"""Adaptive throttling and rate limits against a real loopback upstream, on a manual clock."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from limit_helpers import document, within

import healkit
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_limit import LimitPlugin, LimitSettings
from healkit_limit._throttle import BUCKETS

pytestmark = pytest.mark.anyio

K = LimitSettings().throttle_k
WINDOW = LimitSettings().throttle_window


def client(config: dict[str, Any], plugin: LimitPlugin, clock: ManualClock) -> healkit.Client:
    return healkit.Client(config=config, plugins=[plugin], entry_points=False, clock=clock)


async def calls(c: healkit.Client, count: int) -> tuple[int, int, int]:
    """Make ``count`` calls; return (accepted, rejected by the upstream, throttled locally)."""
    accepted = rejected = throttled = 0
    for _ in range(count):
        try:
            response = await c.get("/x", service="svc")
        except healkit.ThrottledError:
            throttled += 1
            continue
        if response.status == 429:
            rejected += 1
        else:
            accepted += 1
    return accepted, rejected, throttled


async def test_an_upstream_that_rejects_everything_gets_almost_nothing(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(429))
    plugin = LimitPlugin(rng=random.Random(15))  # noqa: S311 - a seeded draw, not a secret
    async with client(document([fault_server.url], throttle=True), plugin, manual_clock) as c:
        accepted, rejected, throttled = await calls(c, 300)
    assert accepted == 0
    # max(0, (requests - K * 0) / (requests + 1)): the n-th request goes with
    # probability 1/(n+1), about ln(300) ~ 6 requests sent in all.
    assert fault_server.hits() == rejected <= 12
    assert throttled == 300 - rejected
    status = plugin.status("svc")
    assert status is not None
    assert (status.requests, status.accepts) == (300, 0)


async def test_an_upstream_accepting_more_than_one_in_k_is_never_throttled(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    # It rejects every fourth request: requests - K * accepts stays below 0.
    plugin = LimitPlugin(rng=random.Random(3))  # noqa: S311 - a seeded draw, not a secret
    throttled_total = 0
    async with client(document([fault_server.url], throttle=True), plugin, manual_clock) as c:
        for index in range(200):
            fault_server.set_default(Fault.status(429) if index % 4 == 3 else Fault.ok())
            _, _, throttled = await calls(c, 1)
            throttled_total += throttled
    assert throttled_total == 0
    assert fault_server.hits() == 200


async def test_throttling_recovers_within_a_window_once_the_upstream_accepts(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(429))
    plugin = LimitPlugin(rng=random.Random(1))  # noqa: S311 - a seeded draw, not a secret
    async with client(document([fault_server.url], throttle=True), plugin, manual_clock) as c:
        await calls(c, 100)
        fault_server.set_default(Fault.ok())
        manual_clock.advance(WINDOW)
        accepted, rejected, throttled = await calls(c, 50)
    assert (accepted, rejected, throttled) == (50, 0, 0)


async def test_the_first_accept_after_an_outage_ends_the_throttling(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    # A twelfth of a window later a probe goes through; once it is accepted,
    # the local refusals of the outage no longer count, and a few accepts
    # later nothing is refused.
    fault_server.set_default(Fault.status(429))
    plugin = LimitPlugin(rng=random.Random(5))  # noqa: S311 - a seeded draw, not a secret
    async with client(document([fault_server.url], throttle=True), plugin, manual_clock) as c:
        await calls(c, 300)
        fault_server.set_default(Fault.ok())
        # Nothing was sent for a twelfth of the window: the next call is a probe.
        manual_clock.advance(WINDOW / BUCKETS)
        assert await calls(c, 1) == (1, 0, 0)
        status = plugin.status("svc")
        assert status is not None
        assert status.requests < 20  # what the upstream answered, not the 300 refusals
        _, rejected, throttled = await calls(c, 50)
        assert (rejected, throttled < 50) == (0, True)
        recovered = await calls(c, 50)
    assert recovered == (50, 0, 0)


async def test_a_rate_limit_refuses_when_the_bucket_is_empty(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    plugin = LimitPlugin()
    config = document([fault_server.url], rate=10.0, burst=2)
    async with client(config, plugin, manual_clock) as c:
        assert (await c.get("/x", service="svc")).status == 200
        assert (await c.get("/x", service="svc")).status == 200
        with pytest.raises(healkit.RateLimitedError) as caught:
            await c.get("/x", service="svc")
        manual_clock.advance(0.1)
        assert (await c.get("/x", service="svc")).status == 200
    assert caught.value.retry_after == pytest.approx(0.1)
    assert caught.value.may_have_reached_server is False
    assert fault_server.hits() == 3


async def test_smooth_mode_spaces_calls_instead_of_refusing(fault_server: FaultServer) -> None:
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    config = document([fault_server.url], rate=10.0, burst=1, rate_mode="smooth", max_wait=0.35)
    async with client(config, plugin, clock) as c:
        tasks = [asyncio.create_task(c.get("/x", service="svc")) for _ in range(4)]
        await within(clock.wait_for_sleepers(3))
        await within(fault_server.wait_for_hits(1))
        # A fifth call would wait 0.4 s, more than max_wait: refused at once.
        with pytest.raises(healkit.RateLimitedError):
            await c.get("/x", service="svc")
        assert sorted(clock.sleeps) == pytest.approx([0.1, 0.2, 0.3])
        for hits in (2, 3, 4):
            clock.advance(0.1)
            await within(fault_server.wait_for_hits(hits))
        responses = await asyncio.gather(*tasks)
    assert [r.status for r in responses] == [200] * 4
    assert fault_server.hits() == 4
