"""Attempt spans and trace context, against real loopback servers."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from opentelemetry.trace import SpanKind, StatusCode
from tracing_support import (
    SERVICE,
    Degrade,
    Refuse,
    RetryAll,
    Telemetry,
    all_text,
    document,
)

import healkit
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_breaker import BreakerPlugin
from healkit_retry import RetryPlugin
from healkit_tracing import TracingPlugin

pytestmark = pytest.mark.anyio


def traceparent_ids(value: str) -> tuple[str, str]:
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00"
    assert int(flags, 16) & 1  # sampled
    return trace_id, span_id


async def test_two_retries_make_three_sibling_spans(
    fault_server: FaultServer, manual_clock: ManualClock, telemetry: Telemetry
) -> None:
    fault_server.script("/v1/items", Fault.status(503), Fault.status(502))
    plugins = [RetryPlugin(), telemetry.plugin()]
    config = document([fault_server.url], retry={"base": 0.5})
    async with healkit.Client(
        config=config, plugins=plugins, entry_points=False, clock=manual_clock
    ) as client:
        with telemetry.tracer.start_as_current_span("handler") as parent:
            response = await client.get("/v1/items?page=2", service=SERVICE)
    assert response.status == 200

    spans = telemetry.spans("GET")
    assert len(spans) == 3
    parent_id = parent.get_span_context().span_id
    for number, span in enumerate(spans, start=1):
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id == parent_id  # siblings under the caller's span
        attributes = dict(span.attributes or {})
        assert attributes["http.request.method"] == "GET"
        assert attributes["url.full"] == f"{fault_server.url}/v1/items?page=2"
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["server.port"] == fault_server.port
        assert attributes["healkit.service"] == SERVICE
        assert attributes["healkit.endpoint"] == fault_server.url
        assert attributes["healkit.attempt"] == number
        assert attributes["healkit.path"] == ("primary" if number == 1 else "retry")
    first, second, third = (dict(s.attributes or {}) for s in spans)
    assert "http.request.resend_count" not in first
    assert "healkit.retry.delay" not in first
    assert second["http.request.resend_count"] == 1
    assert third["http.request.resend_count"] == 2
    assert [second["healkit.retry.delay"], third["healkit.retry.delay"]] == manual_clock.sleeps
    assert [a.get("http.response.status_code") for a in (first, second, third)] == [503, 502, 200]
    assert [a.get("error.type") for a in (first, second, third)] == ["503", "502", None]
    assert [s.status.status_code for s in spans] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]

    # Each attempt carried its own span as the parent of the server's work.
    sent = [traceparent_ids(r.headers["traceparent"]) for r in fault_server.requests]
    assert len({span_id for _, span_id in sent}) == 3
    assert {trace_id for trace_id, _ in sent} == {f"{parent.get_span_context().trace_id:032x}"}
    assert [span_id for _, span_id in sent] == [f"{s.context.span_id:016x}" for s in spans]


async def test_no_secret_reaches_a_span_or_a_log(
    fault_server: FaultServer,
    manual_clock: ManualClock,
    telemetry: Telemetry,
    logs: list[dict[str, Any]],
) -> None:
    fault_server.script("/pay", Fault.status(503))
    secrets = ("s3cretpw", "tok-123456", "sig-abcdef", "Bearer auth-xyz", "auth-xyz", "hunter2")
    url = (
        f"http://alice:s3cretpw@127.0.0.1:{fault_server.port}/pay"
        "?token=tok-123456&sig=sig-abcdef&page=1"
    )
    plugins = [RetryAll(), telemetry.plugin()]
    async with healkit.Client(
        config=document([fault_server.url]), plugins=plugins, entry_points=False, clock=manual_clock
    ) as client:
        response = await client.get(
            url, headers={"Authorization": "Bearer auth-xyz", "Cookie": "session=hunter2"}
        )
    assert response.status == 200
    # The secrets were sent: the test would prove nothing otherwise.
    assert "token=tok-123456" in fault_server.requests[0].query_string
    assert fault_server.requests[0].headers["Authorization"] == "Bearer auth-xyz"

    spans = telemetry.spans()
    assert len(spans) == 2
    text = all_text(spans)
    assert logs, "the failed attempt was logged"
    logged = "\n".join(repr(entry) for entry in logs)
    for secret in secrets:
        assert secret not in text
        assert secret not in logged
    full = dict(spans[0].attributes or {})["url.full"]
    assert full == f"{fault_server.url}/pay?token=REDACTED&sig=REDACTED&page=1"


async def test_redacted_query_names_follow_the_logging_settings(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    config = document([fault_server.url])
    config["logging"] = {"redact_query": ["session"]}
    async with healkit.Client(
        config=config, plugins=[telemetry.plugin()], entry_points=False
    ) as client:
        await client.get("/x?session=abc123&q=1", service=SERVICE)
    (span,) = telemetry.spans()
    assert dict(span.attributes or {})["url.full"] == f"{fault_server.url}/x?session=REDACTED&q=1"


async def test_decorated_function_attempts_get_spans(
    manual_clock: ManualClock, telemetry: Telemetry
) -> None:
    calls = 0

    async def fetch_rates(currency: str) -> dict[str, float]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionResetError("peer reset")
        return {currency: 1.0}

    runtime = healkit.Runtime(
        config={"services": {"rates": {}}},
        plugins=[RetryPlugin(), telemetry.plugin()],
        entry_points=False,
        clock=manual_clock,
    )
    resilient = healkit.resilient(service="rates", idempotent=True, runtime=runtime)(fetch_rates)
    with telemetry.tracer.start_as_current_span("job") as parent:
        assert await resilient("EUR") == {"EUR": 1.0}

    spans = telemetry.spans(fetch_rates.__qualname__)
    assert len(spans) == 2
    for span in spans:
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id
        attributes = dict(span.attributes or {})
        assert attributes["healkit.transport"] == "function"
        assert attributes["code.function.name"] == fetch_rates.__qualname__
        assert not any(key.startswith(("http.", "url.", "server.")) for key in attributes)
    assert dict(spans[0].attributes or {})["error.type"] == "CallError"
    assert "error.type" not in dict(spans[1].attributes or {})
    assert dict(spans[1].attributes or {})["healkit.path"] == "retry"


async def test_a_refused_attempt_is_a_span_and_nothing_is_left_open(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    # Refuse is a decision plugin that runs before the tracing plugin's trylast
    # pre_request: the span of the refused attempt is made in on_error.
    plugins = [Refuse(times=1), RetryAll(), telemetry.plugin()]
    async with healkit.Client(
        config=document([fault_server.url]), plugins=plugins, entry_points=False
    ) as client:
        response = await client.get("/x", service=SERVICE)
    assert response.status == 200
    assert fault_server.hits("/x") == 1
    refused, sent = telemetry.spans("GET")
    assert dict(refused.attributes or {})["error.type"] == "CircuitOpenError"
    assert "http.response.status_code" not in dict(refused.attributes or {})
    assert refused.status.status_code is StatusCode.ERROR
    assert dict(sent.attributes or {})["http.request.resend_count"] == 1
    # The refused attempt sent nothing, so it is no HTTP request duration.
    (point,) = telemetry.histogram("http.client.request.duration")
    assert point.count == 1
    assert telemetry.counted("healkit.attempts", **{"error.type": "CircuitOpenError"}) == 1


async def test_a_breaker_forced_open_shows_its_state(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    plugins = [BreakerPlugin(), telemetry.plugin()]
    config = document([fault_server.url], breaker={"mode": "force_open"})
    async with healkit.Client(config=config, plugins=plugins, entry_points=False) as client:
        with pytest.raises(healkit.CircuitOpenError):
            await client.get("/x", service=SERVICE)
    assert fault_server.hits() == 0
    (span,) = telemetry.spans("GET")
    attributes = dict(span.attributes or {})
    assert attributes["healkit.breaker.state"] == "forced_open"
    assert attributes["error.type"] == "CircuitOpenError"


async def test_breaker_state_of_an_admitted_attempt(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    plugins = [BreakerPlugin(), telemetry.plugin()]
    async with healkit.Client(
        config=document([fault_server.url]), plugins=plugins, entry_points=False
    ) as client:
        await client.get("/x", service=SERVICE)
    (span,) = telemetry.spans("GET")
    assert dict(span.attributes or {})["healkit.breaker.state"] == "closed"


async def test_cancelled_request_ends_its_span_at_once(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    fault_server.script("/hang", Fault.blackhole())
    async with healkit.Client(
        config=document([fault_server.url]), plugins=[telemetry.plugin()], entry_points=False
    ) as client:
        # Cancelled inside this task, by a scope the task survives: the span
        # must end as the cancellation leaves the call, not when the task ends.
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:

                async def cancel_when_sent() -> None:
                    await fault_server.wait_for_hits(1, "/hang")
                    scope.cancel()

                group.start_soon(cancel_when_sent)
                await client.get("/hang", service=SERVICE)
        assert scope.cancelled_caught
        assert not telemetry.open_spans.open
        (span,) = telemetry.spans("GET")
        attributes = dict(span.attributes or {})
        assert attributes["error.type"] == "CancelledError"
        assert attributes["healkit.abandoned"] is True
        assert span.status.status_code is StatusCode.ERROR
    assert telemetry.counted("healkit.attempts", **{"error.type": "CancelledError"}) == 1
    (call,) = telemetry.histogram("healkit.call.duration")
    assert dict(call.attributes or {})["error.type"] == "CancelledError"


async def test_cancelled_function_call_ends_its_span_at_once(telemetry: Telemetry) -> None:
    started = asyncio.Event()
    ended: list[int] = []

    async def wait_forever() -> None:
        started.set()
        await asyncio.Event().wait()

    runtime = healkit.Runtime(plugins=[telemetry.plugin()], entry_points=False)
    resilient = healkit.resilient(service="jobs", runtime=runtime)(wait_forever)

    async def caller() -> None:
        try:
            await resilient()
        finally:
            # Still inside the cancelled task: the span has ended already.
            ended.append(len(telemetry.open_spans.open))

    task = asyncio.get_running_loop().create_task(caller())
    await started.wait()
    assert len(telemetry.open_spans.open) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended == [0]
    (span,) = telemetry.spans()
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "CancelledError"
    assert attributes["healkit.abandoned"] is True


async def test_an_exception_passed_through_ends_its_span_at_once(
    telemetry: Telemetry, logs: list[dict[str, Any]]
) -> None:
    import structlog  # noqa: PLC0415

    async def broken() -> None:
        raise ValueError("not a failure of the call: passed through")

    runtime = healkit.Runtime(plugins=[telemetry.plugin()], entry_points=False)
    resilient = healkit.resilient(service="jobs", runtime=runtime)(broken)
    with telemetry.tracer.start_as_current_span("job") as parent:
        with pytest.raises(ValueError, match="passed through"):
            await resilient()
        assert [s.name for s in telemetry.open_spans.open.values()] == ["job"]
        # The attempt's ids were reset in this context: logs carry the caller's span.
        structlog.get_logger("app").info("app.after_call")
    (span,) = telemetry.spans(broken.__qualname__)
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "ValueError"
    assert attributes["healkit.abandoned"] is True
    assert "passed through" not in all_text([span])  # messages never go into spans
    assert logs[-1]["span_id"] == f"{parent.get_span_context().span_id:016x}"
    assert telemetry.counted("healkit.attempts", **{"error.type": "ValueError"}) == 1


async def test_attempt_timeout_is_the_error_type_not_cancellation(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    from healkit_timeout import TimeoutPlugin  # noqa: PLC0415

    fault_server.script("/hang", Fault.blackhole())
    plugins = [TimeoutPlugin(), telemetry.plugin()]
    config = document([fault_server.url], timeout={"attempt": 0.05})
    async with healkit.Client(config=config, plugins=plugins, entry_points=False) as client:
        with pytest.raises(healkit.TimeoutExceeded) as caught:
            await client.get("/hang", service=SERVICE)
    (span,) = telemetry.spans("GET")
    assert dict(span.attributes or {})["error.type"] == type(caught.value).__name__
    assert "healkit.abandoned" not in dict(span.attributes or {})


async def test_degraded_answer_is_visible(fault_server: FaultServer, telemetry: Telemetry) -> None:
    fault_server.set_default(Fault.status(503))
    plugins = [RetryAll(), Degrade(), telemetry.plugin()]
    async with healkit.Client(
        config=document([fault_server.url]), plugins=plugins, entry_points=False
    ) as client:
        with telemetry.tracer.start_as_current_span("handler") as parent:
            response = await client.get("/x", service=SERVICE)
    assert response.outcome is not None
    assert response.outcome.path == "degraded"
    attempts = telemetry.spans("GET")
    assert len(attempts) == 3
    (degraded,) = telemetry.spans("healkit.degraded")
    assert degraded.kind is SpanKind.INTERNAL
    assert degraded.parent is not None
    assert degraded.parent.span_id == parent.get_span_context().span_id
    attributes = dict(degraded.attributes or {})
    assert attributes["healkit.path"] == "degraded"
    assert attributes["healkit.attempts"] == 3
    assert attributes["healkit.cause"] == "503"
    assert degraded.start_time is not None
    assert attempts[-1].end_time is not None
    assert degraded.start_time >= attempts[-1].end_time
    assert telemetry.counted("healkit.degraded", **{"healkit.service": SERVICE}) == 1
    (point,) = telemetry.histogram("healkit.call.duration")
    assert dict(point.attributes or {})["healkit.path"] == "degraded"


async def test_fallback_of_a_decorated_function(telemetry: Telemetry) -> None:
    async def lookup() -> str:
        raise OSError("down")

    runtime = healkit.Runtime(plugins=[Degrade(), telemetry.plugin()], entry_points=False)
    assert await healkit.resilient(service="cache", runtime=runtime)(lookup)() == "cached"
    (fallback,) = telemetry.spans("healkit.fallback")
    assert dict(fallback.attributes or {})["healkit.cause"] == "CallError"
    assert telemetry.counted("healkit.fallbacks", **{"healkit.transport": "function"}) == 1


async def test_trace_ids_in_logs(
    fault_server: FaultServer, telemetry: Telemetry, logs: list[dict[str, Any]]
) -> None:
    fault_server.script("/x", Fault.status(503))
    plugins = [RetryAll(), telemetry.plugin()]
    async with healkit.Client(
        config=document([fault_server.url]), plugins=plugins, entry_points=False
    ) as client:
        with telemetry.tracer.start_as_current_span("handler") as parent:
            await client.get("/x", service=SERVICE)
            import structlog  # noqa: PLC0415

            structlog.get_logger("app").info("app.after_call")
    failed = next(e for e in logs if e["event"] == "healkit.attempt_failed")
    first = telemetry.spans("GET")[0]
    assert failed["trace_id"] == f"{first.context.trace_id:032x}"
    assert failed["span_id"] == f"{first.context.span_id:016x}"  # the attempt's span
    after = next(e for e in logs if e["event"] == "app.after_call")
    assert after["span_id"] == f"{parent.get_span_context().span_id:016x}"


async def test_no_ids_without_a_span(logs: list[dict[str, Any]]) -> None:
    import structlog  # noqa: PLC0415

    structlog.get_logger("app").info("app.idle")
    (entry,) = logs
    assert "trace_id" not in entry
    assert "span_id" not in entry


async def test_disabled_service_is_left_alone(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    config = document([fault_server.url], tracing={"enabled": False})
    async with healkit.Client(
        config=config, plugins=[telemetry.plugin()], entry_points=False
    ) as client:
        with telemetry.tracer.start_as_current_span("handler"):
            await client.get("/x", service=SERVICE)
    assert [s.name for s in telemetry.spans()] == ["handler"]
    assert "traceparent" not in fault_server.requests[0].headers
    assert telemetry.points("healkit.attempts") == []


async def test_propagation_can_be_turned_off(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    config = document([fault_server.url], tracing={"propagate": False})
    async with healkit.Client(
        config=config, plugins=[telemetry.plugin()], entry_points=False
    ) as client:
        await client.get("/x", service=SERVICE)
    assert len(telemetry.spans("GET")) == 1
    assert "traceparent" not in fault_server.requests[0].headers


async def test_without_an_sdk_nothing_is_sent_and_calls_work(fault_server: FaultServer) -> None:
    # The global providers are the API's no-op proxies in these tests.
    plugin = TracingPlugin()
    async with healkit.Client(
        config=document([fault_server.url]), plugins=[plugin], entry_points=False
    ) as client:
        response = await client.get("/x", service=SERVICE)
    assert response.status == 200
    assert "traceparent" not in fault_server.requests[0].headers


async def test_adopted_session_with_the_plugins_trace_config(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    import aiohttp  # noqa: PLC0415

    plugin = telemetry.plugin()
    async with (
        aiohttp.ClientSession(trace_configs=[plugin.trace_config]) as session,
        healkit.Client(
            config=document([fault_server.url]),
            session=session,
            plugins=[plugin],
            entry_points=False,
        ) as client,
    ):
        await client.get("/x", service=SERVICE)
    (span,) = telemetry.spans("GET")
    assert dict(span.attributes or {})["healkit.connection.reused"] is False


async def test_unknown_method_is_other(fault_server: FaultServer, telemetry: Telemetry) -> None:
    async with healkit.Client(
        config=document([fault_server.url]), plugins=[telemetry.plugin()], entry_points=False
    ) as client:
        await client.request("PURGE", "/cache", service=SERVICE)
    (span,) = telemetry.spans("HTTP")
    attributes = dict(span.attributes or {})
    assert attributes["http.request.method"] == "_OTHER"
    assert attributes["http.request.method_original"] == "PURGE"
