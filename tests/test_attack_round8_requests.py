"""Red team, round 8: the request path, attacked from the user docs.

Each case runs against real loopback servers (healkit.testing's fault server,
or a refused port) through the front door it names, and checks what the
caller sees, what each server received, and what healkit logged.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import healkit
from healkit.testing import Fault, FaultServer
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio

SERVICE = "api"


def client(config: dict[str, Any]) -> healkit.Client:
    return healkit.Client(config=config, plugins=[TimeoutPlugin()], entry_points=False)


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
