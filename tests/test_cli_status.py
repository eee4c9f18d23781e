"""``healkit status`` says where traffic goes as the router decides it, against a real etcd.

The command runs its own ``asyncio.run``: here it runs in a worker thread
while the test's loop holds a real instance (a ``healkit.Client`` following
the same namespace), so the two answers come from one state of etcd.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import anyio
import pytest

import healkit
from healkit.etcd import EtcdSource
from healkit.testing import EtcdServer, FaultServer
from tests.cli_support import Run, cli, connect

pytestmark = pytest.mark.anyio

NAMESPACE = "status-routing"
ROOT = f"/healkit/{NAMESPACE}/"


async def status(server: EtcdServer, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    run: Run = await anyio.to_thread.run_sync(
        lambda: cli(capsys, "status", "--json", *connect(server, NAMESPACE))
    )
    assert run.status == 0, run.err
    report: dict[str, Any] = json.loads(run.out)
    return report


async def test_status_and_router_choose_the_same_group_when_defaults_set_fleet_health(
    etcd_server: EtcdServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # Fleet health and its quorum come from the defaults, not from the service's
    # document, and the primary endpoint is written with a trailing slash: the
    # router reads the merged policy with normalized endpoints, and so must status.
    async with FaultServer() as primary, FaultServer() as backup:
        defaults = {"routing": {"fleet": {"quorum": 2}}}
        payments = {
            "endpoints": [primary.url + "/"],
            "routing": {"fallback_groups": [[backup.url]]},
        }
        async with etcd_server.client() as etcd:
            await etcd.put(ROOT + "defaults", json.dumps(defaults))
            await etcd.put(ROOT + "services/payments", json.dumps(payments))
            for instance in ("host-1", "host-2"):  # two other instances took it out
                key = f"{ROOT}health/payments/{quote(primary.url, safe='')}/{instance}"
                await etcd.put(key, "out")

            report = await status(etcd_server, capsys)
            seen = report["fleet"]["payments"]
            assert seen["quorum"] == 2
            assert seen["endpoints"] == [
                {"endpoint": primary.url, "group": 0, "reported_out_by": ["host-1", "host-2"]},
                {"endpoint": backup.url, "group": 1, "reported_out_by": []},
            ]
            assert seen["traffic"] == {"group": 1, "endpoints": [backup.url]}

            source = EtcdSource(etcd, namespace=NAMESPACE)
            async with healkit.Client(config=source, entry_points=False) as client:
                response = await client.get("/", service="payments")
                assert response.status == 200
                assert response.outcome is not None
                assert response.outcome.endpoint == backup.url
                assert response.outcome.path == "fallback"

        # Once one report is gone the primary is below the quorum: both say group 0.
        async with etcd_server.client() as etcd:
            await etcd.delete(f"{ROOT}health/payments/{quote(primary.url, safe='')}/host-2")
            report = await status(etcd_server, capsys)
            assert report["fleet"]["payments"]["traffic"] == {
                "group": 0,
                "endpoints": [primary.url],
            }
            source = EtcdSource(etcd, namespace=NAMESPACE)
            async with healkit.Client(config=source, entry_points=False) as client:
                response = await client.get("/", service="payments")
                assert response.outcome is not None
                assert response.outcome.endpoint == primary.url


async def test_status_text_says_the_primary_group_is_tried_when_every_endpoint_is_out(
    etcd_server: EtcdServer, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = "http://a.internal:8080"
    async with etcd_server.client() as etcd:
        await etcd.put(
            ROOT + "services/payments",
            json.dumps({"endpoints": [endpoint], "routing": {"fleet": {}}}),
        )
        await etcd.put(f"{ROOT}health/payments/{quote(endpoint, safe='')}/host-1", "out")
    report = await status(etcd_server, capsys)
    assert report["fleet"]["payments"]["traffic"] is None
    run: Run = await anyio.to_thread.run_sync(
        lambda: cli(capsys, "status", *connect(etcd_server, NAMESPACE))
    )
    assert "service payments (quorum 1):" in run.out
    assert "traffic now: nowhere healthy (the primary group is tried anyway)" in run.out


async def test_status_fleet_view_holds_the_valid_documents_only(
    etcd_server: EtcdServer, capsys: pytest.CaptureFixture[str]
) -> None:
    async with etcd_server.client() as etcd:
        await etcd.put(ROOT + "services/payments", json.dumps({"endpoints": ["http://a.internal"]}))
        await etcd.put(ROOT + "services/broken", json.dumps({"endpoints": ["ftp://b.internal"]}))
        run: Run = await anyio.to_thread.run_sync(
            lambda: cli(capsys, "status", "--json", *connect(etcd_server, NAMESPACE))
        )
        assert run.status == 1
        fleet = json.loads(run.out)["fleet"]
        assert list(fleet) == ["payments"]
        assert fleet["payments"]["quorum"] is None  # no fleet health: reports do not count
        assert fleet["payments"]["traffic"] == {"group": 0, "endpoints": ["http://a.internal"]}

        # Invalid defaults: instances keep what they applied last, which etcd no longer shows.
        await etcd.put(ROOT + "defaults", json.dumps({"routing": {"fleet": {"quorum": 0}}}))
        run = await anyio.to_thread.run_sync(
            lambda: cli(capsys, "status", "--json", *connect(etcd_server, NAMESPACE))
        )
        assert run.status == 1
        assert json.loads(run.out)["fleet"] == {}
