"""healkit's structured log events.

healkit logs through ``structlog.get_logger("healkit")`` and never configures
logging: the application decides where events go. Event names are namespaced
(``healkit.attempt_failed``); every event of a call carries ``service``,
``attempt`` and ``path``; URLs and headers are redacted before they are logged.
Successful calls log nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import structlog

if TYPE_CHECKING:
    from healkit._context import AttemptContext, CallContext
    from healkit._errors import ConfigError, HealkitError

__all__ = ["logger"]

logger: Final = structlog.get_logger("healkit")


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


def attempt_failed(call: CallContext, attempt: AttemptContext, error: HealkitError) -> None:
    """Log ``healkit.attempt_failed``."""
    log = _emitting(_DROPPING_WARNING)
    if log is None:
        return
    log.warning(
        "healkit.attempt_failed",
        service=call.service,
        attempt=attempt.number,
        path=call.path,
        method=call.method,
        endpoint=call.config.redactor.url(attempt.endpoint) if attempt.endpoint else None,
        error=type(error).__name__,
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


def call_failed(call: CallContext, error: HealkitError, stop_reason: str | None) -> None:
    """Log ``healkit.call_failed``."""
    log = _emitting(_DROPPING_ERROR)
    if log is None:
        return
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
