"""Trace and span ids for structlog events: the :func:`add_trace_ids` processor.

healkit never configures logging; the application adds the processor to the
``structlog.stdlib.ProcessorFormatter`` of its logging handler, which renders
healkit's events (standard library records) and its own structlog events
alike. An event logged while an attempt runs (healkit's own
``healkit.attempt_failed``, or the application's, inside a decorated
function) carries the ids of that attempt's span; any other event the ids of
the current span, if there is one.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Final, Protocol

from opentelemetry import trace

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

__all__ = ["ATTEMPT_SPAN", "OpenSpan", "add_trace_ids"]


class OpenSpan(Protocol):
    """What the context variable holds: an attempt's span, and whether it ended."""

    @property
    def span(self) -> trace.Span:
        """The attempt's span."""
        ...

    @property
    def ended(self) -> bool:
        """Whether the span was ended (then the variable is stale)."""
        ...


ATTEMPT_SPAN: Final[ContextVar[OpenSpan | None]] = ContextVar(
    "healkit_tracing.attempt_span", default=None
)
"""The attempt in progress in this context, set by the tracing plugin."""


def add_trace_ids(
    logger: WrappedLogger,  # noqa: ARG001 - structlog's processor signature
    method_name: str,  # noqa: ARG001 - structlog's processor signature
    event_dict: EventDict,
) -> EventDict:
    """Add ``trace_id`` (32 hex digits) and ``span_id`` (16) to a structlog event.

    The ids are those of the healkit attempt in progress in this context, else
    of the current OpenTelemetry span; nothing is added when there is no valid
    span context (no SDK, no incoming trace). Keys the event already has are
    kept. Add it to the processors of the handler's ``ProcessorFormatter``,
    before the renderer::

        structlog.stdlib.ProcessorFormatter(processors=[..., add_trace_ids, renderer])
    """
    attempt = ATTEMPT_SPAN.get()
    span = attempt.span if attempt is not None and not attempt.ended else trace.get_current_span()
    context = span.get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict
