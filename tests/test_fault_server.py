"""Tests of the fault-injecting upstream server (healkit.testing._faults)."""

import asyncio
import dataclasses
import ssl
from collections.abc import AsyncIterator

import aiohttp
import anyio
import pytest
import trustme

from healkit.testing import _faults, _ports
from healkit.testing._faults import Fault, FaultKind, FaultServer

# Guards against a hang, never a timing assertion: every test finishes far sooner.
GUARD = 5.0
# A client timeout that a hanging fault must exceed; the faults below wait much longer.
# sock_read starts once the request is written, so a slow connect or TLS handshake on
# a loaded machine cannot use it up before the request reached the server.
SHORT = aiohttp.ClientTimeout(sock_read=0.05)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with FaultServer() as srv:
        yield srv


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as sess:
        yield sess


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ssl(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(params=["http", "https"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def any_server(scheme: str, server_ssl: ssl.SSLContext) -> AsyncIterator[FaultServer]:
    async with FaultServer(ssl_context=server_ssl if scheme == "https" else None) as srv:
        yield srv


@pytest.fixture
async def any_session(
    scheme: str, client_ssl: ssl.SSLContext
) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_ssl if scheme == "https" else True)
    async with aiohttp.ClientSession(connector=connector) as sess:
        yield sess


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    method: str = "GET",
    **kwargs: object,
) -> tuple[int, bytes]:
    async with session.request(method, url, **kwargs) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.read()


# -- Fault -------------------------------------------------------------------------


def test_fault_is_immutable_and_compares_by_value() -> None:
    fault = Fault.status(503, headers={"Retry-After": "1"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        fault.status_code = 200  # type: ignore[misc]
    assert fault == Fault.status(503, headers={"Retry-After": "1"})
    assert len({fault, Fault.status(503, headers={"Retry-After": "1"}), Fault.ok()}) == 2


def test_constructors_describe_the_fault() -> None:
    assert Fault.ok() == Fault(kind=FaultKind.RESPOND, status_code=200, body=b"ok")
    assert Fault.latency(1.5).delay == 1.5
    assert Fault.latency(1.5).status_code == 200
    assert Fault.json({"a": 1}).body == b'{"a":1}'
    assert ("Content-Type", "application/json") in Fault.json([]).headers
    assert Fault.json([], headers={"content-type": "application/x+json"}).headers == (
        ("content-type", "application/x+json"),
    )
    assert Fault.truncated(body=b"abc").declared_length == 4
    assert Fault.slow_body(3, 0.1, chunk=b"z").chunks == 3
    assert Fault.reset().with_latency(2.0) == Fault.reset(latency=2.0)
    assert Fault.blackhole().kind is FaultKind.BLACKHOLE


@pytest.mark.parametrize(
    "build",
    [
        lambda: Fault.status(99),
        lambda: Fault.status(600),
        lambda: Fault.latency(-1),
        lambda: Fault.latency(float("inf")),
        lambda: Fault.ok(latency=float("nan")),
        lambda: Fault.truncated(body=b"abc", declared_length=3),
        lambda: Fault.slow_body(0, 0.1),
        lambda: Fault.slow_body(2, -0.1),
        lambda: Fault.slow_body(2, 0.1, chunk=b""),
    ],
)
def test_invalid_faults_are_rejected(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_repr_is_short() -> None:
    text = repr(Fault.slow_body(3, 0.25))
    assert text == (
        "Fault(kind=SLOW_BODY, status_code=200, body=<1024 bytes>, chunks=3, chunk_delay=0.25)"
    )
    assert repr(Fault.reset()) == "Fault(kind=RESET)"


def test_all_is_sorted_and_complete() -> None:
    assert list(_faults.__all__) == sorted(_faults.__all__)
    assert set(_faults.__all__) == {
        "Fault",
        "FaultKind",
        "FaultMix",
        "FaultServer",
        "RecordedRequest",
    }
    assert list(_ports.__all__) == sorted(_ports.__all__)


# -- responses ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_default_is_ok_and_request_is_recorded(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}"
    url = f"{server.url}/a/b?x=1&y=2"
    assert await fetch(session, url, "POST", data=b"payload", headers={"X-Test": "yes"}) == (
        200,
        b"ok",
    )
    (record,) = server.requests
    assert (record.method, record.path, record.query_string) == ("POST", "/a/b", "x=1&y=2")
    assert record.headers["x-test"] == "yes"
    assert record.body == b"payload"
    assert record.fault == Fault.ok()
    assert record.arrived_at > 0


@pytest.mark.anyio
async def test_status_sends_body_and_headers(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    server.script("/", Fault.status(503, body=b"busy", headers={"Retry-After": "7"}))
    async with session.get(server.url + "/") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "7"
        assert await resp.read() == b"busy"


@pytest.mark.anyio
async def test_json(server: FaultServer, session: aiohttp.ClientSession) -> None:
    server.script("/j", Fault.json({"state": "degraded", "n": [1, 2]}, status=202))
    async with session.get(server.url + "/j") as resp:
        assert resp.status == 202
        assert resp.content_type == "application/json"
        assert await resp.json() == {"state": "degraded", "n": [1, 2]}


@pytest.mark.anyio
async def test_latency_delays_the_response(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    server.script("/slow", Fault.latency(30), then=Fault.latency(0.001, status=201))
    with pytest.raises(TimeoutError):
        await fetch(session, server.url + "/slow", timeout=SHORT)
    # The client gave up; the server notices and its handler ends.
    with anyio.fail_after(GUARD):
        await server.wait_for_idle()
    assert await fetch(session, server.url + "/slow") == (201, b"ok")


@pytest.mark.anyio
async def test_with_latency_composes(server: FaultServer, session: aiohttp.ClientSession) -> None:
    server.script("/", Fault.reset().with_latency(30))
    with pytest.raises(TimeoutError):
        await fetch(session, server.url + "/", timeout=SHORT)
    with anyio.fail_after(GUARD):
        assert await server.wait_for_hits(1, "/") == 1


@pytest.mark.anyio
async def test_head_follows_the_script(server: FaultServer, session: aiohttp.ClientSession) -> None:
    server.script("/h", Fault.status(503, body=b"no"), Fault.ok(body=b"12345"))
    assert await fetch(session, server.url + "/h", "HEAD") == (503, b"")
    async with session.head(server.url + "/h") as resp:
        assert resp.status == 200
        assert resp.content_length == 5
    assert server.hits("/h") == 2


@pytest.mark.anyio
async def test_head_gets_no_body_from_streamed_faults(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    server.script("/h", Fault.slow_body(2, 30, chunk=b"abc"), Fault.truncated(body=b"abc"))
    for length in (6, 4):
        async with session.head(server.url + "/h") as resp:
            assert (resp.status, resp.content_length) == (200, length)
    # Nothing stray was left on a kept-alive connection.
    assert await fetch(session, server.url + "/h") == (200, b"ok")


# -- connection faults (plain and TLS) -----------------------------------------------


@pytest.mark.anyio
async def test_reset_is_a_connection_error(
    any_server: FaultServer, any_session: aiohttp.ClientSession
) -> None:
    any_server.script("/r", Fault.reset())
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(any_session, any_server.url + "/r", "POST", data=b"unread")
    (record,) = any_server.requests
    assert record.fault.kind is FaultKind.RESET
    assert record.body == b""
    # The next request on the same session works (a fresh connection is made).
    assert await fetch(any_session, any_server.url + "/r") == (200, b"ok")


@pytest.mark.anyio
async def test_reset_after_body_reads_the_body(
    any_server: FaultServer, any_session: aiohttp.ClientSession
) -> None:
    any_server.script("/r", Fault.reset_after_body())
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(any_session, any_server.url + "/r", "POST", data=b"x" * 100_000)
    (record,) = any_server.requests
    assert record.method == "POST"
    assert record.body == b"x" * 100_000


@pytest.mark.anyio
async def test_aiohttp_resends_idempotent_requests_once_after_a_reset(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    # Not the fault server's doing, but every test of retries must know it:
    # ClientSession silently sends GET/HEAD/PUT/DELETE/OPTIONS/TRACE a second time
    # when the connection drops before a response (ClientOSError or
    # ServerDisconnectedError), even on a fresh connection. POST is not resent.
    server.script("/g", Fault.reset(), then=Fault.status(201))
    assert (await fetch(session, server.url + "/g", "PUT", data=b"b"))[0] == 201
    assert [r.fault.kind for r in server.requests] == [FaultKind.RESET, FaultKind.RESPOND]
    server.script("/g2", Fault.reset(), Fault.reset(), then=Fault.status(201))
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(session, server.url + "/g2")
    assert server.hits("/g2") == 2


@pytest.mark.anyio
async def test_truncated_body_is_a_payload_error(
    any_server: FaultServer, any_session: aiohttp.ClientSession
) -> None:
    any_server.script("/t", Fault.truncated(body=b"half", declared_length=100, status=200))
    async with any_session.get(any_server.url + "/t") as resp:
        assert resp.status == 200
        assert resp.content_length == 100
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


@pytest.mark.anyio
async def test_blackhole_hangs_until_the_client_gives_up(
    any_server: FaultServer, any_session: aiohttp.ClientSession
) -> None:
    any_server.set_default(Fault.blackhole())
    with pytest.raises(TimeoutError):
        await fetch(any_session, any_server.url + "/bh", timeout=SHORT)
    with anyio.fail_after(GUARD):
        assert await any_server.wait_for_hits(1) == 1
        await any_server.wait_for_idle()
    assert any_server.active == 0


@pytest.mark.anyio
async def test_shutdown_with_a_blackhole_in_flight(
    scheme: str, server_ssl: ssl.SSLContext, any_session: aiohttp.ClientSession
) -> None:
    tasks_before = asyncio.all_tasks()
    with anyio.fail_after(GUARD):
        async with FaultServer(ssl_context=server_ssl if scheme == "https" else None) as srv:
            srv.set_default(Fault.blackhole())
            call = asyncio.create_task(fetch(any_session, srv.url + "/hang"))
            await srv.wait_for_hits(1)
            assert srv.active == 1
        # Leaving the block ended the hung handler and cut the client's connection.
        with pytest.raises(aiohttp.ClientConnectionError):
            await call
    assert srv.active == 0
    assert asyncio.all_tasks() == tasks_before
    assert repr(srv) == f"<FaultServer {srv.url} closed hits=1 active=0>"
    # The URL stays known; nothing listens there any more.
    with pytest.raises(aiohttp.ClientConnectorError):
        await fetch(any_session, srv.url + "/hang")


def test_url_needs_a_started_server() -> None:
    with pytest.raises(RuntimeError, match="never started"):
        _ = FaultServer().url


@pytest.mark.anyio
async def test_https(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, session: aiohttp.ClientSession
) -> None:
    async with FaultServer(ssl_context=server_ssl) as srv:
        assert srv.url.startswith("https://127.0.0.1:")
        assert await fetch(session, srv.url + "/", ssl=client_ssl) == (200, b"ok")
        # Without the test CA the certificate is not trusted.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await fetch(session, srv.url + "/")
    assert srv.hits() == 1
    # The context asks for no client certificate: none is recorded.
    assert srv.requests[0].peer_certificate is None


@pytest.mark.anyio
async def test_the_client_certificate_of_each_request_is_recorded(ca: trustme.CA) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(context)
    leaves = {name: ca.issue_cert(f"{name}.client.test") for name in ("a", "b")}
    async with FaultServer(ssl_context=context) as srv:
        for name, leaf in leaves.items():
            client = ssl.create_default_context()
            ca.configure_trust(client)
            leaf.configure_cert(client)
            connector = aiohttp.TCPConnector(ssl=client)
            async with aiohttp.ClientSession(connector=connector) as sess:
                for _ in range(2):  # the second request reuses the connection
                    assert await fetch(sess, f"{srv.url}/{name}") == (200, b"ok")
    presented = [(r.path, r.peer_certificate) for r in srv.requests]
    expected = [
        (f"/{name}", ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode()))
        for name, leaf in leaves.items()
        for _ in range(2)
    ]
    assert presented == expected


@pytest.mark.anyio
async def test_plain_http_records_no_client_certificate(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    assert await fetch(session, server.url + "/") == (200, b"ok")
    assert server.requests[0].peer_certificate is None


# -- slow bodies -------------------------------------------------------------------


@pytest.mark.anyio
async def test_slow_body_streams_chunks(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    server.script("/s", Fault.slow_body(3, 0.05, chunk=b"abc"))
    async with session.get(server.url + "/s") as resp:
        assert resp.content_length == 9
        assert await resp.content.readexactly(3) == b"abc"
        # The first chunk came with the headers; the handler is still streaming.
        assert server.active == 1
        assert await resp.read() == b"abcabc"


@pytest.mark.anyio
async def test_slow_body_trips_a_read_timeout(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    server.script("/s", Fault.slow_body(2, 30, chunk=b"abc"))
    timeout = aiohttp.ClientTimeout(sock_read=0.05)
    async with session.get(server.url + "/s", timeout=timeout) as resp:
        assert resp.status == 200
        with pytest.raises(TimeoutError):
            await resp.read()
    with anyio.fail_after(GUARD):
        await server.wait_for_idle()


# -- scripts -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_script_then_repeats_forever(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    server.script("/p", Fault.status(500), Fault.status(502), then=Fault.status(201))
    methods = ["GET", "POST", "DELETE", "GET", "PATCH"]
    statuses = [(await fetch(session, server.url + "/p", method))[0] for method in methods]
    assert statuses == [500, 502, 201, 201, 201]
    assert [r.method for r in server.requests] == methods


@pytest.mark.anyio
async def test_scripts_are_per_path_and_ignore_the_query(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    server.script("/a", Fault.status(503))
    server.set_default(Fault.status(404))
    assert (await fetch(session, server.url + "/b"))[0] == 404
    assert (await fetch(session, server.url + "/a?q=1"))[0] == 503
    assert (await fetch(session, server.url + "/a"))[0] == 200
    assert (server.hits("/a"), server.hits("/b"), server.hits("/c"), server.hits()) == (2, 1, 0, 3)


@pytest.mark.anyio
async def test_replacing_a_script_restarts_it(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    server.script("/", Fault.status(500), Fault.status(500), then=Fault.status(500))
    assert (await fetch(session, server.url + "/"))[0] == 500
    server.script("/", Fault.status(429), then=Fault.status(200))
    assert [(await fetch(session, server.url + "/"))[0] for _ in range(3)] == [429, 200, 200]
    server.script("/")  # only `then`: plain ok
    assert await fetch(session, server.url + "/") == (200, b"ok")


@pytest.mark.anyio
async def test_reset_forgets_everything(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    server.script("/a", Fault.status(500))
    server.set_default(Fault.status(503))
    await fetch(session, server.url + "/b")
    server.reset()
    assert (server.hits(), server.hits("/b"), server.requests, server.max_active) == (0, 0, [], 0)
    assert (await fetch(session, server.url + "/a"))[0] == 200
    assert (await fetch(session, server.url + "/b"))[0] == 200


def test_script_path_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        FaultServer().script("health", Fault.ok())


# -- observation -------------------------------------------------------------------


@pytest.mark.anyio
async def test_wait_for_hits_and_concurrency(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    server.script("/hang", then=Fault.blackhole())
    calls = [asyncio.create_task(fetch(session, server.url + "/hang")) for _ in range(4)]
    with anyio.fail_after(GUARD):
        assert await server.wait_for_hits(4, "/hang") == 4
    assert await server.wait_for_hits(0) == 4
    assert (server.active, server.max_active) == (4, 4)
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    with anyio.fail_after(GUARD):
        await server.wait_for_idle()
    assert (server.active, server.max_active) == (0, 4)


@pytest.mark.anyio
async def test_wait_for_hits_fails_when_the_server_closes(
    session: aiohttp.ClientSession,
) -> None:
    async with FaultServer() as srv:
        waiter = asyncio.create_task(srv.wait_for_hits(2))
        await fetch(session, srv.url + "/")  # the waiter runs, wakes once, waits again
        assert not waiter.done()
    with pytest.raises(RuntimeError, match="closed after 1 of 2 hits"):
        await waiter


@pytest.mark.anyio
async def test_a_connection_without_a_request_is_not_counted(server: FaultServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /x HT")  # an incomplete request line, then the client leaves
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    del reader
    async with aiohttp.ClientSession() as session:
        assert await fetch(session, server.url + "/x") == (200, b"ok")
    assert server.hits() == 1


@pytest.mark.anyio
async def test_server_starts_only_once() -> None:
    srv = FaultServer()
    async with srv:
        with pytest.raises(RuntimeError, match="only once"):
            await srv.__aenter__()
    with pytest.raises(RuntimeError, match="only once"):
        await srv.__aenter__()


# -- ports -------------------------------------------------------------------------


def test_unused_tcp_port() -> None:
    assert 0 < _ports.unused_tcp_port() < 65536


@pytest.mark.anyio
async def test_refused_url_refuses(session: aiohttp.ClientSession) -> None:
    url = _ports.refused_url()
    assert url.startswith("http://127.0.0.1:")
    with pytest.raises(aiohttp.ClientConnectorError):
        await fetch(session, url + "/")
