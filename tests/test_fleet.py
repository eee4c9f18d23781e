"""Fleet health through etcd: instances share which endpoints they took out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

import healkit
from healkit.etcd import EtcdClient, EtcdSource, WatchEvent
from healkit.testing import EtcdServer, Fault, FaultServer, TcpProxy

pytestmark = pytest.mark.anyio

SERVICE = "inventory"
NAMESPACE = "fleet"
HEALTH = f"/healkit/{NAMESPACE}/health/"
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


async def start(stack: AsyncExitStack, url: str) -> Instance:
    etcd = await stack.enter_async_context(EtcdClient(url, timeout=2.0, connect_timeout=1.0))
    source = EtcdSource(etcd, namespace=NAMESPACE)
    client = await stack.enter_async_context(healkit.Client(config=source, entry_points=False))
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
