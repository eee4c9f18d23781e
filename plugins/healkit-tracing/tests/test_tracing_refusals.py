"""Refusals by an open circuit breaker are counted in metrics (the log only summarises them)."""

from __future__ import annotations

import pytest
from tracing_support import SERVICE, Telemetry, document

import healkit
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_breaker import BreakerPlugin

pytestmark = pytest.mark.anyio


async def test_each_refusal_is_counted_by_service_and_endpoint(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    fault_server.set_default(Fault.status(503))
    config = document(
        [fault_server.url],
        breaker={"consecutive_failures": 1, "open_duration": 60.0},
    )
    plugins = [BreakerPlugin(), telemetry.plugin()]
    async with healkit.Client(
        config=config, plugins=plugins, entry_points=False, clock=ManualClock()
    ) as client:
        assert (await client.get("/x", service=SERVICE)).status == 503  # trips the breaker
        for _ in range(7):
            with pytest.raises(healkit.CircuitOpenError):
                await client.get("/x", service=SERVICE)
    metric = telemetry.metrics()["healkit.breaker.refusals"]
    assert metric.unit == "{attempt}"
    (point,) = telemetry.points("healkit.breaker.refusals")
    assert dict(point.attributes or {}) == {
        "healkit.service": SERVICE,
        "healkit.endpoint": fault_server.url,
    }
    assert point.value == 7
    assert fault_server.hits() == 1
