"""Red team: a hedged streaming call (``Client.stream``).

The race ends when a response's head arrives; the winner's body is then read
by the caller, and the loser's connection is closed at once, not after the
body was read.
"""

from __future__ import annotations

import aiohttp
import anyio
import pytest
from hedge_support import DELAY, SERVICE, client, hedge_fires

import healkit
from healkit.testing import Fault, FaultServer, ManualClock

pytestmark = pytest.mark.anyio


async def test_a_hedged_stream_reads_the_winners_body_and_the_loser_is_gone(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/feed", Fault.blackhole(), Fault.slow_body(8, 0.0))
    clock = ManualClock(auto_advance=False)
    connector = aiohttp.TCPConnector(limit=2)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        client(fault_server.url, clock=clock, session=session, delay=DELAY) as c,
    ):

        async def streamed() -> tuple[int, bytes, healkit.Outcome | None]:
            async with c.stream("GET", "/feed", service=SERVICE) as response:
                body = b"".join([chunk async for chunk in response.iter_chunks()])
            return response.status, body, response.outcome

        status, body, outcome = await hedge_fires(
            clock, streamed(), before=fault_server.wait_for_hits(1)
        )
        with anyio.fail_after(10):
            await fault_server.wait_for_idle()  # the loser's connection was closed
    assert status == 200
    assert body == b"x" * 8 * 1024
    assert outcome is not None
    assert outcome.winner == 2
