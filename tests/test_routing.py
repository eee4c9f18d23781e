"""The built-in routing plugin: priority groups, balancing, ejection, failover, credentials."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

import healkit
from healkit._routing.plugin import Router
from healkit._routing.settings import ProbeSettings
from healkit.events import EndpointDown, EndpointReturned
from healkit.testing import Fault, FaultServer, ManualClock, refused_url
from healkit_breaker import BreakerPlugin
from healkit_retry import RetryPlugin
from healkit_timeout import TimeoutPlugin
from tests.probe_support import Probes

pytestmark = pytest.mark.anyio

SERVICE = "inventory"


def document(primary: Sequence[str], **routing: Any) -> dict[str, Any]:
    service: dict[str, Any] = {"endpoints": list(primary)}
    if routing:
        service["routing"] = routing
    return {"services": {SERVICE: service}}


def client(config: dict[str, Any], clock: ManualClock, *plugins: object) -> healkit.Client:
    return healkit.Client(config=config, plugins=plugins, entry_points=False, clock=clock)


@pytest.fixture
async def servers() -> AsyncIterator[list[FaultServer]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FaultServer()) for _ in range(3)]


async def test_round_robin_within_the_primary_group(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    a, b, _ = servers
    async with client(document([a.url, b.url]), manual_clock) as c:
        answered = [(await c.get("/x", service=SERVICE)).outcome for _ in range(4)]
    assert [o.endpoint for o in answered if o] == [a.url, b.url, a.url, b.url]
    assert {o.path for o in answered if o} == {"primary"}


async def test_least_outstanding_picks_the_less_busy_of_two(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    a, b, _ = servers
    picks = iter([a.url, b.url])
    router = Router(draw=lambda _: next(picks))
    a.set_default(Fault.ok(latency=0.2))
    async with client(
        document([a.url, b.url], balance="least_outstanding"), manual_clock, router
    ) as c:
        first = asyncio.ensure_future(c.get("/x", service=SERVICE))
        await asyncio.sleep(0)  # the first call is routed (to a) and in flight
        assert {s.endpoint: s.outstanding for s in router.status(SERVICE)} == {a.url: 1, b.url: 0}
        # The same two draws (a, then b): b has no call in flight, a has one.
        picks = iter([a.url, b.url])
        second = await c.get("/x", service=SERVICE)
        assert (await first).outcome.endpoint == a.url  # type: ignore[union-attr]
    assert second.outcome is not None
    assert second.outcome.endpoint == b.url
    assert {s.outstanding for s in router.status(SERVICE)} == {0}


async def test_a_refused_primary_fails_over_at_once_and_the_answer_says_fallback(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    backup = servers[0]
    down = refused_url()
    config = document([down], fallback_groups=[[backup.url]])
    async with client(config, manual_clock, RetryPlugin()) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.status == 200
    assert response.outcome is not None
    assert response.outcome.path == "fallback"
    assert response.outcome.endpoint == backup.url
    assert response.headers[healkit.OUTCOME_HEADER] == "fallback"
    assert [a.error for a in response.outcome.attempts] == ["ConnectError", None]
    assert manual_clock.sleeps == []  # no backoff spent on the move to the other group


async def test_failing_endpoints_are_ejected_and_come_back(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    a, b, _ = servers
    a.set_default(Fault.status(500))
    config = document([a.url, b.url], eject_after=2, eject_time=10.0)
    events: list[object] = []

    class Events:
        healkit_observer = True

        @healkit.hookimpl
        def healkit_event(self, event: object) -> None:
            events.append(event)

    async with client(config, manual_clock, Events()) as c:
        for _ in range(4):  # a, b, a (2nd failure: ejected), b
            await c.get("/x", service=SERVICE)
        for _ in range(3):
            assert (await c.get("/x", service=SERVICE)).outcome.endpoint == b.url  # type: ignore[union-attr]
        router = c.runtime.plugin_manager.get_plugin("routing")
        status = {s.endpoint: s for s in router.status(SERVICE)}
        assert not status[a.url].usable
        assert status[a.url].ejected_for == pytest.approx(10.0)
        manual_clock.advance(10.0)
        a.set_default(Fault.ok())
        ends = [(await c.get("/x", service=SERVICE)).outcome.endpoint for _ in range(2)]  # type: ignore[union-attr]
    assert a.hits() == 2 + 1
    assert sorted(ends) == sorted([a.url, b.url])
    (ejected,) = [e for e in events if type(e).__name__ == "EndpointEjected"]
    assert (ejected.endpoint, ejected.failures, ejected.seconds) == (a.url, 2, 10.0)  # type: ignore[attr-defined]


async def test_at_most_a_fraction_of_a_group_is_ejected(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    a, b, _ = servers
    a.set_default(Fault.status(503))
    b.set_default(Fault.status(503))
    config = document([a.url, b.url], eject_after=1, max_ejected_fraction=0.5)
    async with client(config, manual_clock) as c:
        for _ in range(6):
            await c.get("/x", service=SERVICE)
        router = c.runtime.plugin_manager.get_plugin("routing")
        usable = [s.usable for s in router.status(SERVICE)]
    assert usable.count(False) == 1  # one of two, never both


async def test_a_whole_group_down_moves_traffic_to_the_next_group(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    a, backup, _ = servers
    a.set_default(Fault.status(503))
    # Without moving a failed call on (tests/test_failover_retry.py): ejection alone.
    config = document(
        [a.url], fallback_groups=[[backup.url]], eject_after=1, retry_other_groups=False
    )
    async with client(config, manual_clock) as c:
        first = await c.get("/x", service=SERVICE)  # a answers 503 and is ejected
        second = await c.get("/x", service=SERVICE)
    assert (first.status, first.outcome.path) == (503, "primary")  # type: ignore[union-attr]
    assert (second.status, second.outcome.path) == (200, "fallback")  # type: ignore[union-attr]


async def test_a_retry_prefers_another_endpoint(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    a, b, _ = servers
    a.set_default(Fault.status(503))
    async with client(document([a.url, b.url]), manual_clock, RetryPlugin()) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.status == 200
    assert response.outcome is not None
    assert [x.endpoint for x in response.outcome.attempts] == [a.url, b.url]
    assert response.outcome.path == "retry"


async def test_an_open_breaker_keeps_traffic_away_from_its_endpoint(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    a, b, _ = servers
    a.set_default(Fault.status(503))
    config = document([a.url, b.url], eject_after=0)
    config["services"][SERVICE]["breaker"] = {"consecutive_failures": 1, "open_duration": 60.0}
    async with client(config, manual_clock, BreakerPlugin()) as c:
        await c.get("/x", service=SERVICE)  # a: 503, its breaker opens
        ends = [(await c.get("/x", service=SERVICE)).outcome.endpoint for _ in range(4)]  # type: ignore[union-attr]
    assert ends == [b.url] * 4
    assert a.hits() == 1


async def test_credentials_stay_with_the_origin_unless_allowed(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    backup = servers[0]
    down = refused_url()
    secret = {"Authorization": "Bearer s3cret", "X-Api-Key": "k", "Accept": "text/plain"}
    config = document([down], fallback_groups=[[backup.url]], credential_headers=["X-Api-Key"])
    async with client(config, manual_clock) as c:
        await c.get("/x", service=SERVICE, headers=secret)
    (request,) = backup.requests
    assert "Authorization" not in request.headers
    assert "X-Api-Key" not in request.headers
    assert request.headers["Accept"] == "text/plain"

    config = document([down], fallback_groups=[[backup.url]], forward_credentials=True)
    async with client(config, manual_clock) as c:
        await c.get("/x", service=SERVICE, headers=secret)
    assert backup.requests[-1].headers["Authorization"] == "Bearer s3cret"


def test_fallback_endpoints_outside_the_allowed_origins_are_rejected() -> None:
    config = document(
        ["https://a.internal"],
        fallback_groups=[["https://b.internal"], ["https://evil.example.com"]],
        allowed_origins=["https://*.internal"],
    )
    with pytest.raises(healkit.ConfigError) as caught:
        healkit.Runtime(config=config, entry_points=False)
    (issue,) = caught.value.issues
    assert issue.path == f"$.services.{SERVICE}.routing"
    assert "https://evil.example.com is outside allowed_origins" in issue.reason


async def test_an_absolute_url_is_not_routed(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    a, b, _ = servers
    async with client(document([a.url, b.url]), manual_clock) as c:
        for _ in range(3):
            await c.get(f"{a.url}/x")
    assert (a.hits(), b.hits()) == (3, 0)


async def test_endpoint_health_survives_a_configuration_change(
    servers: list[FaultServer], manual_clock: ManualClock
) -> None:
    a, b, _ = servers
    a.set_default(Fault.status(500))
    config = document([a.url, b.url], eject_after=1, eject_time=30.0)
    async with client(config, manual_clock) as c:
        await c.get("/x", service=SERVICE)  # a ejected
        c.runtime.apply(document([a.url, b.url], eject_after=1, eject_time=60.0), origin="op")
        ends = {(await c.get("/x", service=SERVICE)).outcome.endpoint for _ in range(3)}  # type: ignore[union-attr]
    assert ends == {b.url}


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://dr.internal:8443", True),
        ("https://a.b.internal", True),
        ("https://internal", False),
        ("http://dr.internal", False),
        ("https://dr.example.com:8443", True),
        ("https://dr.example.com:9443", False),
        ("https://evil-internal.com", False),
    ],
)
def test_allowed_origins_match_scheme_host_and_a_named_port(url: str, allowed: bool) -> None:
    from healkit._routing.settings import origin_allowed  # noqa: PLC0415 - a helper of this module

    entries = ["https://*.internal", "https://dr.example.com:8443"]
    assert origin_allowed(url, entries) is allowed


class Health:
    """An observer of the routing plugin's probe events, with an event per kind."""

    healkit_observer = True

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    @healkit.hookimpl
    def healkit_event(self, event: object) -> None:
        if isinstance(event, EndpointDown | EndpointReturned):
            self.seen.append((type(event).__name__, event.endpoint))
            self.changed.set()

    async def wait_for(self, kind: str, endpoint: str) -> None:
        with anyio.fail_after(10):
            while (kind, endpoint) not in self.seen:
                self.changed.clear()
                await self.changed.wait()


PROBE_INTERVAL = 0.1
HEALTHY = 2
PROBE = {
    "path": "/health",
    "interval": PROBE_INTERVAL,
    "timeout": PROBE_INTERVAL,
    "healthy_threshold": HEALTHY,
    "unhealthy_threshold": 2,
}


async def test_probes_take_the_primary_down_and_traffic_returns_when_it_recovers(
    servers: list[FaultServer],
) -> None:
    primary, backup, _ = servers
    primary.set_default(Fault.status(503))
    health = Health()
    interval = 0.5  # exact in binary: the virtual time adds up exactly
    probe = {**PROBE, "interval": interval, "timeout": interval}
    clock = ManualClock(auto_advance=False)
    probes = Probes(clock)
    start = clock.now()
    config = document([primary.url], fallback_groups=[[backup.url]], probe=probe)
    async with client(config, clock, health, probes) as c:
        await probes.wait_for(primary.url, 1)  # the first probe failed
        await probes.step(interval, primary.url)  # the second fails too
        await health.wait_for("EndpointDown", primary.url)
        during = await c.get("/x", service=SERVICE)
        primary.set_default(Fault.ok())
        recovered = clock.now()
        for _ in range(HEALTHY):
            await probes.step(interval, primary.url)
        await health.wait_for("EndpointReturned", primary.url)
        took = clock.now() - recovered
        after = await c.get("/x", service=SERVICE)
        with anyio.fail_after(10):
            await clock.wait_for_sleepers()  # asleep until the next probe is due
    assert (during.status, during.outcome.path) == (200, "fallback")  # type: ignore[union-attr]
    assert (after.outcome.endpoint, after.outcome.path) == (primary.url, "primary")  # type: ignore[union-attr]
    # Back after exactly healthy_threshold intervals, each probe one interval after the last.
    assert took == interval * HEALTHY
    expected = [False] * 2 + [True] * HEALTHY
    assert probes.of(primary.url) == [
        (start + n * interval, good) for n, good in enumerate(expected)
    ]  # no probe early, none skipped
    assert primary.hits("/health") == 2 + HEALTHY
    assert primary.hits("/x") == 1  # only the call after the return


async def test_alternating_probes_never_flap(servers: list[FaultServer]) -> None:
    steady, down, _ = servers
    alternating = [Fault.ok(), Fault.status(503)] * 20
    steady.script("/health", *alternating)
    down.script("/health", Fault.status(503), Fault.status(503), *alternating)
    health = Health()
    # Virtual intervals: a probe's real time limit (5 s) is then far off.
    interval = 30.0
    clock = ManualClock(auto_advance=False)
    probes = Probes(clock)
    config = document([steady.url, down.url], probe={**PROBE, "interval": interval, "timeout": 5.0})
    async with client(config, clock, health, probes) as c:
        await probes.wait_for(steady.url, 1)
        await probes.wait_for(down.url, 1)
        for _ in range(13):  # 14 probes of each: the first at the start
            await probes.step(interval, steady.url, down.url)
        router = c.runtime.plugin_manager.get_plugin("routing")
        status = {s.endpoint: s for s in router.status(SERVICE)}
    assert steady.hits("/health") == down.hits("/health") == 14
    assert [good for _, good in probes.of(steady.url)] == [True, False] * 7
    assert [good for _, good in probes.of(down.url)] == [False, False] + [True, False] * 6
    assert health.seen == [("EndpointDown", down.url)]  # nothing went down or came back since
    assert status[steady.url].usable
    assert status[down.url].down


async def test_the_probe_task_is_owned_by_the_client(servers: list[FaultServer]) -> None:
    a, b, _ = servers
    config = document([a.url, b.url], probe=PROBE)
    client_ = healkit.Client(config=config, entry_points=False)
    async with client_:
        tasks = {t.get_name() for t in client_.runtime.background_tasks}
        assert "healkit: routing probes" in tasks
    assert client_.runtime.background_tasks == frozenset()


@pytest.mark.parametrize(
    ("probe_timeout", "service_timeout"),
    [(None, {"read": 0.2}), (0.2, {})],
    ids=["the service's read limit", "the probe's own timeout"],
)
async def test_a_probe_keeps_to_the_service_limits(
    servers: list[FaultServer], probe_timeout: float | None, service_timeout: dict[str, float]
) -> None:
    silent, backup, _ = servers
    silent.script("/health", *[Fault.blackhole()] * 5)
    probe = {"path": "/health", "interval": 30.0, "unhealthy_threshold": 1}
    if probe_timeout is not None:
        probe["timeout"] = probe_timeout
    config = document([silent.url], fallback_groups=[[backup.url]], probe=probe)
    config["services"][SERVICE]["timeout"] = service_timeout
    health = Health()
    plugins = [health, TimeoutPlugin()]
    async with healkit.Client(config=config, plugins=plugins, entry_points=False):
        # Down after the first probe, cut at 0.2 s: not after seconds.
        with anyio.fail_after(1.5):
            await health.wait_for("EndpointDown", silent.url)


def test_probe_limits_are_the_service_attempt_limits_within_the_probe_table() -> None:
    service = healkit.Timeouts(connect=1.0, read=4.0, total=8.0)
    by_default = ProbeSettings(interval=5.0).limits(service)
    assert (by_default.total, by_default.connect, by_default.sock_read) == (5.0, 1.0, 4.0)
    tight = ProbeSettings(interval=5.0, timeout=0.5).limits(service)
    assert (tight.total, tight.connect, tight.sock_read) == (0.5, 0.5, 0.5)
    roomy = ProbeSettings(interval=60.0).limits(service)
    assert (roomy.total, roomy.connect, roomy.sock_read) == (8.0, 1.0, 4.0)


async def test_every_endpoint_down_ends_in_the_degraded_template(
    manual_clock: ManualClock,
) -> None:
    template = {"status": 503, "json": {"error": "${error_type}"}}
    config = document([refused_url(), refused_url()], fallback_groups=[[refused_url()]])
    config["services"][SERVICE]["degraded"] = {"template": template}
    async with client(config, manual_clock, RetryPlugin()) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.status == 503
    assert response.outcome is not None
    assert response.outcome.path == "degraded"
    assert response.headers[healkit.OUTCOME_HEADER] == "degraded"
    assert response.json() == {"error": "ConnectError"}
    # Each endpoint tried once, moving on at once: no backoff slept.
    assert len({a.endpoint for a in response.outcome.attempts}) == 3
    assert manual_clock.sleeps == []
