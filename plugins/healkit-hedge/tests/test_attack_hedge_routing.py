"""Red team: where the routing plugin sends a hedge, with fallback groups and open breakers.

A hedge backs up a slow attempt; it is not a failover. It goes to another
usable endpoint of the group serving the call, or to the same endpoint when
that group has no other; never to a fallback group while the serving group
has a usable endpoint, and never to an endpoint whose breaker is open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import pytest
from aiohttp import web
from hedge_support import DELAY, SERVICE, hedge_fires

import healkit
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_breaker import BreakerPlugin
from healkit_hedge import HedgePlugin

pytestmark = pytest.mark.anyio

HEDGE = {"enabled": True, "delay": DELAY}


@pytest.fixture
async def standby() -> AsyncIterator[FaultServer]:
    """Another upstream: the fallback group, or the endpoint whose breaker opens."""
    async with FaultServer() as server:
        yield server


async def test_a_hedge_stays_in_the_primary_group_with_one_endpoint(
    fault_server: FaultServer, standby: FaultServer
) -> None:
    fault_server.script("/x", Fault.blackhole())  # then: 200
    config = {
        "services": {
            SERVICE: {
                "endpoints": [fault_server.url],
                "routing": {"fallback_groups": [[standby.url]]},
                "hedge": HEDGE,
            }
        }
    }
    clock = ManualClock(auto_advance=False)
    async with healkit.Client(
        config=config, plugins=[HedgePlugin()], entry_points=False, clock=clock
    ) as c:
        response = await hedge_fires(
            clock, c.get("/x", service=SERVICE), before=fault_server.wait_for_hits(1)
        )
    assert response.status == 200
    outcome = response.outcome
    assert outcome.winner == 2
    assert outcome.path == "primary"  # a hedge of the first attempt, not a failover
    assert [a.endpoint for a in outcome.attempts] == [fault_server.url] * 2
    assert standby.hits() == 0


async def test_a_hedge_avoids_an_endpoint_whose_breaker_is_open(
    fault_server: FaultServer, standby: FaultServer
) -> None:
    standby.set_default(Fault.status(503))
    fault_server.script("/x", Fault.blackhole())  # then: 200
    config = {
        "services": {
            SERVICE: {
                "endpoints": [fault_server.url, standby.url],
                "breaker": {"consecutive_failures": 1},
                "hedge": HEDGE,
            }
        }
    }
    clock = ManualClock(auto_advance=False)
    breakers = BreakerPlugin()
    async with healkit.Client(
        config=config, plugins=[HedgePlugin(), breakers], entry_points=False, clock=clock
    ) as c:
        opening = await c.get(f"{standby.url}/open")  # its breaker opens
        assert opening.status == 503
        assert breakers.state(SERVICE, standby.url) == "open"
        response = await hedge_fires(
            clock, c.get("/x", service=SERVICE), before=fault_server.wait_for_hits(1)
        )
    assert response.status == 200
    outcome = response.outcome
    assert outcome.winner == 2
    assert [a.endpoint for a in outcome.attempts] == [fault_server.url] * 2
    assert all(a.error is None for a in outcome.attempts)  # no CircuitOpenError either
    assert standby.hits() == 1


async def test_a_primary_answer_is_no_fallback_when_a_failed_hedges_retry_went_there(
    standby: FaultServer,
) -> None:
    standby.set_default(Fault.blackhole())
    gate, served = asyncio.Event(), 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal served
        del request
        served += 1
        if served == 1:
            await gate.wait()  # the first attempt: slow, then 200
            return web.Response(text="primary")
        return web.Response(status=503)  # the hedge: fails at once

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    primary = f"http://127.0.0.1:{runner.addresses[0][1]}"
    config = {
        "services": {
            SERVICE: {
                "endpoints": [primary],
                "routing": {"fallback_groups": [[standby.url]]},
                "hedge": HEDGE,
            }
        }
    }
    clock = ManualClock(auto_advance=False)
    try:
        async with healkit.Client(
            config=config, plugins=[HedgePlugin()], entry_points=False, clock=clock
        ) as c:
            call = asyncio.ensure_future(c.get("/x", service=SERVICE))
            with anyio.fail_after(10):
                await clock.wait_for_sleepers()
                clock.advance(DELAY)  # the hedge: 503, and routing retries on the standby
                await standby.wait_for_hits(1)
                gate.set()  # now the first attempt answers, from the primary
                response = await call
    finally:
        gate.set()
        await runner.cleanup()
    assert response.status == 200
    outcome = response.outcome
    assert outcome.winner == 1
    assert [a.endpoint for a in outcome.attempts] == [primary, primary, standby.url]
    assert outcome.path == "primary"
