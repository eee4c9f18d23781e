"""Metric attributes stay few however many hosts a client calls.

Every distinct set of attribute values is a time series the application's
meter provider keeps for as long as it runs. A value taken from a host nobody
configured (a webhook's, a redirect's) would make one per host. Thousands of
distinct hosts are real HTTP connections to one loopback server
(``LoopbackResolver`` gives every ``*.test`` name the loopback address).
"""

from __future__ import annotations

import aiohttp
import pytest
from tracing_support import SERVICE, Telemetry, document

import healkit
from healkit.events import CircuitTransition
from healkit.testing import FaultServer, LoopbackResolver

pytestmark = pytest.mark.anyio

HOSTS = 5000
UNCONFIGURED = "(unconfigured)"


def series(telemetry: Telemetry) -> dict[str, list[dict[str, object]]]:
    """The attribute sets of every metric's data points, by metric name."""
    return {
        name: [dict(point.attributes or {}) for point in metric.data.data_points]
        for name, metric in telemetry.metrics().items()
    }


async def test_five_thousand_hosts_make_a_handful_of_series_and_the_service_keeps_its_own(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    plugin = telemetry.plugin()
    connector = aiohttp.TCPConnector(resolver=LoopbackResolver(), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector, trace_configs=[plugin.trace_config]) as session,
        healkit.Client(
            config=document([fault_server.url]),
            session=session,
            plugins=[plugin],
            entry_points=False,
        ) as client,
    ):
        for index in range(HOSTS):
            response = await client.get(f"http://hook-{index}.test:{fault_server.port}/")
            assert response.status == 200
        # The configured service, after the flood: its own series, not an overflow.
        assert (await client.get("/x", service=SERVICE)).status == 200

    found = series(telemetry)
    # One series for all the unconfigured hosts, one for the configured service
    # (and the connection counter's reused/new): never one per host.
    assert {name: len(points) for name, points in found.items() if len(points) > 2} == {}
    flat = [point for points in found.values() for point in points]
    assert not any("otel.metric.overflow" in point for point in flat)
    assert not any("hook-" in str(value) for point in flat for value in point.values())
    (duration,) = (
        point
        for point in found["http.client.request.duration"]
        if point["healkit.service"] == SERVICE
    )
    assert duration["server.address"] == "127.0.0.1"
    assert duration["server.port"] == fault_server.port
    unconfigured = [
        point
        for point in found["http.client.request.duration"]
        if point["healkit.service"] == UNCONFIGURED
    ]
    assert [(p["server.address"], "server.port" in p) for p in unconfigured] == [
        (UNCONFIGURED, False)
    ]
    assert telemetry.counted("healkit.attempts", **{"healkit.service": UNCONFIGURED}) == HOSTS


async def test_breaker_events_of_unconfigured_endpoints_share_one_series(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    plugin = telemetry.plugin()
    async with healkit.Client(
        config=document([fault_server.url]), plugins=[plugin], entry_points=False
    ) as client:
        for index in range(HOSTS):
            for left, entered in (("closed", "open"), ("open", "half_open")):
                client.runtime.emit(
                    CircuitTransition(
                        service=f"hook-{index}.test",
                        endpoint=f"http://hook-{index}.test",
                        from_state=left,
                        to_state=entered,
                        reason="failure_rate",
                        at=0.0,
                    )
                )
        client.runtime.emit(
            CircuitTransition(
                service=SERVICE,
                endpoint=fault_server.url,
                from_state="closed",
                to_state="open",
                reason="failure_rate",
                at=0.0,
            )
        )

    found = series(telemetry)
    transitions = found["healkit.breaker.transitions"]
    assert len(transitions) == 3  # two for the unconfigured, one for the service
    assert {(p["healkit.service"], p["healkit.endpoint"]) for p in transitions} == {
        (UNCONFIGURED, UNCONFIGURED),
        (SERVICE, fault_server.url),
    }
    assert len(found["healkit.breaker.state"]) == 5  # closed, open, half_open; closed, open
    assert (
        telemetry.counted("healkit.breaker.transitions", **{"healkit.service": UNCONFIGURED})
        == 2 * HOSTS
    )
