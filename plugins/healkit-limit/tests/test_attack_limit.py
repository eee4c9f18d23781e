"""Red-team checks of the limit plugin: configuration changes with waiters, odd latencies."""

from __future__ import annotations

import asyncio
import contextlib
import json
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest
from limit_helpers import GUARD, GatedServer, document, within

import healkit
import healkit_limit._fleet
from healkit.etcd import EtcdClient, EtcdSource, PutOp
from healkit.testing import EtcdServer, FaultServer, ManualClock
from healkit_limit import LimitPlugin

pytestmark = pytest.mark.anyio


def client(config: dict[str, Any], plugin: LimitPlugin, clock: ManualClock) -> healkit.Client:
    return healkit.Client(config=config, plugins=[plugin], entry_points=False, clock=clock)


@pytest.mark.parametrize(
    "relaxed",
    [
        pytest.param({}, id="every-limit-off"),
        pytest.param({"throttle": True}, id="concurrency-off-throttle-on"),
    ],
)
async def test_turning_the_concurrency_limit_off_lets_the_waiters_go_at_once(
    gated: GatedServer, relaxed: dict[str, Any]
) -> None:
    # The clock never moves: before the fix the waiters stayed queued until
    # max_wait (60 s) ran out, or a slot of the dropped limiter came free.
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    limited = document([gated.url], concurrency=1, queue=5, max_wait=60.0)
    async with client(limited, plugin, clock) as c:
        tasks = [asyncio.create_task(c.get("/x", service="svc")) for _ in range(3)]
        await within(gated.wait_for_active(1))
        await within(clock.wait_for_sleepers(2))
        c.runtime.apply(document([gated.url], **relaxed))
        await within(gated.wait_for_active(3))
        gated.gate.set()
        responses = await within(asyncio.gather(*tasks))
    assert [r.status for r in responses] == [200] * 3


async def test_a_scope_change_lets_the_waiters_of_the_dropped_endpoint_limits_go(
    gated: GatedServer,
) -> None:
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    per_endpoint = document([gated.url], scope="endpoint", concurrency=1, queue=5, max_wait=60.0)
    async with client(per_endpoint, plugin, clock) as c:
        tasks = [asyncio.create_task(c.get("/x", service="svc")) for _ in range(2)]
        await within(gated.wait_for_active(1))
        await within(clock.wait_for_sleepers(1))
        c.runtime.apply(document([gated.url], concurrency=5))
        await within(gated.wait_for_active(2))
        gated.gate.set()
        responses = await within(asyncio.gather(*tasks))
    assert [r.status for r in responses] == [200] * 2


async def test_zero_latency_answers_keep_the_adaptive_limit(fault_server: FaultServer) -> None:
    # A clock that does not move between an attempt's start and end measures
    # 0 s: the upstream is exactly as fast as unloaded, nothing to shrink for.
    # Before the fix the gradient read 0 / 0 as "infinitely slower" and halved
    # the limit at each answer, down to min_concurrency.
    clock = ManualClock(auto_advance=False)
    plugin = LimitPlugin()
    config = document([fault_server.url], concurrency=50, adaptive=True)
    async with client(config, plugin, clock) as c:
        for _ in range(40):
            assert (await c.get("/ok", service="svc")).status == 200
    status = plugin.status("svc")
    assert status is not None
    assert (status.limit, status.min_rtt) == (50, 0.0)


@pytest.mark.parametrize("manual", [True, False], ids=["manual-clock", "monotonic-clock"])
async def test_a_cancellation_storm_as_slots_are_handed_over_leaks_no_slot(
    gated: GatedServer, manual: bool
) -> None:
    # The gate opens and every queued call is cancelled in the same loop turn:
    # some waiters are cancelled after they were handed a slot, before they ran.
    plugin = LimitPlugin()
    config = document([gated.url], concurrency=2, queue=50, max_wait=60.0)
    clock = ManualClock(auto_advance=False) if manual else healkit.MonotonicClock()
    async with healkit.Client(
        config=config, plugins=[plugin], entry_points=False, clock=clock
    ) as c:
        running = [asyncio.create_task(c.get("/x", service="svc")) for _ in range(2)]
        await within(gated.wait_for_active(2))
        queued = [asyncio.create_task(c.get("/x", service="svc")) for _ in range(20)]
        with anyio.fail_after(GUARD):
            while (status := plugin.status("svc")) is None or status.queued < 20:  # noqa: ASYNC110
                await asyncio.sleep(0)  # the plugin has no event for "queued": let the tasks run
        gated.gate.set()
        for task in queued:
            task.cancel()
        await within(asyncio.gather(*running, *queued, return_exceptions=True))
        status = plugin.status("svc")
        assert status is not None
        assert (status.in_flight, status.queued) == (0, 0)
        more = [asyncio.create_task(c.get("/x", service="svc")) for _ in range(2)]
        assert [r.status for r in await within(asyncio.gather(*more))] == [200, 200]


async def test_hostile_instance_records_are_bounded_and_malformed_ones_ignored(
    etcd_server: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small cap, so the test writes a few dozen records instead of 10,000.
    monkeypatch.setattr(healkit_limit._fleet, "MAX_INSTANCES", 40)
    namespace, service = "hostile", "quota"
    root = f"/healkit/{namespace}/"
    fleet_rate = {
        "routing": {"fleet": {"ttl": 60}},
        "limit": {"rate": 80.0, "burst": 80, "rate_scope": "fleet"},
    }
    clock = ManualClock(auto_advance=False)
    async with etcd_server.client() as etcd, AsyncExitStack() as stack:
        await etcd.put(f"{root}services/{service}", json.dumps(fleet_rate).encode())
        client = await stack.enter_async_context(
            EtcdClient(etcd_server.url, timeout=2.0, connect_timeout=1.0)
        )
        source = EtcdSource(client, namespace=namespace)
        plugin = LimitPlugin()
        runtime = healkit.Runtime(config=source, plugins=[plugin], entry_points=False, clock=clock)
        await stack.enter_async_context(runtime)

        @healkit.resilient(service=service, runtime=runtime)
        async def call() -> str:
            return "ok"

        async def counted(revision: int) -> int:
            with anyio.fail_after(GUARD):
                await source.wait_until(lambda s: s.applied_revision >= revision)
            with contextlib.suppress(healkit.RateLimitedError):
                await call()  # the limits exist once a call was made
            status = plugin.status(service)
            assert status is not None
            assert status.instances is not None
            return status.instances

        with anyio.fail_after(GUARD):  # the runtime writes its own record as it starts
            async with etcd.watch(f"{root}instances/", prefix=True) as watch:
                own = await etcd.range_all(f"{root}instances/", prefix=True)
                while not own.kvs:
                    await anext(aiter(watch))  # a response: a record may have come
                    own = await etcd.range_all(f"{root}instances/", prefix=True)
        assert await counted(own.revision) == 1
        intruders = [
            PutOp(key=f"{root}instances/intruder-{i}".encode(), value=b"\xff{") for i in range(100)
        ]
        malformed = [
            PutOp(key=f"{root}instances/".encode(), value=b"x"),  # the prefix itself
            PutOp(key=f"{root}instances/nested/deeper".encode(), value=b"x"),
            PutOp(key=f"{root}instancesX".encode(), value=b"x"),
        ]
        written = await etcd.txn(success=[*intruders, *malformed])
        assert await counted(written.revision) == 40  # capped, not 101 or 104
        status = plugin.status(service)
        assert status is not None
        assert (status.rate, status.burst) == (2.0, 2.0)
        gone = await etcd.delete(f"{root}instances/intruder-", prefix=True)
        assert await counted(gone.revision) == 1
