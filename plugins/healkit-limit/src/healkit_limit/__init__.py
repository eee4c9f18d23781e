"""healkit-limit: concurrency limits, adaptive throttling and rate limits per service.

Configure per service (or under ``defaults``) in the ``limit`` section::

    [services.payments.limit]
    concurrency = 32        # at most 32 attempts in flight...
    queue = 64              # ...64 more may wait for a slot...
    max_wait = 0.5          # ...for half a second at most
    adaptive = true         # the limit follows the upstream's latency
    throttle = true         # refuse locally while the upstream rejects (429, 503)
    rate = 100.0            # at most 100 attempts a second...
    rate_mode = "smooth"    # ...spaced out rather than refused

Every limit is off until configured. A refused attempt fails with an
:class:`healkit.OverloadError` (``ConcurrencyLimitError``, ``RateLimitedError``
or ``ThrottledError``) before anything is sent, and goes to the fallbacks (a
degraded response, for example) like any failure. Read the state with
:meth:`LimitPlugin.status`.

Order: ``healkit_admit`` runs after every ``healkit_pre_request`` admitted the
attempt (a breaker refuses first, so a refused attempt never waits in the
queue), and ``trylast`` among admissions. ``healkit_post_response`` and
``healkit_on_error`` are ``tryfirst``, so a slot is given back before another
plugin's hook could fail the call; a cancelled call gives it back in
``healkit_call_abandoned``. The plugin only observes responses and errors: it
never declares a failure nor decides a retry.
"""

from __future__ import annotations

from healkit_limit._adaptive import GradientLimit
from healkit_limit._plugin import LimitPlugin, LimitStatus
from healkit_limit._settings import SECTION, LimitSettings, RateMode, RateScope, Scope

__all__ = [
    "SECTION",
    "GradientLimit",
    "LimitPlugin",
    "LimitSettings",
    "LimitStatus",
    "RateMode",
    "RateScope",
    "Scope",
]
