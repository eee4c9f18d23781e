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


class TrustFor:
    """Gives every attempt the TLS context of a test CA, as a TLS plugin would."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    @healkit.hookimpl
    def healkit_pre_request(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> None:
        attempt.ssl = self.context


async def test_a_plugin_sets_the_attempts_tls_context_and_the_callers_ssl_wins(
    ca: trustme.CA,
) -> None:
    plugin = TrustFor(client_context(ca))
    async with FaultServer(ssl_context=server_context(ca)) as server:
        config = {"services": {"secure": {"endpoints": [server.url]}}}
        async with healkit.Client(config=config, plugins=[plugin], entry_points=False) as client:
            assert (await client.get("/x", service="secure")).status == 200
            # The caller's own ssl= (here: the system's CAs only) wins over the plugin's.
            with pytest.raises(healkit.TLSError):
                await client.get("/x", service="secure", ssl=ssl.create_default_context())
    assert server.hits() == 1
