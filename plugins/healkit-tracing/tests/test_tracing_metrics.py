"""Metrics, connection timings, breaker events and settings."""

from __future__ import annotations

import msgspec
import pytest
from tracing_support import SERVICE, RetryAll, Telemetry, document

import healkit
from healkit.etcd import EtcdSourceStatus
from healkit.events import CircuitTransition
from healkit.testing import Fault, FaultServer
from healkit_breaker import BreakerPlugin
from healkit_tracing import SECTION, TracingPlugin, TracingSettings
from healkit_tracing._names import DURATION_BUCKETS

pytestmark = pytest.mark.anyio


async def test_request_duration_and_counters(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    fault_server.script("/x", Fault.status(503), Fault.status(503))
    plugins = [RetryAll(), telemetry.plugin()]
    async with healkit.Client(
        config=document([fault_server.url]), plugins=plugins, entry_points=False
    ) as client:
        await client.get("/x", service=SERVICE)

    metric = telemetry.metrics()["http.client.request.duration"]
    assert metric.unit == "s"
    points = telemetry.histogram("http.client.request.duration")
    assert tuple(points[0].explicit_bounds) == DURATION_BUCKETS
    by_status = {dict(p.attributes or {}).get("http.response.status_code"): p for p in points}
    assert by_status.keys() == {503, 200}
    assert by_status[503].count == 2
    assert by_status[200].count == 1
    assert dict(by_status[503].attributes or {}) == {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": fault_server.port,
        "url.scheme": "http",
        "healkit.service": SERVICE,
        "http.response.status_code": 503,
        "error.type": "503",
    }
    assert "error.type" not in dict(by_status[200].attributes or {})
    assert all(p.sum >= 0 for p in points)

    assert telemetry.metrics()["healkit.attempts"].unit == "{attempt}"
    assert telemetry.counted("healkit.attempts", **{"healkit.service": SERVICE}) == 3
    assert telemetry.counted("healkit.attempts", **{"error.type": "503"}) == 2
    assert telemetry.counted("healkit.retries", **{"healkit.transport": "http"}) == 2
    (call,) = telemetry.histogram("healkit.call.duration")
    assert telemetry.metrics()["healkit.call.duration"].unit == "s"
    assert call.count == 1
    assert dict(call.attributes or {}) == {
        "healkit.service": SERVICE,
        "healkit.transport": "http",
        "healkit.path": "retry",
    }


async def test_metrics_can_be_turned_off(fault_server: FaultServer, telemetry: Telemetry) -> None:
    config = document([fault_server.url], tracing={"record_metrics": False})
    async with healkit.Client(
        config=config, plugins=[telemetry.plugin()], entry_points=False
    ) as client:
        await client.get("/x", service=SERVICE)
    # nothing of the service's; the configuration's version follows `defaults`
    assert set(telemetry.metrics()) == {"healkit.config.version"}
    assert len(telemetry.spans("GET")) == 1


async def test_connection_timings(fault_server: FaultServer, telemetry: Telemetry) -> None:
    # "localhost" makes aiohttp resolve a name (an IP address needs no DNS lookup).
    config = document([f"http://localhost:{fault_server.port}"])
    async with healkit.Client(
        config=config, plugins=[telemetry.plugin()], entry_points=False
    ) as client:
        await client.get("/a", service=SERVICE)
        await client.get("/b", service=SERVICE)
    first, second = telemetry.spans("GET")
    assert dict(first.attributes or {})["healkit.connection.reused"] is False
    assert dict(second.attributes or {})["healkit.connection.reused"] is True
    assert {e.name for e in first.events} >= {"healkit.dns_lookup", "healkit.connection_created"}
    assert not second.events

    (dns,) = telemetry.histogram("dns.lookup.duration")
    assert dict(dns.attributes or {}) == {"dns.question.name": "localhost"}
    assert telemetry.metrics()["dns.lookup.duration"].unit == "s"
    (connect,) = telemetry.histogram("healkit.connection.create.duration")
    assert dict(connect.attributes or {})["server.address"] == "localhost"
    assert connect.count == 1
    assert (
        telemetry.counted("healkit.connection.acquired", **{"healkit.connection.reused": False})
        == 1
    )
    assert (
        telemetry.counted("healkit.connection.acquired", **{"healkit.connection.reused": True}) == 1
    )


async def test_pool_wait_is_timed(fault_server: FaultServer, telemetry: Telemetry) -> None:
    import functools  # noqa: PLC0415

    import aiohttp  # noqa: PLC0415
    import anyio  # noqa: PLC0415

    plugin = telemetry.plugin()
    fault_server.script("/slow", Fault.latency(0.05))
    connector = aiohttp.TCPConnector(limit=1)  # the second call waits for the first's connection
    async with (
        aiohttp.ClientSession(connector=connector, trace_configs=[plugin.trace_config]) as session,
        healkit.Client(
            config=document([fault_server.url]),
            session=session,
            plugins=[plugin],
            entry_points=False,
        ) as client,
        anyio.create_task_group() as group,
    ):
        for _ in range(2):
            group.start_soon(functools.partial(client.get, "/slow", service=SERVICE))
    (queued,) = telemetry.histogram("healkit.connection.queue.duration")
    assert queued.count == 1
    assert telemetry.metrics()["healkit.connection.queue.duration"].unit == "s"
    assert (
        sum(e.name == "healkit.connection_queued" for s in telemetry.spans() for e in s.events) == 1
    )


async def test_connection_timings_can_be_turned_off(
    fault_server: FaultServer, telemetry: Telemetry
) -> None:
    config = document([fault_server.url], tracing={"connection_timings": False})
    async with healkit.Client(
        config=config, plugins=[telemetry.plugin()], entry_points=False
    ) as client:
        await client.get("/a", service=SERVICE)
    (span,) = telemetry.spans("GET")
    assert "healkit.connection.reused" not in dict(span.attributes or {})
    assert telemetry.points("healkit.connection.acquired") == []


async def test_breaker_transition_events_are_counted(telemetry: Telemetry) -> None:
    runtime = healkit.Runtime(
        config=document(["http://payments.internal:8443"]),
        plugins=[telemetry.plugin()],
        entry_points=False,
    )
    endpoint = "http://payments.internal:8443"
    # Any breaker's transition: a plain CircuitTransition, not the breaker plugin's.
    runtime.emit(
        CircuitTransition(
            service=SERVICE,
            endpoint=endpoint,
            from_state="closed",
            to_state="open",
            reason="failure_rate",
            at=0.0,
        )
    )
    runtime.emit(object())  # not a transition: ignored
    # One collection: an older SDK (1.31) reports a gauge's value once only.
    collected = telemetry.metrics()
    assert collected["healkit.breaker.transitions"].unit == "{transition}"
    (point,) = collected["healkit.breaker.transitions"].data.data_points
    assert point.value == 1
    assert dict(point.attributes or {}) == {
        "healkit.service": SERVICE,
        "healkit.endpoint": "http://payments.internal:8443",
        "healkit.breaker.from_state": "closed",
        "healkit.breaker.to_state": "open",
        "healkit.breaker.reason": "failure_rate",
    }
    states = {
        dict(p.attributes or {})["healkit.breaker.state"]: p.value
        for p in collected["healkit.breaker.state"].data.data_points
    }
    assert states == {"closed": 0, "open": 1}
    assert runtime.plugin_errors == {}


def status(connection: str) -> EtcdSourceStatus:
    return EtcdSourceStatus(
        connection=connection,  # type: ignore[arg-type]
        applied_revision=7,
        from_snapshot=False,
        last_error=None,
        rejected={},
    )


async def test_etcd_outages_are_counted_and_the_connection_is_a_gauge(
    telemetry: Telemetry,
) -> None:
    runtime = healkit.Runtime(plugins=[telemetry.plugin()], entry_points=False)
    runtime.emit(status("unreachable"))
    runtime.emit(status("connected"))
    runtime.emit(status("unreachable"))
    collected = telemetry.metrics()
    (outages,) = collected["healkit.etcd.outages"].data.data_points
    assert (outages.value, collected["healkit.etcd.outages"].unit) == (2, "{outage}")
    (connected,) = collected["healkit.etcd.connected"].data.data_points
    assert connected.value == 0
    assert runtime.plugin_errors == {}


async def test_real_breaker_transitions(fault_server: FaultServer, telemetry: Telemetry) -> None:
    fault_server.set_default(Fault.status(503))
    plugins = [BreakerPlugin(), telemetry.plugin()]
    config = document([fault_server.url], breaker={"consecutive_failures": 2, "minimum_calls": 100})
    async with healkit.Client(config=config, plugins=plugins, entry_points=False) as client:
        for _ in range(2):
            await client.get("/x", service=SERVICE)
        with pytest.raises(healkit.CircuitOpenError):
            await client.get("/x", service=SERVICE)
    states = {  # collected first: an older SDK (1.31) reports a gauge's value once only
        dict(p.attributes or {})["healkit.breaker.state"]: p.value
        for p in telemetry.points("healkit.breaker.state")
    }
    assert states == {"closed": 0, "open": 1}
    assert (
        telemetry.counted("healkit.breaker.transitions", **{"healkit.breaker.to_state": "open"})
        == 1
    )
    spans = telemetry.spans("GET")
    assert [dict(s.attributes or {}).get("healkit.breaker.state") for s in spans] == [
        "closed",
        "closed",
        "open",
    ]


def test_settings_defaults_and_unknown_keys() -> None:
    assert SECTION.default() == TracingSettings()
    assert msgspec.structs.asdict(TracingSettings()) == {
        "enabled": True,
        "propagate": True,
        "record_metrics": True,
        "connection_timings": True,
    }
    with pytest.raises(healkit.ConfigError) as caught:
        healkit.build_config({"services": {"x": {"tracing": {"sample": 0.5}}}}, (SECTION,))
    assert "sample" in str(caught.value)
    with pytest.raises(healkit.ConfigError):
        healkit.build_config({"defaults": {"tracing": {"enabled": "yes"}}}, (SECTION,))


def test_entry_point_registers_the_plugin() -> None:
    runtime = healkit.Runtime(block_plugins=["tls"])
    infos = {info.name: info for info in healkit.describe_plugins(runtime.plugin_manager)}
    assert infos["tracing"].distribution == "healkit-tracing"
    assert infos["tracing"].observer
    assert isinstance(runtime.plugin_manager.get_plugin("tracing"), TracingPlugin)
