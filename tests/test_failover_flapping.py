"""Failover stays put while the primary fails intermittently: no flapping.

An upstream whose health check stays up while a share of its answers are 503
(the demo's "503 burst", a 50% burst) is ejected by real traffic, and the
router must neither bring it back at every good probe nor forget its
ejections after a few good answers: each ejection in a row lasts twice as long
(up to ``eject_time_max``), one is forgotten per ``eject_decay`` seconds
without one, and probes end an ejection only once they saw the endpoint fail.

Real upstreams on loopback (:class:`FaultServer`), the probes' rounds and the
ejections on a :class:`ManualClock` that moves only when the test says so.
Where traffic goes is read as the demo reads it: the first group with a usable
endpoint (:func:`healkit.endpoint_status`).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

import healkit
from healkit._demo.scenes import HEALTH_PATH, ROUTING, SCENES, SEED
from healkit._routing.health import Health
from healkit._routing.probes import count_probe
from healkit._routing.settings import ProbeSettings, RoutingSettings
from healkit.events import EndpointEjected, EndpointReturned
from healkit.testing import Fault, FaultMix, FaultServer, ManualClock

pytestmark = pytest.mark.anyio

SERVICE = "payments"


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[FaultServer, FaultServer]]:
    async with AsyncExitStack() as stack:
        primary = await stack.enter_async_context(FaultServer())
        fallback = await stack.enter_async_context(FaultServer())
        yield primary, fallback


class Traffic:
    """The calls of a test, and each time the group traffic goes to changed."""

    healkit_observer = True

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.group: int | None = 0
        self.switches: list[tuple[int | None, int | None]] = []
        self.ejections: list[float] = []
        self.returns = 0

    @healkit.hookimpl
    def healkit_event(self, event: object) -> None:
        if isinstance(event, EndpointEjected):
            self.ejections.append(event.seconds)
        elif isinstance(event, EndpointReturned):
            self.returns += 1

    def observe(self, runtime: healkit.Runtime) -> None:
        usable = [s.group for s in healkit.endpoint_status(runtime, SERVICE) if s.usable]
        group = min(usable, default=None)
        if group != self.group:
            self.switches.append((self.group, group))
            self.group = group

    @property
    def failovers(self) -> int:
        return sum(1 for was, _ in self.switches if was == 0)

    @property
    def switch_backs(self) -> int:
        return sum(1 for _, now in self.switches if now == 0)

    async def play(self, c: healkit.Client, rounds: int, calls: int, interval: float) -> None:
        """Make ``calls`` calls, then bring the next probe round; ``rounds`` times."""
        for _ in range(rounds):
            for _ in range(calls):
                response = await c.get("/api", service=SERVICE)
                assert response.status == 200  # the fallback answers what the primary does not
                self.observe(c.runtime)
            with anyio.fail_after(10):
                await self.clock.wait_for_sleepers()  # the probe round is over
            self.clock.advance(interval)


def scene_upstream(name: str) -> Any:
    return next(scene for scene in SCENES if scene.name == name).phase.primary


async def test_the_demo_503_burst_fails_over_and_stays_until_the_primary_heals(
    upstreams: tuple[FaultServer, FaultServer],
) -> None:
    """The demo's scene, its routing settings, and calls at 100 a second of virtual time.

    3 answers in 10 are 503, three in a row; the health check answers 200
    throughout. Before the fix, each good probe brought the ejected primary
    back (its good probes from before the ejection counted) and a few good
    answers made the next ejection a first one again: traffic went back and
    forth at every probe round of the burst.
    """
    primary, fallback = upstreams
    scene_upstream("503 burst").apply(primary, seed=SEED, probe_path=HEALTH_PATH)
    interval = ROUTING["probe"]["interval"]
    config = {
        "services": {
            SERVICE: {
                "endpoints": [primary.url],
                "routing": {"fallback_groups": [[fallback.url]], **ROUTING},
            }
        }
    }
    clock = ManualClock(auto_advance=False)
    traffic = Traffic(clock)
    async with healkit.Client(
        config=config, plugins=[traffic], entry_points=False, clock=clock
    ) as c:
        burst = round(2.4 / interval)  # the scene's share of the default run
        await traffic.play(c, burst, calls=20, interval=interval)
        in_burst = list(traffic.switches)
        scene_upstream("healed").apply(primary, seed=SEED, probe_path=HEALTH_PATH)
        await traffic.play(c, round(6.0 / interval), calls=20, interval=interval)
    # Out at the first three 503s for eject_time (1 s); tried again then, out at
    # once for twice as long (2 s, eject_time_max): beyond the burst.
    assert in_burst == [(0, 1), (1, 0), (0, 1)]
    assert traffic.ejections == [ROUTING["eject_time"], ROUTING["eject_time_max"]]
    # Healed: back once the ejection ran out, and there it stays.
    assert traffic.switches == [*in_burst, (1, 0)]
    assert traffic.returns == 0  # the probes, never failing, ended no ejection


async def test_a_primary_failing_half_its_calls_stays_out_longer_each_time(
    upstreams: tuple[FaultServer, FaultServer],
) -> None:
    """50% 503s at random for two minutes, then healthy: each ejection twice as long as the last.

    The switches over the burst are bounded by the rule: the ejections last
    5, 10, 20, 40, 40... seconds, each a failover, each but the last followed
    by one switch-back; after the burst, one switch-back and no more.
    Then, after a healthy spell of ``eject_decay`` per remembered ejection,
    a new failure is a first ejection again.
    """
    primary, fallback = upstreams
    half = FaultMix.random([(Fault.status(503), 1.0), (Fault.ok(), 1.0)], seed=7)
    primary.set_default(half)
    primary.script("/health", then=Fault.ok())  # the health check stays up
    interval, decay = 1.0, 60.0
    routing = {
        "fallback_groups": [[fallback.url]],
        "eject_time": 5.0,
        "eject_time_max": 40.0,
        "eject_decay": decay,
        "probe": {"path": "/health", "interval": interval, "timeout": interval},
    }
    config = {"services": {SERVICE: {"endpoints": [primary.url], "routing": routing}}}
    clock = ManualClock(auto_advance=False)
    traffic = Traffic(clock)
    async with healkit.Client(
        config=config, plugins=[traffic], entry_points=False, clock=clock
    ) as c:
        await traffic.play(c, 120, calls=10, interval=interval)
        in_burst = list(traffic.switches)
        ejections = list(traffic.ejections)
        primary.set_default(Fault.ok())
        await traffic.play(c, 60, calls=10, interval=interval)
        after_burst = traffic.switches[len(in_burst) :]
        # Healthy long enough to forget every ejection (4: 5 s doubled three times is 40 s).
        await traffic.play(c, round(4 * decay), calls=1, interval=interval)
        primary.set_default(Fault.status(503))
        await traffic.play(c, 1, calls=3, interval=interval)
    assert ejections == [5.0, 10.0, 20.0, 40.0, 40.0]
    assert traffic.failovers == len(traffic.ejections)
    assert in_burst == [(0, 1), (1, 0)] * (len(ejections) - 1) + [(0, 1)]
    assert after_burst == [(1, 0)]
    assert traffic.ejections[len(ejections) :] == [5.0]  # forgotten: a first ejection
    assert traffic.returns == 0


def test_probes_that_never_failed_do_not_end_an_ejection() -> None:
    settings = ProbeSettings(healthy_threshold=2)
    target = (SERVICE, "http://127.0.0.1:1", settings)
    health = Health()
    for moment in range(3):  # good probes before the ejection...
        count_probe(health, target, good=True, now=float(moment))
    health.eject(RoutingSettings(eject_time=30.0), now=3.0)
    # ... and after it: the health check never saw what ejected the endpoint.
    assert [count_probe(health, target, good=True, now=float(t)) for t in range(4, 8)] == [None] * 4
    assert health.ejected_until == 33.0
    # A failed probe, then a streak: the probes saw it fail and recover.
    count_probe(health, target, good=False, now=8.0)
    count_probe(health, target, good=True, now=9.0)
    assert isinstance(count_probe(health, target, good=True, now=10.0), EndpointReturned)
    assert health.ejected_until == 10.0


def test_ejections_are_forgotten_one_per_decay_period() -> None:
    settings = RoutingSettings(eject_time=5.0, eject_time_max=40.0, eject_decay=60.0)
    health = Health()
    now = 0.0
    lengths = []
    for _ in range(6):  # each ejection in a row: tried again when it ends, and out at once
        lengths.append(health.eject(settings, now))
        now = health.ejected_until
    assert lengths == [5.0, 10.0, 20.0, 40.0, 40.0, 40.0]
    assert health.ejections == settings.eject_doublings + 1 == 4  # bounded
    # Two decay periods without an ejection forget two of them: 40 s becomes 10 s.
    assert health.eject(settings, now + 2 * 60.0 + 1.0) == 10.0


async def test_a_tiny_eject_time_never_overflows_however_many_ejections(
    upstreams: tuple[FaultServer, FaultServer],
) -> None:
    """A valid but tiny eject_time: the doubling is capped, not computed past a float's range.

    Before, the 1025th ejection in a row computed ``2.0**1024``: an
    ``OverflowError`` in the router failed every call with a ``PluginError``.
    """
    primary, fallback = upstreams
    primary.set_default(Fault.status(500))
    routing = {
        "fallback_groups": [[fallback.url]],
        "eject_after": 1,
        "eject_time": 5e-324,  # the smallest positive float: accepted
        "eject_time_max": 1e-300,
    }
    config = {"services": {SERVICE: {"endpoints": [primary.url], "routing": routing}}}
    clock = ManualClock()
    traffic = Traffic(clock)
    async with healkit.Client(
        config=config, plugins=[traffic], entry_points=False, clock=clock
    ) as c:
        for _ in range(1100):  # each ejection ends at once on the clock: ejected again
            assert (await c.get("/api", service=SERVICE)).status == 500
    assert len(traffic.ejections) == 1100
    assert all(0 < s <= 1e-300 for s in traffic.ejections)
    assert math.isclose(traffic.ejections[-1], 1e-300)


async def test_failures_coming_back_during_an_ejection_do_not_eject_again(
    upstreams: tuple[FaultServer, FaultServer],
) -> None:
    """Calls sent before the ejection and failing during it say nothing new of the endpoint.

    Before, each one ejected it again, twice as long: four callers in flight
    made a first ejection of 5 s one of 10 s.
    """
    failing, healthy = upstreams
    failing.set_default(Fault.status(500, latency=0.05))  # real: the calls overlap there
    routing = {"eject_after": 1, "eject_time": 5.0, "max_ejected_fraction": 1.0}
    config = {"services": {SERVICE: {"endpoints": [failing.url, healthy.url], "routing": routing}}}
    clock = ManualClock()
    traffic = Traffic(clock)
    async with healkit.Client(
        config=config, plugins=[traffic], entry_points=False, clock=clock
    ) as c:

        async def call() -> None:
            await c.get("/api", service=SERVICE)

        async with anyio.create_task_group() as group:
            for _ in range(4):  # round robin: two of them in flight at the failing endpoint
                group.start_soon(call)
        status = {s.endpoint: s for s in healkit.endpoint_status(c.runtime, SERVICE)}
    assert failing.hits("/api") == 2
    assert traffic.ejections == [5.0]
    assert status[failing.url].ejected_for == 5.0
