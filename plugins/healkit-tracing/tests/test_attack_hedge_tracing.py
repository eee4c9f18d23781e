"""Red team: the spans and logs of hedge races that end badly.

A race where every attempt fails, a race the caller abandons, and the trace
ids in the logs written while a hedge runs. The ``telemetry`` fixture fails a
test that leaves any span open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import structlog
from aiohttp import web
from opentelemetry.trace import StatusCode
from tracing_support import SERVICE, OneHedge, Telemetry, document

import healkit
from healkit.testing import FaultServer, ManualClock

pytestmark = pytest.mark.anyio


class FailStatuses:
    """A decision plugin: a 5xx answer is a failure (never retried)."""

    healkit_name = "fail-statuses"

    @healkit.hookimpl
    def healkit_post_response(
        self, response: healkit.Response | None
    ) -> healkit.HealkitError | None:
        if response is not None and response.status >= 500:
            return healkit.HTTPStatusError(response.status, url=response.url)
        return None


@pytest.fixture
async def gated() -> AsyncIterator[tuple[str, asyncio.Event, asyncio.Event]]:
    """An upstream whose requests wait for a gate, then answer 503; ``both``: two came."""
    gate, both = asyncio.Event(), asyncio.Event()
    arrived: list[web.Request] = []

    async def handle(request: web.Request) -> web.Response:
        arrived.append(request)
        if len(arrived) == 2:
            both.set()
        await gate.wait()
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", gate, both
    finally:
        gate.set()
        await runner.cleanup()


async def test_a_race_where_every_attempt_fails_ends_every_span_as_an_error(
    gated: tuple[str, asyncio.Event, asyncio.Event],
    telemetry: Telemetry,
    logs: list[dict[str, Any]],
) -> None:
    url, gate, both = gated
    clock = ManualClock(auto_advance=False)
    plugins = [OneHedge(), FailStatuses(), telemetry.plugin()]
    async with healkit.Client(
        config=document([url]), plugins=plugins, entry_points=False, clock=clock
    ) as client:
        with telemetry.tracer.start_as_current_span("handler") as parent:
            call = asyncio.ensure_future(client.get("/x", service=SERVICE))
            with anyio.fail_after(10):
                await clock.wait_for_sleepers()
                clock.advance(0.05)  # the hedge
                await both.wait()
                gate.set()  # both answer 503: both fail
                with pytest.raises(healkit.HTTPStatusError):
                    await call
    spans = telemetry.spans("GET")
    assert len(spans) == 2
    for span in spans:
        attributes = dict(span.attributes or {})
        assert span.status.status_code is StatusCode.ERROR
        assert attributes["error.type"] == "503"
        assert "healkit.hedge.won" not in attributes
        assert "healkit.hedge.cancelled" not in attributes
    hedge_flags = sorted(bool(dict(s.attributes or {}).get("healkit.hedge")) for s in spans)
    assert hedge_flags == [False, True]
    assert telemetry.counted("healkit.hedges", **{"healkit.service": SERVICE}) == 1
    assert telemetry.counted("healkit.attempts") == 2
    # The race's logs are in the caller's trace: the first failure, and the call's
    # end with the last attempt's failure.
    trace_id = f"{parent.get_span_context().trace_id:032x}"
    raced = [e for e in logs if e["event"] in {"healkit.attempt_failed", "healkit.call_failed"}]
    assert [e["event"] for e in raced] == ["healkit.attempt_failed", "healkit.call_failed"]
    assert sorted(e["attempt"] for e in raced) == [1, 2]  # whichever failed first
    assert {e["trace_id"] for e in raced} == {trace_id}


async def test_a_race_the_caller_abandons_ends_both_spans(
    silent: FaultServer, telemetry: Telemetry, logs: list[dict[str, Any]]
) -> None:
    clock = ManualClock(auto_advance=False)
    plugins = [OneHedge(), telemetry.plugin()]
    async with healkit.Client(
        config=document([silent.url]), plugins=plugins, entry_points=False, clock=clock
    ) as client:
        with telemetry.tracer.start_as_current_span("handler") as parent:
            call = asyncio.ensure_future(client.get("/x", service=SERVICE))
            with anyio.fail_after(10):
                await silent.wait_for_hits(1)
                await clock.wait_for_sleepers()
                clock.advance(0.05)
                await silent.wait_for_hits(2)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                await silent.wait_for_idle()  # both connections closed
            structlog.get_logger("app").info("app.after_call")
    spans = telemetry.spans("GET")
    assert len(spans) == 2
    for span in spans:
        attributes = dict(span.attributes or {})
        assert "healkit.hedge.won" not in attributes
        assert span.status.status_code is not StatusCode.OK
    # No attempt's span is left current in the caller's context.
    assert logs[-1]["event"] == "app.after_call"
    assert logs[-1]["span_id"] == f"{parent.get_span_context().span_id:016x}"
