"""healkit.httpx decodes a buffered body within max_body_bytes (issue 11).

Against a real loopback server: the transport decodes gzip and deflate itself,
each step under the cap, and hands httpx the decoded body without its
Content-Encoding (as a proxy does); a coding it cannot decode under the cap is
refused, and not asked for.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import httpx
import pytest

import healkit
import healkit.httpx
from healkit.testing import Fault, FaultServer
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio

SERVICE = "api"
PAYLOAD = b'{"ok": true}' * 1000


def config(url: str, limit: int = len(PAYLOAD)) -> dict[str, Any]:
    return {"services": {SERVICE: {"endpoints": [url], "max_body_bytes": limit}}}


def encoded(body: bytes, coding: str) -> Fault:
    return Fault.status(200, body=body, headers={"Content-Encoding": coding})


async def get(url: str, limit: int = len(PAYLOAD), **kwargs: Any) -> httpx.Response:
    transport = healkit.httpx.ResilientTransport(
        config=config(url, limit), plugins=[TimeoutPlugin()], entry_points=False
    )
    async with httpx.AsyncClient(transport=transport) as hx:
        return await hx.request(url=f"{url}/a", **{"method": "GET", **kwargs})


def raw_deflate(body: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(body) + packer.flush()


@pytest.mark.parametrize(
    ("body", "coding"),
    [
        (gzip.compress(PAYLOAD), "gzip"),
        (gzip.compress(PAYLOAD[:5000]) + gzip.compress(PAYLOAD[5000:]), "x-gzip"),
        (zlib.compress(PAYLOAD), "deflate"),
        (raw_deflate(PAYLOAD), "deflate"),
        (gzip.compress(zlib.compress(PAYLOAD)), "deflate, gzip"),
        (PAYLOAD, "identity"),
    ],
    ids=["gzip", "two-members", "deflate", "raw-deflate", "stacked", "identity"],
)
async def test_a_body_within_the_cap_is_decoded_and_no_longer_encoded(
    fault_server: FaultServer, body: bytes, coding: str
) -> None:
    fault_server.set_default(encoded(body, coding))
    response = await get(fault_server.url)
    assert response.content == PAYLOAD
    assert "Content-Encoding" not in response.headers
    assert response.headers["Content-Length"] == str(len(PAYLOAD))


async def test_each_decoding_step_is_capped(fault_server: FaultServer) -> None:
    # The outer gzip decodes to a small gzip, which decodes past the cap.
    fault_server.set_default(encoded(gzip.compress(gzip.compress(b"\0" * 10**6)), "gzip, gzip"))
    with pytest.raises(healkit.BodyTooLargeError):
        await get(fault_server.url, limit=10**6 - 1)


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, br"])
async def test_a_coding_it_does_not_decode_is_refused(
    fault_server: FaultServer, coding: str
) -> None:
    fault_server.set_default(encoded(b"opaque", coding))
    with pytest.raises(healkit.ProtocolError, match="is not one healkit's httpx transport decodes"):
        await get(fault_server.url)


async def test_a_body_that_does_not_decode_is_a_protocol_error(fault_server: FaultServer) -> None:
    fault_server.set_default(encoded(gzip.compress(PAYLOAD)[:-20], "gzip"))  # truncated
    with pytest.raises(healkit.ProtocolError, match="does not decode as gzip"):
        await get(fault_server.url)


async def test_a_head_response_of_an_encoded_resource_has_no_body_to_decode(
    fault_server: FaultServer,
) -> None:
    fault_server.set_default(encoded(gzip.compress(PAYLOAD), "gzip"))
    response = await get(fault_server.url, method="HEAD")
    assert response.status_code == 200
    assert response.content == b""


async def test_only_the_codings_it_decodes_are_asked_for(fault_server: FaultServer) -> None:
    await get(fault_server.url, headers={"Accept-Encoding": "br, gzip;q=0.5, zstd, deflate"})
    await get(fault_server.url, headers={"Accept-Encoding": "br"})
    sent = [r.headers["Accept-Encoding"] for r in fault_server.requests]
    assert sent == ["gzip;q=0.5, deflate", "identity"]
