"""Fleet-wide rate limits: instances share one rate, counted from fleet health in real etcd."""

from __future__ import annotations

import contextlib
import json
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

import healkit
from healkit.etcd import EtcdClient, EtcdSource, PutOp
from healkit.testing import EtcdServer, ManualClock
from healkit_limit import LimitPlugin, LimitSettings, LimitStatus

pytestmark = pytest.mark.anyio

SERVICE = "quota"
NAMESPACE = "fleetrate"
KEY = f"/healkit/{NAMESPACE}/services/{SERVICE}"
INSTANCES = f"/healkit/{NAMESPACE}/instances/"
RATE = 30.0
# A long TTL: the manual clock never advances, so the leases are never refreshed.
FLEET_RATE: dict[str, Any] = {
    "routing": {"fleet": {"ttl": 60}},
    "limit": {"rate": RATE, "burst": 30, "rate_scope": "fleet"},
}


class Instance:
    """One member of the fleet: its own etcd client, source, runtime and limit plugin."""

    def __init__(self, source: EtcdSource, runtime: healkit.Runtime, plugin: LimitPlugin) -> None:
        self.source = source
        self.runtime = runtime
        self.plugin = plugin

        @healkit.resilient(service=SERVICE, runtime=runtime)
        async def call() -> str:
            return "ok"

        self.call = call

    async def touch(self) -> None:
        """Make a call, so that the service's limits exist (a fleet's share starts empty)."""
        with contextlib.suppress(healkit.RateLimitedError):
            await self.call()

    async def caught_up(self, revision: int) -> None:
        with anyio.fail_after(10):
            await self.source.wait_until(lambda s: s.applied_revision >= revision)

    def status(self) -> LimitStatus:
        status = self.plugin.status(SERVICE)
        assert status is not None
        return status


async def start(stack: AsyncExitStack, url: str, clock: ManualClock) -> Instance:
    etcd = await stack.enter_async_context(EtcdClient(url, timeout=2.0, connect_timeout=1.0))
    source = EtcdSource(etcd, namespace=NAMESPACE)
    plugin = LimitPlugin()
    runtime = healkit.Runtime(config=source, plugins=[plugin], entry_points=False, clock=clock)
    await stack.enter_async_context(runtime)
    return Instance(source, runtime, plugin)


async def records(etcd: EtcdClient, count: int) -> int:
    """Wait until etcd holds ``count`` instance records (watching); return that revision."""
    with anyio.fail_after(10):
        async with etcd.watch(INSTANCES, prefix=True) as watch:
            found = await etcd.range_all(INSTANCES, prefix=True)
            if len(found.kvs) == count:
                return found.revision
            async for _ in watch:
                found = await etcd.range_all(INSTANCES, prefix=True)
                if len(found.kvs) == count:
                    return found.revision
    raise AssertionError("the watch ended")


async def test_three_instances_share_the_rate_and_rebalance_when_one_stops(
    etcd_server: EtcdServer,
) -> None:
    clock = ManualClock(auto_advance=False)
    async with etcd_server.client() as etcd, AsyncExitStack() as fleet:
        await etcd.put(KEY, json.dumps(FLEET_RATE).encode())
        a = await start(fleet, etcd_server.url, clock)
        b = await start(fleet, etcd_server.url, clock)
        async with AsyncExitStack() as leaving:
            c = await start(leaving, etcd_server.url, clock)
            revision = await records(etcd, 3)
            for instance in (a, b, c):
                await instance.caught_up(revision)
                await instance.touch()
                status = instance.status()
                assert (status.instances, status.rate, status.burst) == (3, RATE / 3, 10.0)
        revision = await records(etcd, 2)  # c stopped: its lease was revoked with its record
        for instance in (a, b):
            await instance.caught_up(revision)
            status = instance.status()
            assert (status.instances, status.rate, status.burst) == (2, RATE / 2, 15.0)
        # A newcomer takes its share, and the others give up theirs.
        d = await start(fleet, etcd_server.url, clock)
        revision = await records(etcd, 3)
        for instance in (a, b, d):
            await instance.caught_up(revision)
        await d.touch()
        for instance in (a, b, d):
            assert (instance.status().instances, instance.status().rate) == (3, RATE / 3)


async def test_the_share_starts_empty_and_fills_on_the_injected_clock(
    etcd_server: EtcdServer,
) -> None:
    clock = ManualClock(auto_advance=False)
    document = {**FLEET_RATE, "limit": {"rate": 4.0, "burst": 4, "rate_scope": "fleet"}}
    async with etcd_server.client() as etcd, AsyncExitStack() as fleet:
        await etcd.put(KEY, json.dumps(document).encode())
        a = await start(fleet, etcd_server.url, clock)
        b = await start(fleet, etcd_server.url, clock)
        revision = await records(etcd, 2)
        await a.caught_up(revision)
        await b.caught_up(revision)
        # A newcomer's full bucket would be tokens the fleet never earned.
        with pytest.raises(healkit.RateLimitedError, match="2 calls/s") as refused:
            await a.call()
        assert refused.value.retry_after == pytest.approx(0.5)  # a's share: 2 tokens a second
        clock.advance(5.0)  # the bucket fills up to a's share of the burst: 2 of 4
        assert await a.call() == "ok"
        assert await a.call() == "ok"
        with pytest.raises(healkit.RateLimitedError):
            await a.call()
        assert a.status().tokens == pytest.approx(0.0)


async def test_without_an_etcd_source_a_fleet_rate_refuses_rather_than_guess() -> None:
    config = {"services": {SERVICE: {"limit": FLEET_RATE["limit"]}}}
    runtime = healkit.Runtime(config=config, plugins=[LimitPlugin()], entry_points=False)

    @healkit.resilient(service=SERVICE, runtime=runtime)
    async def call() -> str:
        return "ok"

    async with runtime:
        with pytest.raises(healkit.RateLimitedError, match="fleet's size is unknown"):
            await call()


async def test_without_fleet_health_records_a_fleet_rate_waits_then_refuses(
    etcd_server: EtcdServer,
) -> None:
    clock = ManualClock(auto_advance=False)
    document = {"limit": FLEET_RATE["limit"]}  # no routing.fleet: nobody writes a record
    async with etcd_server.client() as etcd, AsyncExitStack() as fleet:
        await etcd.put(KEY, json.dumps(document).encode())
        a = await start(fleet, etcd_server.url, clock)
        async with anyio.create_task_group() as group:
            group.start_soon(advance_once_asleep, clock, LimitSettings().max_wait)
            with pytest.raises(healkit.RateLimitedError, match=r"routing\.fleet") as refused:
                await a.call()
        assert refused.value.may_have_reached_server is False
        assert a.status().instances == 1


async def test_an_attempt_waits_for_the_first_records_then_takes_its_share(
    etcd_server: EtcdServer,
) -> None:
    clock = ManualClock(auto_advance=False)
    document = {"limit": FLEET_RATE["limit"]}
    async with etcd_server.client() as etcd, AsyncExitStack() as fleet:
        await etcd.put(KEY, json.dumps(document).encode())
        a = await start(fleet, etcd_server.url, clock)

        async def records_appear() -> None:
            with anyio.fail_after(10):
                await clock.wait_for_sleepers(1)  # the attempt waits for the fleet's size
            puts = [PutOp(key=(INSTANCES + name).encode(), value=b"{}") for name in ("a", "b")]
            await etcd.txn(success=puts)

        async with anyio.create_task_group() as group:
            group.start_soon(records_appear)
            # Counted, then refused by its share's bucket (empty at first), not for the count.
            with pytest.raises(healkit.RateLimitedError, match="15 calls/s") as refused:
                await a.call()
        assert refused.value.retry_after == pytest.approx(1 / 15)
        status = a.status()
        assert (status.instances, status.rate, status.burst) == (2, RATE / 2, 15.0)


async def advance_once_asleep(clock: ManualClock, seconds: float) -> None:
    with anyio.fail_after(10):
        await clock.wait_for_sleepers(1)
    clock.advance(seconds)


def test_a_fleet_scope_needs_a_rate() -> None:
    with pytest.raises(ValueError, match="needs rate"):
        LimitSettings(rate_scope="fleet")


@pytest.mark.parametrize(
    ("instances", "rate", "size"),
    [(0, 8.0, 4.0), (1, 8.0, 4.0), (2, 4.0, 2.0), (8, 1.0, 1.0), (100, 0.08, 1.0)],
)
def test_each_share_keeps_at_least_one_token(instances: int, rate: float, size: float) -> None:
    settings = LimitSettings(rate=8.0, burst=4, rate_scope="fleet")
    share, bucket = settings.bucket(instances)
    assert share == pytest.approx(rate)
    assert bucket == size
    assert LimitSettings(rate=8.0, burst=4).bucket(instances) == (8.0, 4.0)
