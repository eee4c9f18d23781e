"""healkit-tracing: OpenTelemetry spans, metrics and trace context for healkit calls.

One CLIENT span per attempt, following the OpenTelemetry HTTP client semantic
conventions (``http.request.method``, ``url.full`` redacted, ``server.address``,
``server.port``, ``http.response.status_code``, ``error.type``,
``http.request.resend_count``) plus healkit's own attributes (service,
endpoint, attempt, path taken, breaker state, retry delay); the attempt's trace
context injected into its headers through the configured propagator; the
``http.client.request.duration`` histogram and healkit's counters through the
OpenTelemetry metrics API; connection timings from aiohttp's ``TraceConfig``;
and :func:`add_trace_ids`, a structlog processor for the application's log formatter.

Only the OpenTelemetry API (1.30 or later) is needed at run time: without an
SDK the plugin makes no OpenTelemetry call, and picks up an SDK installed
later. Configure per service (or under ``defaults``)::

    [services.payments.tracing]
    propagate = false          # a third party: do not send it our trace ids

Order: ``trylast`` on ``healkit_pre_request`` (the span describes the attempt
as the other plugins prepared it); see ``docs/plugins/tracing.md``.
"""

from __future__ import annotations

from healkit_tracing._logging import add_trace_ids
from healkit_tracing._metrics import Instruments
from healkit_tracing._plugin import TracingPlugin
from healkit_tracing._settings import SECTION, TracingSettings

__all__ = ["SECTION", "Instruments", "TracingPlugin", "TracingSettings", "add_trace_ids"]
