"""Red team: hedges against the limit plugin's slots and queue, with retries installed.

A real loopback upstream holds its first request until the test lets it answer,
so that a hedge meets the limit while the first attempt is still in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import pytest
from aiohttp import web
from hedge_support import DELAY, SERVICE, Outcomes

import healkit
from healkit.testing import ManualClock
from healkit_breaker import BreakerPlugin
from healkit_hedge import HedgePlugin
from healkit_limit import LimitPlugin
from healkit_retry import RetryPlugin

pytestmark = pytest.mark.anyio


class Gated:
    """An upstream whose first request waits for :attr:`gate`; the others answer at once."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.arrived = asyncio.Event()
        self.hits = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        del request
        self.hits += 1
        if self.hits == 1:
            self.arrived.set()
            await self.gate.wait()
        return web.Response(text="ok")


@pytest.fixture
async def gated() -> AsyncIterator[Gated]:
    upstream = Gated()
    app = web.Application()
    app.router.add_get("/{tail:.*}", upstream.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield upstream
    finally:
        upstream.gate.set()
        await runner.cleanup()


class Refusals:
    """An observer noting each attempt that failed, and waking the test on the first."""

    healkit_name = "refusals"
    healkit_observer = True

    def __init__(self) -> None:
        self.errors: list[healkit.HealkitError] = []
        self.seen = asyncio.Event()

    @healkit.hookimpl
    def healkit_on_error(self, error: healkit.HealkitError) -> None:
        self.errors.append(error)
        self.seen.set()


def settings(url: str, **limit: object) -> dict[str, object]:
    return {
        "services": {
            SERVICE: {
                "endpoints": [url],
                "hedge": {"enabled": True, "delay": DELAY},
                "limit": {"concurrency": 1, **limit},
                "retry": {"attempts": 3},
                "breaker": {"consecutive_failures": 1},
            }
        }
    }


def client(url: str, clock: ManualClock, *observers: object, **limit: object) -> healkit.Client:
    return healkit.Client(
        config=settings(url, **limit),
        plugins=[HedgePlugin(), LimitPlugin(), RetryPlugin(), BreakerPlugin(), *observers],
        entry_points=False,
        clock=clock,
    )


async def test_a_hedge_refused_by_a_full_queue_does_not_fail_the_call(gated: Gated) -> None:
    clock = ManualClock(auto_advance=False)
    refusals, outcomes = Refusals(), Outcomes()
    async with client(gated.url, clock, refusals, outcomes) as c:
        with anyio.fail_after(10):
            call = asyncio.ensure_future(c.get("/x", service=SERVICE))
            await gated.arrived.wait()  # the first attempt holds the one slot
            await clock.wait_for_sleepers()
            clock.advance(DELAY)  # the hedge finds no slot and no queue
            await refusals.seen.wait()
            gated.gate.set()
            response = await call
            assert response.status == 200
            # The breaker was not opened by the refusal: the next call goes through.
            assert (await c.get("/y", service=SERVICE)).status == 200
    (refused,) = refusals.errors
    assert isinstance(refused, healkit.ConcurrencyLimitError)
    outcome = response.outcome
    assert outcome.winner == 1
    assert [(a.hedge, a.ok) for a in outcome.attempts] == [(False, True), (True, False)]
    assert gated.hits == 2  # the first call's one request, and the next call's


async def test_a_hedge_waiting_in_the_queue_leaves_it_when_the_first_attempt_answers(
    gated: Gated,
) -> None:
    clock = ManualClock(auto_advance=False)
    limits = LimitPlugin()
    async with healkit.Client(
        config=settings(gated.url, queue=1, max_wait=5.0),
        plugins=[HedgePlugin(), limits, RetryPlugin(), BreakerPlugin()],
        entry_points=False,
        clock=clock,
    ) as c:
        with anyio.fail_after(10):
            call = asyncio.ensure_future(c.get("/x", service=SERVICE))
            await gated.arrived.wait()
            await clock.wait_for_sleepers()
            clock.advance(DELAY)
            while (status := limits.status(SERVICE)) is None or status.queued == 0:
                await clock.wait_for_sleepers()  # the hedge waits for a slot, at most max_wait
            gated.gate.set()
            response = await call
        status = limits.status(SERVICE)
        assert status is not None
        assert (status.in_flight, status.queued) == (0, 0)
        outcome = response.outcome
        assert outcome.winner == 1
        first, hedge = outcome.attempts
        assert first.ok
        assert hedge.hedge
        assert hedge.cancelled
        assert hedge.error is None
        with anyio.fail_after(10):
            assert (await c.get("/y", service=SERVICE)).status == 200
    assert gated.hits == 2
