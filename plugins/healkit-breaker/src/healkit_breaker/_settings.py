"""The ``breaker`` section of a service document, and its validation."""

from __future__ import annotations

from typing import Annotated, Final, Literal, final

import msgspec

import healkit

__all__ = [
    "COUNT_WINDOW_DEFAULT",
    "MAX_COUNT_WINDOW",
    "MAX_TIME_WINDOW",
    "SECTION",
    "TIME_WINDOW_DEFAULT",
    "BreakerSettings",
    "ErrorKind",
    "Mode",
    "Scope",
    "WindowKind",
]

Mode = Literal["normal", "force_open", "force_closed", "disabled"]
"""``normal``: the breaker decides; the others are operator switches."""
Scope = Literal["endpoint", "service"]
"""What one breaker guards: each endpoint of the service, or the service as a whole."""
WindowKind = Literal["count", "time"]
"""The sliding window: the last N outcomes, or the outcomes of the last N seconds."""
ErrorKind = Literal["connect", "connection_lost", "protocol", "timeout", "call_error"]
"""Classes of attempt errors that can count as failures."""

COUNT_WINDOW_DEFAULT: Final = 100
TIME_WINDOW_DEFAULT: Final = 60
MAX_COUNT_WINDOW: Final = 10_000
MAX_TIME_WINDOW: Final = 3_600
TOO_MANY_REQUESTS: Final = 429

Seconds = Annotated[float, msgspec.Meta(gt=0, le=24 * 3600.0)]
Rate = Annotated[float, msgspec.Meta(gt=0, le=1)]
Count = Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT_WINDOW)]
Status = Annotated[int, msgspec.Meta(ge=400, le=599)]


@final
class BreakerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``breaker`` section of a service document.

    Every field has a safe default; ``docs/plugins/breaker.md`` gives the
    reason for each.

    Attributes:
        mode: ``normal``, or an operator switch: ``force_open`` (refuse every
            call), ``force_closed`` (admit every call, keep counting),
            ``disabled`` (no breaker at all).
        scope: ``endpoint`` (one breaker per endpoint of the service) or
            ``service`` (one for the whole service). Decorated functions have
            no endpoint: their breaker is always the service's.
        window: ``count`` (the last ``window_size`` outcomes) or ``time`` (the
            outcomes of the last ``window_size`` seconds).
        window_size: calls or seconds; by default 100 calls or 60 seconds.
        minimum_calls: outcomes the window must hold before a rate can trip it.
        failure_rate: the share of failures (0 to 1) that trips it.
        slow_call_threshold: seconds beyond which an attempt counts as slow.
        slow_call_rate: the share of slow attempts (0 to 1) that trips it.
        consecutive_failures: failures in a row that trip it (0: off).
        failure_statuses: response statuses that count as failures (5xx; 429
            only if listed).
        failure_errors: the attempt errors that count as failures.
        open_duration: seconds the breaker stays open after a first trip.
        open_duration_max: the cap of the open duration, which doubles on each
            further trip until the breaker closes again.
        half_open_probes: calls admitted at the same time while half-open.
        half_open_successes: successful probes needed to close the breaker.

    """

    mode: Mode = "normal"
    scope: Scope = "endpoint"
    window: WindowKind = "count"
    window_size: Count | None = None
    minimum_calls: Count = 20
    failure_rate: Rate = 0.5
    slow_call_threshold: Seconds = 10.0
    slow_call_rate: Rate = 1.0
    consecutive_failures: Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT_WINDOW)] = 10
    failure_statuses: tuple[Status, ...] = (500, 502, 503, 504)
    failure_errors: tuple[ErrorKind, ...] = (
        "connect",
        "connection_lost",
        "protocol",
        "timeout",
        "call_error",
    )
    open_duration: Seconds = 5.0
    open_duration_max: Seconds = 60.0
    half_open_probes: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    half_open_successes: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1

    def __post_init__(self) -> None:
        """Check what one field alone cannot say."""
        if self.window == "time" and self.size > MAX_TIME_WINDOW:
            raise ValueError(
                f"window_size ({self.size}) must be at most {MAX_TIME_WINDOW} seconds"
                " for a time window"
            )
        if self.window == "count" and self.minimum_calls > self.size:
            raise ValueError(
                f"minimum_calls ({self.minimum_calls}) must not exceed window_size"
                f" ({self.size}): a count window that small could never trip"
            )
        for status in self.failure_statuses:
            if status < 500 and status != TOO_MANY_REQUESTS:
                raise ValueError(
                    f"failure_statuses: {status} is a client error, not the endpoint's;"
                    " only 5xx statuses and 429 may count"
                )
        if len(set(self.failure_statuses)) != len(self.failure_statuses):
            raise ValueError("failure_statuses must not repeat")
        if len(set(self.failure_errors)) != len(self.failure_errors):
            raise ValueError("failure_errors must not repeat")
        if self.open_duration > self.open_duration_max:
            raise ValueError(
                f"open_duration ({self.open_duration}s) must not exceed"
                f" open_duration_max ({self.open_duration_max}s)"
            )

    @property
    def size(self) -> int:
        """The window's size: ``window_size``, or 100 calls / 60 seconds by default."""
        if self.window_size is not None:
            return self.window_size
        return COUNT_WINDOW_DEFAULT if self.window == "count" else TIME_WINDOW_DEFAULT


SECTION: Final = healkit.ConfigSection(
    "breaker", BreakerSettings, doc="circuit breakers per endpoint or per service"
)
"""The ``breaker`` section; read it with ``policy.section(SECTION)``."""
