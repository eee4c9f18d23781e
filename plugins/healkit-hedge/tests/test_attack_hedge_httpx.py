"""Red team: hedged requests through healkit's httpx transport.

Each attempt builds its own ``httpx.Request`` from the body read once, and the
wrapped ``httpx.AsyncHTTPTransport`` is a connection pool that serves
concurrent requests: a hedge shares nothing mutable with the attempt it backs
up. The loser's connection is closed, not returned to the pool half-read.
"""

from __future__ import annotations

import asyncio

import anyio
import httpx
import pytest
from hedge_support import DELAY, SERVICE, document, hedge_fires

from healkit.httpx import ResilientTransport, outcome_of
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_hedge import HedgePlugin

pytestmark = pytest.mark.anyio


def transport(url: str, clock: ManualClock, **inner: int) -> ResilientTransport:
    pool = httpx.AsyncHTTPTransport(limits=httpx.Limits(**inner)) if inner else None
    return ResilientTransport(
        config=document(url, delay=DELAY),
        plugins=[HedgePlugin()],
        entry_points=False,
        clock=clock,
        service=SERVICE,
        transport=pool,
    )


async def test_a_hedged_post_sends_the_same_body_and_key_twice(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/charge", Fault.blackhole())  # then: 200
    clock = ManualClock(auto_advance=False)
    body = b'{"amount": 1}' * 1000
    async with httpx.AsyncClient(transport=transport(fault_server.url, clock)) as client:
        response = await hedge_fires(
            clock,
            client.post(
                f"{fault_server.url}/charge", content=body, headers={"Idempotency-Key": "k-1"}
            ),
            before=fault_server.wait_for_hits(1),
        )
        with anyio.fail_after(10):
            await fault_server.wait_for_idle()  # the loser's connection was closed
    assert response.status_code == 200
    outcome = outcome_of(response)
    assert outcome.winner == 2
    first, hedge = fault_server.requests
    assert first.body == hedge.body == body
    assert first.headers["Idempotency-Key"] == hedge.headers["Idempotency-Key"] == "k-1"


async def test_concurrent_hedged_calls_share_the_pool_and_give_it_back(
    fault_server: FaultServer,
) -> None:
    # Ten calls, each first attempt held: ten hedges beside them, through a pool of
    # twenty connections. Every loser's connection is given back: the next ten
    # calls find the pool whole.
    fault_server.set_default(Fault.blackhole())
    clock = ManualClock(auto_advance=False)
    async with httpx.AsyncClient(
        transport=transport(fault_server.url, clock, max_connections=20)
    ) as client:
        calls = [
            asyncio.ensure_future(client.get(f"{fault_server.url}/slow/{i}")) for i in range(10)
        ]
        with anyio.fail_after(10):
            await fault_server.wait_for_hits(10)
            fault_server.set_default(Fault.ok())
            assert clock.sleeping == 10  # each call armed its hedge timer with its attempt
            clock.advance(DELAY)
            answers = await asyncio.gather(*calls)
            await fault_server.wait_for_idle()
            after = await asyncio.gather(
                *(client.get(f"{fault_server.url}/after/{i}") for i in range(20))
            )
    assert [a.status_code for a in answers] == [200] * 10
    assert all(outcome_of(a).winner == 2 for a in answers)
    assert [a.status_code for a in after] == [200] * 20
