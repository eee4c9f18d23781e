"""Providers: none installed, no-op, sampled out, installed later; idle configurations."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from opentelemetry import context, metrics, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from tracing_support import SERVICE, Refuse, RetryAll, Telemetry, document

import healkit
from healkit.testing import Fault, FaultServer
from healkit_tracing import TracingPlugin, _providers

pytestmark = pytest.mark.anyio


class KeepCalls:
    """An observer that keeps every call it saw end."""

    healkit_name = "keep-calls"
    healkit_observer = True

    def __init__(self) -> None:
        self.calls: list[healkit.CallContext] = []

    @healkit.hookimpl(trylast=True)
    def healkit_call_end(
        self,
        call: healkit.CallContext,
        outcome: healkit.Outcome,
        error: healkit.HealkitError | None,
    ) -> None:
        del outcome, error
        self.calls.append(call)


RECORDING_HOOKS_LEFT_OUT = frozenset(
    ("tracing", hook)
    for hook in (
        "healkit_on_error",
        "healkit_call_end",
        "healkit_call_abandoned",
        "healkit_attempt_cancelled",
    )
)


def test_the_api_globals_are_where_the_plugin_reads_them() -> None:
    # If this fails, the installed opentelemetry-api is not a verified one
    # (test_tracing_api_gate.py): the plugin still works, but pays the API's
    # no-op cost on every call.
    assert _providers.READABLE
    # The test process installs no global provider (tests pass providers in).
    assert _providers.globals_unset()
    sinks = _providers.Sinks(_providers.tracer_kind(None), _providers.meter_kind(None))
    assert sinks.dormant
    assert not sinks.spans
    assert not sinks.metrics


async def test_without_an_sdk_attempts_get_no_state(fault_server: FaultServer) -> None:
    fault_server.script("/x", Fault.status(503))
    keep = KeepCalls()
    async with healkit.Client(
        config=document([fault_server.url]),
        plugins=[RetryAll(), TracingPlugin(), keep],
        entry_points=False,
    ) as client:
        response = await client.get("/x", service=SERVICE)
    assert response.status == 200
    (call,) = keep.calls
    assert len(call.attempts) == 2
    assert all(len(attempt.stash) == 0 for attempt in call.attempts)
    assert all("traceparent" not in request.headers for request in fault_server.requests)


async def test_without_an_sdk_an_incoming_context_is_passed_on(fault_server: FaultServer) -> None:
    incoming = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    config = document([fault_server.url])
    quiet = {
        "endpoints": [f"http://localhost:{fault_server.port}"],
        "tracing": {"propagate": False},
    }
    config["services"]["quiet"] = quiet
    async with healkit.Client(
        config=config, plugins=[TracingPlugin()], entry_points=False
    ) as client:
        # Only pre_request is left in the plan: the context goes on without it.
        assert client.runtime._plan.idle_hooks == RECORDING_HOOKS_LEFT_OUT
        await client.get("/none", service=SERVICE)  # no context yet: nothing to pass on
        token = context.attach(trace.set_span_in_context(NonRecordingSpan(incoming)))
        try:
            await client.get("/x", service=SERVICE)
            await client.get("/quiet", service="quiet")
        finally:
            context.detach(token)
    none, passed, quiet = fault_server.requests
    assert "traceparent" not in none.headers
    assert passed.headers["traceparent"] == (
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    )
    assert "traceparent" not in quiet.headers


async def test_no_op_providers_given(fault_server: FaultServer) -> None:
    plugin = TracingPlugin(
        tracer_provider=trace.NoOpTracerProvider(), meter_provider=metrics.NoOpMeterProvider()
    )
    runtime = healkit.Runtime(config=document([fault_server.url]), plugins=[plugin])
    assert runtime.trace_configs() == []  # nothing could record the connection timings
    async with healkit.Client(
        config=document([fault_server.url]), plugins=[plugin], entry_points=False
    ) as client:
        # Nothing will ever record: no call builds the Outcome of healkit_call_end.
        assert client.runtime._plan.idle_hooks == RECORDING_HOOKS_LEFT_OUT
        assert not client.runtime._plan.has_call_end
        response = await client.get("/x", service=SERVICE)
    assert response.status == 200
    assert "traceparent" not in fault_server.requests[0].headers


async def test_metrics_without_a_tracer(fault_server: FaultServer, telemetry: Telemetry) -> None:
    plugin = TracingPlugin(
        tracer_provider=trace.NoOpTracerProvider(), meter_provider=telemetry.meter_provider
    )
    plugins = [Refuse(times=1), RetryAll(), plugin]
    async with healkit.Client(
        config=document([fault_server.url]), plugins=plugins, entry_points=False
    ) as client:
        assert client.runtime._plan.idle_hooks == frozenset()
        await client.get("/x", service=SERVICE)
    assert telemetry.spans() == []
    assert "traceparent" not in fault_server.requests[0].headers
    assert telemetry.counted("healkit.attempts", **{"healkit.service": SERVICE}) == 2
    assert telemetry.counted("healkit.attempts", **{"error.type": "CircuitOpenError"}) == 1
    (point,) = telemetry.histogram("http.client.request.duration")
    assert point.count == 1  # the refused attempt sent nothing
    assert telemetry.counted("healkit.connection.acquired") == 1


async def test_spans_without_a_meter(fault_server: FaultServer, telemetry: Telemetry) -> None:
    plugin = TracingPlugin(
        tracer_provider=telemetry.tracer_provider, meter_provider=metrics.NoOpMeterProvider()
    )
    async with healkit.Client(
        config=document([fault_server.url]), plugins=[plugin], entry_points=False
    ) as client:
        await client.get("/x", service=SERVICE)
    (span,) = telemetry.spans("GET")
    assert dict(span.attributes or {})["healkit.connection.reused"] is False
    assert telemetry.metrics() == {}


async def test_a_sampled_out_attempt_still_propagates_and_counts(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    plugin = TracingPlugin(tracer_provider=provider, meter_provider=telemetry.meter_provider)
    try:
        async with healkit.Client(
            config=document([fault_server.url]), plugins=[plugin], entry_points=False
        ) as client:
            await client.get("/x", service=SERVICE)
    finally:
        provider.shutdown()
    assert exporter.get_finished_spans() == ()
    version, trace_id, span_id, flags = fault_server.requests[0].headers["traceparent"].split("-")
    assert version == "00"
    assert not int(flags, 16) & 1  # not sampled: the server should not record either
    assert int(trace_id, 16)
    assert int(span_id, 16)
    assert telemetry.counted("healkit.attempts", **{"healkit.service": SERVICE}) == 1


SDK_INSTALLED_LATER = """
import asyncio

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import healkit
from healkit.testing import FaultServer
from healkit_tracing import TracingPlugin


async def main() -> None:
    exporter = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    async with FaultServer() as server:
        config = {"services": {"svc": {"endpoints": [server.url]}}}
        plugin = TracingPlugin()  # the global providers: none is set yet
        async with healkit.Client(config=config, plugins=[plugin], entry_points=False) as client:
            await client.get("/before", service="svc")
            tracer_provider = TracerProvider()
            tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(tracer_provider)
            # The call that finds the provider started under the plan without the
            # recording hooks (nothing recorded before): it gets no span; it puts
            # them back for the calls after it.
            assert client.runtime._plan.idle_hooks
            await client.get("/finds", service="svc")
            assert not client.runtime._plan.idle_hooks
            await client.get("/spans", service="svc")
            metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
            await client.get("/both", service="svc")
        before, finds, spans, both = server.requests
    assert "traceparent" not in before.headers
    assert "traceparent" not in finds.headers
    first, second = exporter.get_finished_spans()
    assert first.attributes["url.full"] == server.url + "/spans"
    assert second.attributes["url.full"] == server.url + "/both"
    assert spans.headers["traceparent"].split("-")[2] == f"{first.context.span_id:016x}"
    assert both.headers["traceparent"].split("-")[2] == f"{second.context.span_id:016x}"
    data = reader.get_metrics_data()
    points = {
        metric.name: [p.attributes.get("url.scheme") for p in metric.data.data_points]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert points["http.client.request.duration"] == ["http"]  # the last call only
    assert "healkit.call.duration" in points
    print("ok")


asyncio.run(main())
"""


def test_an_sdk_installed_later_is_picked_up() -> None:
    # The global providers can be set once per process: a process of its own.
    done = subprocess.run(  # noqa: S603 - this interpreter, a script of this file
        [sys.executable, "-c", textwrap.dedent(SDK_INSTALLED_LATER)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "ok"


def test_idle_when_every_service_has_tracing_off() -> None:
    off = {"tracing": {"enabled": False}}
    runtime = healkit.Runtime(
        config={"defaults": off, "services": {"a": {}, "b": {}}},
        plugins=[TracingPlugin()],
        entry_points=False,
    )
    assert "tracing" in runtime._plan.idle
    runtime.apply({"defaults": off, "services": {"a": {}, "b": {"tracing": {"enabled": True}}}})
    assert "tracing" not in runtime._plan.idle
    runtime.apply({"services": {"a": off}})  # the defaults trace every other service
    assert "tracing" not in runtime._plan.idle


async def test_only_the_services_with_tracing_on_are_traced(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    config = {
        "defaults": {"tracing": {"enabled": False}},
        "services": {
            "on": {"endpoints": [fault_server.url], "tracing": {"enabled": True}},
            "off": {"endpoints": [f"http://localhost:{fault_server.port}"]},
        },
    }
    async with healkit.Client(
        config=config, plugins=[telemetry.plugin()], entry_points=False
    ) as client:
        assert "tracing" not in client.runtime._plan.idle
        await client.get("/on", service="on")
        await client.get("/off", service="off")
    (span,) = telemetry.spans("GET")
    assert dict(span.attributes or {})["healkit.service"] == "on"
    on, off = fault_server.requests
    assert "traceparent" in on.headers
    assert "traceparent" not in off.headers
