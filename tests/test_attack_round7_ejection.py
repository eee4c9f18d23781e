"""Red team, round 7: the failover flapping fix (ejections that grow, decay, and probes).

Each test drives real upstreams on loopback (:class:`FaultServer`, a
:class:`TcpProxy` in front of one to crash and restart it) with probes and
ejections on a :class:`ManualClock` that moves only when the test says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import anyio
import pytest

import healkit
from healkit.events import EndpointEjected, EndpointReturned
from healkit.testing import Fault, FaultServer, ManualClock, TcpProxy
from tests.probe_support import Probes

pytestmark = pytest.mark.anyio

SERVICE = "payments"


class Watch:
    """The router's events, and where traffic goes (the first group with a usable endpoint)."""

    healkit_observer = True

    def __init__(self) -> None:
        self.ejections: list[tuple[float, int]] = []
        self.returns: list[str] = []

    @healkit.hookimpl
    def healkit_event(self, event: object) -> None:
        if isinstance(event, EndpointEjected):
            self.ejections.append((event.seconds, event.ejections))
        elif isinstance(event, EndpointReturned):
            self.returns.append(event.endpoint)


def serving_group(runtime: healkit.Runtime) -> int | None:
    return min(
        (s.group for s in healkit.endpoint_status(runtime, SERVICE) if s.usable), default=None
    )


@pytest.fixture
async def crashable() -> AsyncIterator[tuple[TcpProxy, FaultServer, FaultServer]]:
    """A primary behind a proxy (``block()`` crashes it, ``unblock()`` restarts it), a fallback."""
    async with AsyncExitStack() as stack:
        primary = await stack.enter_async_context(FaultServer())
        fallback = await stack.enter_async_context(FaultServer())
        proxy = await stack.enter_async_context(TcpProxy("127.0.0.1", primary.port))
        yield proxy, primary, fallback


async def test_a_primary_that_crashed_and_restarted_between_two_probes_comes_back_by_probes(
    crashable: tuple[TcpProxy, FaultServer, FaultServer],
) -> None:
    """The probes were failing when the calls ejected it: their good streak ends the ejection.

    The primary crashes (connections refused by its proxy: calls and probes
    fail alike), a probe fails, calls eject it, and it restarts before the
    next probe. Before the fix the ejection reset ``probe_failed``: the good
    probes after the restart did not count and the primary stayed out for
    its whole ejection (here 30 s, up to ``eject_time_max`` when earlier
    ejections are remembered) instead of ``interval x healthy_threshold``.
    """
    proxy, _primary, fallback = crashable
    interval = 5.0
    routing = {
        "fallback_groups": [[fallback.url]],
        "eject_time": 30.0,
        "probe": {"interval": interval, "healthy_threshold": 2, "unhealthy_threshold": 3},
    }
    config = {"services": {SERVICE: {"endpoints": [proxy.url], "routing": routing}}}
    clock = ManualClock(auto_advance=False)
    watch = Watch()
    probes = Probes(clock)
    plugins = [watch, probes]
    async with healkit.Client(config=config, plugins=plugins, entry_points=False, clock=clock) as c:
        start = clock.now()
        await probes.wait_for(proxy.url, 1)  # t=0: good
        clock.advance(interval)
        proxy.block()  # the primary crashes: its connections are gone, new ones refused
        await proxy.cut()
        await probes.wait_for(proxy.url, 2)  # t=5: a probe fails (one, not yet down)
        for _ in range(3):  # calls fail on it, and the fallback answers them
            assert (await c.get("/api", service=SERVICE)).status == 200
        assert watch.ejections == [(30.0, 1)]
        assert serving_group(c.runtime) == 1
        proxy.unblock()  # restarted before the next probe
        await probes.step(interval, proxy.url)  # t=10: good
        await probes.step(interval, proxy.url)  # t=15: good: healthy_threshold reached
        assert watch.returns == [proxy.url]
        assert serving_group(c.runtime) == 0  # back at t=15, not at t=35
    assert probes.of(proxy.url) == [
        (start + when, good) for when, good in [(0, True), (5, False), (10, True), (15, True)]
    ]


async def test_a_primary_down_by_its_probes_comes_back_once_it_restarts(
    crashable: tuple[TcpProxy, FaultServer, FaultServer],
) -> None:
    """A long crash: probes take it down; a restart brings it back within the probe streak."""
    proxy, _primary, fallback = crashable
    interval = 5.0
    routing = {
        "fallback_groups": [[fallback.url]],
        "eject_time": 300.0,
        "eject_time_max": 300.0,
        "probe": {"interval": interval, "healthy_threshold": 2, "unhealthy_threshold": 2},
    }
    config = {"services": {SERVICE: {"endpoints": [proxy.url], "routing": routing}}}
    clock = ManualClock(auto_advance=False)
    watch = Watch()
    probes = Probes(clock)
    plugins = [watch, probes]
    async with healkit.Client(config=config, plugins=plugins, entry_points=False, clock=clock) as c:
        start = clock.now()
        await probes.wait_for(proxy.url, 1)  # t=0: good
        clock.advance(interval)
        proxy.block()
        await proxy.cut()
        for _ in range(3):  # ejected for 300 s at once
            assert (await c.get("/api", service=SERVICE)).status == 200
        await probes.wait_for(proxy.url, 2)  # t=5: failed
        for _ in range(3):  # t=10 (down by its probes), 15, 20: failed
            await probes.step(interval, proxy.url)
        assert watch.ejections == [(300.0, 1)]
        assert healkit.endpoint_status(c.runtime, SERVICE)[0].down
        proxy.unblock()
        await probes.step(interval, proxy.url)  # t=25: good
        await probes.step(interval, proxy.url)  # t=30: good: healthy_threshold reached
        assert watch.returns == [proxy.url]
        assert serving_group(c.runtime) == 0  # not 300 s later
    assert [good for _, good in probes.of(proxy.url)] == [True] + [False] * 4 + [True] * 2
    assert probes.of(proxy.url)[-1][0] == start + 30.0


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("eject_decay", 0, "must be > 0"),
        ("eject_decay", -1.0, "must be > 0"),
        ("eject_decay", float("nan"), "must be a finite number"),
        ("eject_decay", float("inf"), "must be a finite number"),
        ("eject_decay", 1e12, "must be <= 86400"),
        ("eject_decay", True, "expected a number, got bool"),
        ("eject_decay", "60", "expected a number, got str"),
        ("eject_time_max", 0, "must be > 0"),
    ],
)
def test_hostile_ejection_settings_are_config_errors_naming_the_key(
    key: str, value: object, reason: str
) -> None:
    document = {
        "services": {SERVICE: {"endpoints": ["http://127.0.0.1:1"], "routing": {key: value}}}
    }
    with pytest.raises(healkit.ConfigError) as caught:
        healkit.Runtime(config=document, entry_points=False)
    assert f"$.services.{SERVICE}.routing.{key}: {reason}" in str(caught.value)


def test_an_eject_time_above_its_cap_is_a_config_error() -> None:
    routing = {"eject_time": 100.0, "eject_time_max": 10.0}
    document = {"services": {SERVICE: {"endpoints": ["http://127.0.0.1:1"], "routing": routing}}}
    with pytest.raises(healkit.ConfigError, match=r"eject_time \(100.0s\) must not exceed"):
        healkit.Runtime(config=document, entry_points=False)


@pytest.fixture
async def two() -> AsyncIterator[tuple[FaultServer, FaultServer]]:
    async with FaultServer() as primary, FaultServer() as fallback:
        yield primary, fallback


@pytest.mark.parametrize("decay", [1e-300, 86400.0])
async def test_days_on_the_clock_forget_every_ejection_whatever_the_decay(
    two: tuple[FaultServer, FaultServer], decay: float
) -> None:
    """The smallest and the largest decay, and the clock jumping 400 days: no overflow.

    ``quiet // eject_decay`` is 4e307 periods at the smallest decay: the count
    is reset, not computed from it.
    """
    primary, fallback = two
    primary.set_default(Fault.status(500))
    routing = {
        "fallback_groups": [[fallback.url]],
        "eject_after": 1,
        "eject_time": 1.0,
        "eject_time_max": 86400.0,
        "eject_decay": decay,
    }
    config = {"services": {SERVICE: {"endpoints": [primary.url], "routing": routing}}}
    clock = ManualClock()
    watch = Watch()
    async with healkit.Client(config=config, plugins=[watch], entry_points=False, clock=clock) as c:
        for _ in range(20):  # tried again as each ejection ends: out at once, twice as long
            assert (await c.get("/api", service=SERVICE)).status == 500
            clock.advance(watch.ejections[-1][0])
        clock.advance(400 * 86400.0)
        assert (await c.get("/api", service=SERVICE)).status == 500
    lengths = [seconds for seconds, _ in watch.ejections]
    # Each one tried again the moment the last ended: no quiet time to forget any.
    assert lengths[:18] == [2.0**n for n in range(17)] + [86400.0]
    assert lengths[18:20] == [86400.0] * 2
    assert watch.ejections[-1] == (1.0, 1)  # 400 days later: a first ejection again


async def test_a_reload_while_ejected_keeps_the_count_within_the_new_cap(
    two: tuple[FaultServer, FaultServer],
) -> None:
    """The count survives a compatible reload; a lower cap bounds it at the next ejection."""
    primary, fallback = two
    primary.set_default(Fault.status(500))
    routing: dict[str, object] = {
        "fallback_groups": [[fallback.url]],
        "eject_after": 1,
        "eject_time": 5.0,
        "eject_time_max": 40.0,
    }
    config = {"services": {SERVICE: {"endpoints": [primary.url], "routing": routing}}}
    clock = ManualClock()
    watch = Watch()
    async with healkit.Client(config=config, plugins=[watch], entry_points=False, clock=clock) as c:
        for _ in range(4):
            await c.get("/api", service=SERVICE)
            clock.advance(watch.ejections[-1][0])
        assert watch.ejections[-1] == (40.0, 4)
        c.runtime.apply(
            {
                "services": {
                    SERVICE: {
                        "endpoints": [primary.url],
                        "routing": {**routing, "eject_decay": 30.0},
                    }
                }
            }
        )
        await c.get("/api", service=SERVICE)
        assert watch.ejections[-1] == (40.0, 4)  # kept: still 40 s
        clock.advance(40.0)
        c.runtime.apply(
            {
                "services": {
                    SERVICE: {
                        "endpoints": [primary.url],
                        "routing": {**routing, "eject_time_max": 10.0},
                    }
                }
            }
        )
        await c.get("/api", service=SERVICE)
        assert watch.ejections[-1] == (10.0, 2)  # clamped to the new cap's count
        clock.advance(10.0 + 2 * 60.0)  # two decay periods: both forgotten
        await c.get("/api", service=SERVICE)
        assert watch.ejections[-1] == (5.0, 1)


async def test_failures_answered_during_an_ejection_do_not_count_towards_the_next(
    two: tuple[FaultServer, FaultServer],
) -> None:
    """Calls in flight when the endpoint is ejected fail during it: they say nothing new.

    Before, each one counted as a failure in a row: once the ejection ran
    out, the endpoint's first failure ejected it again (``eject_after`` was 3,
    the count stood at 3 already), and the status showed failures it never had
    since.
    """
    primary, fallback = two
    primary.set_default(Fault.status(500, latency=0.05))  # real: the calls overlap there
    routing = {"fallback_groups": [[fallback.url]], "eject_after": 3, "eject_time": 5.0}
    config = {"services": {SERVICE: {"endpoints": [primary.url], "routing": routing}}}
    clock = ManualClock()
    watch = Watch()
    async with healkit.Client(config=config, plugins=[watch], entry_points=False, clock=clock) as c:

        async def call() -> None:
            await c.get("/api", service=SERVICE)

        async with anyio.create_task_group() as group:
            for _ in range(6):  # all sent to the primary before any answer
                group.start_soon(call)
        assert primary.hits("/api") == 6
        assert watch.ejections == [(5.0, 1)]
        (status, _) = healkit.endpoint_status(c.runtime, SERVICE)
        assert status.consecutive_failures == 0
        clock.advance(5.0)
        primary.set_default(Fault.status(500))
        await c.get("/api", service=SERVICE)  # tried again: one failure, not an ejection
        assert watch.ejections == [(5.0, 1)]


async def test_a_reload_that_shortens_ejections_shortens_the_current_one(
    two: tuple[FaultServer, FaultServer],
) -> None:
    """An operator lowers eject_time_max mid-incident, then turns ejection off.

    Before, the primary stayed out for the whole ejection decided under the
    old settings (300 s here), whatever the new document said.
    """
    primary, fallback = two
    primary.set_default(Fault.status(500))
    routing: dict[str, object] = {
        "fallback_groups": [[fallback.url]],
        "eject_after": 1,
        "eject_time": 300.0,
        "eject_time_max": 300.0,
    }

    def document(**changes: object) -> dict[str, object]:
        service = {"endpoints": [primary.url], "routing": {**routing, **changes}}
        return {"services": {SERVICE: service}}

    clock = ManualClock()
    async with healkit.Client(config=document(), entry_points=False, clock=clock) as c:
        await c.get("/api", service=SERVICE)
        clock.advance(100.0)
        (status, _) = healkit.endpoint_status(c.runtime, SERVICE)
        assert status.ejected_for == 200.0
        c.runtime.apply(document(eject_time=10.0, eject_time_max=20.0))
        (status, _) = healkit.endpoint_status(c.runtime, SERVICE)
        assert status.ejected_for == 20.0  # the new cap, from now
        c.runtime.apply(document(eject_after=0, eject_time=10.0, eject_time_max=20.0))
        (status, _) = healkit.endpoint_status(c.runtime, SERVICE)
        assert (status.ejected_for, status.usable) == (0.0, True)
        c.runtime.apply(document(eject_time=10.0, eject_time_max=20.0))
        clock.advance(1.0)
        await c.get("/api", service=SERVICE)  # tried again, ejected again: twice as long
        (status, _) = healkit.endpoint_status(c.runtime, SERVICE)
        assert status.ejected_for == 20.0


async def test_health_records_follow_the_configured_endpoints_however_many(
    two: tuple[FaultServer, FaultServer],
) -> None:
    """300 endpoints, each called and ejected once; a reload to one: one record left."""
    primary, _ = two
    primary.set_default(Fault.status(500))
    many = [f"{primary.url}/e{i}" for i in range(300)]

    def document(endpoints: list[str]) -> dict[str, object]:
        routing = {"eject_after": 1, "max_ejected_fraction": 1.0}
        return {"services": {SERVICE: {"endpoints": endpoints, "routing": routing}}}

    watch = Watch()
    async with healkit.Client(
        config=document(many), plugins=[watch], entry_points=False, clock=ManualClock()
    ) as c:
        for _ in many:
            await c.get("/api", service=SERVICE)
        router = c.runtime.plugin_manager.get_plugin("routing")
        assert len(watch.ejections) == len(many)  # max_ejected_fraction 1: every one
        assert repr(router) == "<Router 300 endpoints>"
        c.runtime.apply(document(many[:1]))
        assert repr(router) == "<Router 1 endpoints>"
