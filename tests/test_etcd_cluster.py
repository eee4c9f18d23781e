"""healkit against a real three-member etcd cluster, with faults.

Every instance watches through the list of the members' URLs (or through a
:class:`TcpProxy` in front of one member) while the test kills the leader,
cuts a member off, takes quorum away and brings a member back behind the
others. After each fault, every instance must hold exactly etcd's history of
the keys it follows (no revision missed, repeated or out of order) and the
configuration etcd holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import pytest

import healkit
from healkit import EtcdError, EtcdUnavailableError
from healkit.etcd import EtcdClient, EtcdSource, EtcdSourceStatus, KeyValue, WatchEvent
from healkit.testing import (
    EtcdCluster,
    FaultServer,
    TcpProxy,
    capture_events,
    find_etcd_binary,
    refused_url,
    unused_tcp_port,
)

pytestmark = [pytest.mark.anyio, pytest.mark.etcd_cluster]

NAMESPACE = "cluster"
ROOT = f"/healkit/{NAMESPACE}/"
SERVICE = "payments"
LIVENESS = 1.5
WAIT = 20.0


def document(version: int) -> bytes:
    """The service's document, version ``version`` (its endpoint names the version)."""
    return json.dumps({"endpoints": [f"http://v{version}.payments.test"]}).encode()


class Instance:
    """One healkit instance: its own etcd client, source and runtime.

    It records every revision its source hands to the listener of ``seq/``
    (the keys the writers write), and every status the source publishes.
    """

    def __init__(self, source: EtcdSource, runtime: healkit.Runtime) -> None:
        self.source = source
        self.runtime = runtime
        self.history: list[tuple[int, str]] = []
        self.statuses: list[EtcdSourceStatus] = []
        source.listen("seq/", self._heard)

    def _heard(self, events: Sequence[WatchEvent], revision: int, *, replace: bool) -> None:
        if replace:  # every key there (at the start, after a resync): the ones not heard yet
            known = {key for _, key in self.history}
            events = [event for event in events if event.kv.key.decode() not in known]
        self.history.extend((revision, event.kv.key.decode()) for event in events)

    def endpoint(self) -> str:
        """The endpoint the service's configuration in force names."""
        return self.runtime.config.services[SERVICE].endpoints[0]

    async def caught_up(self, revision: int) -> EtcdSourceStatus:
        with anyio.fail_after(WAIT):
            return await self.source.wait_until(
                lambda s: s.connection == "connected" and s.applied_revision >= revision
            )


class Statuses:
    """A ``healkit_event`` subscriber that keeps the source's status events."""

    def __init__(self, instance: list[Instance]) -> None:
        self._instance = instance

    @healkit.hookimpl
    def healkit_event(self, event: object) -> None:
        if isinstance(event, EtcdSourceStatus) and self._instance:
            self._instance[0].statuses.append(event)


async def start(stack: AsyncExitStack, endpoints: Sequence[str]) -> Instance:
    etcd = await stack.enter_async_context(
        EtcdClient(list(endpoints), timeout=1.0, connect_timeout=0.5)
    )
    source = EtcdSource(etcd, namespace=NAMESPACE, liveness_timeout=LIVENESS)
    holder: list[Instance] = []
    runtime = healkit.Runtime(config=source, plugins=[Statuses(holder)], entry_points=False)
    instance = Instance(source, runtime)
    holder.append(instance)
    await stack.enter_async_context(runtime)
    return instance


async def etcd_history(etcd: EtcdClient) -> tuple[list[tuple[int, str]], int]:
    """Every ``seq/`` key etcd holds, by the revision that wrote it; and etcd's revision."""
    result = await etcd.range_all(ROOT + "seq/", prefix=True)
    history = sorted((kv.mod_revision, kv.key.decode()) for kv in result.kvs)
    return history, result.revision


async def assert_same_as_etcd(etcd: EtcdClient, instances: Sequence[Instance]) -> None:
    """Each instance holds exactly etcd's history and etcd's configuration."""
    history, revision = await etcd_history(etcd)
    stored = await etcd.get(ROOT + "services/" + SERVICE)
    assert stored is not None
    expected = json.loads(stored.value)["endpoints"][0]
    for instance in instances:
        await instance.caught_up(revision)
        revisions = [rev for rev, _ in instance.history]
        assert revisions == sorted(revisions), "a revision came out of order"
        assert instance.history == history
        assert instance.endpoint() == expected


async def write(etcd: EtcdClient, key: str, value: bytes) -> None:
    """Write once; send again only what provably did not reach etcd.

    Whatever else failed may have been applied or not: the final read of etcd
    says which, and the instances must agree with it.
    """
    while True:
        try:
            await etcd.put(key, value)
        except EtcdUnavailableError as error:
            if error.may_have_reached_server:
                return
            await anyio.sleep(0.05)
        except EtcdError:
            return
        else:
            return


async def test_instances_keep_etcds_history_when_the_leader_dies_under_1000_writes(
    etcd_cluster: EtcdCluster,
) -> None:
    urls = etcd_cluster.urls
    async with AsyncExitStack() as stack, etcd_cluster.client(timeout=2.0) as writer:
        await writer.put(ROOT + "services/" + SERVICE, document(0))
        # Each instance prefers another member: one of them watches through the leader.
        instances = [await start(stack, urls[i:] + urls[:i]) for i in range(len(urls))]
        counter = itertools.count()
        halfway = asyncio.Event()

        async def worker() -> None:
            while (index := next(counter)) < 1000:
                if index == 300:
                    halfway.set()
                if index % 100 == 0:
                    await write(writer, ROOT + "services/" + SERVICE, document(index))
                await write(writer, f"{ROOT}seq/{index:04d}", str(index).encode())

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(worker)
            await halfway.wait()
            leader = await etcd_cluster.leader()
            await leader.stop(kill=True)
            await etcd_cluster.leader(exclude=[leader])
        history, _ = await etcd_history(writer)
        assert len(history) > 900  # the writes went on under the new leader
        await assert_same_as_etcd(writer, instances)


async def test_an_instance_behind_a_blackholed_member_moves_to_another_and_resumes(
    etcd_cluster: EtcdCluster,
) -> None:
    first, *others = etcd_cluster.members
    async with (
        AsyncExitStack() as stack,
        etcd_cluster.client() as writer,
        TcpProxy("127.0.0.1", first.port) as proxy,
    ):
        await writer.put(ROOT + "services/" + SERVICE, document(1))
        instance = await start(stack, [proxy.url, *(member.url for member in others)])
        await writer.put(ROOT + "seq/a", b"1")
        before = await instance.caught_up((await etcd_history(writer))[1])
        proxy.blackhole()  # the member is gone for the instance, without a reset
        await writer.put(ROOT + "seq/b", b"2")
        await writer.put(ROOT + "services/" + SERVICE, document(2))
        await assert_same_as_etcd(writer, [instance])
        # Resumed from the revision it had applied: nothing read again, nothing repeated.
        assert before.applied_revision > 0
        assert [key for _, key in instance.history] == [ROOT + "seq/a", ROOT + "seq/b"]
        accepted = proxy.accepted
        await writer.put(ROOT + "seq/c", b"3")
        await assert_same_as_etcd(writer, [instance])
        assert proxy.accepted == accepted  # it stays on the member that answers


def flapped(instances: Sequence[Instance]) -> bool:
    """Whether an instance said it was connected again since it was last started."""
    return any(s.connection == "connected" for i in instances for s in i.statuses)


def refusals(events: list[dict[str, Any]], endpoint: str) -> int:
    """How many times ``endpoint`` refused to open a watch."""
    return sum(
        1
        for event in events
        if event["event"] == "healkit.etcd_endpoint_failed"
        and event["path"] == "/v3/watch"
        and event["endpoint"] == endpoint
        and "no leader" in event["reason"]
    )


async def test_without_quorum_instances_keep_their_configuration_and_resume_after(
    etcd_cluster: EtcdCluster,
) -> None:
    survivor, *lost = etcd_cluster.members
    async with (
        AsyncExitStack() as stack,
        etcd_cluster.client() as writer,
        TcpProxy("127.0.0.1", survivor.port) as proxy,
    ):
        await writer.put(ROOT + "services/" + SERVICE, document(1))
        instances = [
            await start(stack, etcd_cluster.urls),
            await start(stack, [proxy.url, *(member.url for member in lost)]),
        ]
        await writer.put(ROOT + "seq/a", b"1")
        await assert_same_as_etcd(writer, instances)
        with capture_events(logging.WARNING) as events:
            await etcd_cluster.stop(*lost, kill=True)
            # The survivor still accepts connections and has the data, but no
            # leader: the instances try it again and again, and must not take
            # it for etcd (they did, every liveness period, before it refused).
            with anyio.fail_after(WAIT):
                while not flapped(instances) and refusals(events, proxy.url) < 2:  # noqa: ASYNC110 - log events, no event to wait on
                    await anyio.sleep(0.05)
        for instance in instances:
            connections = [status.connection for status in instance.statuses]
            assert connections == ["unreachable"]
            assert instance.source.status.connection == "unreachable"
            # The last good configuration serves meanwhile.
            assert instance.endpoint() == "http://v1.payments.test"
        # `healkit status` fails, and says why.
        command = [sys.executable, "-m", "healkit", "status", "--namespace", NAMESPACE]
        command.extend(["--endpoints", survivor.url])
        status = await anyio.run_process(command, check=False)
        assert status.returncode == 1
        assert b"EtcdUnavailableError" in status.stderr
        # Quorum back: everything resumes, without a restart.
        await etcd_cluster.start(*lost)
        await writer.put(ROOT + "seq/b", b"2")
        await writer.put(ROOT + "services/" + SERVICE, document(2))
        await assert_same_as_etcd(writer, instances)
        for instance in instances:
            assert [status.connection for status in instance.statuses] == [
                "unreachable",
                "connected",
            ]


async def test_a_member_behind_the_others_does_not_roll_an_instance_back(
    etcd_cluster: EtcdCluster,
) -> None:
    leader = await etcd_cluster.leader()
    behind = next(member for member in etcd_cluster.members if member is not leader)
    async with (
        AsyncExitStack() as stack,
        leader.client() as writer,  # not through the member that will be frozen
        TcpProxy("127.0.0.1", leader.port) as proxy,
    ):
        await writer.put(ROOT + "services/" + SERVICE, document(1))
        instance = await start(stack, [proxy.url])
        behind.pause()  # it misses what follows
        for index in range(300):
            await writer.put(f"{ROOT}seq/{index:04d}", b"x" * 1000)
        await writer.put(ROOT + "services/" + SERVICE, document(2))
        _, revision = await etcd_history(writer)
        await instance.caught_up(revision)
        applied: list[int] = []
        given = anyio.Event()

        def heard(_: Sequence[WatchEvent], rev: int, *, replace: bool) -> None:
            applied.append(rev)
            if replace:
                given.set()

        instance.source.listen("seq/", heard)
        with anyio.fail_after(WAIT):
            await given.wait()  # the keys there, read again through the leader
        # The instance's next member is the one that comes back with the older revision.
        proxy.retarget("127.0.0.1", behind.port)
        forwarded = proxy.forwarded
        await proxy.cut()
        with anyio.fail_after(WAIT):
            while proxy.forwarded == forwarded:  # noqa: ASYNC110 - a count, no event to wait on
                await anyio.sleep(0.001)
        # Its watch waits in the frozen member's queue: answered first thing, behind.
        with capture_events(logging.WARNING) as events:
            behind.resume()
            await writer.put(ROOT + "seq/last", b"y")
            await assert_same_as_etcd(writer, [instance])
        went_back = [e for e in events if e["event"] == "healkit.etcd_revision_went_back"]
        assert went_back, "the member was not behind: the test did not test"
        assert went_back[0]["etcd_revision"] < revision
        assert applied == sorted(applied)
        assert all(rev > revision for rev in applied[1:])  # [0]: the keys there at listen()
        assert instance.endpoint() == "http://v2.payments.test"


async def test_etcds_grpc_proxy_does_not_serve_the_json_gateway(
    etcd_cluster: EtcdCluster,
) -> None:
    """What docs/etcd.md says of grpc-proxy: it speaks gRPC only; healkit needs the gateway."""
    port = unused_tcp_port()
    members = ",".join(member.endpoint for member in etcd_cluster.members)
    command = [str(find_etcd_binary()), "grpc-proxy", "start", f"--endpoints={members}"]
    command.append(f"--listen-addr=127.0.0.1:{port}")
    proxy = await anyio.open_process(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            with anyio.fail_after(WAIT):
                while True:  # serving: its /metrics answers
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(url + "/metrics") as response:
                            if response.status == 200:
                                break
                    await anyio.sleep(0.05)
        async with EtcdClient(url) as etcd:
            with pytest.raises(EtcdError, match="404"):
                await etcd.get("/healkit/")
    finally:
        proxy.kill()
        await proxy.wait()


async def record(etcd: EtcdClient, key: str, *, not_lease: int = 0) -> KeyValue:
    """Wait until ``key`` exists in etcd under a lease other than ``not_lease``; return it."""
    with anyio.fail_after(WAIT):
        while True:
            with contextlib.suppress(EtcdError):
                found = await etcd.get(key)
                if found is not None and found.lease not in {0, not_lease}:
                    return found
            await anyio.sleep(0.05)


async def test_fleet_health_records_outlive_a_lost_quorum_and_move_to_a_new_lease(
    etcd_cluster: EtcdCluster,
) -> None:
    primary = refused_url()
    async with AsyncExitStack() as stack, etcd_cluster.client() as writer, FaultServer() as good:
        routing = {"eject_after": 1, "eject_time": 60.0, "fleet": {"ttl": 2}}
        service = {"endpoints": [primary, good.url], "routing": routing}
        await writer.put(ROOT + "services/" + SERVICE, json.dumps(service).encode())
        etcd = await stack.enter_async_context(
            EtcdClient(etcd_cluster.urls, timeout=1.0, connect_timeout=0.5)
        )
        source = EtcdSource(etcd, namespace=NAMESPACE, liveness_timeout=LIVENESS)
        client = await stack.enter_async_context(healkit.Client(config=source, entry_points=False))
        router: Any = client.runtime.plugin_manager.get_plugin("routing")
        await client.get("/", service=SERVICE)  # the primary is refused: ejected, reported
        report = f"{ROOT}health/{SERVICE}/{quote(primary, safe='')}/{router.fleet_instance}"
        view = f"{ROOT}instances/{router.fleet_instance}"
        before = await record(writer, report)
        lost = etcd_cluster.members[1:]
        with capture_events(logging.WARNING) as events:
            await etcd_cluster.stop(*lost, kill=True)
            # No refresh for a whole TTL: the instance takes its lease for lost.
            with anyio.fail_after(WAIT):
                while not any(e["event"] == "healkit.etcd_lease_expired" for e in events):  # noqa: ASYNC110 - log events, no event to wait on
                    await anyio.sleep(0.05)
        # Meanwhile the instance routes as before, on what it knows itself.
        response = await client.get("/", service=SERVICE)
        assert response.status == 200
        assert [attempt.endpoint for attempt in response.outcome.attempts] == [good.url]  # type: ignore[union-attr]
        await etcd_cluster.start(*lost)
        # Quorum back: the report and the view are written again under a new lease...
        after = await record(writer, report, not_lease=before.lease)
        # (The view is written right after the reports: wait for it too.)
        assert (await record(writer, view, not_lease=before.lease)).lease == after.lease
        # ...so the old lease, which etcd could not expire without a leader, takes
        # nothing with it when it goes.
        await writer.lease_revoke(before.lease)
        assert await writer.get(report) is not None
