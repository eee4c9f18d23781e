"""The whole plugin contract is in the hook specifications: plugins meet through hooks.

A breaker or TLS plugin written here, not healkit's own, takes the breaker's
or the TLS plugin's side of routing; what healkit reads of a plugin besides
its hooks (its name, its role, whether it is idle) is read once, when the
contract says so.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest
import trustme

import healkit
from healkit.hookspecs import CircuitState
from healkit.testing import FaultServer, ManualClock

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


class Gate:
    """A circuit breaker of a third party: refuses the endpoints it is told to."""

    healkit_name = "third-party-breaker"

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.crash = False

    @healkit.hookimpl
    def healkit_endpoint_available(self, service: str, endpoint: str) -> bool:
        if self.crash:
            raise RuntimeError("lost its state")
        return not (service == SERVICE and endpoint in self.refused)

    @healkit.hookimpl
    def healkit_circuit_state(self, endpoint: str | None) -> CircuitState:
        if endpoint in self.refused:
            return CircuitState(state="open", retry_at=float("inf"))
        return CircuitState(state="closed")


async def test_routing_keeps_away_from_an_endpoint_a_third_party_breaker_refuses(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    a, b = servers
    gate = Gate()
    gate.refused.add(a.url)
    config = document(a.url, b.url)
    async with healkit.Client(
        config=config, plugins=[gate], entry_points=False, clock=manual_clock
    ) as client:
        answered = [(await client.get("/x", service=SERVICE)).outcome for _ in range(4)]
        gate.refused.clear()
        again = [(await client.get("/x", service=SERVICE)).outcome for _ in range(2)]
    assert [o.endpoint for o in answered if o] == [b.url] * 4
    assert a.hits("/x") == 1  # only once the breaker admits it again
    assert sorted(o.endpoint for o in again if o) == sorted([a.url, b.url])


async def test_a_crashing_availability_answer_fails_the_call_naming_its_plugin(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    a, b = servers
    gate = Gate()
    gate.crash = True
    async with healkit.Client(
        config=document(a.url, b.url), plugins=[gate], entry_points=False, clock=manual_clock
    ) as client:
        with pytest.raises(healkit.PluginError) as caught:
            await client.get("/x", service=SERVICE)
    assert (caught.value.plugin, caught.value.hook) == (
        "third-party-breaker",
        "healkit_endpoint_available",
    )
    assert a.hits() + b.hits() == 0


class TrustingTls:
    """A TLS plugin of a third party: hands out a context that trusts the test CA."""

    healkit_name = "third-party-tls"

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.asked: list[str] = []

    @healkit.hookimpl
    def healkit_tls_context(self, service: str) -> ssl.SSLContext:
        self.asked.append(service)
        return self.context


@pytest.mark.parametrize("trusted", [True, False], ids=["with the plugin", "without"])
async def test_routing_probes_connect_with_a_third_party_tls_plugins_context(
    trusted: bool,
) -> None:
    ca = trustme.CA()
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_side)
    client_side = ssl.create_default_context()
    ca.configure_trust(client_side)
    tls = TrustingTls(client_side)
    clock = ManualClock(auto_advance=False)
    probe = {"path": "/health", "interval": 30.0, "timeout": 5.0}
    async with FaultServer(ssl_context=server_side) as secure, FaultServer() as backup:
        config = document(secure.url, backup.url, probe=probe)
        plugins = [tls] if trusted else []
        async with healkit.Client(config=config, plugins=plugins, entry_points=False, clock=clock):
            with anyio.fail_after(10):
                await clock.wait_for_sleepers()  # the first round of probes is over
        # A probe without the CA in its context never gets past the handshake.
        assert secure.hits("/health") == (1 if trusted else 0)
        assert backup.hits("/health") == 1
    assert tls.asked == ([SERVICE, SERVICE] if trusted else [])


class Counted:
    """Counts how often healkit reads what it may read of a plugin besides its hooks."""

    def __init__(self) -> None:
        self.reads = {"name": 0, "observer": 0, "idle": 0, "idle_hooks": 0}

    @property
    def healkit_name(self) -> str:
        self.reads["name"] += 1
        return "counted"

    @property
    def healkit_observer(self) -> bool:
        self.reads["observer"] += 1
        return True

    @healkit.hookimpl
    def healkit_idle(self, config: healkit.HealkitConfig) -> bool:
        del config
        self.reads["idle"] += 1
        return False

    @healkit.hookimpl
    def healkit_idle_hooks(self, config: healkit.HealkitConfig) -> tuple[str, ...]:
        del config
        self.reads["idle_hooks"] += 1
        return ("healkit_call_end",)

    @healkit.hookimpl
    def healkit_pre_request(self, attempt: healkit.AttemptContext) -> None:
        attempt.headers["X-Counted"] = "1"

    @healkit.hookimpl
    def healkit_call_end(self) -> None:
        raise AssertionError("left out of the plan: never called")


async def test_name_role_and_idleness_are_asked_once_per_registration_and_snapshot() -> None:
    plugin = Counted()
    runtime = healkit.Runtime(
        plugins=[plugin], entry_points=False, block_plugins=["routing", "degraded"]
    )

    @healkit.resilient(service="svc", runtime=runtime)
    async def work() -> int:
        return 1

    for round_ in range(3):
        runtime.apply({"services": {"svc": {}, f"other{round_}": {}}}, origin="test")
        for _ in range(5):
            assert await work() == 1
    snapshots = 1 + 3
    assert plugin.reads == {
        "name": 1,
        "observer": 1,
        "idle": snapshots,
        "idle_hooks": snapshots,
    }
    assert runtime._plan.idle_hooks == {("counted", "healkit_call_end")}
    info = {i.name: i for i in healkit.describe_plugins(runtime.plugin_manager)}["counted"]
    assert info.observer
    assert plugin.reads["observer"] == 1


def test_a_hook_method_without_the_marker_is_refused() -> None:
    class Unmarked:
        healkit_name = "unmarked"

        def healkit_idle(self, config: healkit.HealkitConfig) -> bool:
            del config
            return True

    with pytest.raises(healkit.PluginError, match=r"not marked with @healkit\.hookimpl") as caught:
        healkit.create_plugin_manager(plugins=[Unmarked()], entry_points=False)
    assert (caught.value.plugin, caught.value.hook) == ("unmarked", "register")


@pytest.mark.parametrize(
    ("attribute", "value"),
    [("healkit_observer", "yes"), ("healkit_name", 42), ("healkit_name", "")],
)
def test_declared_attributes_of_another_type_are_refused(attribute: str, value: object) -> None:
    plugin = type("Odd", (), {attribute: value})()
    with pytest.raises(healkit.PluginError, match=attribute):
        healkit.create_plugin_manager(plugins=[plugin], entry_points=False)
    runtime = healkit.Runtime(entry_points=False)
    with pytest.raises(healkit.PluginError, match=attribute):
        runtime.register(type("Odd", (), {attribute: value})())
