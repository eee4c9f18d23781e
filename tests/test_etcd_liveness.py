"""A watch stream that dies silently (packets dropped, no reset) is noticed and resumed."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import anyio
import pytest

import healkit
from healkit.etcd import EtcdClient, EtcdSource, EtcdSourceStatus
from healkit.testing import EtcdServer, TcpProxy, capture_events

pytestmark = pytest.mark.anyio

ROOT = "/healkit/test/"
DEADLINE = 20.0  # a generous ceiling for a loaded machine, not the bound under test
LIVENESS = 0.6


def doc(endpoint: str) -> bytes:
    return json.dumps({"endpoints": [endpoint]}).encode()


async def until(source: EtcdSource, condition: Callable[[EtcdSourceStatus], bool]) -> None:
    with anyio.fail_after(DEADLINE):
        await source.wait_until(condition)


async def test_a_blackholed_watch_is_noticed_and_a_change_made_meanwhile_applied(
    etcd_server: EtcdServer,
) -> None:
    async with (
        etcd_server.client() as direct,
        TcpProxy("127.0.0.1", etcd_server.port) as proxy,
        EtcdClient(proxy.url, timeout=2.0, connect_timeout=0.5) as via,
    ):
        await direct.put(ROOT + "services/a", doc("http://a.test"))
        source = EtcdSource(via, namespace="test", liveness_timeout=LIVENESS, random=lambda: 0.0)
        runtime = healkit.Runtime(config=source, entry_points=False)
        async with runtime:
            # A change through the watch: the stream is open and delivering.
            first = await direct.put(ROOT + "services/b", doc("http://b.test"))
            await until(source, lambda s: s.applied_revision == first.revision)
            with capture_events() as logs:
                proxy.blackhole()  # no reset: the stream just goes quiet
                meanwhile = await direct.put(ROOT + "services/c", doc("http://c.test"))
                await until(source, lambda s: s.connection == "unreachable")
                assert source.status.applied_revision == first.revision
                proxy.unblock()  # the old connection stays dead; new ones work
                await until(source, lambda s: s.applied_revision == meanwhile.revision)
            assert source.status.connection == "connected"
            assert set(runtime.config.services) == {"a", "b", "c"}
    unreachable = [e for e in logs if e["event"] == "healkit.etcd_unreachable"]
    assert len(unreachable) == 1
    assert "is dead" in unreachable[0]["reason"]
    assert any(e["event"] == "healkit.etcd_reconnected" for e in logs)


async def test_a_silent_stream_on_a_working_path_is_noticed_by_the_change_it_misses(
    etcd_server: EtcdServer,
) -> None:
    async with (
        etcd_server.client() as direct,
        TcpProxy("127.0.0.1", etcd_server.port) as proxy,
        EtcdClient(proxy.url, timeout=2.0, connect_timeout=0.5) as via,
    ):
        source = EtcdSource(via, namespace="test", liveness_timeout=LIVENESS, random=lambda: 0.0)
        runtime = healkit.Runtime(config=source, entry_points=False)
        async with runtime:
            first = await direct.put(ROOT + "services/a", doc("http://a.test"))
            await until(source, lambda s: s.applied_revision == first.revision)
            with capture_events() as logs:
                # Only the connections open now go silent (a NAT that forgot
                # them); new ones work, so the source's probes are answered.
                proxy.blackhole()
                proxy.unblock()
                meanwhile = await direct.put(ROOT + "services/b", doc("http://b.test"))
                await until(source, lambda s: s.applied_revision == meanwhile.revision)
            assert set(runtime.config.services) == {"a", "b"}
    reasons = [e["reason"] for e in logs if e["event"] == "healkit.etcd_unreachable"]
    assert len(reasons) == 1
    assert f"did not deliver revision {meanwhile.revision}" in reasons[0]


async def test_a_watch_that_is_never_confirmed_times_out(etcd_server: EtcdServer) -> None:
    async with (
        etcd_server.client() as direct,
        TcpProxy("127.0.0.1", etcd_server.port) as proxy,
        EtcdClient(proxy.url, timeout=2.0, connect_timeout=0.5) as via,
    ):
        await direct.put(ROOT + "services/a", doc("http://a.test"))
        source = EtcdSource(via, namespace="test", liveness_timeout=LIVENESS, random=lambda: 0.0)
        await source.load()  # the bootstrap read, then etcd hangs before the watch
        proxy.blackhole()
        with capture_events() as logs:
            async with anyio.create_task_group() as group:
                group.start_soon(source.watch, _Sink())
                await until(source, lambda s: s.connection == "unreachable")
                group.cancel_scope.cancel()
    reasons = [e["reason"] for e in logs if e["event"] == "healkit.etcd_unreachable"]
    # The client gives up on the endpoint within connect_timeout (0.5 s), before
    # the source's own limit (the liveness timeout) runs out.
    assert "/v3/watch" in reasons[0]
    assert "timed out" in reasons[0]


async def test_client_sockets_have_tcp_keepalive(etcd_server: EtcdServer) -> None:
    async with etcd_server.client() as client, client.watch("/k") as watch:
        # The stream's own socket, as the kernel sees it (no public handle on it).
        stream = watch._stream
        assert stream is not None
        response = stream._response
        assert response is not None
        assert response.connection is not None
        sock = response.connection.transport.get_extra_info("socket")  # type: ignore[union-attr]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1


def test_the_liveness_timeout_is_checked() -> None:
    client = EtcdClient("http://127.0.0.1:2379")
    with pytest.raises(ValueError, match="liveness_timeout"):
        EtcdSource(client, liveness_timeout=0)


class _Sink:
    """A ConfigSink that accepts everything (the test watches the source's status)."""

    def submit(self, raw: object, *, origin: str) -> None:
        del raw, origin

    def reject(self, error: object) -> None:
        del error

    def emit(self, event: object) -> None:
        del event
