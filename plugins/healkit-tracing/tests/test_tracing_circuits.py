"""Tracing records the breaker state that any breaker reports through healkit_circuit_state."""

from __future__ import annotations

import pytest
from tracing_support import Telemetry

import healkit
from healkit.hookspecs import CircuitState
from healkit.testing import FaultServer

pytestmark = pytest.mark.anyio


class ThirdPartyBreaker:
    """A breaker that is not healkit_breaker: it reports its state through the hook only."""

    healkit_name = "third-party-breaker"

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []

    @healkit.hookimpl
    def healkit_circuit_state(self, service: str, endpoint: str | None) -> CircuitState:
        self.asked.append((service, endpoint))
        return CircuitState(state="half_open")


async def test_an_attempt_span_carries_the_state_a_third_party_breaker_reports(
    telemetry: Telemetry, fault_server: FaultServer
) -> None:
    breaker = ThirdPartyBreaker()
    config = {"services": {"svc": {"endpoints": [fault_server.url]}}}
    async with healkit.Client(
        config=config, plugins=[telemetry.plugin(), breaker], entry_points=False
    ) as client:
        await client.get("/x", service="svc")
    (span,) = telemetry.spans("GET")
    assert dict(span.attributes or {})["healkit.breaker.state"] == "half_open"
    assert breaker.asked == [("svc", fault_server.url)]


async def test_without_a_breaker_no_state_is_recorded(
    telemetry: Telemetry, fault_server: FaultServer
) -> None:
    config = {"services": {"svc": {"endpoints": [fault_server.url]}}}
    async with healkit.Client(
        config=config, plugins=[telemetry.plugin()], entry_points=False
    ) as client:
        await client.get("/x", service="svc")
    (span,) = telemetry.spans("GET")
    assert "healkit.breaker.state" not in dict(span.attributes or {})
