"""The httpx transport raises healkit's errors only, at every stage of a call.

docs/httpx.md promises that every failure raises a ``healkit.HealkitError``,
never an httpx exception. Each case drives a real ``httpx.AsyncClient`` on the
transport against a raw loopback server (asyncio's, so that it can answer what
no HTTP server would), in buffered mode and with ``stream=True``, where the
body is read by the caller after the transport returned.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self

import httpx
import pytest

import healkit
from healkit.httpx import ResilientTransport, outcome_of
from healkit.testing import refused_url
from healkit_breaker import BreakerPlugin
from healkit_retry import RetryPlugin
from healkit_timeout import TimeoutPlugin
from tests.plugins import StaticFallback

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """An asyncio server on loopback that runs ``handler`` for each connection.

    ``heads`` keeps each request's head as it arrived; ``release`` lets go of
    the handlers that wait on it (set when the server closes).
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.heads: list[bytes] = []
        self.release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def answering(answer: bytes) -> Handler:
    """A handler that writes ``answer`` and closes the connection."""

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()

    return handle


def reset(writer: asyncio.StreamWriter) -> None:
    """Abort the connection with a TCP RST."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def transport(*, stream: bool, read: float = 5.0) -> ResilientTransport:
    config = {"defaults": {"timeout": {"connect": 1.0, "read": read}}}
    return ResilientTransport(
        config=config, plugins=[TimeoutPlugin()], entry_points=False, stream=stream
    )


async def fetch(transport: ResilientTransport, url: str) -> httpx.Response:
    """GET ``url`` through ``transport`` and read the whole body, as a caller does."""
    async with httpx.AsyncClient(transport=transport) as http, http.stream("GET", url) as response:
        await response.aread()
        return response


def head(length: int | None = None, **headers: str) -> bytes:
    """A 200 head with ``headers`` (underscores as dashes) and a Content-Length if given."""
    lines = [b"HTTP/1.1 200 OK"]
    lines += [f"{name.replace('_', '-')}: {value}".encode() for name, value in headers.items()]
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


MODES = [pytest.param(False, id="buffered"), pytest.param(True, id="stream")]


# -- before the answer: connect, write, the head (mapped already; kept so) --------------


async def reset_at_once(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    reset(writer)


async def reset_mid_upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1000)
    reset(writer)


async def close_at_once(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


@pytest.mark.parametrize("stream", MODES)
@pytest.mark.parametrize(
    ("handler", "body", "error"),
    [
        pytest.param(reset_at_once, b"", healkit.ConnectionLostError, id="reset"),  # ReadError
        pytest.param(
            reset_mid_upload, b"x" * (4 * 1024 * 1024), healkit.ConnectionLostError, id="upload"
        ),
        pytest.param(close_at_once, b"", healkit.ProtocolError, id="closed"),  # RemoteProtocolError
        pytest.param(answering(b"GARBAGE\r\n\r\n"), b"", healkit.ProtocolError, id="garbage"),
    ],
)
async def test_a_failure_before_the_answer_is_a_healkit_error(
    handler: Handler, body: bytes, error: type[healkit.HealkitError], stream: bool
) -> None:
    async with (
        RawServer(handler) as server,
        httpx.AsyncClient(transport=transport(stream=stream)) as http,
    ):
        with pytest.raises(error) as caught:
            await http.post(f"{server.url}/x", content=body)
    assert caught.value.may_have_reached_server
    assert isinstance(caught.value.__cause__, httpx.TransportError)


@pytest.mark.parametrize("stream", MODES)
async def test_a_refused_connection_is_a_connect_error(stream: bool) -> None:
    async with httpx.AsyncClient(transport=transport(stream=stream)) as http:
        with pytest.raises(healkit.ConnectError) as caught:
            await http.post(refused_url(), content=b"x")
    assert not caught.value.may_have_reached_server


async def test_waiting_for_a_pooled_connection_too_long_is_a_connect_timeout() -> None:
    # httpx.PoolTimeout: the one connection of the pool is held by a call in flight.
    arrived = asyncio.Event()

    async def hold(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        arrived.set()
        await server.release.wait()

    one = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1))
    config = {"defaults": {"timeout": {"connect": 0.2, "read": 30.0}}}
    resilient = ResilientTransport(
        one, config=config, plugins=[TimeoutPlugin()], entry_points=False
    )
    async with RawServer(hold) as server, httpx.AsyncClient(transport=resilient) as http:
        holding = asyncio.ensure_future(http.get(f"{server.url}/hold"))
        await arrived.wait()  # the first call has the pool's one connection
        with pytest.raises(healkit.ConnectTimeout) as caught:
            await http.get(f"{server.url}/wait")
        server.release.set()
        with pytest.raises(healkit.HealkitError):
            await holding
    assert not caught.value.may_have_reached_server
    assert isinstance(caught.value.__cause__, httpx.PoolTimeout)


# -- a body that breaks off after the head: read by the caller with stream=True ---------


@pytest.mark.parametrize("stream", MODES)
async def test_a_body_cut_short_is_a_protocol_error(stream: bool) -> None:
    # Old code, stream=True: httpx.RemoteProtocolError from response.aread().
    async with RawServer(answering(head(100) + b"abc")) as server:
        with pytest.raises(healkit.ProtocolError, match="peer closed") as caught:
            await fetch(transport(stream=stream), f"{server.url}/x")
    assert [record.number for record in caught.value.attempts] == [1]


@pytest.mark.parametrize("stream", MODES)
async def test_a_body_reset_mid_way_is_a_lost_connection(stream: bool) -> None:
    # Old code, stream=True: httpx.ReadError from response.aread().
    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head(1000) + b"x" * 10)
        await writer.drain()
        reset(writer)

    async with RawServer(handle) as server:
        with pytest.raises(healkit.ConnectionLostError) as caught:
            await fetch(transport(stream=stream), f"{server.url}/x")
    assert caught.value.attempts


@pytest.mark.parametrize("stream", MODES)
async def test_a_body_that_stops_coming_is_a_read_timeout(stream: bool) -> None:
    # Old code, stream=True: httpx.ReadTimeout from response.aread().
    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head(1000) + b"x" * 10)
        await writer.drain()
        await server.release.wait()

    async with RawServer(handle) as server:
        with pytest.raises(healkit.ReadTimeout) as caught:
            await fetch(transport(stream=stream, read=0.2), f"{server.url}/x")
    assert caught.value.limit == 0.2


@pytest.mark.parametrize("stream", MODES)
async def test_bad_chunk_framing_is_a_protocol_error(stream: bool) -> None:
    # Old code, stream=True: httpx.RemoteProtocolError from response.aread().
    answer = head(transfer_encoding="chunked") + b"5\r\nhello\r\nzz\r\n"
    async with RawServer(answering(answer)) as server:
        with pytest.raises(healkit.ProtocolError, match="chunk"):
            await fetch(transport(stream=stream), f"{server.url}/x")


# -- content codings: decoded by the transport in both modes -----------------------------


@pytest.mark.parametrize("stream", MODES)
async def test_a_body_that_does_not_decode_is_a_protocol_error(stream: bool) -> None:
    # Old code, stream=True: httpx.DecodingError from response.aread().
    async with RawServer(answering(head(5, content_encoding="gzip") + b"abcde")) as server:
        with pytest.raises(healkit.ProtocolError, match="does not decode as gzip"):
            await fetch(transport(stream=stream), f"{server.url}/x")


@pytest.mark.parametrize("stream", MODES)
async def test_a_coded_body_cut_at_a_frame_boundary_is_a_protocol_error(stream: bool) -> None:
    # Old code, stream=True: httpx's decoder flushed what it had and the caller
    # got a truncated body with no error at all.
    coded = gzip.compress(b"x" * 10_000)[:-8]  # the gzip trailer is missing
    async with RawServer(answering(head(len(coded), content_encoding="gzip") + coded)) as server:
        with pytest.raises(healkit.ProtocolError, match="truncated"):
            await fetch(transport(stream=stream), f"{server.url}/x")


def deflate(data: bytes, *, raw: bool) -> bytes:
    coder = zlib.compressobj(wbits=-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
    return coder.compress(data) + coder.flush()


CODED = [
    pytest.param("gzip", gzip.compress(b"one ") + gzip.compress(b"two"), id="gzip-two-members"),
    pytest.param("deflate", deflate(b"one two", raw=False), id="deflate-zlib"),
    pytest.param("deflate", deflate(b"one two", raw=True), id="deflate-raw"),
    pytest.param(
        "gzip, deflate", deflate(gzip.compress(b"one two"), raw=False), id="gzip-then-deflate"
    ),
]


@pytest.mark.parametrize(("coding", "coded"), CODED)
async def test_a_streamed_body_is_decoded_as_it_arrives_byte_by_byte(
    coding: str, coded: bytes
) -> None:
    # Old code: httpx decoded the body above the transport, where its errors
    # (httpx.DecodingError) reached the caller; the transport now decodes it, as
    # the buffered mode does, and hands it on without its Content-Encoding.
    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head(transfer_encoding="chunked", content_encoding=coding))
        for byte in coded:  # a chunk a byte: a zlib header arrives in two reads
            writer.write(b"1\r\n%c\r\n" % byte)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with RawServer(handle) as server:
        response = await fetch(transport(stream=True), f"{server.url}/x")
    assert response.content == b"one two"
    assert "Content-Encoding" not in response.headers


async def test_a_streamed_body_that_decodes_to_much_comes_in_bounded_pieces() -> None:
    # Old code: httpx's decoder inflated each chunk whole; the transport hands
    # on at most 64 KiB at a time, so a small chunk is never held as 10 MiB.
    size = 10 * 1024 * 1024
    coded = gzip.compress(b"\0" * size)
    async with (
        RawServer(answering(head(len(coded), content_encoding="gzip") + coded)) as server,
        httpx.AsyncClient(transport=transport(stream=True)) as http,
        http.stream("GET", f"{server.url}/x") as response,
    ):
        pieces = [len(piece) async for piece in response.aiter_raw()]
    assert sum(pieces) == size
    assert max(pieces) <= 64 * 1024


async def test_a_streamed_request_asks_only_for_codings_the_transport_decodes() -> None:
    # Old code, stream=True: Accept-Encoding went as httpx set it (br, zstd when
    # their packages are installed), which httpx then decoded without a bound.
    async with (
        RawServer(answering(head(0))) as server,
        httpx.AsyncClient(transport=transport(stream=True)) as http,
    ):
        await http.get(f"{server.url}/x", headers={"Accept-Encoding": "br, gzip, zstd"})
    assert b"\r\naccept-encoding: gzip\r\n" in server.heads[0].lower()


# -- redirects whose Location httpx cannot turn into a request ---------------------------


@pytest.mark.parametrize("stream", MODES)
@pytest.mark.parametrize("follow", [False, True], ids=["not-followed", "followed"])
@pytest.mark.parametrize(
    "location",
    [
        pytest.param(b"http://[::1", id="remote-protocol-error"),  # httpx.RemoteProtocolError
        pytest.param(b"mailto:ops", id="invalid-url"),  # httpx.InvalidURL
        pytest.param(b"http://xn--/", id="idna-error"),  # idna.IDNAError (a UnicodeError)
    ],
)
async def test_a_redirect_httpx_cannot_follow_is_refused(
    location: bytes, follow: bool, stream: bool
) -> None:
    # Old code: each Location raised its own error (httpx.RemoteProtocolError,
    # httpx.InvalidURL, idna.IDNAError), outside healkit's tree, when httpx
    # built the next request, even with follow_redirects off.
    answer = b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n\r\n"
    async with (
        RawServer(answering(answer)) as server,
        httpx.AsyncClient(transport=transport(stream=stream), follow_redirects=follow) as http,
    ):
        with pytest.raises(healkit.RedirectRefusedError) as caught:
            await http.get(f"{server.url}/x")
    assert (caught.value.status, caught.value.location) == (302, "<invalid URL>")
    assert caught.value.may_have_reached_server
    assert len(server.heads) == 1


# -- the request's own bytes --------------------------------------------------------------


@pytest.mark.parametrize("stream", MODES)
async def test_header_bytes_past_ascii_are_sent_as_given(stream: bool) -> None:
    # Old code: the transport read the caller's header bytes as text and httpx
    # encoded them as ASCII for the attempt: UnicodeEncodeError to the caller.
    value = "café ☕".encode()
    async with (
        RawServer(answering(head(0))) as server,
        httpx.AsyncClient(transport=transport(stream=stream)) as http,
    ):
        response = await http.get(f"{server.url}/x", headers={"X-Name": value})
    assert response.status_code == 200
    assert b"\r\nX-Name: " + value + b"\r\n" in server.heads[0]


# -- a wrapped transport that answers with a synchronous body -----------------------------


class SyncBodyTransport(httpx.AsyncBaseTransport):
    """A wrapped transport (a user's) that answers with a synchronous body stream."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter([b"sync"]), request=request)


@pytest.mark.parametrize("stream", MODES)
async def test_a_synchronous_body_from_the_wrapped_transport_is_a_protocol_error(
    stream: bool,
) -> None:
    # Old code: RuntimeError ("async iterator on an sync stream") buffered, and
    # httpx's TypeError with stream=True.
    resilient = ResilientTransport(
        SyncBodyTransport(), plugins=[TimeoutPlugin()], entry_points=False, stream=stream
    )
    async with httpx.AsyncClient(transport=resilient) as http:
        with pytest.raises(healkit.ProtocolError, match="synchronous body"):
            await http.get("http://127.0.0.1:9/x")


# -- closing the client while a streamed body is read --------------------------------------


async def test_closing_the_client_mid_body_ends_the_read_with_client_closed() -> None:
    # Old code: httpx's read error of the closed connection pool reached the caller.
    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head(1000) + b"x" * 10)
        await writer.drain()
        await server.release.wait()

    async with RawServer(handle) as server:
        http = httpx.AsyncClient(transport=transport(stream=True))
        async with http.stream("GET", f"{server.url}/x") as response:
            body = response.aiter_raw()
            assert await anext(body) == b"x" * 10
            closing = asyncio.ensure_future(http.aclose())
            with pytest.raises(healkit.ClientClosedError):
                await anext(body)
            await closing


# -- redirects that httpx follows ----------------------------------------------------------


def redirecting(requests: list[None]) -> Handler:
    """A handler that redirects every request to the next path (/0, /1, ...)."""

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(None)
        writer.write(
            b"HTTP/1.1 302 Found\r\nLocation: /%d\r\nContent-Length: 0\r\n\r\n" % len(requests)
        )
        await writer.drain()

    return handle


def service_transport(url: str, **service: Any) -> ResilientTransport:
    config = {"services": {"loop": {"endpoints": [url], **service}}}
    return ResilientTransport(config=config, plugins=[TimeoutPlugin()], entry_points=False)


@pytest.mark.parametrize(("limit", "sent"), [(None, 11), (3, 4)])
async def test_more_redirects_than_max_redirects_is_a_healkit_error(
    limit: int | None, sent: int
) -> None:
    # Old code: httpx followed the loop for its own 20 hops, then raised
    # httpx.TooManyRedirects. The transport now counts the hops (httpx hands each
    # hop the extensions of the request before it) under the service's max_redirects.
    requests: list[None] = []
    async with RawServer(redirecting(requests)) as server:
        service = {} if limit is None else {"max_redirects": limit}
        transport = service_transport(server.url, **service)
        async with httpx.AsyncClient(transport=transport, follow_redirects=True) as http:
            with pytest.raises(healkit.TooManyRedirects) as caught:
                await http.get(f"{server.url}/start")
    assert len(requests) == sent
    assert caught.value.limit == sent - 1
    assert caught.value.url == f"{server.url}/{sent - 1}"
    assert caught.value.may_have_reached_server


async def test_a_request_sent_again_is_not_a_redirect_hop() -> None:
    requests: list[None] = []
    async with RawServer(redirecting(requests)) as server:
        transport = service_transport(server.url, max_redirects=1)
        async with httpx.AsyncClient(transport=transport) as http:
            request = http.build_request("GET", f"{server.url}/again")
            answers = [await http.send(request) for _ in range(3)]  # sent again: no hop
            hop = answers[-1].next_request
            assert hop is not None
            last = (await http.send(hop)).next_request  # the one hop max_redirects allows
            assert last is not None
            with pytest.raises(healkit.TooManyRedirects):
                await http.send(last)
    assert [answer.status_code for answer in answers] == [302, 302, 302]
    assert len(requests) == 4


# -- the text of a response, in the charset the upstream named ---------------------------

TEXT = "café ".encode() + b"\xff"


@pytest.mark.parametrize(
    ("charset", "stream"),
    [
        ("undefined", False),  # always raises UnicodeError
        ("undefined", True),
        ("idna", False),  # refuses errors="replace"
        ("idna", True),
        ("base64", False),  # bytes to bytes, not text: AssertionError in the codec
        ("rot13", True),  # str to str: TypeError
        ("punycode", False),  # UnicodeDecodeError on \xff, whatever the error handler
        ("utf-16", False),  # "UTF-16 stream does not start with BOM", with replacement too
    ],
)
async def test_text_never_raises_whatever_charset_the_upstream_names(
    charset: str, stream: bool
) -> None:
    # Old code: httpx's response.text raised the codec's error (UnicodeError,
    # TypeError, AssertionError), outside healkit's tree. As healkit.Response.text,
    # the text is read as UTF-8 then.
    answer = head(len(TEXT), content_type=f"text/plain; charset={charset}") + TEXT
    async with RawServer(answering(answer)) as server:
        response = await fetch(transport(stream=stream), f"{server.url}/x")
    assert response.text == TEXT.decode("utf-8", errors="replace")


@pytest.mark.parametrize("stream", MODES)
@pytest.mark.parametrize(
    ("charset", "body"),
    [("latin-1", "café".encode("latin-1")), ("utf-16", "café".encode("utf-16"))],
)
async def test_a_charset_that_decodes_the_body_is_kept(
    charset: str, body: bytes, stream: bool
) -> None:
    answer = head(len(body), content_type=f"text/plain; charset={charset}") + body
    async with RawServer(answering(answer)) as server:
        response = await fetch(transport(stream=stream), f"{server.url}/x")
    assert response.text == "café"


async def test_a_fallback_response_with_an_unread_stream_is_handed_on_unread() -> None:
    # A fallback plugin may answer with an httpx.Response of its own, its body a
    # stream. The first draft of the charset rule read response.content, which
    # raised httpx.ResponseNotRead for it.
    async def chunks() -> AsyncIterator[bytes]:
        yield b"from the cache"

    cached = httpx.Response(200, content=chunks())
    resilient = ResilientTransport(
        plugins=[TimeoutPlugin(), StaticFallback(cached)], entry_points=False
    )
    async with httpx.AsyncClient(transport=resilient) as http:
        response = await http.get(refused_url())
    assert response.content == b"from the cache"
    assert outcome_of(response).path == "fallback"


@pytest.mark.parametrize("stream", MODES)
async def test_a_cookie_that_is_not_ascii_cannot_break_the_client(stream: bool) -> None:
    # Old code: httpx's jar kept the cookie named "\xff" and every later request
    # to the host raised UnicodeEncodeError as httpx built its Cookie header.
    answer = (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: \xff=bad\r\nSet-Cookie: good=1\r\n"
        b"Set-Cookie: caf\xc3\xa9=bad\r\nContent-Length: 0\r\n\r\n"
    )
    async with (
        RawServer(answering(answer)) as server,
        httpx.AsyncClient(transport=transport(stream=stream)) as http,
    ):
        first = await http.get(f"{server.url}/first")
        second = await http.get(f"{server.url}/second")
    assert first.headers.get_list("Set-Cookie") == ["good=1"]
    assert second.status_code == 200
    assert b"\r\nCookie: good=1\r\n" in server.heads[1]


async def test_closing_the_client_mid_call_with_stream_does_not_fail_the_endpoint() -> None:
    # As test_attack_round8_requests.py checks it for the buffered mode: calls
    # whose heads had not come yet end with ClientClosedError, and neither the
    # breaker nor routing counts them against the endpoint.
    calls = 4
    arrived = asyncio.Event()

    async def hold(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        if len(server.heads) == calls:
            arrived.set()
        await server.release.wait()

    async with RawServer(hold) as server:
        config = {
            "services": {
                "svc": {
                    "endpoints": [server.url],
                    "retry": {"attempts": 3},
                    "breaker": {"consecutive_failures": 2},
                    "routing": {"eject_after": 2},
                }
            }
        }
        runtime = healkit.Runtime(
            config=config,
            plugins=[RetryPlugin(), BreakerPlugin(), TimeoutPlugin()],
            entry_points=False,
        )
        await runtime.start()
        try:
            resilient = ResilientTransport(runtime=runtime, stream=True)
            http = httpx.AsyncClient(transport=resilient)
            pending = [asyncio.ensure_future(http.get(f"{server.url}/x")) for _ in range(calls)]
            await arrived.wait()
            await http.aclose()
            results = await asyncio.gather(*pending, return_exceptions=True)
            assert {type(result) for result in results} == {healkit.ClientClosedError}
            (status,) = healkit.endpoint_status(runtime, "svc")
            assert (status.usable, status.consecutive_failures) == (True, 0)
        finally:
            await runtime.stop()
