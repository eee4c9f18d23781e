"""A request body read as it is sent is sent at most once, through every front door.

The upstream is a real aiohttp server on loopback that reads each request's
body and records what arrived: a body sent a second time from an exhausted
stream would arrive empty or cut, as if it were the request. healkit either
does not send it again (the first error is raised, saying why) or refuses the
redirect that would; a body held in memory is still retried.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

import healkit
import healkit.httpx
from healkit._http import replayable
from healkit.testing import ManualClock, refused_url
from healkit_retry import RetryPlugin
from healkit_timeout import TimeoutPlugin
from tests.body_support import Upstream
from tests.plugins import FailOnStatus, RetryUpTo

pytestmark = pytest.mark.anyio

SERVICE = "uploads"
PARTS = (b"first part,", b"second part")
WHOLE = b"".join(PARTS)


async def chunks() -> AsyncIterator[bytes]:
    for part in PARTS:
        yield part


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with Upstream() as server:
        yield server


def runtime(url: str, clock: ManualClock, *plugins: object) -> healkit.Runtime:
    """A runtime with the retry plugin (3 attempts), or with ``plugins`` instead."""
    service: dict[str, Any] = {"endpoints": [url]}
    if not plugins:
        plugins = (RetryPlugin(),)
        service["retry"] = {"attempts": 3}
    return healkit.Runtime(
        config={"services": {SERVICE: service}},
        plugins=[*plugins, TimeoutPlugin()],
        entry_points=False,
        clock=clock,
    )


def a_file(tmp_path: Path) -> io.BufferedReader:
    path = tmp_path / "upload.bin"
    path.write_bytes(WHOLE)
    return path.open("rb")


def a_multipart() -> aiohttp.MultipartWriter:
    writer = aiohttp.MultipartWriter("form-data")
    writer.append(chunks())
    return writer


# Every kind of body aiohttp reads as it sends it, built afresh per test.
STREAMED: dict[str, Callable[[Path], object]] = {
    "async generator": lambda _: chunks(),
    "binary file": a_file,
    "in-memory file": lambda _: io.BytesIO(WHOLE),
    "payload of a stream": lambda _: aiohttp.payload.AsyncIterablePayload(chunks()),
    "multipart of a stream": lambda _: a_multipart(),
    "form holding a file": lambda _: {"name": "report", "file": io.BytesIO(WHOLE)},
}


# -- which bodies can be sent again -------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        None,
        b"bytes",
        bytearray(b"bytes"),
        memoryview(b"bytes"),
        "text",
        {"name": "value", "count": 3},
        [("name", "value"), ("data", b"bytes")],
        aiohttp.payload.BytesPayload(b"bytes"),
        aiohttp.payload.JsonPayload({"json": True}),
    ],
    ids=repr,
)
def test_bodies_held_in_memory_are_replayable(body: object) -> None:
    assert replayable(body)


def test_a_multipart_of_bytes_is_replayable_and_one_holding_a_stream_is_not() -> None:
    writer = aiohttp.MultipartWriter("form-data")
    writer.append(b"bytes")
    writer.append("text")
    assert replayable(writer)
    writer.append_payload(aiohttp.payload.AsyncIterablePayload(chunks()))
    assert not replayable(writer)


@pytest.mark.parametrize("kind", STREAMED)
def test_bodies_read_as_they_are_sent_are_not_replayable(kind: str, tmp_path: Path) -> None:
    body = STREAMED[kind](tmp_path)
    try:
        assert not replayable(body)
        assert not replayable([("field", body)])
    finally:
        if isinstance(body, io.IOBase):
            body.close()


def test_a_form_data_object_is_not_replayable() -> None:
    # Its fields are aiohttp's private state: healkit cannot tell what they hold.
    assert not replayable(aiohttp.FormData({"name": "value"}))


# -- the aiohttp middleware --------------------------------------------------------


@pytest.mark.parametrize("kind", STREAMED)
async def test_middleware_sends_a_streamed_body_once_when_the_answer_is_503(
    upstream: Upstream, manual_clock: ManualClock, tmp_path: Path, kind: str
) -> None:
    # PUT: idempotent, so only the body keeps the retry plugin from sending it again. A
    # 503 that will not be retried is no failure to it: the answer is returned as it came.
    middleware = healkit.ResilienceMiddleware(runtime(upstream.url, manual_clock))
    async with (
        aiohttp.ClientSession(middlewares=[middleware]) as session,
        session.put(f"{upstream.url}/flaky", data=STREAMED[kind](tmp_path)) as response,
    ):
        assert response.status == 503
    assert len(upstream.bodies("/flaky")) == 1
    assert upstream.bodies("/flaky")[0]  # the whole body arrived, once


async def test_middleware_sends_a_stream_once_when_the_connection_breaks_mid_body(
    upstream: Upstream, manual_clock: ManualClock
) -> None:
    middleware = healkit.ResilienceMiddleware(runtime(upstream.url, manual_clock))
    async with aiohttp.ClientSession(middlewares=[middleware]) as session:
        with pytest.raises(healkit.TransportError) as caught:
            await session.put(f"{upstream.url}/cut", data=chunks())
    assert upstream.bodies("/cut") == [WHOLE[:3]]
    assert len(caught.value.attempts) == 1
    assert "cannot be sent again" in str(caught.value)


async def test_middleware_still_retries_a_body_held_in_memory(
    upstream: Upstream, manual_clock: ManualClock
) -> None:
    middleware = healkit.ResilienceMiddleware(runtime(upstream.url, manual_clock))
    async with (
        aiohttp.ClientSession(middlewares=[middleware]) as session,
        session.put(f"{upstream.url}/flaky", data=WHOLE) as response,
    ):
        assert response.status == 200
    assert upstream.bodies("/flaky") == [WHOLE, WHOLE]


async def test_middleware_refuses_a_plugin_resending_a_spent_stream(
    upstream: Upstream, manual_clock: ManualClock
) -> None:
    # A plugin that retries whatever the body: healkit still sends the stream once.
    middleware = healkit.ResilienceMiddleware(runtime(upstream.url, manual_clock, RetryUpTo(3)))
    async with aiohttp.ClientSession(middlewares=[middleware]) as session:
        with pytest.raises(healkit.InvalidRequestError, match="attempt #1 of this PUT sent it"):
            await session.put(f"{upstream.url}/cut", data=chunks())
    assert upstream.bodies("/cut") == [WHOLE[:3]]


async def test_middleware_refuses_a_307_that_would_resend_a_streamed_body(
    upstream: Upstream, manual_clock: ManualClock, tmp_path: Path
) -> None:
    middleware = healkit.ResilienceMiddleware(runtime(upstream.url, manual_clock))
    async with aiohttp.ClientSession(middlewares=[middleware]) as session:
        with (
            a_file(tmp_path) as upload,
            pytest.raises(healkit.RedirectRefusedError, match="cannot be sent again"),
        ):
            await session.put(f"{upstream.url}/moved", data=upload)
    assert upstream.bodies("/moved") == [WHOLE]
    assert upstream.bodies("/landed") == []


async def test_middleware_follows_a_307_with_a_body_held_in_memory(
    upstream: Upstream, manual_clock: ManualClock
) -> None:
    middleware = healkit.ResilienceMiddleware(runtime(upstream.url, manual_clock))
    async with (
        aiohttp.ClientSession(middlewares=[middleware]) as session,
        session.put(f"{upstream.url}/moved", data=WHOLE) as response,
    ):
        assert await response.text() == "stored"
    assert upstream.bodies("/landed") == [WHOLE]


# -- healkit.Client ----------------------------------------------------------------


def client(url: str, clock: ManualClock, *plugins: object) -> healkit.Client:
    return healkit.Client(runtime=runtime(url, clock, *plugins))


@pytest.mark.parametrize("kind", STREAMED)
async def test_client_sends_a_streamed_body_once_when_the_answer_is_503(
    upstream: Upstream, manual_clock: ManualClock, tmp_path: Path, kind: str
) -> None:
    async with client(upstream.url, manual_clock) as c:
        response = await c.put("/flaky", service=SERVICE, data=STREAMED[kind](tmp_path))
    assert response.status == 503
    assert len(response.outcome.attempts) == 1
    assert len(upstream.bodies("/flaky")) == 1
    assert upstream.bodies("/flaky")[0]


def a_multipart_in_memory() -> aiohttp.MultipartWriter:
    writer = aiohttp.MultipartWriter("form-data")
    writer.append(WHOLE)
    return writer


@pytest.mark.parametrize(
    "body",
    [WHOLE, bytearray(WHOLE), [("part", WHOLE.decode())], a_multipart_in_memory],
    ids=["bytes", "bytearray", "form pairs", "multipart of bytes"],
)
async def test_client_retries_a_body_held_in_memory_whole(
    upstream: Upstream, manual_clock: ManualClock, body: object
) -> None:
    data = body() if callable(body) else body
    async with client(upstream.url, manual_clock) as c:
        response = await c.put("/flaky", service=SERVICE, data=data)
    assert response.status == 200
    first, second = upstream.bodies("/flaky")
    assert first == second  # the multipart's boundary too: the same payload, sent again
    assert len(second) >= len(WHOLE)


async def test_client_refuses_a_plugin_resending_a_spent_stream(
    upstream: Upstream, manual_clock: ManualClock
) -> None:
    async with client(upstream.url, manual_clock, RetryUpTo(3)) as c:
        with pytest.raises(healkit.InvalidRequestError, match="attempt #1 of this PUT sent it"):
            await c.put("/cut", service=SERVICE, data=chunks())
    assert upstream.bodies("/cut") == [WHOLE[:3]]


async def test_client_refuses_a_second_send_of_a_form_holding_a_file(
    upstream: Upstream, manual_clock: ManualClock
) -> None:
    form = {"name": "report", "file": io.BytesIO(WHOLE)}
    async with client(upstream.url, manual_clock, RetryUpTo(3), FailOnStatus(503)) as c:
        with pytest.raises(healkit.InvalidRequestError, match="a form holding a file") as caught:
            await c.put("/flaky", service=SERVICE, data=form)
    assert len(upstream.bodies("/flaky")) == 1
    first, *later = caught.value.attempts  # RetryUpTo retries the refusals too: each refused
    assert first.error == "HTTPStatusError"
    assert {a.error for a in later} == {"InvalidRequestError"}


async def test_client_fails_a_stream_over_when_the_first_endpoint_refused_the_connection(
    upstream: Upstream, manual_clock: ManualClock
) -> None:
    # A refused connection read nothing of the stream: another endpoint may take it whole.
    document = {"services": {SERVICE: {"endpoints": [refused_url(), upstream.url]}}}
    async with healkit.Client(
        config=document, plugins=[TimeoutPlugin()], entry_points=False, clock=manual_clock
    ) as c:
        response = await c.put("/landed", service=SERVICE, data=chunks())
    assert [a.error for a in response.outcome.attempts] == ["ConnectError", None]
    assert upstream.bodies("/landed") == [WHOLE]


async def test_client_refuses_a_307_that_would_resend_a_form_holding_a_file(
    upstream: Upstream, manual_clock: ManualClock
) -> None:
    form = {"name": "report", "file": io.BytesIO(WHOLE)}
    async with client(upstream.url, manual_clock) as c:
        with pytest.raises(healkit.RedirectRefusedError, match="cannot be sent again"):
            await c.put("/moved", service=SERVICE, data=form)
    assert len(upstream.bodies("/moved")) == 1
    assert upstream.bodies("/landed") == []


# -- the httpx transport: it reads the body before the first attempt ---------------


async def test_httpx_resends_a_streamed_body_whole_after_a_503_and_a_307(
    upstream: Upstream, manual_clock: ManualClock
) -> None:
    transport = healkit.httpx.ResilientTransport(runtime=runtime(upstream.url, manual_clock))
    async with httpx.AsyncClient(transport=transport, follow_redirects=True) as http:
        flaky = await http.put(f"{upstream.url}/flaky", content=chunks())
        moved = await http.put(f"{upstream.url}/moved", content=chunks())
    assert (flaky.status_code, moved.status_code) == (200, 200)
    assert upstream.bodies("/flaky") == [WHOLE, WHOLE]
    assert upstream.bodies("/landed") == [WHOLE]
