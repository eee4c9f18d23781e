"""The retry budget: retries may add at most a fraction of the recent requests.

Per service, a sliding window (``budget_window`` seconds, in ten buckets)
counts the calls made (requests) and the retries granted. A retry is granted
while::

    retries + 1 <= budget_ratio * requests + budget_min_retries_per_second * budget_window

so that under a complete outage the attempts a service receives within one
window are at most ``(1 + ratio) * requests + minimum * window``, however many
attempts each call is allowed. This is the budget of Envoy's
``retry_budget`` and Finagle's ``RetryBudget``, counted on the runtime's clock.
"""

from __future__ import annotations

import math
from typing import Final, final

import msgspec

__all__ = ["BUCKETS", "BudgetParams", "RetryBudget", "RetryBudgetExhausted"]

BUCKETS: Final = 10
"""Buckets per window: the window slides in steps of a tenth of its length."""

# Absorbs the rounding of ratio * requests (0.2 * 5 must allow 1 retry).
_EPSILON: Final = 1e-9

BudgetParams = tuple[float, float, float]
"""``(ratio, window, minimum per second)``: budgets with equal parameters are compatible."""


@final
class RetryBudgetExhausted(msgspec.Struct, frozen=True, kw_only=True):
    """Event: the retry budget of a service refused a retry.

    Emitted with ``runtime.emit`` (observe it in ``healkit_event``) when a
    retry is refused for want of budget, at most once per ``budget_window``
    per service, so a long outage does not flood the observers.

    Attributes:
        service: the service whose budget is spent.
        window_requests: calls counted in the current window.
        window_retries: retries granted in the current window.

    """

    service: str
    window_requests: int
    window_retries: int


@final
class RetryBudget:
    """The sliding-window request and retry counts of one service.

    Not thread-safe; it lives in one event loop, like the runtime that owns it.
    Times are the runtime clock's (monotonic seconds).
    """

    __slots__ = (
        "_bucket_end",
        "_bucket_start",
        "_buckets_per_second",
        "_epoch",
        "_index",
        "_last_event",
        "_ratio",
        "_request_counts",
        "_reserve",
        "_retry_counts",
        "params",
        "requests",
        "retries",
    )

    def __init__(self, params: BudgetParams) -> None:
        ratio, window, minimum = params
        self.params = params
        self._ratio = ratio
        self._reserve = minimum * window + _EPSILON
        self._buckets_per_second = BUCKETS / window
        self._request_counts = [0] * BUCKETS
        self._retry_counts = [0] * BUCKETS
        self._epoch = 0
        self._index = 0
        # The current bucket's time span; empty until the first count.
        self._bucket_start = math.inf
        self._bucket_end = -math.inf
        self._last_event = -math.inf
        self.requests = 0
        """Calls counted in the window."""
        self.retries = 0
        """Retries granted in the window."""

    def __repr__(self) -> str:
        return f"<RetryBudget requests={self.requests} retries={self.retries}>"

    @property
    def window(self) -> float:
        """The window's length in seconds."""
        return self.params[1]

    def record_request(self, now: float) -> None:
        """Count one call (its first attempt) at time ``now``."""
        if not self._bucket_start <= now < self._bucket_end:  # hot path: compare only
            self._slide(now)
        self._request_counts[self._index] += 1
        self.requests += 1

    def try_spend(self, now: float) -> bool:
        """Grant and count one retry at time ``now``, or refuse it if the budget is spent."""
        if not self._bucket_start <= now < self._bucket_end:
            self._slide(now)
        if self.retries + 1 > self._ratio * self.requests + self._reserve:
            return False
        self._retry_counts[self._index] += 1
        self.retries += 1
        return True

    def allowance(self) -> float:
        """Return how many retries the window allows with its current requests."""
        return self._ratio * self.requests + self._reserve - _EPSILON

    def should_report(self, now: float) -> bool:
        """Whether to emit :class:`RetryBudgetExhausted` now (once per window at most)."""
        if now - self._last_event < self.window:
            return False
        self._last_event = now
        return True

    def _slide(self, now: float) -> None:
        """Move the window to the bucket of ``now``, forgetting the buckets that left it."""
        epoch = math.floor(now * self._buckets_per_second)
        width = 1.0 / self._buckets_per_second
        self._bucket_start = epoch * width
        self._bucket_end = (epoch + 1) * width
        self._index = epoch % BUCKETS
        if epoch == self._epoch:
            return  # ``now`` was on the rounding edge of the current bucket
        if not 0 < epoch - self._epoch < BUCKETS:
            # A whole window (or more) passed, or the clock was replaced: start over.
            self._request_counts = [0] * BUCKETS
            self._retry_counts = [0] * BUCKETS
            self.requests = self.retries = 0
        else:
            for expired in range(self._epoch + 1, epoch + 1):
                index = expired % BUCKETS
                self.requests -= self._request_counts[index]
                self.retries -= self._retry_counts[index]
                self._request_counts[index] = 0
                self._retry_counts[index] = 0
        self._epoch = epoch
