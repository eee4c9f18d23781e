"""EtcdSource against a real etcd: bootstrap, hot reload, rejections, cuts, compaction, snapshot."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import healkit
from healkit import ConfigError, plain_document
from healkit.etcd import EtcdClient, EtcdSource, EtcdSourceStatus, PutOp
from healkit.testing import EtcdServer, ManualClock, TcpProxy, capture_events

pytestmark = pytest.mark.anyio

ROOT = "/healkit/test/"
DEADLINE = 10.0


def doc(endpoint: str, **fields: Any) -> bytes:
    return json.dumps({"endpoints": [endpoint], **fields}).encode()


async def until(source: EtcdSource, condition: Callable[[EtcdSourceStatus], bool]) -> None:
    with anyio.fail_after(DEADLINE):
        await source.wait_until(condition)


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with etcd_server.client() as client:
        yield client


async def test_bootstrap_then_hot_reload_of_puts_and_deletes(etcd: EtcdClient) -> None:
    await etcd.put(ROOT + "defaults", b'{"max_body_bytes": 1024}')
    await etcd.put(ROOT + "services/a", doc("http://a.test"))
    await etcd.put("/healkit/other/services/x", doc("http://x.test"))  # another namespace
    runtime = healkit.Runtime(config=EtcdSource(etcd, namespace="test"), entry_points=False)
    async with runtime:
        assert set(runtime.config.services) == {"a"}
        assert runtime.config.policy("a").max_body_bytes == 1024
        version = runtime.version
        await etcd.put(ROOT + "services/b", b"endpoints: [http://b.test]\n")  # YAML
        with anyio.fail_after(DEADLINE):
            await runtime.wait_for_version(version + 1)
        assert runtime.config.policy("b").endpoints == ("http://b.test",)
        await etcd.delete(ROOT + "services/a")
        with anyio.fail_after(DEADLINE):
            await runtime.wait_for_version(version + 2)
        assert set(runtime.config.services) == {"b"}


async def test_an_invalid_document_keeps_that_services_last_good_one(etcd: EtcdClient) -> None:
    await etcd.put(ROOT + "services/a", doc("http://a.test", max_body_bytes=10))
    source = EtcdSource(etcd, namespace="test")
    runtime = healkit.Runtime(config=source, entry_points=False)
    async with runtime:
        version = runtime.version
        with capture_events() as logs:
            # One transaction: a broken document for a, a good one for b.
            result = await etcd.txn(
                success=[
                    PutOp(key=(ROOT + "services/a").encode(), value=doc("ftp://a.test")),
                    PutOp(key=(ROOT + "services/b").encode(), value=doc("http://b.test")),
                ]
            )
            with anyio.fail_after(DEADLINE):
                await runtime.wait_for_version(version + 1)
        assert runtime.config.policy("a").endpoints == ("http://a.test",)
        assert runtime.config.policy("a").max_body_bytes == 10
        assert runtime.config.policy("b").endpoints == ("http://b.test",)
        assert source.status.rejected == {"services/a": result.revision}
        (rejected,) = [e for e in logs if e["event"] == "healkit.etcd_document_rejected"]
        assert rejected["key"] == ROOT + "services/a"
        assert rejected["revision"] == result.revision
        assert rejected["path"] == "$.services.a.endpoints[0]"
        # Fixed: the key is no longer listed as rejected.
        await etcd.put(ROOT + "services/a", doc("http://a2.test"))
        with anyio.fail_after(DEADLINE):
            await runtime.wait_for_version(version + 2)
        assert runtime.config.policy("a").endpoints == ("http://a2.test",)
        assert source.status.rejected == {}


async def test_an_undecodable_document_is_rejected_alone(etcd: EtcdClient) -> None:
    await etcd.put(ROOT + "services/a", doc("http://a.test"))
    source = EtcdSource(etcd, namespace="test")
    runtime = healkit.Runtime(config=source, entry_points=False)
    async with runtime:
        version = runtime.version
        await etcd.put(ROOT + "services/a", b"{not json")
        await etcd.put(ROOT + "services/b", doc("http://b.test"))
        with anyio.fail_after(DEADLINE):
            await runtime.wait_for_version(version + 1)
        assert runtime.config.policy("a").endpoints == ("http://a.test",)
        assert "services/a" in source.status.rejected


async def test_a_channel_overlay_applies_only_to_its_channel(etcd: EtcdClient) -> None:
    await etcd.put(ROOT + "services/a", doc("http://a.test", max_body_bytes=10))
    await etcd.put(ROOT + "channels/canary/services/a", b'{"max_body_bytes": 20}')
    plain = healkit.Runtime(config=EtcdSource(etcd, namespace="test"), entry_points=False)
    canary = healkit.Runtime(
        config=EtcdSource(etcd, namespace="test", channel="canary"), entry_points=False
    )
    async with plain, canary:
        assert plain.config.policy("a").max_body_bytes == 10
        assert canary.config.policy("a").max_body_bytes == 20
        assert canary.config.policy("a").endpoints == ("http://a.test",)


async def test_cut_connections_resume_from_the_last_applied_revision(
    etcd_server: EtcdServer,
) -> None:
    port = int(etcd_server.url.rsplit(":", 1)[1])
    async with TcpProxy("127.0.0.1", port) as proxy, EtcdClient(proxy.url, timeout=2.0) as via:
        source = EtcdSource(via, namespace="test", random=lambda: 0.1)
        runtime = healkit.Runtime(config=source, entry_points=False)
        async with runtime, etcd_server.client() as direct:
            proxy.block()
            await proxy.cut()
            await until(source, lambda s: s.connection == "unreachable")
            await direct.put(ROOT + "services/a", doc("http://a.test"))
            last = await direct.put(ROOT + "services/b", doc("http://b.test"))
            assert set(runtime.config.services) == set()  # serving the last good one
            proxy.unblock()
            await until(source, lambda s: s.applied_revision == last.revision)
            assert set(runtime.config.services) == {"a", "b"}
            assert source.status.connection == "connected"
            assert source.status.last_error is not None


async def test_compacted_history_while_away_is_read_again_with_the_deletes(
    etcd_server: EtcdServer,
) -> None:
    port = int(etcd_server.url.rsplit(":", 1)[1])
    async with etcd_server.client() as direct:
        await direct.put(ROOT + "services/a", doc("http://a.test"))
        async with (
            TcpProxy("127.0.0.1", port) as proxy,
            EtcdClient(proxy.url, timeout=2.0) as via,
        ):
            source = EtcdSource(via, namespace="test", random=lambda: 0.1)
            runtime = healkit.Runtime(config=source, entry_points=False)
            async with runtime:
                proxy.block()
                await proxy.cut()
                await until(source, lambda s: s.connection == "unreachable")
                await direct.delete(ROOT + "services/a")
                await direct.put(ROOT + "services/b", doc("http://b.test"))
                last = await direct.put(ROOT + "services/b", doc("http://b2.test"))
                await etcd_server.compact(last.revision)
                with capture_events() as logs:
                    proxy.unblock()
                    await until(source, lambda s: s.applied_revision == last.revision)
                assert set(runtime.config.services) == {"b"}
                assert runtime.config.policy("b").endpoints == ("http://b2.test",)
                # Exactly one full resync: one compaction noticed, one document applied.
                assert [e["event"] for e in logs].count("healkit.etcd_compacted") == 1


async def test_a_restart_during_an_outage_starts_from_the_snapshot(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    snapshot = tmp_path / "healkit-etcd.json"
    async with etcd_server.client() as etcd:
        await etcd.put(ROOT + "services/a", doc("http://a.test"))
        first = healkit.Runtime(
            config=EtcdSource(etcd, namespace="test", snapshot_path=snapshot),
            entry_points=False,
        )
        async with first:
            version = first.version
            await etcd.put(ROOT + "services/b", doc("http://b.test"))
            with anyio.fail_after(DEADLINE):
                await first.wait_for_version(version + 1)
    assert snapshot.stat().st_mode & 0o777 == 0o600
    await etcd_server.stop()
    async with etcd_server.client(timeout=1.0, connect_timeout=0.5) as etcd:
        source = EtcdSource(etcd, namespace="test", snapshot_path=snapshot, random=lambda: 0.1)
        second = healkit.Runtime(config=source, entry_points=False)
        async with second:
            assert set(second.config.services) == {"a", "b"}
            assert source.status.from_snapshot is True
            assert source.status.connection == "unreachable"
            await etcd_server.start()
            await until(source, lambda s: s.connection == "connected")
            assert source.status.from_snapshot is False


async def test_without_etcd_or_a_snapshot_the_start_fails_clearly(
    etcd_server: EtcdServer,
) -> None:
    await etcd_server.stop()
    async with etcd_server.client(timeout=1.0, connect_timeout=0.5) as etcd:
        runtime = healkit.Runtime(config=EtcdSource(etcd, namespace="test"), entry_points=False)
        with pytest.raises(healkit.HealkitError, match="etcd"):
            await runtime.start()
        assert not runtime.started


async def test_a_corrupt_snapshot_is_a_config_error(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text("{broken")
    await etcd_server.stop()
    async with etcd_server.client(timeout=1.0, connect_timeout=0.5) as etcd:
        source = EtcdSource(etcd, namespace="test", snapshot_path=snapshot)
        with pytest.raises(ConfigError, match="snapshot"):
            await source.load()


class RecordingSink:
    """A ConfigSink that applies every document and records the revision it came from."""

    def __init__(self) -> None:
        self.revisions: list[int] = []
        self.documents: list[dict[str, Any]] = []
        self.events: list[object] = []

    async def submit(self, raw: object, *, origin: str) -> ConfigError | None:
        match = re.search(r"revision (\d+)$", origin)
        assert match is not None
        self.revisions.append(int(match[1]))
        plain = plain_document(raw)  # the source submits its documents compact
        assert isinstance(plain, dict)
        self.documents.append(plain)
        return None

    def reject(self, error: ConfigError) -> None:
        raise AssertionError(error)

    def emit(self, event: object) -> None:
        self.events.append(event)


async def test_writes_under_repeated_cuts_apply_every_revision_once_in_order(
    etcd_server: EtcdServer,
) -> None:
    port = int(etcd_server.url.rsplit(":", 1)[1])
    written: list[int] = []
    async with (
        TcpProxy("127.0.0.1", port) as proxy,
        EtcdClient(proxy.url, timeout=2.0) as via,
        etcd_server.client() as direct,
    ):
        # The reconnection backoff's waits take no time: each cut meets a live watch.
        source = EtcdSource(via, namespace="test", random=lambda: 0.1, clock=ManualClock())
        await source.load()
        sink = RecordingSink()
        async with anyio.create_task_group() as group:
            group.start_soon(source.watch, sink)
            for n in range(1000):
                if n % 100 == 50:
                    await proxy.cut()  # the watch breaks; it must resume where it was
                if n % 10 == 0:  # a multi-key transaction: one revision, applied whole
                    result = await direct.txn(
                        success=[
                            PutOp(
                                key=f"{ROOT}services/s{n % 7}".encode(),
                                value=doc(f"http://s{n}.test"),
                            ),
                            PutOp(
                                key=f"{ROOT}services/t{n % 5}".encode(),
                                value=doc(f"http://t{n}.test"),
                            ),
                        ]
                    )
                    written.append(result.revision)
                else:
                    put = await direct.put(f"{ROOT}services/s{n % 7}", doc(f"http://s{n}.test"))
                    written.append(put.revision)
            await until(source, lambda s: s.applied_revision == written[-1])
            group.cancel_scope.cancel()
    assert sink.revisions == written
    # Each cut was an outage and a return, published as the source's status.
    states = [e.connection for e in sink.events if isinstance(e, EtcdSourceStatus)]
    assert states[:2] == ["unreachable", "connected"]
    assert len(states) >= 2 * 5
    last = sink.documents[-1]["services"]
    assert last[f"s{999 % 7}"]["endpoints"] == ["http://s999.test"]


class Heard:
    """A listener that records what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[tuple[str, str, bytes]], int, bool]] = []
        self._called = asyncio.Event()

    def __call__(self, events: Any, revision: int, *, replace: bool) -> None:
        told = [(e.type, e.kv.key.decode(), e.kv.value) for e in events]
        self.calls.append((told, revision, replace))
        self._called.set()

    async def told(self, calls: int) -> None:
        """Wait until the listener was called ``calls`` times."""
        with anyio.fail_after(10):
            while len(self.calls) < calls:
                self._called.clear()
                await self._called.wait()


async def test_listeners_follow_their_keys_through_the_same_watch(etcd_server: EtcdServer) -> None:
    port = int(etcd_server.url.rsplit(":", 1)[1])
    async with etcd_server.client() as direct:
        await direct.put(ROOT + "health/inventory/a/i1", b"down")
        async with TcpProxy("127.0.0.1", port) as proxy, EtcdClient(proxy.url, timeout=2.0) as via:
            source = EtcdSource(via, namespace="test", random=lambda: 0.1)
            runtime = healkit.Runtime(config=source, entry_points=False)
            async with runtime:
                assert runtime.source is source
                heard = Heard()
                stop = source.listen("health/", heard)
                # The source keeps no copy: the keys come with the shared watch's next read.
                await heard.told(1)
                [(first, at, replace)] = heard.calls
                assert first == [("PUT", ROOT + "health/inventory/a/i1", b"down")]
                assert replace
                assert at >= source.status.applied_revision
                with pytest.raises(ValueError, match="configuration"):
                    source.listen("services/", heard)
                put = await direct.put(ROOT + "health/inventory/a/i2", b"down")
                await direct.put(ROOT + "services/x", doc("http://x.test"))  # not for listeners
                gone = await direct.delete(ROOT + "health/inventory/a/i1")
                await until(source, lambda s: s.applied_revision == gone.revision)
                assert heard.calls[1:] == [
                    ([("PUT", ROOT + "health/inventory/a/i2", b"down")], put.revision, False),
                    ([("DELETE", ROOT + "health/inventory/a/i1", b"")], gone.revision, False),
                ]
                # Away, compacted: the resync tells the listener what it missed.
                proxy.block()
                await proxy.cut()
                await until(source, lambda s: s.connection == "unreachable")
                await direct.delete(ROOT + "health/inventory/a/i2")
                last = await direct.put(ROOT + "health/inventory/b/i3", b"down")
                await etcd_server.compact(last.revision)
                proxy.unblock()
                await until(source, lambda s: s.applied_revision == last.revision)
                # Every key there now, replacing what the listener knew (i2 is gone).
                assert heard.calls[3:] == [
                    ([("PUT", ROOT + "health/inventory/b/i3", b"down")], last.revision, True)
                ]
                stop()
                await direct.put(ROOT + "health/inventory/b/i4", b"down")
                after = await direct.put(ROOT + "services/y", doc("http://y.test"))
                await until(source, lambda s: s.applied_revision == after.revision)
                assert len(heard.calls) == 4


async def test_a_failing_listener_is_logged_and_the_source_goes_on(etcd: EtcdClient) -> None:
    source = EtcdSource(etcd, namespace="test")
    runtime = healkit.Runtime(config=source, entry_points=False)

    def broken(events: Any, revision: int, *, replace: bool) -> None:
        raise RuntimeError("listener bug")

    async with runtime:
        source.listen("health/", broken)
        with capture_events() as logs:
            await etcd.put(ROOT + "health/s/e/i", b"down")
            put = await etcd.put(ROOT + "services/a", doc("http://a.test"))
            await until(source, lambda s: s.applied_revision == put.revision)
        assert "a" in runtime.config.services
        assert [e["reason"] for e in logs if e["event"] == "healkit.etcd_listener_failed"] == [
            "listener bug"
        ]


async def test_writes_around_an_etcd_restart_are_all_applied(etcd_server: EtcdServer) -> None:
    async with etcd_server.client(timeout=2.0, connect_timeout=1.0) as etcd:
        source = EtcdSource(etcd, namespace="test", random=lambda: 0.1)
        runtime = healkit.Runtime(config=source, entry_points=False)
        async with runtime, etcd_server.client() as writer:
            before = await writer.put(ROOT + "services/a", doc("http://a.test"))
            await until(source, lambda s: s.applied_revision == before.revision)
            await etcd_server.restart()
            after = await writer.put(ROOT + "services/b", doc("http://b.test"))
            await until(source, lambda s: s.applied_revision == after.revision)
            assert set(runtime.config.services) == {"a", "b"}


@pytest.mark.parametrize("secured", ["tls", "auth"])
async def test_tls_with_a_client_certificate_and_username_password(secured: str) -> None:
    options = {"tls": True, "client_cert_auth": True} if secured == "tls" else {"auth": True}
    async with EtcdServer(**options) as server, server.client() as etcd:  # type: ignore[arg-type]
        await etcd.put(ROOT + "services/a", doc("http://a.test"))
        runtime = healkit.Runtime(config=EtcdSource(etcd, namespace="test"), entry_points=False)
        async with runtime:
            assert set(runtime.config.services) == {"a"}
        if secured == "auth":
            async with server.client(password="wrong") as wrong:  # noqa: S106 - a wrong one
                with pytest.raises(healkit.EtcdAuthError) as caught:
                    await EtcdSource(wrong, namespace="test").load()
                assert "wrong" not in str(caught.value)


KEYS = st.sampled_from(["endpoints", "timeout", "retry", "x", "max_body_bytes"])
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=8,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bad=documents)
async def test_any_document_is_applied_or_rejected_and_the_last_good_stays(
    etcd: EtcdClient, bad: object
) -> None:
    await etcd.put(ROOT + "services/a", doc("http://a.test"))
    source = EtcdSource(etcd, namespace="test")
    runtime = healkit.Runtime(config=source, entry_points=False)
    async with runtime:
        put = await etcd.put(ROOT + "services/a", json.dumps(bad).encode())
        await until(source, lambda s: s.applied_revision >= put.revision)
        if "services/a" in source.status.rejected:
            assert runtime.config.policy("a").endpoints == ("http://a.test",)
        else:
            assert isinstance(bad, dict)
    await etcd.delete(ROOT, prefix=True)


async def test_a_restored_etcd_behind_the_applied_revision_is_read_again() -> None:
    async with (
        EtcdServer() as first,
        EtcdServer() as restored,
        first.client() as a,
        restored.client() as b,
    ):
        for n in range(10):
            await a.put(ROOT + "services/x", doc(f"http://x{n}.test"))
        # The "backup": older history, another document.
        await b.put(ROOT + "services/y", doc("http://y.test"))
        port = int(first.url.rsplit(":", 1)[1])
        async with TcpProxy("127.0.0.1", port) as proxy, EtcdClient(proxy.url) as via:
            source = EtcdSource(via, namespace="test", random=lambda: 0.1)
            runtime = healkit.Runtime(config=source, entry_points=False)
            async with runtime:
                applied = source.status.applied_revision
                assert set(runtime.config.services) == {"x"}
                with capture_events() as logs:
                    proxy.retarget("127.0.0.1", int(restored.url.rsplit(":", 1)[1]))
                    await proxy.cut()
                    await until(source, lambda s: s.applied_revision < applied)
                assert set(runtime.config.services) == {"y"}
                assert any(e["event"] == "healkit.etcd_revision_went_back" for e in logs)
                after = await b.put(ROOT + "services/z", doc("http://z.test"))
                await until(source, lambda s: s.applied_revision == after.revision)
                assert set(runtime.config.services) == {"y", "z"}
