"""State that lives longer than one call does not grow with every new host, key or service.

The rule (see ``state`` in docs/configuration.md): state kept for a configured
service or endpoint lives as long as the configuration names it; state for
anything else is bounded. Each test drives one piece of state with thousands
of distinct inputs (hosts through ``LoopbackResolver``, services in a
document, records in a real etcd) and measures what healkit's own modules
still hold afterwards with ``tracemalloc`` (allocations whose traceback passes
through the module that keeps the state), so the bound is checked on memory,
not on private attributes.
"""

from __future__ import annotations

import gc
import io
import tracemalloc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import quote

import anyio
import msgspec
import pytest

import healkit
from healkit._cli.watch import _WatchReport
from healkit._routing.plugin import Router
from healkit.etcd import EtcdClient, EtcdSource, PutOp
from healkit.testing import EtcdServer, FaultServer, ManualClock
from tests.probe_support import Probes

pytestmark = pytest.mark.anyio


class Held:
    """The bytes still allocated, at the end of a ``holding`` block, by code under ``where``."""

    def __init__(self) -> None:
        self.size = 0


@contextmanager
def holding(where: str) -> Iterator[Held]:
    """Measure what allocations made inside the block by code in ``where`` (a path part) hold.

    An allocation counts if its innermost frame is in ``where``: the entries a
    module's maps hold, not what a library it calls caches on its own.
    """
    held = Held()
    gc.collect()
    tracemalloc.start(1)
    try:
        yield held
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held.size = sum(trace.size for trace in snapshot.traces if where in trace.traceback[0].filename)


# -- the routing plugin: round-robin turns of services no longer configured -------------

SERVICES = 5000


def balanced(server: FaultServer, names: range) -> dict[str, Any]:
    """Services with two endpoints each (round robin between them)."""
    return {
        "services": {
            f"svc-{index}": {"endpoints": [f"{server.url}/{index}/a", f"{server.url}/{index}/b"]}
            for index in names
        }
    }


async def test_routing_forgets_the_turns_of_services_the_configuration_dropped(
    fault_server: FaultServer,
) -> None:
    async with healkit.Client(
        config=balanced(fault_server, range(1)), entry_points=False
    ) as client:
        assert (await client.get("/x", service="svc-0")).status == 200
        with holding("healkit/_routing/") as held:
            # Services come and go (one document per deployment, say): each is
            # called once while configured, then the next document drops it.
            for start in range(0, SERVICES, 500):
                client.runtime.apply(balanced(fault_server, range(start, start + 500)))
                for index in range(start, start + 500):
                    assert (await client.get("/x", service=f"svc-{index}")).status == 200
            client.runtime.apply(balanced(fault_server, range(1)))
    # Nothing per service called before: the 4,999 services it no longer names
    # left no health record and no turn. What is left is the size of the maps'
    # tables, sized for the 500 services configured at once (measured: ~30 KiB
    # here; before the fix, ~450 KiB, and growing with every service).
    assert held.size < 96 * 1024


# -- fleet health: records in etcd for endpoints no service shares health for ----------

NAMESPACE = "bounds"
RECORDS = 5000


def fleet_document(*endpoints: str) -> bytes:
    routing = {"eject_after": 1, "fleet": {"ttl": 2}}
    return msgspec.json.encode({"endpoints": list(endpoints), "routing": routing})


async def write_records(etcd: EtcdClient, keys: list[str]) -> int:
    """Write a health record under each of ``keys`` (relative to the namespace); last revision."""
    revision = 0
    for start in range(0, len(keys), 100):
        ops = [
            PutOp(key=f"/healkit/{NAMESPACE}/{key}".encode(), value=b"out")
            for key in keys[start : start + 100]
        ]
        revision = (await etcd.txn(success=ops)).revision
    return revision


async def listened(source: EtcdSource, prefix: str) -> None:
    """Listen to ``prefix`` until its keys were given (to every listener before too)."""
    given = anyio.Event()
    stop = source.listen(prefix, lambda _events, _revision, *, replace: replace and given.set())
    try:
        await given.wait()
    finally:
        stop()


def record(service: str, endpoint: str, instance: str) -> str:
    return f"health/{service}/{quote(endpoint, safe='')}/{instance}"


async def test_fleet_health_keeps_the_records_of_endpoints_that_share_health_only(
    etcd_server: EtcdServer, fault_server: FaultServer
) -> None:
    # Anyone who may write fleet health records (every instance) may write
    # them for any service and endpoint; only those of the services that share
    # health are of use, and are kept.
    shared, late = f"{fault_server.url}/a", f"{fault_server.url}/late"
    async with etcd_server.client() as etcd:
        await etcd.put(
            f"/healkit/{NAMESPACE}/services/shared", fleet_document(shared, shared + "2")
        )
        source = EtcdSource(etcd, namespace=NAMESPACE)
        async with healkit.Client(config=source, entry_points=False) as client:
            router = client.runtime.plugin_manager.get_plugin("routing")
            assert isinstance(router, Router)
            with holding("healkit/_routing/") as held:
                ghosts = [
                    record(f"ghost-{index}", f"http://ghost-{index}.test", "someone")
                    for index in range(RECORDS)
                ]
                revision = await write_records(
                    etcd,
                    [*ghosts, record("shared", shared, "other"), record("late", late, "other")],
                )
                with anyio.fail_after(30):
                    await source.wait_until(lambda s: s.applied_revision >= revision)
            assert held.size < 16 * 1024  # before: ~2 MiB, a set and a key per record
            assert {s.endpoint: s.fleet_reports for s in router.status("shared")}[shared] == 1
            # A service that starts sharing health later finds the records already there.
            put = await etcd.put(
                f"/healkit/{NAMESPACE}/services/late", fleet_document(late, late + "2")
            )
            with anyio.fail_after(10):
                await source.wait_until(lambda s: s.applied_revision >= put.revision)
                # The router listens again; the records come with the watch's next read,
                # which a listener registered after it gets too.
                await listened(source, "health/")
            assert {s.endpoint: s.fleet_reports for s in router.status("late")}[late] == 1


async def test_the_etcd_source_keeps_no_copy_of_keys_nobody_listens_to(
    etcd_server: EtcdServer, fault_server: FaultServer
) -> None:
    async with etcd_server.client() as etcd:
        await etcd.put(
            f"/healkit/{NAMESPACE}/services/shared", fleet_document(fault_server.url + "/a")
        )
        source = EtcdSource(etcd, namespace=NAMESPACE)
        async with healkit.Client(config=source, entry_points=False):
            with holding("healkit/etcd/") as held:
                stray = [f"junk/{index}" for index in range(RECORDS // 2)]
                ghosts = [
                    record(f"ghost-{index}", f"http://ghost-{index}.test", "someone")
                    for index in range(RECORDS // 2)
                ]
                revision = await write_records(etcd, [*stray, *ghosts])
                with anyio.fail_after(30):
                    await source.wait_until(lambda s: s.applied_revision >= revision)
    assert held.size < 64 * 1024


# -- probes: when each endpoint is due, for endpoints the configuration dropped ---------


def probed(server: FaultServer, names: range) -> dict[str, Any]:
    """Services with two endpoints each, probed."""
    document = balanced(server, names)
    for service in document["services"].values():
        service["routing"] = {"probe": {"path": "/probe", "interval": 60.0}}
    return document


async def test_probes_forget_when_the_endpoints_the_configuration_dropped_were_due(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    batch = 250
    async with healkit.Client(
        config=probed(fault_server, range(0)), entry_points=False, clock=manual_clock
    ) as client:
        with holding("healkit/_routing/probes.py") as held:
            # Services with probes come and go; each batch is probed once (two
            # endpoints each) before the next document replaces it.
            for start in range(0, SERVICES, batch):
                client.runtime.apply(probed(fault_server, range(start, start + batch)))
                with anyio.fail_after(30):
                    await fault_server.wait_for_hits(2 * (start + batch))
            client.runtime.apply(probed(fault_server, range(1)))
            with anyio.fail_after(30):
                await fault_server.wait_for_hits(2 * SERVICES + 2)
    # What is left is the table of the map, sized for one batch (measured: ~15 KiB;
    # before the fix, ~1.1 MiB: one entry for each endpoint ever probed).
    assert held.size < 64 * 1024


async def test_probes_keep_one_small_entry_per_endpoint_between_probes(
    fault_server: FaultServer,
) -> None:
    # Each endpoint's probe is scheduled on its own: between two probes what it
    # keeps is its due time in the scheduler's heap and its slot in the table of
    # probes in flight (measured: ~300 bytes an endpoint), not a task asleep for
    # it (measured: ~2.3 KiB an endpoint).
    endpoints = 500
    clock = ManualClock(auto_advance=False)
    probes = Probes(clock)
    async with healkit.Client(
        config=probed(fault_server, range(0)), plugins=[probes], entry_points=False, clock=clock
    ) as client:
        with holding("healkit/_routing/probes.py") as held:
            client.runtime.apply(probed(fault_server, range(endpoints // 2)))
            await probes.wait_for(None, endpoints)  # each probed once, each result counted
            with anyio.fail_after(30):
                await clock.wait_for_sleepers()  # asleep until the next one is due
    assert held.size < 400 * endpoints


# -- healkit config watch: revisions reported, while watching until stopped -------------


class Discard(io.TextIOBase):
    """An output stream that keeps nothing."""

    def write(self, text: str) -> int:
        return len(text)


def test_config_watch_without_a_count_keeps_nothing_per_revision() -> None:
    report = _WatchReport((), Discard(), None)
    report.started("/healkit/x/", {}, 1)
    with holding("healkit/_cli/watch.py") as held:
        for revision in range(2, 2 + 20_000):
            event = {
                "event": "healkit.etcd_document_rejected",
                "revision": revision,
                "key": "services/api",
                "path": "$.timeout",
                "reason": "expected a number",
            }
            report.log("error", event)
    assert held.size < 4 * 1024  # before: a set of every revision (~2 MiB for 20,000)
    assert not report.done.is_set()


# -- attempt timers: the context of the attempt that armed a tick ------------------------

PAYLOAD: ContextVar[object] = ContextVar("payload")


class Payload:
    """Something large a caller keeps in a context variable (a request, a session)."""


async def test_an_ended_call_leaves_nothing_of_its_context_alive(
    fault_server: FaultServer,
) -> None:
    # The attempt timer fires long after the call (its time limit): it must not
    # hold the caller's context, or the call's, until then. (aiohttp's connection
    # holds the context that opened it while the connection lives: closed here.)
    config = {"services": {"svc": {"endpoints": [fault_server.url]}}}
    async with healkit.Client(config=config, entry_points=False) as client:
        payload = Payload()
        alive = weakref.ref(payload)
        token = PAYLOAD.set(payload)
        try:
            assert (await client.get("/x", service="svc")).status == 200
        finally:
            PAYLOAD.reset(token)
        del payload
    gc.collect()
    assert alive() is None
