"""What the breaker tells other plugins, through the hooks between plugins."""

from __future__ import annotations

import math

import pytest
from breaker_helpers import document

import healkit
from healkit.events import CircuitTransition
from healkit.hookspecs import CircuitState
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_breaker import BreakerPlugin, BreakerTransition, State

pytestmark = pytest.mark.anyio


async def test_an_open_breaker_answers_the_hooks_routing_and_tracing_ask(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(503))
    config = document([fault_server.url], consecutive_failures=2, open_duration=5.0)
    async with healkit.Client(
        config=config, plugins=[BreakerPlugin()], entry_points=False, clock=manual_clock
    ) as client:
        hook = client.runtime.plugin_manager.hook
        url = fault_server.url
        assert hook.healkit_endpoint_available(service="svc", endpoint=url) == [True]
        assert hook.healkit_circuit_state(service="svc", endpoint=url) == CircuitState(
            state="closed"
        )
        for _ in range(2):
            await client.get("/x", service="svc")
        opened = manual_clock.now()
        assert hook.healkit_endpoint_available(service="svc", endpoint=url) == [False]
        assert hook.healkit_circuit_state(service="svc", endpoint=url) == CircuitState(
            state="open", retry_at=opened + 5.0
        )
        manual_clock.advance(5.0)
        # Due: half-open, and a probe slot is free.
        assert hook.healkit_endpoint_available(service="svc", endpoint=url) == [True]
        assert hook.healkit_circuit_state(service="svc", endpoint=url).state == "half_open"


def test_a_breaker_forced_open_never_admits_on_its_own() -> None:
    runtime = healkit.Runtime(
        config=document(["http://a"], mode="force_open"),
        plugins=[BreakerPlugin()],
        entry_points=False,
    )
    hook = runtime.plugin_manager.hook
    assert hook.healkit_endpoint_available(service="svc", endpoint="http://a") == [False]
    state = hook.healkit_circuit_state(service="svc", endpoint="http://a")
    assert state.state == "forced_open"
    assert state.retry_at == math.inf


def test_a_transition_is_a_circuit_transition_with_string_states() -> None:
    event = BreakerTransition(
        service="svc",
        endpoint=None,
        from_state=State.CLOSED,
        to_state=State.OPEN,
        reason="failure_rate",
        failures=5,
        calls=10,
        slow_calls=0,
        at=1.0,
    )
    assert isinstance(event, CircuitTransition)
    assert (event.from_state, event.to_state) == ("closed", "open")
