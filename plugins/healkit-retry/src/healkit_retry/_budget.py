"""The retry budget: retries may add at most a fraction of the recent requests.

Per service, a sliding window (``budget_window`` seconds, in ten buckets)
counts the calls made (requests) and the retries granted. A retry is granted
while::

    retries + 1 <= budget_ratio * requests + budget_min_retries_per_second * budget_window

so that under a complete outage the attempts a service receives within one
window are at most ``(1 + ratio) * requests + minimum * window``, however many
attempts each call is allowed. The counting is the core's
:class:`healkit.plugin.RequestBudget` (Envoy's ``retry_budget``, Finagle's
``RetryBudget``), counted on the runtime's clock.
"""

from __future__ import annotations

from typing import final

import msgspec

from healkit.plugin import BudgetParams, RequestBudget

__all__ = ["BudgetParams", "RetryBudget", "RetryBudgetExhausted"]


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
class RetryBudget(RequestBudget):
    """The sliding-window request and retry counts of one service.

    A :class:`healkit.plugin.RequestBudget` whose extra requests are retries.
    Not thread-safe; it lives in one event loop, like the runtime that owns it.
    Times are the runtime clock's (monotonic seconds).
    """

    __slots__ = ()

    def __init__(self, params: BudgetParams) -> None:
        ratio, window, minimum = params
        super().__init__(ratio=ratio, window=window, minimum_per_second=minimum)

    def __repr__(self) -> str:
        return f"<RetryBudget requests={self.requests} retries={self.retries}>"

    @property
    def retries(self) -> int:
        """Retries granted in the window."""
        return self.spent
