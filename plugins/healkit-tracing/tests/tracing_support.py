"""Helpers shared by the tracing plugin's tests (fixtures are in conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import healkit
from healkit_tracing import TracingPlugin

SERVICE = "svc"


class OpenSpans(SpanProcessor):
    """A span processor that knows which spans were started and not ended."""

    def __init__(self) -> None:
        self.open: dict[int, Span] = {}
        self.started = 0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.started += 1
        self.open[span.context.span_id] = span

    def on_end(self, span: ReadableSpan) -> None:
        assert span.context is not None
        self.open.pop(span.context.span_id, None)


class Telemetry:
    """An SDK tracer and meter provider with in-memory exporters, and a plugin using them."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.open_spans = OpenSpans()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(self.open_spans)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("tests")

    def plugin(self) -> TracingPlugin:
        return TracingPlugin(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """The ended spans, oldest first (only those called ``name`` if given)."""
        spans = list(self.exporter.get_finished_spans())
        return [s for s in spans if name is None or s.name == name]

    def metrics(self) -> dict[str, Metric]:
        """Every metric collected now, by name."""
        data = self.reader.get_metrics_data()
        found: dict[str, Metric] = {}
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = metric
        return found

    def points(self, name: str) -> list[Any]:
        """The data points of metric ``name`` (empty if it was never recorded)."""
        metric = self.metrics().get(name)
        return [] if metric is None else list(metric.data.data_points)

    def counted(self, name: str, **attributes: object) -> int | float:
        """The sum of a counter's points whose attributes include ``attributes``."""
        total: int | float = 0
        for point in self.points(name):
            assert isinstance(point, NumberDataPoint)
            if all(point.attributes.get(k) == v for k, v in attributes.items()):
                total += point.value
        return total

    def histogram(self, name: str) -> list[HistogramDataPoint]:
        points = self.points(name)
        assert all(isinstance(p, HistogramDataPoint) for p in points)
        return points

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def document(
    endpoints: Sequence[str] = (), *, tracing: dict[str, Any] | None = None, **sections: Any
) -> dict[str, Any]:
    """A one-service document."""
    service: dict[str, Any] = {"endpoints": list(endpoints), **sections}
    if tracing is not None:
        service["tracing"] = tracing
    return {"services": {SERVICE: service}}


def all_text(spans: Sequence[ReadableSpan]) -> str:
    """Every name, attribute, event and status text of ``spans``, as one string."""
    parts: list[str] = []
    for span in spans:
        parts.append(span.name)
        parts.extend(f"{k}={v}" for k, v in (span.attributes or {}).items())
        for event in span.events:
            parts.append(event.name)
            parts.extend(f"{k}={v}" for k, v in (event.attributes or {}).items())
        parts.append(str(span.status.description))
    return "\n".join(parts)


class Refuse:
    """A decision plugin that refuses the first ``times`` attempts as an open breaker would."""

    healkit_name = "refuse"

    def __init__(self, times: int = 1) -> None:
        self.times = times

    @healkit.hookimpl
    def healkit_pre_request(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> None:
        if attempt.number <= self.times:
            raise healkit.CircuitOpenError(
                call.service, attempt.endpoint, retry_at=call.clock.now() + 5.0
            )


class RetryAll:
    """A decision plugin: 5xx statuses are failures; every failure is retried at once, up to 3."""

    healkit_name = "retry-all"

    @healkit.hookimpl
    def healkit_post_response(
        self, response: healkit.Response | None
    ) -> healkit.HealkitError | None:
        if response is not None and response.status >= 500:
            return healkit.HTTPStatusError(response.status, url=response.url)
        return None

    @healkit.hookimpl
    def healkit_on_error(self, attempt: healkit.AttemptContext) -> healkit.RetryDecision | None:
        return healkit.RetryDecision.again(0.0) if attempt.number < 3 else None


class Degrade:
    """A fallback plugin that answers every failed call with a degraded response."""

    healkit_name = "degrade"

    @healkit.hookimpl
    def healkit_fallback(self, call: healkit.CallContext) -> healkit.Fallback:
        if call.transport == "function":
            return healkit.Fallback("cached", path="fallback")
        response = healkit.Response(200, body=b"{}", url="degraded:")
        return healkit.Fallback(response, path="degraded")


def iter_attributes(spans: Sequence[ReadableSpan]) -> Iterator[tuple[str, object]]:
    for span in spans:
        yield from (span.attributes or {}).items()


class OneHedge:
    """A real hedging plugin: one hedge after a fixed delay."""

    healkit_name = "one-hedge"

    @healkit.hookimpl
    def healkit_hedge_delay(self, attempt: healkit.AttemptContext) -> float | None:
        return None if attempt.hedge else 0.05
