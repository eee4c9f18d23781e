"""Red team: a hedge through the aiohttp middleware (healkit.ResilienceMiddleware).

The middleware runs healkit's pipeline around the one ``aiohttp.ClientRequest``
aiohttp hands it; its transport writes each attempt's own headers into that
request's header multidict, replacing the previous attempt's. Attempts one
after another are fine; a hedge runs beside the attempt it follows, on the
same object.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from hedge_support import DELAY, SERVICE, document

import healkit
from healkit.testing import FaultServer, ManualClock
from healkit_hedge import HedgePlugin

pytestmark = pytest.mark.anyio


class StampAttempt:
    """A real plugin: each attempt says its number in a header of its own."""

    healkit_name = "stamp-attempt"

    def __init__(self) -> None:
        self.hedged = asyncio.Event()

    @healkit.hookimpl
    def healkit_pre_request(self, attempt: healkit.AttemptContext) -> None:
        attempt.headers["X-Attempt"] = str(attempt.number)
        if attempt.hedge:
            self.hedged.set()


async def test_a_middleware_call_is_never_raced(fault_server: FaultServer) -> None:
    # Its attempts share one aiohttp request whose headers each attempt rewrites:
    # two at once would send each other's. The transport says so, and the
    # executor does not even ask for a hedge delay.
    clock = ManualClock(auto_advance=False)
    stamp = StampAttempt()
    hedging = HedgePlugin()
    runtime = healkit.Runtime(
        config=document(fault_server.url, delay=DELAY),
        plugins=[stamp, hedging],
        entry_points=False,
        clock=clock,
    )
    middleware = healkit.ResilienceMiddleware(runtime, service=SERVICE)
    async with runtime, aiohttp.ClientSession(middlewares=[middleware]) as session:
        for _ in range(3):
            async with session.get(f"{fault_server.url}/x") as response:
                await response.read()
                assert response.status == 200
    # No hedge delay was asked (that counts a call for the budget); answers were timed.
    assert [(s.window_requests, s.window_hedges, s.samples) for s in hedging.status()] == [
        (0, 0, 3)
    ]
    assert not stamp.hedged.is_set()
    sent = [r.headers.get("X-Attempt") for r in fault_server.requests if r.path == "/x"]
    assert sent == ["1", "1", "1"]
