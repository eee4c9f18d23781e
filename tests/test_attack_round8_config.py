"""The configuration plane attacked again (round 8), with the docs as the only guide.

Each test is a probe of issue 12's promises against a real etcd, that found a
defect: instances that disagreed on which of two services owns an endpoint
both name, once the owner was rewritten, deleted, created again or moved
(a starting instance judged by the order of the last writes, a running one
by what it had applied, and a document refused because of another one was
never judged again when that one went).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import healkit
from healkit.etcd import DeleteOp, EtcdClient, EtcdSource, EtcdSourceStatus, PutOp
from healkit.testing import EtcdServer, TcpProxy, capture_events
from tests.cli_support import cli

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


async def test_defaults_judged_again_never_cost_a_change_of_a_service_they_break(
    etcd_server: EtcdServer,
) -> None:
    namespace = "innocent"
    root = f"/healkit/{namespace}/"
    capped = {"endpoints": ["http://a.test"], "routing": {"eject_time_max": 50}}
    async with etcd_server.client() as etcd:
        await etcd.put(root + "services/a", json.dumps(capped))
        source = EtcdSource(etcd, namespace=namespace)
        async with healkit.Runtime(config=source, entry_points=False) as runtime:
            breaking = await etcd.put(root + "defaults", b'{"routing": {"eject_time": 100}}')
            await until(source, lambda s: s.applied_revision >= breaking.revision)
            # Valid with the defaults in force, still below the refused ones.
            capped["routing"] = {"eject_time_max": 60}
            changed = await etcd.put(root + "services/a", json.dumps(capped))
            await until(source, lambda s: s.applied_revision >= changed.revision)
            assert source.status.rejected == {"defaults": breaking.revision}
            assert runtime.config.policy("a").as_document()["routing"]["eject_time_max"] == 60.0


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


async def test_defaults_that_break_many_services_are_reported_in_bounded_lines(
    etcd_server: EtcdServer,
) -> None:
    namespace = "many"
    root = f"/healkit/{namespace}/"
    capped = {"routing": {"eject_time_max": 50}}
    async with etcd_server.client() as etcd:
        await etcd.txn(
            success=[
                PutOp(
                    key=f"{root}services/s{i}".encode(),
                    value=json.dumps({"endpoints": [f"http://s{i}.test"], **capped}).encode(),
                )
                for i in range(50)
            ]
        )
        source = EtcdSource(etcd, namespace=namespace)
        async with healkit.Runtime(config=source, entry_points=False):
            with capture_events() as logs:
                breaking = await etcd.put(root + "defaults", b'{"routing": {"eject_time": 100}}')
                await until(source, lambda s: s.applied_revision >= breaking.revision)
    assert source.status.rejected == {"defaults": breaking.revision}
    # Before: one line per service the defaults break, fifty here; a namespace
    # of thousands logged thousands of lines on the event loop at each such write.
    reported = [e for e in logs if e["event"] == "healkit.etcd_document_rejected"]
    assert len(reported) == 21
    assert {e["key"] for e in reported} == {root + "defaults"}
    assert reported[-1]["path"] == "$"
    assert reported[-1]["reason"] == "and 30 more issues (not logged)"


async def test_a_service_refused_for_one_endpoint_blocks_no_other(
    etcd_server: EtcdServer,
) -> None:
    namespace = "chain"
    root = f"/healkit/{namespace}/"
    other = "http://other.test"
    async with etcd_server.client() as etcd:
        await etcd.put(root + "services/a", document(SHARED))
        async with instances(etcd, namespace) as running:
            # c is refused (a owns SHARED); b, created later, names c's other endpoint.
            await etcd.put(root + "services/c", document(SHARED, other))
            written = await etcd.put(root + "services/b", document(other))
            for _, source in running:
                await until(source, lambda s: s.applied_revision >= written.revision)
            seen = {state(runtime, source) for runtime, source in running}
            fresh = await started_now(etcd, namespace)
    assert seen == {(frozenset({"a", "b"}), "a", frozenset({"services/c"}))}
    # Failed before: the instance that started refused b too ("also an endpoint of service 'c'").
    assert fresh == (frozenset({"a", "b"}), "a", frozenset({"services/c"}))


# -- a server that only looks like etcd ----------------------------------------------------------


def _header(revision: int, cluster: int) -> dict[str, str]:
    return {"cluster_id": str(cluster), "member_id": "5", "revision": str(revision)}


@contextlib.asynccontextmanager
async def two_histories(watch_header: dict[str, str]) -> AsyncIterator[tuple[str, list[int]]]:
    """An HTTP server shaped like etcd whose reads and watches are not of one history.

    Reads answer from cluster 4660 at revision 10; each watch is created with
    ``watch_header`` (another cluster, or a revision below the read's) and
    stays open. Yields its URL and the list of reads served (one item each).
    """
    reads: list[int] = []
    stop = asyncio.Event()
    value = base64.b64encode(document("http://a.test")).decode()
    key = base64.b64encode(b"/healkit/fake/services/a").decode()

    async def range_(_: web.Request) -> web.Response:
        reads.append(1)
        kv = {"key": key, "value": value, "mod_revision": "3", "create_revision": "3"}
        return web.json_response({"header": _header(10, 4660), "kvs": [kv], "count": "1"})

    async def watch(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        created = {"result": {"header": watch_header, "created": True}}
        await response.write(json.dumps(created).encode() + b"\n")
        await stop.wait()
        return response

    app = web.Application()
    app.router.add_post("/v3/kv/range", range_)
    app.router.add_post("/v3/watch", watch)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", reads
    finally:
        stop.set()
        await runner.cleanup()


@pytest.mark.parametrize(
    ("watch_header", "reason"),
    [
        (_header(10, 4661), "its watch answers from cluster 1235, its read from 1234"),
        (_header(5, 4660), "its watch is at revision 5, below its read's 10"),
    ],
)
async def test_endpoints_that_serve_two_histories_are_reported_not_read_in_a_loop(
    watch_header: dict[str, str], reason: str
) -> None:
    async with two_histories(watch_header) as (url, reads), EtcdClient(url) as etcd:
        source = EtcdSource(etcd, namespace="fake", random=lambda: 1.0)
        with capture_events() as logs:
            async with healkit.Runtime(config=source, entry_points=False) as runtime:
                # Before: "connected" for ever, while the feed read the namespace
                # again as fast as the server answered (hundreds of reads a
                # second), with a warning each time.
                await until(source, lambda s: s.connection == "unreachable")
                assert len(reads) == 2  # the start, and once again
                assert runtime.config.policy("a").endpoints == ("http://a.test",)
        assert source.status.last_error == (
            f"etcd at {url} does not serve one history: {reason},"
            " again after reading everything again"
        )
        assert [e["event"] for e in logs].count("healkit.etcd_unreachable") == 1


# -- the command line judges as the instances do ------------------------------------------------


async def test_status_shows_the_owner_of_a_shared_endpoint_that_instances_apply(
    etcd_server: EtcdServer, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = "shown"
    root = f"/healkit/{namespace}/"
    async with etcd_server.client() as etcd:
        await etcd.put(root + "services/zeta", document(SHARED))
        await etcd.put(root + "services/alpha", document(SHARED + "/"))
        source = EtcdSource(etcd, namespace=namespace)
        async with healkit.Runtime(config=source, entry_points=False) as runtime:
            assert state(runtime, source)[1:] == ("zeta", frozenset({"services/alpha"}))
    run = await anyio.to_thread.run_sync(
        lambda: cli(capsys, "status", "--endpoints", etcd_server.url, "--namespace", namespace)
    )
    # Before: zeta was marked INVALID and its traffic shown going to alpha
    # (the first in key order), the opposite of what every instance applies.
    assert run.status == 1
    assert run.err == f"healkit: {root}: invalid: services/alpha\n"
    assert "service zeta (fleet health off):" in run.out
    assert "service alpha" not in run.out


async def test_a_push_is_refused_for_its_own_service_sharing_an_endpoint_in_etcd(
    etcd_server: EtcdServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    namespace = "pushed"
    async with etcd_server.client() as etcd:
        await etcd.put(f"/healkit/{namespace}/services/zeta", document(SHARED))
    pushed = tmp_path / "beta.json"
    pushed.write_text(json.dumps({"services": {"beta": {"endpoints": [SHARED + ":80"]}}}))
    run = await anyio.to_thread.run_sync(
        lambda: cli(
            capsys,
            "config",
            "push",
            str(pushed),
            "--endpoints",
            etcd_server.url,
            "--namespace",
            namespace,
        )
    )
    # Before: the service in etcd (zeta) was blamed, "in etcd, not in the
    # pushed document", as if the new key would take the endpoint from it.
    assert run.status == 1
    assert "$.services.beta.endpoints: endpoint http://shared.test is also an endpoint" in run.err
    assert "in etcd, not in the pushed document" not in run.err


# -- the property, with shared endpoints, moves and deletes -------------------------------------

NAMESPACE = "mixed"
ROOT = f"/healkit/{NAMESPACE}/"
NAMES = ("a", "b", "c", "d")
# Written differently, the same three endpoints: two services naming one conflict.
POOL = (
    "http://p.test",
    "http://P.test:80/",
    "http://q.test/",
    "http://q.test",
    "http://r.test/x",
    "http://r.test/x/",
)
VALID_DOCUMENT = st.builds(
    lambda endpoint, eject_after: json.dumps(
        {"endpoints": [endpoint], "routing": {"eject_after": eject_after}}
    ).encode(),
    # One endpoint each: a service refused for one of two endpoints has a test
    # of its own (test_a_service_refused_for_one_endpoint_blocks_no_other).
    st.sampled_from(POOL),
    st.integers(1, 3),
)
INVALID = (
    b"{not json",
    b'{"endpoints": "http://p.test"}',
    b'{"endpoints": ["http://p.test", "http://P.test:80/"]}',  # a repeat
    b'{"endpoints": ["http://p.test"], "routing": {"eject_after": true}}',
    b'{"endpoints": ["http://s.test"], "routing": {"eject_after": 2.0}}',
)
INVALID_DOCUMENT = st.sampled_from(INVALID)
Op = tuple[str, str, bytes | None]  # (kind, name, value): put, delete, or move (name -> name2)
OPERATIONS = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(NAMES), VALID_DOCUMENT | INVALID_DOCUMENT),
    st.tuples(st.just("delete"), st.sampled_from(NAMES), st.none()),
    st.tuples(st.just("move"), st.permutations(NAMES).map(lambda p: p[0] + p[1]), VALID_DOCUMENT),
)


def _ops(operation: Op) -> tuple[list[PutOp | DeleteOp], set[str]]:
    kind, name, value = operation
    key = (ROOT + "services/").encode()
    if kind == "put":
        assert value is not None
        return [PutOp(key=key + name.encode(), value=value)], {name}
    if kind == "delete":
        return [DeleteOp(key=key + name.encode())], {name}
    assert value is not None
    return [DeleteOp(key=key + name[0].encode()), PutOp(key=key + name[1].encode(), value=value)], {
        name[0],
        name[1],
    }


def _transaction(operations: list[Op]) -> list[PutOp | DeleteOp]:
    ops: list[PutOp | DeleteOp] = []
    touched: set[str] = set()
    for operation in operations:
        more, names = _ops(operation)
        if not names & touched:  # etcd refuses a key twice in one transaction
            ops += more
            touched |= names
    return ops


def applied(runtime: healkit.Runtime, source: EtcdSource) -> str:
    """What an instance applies, as text: policies, the owner of each endpoint, rejections."""
    config = runtime.config
    return json.dumps(
        [
            {name: policy.as_document() for name, policy in sorted(config.services.items())},
            [
                config.service_for_url(url)
                for url in ("http://p.test", "http://q.test", "http://r.test/x")
            ],
            sorted(source.status.rejected),
        ]
    )


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(transactions=st.lists(st.lists(OPERATIONS, min_size=1, max_size=3), min_size=1, max_size=8))
async def test_instances_agree_under_mixed_writes_with_shared_endpoints_moves_and_deletes(
    etcd_server: EtcdServer, transactions: list[list[Op]]
) -> None:
    async with etcd_server.client() as etcd:
        await etcd.put(ROOT + "services/seed", document("http://seed.test"))
        current: dict[bytes, bytes] = {}
        try:
            async with instances(etcd, NAMESPACE) as running:
                for operations in transactions:
                    written = await etcd.txn(success=_transaction(operations))
                    for op in _transaction(operations):
                        if isinstance(op, PutOp):
                            current[op.key] = op.value
                        else:
                            current.pop(op.key, None)
                    for _, source in running:
                        await until(source, lambda s, r=written.revision: s.applied_revision >= r)
                    seen = {applied(runtime, source) for runtime, source in running}
                    # Three instances, three watches: one judgement.
                    assert len(seen) == 1
                runtime, source = running[0]
                # A running instance keeps the last good document of a key
                # whose latest one is refused; one that starts cannot know it.
                kept_an_older_document = any(
                    key.removeprefix("services/") in runtime.config.services
                    for key in source.status.rejected
                ) or any(value in INVALID for value in current.values())
                if not kept_an_older_document:
                    # Without history to remember, an instance that starts now
                    # applies the same: one owner per endpoint, by key age.
                    starting = EtcdSource(etcd, namespace=NAMESPACE, liveness_timeout=6.0)
                    async with healkit.Runtime(config=starting, entry_points=False) as fresh:
                        assert applied(fresh, starting) == seen.pop()
        finally:
            await etcd.delete(ROOT, prefix=True)
