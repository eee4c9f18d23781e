"""The caller's request body failing while it is sent is the caller's error.

In every HTTP front door (healkit.Client, the httpx transport, the aiohttp
middleware for a payload that holds no open file): an
:class:`healkit.InvalidRequestError` raised from the body's own exception,
the call's attempts attached, ``may_have_reached_server`` true once a byte of
the body was sent; never retried, never counted against the endpoint (a
breaker that trips on one failure stays closed). Before, healkit.Client gave
a ``ConnectionLostError`` that tripped the breaker (and so did the
middleware), and the httpx transport
let the body's raw exception out without the attempt history.

The upstream is a raw asyncio server on loopback that reads what arrives:
a whole request is answered 200, a cut one is kept as it arrived.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Self

import aiohttp
import httpx
import pytest

import healkit
from healkit import InvalidRequestError
from healkit.httpx import ResilientTransport
from healkit_breaker import BreakerPlugin
from healkit_retry import RetryPlugin
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio

SERVICE = "uploads"
CHUNK = b"x" * 64


class Upstream:
    """A raw loopback HTTP/1.1 server: answers a whole request 200, keeps a cut one."""

    def __init__(self) -> None:
        self.url = ""
        self.whole: list[bytes] = []  # the bodies of the requests that arrived whole
        self.cut: list[bytes] = []  # what arrived of the requests cut short
        self._server: asyncio.Server | None = None
        self._connections: list[asyncio.StreamWriter] = []
        self.cut_arrived = asyncio.Event()  # set once a request cut short was kept

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def abort(self) -> None:
        """Reset every open connection."""
        for writer in self._connections:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.append(writer)
        try:
            while (body := await _read_request(reader)) is not None:
                self.whole.append(body)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError) as cut:
            arrived = cut.partial if isinstance(cut, asyncio.IncompleteReadError) else b""
            self.cut.append(arrived)
            self.cut_arrived.set()
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """Read one request; return its body (``None``: the connection ended between requests)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as ended:
        if not ended.partial:
            return None
        raise
    fields: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            fields[name.strip().lower()] = value.strip()
    if b"content-length" in fields:
        return await reader.readexactly(int(fields[b"content-length"]))
    if fields.get(b"transfer-encoding", b"").lower() != b"chunked":
        return b""
    return await _read_chunked(reader)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """Read a chunked body (a cut one: IncompleteReadError with all that arrived)."""
    body = b""
    while True:
        try:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
        except asyncio.IncompleteReadError as cut:
            raise asyncio.IncompleteReadError(body + cut.partial, None) from None
        if size == 0:
            return body
        body += data[:-2]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with Upstream() as server:
        yield server


def config(url: str, **service: Any) -> dict[str, Any]:
    return {
        "services": {
            SERVICE: {
                "endpoints": [url],
                "retry": {"attempts": 3},
                "breaker": {"consecutive_failures": 1},
                **service,
            }
        }
    }


def plugins() -> list[object]:
    return [RetryPlugin(), BreakerPlugin(), TimeoutPlugin()]


class DiskGoneError(OSError):
    """What the caller's body raises: its own failure, not the connection's."""


async def generator(good: int) -> AsyncIterator[bytes]:
    """An async generator: ``good`` chunks, then it fails."""
    for _ in range(good):
        yield CHUNK
    raise DiskGoneError("the disk went away")


class Iterator:
    """An async iterator (not a generator): ``good`` chunks, then it fails."""

    def __init__(self, good: int) -> None:
        self.left = good

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if self.left == 0:
            raise DiskGoneError("the disk went away")
        self.left -= 1
        return CHUNK


class FailingFile(io.BytesIO):
    """A file whose reads fail after the first ``good`` reads."""

    def __init__(self, good: int) -> None:
        super().__init__(CHUNK * 100)
        self.left = good

    def read(self, size: int | None = -1, /) -> bytes:
        if self.left == 0:
            raise DiskGoneError("the disk went away")
        self.left -= 1
        return super().read(min(len(CHUNK), size if size is not None and size >= 0 else 64))


def form(good: int) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("name", "report")
    data.add_field("file", FailingFile(good), filename="report.bin")
    return data


BODIES: dict[str, Callable[[int], object]] = {
    "async generator": generator,
    "async iterator": Iterator,
    "aiohttp payload": lambda good: aiohttp.payload.AsyncIterablePayload(generator(good)),
    "file": FailingFile,
    "multipart form of a file": form,
}


async def assert_endpoint_still_trusted(client: healkit.Client, upstream: Upstream) -> None:
    """One failure would have opened the breaker: the next call is sent, and answered."""
    response = await client.put("/ok", service=SERVICE, data=b"fine")
    assert response.status == 200
    assert upstream.whole[-1] == b"fine"


@pytest.mark.parametrize("body", BODIES)
async def test_client_a_body_failing_while_sent_is_the_callers_error(
    upstream: Upstream, body: str
) -> None:
    async with healkit.Client(
        config=config(upstream.url), plugins=plugins(), entry_points=False
    ) as client:
        with pytest.raises(InvalidRequestError, match="body raised DiskGoneError") as raised:
            await client.put(
                "/upload",
                service=SERVICE,
                data=BODIES[body](2),
                headers={"Idempotency-Key": "k1"},
            )
        error = raised.value
        assert isinstance(error.__cause__, DiskGoneError)
        assert error.may_have_reached_server
        assert len(error.attempts) == 1  # not retried
        async with asyncio.timeout(10):  # a bound, should the connection never end
            await upstream.cut_arrived.wait()
        assert upstream.whole == []  # the request never arrived whole
        assert len(upstream.cut) == 1
        await assert_endpoint_still_trusted(client, upstream)


async def test_client_a_body_failing_before_its_first_byte_never_reached_the_server(
    upstream: Upstream,
) -> None:
    async with healkit.Client(
        config=config(upstream.url), plugins=plugins(), entry_points=False
    ) as client:
        with pytest.raises(InvalidRequestError) as raised:
            await client.post("/upload", service=SERVICE, data=generator(0))
        error = raised.value
        assert isinstance(error.__cause__, DiskGoneError)
        assert not error.may_have_reached_server
        assert len(error.attempts) == 1
        await assert_endpoint_still_trusted(client, upstream)


async def test_client_a_body_that_ends_well_is_sent_whole(upstream: Upstream) -> None:
    async def whole() -> AsyncIterator[bytes]:
        yield b"one "
        yield b"two"

    async with healkit.Client(
        config=config(upstream.url), plugins=plugins(), entry_points=False
    ) as client:
        response = await client.post("/upload", service=SERVICE, data=whole())
    assert response.status == 200
    assert upstream.whole == [b"one two"]


# -- httpx --------------------------------------------------------------------------------


async def stream(good: int) -> AsyncIterator[bytes]:
    for _ in range(good):
        yield CHUNK
    raise DiskGoneError("the disk went away")


class HttpxIterator(Iterator):
    pass


HTTPX_BODIES: dict[str, Callable[[int], object]] = {
    "async generator": stream,
    "async iterator": HttpxIterator,
}


@pytest.mark.parametrize("body", HTTPX_BODIES)
async def test_httpx_a_stream_failing_while_sent_is_the_callers_error(
    upstream: Upstream, body: str
) -> None:
    # Past max_body_bytes: sent as it is read, so it fails while being sent.
    document = config(upstream.url, max_body_bytes=len(CHUNK))
    transport = ResilientTransport(config=document, plugins=plugins(), entry_points=False)
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(InvalidRequestError, match="body raised DiskGoneError") as raised:
            await http.put(
                f"{upstream.url}/upload",
                content=HTTPX_BODIES[body](3),  # type: ignore[arg-type]
                headers={"Idempotency-Key": "k1"},
            )
        error = raised.value
        assert isinstance(error.__cause__, DiskGoneError)
        assert error.may_have_reached_server
        assert len(error.attempts) == 1
        async with asyncio.timeout(10):  # a bound, should the connection never end
            await upstream.cut_arrived.wait()
        assert upstream.whole == []
        assert len(upstream.cut) == 1
        assert upstream.cut[0].startswith(CHUNK * 3)  # what was read before it failed
        # The breaker (one failure trips it) did not count the caller's body.
        response = await http.put(f"{upstream.url}/ok", content=b"fine")
        assert response.status_code == 200
        assert upstream.whole == [b"fine"]


# -- the aiohttp middleware ---------------------------------------------------------------


MIDDLEWARE_BODIES: dict[str, Callable[[int], object]] = {
    "async generator": generator,
    "async iterator": Iterator,
    "aiohttp payload": lambda good: aiohttp.payload.AsyncIterablePayload(generator(good)),
    "io.BytesIO": FailingFile,
}


@pytest.mark.parametrize("body", MIDDLEWARE_BODIES)
async def test_middleware_a_body_failing_while_sent_is_the_callers_error(
    upstream: Upstream, body: str
) -> None:
    runtime = healkit.Runtime(config=config(upstream.url), plugins=plugins(), entry_points=False)
    middleware = healkit.ResilienceMiddleware(runtime)
    async with aiohttp.ClientSession(middlewares=[middleware]) as session:
        with pytest.raises(InvalidRequestError, match="body raised DiskGoneError") as raised:
            await session.put(f"{upstream.url}/upload", data=MIDDLEWARE_BODIES[body](2))
        error = raised.value
        assert isinstance(error.__cause__, DiskGoneError)
        assert error.may_have_reached_server
        assert len(error.attempts) == 1
        async with asyncio.timeout(10):  # a bound, should the connection never end
            await upstream.cut_arrived.wait()
        assert upstream.whole == []
        async with session.put(f"{upstream.url}/ok", data=b"fine") as response:
            assert response.status == 200  # the breaker (one failure trips it) stayed closed
        assert upstream.whole == [b"fine"]


async def test_middleware_sends_a_file_on_disk_as_aiohttp_does(
    upstream: Upstream, tmp_path: Path
) -> None:
    """Its payload holds an open file: not replaced (aiohttp would warn of it), sent whole."""
    path = tmp_path / "report.bin"
    path.write_bytes(CHUNK * 3)
    runtime = healkit.Runtime(config=config(upstream.url), plugins=plugins(), entry_points=False)
    middleware = healkit.ResilienceMiddleware(runtime)
    with path.open("rb") as file:
        async with (
            aiohttp.ClientSession(middlewares=[middleware]) as session,
            session.put(f"{upstream.url}/upload", data=file) as response,
        ):
            assert response.status == 200
    assert upstream.whole == [CHUNK * 3]
