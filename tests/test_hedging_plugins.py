"""Built-in plugins in a hedge race: a loser holds nothing and counts as nothing.

A small hedging plugin (one hedge, a fixed delay) makes the race; two real
loopback upstreams answer it: one never answers, the other at once. With a
manual clock the hedge's delay passes at the next turn of the loop, so every
call sends its hedge, whichever endpoint the first attempt went to.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import healkit
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_breaker import BreakerPlugin
from healkit_limit import LimitPlugin

pytestmark = pytest.mark.anyio

SERVICE = "svc"


class OneHedge:
    """A real hedging plugin: one hedge after a fixed delay, for idempotent calls."""

    healkit_name = "one-hedge"

    def __init__(self) -> None:
        self.cancelled: list[int] = []

    @healkit.hookimpl
    def healkit_hedge_delay(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> float | None:
        if attempt.hedge or not call.idempotent:
            return None
        return 0.05

    @healkit.hookimpl
    def healkit_attempt_cancelled(self, attempt: healkit.AttemptContext) -> None:
        self.cancelled.append(attempt.number)


@pytest.fixture
async def silent() -> Any:
    """An upstream that reads each request and never answers."""
    async with FaultServer() as server:
        server.set_default(Fault.blackhole())
        yield server


def document(endpoints: list[str], **sections: Any) -> dict[str, Any]:
    return {"services": {SERVICE: {"endpoints": endpoints, **sections}}}


async def test_a_hedge_goes_to_the_other_endpoint_and_the_loser_is_released(
    fault_server: FaultServer, silent: FaultServer, manual_clock: ManualClock
) -> None:
    hedging = OneHedge()
    config = document([silent.url, fault_server.url])
    async with healkit.Client(
        config=config, plugins=[hedging], entry_points=False, clock=manual_clock
    ) as client:
        for _ in range(4):
            response = await client.get("/items", service=SERVICE)
            assert response.status == 200
            outcome = response.outcome
            assert outcome.endpoint == fault_server.url
            # Each call sent one hedge, to the endpoint the first attempt did not go to.
            assert [a.hedge for a in outcome.attempts] == [False, True]
            assert {a.endpoint for a in outcome.attempts} == {silent.url, fault_server.url}
            assert outcome.winner is not None
            assert outcome.attempts[outcome.winner - 1].endpoint == fault_server.url
            (lost,) = (a for a in outcome.attempts if a.cancelled)
            assert lost.endpoint == silent.url
            assert lost.error is None
            assert not lost.ok
        # The routing plugin counts nothing outstanding: the losers were given back.
        statuses = healkit.endpoint_status(client.runtime, SERVICE)
        assert {s.endpoint: s.outstanding for s in statuses} == {silent.url: 0, fault_server.url: 0}
        # Nor counted as failures of the silent endpoint: it was never ejected.
        assert {s.endpoint: s.consecutive_failures for s in statuses}[silent.url] == 0
    assert len(hedging.cancelled) == 4
    # Each loser's connection was closed, not left hanging. (A hedge to the silent
    # endpoint may be cancelled before its request arrived: it answered second.)
    await silent.wait_for_idle()
    assert 2 <= silent.hits() <= 4
    assert fault_server.hits() == 4


async def test_the_limit_gives_back_the_slots_of_losers(
    fault_server: FaultServer, silent: FaultServer, manual_clock: ManualClock
) -> None:
    limits = LimitPlugin()
    config = document([silent.url, fault_server.url], limit={"concurrency": 2, "max_wait": 1.0})
    async with healkit.Client(
        config=config, plugins=[OneHedge(), limits], entry_points=False, clock=manual_clock
    ) as client:
        # Without the slots back, the third call would find both taken by losers.
        for _ in range(6):
            response = await client.get("/items", service=SERVICE)
            assert response.status == 200
            assert any(a.cancelled for a in response.outcome.attempts)
        status = limits.status(SERVICE)
        assert status is not None
        assert status.in_flight == 0
        assert status.queued == 0


async def test_the_breaker_does_not_count_a_cancelled_loser(
    fault_server: FaultServer, silent: FaultServer, manual_clock: ManualClock
) -> None:
    breakers = BreakerPlugin()
    config = document([silent.url, fault_server.url], breaker={"consecutive_failures": 2})
    async with healkit.Client(
        config=config, plugins=[OneHedge(), breakers], entry_points=False, clock=manual_clock
    ) as client:
        for _ in range(5):
            response = await client.get("/items", service=SERVICE)
            assert response.status == 200
        status = breakers.status(SERVICE, silent.url)
        assert status is not None
        assert status.state == "closed"
        assert status.failures == 0
        assert status.consecutive_failures == 0
        assert status.calls == 0  # a cancelled attempt is no outcome of its endpoint


async def test_the_breaker_frees_the_probe_slot_of_a_cancelled_loser(
    manual_clock: ManualClock,
) -> None:
    breakers = BreakerPlugin()
    config = {
        "services": {
            SERVICE: {
                "breaker": {
                    "consecutive_failures": 1,
                    "open_duration": 1.0,
                    "half_open_probes": 2,
                    "half_open_successes": 2,
                }
            }
        }
    }
    runtime = healkit.Runtime(
        config=config, plugins=[OneHedge(), breakers], entry_points=False, clock=manual_clock
    )
    calls = 0
    never = asyncio.Event()

    @healkit.resilient(service=SERVICE, idempotent=True, runtime=runtime)
    async def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("down")  # trips the breaker (one failure in a row)
        if calls == 2:
            await never.wait()  # the first attempt of the next call: slow, it loses
        return "ok"

    async with runtime:
        with pytest.raises(healkit.CallError):
            await fetch()
        manual_clock.advance(1.0)  # half-open: two probes may go
        assert await fetch() == "ok"  # the hedge (the second probe) answered
        status = breakers.status(SERVICE)
        assert status is not None
        assert status.state == "half_open"
        # The loser's probe slot is free again, not held until its time limit.
        assert status.probes == 0
