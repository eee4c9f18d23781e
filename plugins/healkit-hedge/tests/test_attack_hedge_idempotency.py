"""Red team: a POST made idempotent by the retry plugin's Idempotency-Key, hedged.

``retry.idempotency_key = true`` gives a POST a key in ``healkit_pre_request``;
the hedge plugin decides whether the call may be hedged in
``healkit_hedge_delay``, which the executor asks once ``pre_request`` let the
attempt through. docs/plugins/hedge.md promises that such a POST is hedged,
with the same key on every attempt.
"""

from __future__ import annotations

import asyncio
import contextlib

import anyio
import pytest
from hedge_support import DELAY, SERVICE

import healkit
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_hedge import HedgePlugin
from healkit_retry import RetryPlugin

pytestmark = pytest.mark.anyio


def keyed(url: str) -> dict[str, object]:
    return {
        "services": {
            SERVICE: {
                "endpoints": [url],
                "hedge": {"enabled": True, "delay": DELAY},
                "retry": {"idempotency_key": True},
            }
        }
    }


async def test_a_post_keyed_by_the_retry_plugin_is_hedged_with_its_key(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/charge", Fault.blackhole())
    clock = ManualClock(auto_advance=False)
    async with healkit.Client(
        config=keyed(fault_server.url),
        plugins=[RetryPlugin(), HedgePlugin()],
        entry_points=False,
        clock=clock,
    ) as c:
        call = asyncio.ensure_future(c.post("/charge", service=SERVICE, json={"amount": 1}))
        try:
            with anyio.fail_after(10):
                await fault_server.wait_for_hits(1)
                assert clock.sleeps == [DELAY]  # the hedge timer, armed with the attempt
                clock.advance(DELAY)
                response = await call
                await fault_server.wait_for_idle()
        finally:
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
    assert response.status == 200
    assert response.outcome.winner == 2
    first, hedge = fault_server.requests
    key = first.headers["Idempotency-Key"]
    assert len(key) == 32
    assert hedge.headers.getall("Idempotency-Key") == [key]
