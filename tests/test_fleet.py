"""Fleet health through etcd: instances share which endpoints they took out."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import msgspec
import pytest

import healkit
from healkit._clock import SYSTEM_CLOCK
from healkit._routing.fleet import InstanceView
from healkit.etcd import EtcdClient, EtcdSource, WatchEvent
from healkit.testing import EtcdServer, Fault, FaultServer, ManualClock, TcpProxy
from healkit_breaker import BreakerPlugin

pytestmark = pytest.mark.anyio

SERVICE = "inventory"
NAMESPACE = "fleet"
HEALTH = f"/healkit/{NAMESPACE}/health/"
INSTANCES = f"/healkit/{NAMESPACE}/instances/"
KEY = f"/healkit/{NAMESPACE}/services/{SERVICE}"


def document(bad: str, good: str, **fleet: Any) -> bytes:
    routing = {"eject_after": 1, "eject_time": 60.0, "fleet": {"ttl": 2, **fleet}}
    return json.dumps({"endpoints": [bad, good], "routing": routing}).encode()


class Instance:
    """One client process of the fleet: its own etcd client, source and healkit client."""

    def __init__(self, source: EtcdSource, client: healkit.Client) -> None:
        self.source = source
        self.client = client

    @property
    def router(self) -> Any:
        return self.client.runtime.plugin_manager.get_plugin("routing")

    def reporters(self, endpoint: str) -> int:
        return {s.endpoint: s.fleet_reports for s in self.router.status(SERVICE)}[endpoint]

    async def caught_up(self, revision: int) -> None:
        with anyio.fail_after(10):
            await self.source.wait_until(lambda s: s.applied_revision >= revision)


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[FaultServer, FaultServer]]:
    async with FaultServer() as bad, FaultServer() as good:
        bad.set_default(Fault.status(503))
        yield bad, good


async def start(
    stack: AsyncExitStack, url: str, *plugins: object, clock: healkit.Clock = SYSTEM_CLOCK
) -> Instance:
    etcd = await stack.enter_async_context(EtcdClient(url, timeout=2.0, connect_timeout=1.0))
    source = EtcdSource(etcd, namespace=NAMESPACE)
    client = await stack.enter_async_context(
        healkit.Client(config=source, plugins=plugins, entry_points=False, clock=clock)
    )
    return Instance(source, client)


async def next_health_change(etcd: EtcdClient, after: int) -> tuple[WatchEvent, int]:
    """Wait for the next health record written or deleted after revision ``after``."""
    with anyio.fail_after(10):
        async with etcd.watch(HEALTH, prefix=True, start_revision=after + 1) as watch:
            async for response in watch:
                if response.events:
                    return response.events[0], response.revision
    raise AssertionError("the watch ended")


async def test_an_instance_routes_around_an_endpoint_another_one_took_out(
    etcd_server: EtcdServer, upstreams: tuple[FaultServer, FaultServer]
) -> None:
    bad, good = upstreams
    async with AsyncExitStack() as stack, etcd_server.client() as etcd:
        put = await etcd.put(
            f"/healkit/{NAMESPACE}/services/{SERVICE}", document(bad.url, good.url)
        )
        a = await start(stack, etcd_server.url)
        b = await start(stack, etcd_server.url)
        await a.client.get("/x", service=SERVICE)  # a: 503 from bad, ejected and reported
        event, revision = await next_health_change(etcd, put.revision)
        assert event.type == "PUT"
        assert event.kv.key.decode().startswith(HEALTH + SERVICE + "/")
        await b.caught_up(revision)
        assert b.reporters(bad.url) == 1
        for _ in range(3):
            response = await b.client.get("/x", service=SERVICE)
            assert response.outcome.endpoint == good.url  # type: ignore[union-attr]
    assert bad.hits() == 1  # b never tried it


async def test_with_a_quorum_of_two_one_report_is_not_enough(
    etcd_server: EtcdServer, upstreams: tuple[FaultServer, FaultServer]
) -> None:
    bad, good = upstreams
    async with AsyncExitStack() as stack, etcd_server.client() as etcd:
        put = await etcd.put(KEY, document(bad.url, good.url, quorum=2))
        a, b, c = [await start(stack, etcd_server.url) for _ in range(3)]
        await a.client.get("/x", service=SERVICE)
        _, first = await next_health_change(etcd, put.revision)
        await b.caught_up(first)
        assert b.reporters(bad.url) == 1
        # Round-robin: b's two calls go to bad and to good; bad is still in play.
        ends = {(await b.client.get("/x", service=SERVICE)).outcome.endpoint for _ in range(2)}  # type: ignore[union-attr]
        assert bad.url in ends
        await c.client.get("/x", service=SERVICE)  # c agrees (its first call hits bad)
        _, second = await next_health_change(etcd, first)
        await b.caught_up(second)
        assert b.reporters(bad.url) >= 2
        hits = bad.hits()
        for _ in range(3):
            await b.client.get("/x", service=SERVICE)
        assert bad.hits() == hits


async def test_a_dead_instances_reports_expire_with_its_lease(
    etcd_server: EtcdServer, upstreams: tuple[FaultServer, FaultServer]
) -> None:
    bad, good = upstreams
    port = int(etcd_server.url.rsplit(":", 1)[1])
    async with (
        AsyncExitStack() as stack,
        etcd_server.client() as etcd,
        TcpProxy("127.0.0.1", port) as proxy,
    ):
        put = await etcd.put(
            f"/healkit/{NAMESPACE}/services/{SERVICE}", document(bad.url, good.url)
        )
        a = await start(stack, proxy.url)  # a reaches etcd through the proxy only
        b = await start(stack, etcd_server.url)
        await a.client.get("/x", service=SERVICE)
        _, reported = await next_health_change(etcd, put.revision)
        await b.caught_up(reported)
        assert b.reporters(bad.url) == 1
        proxy.block()  # a is cut off: its lease is no longer refreshed
        await proxy.cut()
        event, expired = await next_health_change(etcd, reported)
        assert event.type == "DELETE"
        await b.caught_up(expired)
        assert b.reporters(bad.url) == 0


async def test_a_good_probe_takes_the_report_back(
    etcd_server: EtcdServer, upstreams: tuple[FaultServer, FaultServer]
) -> None:
    bad, good = upstreams
    probe = {
        "path": "/health",
        "interval": 0.1,
        "timeout": 0.1,
        "healthy_threshold": 2,
        "unhealthy_threshold": 2,
    }
    routing = {"probe": probe, "fleet": {"ttl": 5}}
    async with AsyncExitStack() as stack, etcd_server.client() as etcd:
        put = await etcd.put(
            KEY, json.dumps({"endpoints": [bad.url, good.url], "routing": routing}).encode()
        )
        await start(stack, etcd_server.url)
        reported, revision = await next_health_change(etcd, put.revision)  # probes: down
        assert reported.type == "PUT"
        bad.set_default(Fault.ok())
        taken_back, _ = await next_health_change(etcd, revision)  # probes: back
        assert taken_back.type == "DELETE"
        assert taken_back.kv.key == reported.kv.key


async def instance_views(etcd: EtcdClient) -> dict[str, InstanceView]:
    found = await etcd.range_all(INSTANCES, prefix=True)
    views = [msgspec.json.decode(kv.value, type=InstanceView) for kv in found.kvs]
    return {view.instance: view for view in views}


async def wait_for_view(
    etcd: EtcdClient, instance: str, holds: Callable[[InstanceView | None], bool]
) -> InstanceView | None:
    """Wait until the record of ``instance`` satisfies ``holds`` (watching, not polling)."""
    with anyio.fail_after(10):
        async with etcd.watch(INSTANCES, prefix=True) as watch:
            view = (await instance_views(etcd)).get(instance)
            if holds(view):
                return view
            async for _ in watch:
                view = (await instance_views(etcd)).get(instance)
                if holds(view):
                    return view
    raise AssertionError("the watch ended")


async def test_each_instance_publishes_its_own_view_for_healkit_status(
    etcd_server: EtcdServer, upstreams: tuple[FaultServer, FaultServer]
) -> None:
    bad, good = upstreams
    routing = {"fallback_groups": [[good.url]], "eject_after": 1, "eject_time": 60.0}
    service = {
        "endpoints": [bad.url],
        "routing": {**routing, "fleet": {"ttl": 5, "quorum": 2}},
        "breaker": {"consecutive_failures": 1, "minimum_calls": 1, "open_duration": 30.0},
    }
    async with AsyncExitStack() as stack, etcd_server.client() as etcd:
        await etcd.put(KEY, json.dumps(service).encode())
        a = await start(stack, etcd_server.url, BreakerPlugin())
        b = await start(stack, etcd_server.url, BreakerPlugin())
        response = await a.client.get("/x", service=SERVICE)  # 503: ejected, breaker open
        # The call itself moved on to the fallback group (routing.retry_other_groups).
        assert [r.endpoint for r in response.outcome.attempts] == [bad.url, good.url]  # type: ignore[union-attr]
        name_a, name_b = a.router.fleet_instance, b.router.fleet_instance

        def a_ejected(view: InstanceView | None) -> bool:
            # Ejected, and a's own report heard back from etcd (a later rewrite).
            primary = None if view is None else view.services[SERVICE].endpoints[0]
            return primary is not None and not primary.usable and primary.fleet_reports == 1

        seen_a = await wait_for_view(etcd, name_a, a_ejected)
        assert seen_a is not None
        own = seen_a.services[SERVICE]
        assert (own.traffic_group, own.traffic) == (1, (good.url,))
        primary = own.endpoints[0]
        assert (primary.endpoint, primary.group, primary.down) == (bad.url, 0, False)
        assert primary.ejected_until is not None
        assert primary.ejected_until > time.time() + 50  # 60 s of ejection, as Unix time
        assert primary.breaker == "open"
        assert primary.breaker_retry_at is not None
        assert primary.fleet_reports == 1
        # b: one report is below its quorum of 2, so b still sends to the primary.
        seen_b = await wait_for_view(
            etcd,
            name_b,
            lambda v: v is not None and v.services[SERVICE].endpoints[0].fleet_reports == 1,
        )
        assert seen_b is not None
        assert seen_b.services[SERVICE].traffic == (bad.url,)
        assert seen_b.services[SERVICE].endpoints[0].breaker == "closed"
        await stack.aclose()  # both instances stop: their leases are revoked
        assert await instance_views(etcd) == {}


async def test_an_instance_rewrites_its_view_when_an_ejection_runs_out(
    etcd_server: EtcdServer, upstreams: tuple[FaultServer, FaultServer]
) -> None:
    bad, good = upstreams
    routing = {"eject_after": 1, "eject_time": 2.5, "fleet": {"ttl": 5}}
    service = {"endpoints": [bad.url, good.url], "routing": routing}
    clock = ManualClock(auto_advance=False)
    async with AsyncExitStack() as stack, etcd_server.client() as etcd:
        await etcd.put(KEY, json.dumps(service).encode())
        a = await start(stack, etcd_server.url, clock=clock)
        name = a.router.fleet_instance

        def usable(view: InstanceView | None) -> bool | None:
            return None if view is None else view.services[SERVICE].endpoints[0].usable

        await wait_for_view(etcd, name, lambda view: usable(view) is True)
        started = await etcd.get(KEY)
        assert started is not None
        await a.client.get("/x", service=SERVICE)  # 503 from bad: ejected for 2.5 s
        # The instance hears its own report back (a change of its view) before
        # the clock moves: else the echo, heard at any moment, wakes the publisher.
        _, reported = await next_health_change(etcd, started.mod_revision)
        await a.caught_up(reported)
        assert a.reporters(bad.url) == 1
        # The view was written just now: the next write waits out VIEW_PERIOD (1 s).
        # Two sleepers: the publisher, and its lease keeper (a refresh every 5/3 s).
        await sleeping(clock, 2)
        clock.advance(1.0)
        await wait_for_view(etcd, name, lambda view: usable(view) is False)
        # No call, no event: the instance knew when the ejection would end, 1.5 s on.
        await sleeping(clock, 2)
        clock.advance(1.0)  # wakes the lease keeper (due at 5/3 s), not the publisher
        assert clock.sleeping == 1  # not yet
        await sleeping(clock, 2)  # the lease keeper refreshed and sleeps again
        clock.advance(0.5)
        back = await wait_for_view(etcd, name, lambda view: usable(view) is True)
        assert back is not None
        assert back.services[SERVICE].traffic == (bad.url, good.url)
    publisher = [seconds for seconds in clock.sleeps if seconds != LEASE_REFRESH]
    assert publisher[:2] == [1.0, 1.5]  # one period, then to the ejection's end
    assert clock.sleeps.count(LEASE_REFRESH) >= 2  # the lease is kept on the runtime's clock


LEASE_REFRESH = 5 / 3  # the lease keeper's pause: TTL/3


async def sleeping(clock: ManualClock, count: int = 1) -> None:
    """Wait until ``count`` tasks (the fleet health publisher, its lease keeper) sleep."""
    with anyio.fail_after(10):
        await clock.wait_for_sleepers(count)
