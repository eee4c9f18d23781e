"""Runtimes of one process share one etcd watch per namespace and connection settings.

Against a real etcd, whose own metrics count the watches it serves
(``etcd_debugging_mvcc_watcher_total``: watchers; ``..._watch_stream_total``:
streams). Each runtime keeps its own semantics: applied revision, channel,
status.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import anyio
import pytest
import trustme

import healkit
from healkit.etcd import EtcdClient, EtcdSource, EtcdSourceStatus, RangeResult, _feed
from healkit.etcd._gateway import settings
from healkit.testing import EtcdServer

pytestmark = pytest.mark.anyio

ROOT = "/healkit/test/"
DEADLINE = 10.0
RUNTIMES = 4
WATCHERS = "etcd_debugging_mvcc_watcher_total"
STREAMS = "etcd_debugging_mvcc_watch_stream_total"


def doc(endpoint: str) -> bytes:
    return json.dumps({"endpoints": [endpoint]}).encode()


async def metric(server: EtcdServer, name: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(server.url + "/metrics") as reply:
        text = await reply.text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"etcd has no metric {name}"
    return int(float(match[1]))


async def watches_become(server: EtcdServer, watchers: int, streams: int) -> None:
    """Wait until etcd counts these watchers and streams (it updates them as streams go)."""
    with anyio.fail_after(DEADLINE):
        # A gauge of etcd's: there is no event to wait on, so it is read again.
        while True:
            counts = (await metric(server, WATCHERS), await metric(server, STREAMS))
            if counts == (watchers, streams):
                return
            await anyio.sleep(0.05)


async def until(source: EtcdSource, condition: Callable[[EtcdSourceStatus], bool]) -> None:
    with anyio.fail_after(DEADLINE):
        await source.wait_until(condition)


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with etcd_server.client() as client:
        await client.put(ROOT + "services/a", doc("http://a0.test"))
        yield client


async def start(
    stack: AsyncExitStack, server: EtcdServer, channel: str | None = None
) -> tuple[EtcdSource, healkit.Runtime]:
    """Start a runtime with a client of its own, as a separate part of an application would."""
    client = await stack.enter_async_context(server.client())
    source = EtcdSource(client, namespace="test", channel=channel)
    runtime = healkit.Runtime(config=source, entry_points=False)
    await stack.enter_async_context(runtime)
    return source, runtime


async def test_runtimes_share_one_watch_and_each_applies_every_revision(
    etcd_server: EtcdServer, etcd: EtcdClient
) -> None:
    base = (await metric(etcd_server, WATCHERS), await metric(etcd_server, STREAMS))
    async with AsyncExitStack() as outer:
        sources = [(await start(outer, etcd_server))[0] for _ in range(RUNTIMES)]
        written = await etcd.put(ROOT + "services/a", doc("http://a1.test"))
        for source in sources:
            await until(source, lambda s: s.applied_revision == written.revision)
            assert source.status.connection == "connected"
        await watches_become(etcd_server, base[0] + 1, base[1] + 1)

        # A runtime that stops leaves the others and their shared watch alone.
        async with AsyncExitStack() as inner:
            leaving, _ = await start(inner, etcd_server)
            assert leaving.status.applied_revision == written.revision
        again = await etcd.put(ROOT + "services/a", doc("http://a2.test"))
        for source in sources:
            await until(source, lambda s: s.applied_revision == again.revision)
        await watches_become(etcd_server, base[0] + 1, base[1] + 1)
    # The last one to stop closes the watch.
    await watches_become(etcd_server, *base)


async def test_a_late_runtime_joins_at_the_shared_revision_with_its_own_channel(
    etcd_server: EtcdServer, etcd: EtcdClient
) -> None:
    async with AsyncExitStack() as stack:
        stable, stable_runtime = await start(stack, etcd_server)
        await etcd.put(ROOT + "services/b", doc("http://b.test"))
        overlay = await etcd.put(
            ROOT + "channels/canary/services/a", b'{"endpoints": ["http://canary.test"]}'
        )
        await until(stable, lambda s: s.applied_revision == overlay.revision)
        # Joins after those writes: starts from their state, through the same watch.
        canary, canary_runtime = await start(stack, etcd_server, channel="canary")
        assert canary.status.applied_revision == overlay.revision
        await watches_become(etcd_server, 1, 1)
        deleted = await etcd.delete(ROOT + "services/b")
        for source in (stable, canary):
            await until(source, lambda s: s.applied_revision == deleted.revision)
        assert stable_runtime.config.policy("a").endpoints == ("http://a0.test",)
        assert canary_runtime.config.policy("a").endpoints == ("http://canary.test",)
        assert set(stable_runtime.config.services) == set(canary_runtime.config.services) == {"a"}


def test_settings_are_equal_for_the_same_tls_files_with_the_same_content(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)

    def made() -> object:
        return settings(
            "https://127.0.0.1:2379",
            username="u",
            password="p",  # noqa: S106 - a test value
            ca_file=ca_file,
            cert_file=None,
            key_file=None,
            ssl_context=None,
            timeout=10.0,
            connect_timeout=3.0,
            max_message_bytes=1 << 20,
        )

    first = made()
    assert made() == first
    trustme.CA().cert_pem.write_to_path(ca_file)  # the CA file was rotated
    assert made() != first


async def test_a_subscriber_too_far_behind_gets_the_state_instead_of_a_growing_queue(
    etcd_server: EtcdServer, etcd: EtcdClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_feed, "QUEUE_LIMIT", 5)
    subscription = etcd.follow(ROOT, liveness_timeout=DEADLINE, random=lambda: 0.0)
    try:
        with anyio.fail_after(DEADLINE):
            while not isinstance(item := await subscription.next(), _feed.Connection):
                pass
            assert item.error is None
            last = 0
            for n in range(20):  # nobody reads meanwhile
                last = (await etcd.put(ROOT + "services/a", doc(f"http://a{n}.test"))).revision
            items: list[_feed.FeedItem] = []
            while not any(
                isinstance(i, _feed.Change | _feed.Reset) and i.revision == last for i in items
            ):
                items.append(await subscription.next())
    finally:
        await subscription.aclose()
    assert len(items) <= 5 + 2
    reset = next(i for i in items if isinstance(i, _feed.Reset))
    assert not reset.replace
    assert [kv.key for kv in reset.kvs] == [(ROOT + "services/a").encode()]


async def test_a_read_that_seeds_the_watch_reaches_the_subscribers_waiting_for_one(
    etcd_server: EtcdServer,
) -> None:
    url = etcd_server.url
    await etcd_server.stop()  # etcd is away: the watch cannot read the namespace
    async with EtcdClient(url) as first, EtcdClient(url) as second:
        # The feed's next read waits 20 s (its jitter is this first subscriber's):
        # only its first failure is heard within the test.
        waiting = first.follow(ROOT, liveness_timeout=DEADLINE, random=lambda: 100.0)
        with anyio.fail_after(DEADLINE):
            failed = await waiting.next()
        assert isinstance(failed, _feed.Connection)
        assert failed.error is not None
        # A subscriber joining now hears at once that etcd is away.
        late = first.follow(ROOT, liveness_timeout=DEADLINE, random=lambda: 1.0)
        with anyio.fail_after(DEADLINE):
            assert isinstance(heard := await late.next(), _feed.Connection)
        assert heard.error is not None
        await late.aclose()
        read = RangeResult(kvs=(), revision=7, count=0, cluster_id=1)
        seeding = second.follow(ROOT, liveness_timeout=DEADLINE, random=lambda: 1.0, start=read)
        try:
            with anyio.fail_after(DEADLINE):
                while not isinstance(item := await waiting.next(), _feed.Reset):
                    assert isinstance(item, _feed.Connection)  # etcd unreachable meanwhile
        finally:
            await seeding.aclose()
            await waiting.aclose()
    assert (item.revision, item.kvs, item.replace) == (7, (), False)
