"""Fleet health in an ejection storm: reports are coalesced and rate-limited per instance."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

import healkit
from healkit._routing.fleet import REPORT_PERIOD, FleetHealth, ServiceView
from healkit.etcd import EtcdSource, WatchResponse
from healkit.testing import EtcdServer, Fault, FaultServer, ManualClock

pytestmark = pytest.mark.anyio

NAMESPACE = "storm"
ROOT = f"/healkit/{NAMESPACE}/"
HEALTH = ROOT + "health/"
SERVICE = "inventory"


def no_view() -> tuple[Mapping[str, ServiceView], float | None]:
    return {}, None


async def next_change(watch: Any) -> WatchResponse:
    with anyio.fail_after(10):
        async for response in watch:
            if response.events:
                return response  # type: ignore[no-any-return]
    raise AssertionError("the watch ended")


async def test_a_burst_of_report_changes_is_one_write_per_period(
    etcd_server: EtcdServer,
) -> None:
    clock = ManualClock(auto_advance=False)
    fleet = FleetHealth("one")
    async with etcd_server.client() as etcd:
        start = (await etcd.status()).revision
        async with (
            etcd.watch(HEALTH, prefix=True, start_revision=start + 1) as watch,
            anyio.create_task_group() as group,
        ):
            fleet.report(SERVICE, "http://a.test", out=True)
            group.start_soon(fleet.publish_forever, etcd, ROOT, 10, no_view, clock)
            first = await next_change(watch)
            assert [e.kv.key.decode() for e in first.events] == [
                f"{HEALTH}{SERVICE}/http%3A%2F%2Fa.test/one"
            ]
            # A burst within the period: a flaps back and out, b out and back, c out.
            fleet.report(SERVICE, "http://a.test", out=False)
            fleet.report(SERVICE, "http://a.test", out=True)
            fleet.report(SERVICE, "http://b.test", out=True)
            fleet.report(SERVICE, "http://b.test", out=False)
            fleet.report(SERVICE, "http://c.test", out=True)
            with anyio.fail_after(10):
                await clock.wait_for_sleepers()  # held back until the period has passed
            clock.advance(REPORT_PERIOD)
            second = await next_change(watch)
            # One write: the net change only.
            assert [(e.type, e.kv.key.decode()) for e in second.events] == [
                ("PUT", f"{HEALTH}{SERVICE}/http%3A%2F%2Fc.test/one")
            ]
            records = await etcd.range_all(HEALTH, prefix=True)
            group.cancel_scope.cancel()
    # a's record was never taken back and written again: it is the first write's.
    assert {kv.key.decode().split("/")[-2]: kv.mod_revision for kv in records.kvs} == {
        "http%3A%2F%2Fa.test": first.revision,
        "http%3A%2F%2Fc.test": second.revision,
    }


async def test_when_a_primary_dies_each_instance_writes_its_report_once(
    etcd_server: EtcdServer,
) -> None:
    count = 12
    async with (
        FaultServer() as bad,
        FaultServer() as good,
        etcd_server.client() as writer,
        AsyncExitStack() as stack,
    ):
        bad.set_default(Fault.status(503))
        routing = {"eject_after": 1, "eject_time": 60.0, "fleet": {"ttl": 5, "quorum": count}}
        document = {"endpoints": [bad.url, good.url], "routing": routing}
        await writer.put(f"{ROOT}services/{SERVICE}", json.dumps(document).encode())
        etcd = await stack.enter_async_context(etcd_server.client())
        sources, clients = [], []
        for _ in range(count):
            source = EtcdSource(etcd, namespace=NAMESPACE)
            client = healkit.Client(config=source, entry_points=False)
            clients.append(await stack.enter_async_context(client))
            sources.append(source)
        async with anyio.create_task_group() as group:
            for client in clients:  # the primary fails for everyone at once
                for _ in range(3):
                    group.start_soon(functools.partial(client.get, "/", service=SERVICE))
        routers = [client.runtime.plugin_manager.get_plugin("routing") for client in clients]

        def reports(router: Any) -> int:
            return {s.endpoint: s.fleet_reports for s in router.status(SERVICE)}[bad.url]

        # The quorum (every instance) is reached everywhere.
        with anyio.fail_after(20):
            for source, router in zip(sources, routers, strict=True):
                while reports(router) < count:
                    await source.wait_until(lambda s, r=router: reports(r) >= count)
        writes = await writer.range_all(HEALTH, prefix=True)
        assert len(writes.kvs) == count
        # One revision per instance: each wrote its report once, nothing more.
        assert len({kv.mod_revision for kv in writes.kvs}) == count
        assert all(kv.version == 1 for kv in writes.kvs)
