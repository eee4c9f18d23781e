"""The breaker plugin against real loopback servers, on a manual clock."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from breaker_helpers import Events, document

import healkit
from healkit.testing import Fault, FaultServer, ManualClock, refused_url
from healkit_breaker import BreakerPlugin, BreakerTransition, State

pytestmark = pytest.mark.anyio


def client(
    config: dict[str, Any], plugin: BreakerPlugin, clock: ManualClock, *others: object
) -> healkit.Client:
    return healkit.Client(config=config, plugins=[plugin, *others], entry_points=False, clock=clock)


async def refused(c: healkit.Client, target: str, **kwargs: Any) -> healkit.CircuitOpenError:
    with pytest.raises(healkit.CircuitOpenError) as caught:
        await c.get(target, **kwargs)
    return caught.value


async def test_opens_after_exactly_n_consecutive_failures_then_nothing_reaches_the_server(
    fault_server: FaultServer, manual_clock: ManualClock, events: Events
) -> None:
    fault_server.set_default(Fault.status(503))
    plugin = BreakerPlugin()
    config = document([fault_server.url], consecutive_failures=3, open_duration=5.0)
    async with client(config, plugin, manual_clock, events) as c:
        for _ in range(3):
            # The breaker only observes: a 503 is still the caller's response.
            assert (await c.get("/x", service="svc")).status == 503
        for _ in range(20):
            error = await refused(c, "/x", service="svc")
    assert fault_server.hits() == 3
    assert error.may_have_reached_server is False
    assert (error.service, error.endpoint) == ("svc", fault_server.url)
    assert error.retry_at == manual_clock.now() + 5.0
    assert [a.error for a in error.attempts] == ["CircuitOpenError"]
    assert plugin.state("svc", fault_server.url) is State.OPEN
    assert events.moves() == [("closed", "open", "consecutive_failures")]


async def test_opens_when_the_failure_rate_is_reached_with_the_minimum_calls(
    fault_server: FaultServer, manual_clock: ManualClock, events: Events
) -> None:
    fault_server.script("/x", *[Fault.ok(), Fault.status(500)] * 5)
    plugin = BreakerPlugin()
    config = document(
        [fault_server.url],
        window_size=10,
        minimum_calls=10,
        failure_rate=0.5,
        consecutive_failures=0,
    )
    async with client(config, plugin, manual_clock, events) as c:
        for _ in range(9):
            await c.get("/x", service="svc")
        assert plugin.state("svc", fault_server.url) is State.CLOSED  # 4 of 9, too few calls
        await c.get("/x", service="svc")  # 5 of 10
        assert plugin.state("svc", fault_server.url) is State.OPEN
        await refused(c, "/x", service="svc")
    assert fault_server.hits() == 10
    (event,) = events.received
    assert (event.reason, event.failures, event.calls, event.slow_calls) == (
        "failure_rate",
        5,
        10,
        0,
    )


async def test_exactly_one_of_fifty_half_open_callers_reaches_the_server(
    fault_server: FaultServer, manual_clock: ManualClock, events: Events
) -> None:
    fault_server.script("/x", Fault.status(503), then=Fault.ok(latency=0.2))
    plugin = BreakerPlugin()
    config = document([fault_server.url], consecutive_failures=1, open_duration=5.0)
    async with client(config, plugin, manual_clock, events) as c:
        await c.get("/x", service="svc")
        manual_clock.advance(5.0)
        results = await asyncio.gather(
            *(c.get("/x", service="svc") for _ in range(50)), return_exceptions=True
        )
    answered = [r for r in results if isinstance(r, healkit.Response)]
    refusals = [r for r in results if isinstance(r, healkit.CircuitOpenError)]
    assert (len(answered), len(refusals)) == (1, 49)
    assert fault_server.hits("/x") == 2
    # Refused while the probe was in flight: it may end at any moment.
    assert {r.retry_at for r in refusals} == {manual_clock.now()}
    assert plugin.state("svc", fault_server.url) is State.CLOSED
    assert events.moves() == [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "open_duration_elapsed"),
        ("half_open", "closed", "probes_succeeded"),
    ]


async def test_a_failed_probe_reopens_for_longer_and_a_close_resets_the_duration(
    fault_server: FaultServer, manual_clock: ManualClock, events: Events
) -> None:
    fault_server.script(
        "/x", Fault.status(503), Fault.status(503, latency=0.1), Fault.ok(), Fault.status(503)
    )
    plugin = BreakerPlugin()
    config = document([fault_server.url], consecutive_failures=1, open_duration=5.0)
    async with client(config, plugin, manual_clock, events) as c:
        await c.get("/x", service="svc")
        manual_clock.advance(5.0)
        results = await asyncio.gather(
            *(c.get("/x", service="svc") for _ in range(10)), return_exceptions=True
        )
        assert sum(isinstance(r, healkit.Response) for r in results) == 1
        status = plugin.status("svc", fault_server.url)
        assert status is not None
        assert (status.state, status.trips) == (State.OPEN, 2)
        assert status.retry_at == manual_clock.now() + 10.0
        assert (await refused(c, "/x", service="svc")).retry_at == manual_clock.now() + 10.0
        manual_clock.advance(10.0)
        assert (await c.get("/x", service="svc")).status == 200
        assert plugin.state("svc", fault_server.url) is State.CLOSED
        await c.get("/x", service="svc")  # fails: open again, for the base duration
        assert (await refused(c, "/x", service="svc")).retry_at == manual_clock.now() + 5.0
    assert [reason for *_, reason in events.moves()] == [
        "consecutive_failures",
        "open_duration_elapsed",
        "probe_failed",
        "open_duration_elapsed",
        "probes_succeeded",
        "consecutive_failures",
    ]
    assert fault_server.hits() == 4


class DeclareFailures:
    """Declare 5xx responses failures, as the retry plugin does for retryable statuses."""

    healkit_name = "declare-failures"

    @healkit.hookimpl(tryfirst=True)
    def healkit_post_response(
        self, response: healkit.Response | None
    ) -> healkit.HealkitError | None:
        if response is not None and response.status >= 500:
            return healkit.HTTPStatusError(response.status, url=response.url)
        return None


async def test_a_response_declared_a_failure_by_another_plugin_counts_once(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(503))
    plugin = BreakerPlugin()
    config = document([fault_server.url], consecutive_failures=2)
    async with client(config, plugin, manual_clock, DeclareFailures()) as c:
        with pytest.raises(healkit.HTTPStatusError):
            await c.get("/x", service="svc")
        status = plugin.status("svc", fault_server.url)
        assert status is not None
        assert (status.state, status.failures, status.consecutive_failures) == (
            State.CLOSED,
            1,
            1,
        )
        with pytest.raises(healkit.HTTPStatusError):
            await c.get("/x", service="svc")
        assert plugin.state("svc", fault_server.url) is State.OPEN


async def test_each_endpoint_has_its_own_breaker(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(502))
    plugin = BreakerPlugin()
    async with FaultServer() as healthy:
        bad, good = fault_server.url, healthy.url
        config = document([bad, good], consecutive_failures=2)
        async with client(config, plugin, manual_clock) as c:
            for _ in range(2):
                await c.get(f"{bad}/x")
            error = await refused(c, f"{bad}/x")
            for _ in range(5):
                assert (await c.get(f"{good}/x")).status == 200
        assert healthy.hits() == 5
    assert fault_server.hits() == 2
    assert error.endpoint == bad
    assert (plugin.state("svc", bad), plugin.state("svc", good)) == (State.OPEN, State.CLOSED)
    assert (plugin.available("svc", bad), plugin.available("svc", good)) == (False, True)
    assert [(s.endpoint, s.state) for s in plugin.snapshot()] == sorted(
        [(bad, State.OPEN), (good, State.CLOSED)]
    )


async def test_scope_service_shares_one_breaker_between_endpoints(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(502))
    plugin = BreakerPlugin()
    async with FaultServer() as healthy:
        config = document([fault_server.url, healthy.url], scope="service", consecutive_failures=2)
        async with client(config, plugin, manual_clock) as c:
            for _ in range(2):
                await c.get(f"{fault_server.url}/x")
            error = await refused(c, f"{healthy.url}/x")
        assert healthy.hits() == 0
    assert error.endpoint is None
    assert plugin.state("svc") is plugin.state("svc", healthy.url) is State.OPEN


async def test_operator_modes_at_run_time(
    fault_server: FaultServer, manual_clock: ManualClock, events: Events
) -> None:
    fault_server.set_default(Fault.status(503))
    plugin = BreakerPlugin()
    url = fault_server.url
    runtime = healkit.Runtime(
        config=document([url], consecutive_failures=3),
        plugins=[plugin, events],
        entry_points=False,
        clock=manual_clock,
    )
    async with healkit.Client(runtime=runtime) as c:
        await c.get("/x", service="svc")
        runtime.apply(document([url], consecutive_failures=3, mode="force_open"))
        error = await refused(c, "/x", service="svc")
        assert error.retry_at == float("inf")
        assert fault_server.hits() == 1

        runtime.apply(document([url], consecutive_failures=3, mode="force_closed"))
        for _ in range(5):
            await c.get("/x", service="svc")  # admitted, and still counted
        status = plugin.status("svc", url)
        assert status is not None
        assert (status.state, status.calls, status.consecutive_failures) == (
            State.FORCED_CLOSED,
            6,
            6,
        )

        runtime.apply(document([url], consecutive_failures=3, mode="disabled"))
        for _ in range(5):
            await c.get("/x", service="svc")
        assert plugin.state("svc", url) is State.DISABLED
        runtime.apply(document([url], consecutive_failures=3))
        await c.get("/x", service="svc")
        assert plugin.state("svc", url) is State.CLOSED  # a fresh window: 1 failure
    assert fault_server.hits() == 12
    assert events.moves() == [
        ("closed", "forced_open", "mode"),
        ("forced_open", "forced_closed", "mode"),
        ("forced_closed", "disabled", "mode"),
        ("disabled", "closed", "mode"),
    ]


async def test_a_service_forced_open_from_the_start_sends_nothing(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    plugin = BreakerPlugin()
    async with client(document([fault_server.url], mode="force_open"), plugin, manual_clock) as c:
        assert plugin.state("svc", fault_server.url) is State.FORCED_OPEN
        assert not plugin.available("svc", fault_server.url)
        await refused(c, "/x", service="svc")
    assert fault_server.hits() == 0


async def test_a_compatible_change_keeps_the_window_and_a_new_window_kind_resets(
    fault_server: FaultServer, manual_clock: ManualClock, events: Events
) -> None:
    fault_server.set_default(Fault.status(503))
    plugin = BreakerPlugin()
    url = fault_server.url
    runtime = healkit.Runtime(
        config=document([url], consecutive_failures=3),
        plugins=[plugin, events],
        entry_points=False,
        clock=manual_clock,
    )
    async with healkit.Client(runtime=runtime) as c:
        for _ in range(2):
            await c.get("/x", service="svc")
        runtime.apply(document([url], consecutive_failures=3, failure_rate=0.9))
        with pytest.raises(healkit.ConfigError):
            runtime.apply(document([url], failure_rate=2))  # rejected: nothing changes
        status = plugin.status("svc", url)
        assert status is not None
        assert (status.calls, status.failures) == (2, 2)
        await c.get("/x", service="svc")  # the third failure in a row
        assert plugin.state("svc", url) is State.OPEN

        runtime.apply(document([url], consecutive_failures=3, window="time"))
        status = plugin.status("svc", url)
        assert status is not None
        assert (status.state, status.window, status.calls) == (State.CLOSED, "time", 0)
        assert (await c.get("/x", service="svc")).status == 503  # admitted again
    assert events.moves() == [
        ("closed", "open", "consecutive_failures"),
        ("open", "closed", "reset"),
    ]


async def test_changing_scope_drops_the_endpoint_breakers(
    fault_server: FaultServer, manual_clock: ManualClock, events: Events
) -> None:
    fault_server.set_default(Fault.status(503))
    plugin = BreakerPlugin()
    url = fault_server.url
    runtime = healkit.Runtime(
        config=document([url], consecutive_failures=1),
        plugins=[plugin, events],
        entry_points=False,
        clock=manual_clock,
    )
    async with healkit.Client(runtime=runtime) as c:
        await c.get("/x", service="svc")
        runtime.apply(document([url], consecutive_failures=1, scope="service"))
        assert plugin.snapshot() == ()
        assert plugin.state("svc", url) is State.CLOSED
        await c.get("/x", service="svc")
        (status,) = plugin.snapshot()
        assert (status.endpoint, status.state) == (None, State.OPEN)
    assert events.moves() == [
        ("closed", "open", "consecutive_failures"),
        ("open", "closed", "reset"),
        ("closed", "open", "consecutive_failures"),
    ]


async def test_transition_events_have_a_stable_shape_and_are_logged(
    fault_server: FaultServer, manual_clock: ManualClock, events: Events, logs: list[dict[str, Any]]
) -> None:
    fault_server.set_default(Fault.status(503))
    plugin = BreakerPlugin()
    async with client(
        document([fault_server.url], consecutive_failures=2), plugin, manual_clock, events
    ) as c:
        for _ in range(2):
            await c.get("/x", service="svc")
    (event,) = events.received
    assert event == BreakerTransition(
        service="svc",
        endpoint=fault_server.url,
        from_state=State.CLOSED,
        to_state=State.OPEN,
        reason="consecutive_failures",
        failures=2,
        calls=2,
        slow_calls=0,
        at=manual_clock.now(),
    )
    with pytest.raises(AttributeError):
        event.reason = "mode"  # type: ignore[misc]
    assert msgspec.json.decode(msgspec.json.encode(event)) == {
        "service": "svc",
        "endpoint": fault_server.url,
        "from_state": "closed",
        "to_state": "open",
        "reason": "consecutive_failures",
        "failures": 2,
        "calls": 2,
        "slow_calls": 0,
        "at": manual_clock.now(),
    }
    (entry,) = [e for e in logs if e["event"] == "healkit.breaker_transition"]
    assert entry == {
        "event": "healkit.breaker_transition",
        "log_level": "warning",
        "service": "svc",
        "endpoint": fault_server.url,
        "from_state": "closed",
        "to_state": "open",
        "reason": "consecutive_failures",
        "failures": 2,
        "calls": 2,
        "slow_calls": 0,
        "at": manual_clock.now(),
    }


async def test_a_decorated_function_has_a_per_service_breaker(manual_clock: ManualClock) -> None:
    plugin = BreakerPlugin()
    runtime = healkit.Runtime(
        config=document(name="inventory", consecutive_failures=2),
        plugins=[plugin],
        entry_points=False,
        clock=manual_clock,
    )
    invocations = 0

    @healkit.resilient(service="inventory", runtime=runtime)
    async def fetch() -> str:
        nonlocal invocations
        invocations += 1
        raise ConnectionResetError("peer went away")

    for _ in range(2):
        with pytest.raises(healkit.CallError):
            await fetch()
    with pytest.raises(healkit.CircuitOpenError) as caught:
        await fetch()
    assert invocations == 2
    assert (caught.value.service, caught.value.endpoint) == ("inventory", None)
    assert plugin.state("inventory") is State.OPEN


async def test_slow_calls_trip_the_breaker(manual_clock: ManualClock, events: Events) -> None:
    plugin = BreakerPlugin()
    config = document(
        name="reports",
        window_size=4,
        minimum_calls=4,
        slow_call_threshold=1.0,
        slow_call_rate=0.75,
    )
    runtime = healkit.Runtime(
        config=config, plugins=[plugin, events], entry_points=False, clock=manual_clock
    )

    @healkit.resilient(service="reports", runtime=runtime)
    async def build(seconds: float) -> str:
        await manual_clock.sleep(seconds)
        return "done"

    for seconds in (2.0, 0.5, 1.0, 1.5):  # 1.0 is not slower than the threshold
        assert await build(seconds) == "done"
    assert plugin.state("reports") is State.CLOSED
    await build(3.0)  # the window: 0.5, 1.0, 1.5, 3.0
    assert plugin.state("reports") is State.CLOSED
    await build(3.0)  # 1.0, 1.5, 3.0, 3.0: three of four are slow
    assert events.moves() == [("closed", "open", "slow_call_rate")]
    assert events.received[0].slow_calls == 3


@pytest.mark.parametrize(
    ("statuses", "served", "opens"),
    [
        (None, 429, False),  # 429 counts only when listed
        ([429, 503], 429, True),
        (None, 404, False),  # a client error never counts
        (None, 500, True),
        ([503], 500, False),
    ],
)
async def test_which_statuses_count(
    fault_server: FaultServer,
    manual_clock: ManualClock,
    statuses: list[int] | None,
    served: int,
    opens: bool,
) -> None:
    fault_server.set_default(Fault.status(served))
    plugin = BreakerPlugin()
    options: dict[str, Any] = {"consecutive_failures": 2}
    if statuses is not None:
        options["failure_statuses"] = statuses
    async with client(document([fault_server.url], **options), plugin, manual_clock) as c:
        for _ in range(2):
            assert (await c.get("/x", service="svc")).status == served
    assert (plugin.state("svc", fault_server.url) is State.OPEN) is opens


class ShortLimits:
    """Give every attempt short limits (the timeout plugin has its own distribution)."""

    @healkit.hookimpl
    def healkit_pre_request(self, attempt: healkit.AttemptContext) -> None:
        attempt.timeouts = healkit.Timeouts(connect=1.0, read=0.1, total=0.5)


@pytest.mark.parametrize(
    ("errors", "opens"), [(None, True), (["connect"], False), (["timeout"], True)]
)
async def test_timeouts_count_as_failures_unless_configured_otherwise(
    fault_server: FaultServer, manual_clock: ManualClock, errors: list[str] | None, opens: bool
) -> None:
    fault_server.set_default(Fault.blackhole())
    plugin = BreakerPlugin()
    options: dict[str, Any] = {"consecutive_failures": 2}
    if errors is not None:
        options["failure_errors"] = errors
    async with client(
        document([fault_server.url], **options), plugin, manual_clock, ShortLimits()
    ) as c:
        for _ in range(2):
            with pytest.raises(healkit.ReadTimeout):
                await c.get("/x", service="svc")
    assert (plugin.state("svc", fault_server.url) is State.OPEN) is opens


async def test_refused_connections_count(manual_clock: ManualClock) -> None:
    plugin = BreakerPlugin()
    url = refused_url()
    async with client(document([url], consecutive_failures=2), plugin, manual_clock) as c:
        for _ in range(2):
            with pytest.raises(healkit.ConnectError):
                await c.get("/x", service="svc")
        await refused(c, "/x", service="svc")


class RefuseOnce:
    """Refuse the next attempt, as a retry budget would (runs after the breaker)."""

    healkit_name = "refuse-once"

    def __init__(self) -> None:
        self.armed = False

    @healkit.hookimpl
    def healkit_pre_request(self) -> None:
        if self.armed:
            self.armed = False
            raise healkit.BudgetExhaustedError("no budget left")


async def test_a_refusal_by_another_plugin_frees_the_probe_slot_and_counts_nothing(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/x", Fault.status(503), then=Fault.ok())
    plugin, refuser = BreakerPlugin(), RefuseOnce()
    async with client(
        document([fault_server.url], consecutive_failures=1), plugin, manual_clock, refuser
    ) as c:
        await c.get("/x", service="svc")
        manual_clock.advance(5.0)
        refuser.armed = True
        with pytest.raises(healkit.BudgetExhaustedError):
            await c.get("/x", service="svc")
        assert plugin.state("svc", fault_server.url) is State.HALF_OPEN
        assert plugin.available("svc", fault_server.url)
        assert (await c.get("/x", service="svc")).status == 200
        refuser.armed = True
        with pytest.raises(healkit.BudgetExhaustedError):
            await c.get("/x", service="svc")
        status = plugin.status("svc", fault_server.url)
    assert status is not None
    assert (status.state, status.calls) == (State.CLOSED, 0)
    assert fault_server.hits() == 2


async def test_a_cancelled_probe_frees_its_slot_once_its_attempt_limit_passed(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/x", Fault.status(503), Fault.blackhole(), then=Fault.ok())
    plugin = BreakerPlugin()
    async with client(
        document([fault_server.url], consecutive_failures=1), plugin, manual_clock
    ) as c:
        await c.get("/x", service="svc")
        manual_clock.advance(5.0)
        probe = asyncio.create_task(c.get("/x", service="svc"))
        await fault_server.wait_for_hits(2)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        # No hook saw the end of the probe: its slot stays taken until the
        # attempt's limit (60 s, the core's), after which it must have ended.
        await refused(c, "/x", service="svc")
        manual_clock.advance(60.25)
        assert (await c.get("/x", service="svc")).status == 200
    assert plugin.state("svc", fault_server.url) is State.CLOSED
    assert fault_server.hits() == 3


class CrashOnResponse:
    """A decision plugin whose post_response crashes (runs before the breaker's)."""

    healkit_name = "crash"

    @healkit.hookimpl
    def healkit_post_response(self) -> None:
        raise RuntimeError("bug")


async def test_a_probe_failed_by_another_plugin_frees_its_slot_after_its_limit(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/x", Fault.status(503), then=Fault.ok())
    plugin = BreakerPlugin()
    async with client(
        document([fault_server.url], consecutive_failures=1), plugin, manual_clock
    ) as c:
        await c.get("/x", service="svc")
        manual_clock.advance(5.0)
        crash = CrashOnResponse()
        c.runtime.register(crash, name="crash")
        with pytest.raises(healkit.PluginError):
            await c.get("/x", service="svc")
        # The crash kept the breaker from seeing the probe's end.
        assert plugin.state("svc", fault_server.url) is State.HALF_OPEN
        assert not plugin.available("svc", fault_server.url)
        manual_clock.advance(60.25)
        assert plugin.available("svc", fault_server.url)


async def test_the_read_api_before_any_call(manual_clock: ManualClock) -> None:
    plugin = BreakerPlugin()
    assert plugin.state("anything") is State.CLOSED  # not configured yet
    config = {
        "services": {
            "up": {"endpoints": ["http://up.test"]},
            "down": {"endpoints": ["http://down.test"], "breaker": {"mode": "force_open"}},
            "off": {"breaker": {"mode": "disabled"}},
        }
    }
    healkit.Runtime(config=config, plugins=[plugin], entry_points=False, clock=manual_clock)
    assert plugin.state("up", "http://up.test") is State.CLOSED
    assert plugin.state("unknown") is State.CLOSED
    assert plugin.state("down", "http://down.test") is State.FORCED_OPEN
    assert plugin.state("off") is State.DISABLED
    assert plugin.available("up", "http://up.test")
    assert not plugin.available("down", "http://down.test")
    assert plugin.status("up", "http://up.test") is None
    assert plugin.snapshot() == ()


async def test_the_breaker_refuses_before_other_plugins_prepare_the_attempt(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    seen: list[int] = []

    class Later:
        @healkit.hookimpl(tryfirst=True)
        def healkit_pre_request(self, attempt: healkit.AttemptContext) -> None:
            seen.append(attempt.number)

    fault_server.set_default(Fault.status(503))
    plugin = BreakerPlugin()
    # Registered before the breaker, so the breaker (newer) runs first among tryfirst ones.
    runtime = healkit.Runtime(
        config=document([fault_server.url], consecutive_failures=1),
        plugins=[Later(), plugin],
        entry_points=False,
        clock=manual_clock,
    )
    async with healkit.Client(runtime=runtime) as c:
        await c.get("/x", service="svc")
        await refused(c, "/x", service="svc")
    assert seen == [1]


async def test_with_the_retry_plugin_each_attempt_counts_once_and_the_retry_waits_for_a_probe(
    fault_server: FaultServer, manual_clock: ManualClock, events: Events
) -> None:
    from healkit_retry import RetryPlugin  # noqa: PLC0415 - only this test needs both plugins

    fault_server.script("/x", *[Fault.status(503)] * 3, then=Fault.ok())
    plugin = BreakerPlugin()
    config = document([fault_server.url], consecutive_failures=3, open_duration=2.0)
    # Waiting for the breaker is opted into (the default fails fast: test_breaker_wait.py).
    config["services"]["svc"]["retry"] = {
        "attempts": 5,
        "base": 0.01,
        "cap": 5.0,
        "max_circuit_wait": 5.0,
    }
    async with client(config, plugin, manual_clock, RetryPlugin(), events) as c:
        response = await c.get("/x", service="svc")
    assert response.status == 200
    assert fault_server.hits("/x") == 4  # the refused attempt sent nothing
    assert response.outcome is not None
    assert [a.error for a in response.outcome.attempts][-2:] == ["CircuitOpenError", None]
    # From the trip to the probe, the retry waited exactly the open duration.
    assert sum(manual_clock.sleeps[-2:]) == pytest.approx(2.0)
    # The retry plugin declared each 503 a failure; the breaker counted each once.
    first = events.received[0]
    assert (first.reason, first.failures, first.calls) == ("consecutive_failures", 3, 3)
    assert events.moves() == [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "open_duration_elapsed"),
        ("half_open", "closed", "probes_succeeded"),
    ]


async def test_with_the_retry_plugin_a_forced_open_breaker_stops_at_once_and_says_why(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    from healkit_retry import RetryPlugin  # noqa: PLC0415 - only this test needs both plugins

    config = document([fault_server.url], mode="force_open")
    async with client(config, BreakerPlugin(), manual_clock, RetryPlugin()) as c:
        error = await refused(c, "/x", service="svc")
    assert "held open until an operator closes it" in str(error)
    assert manual_clock.sleeps == []
    assert fault_server.hits() == 0
