"""The demo's Observer: typed events from a real runtime move the demo's counters.

A real client and runtime, real fault servers on loopback, the injectable
clock. healkit's log events are not routed to the observer here: what it
counts comes from ``healkit_event`` alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass

import pytest

import healkit
from healkit._demo import Stopwatch
from healkit._demo.scenes import PATH, SERVICE
from healkit._demo.telemetry import Observer
from healkit._demo.traffic import Traffic
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_breaker import BreakerPlugin

pytestmark = pytest.mark.anyio

SCENE = "storm"
EJECT_TIME = 30.0


@dataclass
class Said:
    """Collects what the observer shows."""

    lines: list[str]

    def __call__(self, text: str, style: str = "") -> None:
        del style
        self.lines.append(text)


def observe(*, fallback: bool) -> tuple[Observer, Said]:
    said = Said([])
    traffic = Traffic(scenes=1, say=said, keep_recent=False, tracing=None)
    observer = Observer(
        scenes=[SCENE],
        traffic=traffic,
        say=said,
        stopwatch=Stopwatch(),
        tls=None,
        fallback=fallback,
    )
    return observer, said


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[FaultServer, FaultServer]]:
    async with AsyncExitStack() as stack:
        primary = await stack.enter_async_context(FaultServer())
        fallback = await stack.enter_async_context(FaultServer())
        yield primary, fallback


async def failing_calls(
    client: healkit.Client, until: Callable[[], object], limit: int = 30
) -> None:
    """Call until ``until()`` holds (at most ``limit`` calls); failures are expected."""
    for _ in range(limit):
        if until():
            return
        with suppress(healkit.HealkitError):
            await client.get(PATH, service=SERVICE)
    pytest.fail(f"the condition did not hold after {limit} calls")


async def test_an_ejection_is_a_failover_through_the_typed_event(
    upstreams: tuple[FaultServer, FaultServer], manual_clock: ManualClock
) -> None:
    primary, fallback = upstreams
    primary.set_default(Fault.reset())
    routing = {"fallback_groups": [[fallback.url]], "eject_after": 2, "eject_time": EJECT_TIME}
    document = {"services": {SERVICE: {"endpoints": [primary.url], "routing": routing}}}
    observer, said = observe(fallback=True)

    async with healkit.Client(
        config=document, plugins=[observer], entry_points=False, clock=manual_clock
    ) as client:
        await failing_calls(client, lambda: observer.events["EndpointEjected"])
        # Ejected for 30 s on a clock that does not move: the fallback has the traffic.
        answered = await client.get(PATH, service=SERVICE)

    assert answered.outcome.path == "fallback"
    assert observer.events == {"ConfigApplied": 1, "EndpointEjected": 1}
    assert (observer.watch.group, observer.watch.failovers, observer.watch.switch_backs) == (
        1,
        1,
        0,
    )
    (change,) = observer.watch.changes
    assert (change["scene"], change["from"], change["to"]) == (SCENE, 0, 1)
    assert said.lines == [
        f"routing: {primary.url} ejected for 30 s after 2 failures in a row",
        "failover: traffic goes to the fallback group",
    ]
    assert observer.log_events == {}  # nothing was read from the logs


async def test_a_breaker_transition_is_recorded_from_the_typed_event(
    upstreams: tuple[FaultServer, FaultServer], manual_clock: ManualClock
) -> None:
    primary, _ = upstreams
    primary.set_default(Fault.status(503))
    breaker = {"consecutive_failures": 3, "open_duration": 60.0}
    document = {"services": {SERVICE: {"endpoints": [primary.url], "breaker": breaker}}}
    observer, said = observe(fallback=False)

    async with healkit.Client(
        config=document, plugins=[observer, BreakerPlugin()], entry_points=False, clock=manual_clock
    ) as client:
        await failing_calls(client, lambda: observer.breaker_transitions)
        with pytest.raises(healkit.CircuitOpenError):
            await client.get(PATH, service=SERVICE)

    (moved,) = observer.breaker_transitions
    assert moved["scene"] == SCENE
    assert (moved["from"], moved["to"], moved["reason"]) == (
        "closed",
        "open",
        "consecutive_failures",
    )
    assert moved["failures"] == moved["calls"] == 3
    assert observer.events == {"ConfigApplied": 1, "BreakerTransition": 1}
    assert said.lines == ["breaker closed -> open (consecutive_failures; 3 of 3 failed)"]
    assert observer.watch.changes == []  # no fallback group: traffic is not followed


@dataclass(frozen=True, slots=True)
class ThirdPartyEvent:
    """An event of a plugin the demo does not know."""

    service: str


async def test_an_event_of_another_type_is_counted_and_shown_once(
    manual_clock: ManualClock,
) -> None:
    observer, said = observe(fallback=False)
    runtime = healkit.Runtime(plugins=[observer], entry_points=False, clock=manual_clock)

    runtime.emit(ThirdPartyEvent(service="a"))
    runtime.emit(ThirdPartyEvent(service="b"))

    assert observer.events == {"ConfigApplied": 1, "ThirdPartyEvent": 2}
    assert said.lines == ["event ThirdPartyEvent(service='a')"]
    # The first configuration, typed: recorded, not shown (only the live changes are).
    assert [c["origin"] for c in observer.config_changes] == ["python"]
