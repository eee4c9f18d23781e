"""The snapshot file keeps its promise: written from the bootstrap on, for one namespace."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

import healkit
from healkit import ConfigError, EtcdUnavailableError
from healkit.etcd import EtcdClient, EtcdSource
from healkit.testing import EtcdServer, TcpProxy, capture_events

pytestmark = pytest.mark.anyio

DEADLINE = 10.0


def doc(endpoint: str) -> bytes:
    return json.dumps({"endpoints": [endpoint]}).encode()


async def test_a_restart_without_any_change_since_the_last_start_uses_the_snapshot(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    snapshot = tmp_path / "healkit-etcd.json"
    async with etcd_server.client() as etcd:
        written = await etcd.put("/healkit/test/services/a", doc("http://a.test"))
        first = healkit.Runtime(
            config=EtcdSource(etcd, namespace="test", snapshot_path=snapshot), entry_points=False
        )
        async with first:  # no change at all while it runs
            assert set(first.config.services) == {"a"}
    stored = json.loads(snapshot.read_bytes())
    assert stored["root"] == "/healkit/test/"
    assert stored["revision"] == written.revision
    assert stored["cluster_id"] > 0
    assert snapshot.stat().st_mode & 0o777 == 0o600
    await etcd_server.stop()
    async with etcd_server.client(timeout=1.0, connect_timeout=0.5) as etcd:
        source = EtcdSource(etcd, namespace="test", snapshot_path=snapshot)
        second = healkit.Runtime(config=source, entry_points=False)
        async with second:
            assert set(second.config.services) == {"a"}
            assert source.status.from_snapshot is True
            assert source.status.applied_revision == written.revision


async def test_a_snapshot_of_another_namespace_is_refused(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    snapshot = tmp_path / "healkit-etcd.json"
    async with etcd_server.client() as etcd:
        await etcd.put("/healkit/ns-a/services/a", doc("http://a.test"))
        async with healkit.Runtime(
            config=EtcdSource(etcd, namespace="ns-a", snapshot_path=snapshot), entry_points=False
        ):
            pass
    await etcd_server.stop()
    async with etcd_server.client(timeout=1.0, connect_timeout=0.5) as etcd:
        source = EtcdSource(etcd, namespace="ns-b", snapshot_path=snapshot)
        with pytest.raises(ConfigError, match="/healkit/ns-a/, not of /healkit/ns-b/") as caught:
            await source.load()
        assert caught.value.origin == str(snapshot)
        assert isinstance(caught.value.__cause__ or caught.value.__context__, EtcdUnavailableError)


async def test_a_snapshot_of_another_cluster_is_replaced_whole_and_said_so(
    tmp_path: Path,
) -> None:
    snapshot = tmp_path / "healkit-etcd.json"
    async with (
        EtcdServer() as first,
        EtcdServer() as other,
        first.client() as a,
        other.client() as b,
    ):
        for n in range(5):  # cluster A is far ahead of cluster B in revisions
            await a.put("/healkit/test/services/x", doc(f"http://x{n}.test"))
        await b.put("/healkit/test/services/y", doc("http://y.test"))
        async with healkit.Runtime(
            config=EtcdSource(a, namespace="test", snapshot_path=snapshot), entry_points=False
        ):
            pass
        a_cluster = (await a.status()).cluster_id
        b_cluster = (await b.status()).cluster_id
        assert a_cluster != b_cluster
        async with TcpProxy("127.0.0.1", other.port) as proxy:
            proxy.block()  # etcd is away at the start: the snapshot (of cluster A) serves
            async with EtcdClient(proxy.url, timeout=1.0, connect_timeout=0.5) as via:
                source = EtcdSource(via, namespace="test", snapshot_path=snapshot)
                runtime = healkit.Runtime(config=source, entry_points=False)
                async with runtime:
                    assert set(runtime.config.services) == {"x"}
                    with capture_events() as logs:
                        proxy.unblock()  # cluster B answers
                        with anyio.fail_after(DEADLINE):
                            await source.wait_until(lambda s: not s.from_snapshot)
                    assert set(runtime.config.services) == {"y"}
        refused = [e for e in logs if e["event"] == "healkit.etcd_snapshot_refused"]
        assert len(refused) == 1
        assert refused[0]["snapshot_cluster"] == f"{a_cluster:x}"
        assert refused[0]["etcd_cluster"] == f"{b_cluster:x}"
        assert json.loads(snapshot.read_bytes())["cluster_id"] == b_cluster
