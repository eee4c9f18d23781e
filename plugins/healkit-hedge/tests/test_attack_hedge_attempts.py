"""Red team: the attempt limits a caller or a policy sets, against hedges.

Hedges are attempts: their numbers count toward the call's attempts
(docs/concepts.md: "retry.attempts bounds every attempt of the call";
``Client.request(attempts=...)``: "the most attempts for this call, the first
included").
"""

from __future__ import annotations

import asyncio
import contextlib

import anyio
import pytest
from hedge_support import DELAY, SERVICE, document, hedge_fires

import healkit
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_hedge import HedgePlugin
from healkit_retry import RetryPlugin

pytestmark = pytest.mark.anyio


async def test_a_call_limited_to_one_attempt_is_not_hedged(fault_server: FaultServer) -> None:
    fault_server.script("/x", Fault.blackhole())
    clock = ManualClock(auto_advance=False)
    config = document(fault_server.url, delay=DELAY)
    config["services"][SERVICE]["retry"] = {"attempts": 3}
    async with healkit.Client(
        config=config, plugins=[RetryPlugin(), HedgePlugin()], entry_points=False, clock=clock
    ) as c:
        call = asyncio.ensure_future(c.get("/x", service=SERVICE, attempts=1))
        try:
            with anyio.fail_after(10):
                await fault_server.wait_for_hits(1)
                assert clock.sleeps == []  # no hedge timer: one attempt is all it may make
        finally:
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
    assert fault_server.hits("/x") == 1


async def test_retries_off_leave_hedging_on(fault_server: FaultServer) -> None:
    # retry.attempts = 1 turns retries off, not hedging: hedge.max_hedges bounds
    # the hedges; a hedge counts toward retry.attempts for the retries after it.
    fault_server.script("/x", Fault.blackhole())  # then: 200
    clock = ManualClock(auto_advance=False)
    config = document(fault_server.url, delay=DELAY)
    config["services"][SERVICE]["retry"] = {"attempts": 1}
    async with healkit.Client(
        config=config, plugins=[RetryPlugin(), HedgePlugin()], entry_points=False, clock=clock
    ) as c:
        response = await hedge_fires(
            clock, c.get("/x", service=SERVICE), before=fault_server.wait_for_hits(1)
        )
    assert response.status == 200
    assert response.outcome.winner == 2


async def test_a_caller_allowing_two_attempts_gets_one_hedge_of_two(
    fault_server: FaultServer,
) -> None:
    fault_server.set_default(Fault.blackhole())
    clock = ManualClock(auto_advance=False)
    config = document(fault_server.url, delay=DELAY, max_hedges=2)
    config["services"][SERVICE]["retry"] = {"attempts": 3}
    async with healkit.Client(
        config=config, plugins=[RetryPlugin(), HedgePlugin()], entry_points=False, clock=clock
    ) as c:
        call = asyncio.ensure_future(c.get("/x", service=SERVICE, attempts=2))
        try:
            with anyio.fail_after(10):
                await fault_server.wait_for_hits(1)
                await clock.wait_for_sleepers()
                clock.advance(DELAY)  # the one hedge the limit leaves room for
                await fault_server.wait_for_hits(2)
                assert clock.sleeping == 0  # and no timer for a second one
        finally:
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
    assert clock.sleeps == [DELAY]
    assert fault_server.hits("/x") == 2
