"""healkit-breaker: circuit breakers per service endpoint, configured live.

Configure per service (or under ``defaults``) in the ``breaker`` section::

    [services.payments.breaker]
    failure_rate = 0.5          # trip when half the calls in the window failed...
    minimum_calls = 20          # ...once the window holds 20 outcomes
    consecutive_failures = 10   # or after 10 failures in a row
    open_duration = 5.0         # refuse calls for 5 s, doubling on each further trip

A breaker is kept per endpoint (``scope = "endpoint"``) or per service; an open
one refuses attempts with :class:`healkit.CircuitOpenError` before anything is
sent. Every transition is a :class:`BreakerTransition` event, emitted to
``healkit_event`` and logged as ``healkit.breaker_transition``. Other plugins
read the breakers through :meth:`BreakerPlugin.state`,
:meth:`BreakerPlugin.available`, :meth:`BreakerPlugin.status` and
:meth:`BreakerPlugin.snapshot`.

Order: ``tryfirst`` on ``healkit_pre_request``, so an attempt is refused before
the plugins that are not ``tryfirst`` prepare it. The breaker only observes
responses and errors: it never declares a failure nor decides a retry.
"""

from __future__ import annotations

from healkit_breaker._events import BreakerStatus, BreakerTransition, State, TransitionReason
from healkit_breaker._plugin import BreakerPlugin
from healkit_breaker._settings import SECTION, BreakerSettings, ErrorKind, Mode, Scope, WindowKind

__all__ = [
    "SECTION",
    "BreakerPlugin",
    "BreakerSettings",
    "BreakerStatus",
    "BreakerTransition",
    "ErrorKind",
    "Mode",
    "Scope",
    "State",
    "TransitionReason",
    "WindowKind",
]
