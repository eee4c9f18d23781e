"""healkit's structured log events, through the standard library's :mod:`logging`.

Every event goes to a :class:`logging.Logger` under ``healkit`` (the core logs
to ``healkit``; subsystems and plugins to ``healkit.<name>``), so the
application's logging configuration decides what is shown: healkit never
configures logging. ``healkit`` has a :class:`logging.NullHandler`, as a
library's top logger should: an application that configured nothing sees
nothing (not even Python's last-resort output of warnings to stderr);
``logging.basicConfig(level=logging.INFO)`` shows the events;
``logging.getLogger("healkit").setLevel(logging.ERROR)`` keeps only errors.

An event is a :class:`~logging.LogRecord` whose message is the event's
fields (an :class:`Event`: ``event`` holds its namespaced name, such as
``healkit.attempt_failed``). ``str()`` of it, which is what a plain
:class:`logging.Formatter` shows, reads ``healkit.attempt_failed service='users'
...``. The record carries the two attributes that structlog's
``ProcessorFormatter.wrap_for_formatter`` gives its own records, so a
``structlog.stdlib.ProcessorFormatter`` renders the fields as a structlog
event (JSON, key-values, the console...). healkit does not import structlog.

Every event of a call carries ``service``, ``attempt`` and ``path``; URLs and
headers are redacted before they are logged. Successful calls log nothing.
An event whose level the logger drops is not built: the per-call events skip
their redaction work when :meth:`EventLogger.enabled` says no.

Failures that repeat are summarised, never logged once per call: the first
attempt failure, refusal or call failure of a kind (same service, endpoint and
error class) is logged in full, the ones that follow within
:data:`SUMMARY_INTERVAL` are only counted, and their count, first and last
time are logged as one summary event per kind and interval (see
:class:`Repeats`). An outage of 10,000 calls a second logs a few lines per
interval, not 20,000 a second.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any, Final, Literal, final

from healkit._errors import CircuitOpenError
from healkit._routing.settings import redirect_rules

if TYPE_CHECKING:
    from healkit._context import AttemptContext, CallContext
    from healkit._errors import ConfigError, HealkitError

__all__ = [
    "MAX_FIELD_CHARS",
    "MAX_LOGGED_HEADERS",
    "MAX_SUMMARIES",
    "ROOT_LOGGER",
    "SUMMARY_INTERVAL",
    "Event",
    "EventLogger",
    "Repeats",
    "get_logger",
    "logger",
]

ROOT_LOGGER: Final = "healkit"
"""The name of the standard library logger every healkit event goes to, or under."""

logging.getLogger(ROOT_LOGGER).addHandler(logging.NullHandler())

_METHODS: Final = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}
"""Level number to the name structlog's processors receive as the method name."""


@final
class Event(dict[str, Any]):
    """A healkit event, as a log record's message: its name (``event``) and fields.

    ``str()`` renders ``name key=value ...`` for plain :class:`logging.Formatter`
    output. It is a :class:`dict` so that ``ProcessorFormatter`` and handlers
    that want the fields (tests, JSON) read them as they are.
    """

    __slots__ = ()

    def __str__(self) -> str:
        """Render ``event key=value ...`` (values as ``repr``)."""
        fields = " ".join(f"{key}={value!r}" for key, value in self.items() if key != "event")
        name = str(self.get("event", ""))
        return f"{name} {fields}" if fields else name


@final
class EventLogger:
    """Logs healkit events to one standard library logger (see :func:`get_logger`).

    ``logger.warning("healkit.x", key=value)`` emits a record whose message is
    the :class:`Event` ``{"event": "healkit.x", "key": value}``; a level the
    standard library logger does not handle costs one cached level check.
    """

    __slots__ = ("stdlib",)

    def __init__(self, name: str) -> None:
        self.stdlib: Final = logging.getLogger(name)
        """The standard library logger the events go to."""

    def enabled(self, level: int) -> bool:
        """Return whether an event at ``level`` would be handled (build it only then)."""
        return self.stdlib.isEnabledFor(level)

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        stdlib = self.stdlib
        if not stdlib.isEnabledFor(level):
            return
        message = Event(event=event)
        message.update(fields)
        # _logger and _name: what ProcessorFormatter reads on a structlog record.
        extra = {"_logger": stdlib, "_name": _METHODS.get(level, "log")}
        # stacklevel 3: the record names the caller of debug()/info()/... or log().
        stdlib.log(level, message, extra=extra, stacklevel=3)

    def log(self, level: int, event: str, /, **fields: Any) -> None:  # noqa: ANN401 - any field value
        """Log ``event`` with ``fields`` at ``level`` (a :mod:`logging` level number)."""
        self._emit(level, event, fields)

    def debug(self, event: str, /, **fields: Any) -> None:  # noqa: ANN401 - any field value
        """Log ``event`` with ``fields`` at DEBUG."""
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, /, **fields: Any) -> None:  # noqa: ANN401 - any field value
        """Log ``event`` with ``fields`` at INFO."""
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, /, **fields: Any) -> None:  # noqa: ANN401 - any field value
        """Log ``event`` with ``fields`` at WARNING."""
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, /, **fields: Any) -> None:  # noqa: ANN401 - any field value
        """Log ``event`` with ``fields`` at ERROR."""
        self._emit(logging.ERROR, event, fields)


def get_logger(name: str = ROOT_LOGGER) -> EventLogger:
    """Return the logger of healkit events named ``name`` (``healkit`` or under it).

    For plugins and subsystems: ``get_logger("healkit.breaker")`` logs through
    ``logging.getLogger("healkit.breaker")``, so the application's logging
    configuration of ``healkit`` applies to it.

    Raises:
        ValueError: ``name`` is not ``healkit`` or a name under it.

    """
    if name != ROOT_LOGGER and not name.startswith(ROOT_LOGGER + "."):
        msg = f"healkit event loggers are named 'healkit' or 'healkit.<name>', not {name!r}"
        raise ValueError(msg)
    return EventLogger(name)


logger: Final = get_logger()

SUMMARY_INTERVAL: Final = 10.0
"""Seconds: repeated failures of one kind are summarised at most once per interval."""

MAX_SUMMARIES: Final = 1024
"""Kinds of repeated failure followed at once; the oldest is summarised and dropped beyond."""

MAX_FIELD_CHARS: Final = 1024
"""The longest text an event field of a call carries (``reason``, ``method``, a header's
name or value): the caller's path, method and headers, and the messages that quote
them, are any length. Longer text is cut and says how long it was."""

MAX_LOGGED_HEADERS: Final = 64
"""The headers ``healkit.call_failed`` lists; one more entry, ``...``, counts the rest."""

Kind = Literal["refusal", "attempt", "call"]
_SUMMARY_EVENTS: Final[dict[Kind, tuple[str, int]]] = {
    "refusal": ("healkit.refusals_summary", logging.WARNING),
    "attempt": ("healkit.attempt_failures_summary", logging.WARNING),
    "call": ("healkit.call_failures_summary", logging.ERROR),
}
_Key = tuple[Kind, str, str | None, str]
"""(kind, service, endpoint as sent, error class name): what makes two failures identical."""


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
    if not logger.enabled(logging.WARNING):
        return
    endpoint = call.config.redactor.url(attempt.endpoint) if attempt.endpoint else None
    repeats.opened(key, now, endpoint)
    if refusal is not None:
        logger.warning(
            "healkit.endpoint_refusing",
            service=call.service,
            attempt=attempt.number,
            path=call.path,
            endpoint=endpoint,
            error=key[3],
            reason=_cut(error.message),
            # The breaker may let a probe through in this many seconds.
            closes_in=round(max(refusal.retry_at - now, 0.0), 6),
        )
        return
    logger.warning(
        "healkit.attempt_failed",
        service=call.service,
        attempt=attempt.number,
        path=call.path,
        method=_cut(call.method),
        endpoint=endpoint,
        error=key[3],
        reason=_cut(error.message),
        status=attempt.status,
    )


def retry_scheduled(call: CallContext, attempt: AttemptContext, delay: float) -> None:
    """Log ``healkit.retry_scheduled``."""
    if not logger.enabled(logging.INFO):
        return
    logger.info(
        "healkit.retry_scheduled",
        service=call.service,
        attempt=attempt.number,
        path=call.path,
        delay=round(delay, 6),
    )


def substitute_used(call: CallContext, error: HealkitError) -> None:
    """Log ``healkit.fallback_used`` or ``healkit.degraded_used``."""
    if not logger.enabled(logging.WARNING):
        return
    logger.warning(
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
        reason=_cut(error.message),
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
    if not logger.enabled(logging.ERROR):
        return
    repeats.opened(key, now, call.config.redactor.url(raw) if raw else None)
    logger.error(
        "healkit.call_failed",
        service=call.service,
        attempt=call.attempt_number,
        path=call.path,
        method=_cut(call.method),
        error=type(error).__name__,
        reason=_cut(error.message),
        stop_reason=None if stop_reason is None else _cut(stop_reason),
        headers=_logged_headers(call),
    )


def _cut(text: str) -> str:
    """Return ``text``, cut to :data:`MAX_FIELD_CHARS` characters if longer (saying so)."""
    if len(text) <= MAX_FIELD_CHARS:
        return text
    return f"{text[:MAX_FIELD_CHARS]}... ({len(text)} characters)"


def _logged_headers(call: CallContext) -> dict[str, str]:
    """Return the call's headers as ``healkit.call_failed`` logs them: redacted and bounded.

    At most :data:`MAX_LOGGED_HEADERS` of them, names and values cut by :func:`_cut`.
    """
    headers = call.headers_if_any()
    if not headers:
        return {}
    # The service's routing.credential_headers are credentials in logs too.
    redacted = call.config.redactor.headers(headers, also=redirect_rules(call.policy).credentials)
    logged = {
        _cut(name): _cut(value)
        for name, value in itertools.islice(redacted.items(), MAX_LOGGED_HEADERS)
    }
    if len(redacted) > MAX_LOGGED_HEADERS:
        logged["..."] = f"{len(redacted) - MAX_LOGGED_HEADERS} more headers"
    return logged


def plugin_failed(plugin: str, hook: str, error: Exception) -> None:
    """Log ``healkit.plugin_error`` (the caller logs it once per plugin)."""
    logger.error(
        "healkit.plugin_error",
        plugin=plugin,
        hook=hook,
        error=type(error).__name__,
        reason=_cut(str(error)),
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
        "healkit.background_task_failed",
        task=name,
        error=type(error).__name__,
        reason=_cut(str(error)),
    )
