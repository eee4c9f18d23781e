"""The plugin sets the benchmarks measure, shared by the pipeline and end-to-end scenarios.

* ``standard``: timeout, retry, breaker (each with its defaults);
* ``full``: the standard set plus ``healkit_tls.TlsPlugin`` and
  ``healkit_tracing.TracingPlugin`` given the OpenTelemetry API's no-op
  providers (what an application without an SDK gets);
* ``full+sdk``: the same, but the tracing plugin gets an SDK ``TracerProvider``
  exporting every span to an ``InMemorySpanExporter`` through a
  ``SimpleSpanProcessor``, and an SDK ``MeterProvider`` with an
  ``InMemoryMetricReader``. Needs ``opentelemetry-sdk`` (a test dependency, not
  in the ``bench`` group yet): without it the ``+sdk`` variants are skipped and
  the scenario says so in a note.

The TLS plugin only takes part in a call when the service has a ``tls`` section
that asks for something (otherwise it leaves the call plan), so the services of
the ``full`` variants get :data:`TLS_SECTION`: a context of their own (TLS 1.3 at
least) that the plugin sets on every attempt. The benchmark servers speak plain
HTTP, so no handshake happens: what is measured is the plugin's work per
attempt, not TLS itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry import metrics, trace

from healkit_breaker import BreakerPlugin
from healkit_retry import RetryPlugin
from healkit_timeout import TimeoutPlugin
from healkit_tls import TlsPlugin
from healkit_tracing import TracingPlugin

try:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
except ImportError:  # the bench group does not carry the SDK (yet)
    SDK_AVAILABLE = False
else:
    SDK_AVAILABLE = True

__all__ = [
    "CLEAR_EVERY",
    "SDK_AVAILABLE",
    "SDK_MISSING_NOTE",
    "TLS_SECTION",
    "SdkTelemetry",
    "full_plugins",
    "names",
    "service_document",
    "standard_plugins",
]

TLS_SECTION: Final[Mapping[str, Any]] = {"minimum_version": "1.3"}
"""The ``tls`` section of the ``full`` variants' service: active, with no files to read."""

CLEAR_EVERY: Final = 1_000
"""Calls between two ``InMemorySpanExporter.clear()``: keeps the exporter's memory bounded."""

SDK_MISSING_NOTE: Final = (
    "opentelemetry-sdk is not installed: the +sdk variants were skipped "
    "(add it to the bench dependency group)."
)


def standard_plugins() -> tuple[object, ...]:
    """Fresh instances of the standard set: timeout, retry, breaker."""
    return (TimeoutPlugin(), RetryPlugin(), BreakerPlugin())


def full_plugins(telemetry: SdkTelemetry | None = None) -> tuple[object, ...]:
    """The standard set plus TLS and tracing (no-op providers, or ``telemetry``'s SDK ones)."""
    if telemetry is None:
        tracing = TracingPlugin(
            tracer_provider=trace.NoOpTracerProvider(), meter_provider=metrics.NoOpMeterProvider()
        )
    else:
        tracing = TracingPlugin(
            tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
        )
    return (*standard_plugins(), TlsPlugin(), tracing)


def service_document(endpoint: str, *, tls: bool) -> dict[str, Any]:
    """The benchmark service's document (with :data:`TLS_SECTION` for the ``full`` sets)."""
    service: dict[str, Any] = {"endpoints": [endpoint]}
    if tls:
        service["tls"] = dict(TLS_SECTION)
    return service


class SdkTelemetry:
    """The SDK's providers with an in-memory span exporter and metric reader.

    :meth:`count` is called once per call; every :data:`CLEAR_EVERY` calls it
    clears the exported spans, so a run of hundreds of thousands of calls does
    not keep them all.
    """

    def __init__(self) -> None:
        if not SDK_AVAILABLE:
            raise RuntimeError(SDK_MISSING_NOTE)
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.spans = 0
        self._calls = 0

    def count(self) -> None:
        """Count one call; clear the exporter now and then (remembering how many spans it had)."""
        self._calls += 1
        if self._calls % CLEAR_EVERY == 0:
            self.spans += len(self.exporter.get_finished_spans())
            self.exporter.clear()

    def check(self) -> None:
        """Fail unless spans and the request duration histogram were really recorded."""
        self.spans += len(self.exporter.get_finished_spans())
        self.exporter.clear()
        if not self.spans:
            raise AssertionError("the SDK recorded no span")
        data = self.reader.get_metrics_data()
        names = {
            metric.name
            for resource in (data.resource_metrics if data else ())
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
        if not names:
            raise AssertionError("the SDK recorded no metric")

    def shutdown(self) -> None:
        """Shut the providers down."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def names(plugins: Sequence[object]) -> list[str]:
    """The class names of a plugin set, for the JSON output."""
    return [type(plugin).__name__ for plugin in plugins]
