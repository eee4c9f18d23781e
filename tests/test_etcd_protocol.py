"""A server that is not etcd is never taken for one: every reply must carry etcd's header."""

from __future__ import annotations

from typing import Any

import pytest

import healkit
from healkit import EtcdProtocolError
from healkit.etcd import EtcdClient, EtcdSource
from healkit.testing import Fault, FaultServer

pytestmark = pytest.mark.anyio

# What an HTTP server that is not etcd may well answer, with status 200.
NOT_ETCD = [
    {},
    {"kvs": []},
    {"status": "ok", "data": [1, 2, 3]},
    {"header": {}},
    {"header": {"revision": "5"}},  # no cluster or member ID: not etcd's header
]


@pytest.fixture(params=NOT_ETCD, ids=["empty", "kvs", "random", "empty-header", "revision-only"])
def not_etcd(request: pytest.FixtureRequest, fault_server: FaultServer) -> FaultServer:
    answer: Any = request.param
    fault_server.set_default(Fault.json(answer))
    return fault_server


async def test_put_is_not_taken_as_written(not_etcd: FaultServer) -> None:
    async with EtcdClient(not_etcd.url) as client:
        with pytest.raises(EtcdProtocolError, match="is it an etcd v3 JSON gateway"):
            await client.put("/k", b"v")


async def test_reads_and_status_are_refused(not_etcd: FaultServer) -> None:
    async with EtcdClient(not_etcd.url) as client:
        with pytest.raises(EtcdProtocolError, match="/v3/kv/range"):
            await client.range("/k")
        with pytest.raises(EtcdProtocolError, match="/v3/kv/range"):
            await client.range_all("/healkit/", prefix=True)
        with pytest.raises(EtcdProtocolError, match="/v3/maintenance/status"):
            await client.status()
        with pytest.raises(EtcdProtocolError, match="/v3/lease/grant"):
            await client.lease_grant(5)


async def test_a_source_does_not_start_connected_with_nothing(not_etcd: FaultServer) -> None:
    async with EtcdClient(not_etcd.url) as client:
        source = EtcdSource(client, namespace="test")
        runtime = healkit.Runtime(config=source, entry_points=False)
        with pytest.raises(EtcdProtocolError):
            async with runtime:
                pass
        assert source.status.connection != "connected"


async def test_a_watch_stream_without_etcd_header_is_refused(fault_server: FaultServer) -> None:
    fault_server.script("/v3/watch", Fault.ok(body=b'{"result": {"created": true}}\n'))
    async with EtcdClient(fault_server.url) as client:
        with pytest.raises(EtcdProtocolError, match="no etcd header"):
            await client.watch("/k").__aenter__()


async def test_etcd_itself_passes(etcd_server: Any) -> None:
    async with etcd_server.client() as client:
        put = await client.put("/k", b"v")
        assert put.revision > 0
        status = await client.status()
        assert status.cluster_id > 0
