"""The shared etcd watch and its sources keep what is used, not what is written.

Anyone who may write under a namespace (every instance, for its fleet
records) may write any key there. The feed (``healkit.etcd._feed``) keeps no
copy of the keys, and an ``EtcdSource`` keeps its configuration documents
only: listeners keep what they want of their prefix. A subscriber or listener
that comes late still starts from etcd's state, read again at one revision;
so does every subscriber after a compacted watch. Against a real etcd.
"""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager

import anyio
import pytest

import healkit
from healkit.etcd import EtcdClient, EtcdSource, EtcdSourceStatus, PutOp, WatchEvent, _feed
from healkit.testing import EtcdServer, TcpProxy

pytestmark = pytest.mark.anyio

NAMESPACE = "feed"
ROOT = f"/healkit/{NAMESPACE}/"
WAIT = 20.0
STRAYS = 5000


def doc(endpoint: str) -> bytes:
    return json.dumps({"endpoints": [endpoint]}).encode()


class Heard:
    """A listener: the keys it holds now, kept as a listener should (replace drops them)."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.calls: list[tuple[list[tuple[str, str]], int, bool]] = []
        self._called = asyncio.Event()

    def __call__(self, events: Sequence[WatchEvent], revision: int, *, replace: bool) -> None:
        if replace:
            self.keys.clear()
        for event in events:
            key = event.kv.key.decode()
            if event.type == "DELETE":
                self.keys.pop(key, None)
            else:
                self.keys[key] = event.kv.value
        self.calls.append(([(e.type, e.kv.key.decode()) for e in events], revision, replace))
        self._called.set()

    async def told(self, calls: int) -> None:
        """Wait until the listener was called ``calls`` times."""
        with anyio.fail_after(WAIT):
            while len(self.calls) < calls:
                self._called.clear()
                await self._called.wait()


async def until(source: EtcdSource, revision: int) -> EtcdSourceStatus:
    with anyio.fail_after(WAIT):
        return await source.wait_until(
            lambda s: s.connection == "connected" and s.applied_revision >= revision
        )


async def write(etcd: EtcdClient, keys: Sequence[str], value: bytes = b"x") -> int:
    """Write ``keys`` (relative to the root), 100 per transaction; return the last revision."""
    revision = 0
    for start in range(0, len(keys), 100):
        ops = [PutOp(key=(ROOT + key).encode(), value=value) for key in keys[start : start + 100]]
        revision = (await etcd.txn(success=ops)).revision
    return revision


async def etcd_keys(etcd: EtcdClient, prefix: str = "") -> dict[str, bytes]:
    result = await etcd.range_all(ROOT + prefix, prefix=True)
    return {kv.key.decode(): kv.value for kv in result.kvs}


async def started(stack: AsyncExitStack, client: EtcdClient) -> tuple[EtcdSource, healkit.Runtime]:
    source = EtcdSource(client, namespace=NAMESPACE, random=lambda: 0.1)
    runtime = await stack.enter_async_context(healkit.Runtime(config=source, entry_points=False))
    return source, runtime


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with etcd_server.client() as client:
        await client.put(ROOT + "services/a", doc("http://a.test"))
        await client.put(ROOT + "health/a/e/i0", b"down")
        yield client


async def test_late_subscribers_and_listeners_start_from_etcds_state(
    etcd_server: EtcdServer, etcd: EtcdClient
) -> None:
    before = await etcd.range_all(ROOT, prefix=True)
    async with AsyncExitStack() as stack:
        first, _ = await started(stack, await stack.enter_async_context(etcd_server.client()))
        early = Heard()
        first.listen("health/", early)
        # Stray keys, and keys of use: configuration and listened records.
        await write(etcd, [f"junk/{n}" for n in range(300)])
        await etcd.put(ROOT + "health/b/e/i1", b"down")
        await etcd.delete(ROOT + "health/a/e/i0")
        await etcd.put(ROOT + "services/b", doc("http://b.test"))
        last = (await etcd.delete(ROOT + "services/a")).revision
        await until(first, last)
        assert early.keys == await etcd_keys(etcd, "health/")

        # A listener that comes now gets the records there, nothing else.
        late = Heard()
        first.listen("health/", late)
        await late.told(1)
        assert late.calls == [([("PUT", ROOT + "health/b/e/i1")], last, True)]

        # A runtime that starts now: its configuration and its listeners are etcd's.
        second, second_runtime = await started(
            stack, await stack.enter_async_context(etcd_server.client())
        )
        assert set(second_runtime.config.services) == {"b"}
        joined = Heard()
        second.listen("health/", joined)
        await joined.told(1)
        assert joined.keys == {ROOT + "health/b/e/i1": b"down"}

        # Subscribers of the sources' feed (same settings, the sources' default
        # liveness): without a read, or with one older than the feed's revision,
        # each gets a new read (every key at one revision) before any change.
        for start in (None, before):
            subscription = etcd.follow(ROOT, liveness_timeout=10.0, random=lambda: 0.1, start=start)
            try:
                with anyio.fail_after(WAIT):
                    while not isinstance(item := await subscription.next(), _feed.Reset):
                        assert not isinstance(item, _feed.Change)  # nothing before the state
            finally:
                await subscription.aclose()
            assert item.revision >= last
            assert {kv.key.decode(): kv.value for kv in item.kvs} == await etcd_keys(etcd)

        # After all that, the changes follow, each once, stray keys passed over.
        await write(etcd, [f"junk/more/{n}" for n in range(50)])
        put = await etcd.put(ROOT + "health/b/e/i2", b"down")
        for source in (first, second):
            await until(source, put.revision)
        change = ([("PUT", ROOT + "health/b/e/i2")], put.revision, False)
        for listener in (early, late, joined):
            assert listener.calls[-1] == change
            assert listener.calls.count(change) == 1
            assert listener.keys == await etcd_keys(etcd, "health/")


async def test_after_a_compacted_watch_every_subscriber_gets_etcds_state(
    etcd_server: EtcdServer, etcd: EtcdClient
) -> None:
    port = int(etcd_server.url.rsplit(":", 1)[1])
    async with AsyncExitStack() as stack:
        proxy = await stack.enter_async_context(TcpProxy("127.0.0.1", port))
        sources: list[tuple[EtcdSource, healkit.Runtime, Heard]] = []
        for _ in range(2):  # the same settings: one shared feed through the proxy
            client = await stack.enter_async_context(EtcdClient(proxy.url, timeout=2.0))
            source, runtime = await started(stack, client)
            heard = Heard()
            source.listen("health/", heard)
            await heard.told(1)
            sources.append((source, runtime, heard))
        proxy.block()
        await proxy.cut()
        for source, _, _ in sources:
            with anyio.fail_after(WAIT):
                await source.wait_until(lambda s: s.connection == "unreachable")
        # Missed while away, and compacted: deletes, puts, stray keys.
        await etcd.delete(ROOT + "health/a/e/i0")
        await etcd.put(ROOT + "health/c/e/i3", b"down")
        await write(etcd, [f"junk/{n}" for n in range(200)])
        await etcd.put(ROOT + "services/c", doc("http://c.test"))
        last = (await etcd.delete(ROOT + "services/a")).revision
        await etcd_server.compact(last)
        calls = [len(heard.calls) for _, _, heard in sources]
        proxy.unblock()
        for (source, runtime, heard), before in zip(sources, calls, strict=True):
            await until(source, last)
            assert set(runtime.config.services) == {"c"}
            await heard.told(before + 1)
            assert heard.calls[before:] == [([("PUT", ROOT + "health/c/e/i3")], last, True)]
            assert heard.keys == await etcd_keys(etcd, "health/")


@contextmanager
def holding(where: str) -> Iterator[list[int]]:
    """The bytes that allocations made in the block by code under ``where`` still hold."""
    held = [0]
    gc.collect()
    tracemalloc.start(1)
    try:
        yield held
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held[0] = sum(t.size for t in snapshot.traces if where in t.traceback[0].filename)


async def test_stray_keys_cost_the_feed_and_its_sources_nothing_that_stays(
    etcd_server: EtcdServer, etcd: EtcdClient
) -> None:
    async with AsyncExitStack() as stack:
        first, _ = await started(stack, await stack.enter_async_context(etcd_server.client()))
        heard = Heard()
        first.listen("health/", heard)
        await heard.told(1)
        with holding("healkit/etcd/") as held:
            # 5,000 keys nobody listens to, watched as they come...
            revision = await write(etcd, [f"junk/{n:04d}" for n in range(STRAYS)], b"y" * 100)
            await until(first, revision)
            # ...read again for a late runtime and a late listener...
            second, _ = await started(stack, await stack.enter_async_context(etcd_server.client()))
            late = Heard()
            second.listen("health/", late)
            await late.told(1)
            # ...and after them, the keys of use still arrive.
            put = await etcd.put(ROOT + "health/a/e/i1", b"down")
            for source in (first, second):
                await until(source, put.revision)
            await late.told(2)
            del source
        assert late.keys == heard.keys == await etcd_keys(etcd, "health/")
        # Measured: ~12 KiB, the second source and its runtime's start; before,
        # ~3.4 MiB: a copy of every stray key in the feed and in each source, and
        # the second source's bootstrap read, held as long as it watched.
        assert held[0] < 64 * 1024
