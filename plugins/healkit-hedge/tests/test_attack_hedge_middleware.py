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
import anyio
import pytest
from hedge_support import DELAY, SERVICE, document

import healkit
from healkit.testing import Fault, FaultServer, ManualClock
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


@pytest.mark.xfail(
    strict=True,
    reason=(
        "core transport contract: the middleware's transport writes every attempt's"
        " headers into the one shared aiohttp.ClientRequest, so a hedge launched while"
        " the first attempt still waits for a pooled connection overwrites the first"
        " attempt's headers: attempt 1 goes out with X-Attempt: 2"
    ),
)
async def test_each_attempt_of_a_hedged_middleware_call_sends_its_own_headers(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/block", Fault.blackhole())
    clock = ManualClock(auto_advance=False)
    stamp = StampAttempt()
    runtime = healkit.Runtime(
        config=document(fault_server.url, delay=DELAY),
        plugins=[stamp, HedgePlugin()],
        entry_points=False,
        clock=clock,
    )
    middleware = healkit.ResilienceMiddleware(runtime, service=SERVICE)
    # One connection: the call's attempts wait for it while a plain request holds it.
    connector = aiohttp.TCPConnector(limit=1)
    async with (
        runtime,
        aiohttp.ClientSession(connector=connector, middlewares=[middleware]) as session,
    ):

        async def blocker() -> None:
            async with session.get(f"{fault_server.url}/block", middlewares=()) as response:
                await response.read()

        async def hedged() -> int:
            async with session.get(f"{fault_server.url}/x") as response:
                await response.read()
                return response.status

        with anyio.fail_after(10):
            holding = asyncio.ensure_future(blocker())
            await fault_server.wait_for_hits(1)
            call = asyncio.ensure_future(hedged())
            await clock.wait_for_sleepers()  # attempt 1 waits for the connection
            clock.advance(DELAY)  # the hedge goes, and waits too
            await stamp.hedged.wait()
            holding.cancel()  # the connection is given back: attempt 1 takes it
            assert await call == 200
    sent = [r.headers.get("X-Attempt") for r in fault_server.requests if r.path == "/x"]
    assert sent[0] == "1"
