"""The retry budget: bounded extra load under a full outage, state kept across configs."""

from __future__ import annotations

from typing import Any

import pytest
from retry_support import SERVICE, Events, client, document

import healkit
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_retry import RetryBudgetExhausted
from healkit_retry._budget import RetryBudget

pytestmark = pytest.mark.anyio

TINY_BACKOFF: dict[str, Any] = {"base": 0.001, "cap": 0.001}


async def test_attempts_stay_within_the_budget_under_a_full_outage(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(503))
    events = Events()
    requests = 200
    ratio, minimum, window = 0.2, 3.0, 10.0
    started = manual_clock.now()
    async with client(fault_server.url, events, clock=manual_clock, **TINY_BACKOFF) as c:
        errors: list[str] = []
        for _ in range(requests):
            manual_clock.advance(0.01)
            with pytest.raises(healkit.HTTPStatusError) as caught:
                await c.get("/x", service=SERVICE)
            errors.append(str(caught.value))
    assert manual_clock.now() - started < window  # the whole run fits in one window
    attempts = fault_server.hits("/x")
    bound = (1 + ratio) * requests + minimum * window
    assert attempts <= bound
    assert attempts >= bound - 3  # the budget is used, not just respected
    exhausted = [e for e in errors if "retry budget exhausted" in e]
    assert exhausted
    assert (
        "requests in the last 10s (retry.budget_ratio = 0.2, at least 3 retries/s)"
        in (exhausted[0])
    )
    reports = [e for e in events.seen if isinstance(e, RetryBudgetExhausted)]
    assert len(reports) == 1  # at most once per window
    assert reports[0].service == SERVICE
    report = reports[0]
    assert report.window_retries == int(ratio * report.window_requests + minimum * window)


async def test_the_budget_refills_as_the_window_slides(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(503))
    settings: dict[str, Any] = {
        "budget_ratio": 0.0,
        "budget_min_retries_per_second": 0.1,
        **TINY_BACKOFF,
    }
    async with client(fault_server.url, clock=manual_clock, attempts=2, **settings) as c:
        for _ in range(3):  # 1 retry per 10 s window
            with pytest.raises(healkit.HTTPStatusError):
                await c.get("/x", service=SERVICE)
        assert fault_server.hits("/x") == 4
        manual_clock.advance(10.0)
        with pytest.raises(healkit.HTTPStatusError):
            await c.get("/x", service=SERVICE)
        assert fault_server.hits("/x") == 6


async def test_budget_survives_a_config_change_that_keeps_its_settings(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(503))
    settings: dict[str, Any] = {
        "budget_ratio": 0.0,
        "budget_min_retries_per_second": 0.1,
        **TINY_BACKOFF,
    }
    async with client(fault_server.url, clock=manual_clock, **settings) as c:
        with pytest.raises(healkit.HTTPStatusError, match="budget exhausted"):
            await c.get("/x", service=SERVICE)  # 1 retry allowed: 2 attempts
        assert fault_server.hits("/x") == 2

        c.runtime.apply(document(fault_server.url, attempts=4, **settings))
        with pytest.raises(healkit.HTTPStatusError, match="budget exhausted"):
            await c.get("/x", service=SERVICE)
        assert fault_server.hits("/x") == 3  # still spent

        # New settings take over the window: 3 retries in it now, 1 spent already.
        changed = {**settings, "budget_min_retries_per_second": 0.3}
        c.runtime.apply(document(fault_server.url, attempts=4, **changed))
        with pytest.raises(healkit.HTTPStatusError, match="budget exhausted"):
            await c.get("/x", service=SERVICE)
        assert fault_server.hits("/x") == 6  # 2 retries more, not a fresh reserve of 3


async def test_a_lowered_budget_does_not_grant_its_reserve_afresh(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    # An operator lowers the budget during an outage to relieve the upstream; a
    # fresh, empty budget would have sent its whole reserve of retries at once.
    fault_server.set_default(Fault.status(503))
    settings: dict[str, Any] = {
        "budget_ratio": 0.5,
        "budget_min_retries_per_second": 0.5,
        **TINY_BACKOFF,
    }
    async with client(fault_server.url, clock=manual_clock, attempts=2, **settings) as c:
        for _ in range(20):
            with pytest.raises(healkit.HTTPStatusError):
                await c.get("/x", service=SERVICE)
        assert fault_server.hits("/x") == 20 + 15  # 0.5 * 20 + 0.5 * 10 retries
        lowered = {**settings, "budget_ratio": 0.1}
        c.runtime.apply(document(fault_server.url, attempts=2, **lowered))
        for _ in range(10):
            with pytest.raises(healkit.HTTPStatusError, match="budget exhausted"):
                await c.get("/x", service=SERVICE)
        # 15 retries for 30 calls: beyond 0.1 * 30 + 5 already, so none more.
        assert fault_server.hits("/x") == 35 + 10


def test_budget_window_slides_bucket_by_bucket() -> None:
    budget = RetryBudget((0.5, 10.0, 0.0))
    for second in range(10):
        budget.record_request(100.0 + second)
    assert budget.requests == 10
    assert budget.allowance() == pytest.approx(5.0)
    assert all(budget.try_spend(109.5) for _ in range(5))
    assert not budget.try_spend(109.5)
    budget.record_request(110.0)  # the bucket of t=100 leaves the window
    assert budget.requests == 10
    assert not budget.try_spend(110.0)
    budget.record_request(125.0)  # more than a window later: all forgotten
    assert (budget.requests, budget.retries) == (1, 0)
