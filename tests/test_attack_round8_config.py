"""The configuration plane attacked again (round 8), with the docs as the only guide.

Each test is a probe of issue 12's promises against a real etcd, that found a
defect: instances that disagreed on which of two services owns an endpoint
both name, once the owner was rewritten, deleted, created again or moved
(a starting instance judged by the order of the last writes, a running one
by what it had applied, and a document refused because of another one was
never judged again when that one went).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable

import anyio
import pytest

import healkit
from healkit.etcd import DeleteOp, EtcdClient, EtcdSource, EtcdSourceStatus, PutOp
from healkit.testing import EtcdServer, TcpProxy, capture_events

pytestmark = pytest.mark.anyio

DEADLINE = 15.0
SHARED = "http://shared.test"


def document(*endpoints: str, eject_after: int = 3) -> bytes:
    return json.dumps(
        {"endpoints": list(endpoints), "routing": {"eject_after": eject_after}}
    ).encode()


async def until(source: EtcdSource, condition: Callable[[EtcdSourceStatus], bool]) -> None:
    with anyio.fail_after(DEADLINE):
        await source.wait_until(condition)


State = tuple[frozenset[str], str | None, frozenset[str]]


def state(runtime: healkit.Runtime, source: EtcdSource) -> State:
    """What an instance applies: its services, the owner of the shared endpoint, its rejections."""
    config = runtime.config
    return (
        frozenset(config.services),
        config.service_for_url(SHARED + "/pay"),
        frozenset(source.status.rejected),
    )


@contextlib.asynccontextmanager
async def instances(
    etcd: EtcdClient, namespace: str
) -> AsyncIterator[list[tuple[healkit.Runtime, EtcdSource]]]:
    """Three running instances, each on a watch of its own (liveness timeouts differ)."""
    async with contextlib.AsyncExitStack() as stack:
        running = []
        for liveness in (7.0, 8.0, 9.0):
            source = EtcdSource(etcd, namespace=namespace, liveness_timeout=liveness)
            runtime = await stack.enter_async_context(
                healkit.Runtime(config=source, entry_points=False)
            )
            running.append((runtime, source))
        yield running


async def started_now(etcd: EtcdClient, namespace: str) -> State:
    source = EtcdSource(etcd, namespace=namespace, liveness_timeout=6.0)
    async with healkit.Runtime(config=source, entry_points=False) as runtime:
        return state(runtime, source)


# -- which of two services owns an endpoint both name --------------------------------------------

# Each scenario starts with "zeta" owning the endpoint and "alpha" (written
# later, naming it as http://SHARED.test:80/) refused, and gives the owner
# every instance must then agree on.
SCENARIOS = {
    # The owner's document rewritten (a policy change): it keeps its endpoint.
    "owner rewritten": "zeta",
    # The owner deleted: the service refused for its endpoint takes it.
    "owner deleted": "alpha",
    # Deleted, then created again: now the later key, it is the one refused.
    "owner deleted and created again": "alpha",
    # Moved to a new key "beta", in one transaction or in two (the new key
    # first, then the old deleted): "alpha", whose key is older than
    # "beta"'s, owns it, as an instance that starts then can only judge.
    "moved in one transaction": "alpha",
    "moved in two transactions": "alpha",
}


async def _play(etcd: EtcdClient, root: str, scenario: str) -> int:
    zeta, beta = (f"{root}services/{name}".encode() for name in ("zeta", "beta"))
    if scenario == "owner rewritten":
        written = await etcd.put(zeta, document(SHARED, eject_after=5))
    elif scenario == "owner deleted":
        written = await etcd.delete(zeta)
    elif scenario == "owner deleted and created again":
        await etcd.delete(zeta)
        written = await etcd.put(zeta, document(SHARED))
    elif scenario == "moved in one transaction":
        written = await etcd.txn(
            success=[DeleteOp(key=zeta), PutOp(key=beta, value=document(SHARED + "/"))]
        )
    else:
        await etcd.put(beta, document(SHARED + "/"))
        written = await etcd.delete(zeta)
    return written.revision


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_every_instance_agrees_on_the_owner_of_a_shared_endpoint(
    etcd_server: EtcdServer, scenario: str
) -> None:
    namespace = "owner"
    root = f"/healkit/{namespace}/"
    async with etcd_server.client() as etcd:
        await etcd.put(root + "services/zeta", document(SHARED))
        async with instances(etcd, namespace) as running:
            later = await etcd.put(root + "services/alpha", document("http://SHARED.test:80/"))
            for _, source in running:
                await until(source, lambda s: s.applied_revision >= later.revision)
            with capture_events() as logs:
                revision = await _play(etcd, root, scenario)
                for _, source in running:
                    await until(source, lambda s: s.applied_revision >= revision)
            seen = {state(runtime, source) for runtime, source in running}
            fresh = await started_now(etcd, namespace)
        # Before: a running instance kept what it had applied ("zeta", or no
        # owner at all once zeta was deleted: alpha was never judged again),
        # while an instance started then judged by the last writes ("alpha").
        assert seen == {fresh}
        assert fresh[1] == SCENARIOS[scenario]
        # A document judged again and refused again is not reported again.
        reported = [e["key"] for e in logs if e["event"] == "healkit.etcd_document_rejected"]
        assert f"{root}services/alpha" not in reported


async def test_two_services_created_in_one_transaction_are_judged_in_key_order(
    etcd_server: EtcdServer,
) -> None:
    namespace = "together"
    root = f"/healkit/{namespace}/"
    async with etcd_server.client() as etcd, instances(etcd, namespace) as running:
        # Written zeta first, alpha second: one revision, one creation.
        written = await etcd.txn(
            success=[
                PutOp(key=f"{root}services/zeta".encode(), value=document(SHARED)),
                PutOp(key=f"{root}services/alpha".encode(), value=document(SHARED + "/")),
            ]
        )
        for _, source in running:
            await until(source, lambda s: s.applied_revision >= written.revision)
        seen = {state(runtime, source) for runtime, source in running}
        fresh = await started_now(etcd, namespace)
    # Before: running instances kept the order of the transaction's operations
    # (zeta), a starting one the order of the keys (alpha).
    assert seen == {fresh}
    assert fresh[1] == "alpha"


async def test_an_owner_deleted_and_created_again_in_a_compacted_gap_loses_its_endpoint(
    etcd_server: EtcdServer,
) -> None:
    namespace = "gap"
    root = f"/healkit/{namespace}/"
    async with etcd_server.client() as direct:
        await direct.put(root + "services/zeta", document(SHARED))
        await direct.put(root + "services/alpha", document(SHARED))
        async with (
            TcpProxy("127.0.0.1", etcd_server.port) as proxy,
            EtcdClient(proxy.url, timeout=2.0) as via,
        ):
            source = EtcdSource(via, namespace=namespace, random=lambda: 0.1)
            async with healkit.Runtime(config=source, entry_points=False) as runtime:
                assert state(runtime, source)[1] == "zeta"
                proxy.block()
                await proxy.cut()
                await until(source, lambda s: s.connection == "unreachable")
                # Deleted and written again with the very same document, while away:
                # the resynchronization finds the same text under a new key.
                await direct.delete(root + "services/zeta")
                last = await direct.put(root + "services/zeta", document(SHARED))
                await etcd_server.compact(last.revision)
                proxy.unblock()
                await until(source, lambda s: s.applied_revision >= last.revision)
                seen = state(runtime, source)
            fresh = await started_now(direct, namespace)
    # Before: the resynchronized instance kept zeta (its text had not changed).
    assert seen == fresh
    assert fresh[1] == "alpha"
    assert fresh[2] == {"services/zeta"}


async def test_defaults_refused_for_a_service_apply_once_that_service_is_fixed(
    etcd_server: EtcdServer,
) -> None:
    namespace = "refit"
    root = f"/healkit/{namespace}/"
    capped = json.dumps({"endpoints": ["http://a.test"], "routing": {"eject_time_max": 50}})
    async with etcd_server.client() as etcd:
        await etcd.put(root + "services/a", capped)
        async with instances(etcd, namespace) as running:
            # Valid alone, but a's eject_time_max is below it: refused.
            breaking = await etcd.put(root + "defaults", b'{"routing": {"eject_time": 100}}')
            for _, source in running:
                await until(source, lambda s: s.applied_revision >= breaking.revision)
                assert source.status.rejected == {"defaults": breaking.revision}
            # a no longer caps the ejection time: the defaults fit it now.
            fixed = await etcd.put(root + "services/a", document("http://a.test"))
            for _, source in running:
                await until(source, lambda s: s.applied_revision >= fixed.revision)
            seen = {
                (
                    runtime.config.defaults.as_document()["routing"]["eject_time"],
                    state(runtime, source),
                )
                for runtime, source in running
            }
            starting = EtcdSource(etcd, namespace=namespace, liveness_timeout=6.0)
            async with healkit.Runtime(config=starting, entry_points=False) as runtime:
                fresh = (
                    runtime.config.defaults.as_document()["routing"]["eject_time"],
                    state(runtime, starting),
                )
    # Before: the running instances kept the defaults refused (eject_time 30)
    # until the defaults were written again; an instance started then applied them.
    assert seen == {fresh}
    assert fresh[0] == 100.0
    assert fresh[1][2] == frozenset()


async def test_an_older_key_written_again_takes_the_endpoint_of_a_younger_one(
    etcd_server: EtcdServer,
) -> None:
    namespace = "older"
    root = f"/healkit/{namespace}/"
    async with etcd_server.client() as etcd:
        await etcd.put(root + "services/alpha", document("http://alpha.test"))
        await etcd.put(root + "services/zeta", document(SHARED))
        async with instances(etcd, namespace) as running:
            written = await etcd.put(root + "services/alpha", document("http://alpha.test", SHARED))
            for _, source in running:
                await until(source, lambda s: s.applied_revision >= written.revision)
            seen = {state(runtime, source) for runtime, source in running}
            fresh = await started_now(etcd, namespace)
            # alpha gives the endpoint up: zeta, judged again, has it back.
            back = await etcd.put(root + "services/alpha", document("http://alpha.test"))
            for _, source in running:
                await until(source, lambda s: s.applied_revision >= back.revision)
            again = {state(runtime, source) for runtime, source in running}
            fresh_again = await started_now(etcd, namespace)
    # Before: running instances refused alpha's write and kept zeta's endpoint;
    # an instance started then gave it to alpha, whose key is older, and refused zeta.
    assert seen == {fresh}
    assert fresh == (frozenset({"alpha"}), "alpha", frozenset({"services/zeta"}))
    assert again == {fresh_again}
    assert fresh_again == (frozenset({"alpha", "zeta"}), "zeta", frozenset())
