"""healkit's structured log events.

healkit logs through ``structlog.get_logger("healkit")`` and never configures
logging: the application decides where events go. Event names are namespaced
(``healkit.attempt_failed``); every event of a call carries ``service``,
``attempt`` and ``path``; URLs and headers are redacted before they are logged.
Successful calls log nothing.

Failures that repeat are summarised, never logged once per call: the first
attempt failure, refusal or call failure of a kind (same service, endpoint and
error class) is logged in full, the ones that follow within
:data:`SUMMARY_INTERVAL` are only counted, and their count, first and last
time are logged as one summary event per kind and interval (see
:class:`Repeats`). An outage of 10,000 calls a second logs a few lines per
interval, not 20,000 a second.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final, Literal, final

import structlog

from healkit._errors import CircuitOpenError

if TYPE_CHECKING:
    from healkit._context import AttemptContext, CallContext
    from healkit._errors import ConfigError, HealkitError

__all__ = ["MAX_SUMMARIES", "SUMMARY_INTERVAL", "Repeats", "logger"]

logger: Final = structlog.get_logger("healkit")

SUMMARY_INTERVAL: Final = 10.0
"""Seconds: repeated failures of one kind are summarised at most once per interval."""

MAX_SUMMARIES: Final = 1024
"""Kinds of repeated failure followed at once; the oldest is summarised and dropped beyond."""

Kind = Literal["refusal", "attempt", "call"]
_SUMMARY_EVENTS: Final[dict[Kind, tuple[str, int]]] = {
    "refusal": ("healkit.refusals_summary", logging.WARNING),
    "attempt": ("healkit.attempt_failures_summary", logging.WARNING),
    "call": ("healkit.call_failures_summary", logging.ERROR),
}
_Key = tuple[Kind, str, str | None, str]
"""(kind, service, endpoint as sent, error class name): what makes two failures identical."""


def _dropping(level: int) -> frozenset[type[Any]]:
    """Return structlog's native filtering loggers that drop events at ``level``.

    ``make_filtering_bound_logger(minimum)`` returns one class per minimum (its
    default wrapper class among them); it drops every level below its minimum.
    """
    minimums = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
    return frozenset(
        structlog.make_filtering_bound_logger(minimum) for minimum in minimums if minimum > level
    )


_DROPPING_INFO: Final = _dropping(logging.INFO)
_DROPPING_WARNING: Final = _dropping(logging.WARNING)
_DROPPING_ERROR: Final = _dropping(logging.ERROR)


def _emitting(dropping: frozenset[type[Any]]) -> Any | None:  # noqa: ANN401 - whatever logger structlog is configured with
    """Return the logger to emit a per-call event with, or ``None`` if it drops the event.

    The events of a failing call take a few µs to prepare (redacted URLs and
    headers), paid even when the application's logger drops them. In
    structlog's native filtering loggers (its default, and every
    ``make_filtering_bound_logger`` level) a method below the level is a no-op
    that runs no processor, so such an event is skipped before its arguments
    are computed: ``dropping`` holds the classes that drop the event's level.
    Any other logger (stdlib's runs its processors before its level check)
    gets every event, as before. ``logger.bind()`` is what each
    ``logger.<level>(...)`` call does first.
    """
    bound = logger.bind()
    return None if type(bound) in dropping else bound


@final
class _Repeat:
    """The failures of one kind counted since the last time they were logged."""

    __slots__ = ("count", "endpoint", "first", "last", "opened")

    def __init__(self, opened: float, endpoint: str | None) -> None:
        self.opened = opened  # when this kind was last logged (in full or summarised)
        self.endpoint = endpoint  # redacted, as logged
        self.count = 0
        self.first = opened
        self.last = opened


@final
class Repeats:
    """Summarises repeated identical failures: O(1) per failure, bounded in memory.

    The first failure of a kind is logged in full by the caller
    (:meth:`counted` returns False, then the caller calls :meth:`opened`);
    each later one is only counted. Once per interval, the next failure also
    makes one pass over the kinds followed (at most ``limit``) to log what is due.
    At most once per ``interval`` per kind, the count and the clock
    readings of the first and last counted failure are logged as one summary
    event. A kind that saw no failure for a whole interval is forgotten, so
    its next failure is logged in full again (a new episode). Counts are exact:
    what is pending is logged when the kind's interval has passed and any
    failure arrives, when the oldest kind is dropped to make room, and by
    :meth:`flush` (the runtime flushes on stop).

    Args:
        interval: seconds between two log lines of one kind.
        limit: kinds followed at once (``(service, endpoint, error)`` from the
            network may be unbounded); beyond it the oldest is summarised and dropped.

    """

    __slots__ = ("_entries", "_sweep_at", "interval", "limit")

    def __init__(self, interval: float = SUMMARY_INTERVAL, limit: int = MAX_SUMMARIES) -> None:
        self.interval = interval
        self.limit = limit
        self._entries: dict[_Key, _Repeat] = {}
        self._sweep_at = float("-inf")

    def __len__(self) -> int:
        return len(self._entries)

    def counted(self, key: _Key, now: float) -> bool:
        """Count a failure; return False if it opens an episode and must be logged in full."""
        if now >= self._sweep_at:
            self.flush(now, everything=False)
        entry = self._entries.get(key)
        if entry is None:
            return False
        if entry.count == 0:
            entry.first = now
        entry.count += 1
        entry.last = now
        return True

    def opened(self, key: _Key, now: float, endpoint: str | None) -> None:
        """Follow ``key`` from now on: its failure at ``now`` was logged in full."""
        entries = self._entries
        if len(entries) >= self.limit:
            oldest = next(iter(entries))
            _summarise(oldest, entries.pop(oldest))
        entries[key] = _Repeat(now, endpoint)

    def flush(self, now: float, *, everything: bool = True) -> None:
        """Log what is pending: every kind's, or (``everything=False``) those due at ``now``.

        Kinds with nothing pending whose interval passed are forgotten.
        """
        interval = self.interval
        entries = self._entries
        for key, entry in list(entries.items()):
            if not everything and now - entry.opened < interval:
                continue
            if entry.count:
                _summarise(key, entry)
                entry.count = 0
                entry.opened = now
            elif now - entry.opened >= interval:
                del entries[key]
        self._sweep_at = now + interval


def _summarise(key: _Key, entry: _Repeat) -> None:
    """Log the summary of the failures counted in ``entry`` (if there are any)."""
    if not entry.count:
        return
    kind, service, _, error = key
    event, level = _SUMMARY_EVENTS[kind]
    logger.log(
        level,
        event,
        service=service,
        endpoint=entry.endpoint,
        error=error,
        count=entry.count,
        first=entry.first,
        last=entry.last,
    )


def attempt_failed(
    repeats: Repeats, call: CallContext, attempt: AttemptContext, error: HealkitError
) -> None:
    """Log ``healkit.attempt_failed`` (``healkit.endpoint_refusing`` for a refusal), or count it.

    A refusal (``CircuitOpenError``) is logged once when its endpoint starts
    refusing, then summarised in ``healkit.refusals_summary``; any other
    failure is logged in full once, then summarised in
    ``healkit.attempt_failures_summary`` while it repeats.
    """
    refusal = error if isinstance(error, CircuitOpenError) else None
    key: _Key = (
        "attempt" if refusal is None else "refusal",
        call.service,
        attempt.endpoint,
        type(error).__name__,
    )
    now = call.clock.now()
    # Counted first: a repeat needs no logger. A kind is followed only once its
    # first failure was logged, so a logger that drops the level counts nothing.
    if repeats.counted(key, now):
        return
    log = _emitting(_DROPPING_WARNING)
    if log is None:
        return
    endpoint = call.config.redactor.url(attempt.endpoint) if attempt.endpoint else None
    repeats.opened(key, now, endpoint)
    if refusal is not None:
        log.warning(
            "healkit.endpoint_refusing",
            service=call.service,
            attempt=attempt.number,
            path=call.path,
            endpoint=endpoint,
            error=key[3],
            reason=error.message,
            # The breaker may let a probe through in this many seconds.
            closes_in=round(max(refusal.retry_at - now, 0.0), 6),
        )
        return
    log.warning(
        "healkit.attempt_failed",
        service=call.service,
        attempt=attempt.number,
        path=call.path,
        method=call.method,
        endpoint=endpoint,
        error=key[3],
        reason=error.message,
        status=attempt.status,
    )


def retry_scheduled(call: CallContext, attempt: AttemptContext, delay: float) -> None:
    """Log ``healkit.retry_scheduled``."""
    log = _emitting(_DROPPING_INFO)
    if log is None:
        return
    log.info(
        "healkit.retry_scheduled",
        service=call.service,
        attempt=attempt.number,
        path=call.path,
        delay=round(delay, 6),
    )


def substitute_used(call: CallContext, error: HealkitError) -> None:
    """Log ``healkit.fallback_used`` or ``healkit.degraded_used``."""
    log = _emitting(_DROPPING_WARNING)
    if log is None:
        return
    log.warning(
        "healkit.degraded_used" if call.path == "degraded" else "healkit.fallback_used",
        service=call.service,
        attempt=call.attempt_number,
        path=call.path,
        error=type(error).__name__,
    )


def fallback_failed(plugin: str, error: HealkitError) -> None:
    """Log ``healkit.fallback_failed``: a fallback implementation raised a healkit error."""
    logger.warning(
        "healkit.fallback_failed",
        plugin=plugin,
        error=type(error).__name__,
        reason=error.message,
    )


def call_failed(
    repeats: Repeats, call: CallContext, error: HealkitError, stop_reason: str | None
) -> None:
    """Log ``healkit.call_failed``, or count it in ``healkit.call_failures_summary``.

    Calls that fail alike (same service, last endpoint and error class) are
    logged in full once, then summarised while they repeat.
    """
    attempts = call.attempts
    raw = attempts[-1].endpoint if attempts else None
    key: _Key = ("call", call.service, raw, type(error).__name__)
    now = call.clock.now()
    if repeats.counted(key, now):  # counted first, as in attempt_failed
        return
    log = _emitting(_DROPPING_ERROR)
    if log is None:
        return
    repeats.opened(key, now, call.config.redactor.url(raw) if raw else None)
    log.error(
        "healkit.call_failed",
        service=call.service,
        attempt=call.attempt_number,
        path=call.path,
        method=call.method,
        error=type(error).__name__,
        reason=error.message,
        stop_reason=stop_reason,
        headers=call.config.redactor.headers(call.headers_if_any() or {}),
    )


def plugin_failed(plugin: str, hook: str, error: Exception) -> None:
    """Log ``healkit.plugin_error`` (the caller logs it once per plugin)."""
    logger.error(
        "healkit.plugin_error",
        plugin=plugin,
        hook=hook,
        error=type(error).__name__,
        reason=str(error),
    )


def config_applied(origin: str, version: int, services: int) -> None:
    """Log ``healkit.config_applied``."""
    logger.info("healkit.config_applied", origin=origin, version=version, services=services)


def config_rejected(error: ConfigError) -> None:
    """Log ``healkit.config_rejected`` with every issue's path and reason."""
    logger.error(
        "healkit.config_rejected",
        origin=error.origin,
        issues=[str(issue) for issue in error.issues],
    )


def background_failed(name: str, error: BaseException) -> None:
    """Log ``healkit.background_task_failed``."""
    logger.error(
        "healkit.background_task_failed", task=name, error=type(error).__name__, reason=str(error)
    )
