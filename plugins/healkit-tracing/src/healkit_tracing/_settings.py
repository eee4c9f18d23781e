"""The ``tracing`` section of a service document."""

from __future__ import annotations

from typing import Final, final

import msgspec

import healkit

__all__ = ["SECTION", "TracingSettings"]


@final
class TracingSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``tracing`` section of a service document.

    Every field has a safe default; ``docs/plugins/tracing.md`` gives the
    reason for each.

    Attributes:
        enabled: spans, trace context propagation and metrics for the
            service's calls; ``false`` makes the plugin skip the service
            (one lookup per attempt), and ``false`` for every service leaves
            the plugin out of the call plan (``healkit_idle``).
        propagate: inject the trace context (``traceparent``, ``baggage``:
            whatever the configured propagator writes) into every attempt's
            headers. Turn it off for a third-party service that should not
            learn your trace ids.
        record_metrics: record the HTTP client duration histogram and the
            healkit counters for the service.
        connection_timings: record connection-level timings from aiohttp
            (DNS lookup, connection set-up, wait for a pooled connection,
            reuse) as span events and metrics.

    """

    enabled: bool = True
    propagate: bool = True
    record_metrics: bool = True
    connection_timings: bool = True


SECTION: Final = healkit.ConfigSection(
    "tracing", TracingSettings, doc="OpenTelemetry spans, metrics and trace context propagation"
)
"""The ``tracing`` section; read it with ``policy.section(SECTION)``."""
