"""Hostile third-party plugins on the routing side of the plugin contract.

A plugin that answers ``healkit_endpoint_available`` with something other
than a bool or ``None``, or that fails while handing out a TLS context for
health probes, must show up as a :class:`healkit.PluginError` naming it (or a
logged one), never as a silently wrong routing decision or health probes that
stop for good.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import msgspec
import pytest

import healkit
from healkit._routing.fleet import InstanceView
from healkit.etcd import EtcdSource
from healkit.hookspecs import CircuitState
from healkit.testing import EtcdServer, FaultServer, ManualClock, capture_events
from tests.probe_support import Probes

pytestmark = pytest.mark.anyio

SERVICE = "inventory"


def document(*endpoints: str, **routing: Any) -> dict[str, Any]:
    service: dict[str, Any] = {"endpoints": list(endpoints)}
    if routing:
        service["routing"] = routing
    return {"services": {SERVICE: service}}


@pytest.fixture
async def servers() -> AsyncIterator[list[FaultServer]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FaultServer()) for _ in range(2)]


class SloppyGate:
    """A third-party breaker that answers availability with something not a bool."""

    healkit_name = "sloppy-breaker"

    def __init__(self, answer: object) -> None:
        self.answer = answer

    @healkit.hookimpl
    def healkit_endpoint_available(self, service: str, endpoint: str) -> object:
        del service, endpoint
        return self.answer


@pytest.mark.parametrize("answer", [0, "no", "False", 1, "open"])
async def test_an_availability_answer_of_the_wrong_type_fails_the_call_naming_the_plugin(
    servers: list[FaultServer], manual_clock: ManualClock, answer: object
) -> None:
    # Before: anything but the object False was taken as "no objection", so a
    # breaker answering 0 or "no" (meaning: refuse) was silently ignored.
    a, b = servers
    async with healkit.Client(
        config=document(a.url, b.url),
        plugins=[SloppyGate(answer)],
        entry_points=False,
        clock=manual_clock,
    ) as client:
        with pytest.raises(healkit.PluginError) as caught:
            await client.get("/x", service=SERVICE)
    assert (caught.value.plugin, caught.value.hook) == (
        "sloppy-breaker",
        "healkit_endpoint_available",
    )
    assert "bool" in str(caught.value)
    assert a.hits() + b.hits() == 0


class FlakyTls:
    """A third-party TLS plugin whose first answer fails, then has no context to give."""

    healkit_name = "flaky-tls"

    def __init__(self, first: Exception | object) -> None:
        self.first = first
        self.asked = 0

    @healkit.hookimpl
    def healkit_tls_context(self, service: str) -> ssl.SSLContext | None:
        del service
        self.asked += 1
        if self.asked == 1:
            if isinstance(self.first, Exception):
                raise self.first
            return self.first  # type: ignore[return-value]  # the wrong type, on purpose
        return None


@pytest.mark.parametrize(
    "first",
    [
        RuntimeError("the key store is locked"),
        "not a context",
        # A context of the wrong purpose: before, it was used, and on https
        # endpoints every probe failed and took them down, naming no plugin.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
    ],
    ids=["raises", "str", "server-side context"],
)
async def test_a_tls_plugin_failing_once_does_not_stop_health_probes(
    servers: list[FaultServer], first: object
) -> None:
    # Before: the PluginError ended the routing's probe task: no endpoint was
    # ever probed again (one taken down stayed down), with one log line.
    a, b = servers
    tls = FlakyTls(first)
    clock = ManualClock(auto_advance=False)
    probes = Probes(clock)
    probe = {"path": "/health", "interval": 30.0, "timeout": 5.0}
    with capture_events() as logs:
        async with healkit.Client(
            config=document(a.url, b.url, probe=probe),
            plugins=[tls, probes],
            entry_points=False,
            clock=clock,
        ):
            # Both were due at the start: the one whose context failed ended at
            # once (asked for it, nothing sent), the other once answered.
            await probes.wait_for(None, 1)
            assert tls.asked == 2
            first_round = a.hits("/health") + b.hits("/health")
            await probes.step(30.0, a.url, b.url)  # then both are due again
            second_round = a.hits("/health") + b.hits("/health") - first_round
    assert first_round == 1  # the endpoint whose context failed was not probed
    assert second_round == 2  # both are probed again
    failures = [e for e in logs if e["event"] == "healkit.plugin_error"]
    assert [(e["plugin"], e["hook"]) for e in failures] == [("flaky-tls", "healkit_tls_context")]
    assert not [e for e in logs if e["event"] == "healkit.background_task_failed"]


class FlakyBreaker:
    """A third-party breaker whose state report fails at first, or is very long."""

    healkit_name = "flaky-breaker"

    def __init__(self, *, fail: bool) -> None:
        self.fail = fail

    @healkit.hookimpl
    def healkit_circuit_state(self, service: str, endpoint: str | None) -> CircuitState:
        del service, endpoint
        if self.fail:
            self.fail = False
            raise RuntimeError("state not loaded yet")
        return CircuitState(state="closed-" + "x" * 200)


class FlakyGate:
    """A third-party breaker whose first availability answer fails."""

    healkit_name = "flaky-gate"

    def __init__(self) -> None:
        self.fail = True

    @healkit.hookimpl
    def healkit_endpoint_available(self, service: str, endpoint: str) -> bool:
        del service, endpoint
        if self.fail:
            self.fail = False
            raise RuntimeError("state not loaded yet")
        return True


@pytest.mark.parametrize(
    ("plugin", "expected"),
    [
        (lambda: FlakyBreaker(fail=True), (True, None, "healkit_circuit_state")),
        (lambda: FlakyBreaker(fail=False), (True, "closed-" + "x" * 57, None)),
        (FlakyGate, (False, None, "healkit_endpoint_available")),
    ],
    ids=["state raises", "long state", "availability raises"],
)
async def test_a_failing_or_long_answer_does_not_spoil_fleet_health_sharing(
    etcd_server: EtcdServer,
    servers: list[FaultServer],
    plugin: Callable[[], object],
    expected: tuple[bool, str | None, str | None],
) -> None:
    # Before: the PluginError ended the fleet publishing task (this instance
    # never wrote its view, nor later its health reports, again), and a state
    # longer than a record holds made the record unreadable to every reader.
    usable, breaker, hook = expected
    third_party = plugin()
    namespace = f"attack-fleet-{type(third_party).__name__}-{breaker is None}".lower()
    root = f"/healkit/{namespace}/"
    async with etcd_server.client() as etcd:
        service = {"endpoints": [servers[0].url], "routing": {"fleet": {}}}
        put = await etcd.put(root + "services/" + SERVICE, msgspec.json.encode(service))
        with capture_events() as logs:
            source = EtcdSource(etcd, namespace=namespace)
            async with (
                healkit.Client(config=source, plugins=[third_party], entry_points=False),
                etcd.watch(
                    root + "instances/", prefix=True, start_revision=put.revision + 1
                ) as watch,
            ):
                with anyio.fail_after(20):
                    written = None
                    async for response in watch:
                        if response.events:
                            written = response.events[0].kv
                            break
    assert written is not None
    view = msgspec.json.decode(written.value, type=InstanceView)  # as status reads it
    (endpoint,) = view.services[SERVICE].endpoints
    assert (endpoint.usable, endpoint.breaker) == (usable, breaker)
    failures = [(e["plugin"], e["hook"]) for e in logs if e["event"] == "healkit.plugin_error"]
    name = getattr(third_party, "healkit_name", None)
    assert failures == ([] if hook is None else [(name, hook)])
    assert not [e for e in logs if e["event"] == "healkit.background_task_failed"]


class Refuses:
    """A third-party breaker that refuses one endpoint."""

    healkit_name = "late-breaker"

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    @healkit.hookimpl
    def healkit_endpoint_available(self, service: str, endpoint: str) -> bool:
        del service
        return endpoint != self.endpoint


async def test_a_breaker_registered_after_start_is_asked_by_routing(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    a, b = servers
    async with healkit.Client(
        config=document(a.url, b.url), entry_points=False, clock=manual_clock
    ) as client:
        client.runtime.register(Refuses(a.url))
        answered = [(await client.get("/x", service=SERVICE)).outcome for _ in range(4)]
    assert [o.endpoint for o in answered if o] == [b.url] * 4
    assert a.hits("/x") == 0
