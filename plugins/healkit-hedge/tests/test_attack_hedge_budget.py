"""Red team: the request budget behind hedges (and retries) fed times out of order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hedge_support import SERVICE, Outcomes, client, document

from healkit.plugin import RequestBudget
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_hedge import HedgePlugin


def spend_all(budget: RequestBudget, now: float) -> int:
    granted = 0
    while budget.try_spend(now):
        granted += 1
    return granted


def test_a_call_counted_late_with_its_start_time_does_not_wipe_the_window() -> None:
    # A call's first attempt counts the call with the time it started (the retry
    # plugin does so in pre_request, which in a hedge race runs in the attempt's
    # own task, a turn of the loop later): other calls may have moved the window
    # to the next bucket meanwhile. Old code took the earlier bucket for a clock
    # replaced, forgot every request and every extra granted in the window, and
    # granted the whole reserve again: more extras than ratio * requests + reserve.
    budget = RequestBudget(ratio=0.5, window=10.0, minimum_per_second=0.1)
    for _ in range(10):
        budget.record_request(1005.0)
    assert spend_all(budget, 1005.0) == 6  # 0.5 * 10 + 0.1 * 10
    budget.record_request(1004.95)  # started in the bucket before, counted now
    assert (budget.requests, budget.spent) == (11, 6)
    assert not budget.try_spend(1005.0)  # 7 > 0.5 * 11 + 1
    budget.record_request(1005.0)
    assert spend_all(budget, 1005.0) == 1  # 7 <= 0.5 * 12 + 1: the window's counts held
    assert budget.spent <= budget.allowance()


def test_the_late_call_leaves_the_window_with_its_bucket() -> None:
    budget = RequestBudget(ratio=1.0, window=10.0, minimum_per_second=0.0)
    budget.record_request(1005.0)
    budget.record_request(1004.5)  # counted in the current bucket (1005 to 1006)
    assert budget.requests == 2
    budget.record_request(1015.5)  # the bucket of 1005 left the window
    assert budget.requests == 1


def test_a_time_a_whole_window_back_starts_the_window_over() -> None:
    # The runtime's clock was replaced (a ManualClock in a test): its times say
    # nothing about the old ones.
    budget = RequestBudget(ratio=0.5, window=10.0, minimum_per_second=0.0)
    for _ in range(4):
        budget.record_request(1005.0)
    assert spend_all(budget, 1005.0) == 2
    budget.record_request(5.0)
    assert (budget.requests, budget.spent) == (1, 0)


@pytest.mark.anyio
async def test_a_budget_change_mid_traffic_does_not_grant_the_reserve_afresh(
    fault_server: FaultServer,
) -> None:
    # Every answer is slower than the delay: every call would like a hedge. An
    # operator lowers budget_ratio to relieve the upstream; old code gave the
    # service a new, empty budget, whose reserve went out at once: more hedges
    # in the window than either policy allows.
    fault_server.set_default(Fault.ok(latency=0.002))
    clock = ManualClock()  # the hedge timer fires at once, in virtual time
    outcomes = Outcomes()
    plugin = HedgePlugin()
    first: dict[str, Any] = {"delay": 0.001, "budget_ratio": 0.5, "budget_min_per_second": 0.5}
    async with client(fault_server.url, outcomes, clock=clock, plugin=plugin, **first) as c:
        for _ in range(4):
            await asyncio.gather(*(c.get("/x", service=SERVICE) for _ in range(10)))
        assert hedges(outcomes) == 0.5 * 40 + 0.5 * 10  # the first budget, all used
        lowered = {**first, "budget_ratio": 0.1}
        c.runtime.apply(document(fault_server.url, enabled=True, **lowered))
        outcomes.seen.clear()
        await asyncio.gather(*(c.get("/x", service=SERVICE) for _ in range(10)))
        (status,) = plugin.status()
    assert hedges(outcomes) == 0  # 25 hedges for 50 calls: beyond 0.1 * 50 + 5 already
    assert (status.window_requests, status.window_hedges) == (50, 25)
    assert status.declined == (40 - 25) + 10


def hedges(outcomes: Outcomes) -> int:
    return sum(a.hedge for o in outcomes.seen for a in o.attempts)
