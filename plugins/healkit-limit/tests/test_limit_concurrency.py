"""The concurrency limit against a real loopback upstream: slots, the queue, refusals."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from limit_helpers import GatedServer, document, within

import healkit
from healkit.testing import ManualClock
from healkit_limit import LimitPlugin

pytestmark = pytest.mark.anyio


def client(config: dict[str, Any], plugin: LimitPlugin, **options: Any) -> healkit.Client:
    return healkit.Client(config=config, plugins=[plugin], entry_points=False, **options)


async def test_exactly_n_attempts_reach_the_server_and_the_rest_wait(gated: GatedServer) -> None:
    clock = ManualClock(auto_advance=False)  # a queued attempt's wait sleeps on it: observable
    plugin = LimitPlugin()
    config = document([gated.url], concurrency=3, queue=10, max_wait=60.0)
    async with client(config, plugin, clock=clock) as c:
        tasks = [asyncio.create_task(c.get("/x", service="svc")) for _ in range(8)]
        await within(gated.wait_for_active(3))
        await within(clock.wait_for_sleepers(5))
        status = plugin.status("svc")
        assert status is not None
        assert (status.limit, status.in_flight, status.queued) == (3, 3, 5)
        assert gated.active == 3
        gated.gate.set()
        responses = await asyncio.gather(*tasks)
    assert [r.status for r in responses] == [200] * 8
    assert gated.max_active == 3
    assert gated.hits == 8
    after = plugin.status("svc")
    assert after is not None
    assert (after.in_flight, after.queued) == (0, 0)


async def test_a_full_queue_refuses_at_once_without_sending(gated: GatedServer) -> None:
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    config = document([gated.url], concurrency=2, queue=1, max_wait=60.0)
    async with client(config, plugin, clock=clock) as c:
        tasks = [asyncio.create_task(c.get("/x", service="svc")) for _ in range(3)]
        await within(gated.wait_for_active(2))
        await within(clock.wait_for_sleepers(1))
        with pytest.raises(healkit.ConcurrencyLimitError) as caught:
            await c.get("/x", service="svc")
        gated.gate.set()
        await asyncio.gather(*tasks)
    error = caught.value
    assert isinstance(error, healkit.OverloadError)
    assert isinstance(error, healkit.LimitError)
    assert error.may_have_reached_server is False
    assert (error.service, error.endpoint) == ("svc", None)
    assert "2 in flight (limit 2) and 1 waiting (queue 1)" in str(error)
    assert [a.error for a in error.attempts] == ["ConcurrencyLimitError"]
    assert gated.hits == 3


async def test_no_queue_refuses_the_attempt_over_the_limit(gated: GatedServer) -> None:
    plugin = LimitPlugin()
    async with client(document([gated.url], concurrency=1), plugin) as c:
        task = asyncio.create_task(c.get("/x", service="svc"))
        await within(gated.wait_for_active(1))
        with pytest.raises(healkit.ConcurrencyLimitError):
            await c.get("/x", service="svc")
        gated.gate.set()
        await task
    assert gated.hits == 1


async def test_the_wait_runs_out_on_the_call_clock(gated: GatedServer) -> None:
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    config = document([gated.url], concurrency=1, queue=5, max_wait=2.0)
    async with client(config, plugin, clock=clock) as c:
        first = asyncio.create_task(c.get("/x", service="svc"))
        await within(gated.wait_for_active(1))
        second = asyncio.create_task(c.get("/x", service="svc"))
        await within(clock.wait_for_sleepers())
        clock.advance(1.999)
        await asyncio.sleep(0)
        assert not second.done()
        clock.advance(0.001)
        with pytest.raises(healkit.ConcurrencyLimitError) as caught:
            await second
        gated.gate.set()
        await first
    assert "no slot of 1 came free within 2s" in str(caught.value)
    assert gated.hits == 1  # the second attempt was never sent
    status = plugin.status("svc")
    assert status is not None
    assert (status.in_flight, status.queued) == (0, 0)


async def test_the_wait_never_outlasts_the_call_deadline(gated: GatedServer) -> None:
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    config = document([gated.url], concurrency=1, queue=5, max_wait=30.0)
    async with client(config, plugin, clock=clock) as c:
        first = asyncio.create_task(c.get("/x", service="svc"))
        await within(gated.wait_for_active(1))
        second = asyncio.create_task(c.get("/x", service="svc", deadline=0.5))
        await within(clock.wait_for_sleepers())
        assert clock.sleeps[-1] == pytest.approx(0.5)
        clock.advance(0.5)
        with pytest.raises(healkit.ConcurrencyLimitError):
            await second
        gated.gate.set()
        await first


async def test_a_cancelled_call_gives_its_slot_and_its_place_back(gated: GatedServer) -> None:
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    config = document([gated.url], concurrency=1, queue=5, max_wait=60.0)
    async with client(config, plugin, clock=clock) as c:
        holder = asyncio.create_task(c.get("/x", service="svc"))
        await within(gated.wait_for_active(1))
        waiter = asyncio.create_task(c.get("/x", service="svc"))
        await within(clock.wait_for_sleepers(1))
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        status = plugin.status("svc")
        assert status is not None
        assert (status.in_flight, status.queued) == (0, 0)
        gated.gate.set()
        response = await c.get("/x", service="svc")
    assert response.status == 200


async def test_a_refusal_is_answered_by_the_degraded_template(gated: GatedServer) -> None:
    plugin = LimitPlugin()
    config = document([gated.url], concurrency=1)
    config["services"]["svc"]["degraded"] = {
        "template": {"status": 503, "json": {"error": "${error_type}"}},
        "when_failed": True,
    }
    async with client(config, plugin) as c:
        task = asyncio.create_task(c.get("/x", service="svc"))
        await within(gated.wait_for_active(1))
        degraded = await c.get("/x", service="svc")
        gated.gate.set()
        await task
    assert degraded.status == 503
    assert degraded.json() == {"error": "ConcurrencyLimitError"}
    assert degraded.outcome.path == "degraded"


async def test_per_endpoint_limits_are_separate() -> None:
    plugin = LimitPlugin()
    async with GatedServer() as one, GatedServer() as two:
        config = document([one.url], concurrency=1, scope="endpoint")
        async with client(config, plugin) as c:
            first = asyncio.create_task(c.get(one.url + "/x", service="svc"))
            other = asyncio.create_task(c.get(two.url + "/x", service="svc"))
            await within(one.wait_for_active(1))
            await within(two.wait_for_active(1))
            with pytest.raises(healkit.ConcurrencyLimitError) as caught:
                await c.get(one.url + "/x", service="svc")
            one.gate.set()
            two.gate.set()
            await asyncio.gather(first, other)
    assert caught.value.endpoint == one.url


async def test_limits_hold_for_decorated_functions_too() -> None:
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    runtime = healkit.Runtime(
        clock=clock,
        config=document(concurrency=2, queue=10, max_wait=60.0),
        plugins=[plugin],
        entry_points=False,
    )
    running = 0
    most = 0
    entered = asyncio.Event()
    release = asyncio.Event()

    @healkit.resilient(service="svc", runtime=runtime)
    async def work() -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if running == 2:
            entered.set()
        try:
            await release.wait()
        finally:
            running -= 1
        return "done"

    async with runtime:
        tasks = [asyncio.create_task(work()) for _ in range(6)]
        await within(entered.wait())
        await within(clock.wait_for_sleepers(4))  # the other four wait in the queue
        assert running == 2
        release.set()
        results = await asyncio.gather(*tasks)
    assert results == ["done"] * 6
    assert most == 2


class CrashOnResponse:
    """A decision plugin whose ``healkit_post_response`` crashes."""

    healkit_name = "crash-on-response"

    @healkit.hookimpl(tryfirst=True)
    def healkit_post_response(self) -> None:
        raise RuntimeError("boom")


async def test_a_plugin_crash_after_admission_gives_the_slot_back(gated: GatedServer) -> None:
    plugin = LimitPlugin()
    gated.gate.set()
    config = document([gated.url], concurrency=1)
    options: dict[str, Any] = {"plugins": [CrashOnResponse(), plugin], "entry_points": False}
    async with healkit.Client(config=config, **options) as c:
        for _ in range(3):  # with the slot lost, the second call would be refused
            with pytest.raises(healkit.PluginError):
                await c.get("/x", service="svc")
    status = plugin.status("svc")
    assert status is not None
    assert status.in_flight == 0


async def test_an_attempt_waiting_for_its_token_holds_no_slot(gated: GatedServer) -> None:
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    config = document(
        [gated.url], concurrency=2, rate=10.0, burst=1, rate_mode="smooth", max_wait=1.0
    )
    async with client(config, plugin, clock=clock) as c:
        first = asyncio.create_task(c.get("/x", service="svc"))
        await within(gated.wait_for_active(1))
        second = asyncio.create_task(c.get("/x", service="svc"))
        await within(clock.wait_for_sleepers(1))  # its token is due in 0.1 s
        status = plugin.status("svc")
        assert status is not None
        assert (status.in_flight, status.queued) == (1, 0)
        clock.advance(0.1)
        await within(gated.wait_for_active(2))
        gated.gate.set()
        responses = await asyncio.gather(first, second)
    assert [r.status for r in responses] == [200, 200]


async def test_a_full_endpoint_sends_the_call_to_the_fallback_group() -> None:
    plugin = LimitPlugin()
    async with GatedServer() as primary, GatedServer() as fallback:
        fallback.gate.set()
        config = document([primary.url], concurrency=1, scope="endpoint")
        config["services"]["svc"]["routing"] = {"fallback_groups": [[fallback.url]]}
        async with client(config, plugin) as c:
            holder = asyncio.create_task(c.get("/x", service="svc"))
            await within(primary.wait_for_active(1))
            moved = await c.get("/x", service="svc")
            primary.gate.set()
            await holder
    assert moved.status == 200
    assert moved.outcome.endpoint == fallback.url
    assert [a.error for a in moved.outcome.attempts] == ["ConcurrencyLimitError", None]
    assert primary.hits == 1


async def test_a_full_service_does_not_try_every_endpoint() -> None:
    plugin = LimitPlugin()
    async with GatedServer() as primary, GatedServer() as fallback:
        config = document([primary.url], concurrency=1)
        config["services"]["svc"]["routing"] = {"fallback_groups": [[fallback.url]]}
        async with client(config, plugin) as c:
            holder = asyncio.create_task(c.get("/x", service="svc"))
            await within(primary.wait_for_active(1))
            with pytest.raises(healkit.ConcurrencyLimitError) as caught:
                await c.get("/x", service="svc")
            primary.gate.set()
            await holder
    assert len(caught.value.attempts) == 1
    assert fallback.hits == 0
