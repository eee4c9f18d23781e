"""healkit-retry: safe retries with backoff, Retry-After, deadlines and a retry budget.

Configure per service (or under ``defaults``) in the ``retry`` section::

    [services.payments.retry]
    attempts = 4             # attempts in all, the first included (1..10)
    base = 0.2               # first backoff at most 0.2 s, doubling per retry...
    cap = 3.0                # ...never more than 3 s (full jitter below that)
    idempotency_key = true   # POSTs get an Idempotency-Key, so they can be retried

What is retried: connection failures, timeouts, responses with a status of
``statuses`` (408, 429, 502, 503, 504 by default; never another 4xx) and
refusals of a circuit breaker; for ``@healkit.resilient`` functions, the
failures they declare. Only when it is safe: the request is idempotent (by
method, ``Idempotency-Key`` header or the caller's declaration), or it provably
never reached the server. Never past the call's deadline, never longer than a
``Retry-After`` of at most ``max_retry_after``, and never beyond the service's
retry budget (20% of the recent requests, plus 3 retries per second).

Order: ``tryfirst`` on ``healkit_pre_request`` and ``healkit_post_response``,
``trylast`` on ``healkit_on_error`` (see ``docs/plugins/retry.md``).
"""

from __future__ import annotations

from ._backoff import decorrelated_jitter, full_jitter, parse_retry_after
from ._budget import RetryBudgetExhausted
from ._plugin import RetryPlugin
from ._settings import SECTION, FailureKind, RetrySettings

__all__ = [
    "SECTION",
    "FailureKind",
    "RetryBudgetExhausted",
    "RetryPlugin",
    "RetrySettings",
    "decorrelated_jitter",
    "full_jitter",
    "parse_retry_after",
]
