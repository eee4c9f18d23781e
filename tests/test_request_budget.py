"""healkit.plugin.RequestBudget: the sliding window of requests and extra requests."""

from __future__ import annotations

import math

import pytest

from healkit.plugin import RequestBudget


def test_extras_are_a_share_of_the_requests_plus_the_reserve() -> None:
    budget = RequestBudget(ratio=0.1, window=10.0, minimum_per_second=0.5)
    for tick in range(100):
        budget.record_request(50.0 + tick * 0.05)
    granted = sum(budget.try_spend(55.0) for _ in range(100))
    assert granted == 15  # 0.1 * 100 + 0.5 * 10
    assert (budget.requests, budget.spent) == (100, 15)
    assert budget.allowance() == pytest.approx(15.0)


def test_the_window_forgets_what_left_it() -> None:
    budget = RequestBudget(ratio=1.0, window=1.0, minimum_per_second=0.0)
    budget.record_request(10.0)
    assert budget.try_spend(10.0)
    assert not budget.try_spend(10.5)
    budget.record_request(11.05)  # the bucket of t=10 left the window
    assert (budget.requests, budget.spent) == (1, 0)
    assert budget.try_spend(11.05)


def test_a_spent_budget_is_reported_once_per_window() -> None:
    budget = RequestBudget(ratio=0.0, window=5.0, minimum_per_second=0.0)
    assert budget.should_report(1.0)
    assert not budget.should_report(5.9)
    assert budget.should_report(6.0)


@pytest.mark.parametrize(
    ("ratio", "window", "minimum"),
    [
        (-0.1, 1.0, 0.0),
        (1.5, 1.0, 0.0),
        (math.nan, 1.0, 0.0),
        (0.1, 0.0, 0.0),
        (0.1, math.inf, 0.0),
        (0.1, math.nan, 0.0),
        (0.1, 1.0, -1.0),
        (0.1, 1.0, math.nan),
    ],
)
def test_nonsense_parameters_are_refused(ratio: float, window: float, minimum: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        RequestBudget(ratio=ratio, window=window, minimum_per_second=minimum)
