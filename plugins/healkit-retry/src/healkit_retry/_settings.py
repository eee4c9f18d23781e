"""The ``retry`` section of a service document, and its validation."""

from __future__ import annotations

from typing import Annotated, Final, Literal, final, get_args

import msgspec

import healkit

__all__ = [
    "ALL_FAILURES",
    "DEFAULT_STATUSES",
    "MAX_ATTEMPTS",
    "RETRYABLE_4XX",
    "SECTION",
    "FailureKind",
    "Jitter",
    "RetrySettings",
]

MAX_ATTEMPTS: Final = 10
"""The most attempts a call may be given: beyond that, retrying only hides an outage."""

FailureKind = Literal[
    "connect", "connection_lost", "protocol", "timeout", "status", "circuit_open", "call_error"
]
"""What went wrong in an attempt, as ``retry.retry_on`` names it.

* ``connect``: no connection was made (refused, DNS, TLS, connect timeout); the
  request never left.
* ``connection_lost``: the connection broke after the request may have been written.
* ``protocol``: the answer was not valid HTTP (garbage status line, oversized
  headers, broken chunking, a body shorter than its Content-Length); the request
  may have reached the server.
* ``timeout``: no data within the read timeout, or the attempt took too long.
* ``status``: a response whose status is in ``retry.statuses``.
* ``circuit_open``: a circuit breaker refused the attempt (nothing was sent).
* ``call_error``: a decorated function raised one of its ``failures``.
"""

ALL_FAILURES: Final[tuple[FailureKind, ...]] = get_args(FailureKind)

Jitter = Literal["full", "decorrelated"]
"""How a backoff delay is randomized (see :mod:`healkit_retry._backoff`)."""

DEFAULT_STATUSES: Final = (408, 429, 502, 503, 504)
RETRYABLE_4XX: Final = frozenset({408, 425, 429})
"""The only client-error statuses that say "the same request may succeed later"."""

Status = Annotated[int, msgspec.Meta(ge=400, le=599)]


@final
class RetrySettings(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False
):
    """The ``retry`` section of a service document.

    Attributes:
        attempts: attempts in all, the first included (1 turns retrying off).
            Default 3: two retries ride out a blip or a restarting instance;
            more multiply the load on a service that is already failing.
        base: seconds; the backoff before the first retry is at most ``base``,
            doubling with every retry. Default 0.1 s: long enough to leave a
            momentarily overloaded peer alone, short next to a typical deadline.
        cap: seconds; no backoff is longer. Default 5 s, so a retry still fits
            in a call deadline of tens of seconds.
        jitter: ``"full"`` (a delay drawn between 0 and the exponential step)
            or ``"decorrelated"`` (drawn between ``base`` and three times the
            previous delay). Default ``"full"``: it spreads the retries of many
            clients the most, so they do not come back in waves.
        statuses: response statuses that are failures to retry. Default 408,
            429, 502, 503, 504: the statuses that say the same request may
            succeed later. Other 4xx never are (only 408, 425 and 429 are
            accepted here): repeating a request the server refused is useless.
        retry_on: which kinds of failure are retried (see :data:`FailureKind`).
            Default: all of them; the idempotency rules still apply.
        retry_non_idempotent: retry calls that are not idempotent (POST, PATCH
            without an ``Idempotency-Key``, functions declared
            ``idempotent=False``) even when the request may have reached the
            server. Default off: repeating such a request may charge a card twice.
        idempotency_key: add an ``Idempotency-Key`` header (one random key per
            call, the same on every attempt) to POST, PATCH and other
            non-idempotent HTTP requests that have none, which makes them safe
            to retry. Default off: only a server that deduplicates by that
            header makes it safe.
        max_retry_after: seconds; the longest ``Retry-After`` honoured. A
            longer one ends the call instead of keeping it waiting. Default 30 s.
        max_circuit_wait: seconds; the longest a call waits for an open
            circuit breaker to let a probe through before its next attempt.
            A breaker that stays open longer ends the call at once, so that
            its fallback (a fallback group, a degraded response) or its error
            reaches the caller now. Default 0: fail fast. A call that waits
            holds its caller for up to that long and, when the breaker lets a
            single probe through, is usually refused again by it.
        budget_ratio: retries may add at most this fraction of the service's
            requests in the last ``budget_window`` seconds. Default 0.2 (as
            Envoy and Finagle): under a full outage the load grows by 20%, not
            by ``attempts`` times.
        budget_window: seconds over which requests and retries are counted.
            Default 10 s (Finagle's): long enough to smooth bursts, short
            enough to follow a change of traffic.
        budget_min_retries_per_second: retries allowed on top of the ratio, so
            that a service with little traffic can still retry. Default 3 per
            second (30 per default window).

    """

    attempts: Annotated[int, msgspec.Meta(ge=1, le=MAX_ATTEMPTS)] = 3
    base: Annotated[float, msgspec.Meta(gt=0, le=60.0)] = 0.1
    cap: Annotated[float, msgspec.Meta(gt=0, le=300.0)] = 5.0
    jitter: Jitter = "full"
    statuses: tuple[Status, ...] = DEFAULT_STATUSES
    retry_on: tuple[FailureKind, ...] = ALL_FAILURES
    retry_non_idempotent: bool = False
    idempotency_key: bool = False
    max_retry_after: Annotated[float, msgspec.Meta(ge=0, le=3600.0)] = 30.0
    max_circuit_wait: Annotated[float, msgspec.Meta(ge=0, le=300.0)] = 0.0
    budget_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.2
    budget_window: Annotated[float, msgspec.Meta(gt=0, le=3600.0)] = 10.0
    budget_min_retries_per_second: Annotated[float, msgspec.Meta(ge=0, le=10_000.0)] = 3.0

    def __post_init__(self) -> None:
        """Check what a single field cannot: base within cap, statuses that make sense."""
        if self.base > self.cap:
            raise ValueError(f"base ({self.base}s) must not exceed cap ({self.cap}s)")
        refused = sorted(s for s in self.statuses if s < 500 and s not in RETRYABLE_4XX)
        if refused:
            raise ValueError(
                f"statuses {refused} are never retried: of the 4xx statuses only "
                f"{', '.join(map(str, sorted(RETRYABLE_4XX)))} say the request may succeed later"
            )
        if len(set(self.statuses)) != len(self.statuses):
            raise ValueError("statuses must not repeat")
        if len(set(self.retry_on)) != len(self.retry_on):
            raise ValueError("retry_on must not repeat")


SECTION: Final = healkit.ConfigSection(
    "retry", RetrySettings, doc="retries: backoff, Retry-After, idempotency rules, retry budget"
)
"""The ``retry`` section; read it with ``policy.section(SECTION)``."""
