"""Red team, round 8: the request path, attacked from the user docs.

Each case runs against real loopback servers (healkit.testing's fault server,
or a refused port) through the front door it names, and checks what the
caller sees, what each server received, and what healkit logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack
from typing import Any, Self

import aiohttp
import anyio
import httpx
import pytest
from aiohttp import web

import healkit
from healkit._log import MAX_FIELD_CHARS, MAX_LOGGED_HEADERS
from healkit.httpx import ResilientTransport, outcome_of
from healkit.testing import Fault, FaultServer, ManualClock, capture_events, refused_url
from healkit_breaker import BreakerPlugin
from healkit_retry import RetryPlugin
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio

SERVICE = "api"


def client(config: dict[str, Any]) -> healkit.Client:
    return healkit.Client(config=config, plugins=[TimeoutPlugin()], entry_points=False)


@pytest.fixture
async def servers() -> AsyncIterator[list[FaultServer]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FaultServer()) for _ in range(2)]


# -- Response.text() under a charset the upstream chose -------------------------------

BODY = "café ".encode() + b"\xff"


@pytest.mark.parametrize(
    "charset",
    [
        "undefined",  # a codec that always raises UnicodeError
        "idna",  # refuses errors="replace": UnicodeError
        "punycode",  # raises UnicodeDecodeError on \xff whatever the error handler
    ],
)
async def test_text_never_raises_whatever_charset_the_upstream_names(
    fault_server: FaultServer, charset: str
) -> None:
    # Old code caught LookupError only: text() raised the codec's UnicodeError (or
    # UnicodeEncodeError for a non-ASCII name), an error outside healkit's tree from
    # a method documented to decode with replacement.
    headers = {"Content-Type": f"text/plain; charset={charset}"}
    fault_server.script("/t", then=Fault.status(200, body=BODY, headers=headers))
    config = {"services": {SERVICE: {"endpoints": [fault_server.url]}}}
    async with client(config) as c:
        response = await c.get("/t", service=SERVICE)
    assert response.text() == BODY.decode("utf-8", errors="replace")


async def test_text_never_raises_on_a_charset_of_bytes_that_are_not_utf8() -> None:
    # A raw server: aiohttp's would encode the header as UTF-8. aiohttp reads the
    # bytes \xff\xfe as surrogate escapes, and the old code's codec lookup
    # raised UnicodeEncodeError on them.
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=\xff\xfe\r\n"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        config = {"services": {SERVICE: {"endpoints": [f"http://127.0.0.1:{port}"]}}}
        async with client(config) as c:
            response = await c.get("/t", service=SERVICE)
    assert response.text() == BODY.decode("utf-8", errors="replace")


# -- URL userinfo ---------------------------------------------------------------------


@pytest.mark.parametrize("target", ["ftp://user:s3cr3t@files.test/x", "user:s3cr3t@api.test/x"])
async def test_a_target_that_is_not_an_absolute_url_is_refused_without_its_password(
    target: str,
) -> None:
    # Old code: the message quoted the target whole, password included.
    async with client({}) as c:
        with pytest.raises(healkit.InvalidRequestError) as caught:
            await c.get(target)
    assert "s3cr3t" not in str(caught.value)
    assert "is not an absolute URL" in str(caught.value)


def moved_to(url: str) -> Fault:
    return Fault.status(307, headers={"Location": url})


@pytest.mark.parametrize(("userinfo", "basic"), [("user:pw@", "dXNlcjpwdw=="), (":pw@", "OnB3")])
async def test_an_absolute_url_with_userinfo_is_called_under_its_services_policy(
    servers: list[FaultServer], userinfo: str, basic: str
) -> None:
    # Old code looked the service up with the userinfo in the URL: no endpoint
    # matched, the call ran under the defaults, and the service's
    # routing.credential_headers went along to another origin on a redirect. A
    # password without a user name was not sent at all.
    primary, other = servers
    primary.script("/start", then=moved_to(f"{other.url}/landing"))
    routing = {"credential_headers": ["X-Api-Key"]}
    config = {"services": {SERVICE: {"endpoints": [primary.url], "routing": routing}}}
    with_userinfo = primary.url.replace("http://", f"http://{userinfo}")
    async with client(config) as c:
        response = await c.get(f"{with_userinfo}/start", headers={"X-Api-Key": "k3y"})
    assert response.status == 200
    assert response.outcome.service == SERVICE
    assert primary.requests[0].headers["Authorization"] == f"Basic {basic}"
    assert primary.requests[0].headers["X-Api-Key"] == "k3y"
    assert not {"Authorization", "X-Api-Key"} & other.requests[0].headers.keys()


async def test_httpx_a_url_with_userinfo_fails_over_as_its_service(
    fault_server: FaultServer,
) -> None:
    # Old code: the URL kept its userinfo when the transport asked whether it is
    # under one of the service's endpoints: it was not routable, and the call to
    # a refused primary failed instead of going to the fallback group.
    fault_server.script("/x", then=Fault.ok(body=b"from the fallback"))
    primary = refused_url()
    routing = {"fallback_groups": [[fault_server.url]]}
    config = {"services": {SERVICE: {"endpoints": [primary], "routing": routing}}}
    transport = ResilientTransport(config=config, plugins=[TimeoutPlugin()], entry_points=False)
    async with httpx.AsyncClient(transport=transport) as http:
        response = await http.get(primary.replace("http://", "http://user:pw@") + "/x")
    assert response.content == b"from the fallback"
    outcome = outcome_of(response)
    assert (outcome.service, outcome.path) == (SERVICE, "fallback")


# -- what a log line carries of the caller's request ----------------------------------


def field_texts(event: dict[str, Any]) -> list[str]:
    texts = [value for value in event.values() if isinstance(value, str)]
    headers = event.get("headers") or {}
    return [*texts, *headers, *headers.values()]


async def test_log_events_carry_a_bounded_part_of_the_callers_request() -> None:
    # Old code logged the method, the reason (quoting the URL) and every header
    # whole: one failed call with a 1 MB path, a 100 KB method or 10,000
    # headers wrote a log line of megabytes.
    config = {"services": {SERVICE: {"endpoints": [refused_url()]}}}
    headers = {f"X-H{i}": "v" * 2_000 for i in range(MAX_LOGGED_HEADERS * 2)}
    with capture_events() as events:
        # Two clients: a second failure of the same kind in one would be summarised.
        async with client(config) as c:
            with pytest.raises(healkit.ConnectError):
                await c.request("X" * 100_000, "/" + "p" * 1_000_000, service=SERVICE)
        async with client(config) as c:
            with pytest.raises(healkit.ConnectError):
                await c.get("/q", service=SERVICE, headers=headers)
    failed = [e for e in events if e["event"] in {"healkit.attempt_failed", "healkit.call_failed"}]
    assert {e["event"] for e in failed} == {"healkit.attempt_failed", "healkit.call_failed"}
    longest = MAX_FIELD_CHARS + len("... (1000000 characters)") + 64
    for event in failed:
        assert all(len(text) <= longest for text in field_texts(event)), event["event"]
    with_headers = [e for e in failed if e["event"] == "healkit.call_failed" and e["headers"]]
    (logged,) = (e["headers"] for e in with_headers)
    assert len(logged) == MAX_LOGGED_HEADERS + 1
    assert logged["..."] == f"{MAX_LOGGED_HEADERS} more headers"
    assert logged["X-H0"].endswith("... (2000 characters)")


# -- the application closes its client while calls are in flight ----------------------


class Holding:
    """A loopback server that holds every request until released; says when n arrived."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.count = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _hold(self, request: web.Request) -> web.Response:
        self.count += 1
        if self.count == self.n:
            self.arrived.set()
        if request.path == "/hold":
            await self.release.wait()
        return web.Response(text="ok")

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._hold)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


CALLS = 6
SHARED = {
    "services": {
        SERVICE: {
            "retry": {"attempts": 3},
            "breaker": {"consecutive_failures": 2},
            "routing": {"eject_after": 2},
        }
    }
}


def shared_runtime(url: str) -> healkit.Runtime:
    config = {"services": {SERVICE: {**SHARED["services"][SERVICE], "endpoints": [url]}}}
    return healkit.Runtime(
        config=config,
        plugins=[RetryPlugin(), BreakerPlugin(), TimeoutPlugin()],
        entry_points=False,
    )


async def test_closing_a_client_of_a_shared_runtime_does_not_fail_the_endpoint() -> None:
    # Old code: the calls in flight failed with ConnectionLostError, which the
    # breaker and routing counted against the (healthy) endpoint; their retries
    # were refused with CircuitOpenError, and so was the next client of the
    # runtime. They now end with ClientClosedError, which counts against nothing.
    async with Holding(CALLS) as upstream:
        runtime = shared_runtime(upstream.url)
        await runtime.start()
        try:
            closing = healkit.Client(runtime=runtime)
            async with closing:
                calls = [
                    asyncio.ensure_future(closing.get("/hold", service=SERVICE))
                    for _ in range(CALLS)
                ]
                await upstream.arrived.wait()
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert {type(result) for result in results} == {healkit.ClientClosedError}
            assert all(error.may_have_reached_server for error in results)  # type: ignore[union-attr]
            (status,) = healkit.endpoint_status(runtime, SERVICE)
            assert (status.usable, status.consecutive_failures) == (True, 0)
            async with healkit.Client(runtime=runtime) as after:
                response = await after.get("/next", service=SERVICE)
            assert response.status == 200
        finally:
            await runtime.stop()


async def test_closing_a_middleware_session_ends_its_calls_with_client_closed() -> None:
    # Old code: the failures counted against the endpoint, and the retries were
    # refused by its breaker (CircuitOpenError); without a breaker, a retry went
    # into aiohttp's handler for the closed session, which raised AssertionError
    # (outside healkit's tree) to the caller.
    async with Holding(CALLS) as upstream:
        runtime = shared_runtime(upstream.url)
        await runtime.start()
        try:
            session = aiohttp.ClientSession(middlewares=[healkit.ResilienceMiddleware(runtime)])

            async def call() -> int:
                async with session.get(f"{upstream.url}/hold") as response:
                    return response.status

            calls = [asyncio.ensure_future(call()) for _ in range(CALLS)]
            await upstream.arrived.wait()
            await session.close()
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert {type(result) for result in results} == {healkit.ClientClosedError}
            (status,) = healkit.endpoint_status(runtime, SERVICE)
            assert (status.usable, status.consecutive_failures) == (True, 0)
        finally:
            await runtime.stop()


async def test_httpx_closing_the_client_does_not_fail_the_endpoint() -> None:
    async with Holding(CALLS) as upstream:
        runtime = shared_runtime(upstream.url)
        await runtime.start()
        try:
            http = httpx.AsyncClient(transport=ResilientTransport(runtime=runtime))
            calls = [asyncio.ensure_future(http.get(f"{upstream.url}/hold")) for _ in range(CALLS)]
            await upstream.arrived.wait()
            await http.aclose()
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert {type(result) for result in results} == {healkit.ClientClosedError}
            (status,) = healkit.endpoint_status(runtime, SERVICE)
            assert (status.usable, status.consecutive_failures) == (True, 0)
        finally:
            await runtime.stop()


# -- a probe of an endpoint that answers slowly ---------------------------------------


async def test_a_slow_probe_holds_up_no_other_services_probes(fault_server: FaultServer) -> None:
    async with Holding(1) as slow:
        slow_probe = {"path": "/hold", "interval": 30.0, "timeout": 2.0, "unhealthy_threshold": 1}
        config = {
            "services": {
                "fast": {
                    "endpoints": [fault_server.url],
                    "routing": {"probe": {"path": "/probe", "interval": 1.0}},
                },
                "slow": {"endpoints": [slow.url], "routing": {"probe": slow_probe}},
            }
        }
        clock = ManualClock(auto_advance=False)
        plugins = [TimeoutPlugin()]
        async with healkit.Client(
            config=config, plugins=plugins, entry_points=False, clock=clock
        ) as c:
            with anyio.fail_after(10):
                await slow.arrived.wait()
                await fault_server.wait_for_hits(1)
                await clock.wait_for_sleepers()
            clock.advance(1.0)  # the fast service's next probe is due
            with anyio.fail_after(10):
                await fault_server.wait_for_hits(2)
            # It was sent while the slow probe still waited for its answer.
            (status,) = healkit.endpoint_status(c.runtime, "slow")
            assert not status.down


# -- reading a streamed body: the cap holds whatever size is asked for ----------------


@pytest.mark.parametrize("size", [-1, 0])
async def test_iter_chunks_refuses_a_size_that_would_escape_the_cap(
    fault_server: FaultServer, size: int
) -> None:
    # Old code passed size to aiohttp: -1 read the whole body into memory before
    # the cap was checked (a body that decodes to gigabytes, or never ends, was
    # read whole), and 0 ended at once, as if the body were empty.
    fault_server.script("/big", then=Fault.ok(body=b"x" * 200_000))
    config = {"services": {SERVICE: {"endpoints": [fault_server.url], "max_body_bytes": 1000}}}
    async with client(config) as c, c.stream("GET", "/big", service=SERVICE) as response:
        with pytest.raises(ValueError, match="size must be an int of at least 1"):
            async for _ in response.iter_chunks(size):
                pass
        with pytest.raises(healkit.BodyTooLargeError):
            async for _ in response.iter_chunks(100):
                pass


# -- the deadline covers the fallback ---------------------------------------------------


class SlowCache:
    """A fallback that fetches from a cache that never answers."""

    healkit_name = "slow-cache"

    def __init__(self) -> None:
        self.cancelled = False

    @healkit.hookimpl
    def healkit_fallback(self) -> Awaitable[healkit.Fallback | None]:
        async def fetch() -> healkit.Fallback | None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
            return None  # pragma: no cover - the cache never answers

        return fetch()


async def test_an_awaited_fallback_ends_with_the_calls_deadline() -> None:
    # Old code awaited a fallback without bound: a call with a 0.2 s deadline
    # whose fallback waited on a dead cache never ended.
    cache = SlowCache()
    config = {"services": {SERVICE: {"endpoints": [refused_url()]}}}
    runtime_plugins = [cache, TimeoutPlugin()]
    async with healkit.Client(config=config, plugins=runtime_plugins, entry_points=False) as c:
        with anyio.fail_after(10), pytest.raises(healkit.ConnectError) as caught:
            await c.get("/x", service=SERVICE, deadline=0.2)
    assert cache.cancelled
    assert "the fallback was cut short by the call's deadline" in str(caught.value)


# -- httpx: a redirect whose Location httpx cannot parse --------------------------------


async def test_httpx_a_redirect_to_an_unparsable_location_is_a_healkit_error() -> None:
    answer = b"HTTP/1.1 302 Found\r\nLocation: http://[::1\r\nContent-Length: 0\r\n\r\n"

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(redirect, "127.0.0.1", 0)
    async with server:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        transport = ResilientTransport(plugins=[TimeoutPlugin()], entry_points=False)
        async with httpx.AsyncClient(transport=transport) as http:
            with pytest.raises(healkit.HealkitError):
                await http.get(f"{url}/x")
