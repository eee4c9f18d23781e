"""The hedge budget under a 100%-slow upstream, its event, the percentile delay, reloads."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from hedge_support import DELAY, SERVICE, Events, Outcomes, client, document, hedge_fires

import healkit
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_hedge import HedgeBudgetExhausted, HedgePlugin
from healkit_hedge._estimator import samples_needed

pytestmark = pytest.mark.anyio


async def test_hedges_stay_within_the_budget_when_every_answer_is_slow(
    fault_server: FaultServer,
) -> None:
    # Every answer takes longer than the hedge delay: every call would like a hedge.
    fault_server.set_default(Fault.ok(latency=0.002))
    clock = ManualClock()  # the hedge timer fires at once, in virtual time
    events, outcomes = Events(), Outcomes()
    plugin = HedgePlugin()
    ratio, minimum, window = 0.1, 0.5, 10.0
    requests = 200
    settings: dict[str, Any] = {
        "delay": 0.001,
        "budget_ratio": ratio,
        "budget_min_per_second": minimum,
        "budget_window": window,
    }
    started = clock.now()
    async with client(
        fault_server.url, events, outcomes, clock=clock, plugin=plugin, **settings
    ) as c:
        for _ in range(requests // 20):
            clock.advance(0.01)
            answers = await asyncio.gather(*(c.get("/x", service=SERVICE) for _ in range(20)))
            assert all(a.status == 200 for a in answers)
    assert clock.now() - started < window  # the whole run fits in one window
    hedges = sum(a.hedge for o in outcomes.seen for a in o.attempts)
    bound = ratio * requests + minimum * window
    assert hedges <= bound
    assert hedges >= bound - 1  # the budget is used, not just respected
    assert fault_server.hits("/x") <= requests + hedges
    reports = [e for e in events.seen if isinstance(e, HedgeBudgetExhausted)]
    assert len(reports) == 1  # at most once per window
    assert reports[0].service == SERVICE
    report = reports[0]  # when the budget first ran out, it had given all it allowed
    assert report.window_hedges == int(ratio * report.window_requests + minimum * window)
    (status,) = plugin.status()
    assert status.window_requests == requests
    assert status.window_hedges == hedges
    assert status.declined == requests - hedges
    assert status.delay == 0.01  # the fixed delay, raised to the default floor


async def test_the_percentile_delay_is_used_once_enough_answers_were_timed(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/x", *[Fault.ok()] * samples_needed(95.0), Fault.blackhole())
    clock = ManualClock(auto_advance=False)
    plugin = HedgePlugin()
    async with client(
        fault_server.url, clock=clock, plugin=plugin, min_delay=0.03, percentile=95.0
    ) as c:
        for _ in range(samples_needed(95.0)):
            await c.get("/x", service=SERVICE)
        # Until now no timer: the percentile was not known. Every answer took no
        # virtual time, so the delay is the floor.
        assert clock.sleeps == []
        (status,) = plugin.status()
        assert status.samples == samples_needed(95.0)
        assert status.delay == 0.03
        response = await hedge_fires(
            clock,
            c.get("/x", service=SERVICE),
            before=fault_server.wait_for_hits(samples_needed(95.0) + 1),
            delay=0.03,
        )
    assert clock.sleeps == [0.03]
    assert response.status == 200
    assert response.outcome is not None
    assert response.outcome.winner == 2


async def test_a_policy_change_takes_effect_and_the_budget_follows_it(
    fault_server: FaultServer,
) -> None:
    fault_server.set_default(Fault.blackhole())
    clock = ManualClock(auto_advance=False)
    async with client(fault_server.url, clock=clock, delay=DELAY) as c:
        c.runtime.apply(document(fault_server.url, enabled=False))
        task = asyncio.ensure_future(c.get("/x", service=SERVICE))
        with anyio.fail_after(10):
            await fault_server.wait_for_hits(1)
            assert clock.sleeps == []  # hedging turned off: no timer
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await fault_server.wait_for_idle()

            c.runtime.apply(document(fault_server.url, delay=0.2))
            fault_server.set_default(Fault.ok())
            fault_server.script("/y", Fault.blackhole())
            response = await hedge_fires(
                clock,
                c.get("/y", service=SERVICE),
                before=fault_server.wait_for_hits(1, "/y"),
                delay=0.2,
            )
    assert clock.sleeps == [0.2]  # the new delay
    assert response.outcome is not None
    assert response.outcome.winner == 2


class OtherHedger:
    """Another plugin that gives hedge delays, for the service ``other`` only."""

    healkit_name = "other-hedger"

    @healkit.hookimpl
    def healkit_hedge_delay(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> float | None:
        return DELAY if call.service == "other" and attempt.number == 1 else None


async def test_hedges_of_a_service_it_does_not_hedge_are_not_its_business(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/x", Fault.blackhole())
    clock = ManualClock(auto_advance=False)
    plugin = HedgePlugin()
    # "svc" hedges (so the plugin is in the plan); "other" does not.
    config = document("http://svc.test")
    config["services"]["other"] = {"endpoints": [fault_server.url]}
    async with healkit.Client(
        config=config, plugins=[OtherHedger(), plugin], entry_points=False, clock=clock
    ) as c:
        response = await hedge_fires(
            clock, c.get("/x", service="other"), before=fault_server.wait_for_hits(1)
        )
    assert response.outcome is not None
    assert response.outcome.winner == 2  # the other plugin's hedge went out...
    assert plugin.status() == []  # ...without this plugin's budget or state
