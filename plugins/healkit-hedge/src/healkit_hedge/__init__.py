"""healkit-hedge: hedged requests against tail latency, within a hedge budget.

Configure per service (or under ``defaults``) in the ``hedge`` section::

    [services.search.hedge]
    enabled = true
    percentile = 95.0   # hedge after the service's recent p95 latency...
    min_delay = 0.01    # ...never sooner than 10 ms
    max_hedges = 1      # one hedge per call at most
    budget_ratio = 0.1  # hedges add at most 10% of the recent requests (plus 1/s)

When an attempt has not answered after the delay, healkit sends the same
request again (``healkit_hedge_delay``); the routing plugin picks another
endpoint of the service when it has several. The first acceptable answer wins;
the others are cancelled at once, their connections released, and not counted
as failures. Only calls that may be sent twice are hedged: idempotent methods,
requests with an ``Idempotency-Key`` header, functions declared
``idempotent=True``, with a body that can be sent again. Each hedge spends the
service's hedge budget (``healkit_hedge``); a spent budget declines it and
emits :class:`HedgeBudgetExhausted`. See ``docs/plugins/hedge.md``.
"""

from __future__ import annotations

from ._estimator import LatencyEstimator
from ._plugin import HedgeBudgetExhausted, HedgePlugin, HedgeStatus
from ._settings import SECTION, HedgeSettings

__all__ = [
    "SECTION",
    "HedgeBudgetExhausted",
    "HedgePlugin",
    "HedgeSettings",
    "HedgeStatus",
    "LatencyEstimator",
]
