"""A span per hedge: the winner marked, the loser cancelled without an error."""

from __future__ import annotations

import pytest
from opentelemetry.trace import StatusCode
from tracing_support import SERVICE, OneHedge, Telemetry, document

import healkit
from healkit.testing import FaultServer, ManualClock

pytestmark = pytest.mark.anyio


async def test_each_hedge_has_its_span_and_the_loser_is_not_an_error(
    fault_server: FaultServer,
    silent: FaultServer,
    manual_clock: ManualClock,
    telemetry: Telemetry,
) -> None:
    config = document([silent.url, fault_server.url])
    plugins = [OneHedge(), telemetry.plugin()]
    async with healkit.Client(
        config=config, plugins=plugins, entry_points=False, clock=manual_clock
    ) as client:
        with telemetry.tracer.start_as_current_span("handler") as parent:
            for _ in range(2):  # round robin: each endpoint is the first attempt's once
                response = await client.get("/items", service=SERVICE)
                assert response.status == 200

    spans = telemetry.spans("GET")
    assert len(spans) == 4  # two attempts per call, each with its span; none left open
    parent_id = parent.get_span_context().span_id
    assert all(s.parent is not None and s.parent.span_id == parent_id for s in spans)
    by_endpoint: dict[str, list[dict[str, object]]] = {}
    for span in spans:
        attributes = dict(span.attributes or {})
        by_endpoint.setdefault(str(attributes["healkit.endpoint"]), []).append(attributes)
        if attributes.get("healkit.hedge.cancelled"):
            assert span.status.status_code is StatusCode.UNSET
            assert "error.type" not in attributes
            assert "healkit.hedge.won" not in attributes
        else:
            assert attributes["healkit.hedge.won"] is True
            assert attributes["http.response.status_code"] == 200
    # The silent upstream's attempts lost; the other's won, as first attempt or hedge.
    assert all(a.get("healkit.hedge.cancelled") is True for a in by_endpoint[silent.url])
    assert all(a.get("healkit.hedge.won") is True for a in by_endpoint[fault_server.url])
    hedges = [a for a in (dict(s.attributes or {}) for s in spans) if a.get("healkit.hedge")]
    assert len(hedges) == 2
    assert all("healkit.retry.delay" not in a for a in hedges)  # a hedge is no retry

    assert telemetry.counted("healkit.hedges", **{"healkit.service": SERVICE}) == 2
    assert telemetry.counted("healkit.retries") == 0
    assert telemetry.counted("healkit.attempts", **{"healkit.hedge.cancelled": True}) == 2
    assert telemetry.counted("healkit.attempts") == 4
    # A cancelled attempt was cut short: it is no request's latency.
    durations = telemetry.histogram("http.client.request.duration")
    assert sum(p.count for p in durations) == 2
