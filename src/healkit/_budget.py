"""A budget of extra requests: a share of the recent requests, plus a small reserve.

A plugin that adds requests of its own to a service (a retry, a hedge) must
not multiply the load on a service that is already slow or failing. A
:class:`RequestBudget` counts, over a sliding window (``window`` seconds, in
:data:`BUCKETS` buckets), the calls made (requests) and the extra requests
granted (spent). An extra request is granted while::

    spent + 1 <= ratio * requests + minimum_per_second * window

so that within one window a service receives at most
``(1 + ratio) * requests + minimum_per_second * window`` requests, however
many extras each call would like. This is the budget of Envoy's
``retry_budget`` and Finagle's ``RetryBudget``, counted on the runtime's clock.

Every operation is O(1) (amortized: a bucket is cleared at most once per
slide), and the memory is :data:`BUCKETS` pairs of counters.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["BUCKETS", "BudgetParams", "RequestBudget"]

BUCKETS: Final = 10
"""Buckets per window: the window slides in steps of a tenth of its length."""

# Absorbs the rounding of ratio * requests (0.2 * 5 must allow 1 extra request).
_EPSILON: Final = 1e-9

BudgetParams = tuple[float, float, float]
"""``(ratio, window, minimum per second)``: budgets with equal parameters are compatible."""


class RequestBudget:
    """The sliding-window counts of requests and of extra requests granted, for one service.

    Not thread-safe; it lives in one event loop, like the runtime that owns it.
    Times are the runtime clock's (monotonic seconds, ``call.clock.now()``).

    Args:
        ratio: extra requests may be at most this fraction of the requests
            counted in the window (0 to 1).
        window: seconds over which requests and extras are counted (> 0).
        minimum_per_second: extra requests allowed on top of the ratio, per
            second of window, so that a service with little traffic still gets
            some (>= 0).

    Raises:
        ValueError: a parameter is out of its range, NaN or infinite.

    """

    __slots__ = (
        "_bucket_end",
        "_bucket_start",
        "_buckets_per_second",
        "_epoch",
        "_extra_counts",
        "_index",
        "_last_report",
        "_ratio",
        "_request_counts",
        "_reserve",
        "params",
        "requests",
        "spent",
    )

    def __init__(self, *, ratio: float, window: float, minimum_per_second: float) -> None:
        if not 0 <= ratio <= 1:
            raise ValueError(f"ratio must be between 0 and 1, got {ratio!r}")
        if not 0 < window < math.inf:
            raise ValueError(f"window must be a finite number of seconds > 0, got {window!r}")
        if not 0 <= minimum_per_second < math.inf:
            raise ValueError(
                f"minimum_per_second must be a finite number >= 0, got {minimum_per_second!r}"
            )
        self.params: BudgetParams = (ratio, window, minimum_per_second)
        """``(ratio, window, minimum_per_second)``: equal parameters, compatible budgets."""
        self._ratio = ratio
        self._reserve = minimum_per_second * window + _EPSILON
        self._buckets_per_second = BUCKETS / window
        self._request_counts = [0] * BUCKETS
        self._extra_counts = [0] * BUCKETS
        self._epoch = 0
        self._index = 0
        # The current bucket's time span; empty until the first count.
        self._bucket_start = math.inf
        self._bucket_end = -math.inf
        self._last_report = -math.inf
        self.requests = 0
        """Calls counted in the window."""
        self.spent = 0
        """Extra requests granted in the window."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} requests={self.requests} spent={self.spent}>"

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
        """Grant and count one extra request at ``now``, or refuse it if the budget is spent."""
        if not self._bucket_start <= now < self._bucket_end:
            self._slide(now)
        if self.spent + 1 > self._ratio * self.requests + self._reserve:
            return False
        self._extra_counts[self._index] += 1
        self.spent += 1
        return True

    def carry(self, previous: RequestBudget, now: float) -> None:
        """Count the window of ``previous`` (the same calls' budget, other parameters) here.

        Its requests and extra requests still in its window at ``now`` count in
        this budget's current bucket (and leave the window with it): a new
        configuration takes effect on the traffic already counted, and never
        grants the reserve afresh. Call it on a budget that counted nothing yet.
        """
        if not previous._bucket_start <= now < previous._bucket_end:
            previous._slide(now)
        if not self._bucket_start <= now < self._bucket_end:
            self._slide(now)
        self._request_counts[self._index] += previous.requests
        self._extra_counts[self._index] += previous.spent
        self.requests += previous.requests
        self.spent += previous.spent
        self._last_report = previous._last_report

    def allowance(self) -> float:
        """Return how many extra requests the window allows with its current requests."""
        return self._ratio * self.requests + self._reserve - _EPSILON

    def should_report(self, now: float) -> bool:
        """Whether to report the budget spent now: true at most once per window.

        Call it when :meth:`try_spend` refused, and emit an event only when it
        answers ``True``, so that a long outage does not flood the observers.
        """
        if now - self._last_report < self.window:
            return False
        self._last_report = now
        return True

    def _slide(self, now: float) -> None:
        """Move the window to the bucket of ``now``, forgetting the buckets that left it.

        A time in an earlier bucket still in the window (read before a later one
        was counted: a call's start, counted when its first attempt runs) is
        counted in the current bucket; only a time a whole window back (the
        clock was replaced) starts the window over.
        """
        epoch = math.floor(now * self._buckets_per_second)
        if 0 < self._epoch - epoch < BUCKETS and self._bucket_start < math.inf:
            return
        width = 1.0 / self._buckets_per_second
        self._bucket_start = epoch * width
        self._bucket_end = (epoch + 1) * width
        self._index = epoch % BUCKETS
        if epoch == self._epoch:
            return  # ``now`` was on the rounding edge of the current bucket
        if not 0 < epoch - self._epoch < BUCKETS:
            # A whole window (or more) passed, or the clock was replaced: start over.
            self._request_counts = [0] * BUCKETS
            self._extra_counts = [0] * BUCKETS
            self.requests = self.spent = 0
        else:
            for expired in range(self._epoch + 1, epoch + 1):
                index = expired % BUCKETS
                self.requests -= self._request_counts[index]
                self.spent -= self._extra_counts[index]
                self._request_counts[index] = 0
                self._extra_counts[index] = 0
        self._epoch = epoch
