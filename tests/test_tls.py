"""Real TLS with trustme: verified connections work, certificate problems are TLSError."""

from __future__ import annotations

import ssl

import pytest
import trustme

import healkit
from healkit.testing import FaultServer

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, host: str = "127.0.0.1") -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_verified_https_call(ca: trustme.CA) -> None:
    async with FaultServer(ssl_context=server_context(ca)) as server:
        config = {"services": {"secure": {"endpoints": [server.url]}}}
        async with healkit.Client(config=config, entry_points=False) as client:
            response = await client.get("/x", service="secure", ssl=client_context(ca))
    assert server.url.startswith("https://")
    assert response.status == 200


async def test_untrusted_certificate_is_a_tls_error_that_never_reached_the_server(
    ca: trustme.CA,
) -> None:
    async with (
        FaultServer(ssl_context=server_context(ca)) as server,
        healkit.Client(entry_points=False) as client,
    ):
        with pytest.raises(healkit.TLSError) as caught:
            await client.get(f"{server.url}/x")
    assert caught.value.may_have_reached_server is False
    assert server.hits() == 0


async def test_hostname_mismatch_is_a_tls_error(ca: trustme.CA) -> None:
    async with (
        FaultServer(ssl_context=server_context(ca, host="other.test")) as server,
        healkit.Client(entry_points=False) as client,
    ):
        with pytest.raises(healkit.TLSError, match="TLS handshake"):
            await client.get(f"{server.url}/x", ssl=client_context(ca))
