"""Hedged HTTP calls against real loopback servers, on a manual clock."""

from __future__ import annotations

import asyncio

import aiohttp
import anyio
import pytest
from hedge_support import DELAY, SERVICE, client, hedge_fires

from healkit.testing import Fault, FaultServer, ManualClock

pytestmark = pytest.mark.anyio


async def test_a_slow_attempt_gets_a_hedge_that_wins_and_the_loser_is_cancelled(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/x", Fault.blackhole())  # then: 200
    clock = ManualClock(auto_advance=False)
    connector = aiohttp.TCPConnector(limit=2)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        client(fault_server.url, clock=clock, session=session, delay=DELAY) as c,
    ):
        response = await hedge_fires(
            clock, c.get("/x", service=SERVICE), before=fault_server.wait_for_hits(1)
        )
        assert response.status == 200
        assert fault_server.hits("/x") == 2  # the first attempt and one hedge, no more
        outcome = response.outcome
        assert outcome is not None
        assert outcome.winner == 2
        first, hedge = outcome.attempts
        assert (first.hedge, first.cancelled, first.ok) == (False, True, False)
        assert (hedge.hedge, hedge.cancelled, hedge.ok) == (True, False, True)
        assert "(hedge)" in hedge.describe()
        with anyio.fail_after(10):
            # The server saw the loser's connection closed: its handler was cancelled.
            await fault_server.wait_for_idle()
            # And the pool has both of its two connections to give: none is held by the loser.
            both = await asyncio.gather(*(c.get(f"/after{i}", service=SERVICE) for i in range(2)))
        assert [r.status for r in both] == [200, 200]


async def test_a_fast_answer_sends_no_hedge(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    async with client(fault_server.url, clock=ManualClock(auto_advance=False), delay=DELAY) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.status == 200
    assert fault_server.hits("/x") == 1
    assert response.outcome is not None
    assert response.outcome.winner == 1
    assert len(response.outcome.attempts) == 1


async def test_a_post_without_idempotency_key_is_never_hedged(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/charge", Fault.blackhole())
    clock = ManualClock(auto_advance=False)
    async with client(fault_server.url, clock=clock, delay=DELAY) as c:
        task = asyncio.ensure_future(c.post("/charge", service=SERVICE, json={"amount": 1}))
        with anyio.fail_after(10):
            await fault_server.wait_for_hits(1)
            assert clock.sleeps == []  # slow as it is, no hedge timer was even armed
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await fault_server.wait_for_idle()
    assert fault_server.hits("/charge") == 1


async def test_a_post_with_an_idempotency_key_is_hedged(fault_server: FaultServer) -> None:
    fault_server.script("/charge", Fault.blackhole())
    clock = ManualClock(auto_advance=False)
    async with client(fault_server.url, clock=clock, delay=DELAY) as c:
        response = await hedge_fires(
            clock,
            c.post(
                "/charge",
                service=SERVICE,
                json={"amount": 1},
                headers={"Idempotency-Key": "k-1"},
            ),
            before=fault_server.wait_for_hits(1),
        )
    assert response.status == 200
    requests = fault_server.requests
    assert len(requests) == 2
    assert {r.headers["Idempotency-Key"] for r in requests} == {"k-1"}
    assert {r.body for r in requests} == {b'{"amount":1}'}


async def test_max_hedges_is_respected(fault_server: FaultServer) -> None:
    fault_server.script("/x", Fault.blackhole(), Fault.blackhole(), Fault.blackhole())
    clock = ManualClock(auto_advance=False)
    async with client(fault_server.url, clock=clock, delay=DELAY, max_hedges=2) as c:
        task = asyncio.ensure_future(c.get("/x", service=SERVICE))
        with anyio.fail_after(10):
            for sent in (1, 2, 3):
                await fault_server.wait_for_hits(sent)
                if sent < 3:
                    await clock.wait_for_sleepers()
                    clock.advance(DELAY)
            # Two hedges in flight: no third timer is armed however long it waits.
            await asyncio.sleep(0)
            assert clock.sleeping == 0
            assert fault_server.hits("/x") == 3
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await fault_server.wait_for_idle()


async def test_max_hedges_zero_sends_none(fault_server: FaultServer) -> None:
    clock = ManualClock(auto_advance=False)
    async with client(fault_server.url, clock=clock, delay=DELAY, max_hedges=0) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.status == 200
    assert clock.sleeps == []


async def test_a_hedge_goes_to_another_endpoint(fault_server: FaultServer) -> None:
    async with FaultServer() as other:
        fault_server.set_default(Fault.blackhole())
        other.set_default(Fault.blackhole())
        clock = ManualClock(auto_advance=False)
        async with client([fault_server.url, other.url], clock=clock, delay=DELAY) as c:
            task = asyncio.ensure_future(c.get("/x", service=SERVICE))
            with anyio.fail_after(10):
                arrivals = [
                    asyncio.ensure_future(s.wait_for_hits(1)) for s in (fault_server, other)
                ]
                await asyncio.wait(arrivals, return_when=asyncio.FIRST_COMPLETED)
                for arrival in arrivals:
                    arrival.cancel()
                # Whichever endpoint got the first attempt answers nothing; the other answers.
                slow, fast = (fault_server, other) if fault_server.hits() else (other, fault_server)
                fast.set_default(Fault.ok(body=b"fast"))
                await clock.wait_for_sleepers()
                clock.advance(DELAY)
                response = await task
        assert await response.read() == b"fast"
        assert (slow.hits(), fast.hits()) == (1, 1)
        assert response.outcome is not None
        first, hedge = response.outcome.attempts
        assert hedge.hedge
        assert first.endpoint != hedge.endpoint
