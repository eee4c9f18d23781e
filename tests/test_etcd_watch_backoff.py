"""The watch feed reconnects with a backoff that only a useful watch starts over.

A red team found that a server which confirms a watch and then misbehaves
(sends garbage, closes it, answers from another cluster, sends progress
notifications that move nothing) made every instance reconnect about five
times a second for ever, its status flipping between connected and
unreachable with two log lines each time: the backoff started over whenever
a watch was merely created. Each fake etcd here is an aiohttp server shaped
like etcd's JSON gateway; the feed's backoff runs on a
:class:`~healkit.testing.ManualClock`, so minutes of backoff cost no real time.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from aiohttp import web

import healkit
from healkit.etcd import EtcdClient, EtcdSource, EtcdSourceStatus
from healkit.testing import EtcdServer, ManualClock, capture_events

pytestmark = pytest.mark.anyio

DEADLINE = 15.0  # a generous ceiling for a loaded machine, not the bound under test
CLUSTER = 4660
REVISION = 10

# The waits of the stated backoff with the jitter's middle draw (random() == 0.5):
# 0.1 s, growing x1.6 after each failed attempt, capped at 10 s.
WAITS = [min(10.0, 0.1 * 1.6**n) for n in range(30)]


def header(revision: int = REVISION, cluster: int = CLUSTER) -> dict[str, str]:
    return {"cluster_id": str(cluster), "member_id": "5", "revision": str(revision)}


def line(result: dict[str, Any]) -> bytes:
    return json.dumps({"result": result}).encode() + b"\n"


CREATED = line({"header": header(), "created": True})

# What each misbehaving server sends after confirming the watch (then it ends the stream).
MISBEHAVIOURS = {
    "garbage": b"this is not etcd\n",
    "closed at once": b"",
    "another cluster": line({"header": header(REVISION + 1, CLUSTER + 1)}),
    "progress only": line({"header": header()}) * 3,
}


class FakeEtcd:
    """An HTTP server shaped like etcd's JSON gateway, with one key at revision 10.

    Each watch is confirmed (``created``), then gets what ``after(attempt)``
    returns for it (``None``: the stream stays open and quiet, as a real
    etcd's does while nothing changes); otherwise the stream ends after it.
    Reads honour ``min_mod_revision``, as the feed's liveness probe needs.
    """

    def __init__(self, after: Callable[[int], bytes | None]) -> None:
        self.after = after
        self.watches = 0
        self.url = ""
        self._stop = anyio.Event()

    def end_quiet(self) -> None:
        """End the streams that stay open and quiet."""
        self._stop.set()
        self._stop = anyio.Event()

    async def _range(self, request: web.Request) -> web.Response:
        body = await request.json()
        value = base64.b64encode(json.dumps({"endpoints": ["http://a.test"]}).encode())
        kv = {
            "key": base64.b64encode(b"/healkit/fake/services/a").decode(),
            "value": value.decode(),
            "mod_revision": "3",
            "create_revision": "3",
        }
        kvs = [kv] if int(body.get("min_mod_revision", 0)) <= 3 else []
        return web.json_response({"header": header(), "kvs": kvs, "count": str(len(kvs))})

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        attempt, self.watches = self.watches, self.watches + 1
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        after = self.after(attempt)
        await response.write(CREATED + (after or b""))
        if after is None:
            await self._stop.wait()
        return response

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeEtcd]:
        app = web.Application()
        app.router.add_post("/v3/kv/range", self._range)
        app.router.add_post("/v3/watch", self._watch)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        try:
            yield self
        finally:
            self._stop.set()
            await runner.cleanup()


async def until(source: EtcdSource, condition: Callable[[EtcdSourceStatus], bool]) -> None:
    with anyio.fail_after(DEADLINE):
        await source.wait_until(condition)


async def wake(clock: ManualClock) -> float:
    """Wait until the feed waits out its backoff (its only sleep on ``clock``); end that wait."""
    with anyio.fail_after(DEADLINE):
        await clock.wait_for_sleepers()
    wait = clock.sleeps[-1]
    clock.advance(wait)
    return wait


async def spend_until(clock: ManualClock, end: float) -> None:
    """End each backoff wait of the feed that is over by ``end`` on the clock, in turn."""
    while True:
        with anyio.fail_after(DEADLINE):
            await clock.wait_for_sleepers()
        if clock.now() + clock.sleeps[-1] > end:
            return
        clock.advance(clock.sleeps[-1])


def etcd_events(logs: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in logs if e["event"].startswith("healkit.etcd")]


@pytest.mark.parametrize("misbehaviour", list(MISBEHAVIOURS))
async def test_a_watch_that_is_confirmed_then_useless_is_retried_ever_less_often(
    misbehaviour: str,
) -> None:
    clock = ManualClock(auto_advance=False)
    fake = FakeEtcd(lambda _: MISBEHAVIOURS[misbehaviour])
    # Another cluster: the first answer is taken for a move to another
    # cluster (read again, watch again); only the second is a failure.
    first = 2 if misbehaviour == "another cluster" else 1
    async with fake.running(), EtcdClient(fake.url) as etcd:
        source = EtcdSource(etcd, namespace="fake", random=lambda: 0.5, clock=clock)
        with capture_events() as logs:
            async with healkit.Runtime(config=source, entry_points=False) as runtime:
                await until(source, lambda s: s.connection == "unreachable")
                failed = clock.now()  # the first failure
                # Before: 30 watch attempts in 6 s (the backoff started over
                # with each confirmation), "connected" and "unreachable" in turn.
                await spend_until(clock, failed + 6.0)
                assert fake.watches == first + 7  # waits of 0.1 0.16 0.26 0.41 0.66 1.05 1.68 s
                await spend_until(clock, failed + 60.0)
                assert fake.watches == first + 14  # then 2.68 4.29 6.87 10 10 10 10 s
                assert clock.sleeps == pytest.approx(WAITS[:15])
                await spend_until(clock, failed + 180.0)  # at the cap: one attempt per 10 s
                assert fake.watches == first + 26
                assert source.status.connection == "unreachable"
                # The last good configuration serves meanwhile.
                assert runtime.config.policy("a").endpoints == ("http://a.test",)
    expected = ["healkit.etcd_unreachable"]
    if misbehaviour == "another cluster":
        expected.insert(0, "healkit.etcd_cluster_changed")
    # Then one line a minute counts the attempts that failed the same way.
    expected += ["healkit.etcd_watch_retrying"] * 2
    assert etcd_events(logs) == expected
    summaries = [e for e in logs if e["event"] == "healkit.etcd_watch_retrying"]
    assert [e["attempts"] for e in summaries] == [15, 6]
    assert [e["retry_in"] for e in summaries] == [10.0, 10.0]
    assert summaries[0]["reason"] == source.status.last_error


async def test_a_watch_that_stays_healthy_starts_the_backoff_over() -> None:
    clock = ManualClock(auto_advance=False)
    # Five watches fail (garbage), the sixth stays open and quiet, the rest fail again.
    fake = FakeEtcd(lambda attempt: None if attempt == 5 else MISBEHAVIOURS["garbage"])
    async with fake.running(), EtcdClient(fake.url) as etcd:
        # Its first liveness check, after a third of liveness_timeout, proves it.
        source = EtcdSource(
            etcd, namespace="fake", random=lambda: 0.5, clock=clock, liveness_timeout=3.0
        )
        with capture_events() as logs:
            async with healkit.Runtime(config=source, entry_points=False):
                await until(source, lambda s: s.connection == "unreachable")
                for _ in range(5):
                    await wake(clock)
                await until(source, lambda s: s.connection == "connected")
                assert fake.watches == 6
                assert clock.sleeps == pytest.approx(WAITS[:5])
                # The quiet watch ends: the backoff starts again from its first wait.
                fake.after = lambda _: MISBEHAVIOURS["garbage"]
                fake.end_quiet()
                await until(source, lambda s: s.connection == "unreachable")
                assert await wake(clock) == pytest.approx(WAITS[0])
    assert etcd_events(logs) == [
        "healkit.etcd_unreachable",
        "healkit.etcd_reconnected",
        "healkit.etcd_unreachable",
    ]


async def test_a_real_etcd_is_watched_again_at_the_first_attempt_after_its_restart(
    etcd_server: EtcdServer,
) -> None:
    clock = ManualClock(auto_advance=False)
    root = "/healkit/restarted/"
    async with etcd_server.client() as direct, etcd_server.client() as etcd:
        await direct.put(root + "services/a", b'{"endpoints": ["http://a.test"]}')
        source = EtcdSource(etcd, namespace="restarted", random=lambda: 0.5, clock=clock)
        async with healkit.Runtime(config=source, entry_points=False) as runtime:
            await etcd_server.stop()
            await until(source, lambda s: s.connection == "unreachable")
            for _ in range(4):
                await wake(clock)  # each attempt is refused
            await etcd_server.start()
            await wake(clock)  # the next attempt watches again
            written = await direct.put(root + "services/b", b'{"endpoints": ["http://b.test"]}')
            await until(source, lambda s: s.applied_revision == written.revision)
            assert source.status.connection == "connected"
            assert set(runtime.config.services) == {"a", "b"}
            assert clock.sleeps == pytest.approx(WAITS[:5])
            # The watch was useful: after the next outage the backoff starts over.
            await etcd_server.stop()
            await until(source, lambda s: s.connection == "unreachable")
            await etcd_server.start()
            assert await wake(clock) == pytest.approx(WAITS[0])
            written = await direct.put(root + "services/c", b'{"endpoints": ["http://c.test"]}')
            await until(source, lambda s: s.applied_revision == written.revision)
            assert source.status.connection == "connected"


async def test_a_history_compacted_at_every_watch_is_read_again_ever_less_often() -> None:
    clock = ManualClock(auto_advance=False)
    compacted = line({"header": header(), "canceled": True, "compact_revision": "20"})
    fake = FakeEtcd(lambda _: compacted)
    async with fake.running(), EtcdClient(fake.url) as etcd:
        source = EtcdSource(etcd, namespace="fake", random=lambda: 0.5, clock=clock)
        with capture_events() as logs:
            async with healkit.Runtime(config=source, entry_points=False) as runtime:
                # A compaction is read again at once; the second in a row, before
                # any watch was useful, waits its turn. Before: read again and
                # watched again as fast as the server answered, a warning each time.
                with anyio.fail_after(DEADLINE):
                    await clock.wait_for_sleepers()
                start = clock.now()
                assert fake.watches == 2
                await spend_until(clock, start + 60.0)
                assert fake.watches == 2 + 14
                assert clock.sleeps == pytest.approx(WAITS[:15])
                assert runtime.config.policy("a").endpoints == ("http://a.test",)
    assert etcd_events(logs) == ["healkit.etcd_compacted"]
