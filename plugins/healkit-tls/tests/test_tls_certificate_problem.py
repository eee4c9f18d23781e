"""certificate_problem() on real handshake failures, through aiohttp's typed error attributes."""

from __future__ import annotations

import ssl

import aiohttp
import pytest
import trustme
from tls_helpers import MtlsServer, server_context

from healkit_tls import certificate_problem

pytestmark = pytest.mark.anyio


async def handshake_error(server_ca: trustme.CA, trusted: trustme.CA) -> BaseException:
    """Fail a handshake with a server whose certificate ``trusted`` did not issue."""
    context = server_context(server_ca.issue_cert("127.0.0.1"), require=False)
    async with MtlsServer(context) as server, aiohttp.ClientSession() as session:
        client_context = ssl.create_default_context()
        trusted.configure_trust(client_context)  # another CA: verification fails
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as caught:
            await session.get(server.url, ssl=client_context)
    return caught.value


async def test_an_untrusted_server_certificate_is_a_certificate_problem(ca: trustme.CA) -> None:
    error = await handshake_error(ca, trustme.CA())
    assert certificate_problem(error)
    # Without the exception chain, the error's own certificate_error still says so.
    error.__cause__ = error.__context__ = None
    assert isinstance(error, aiohttp.ClientConnectorCertificateError)
    assert certificate_problem(error)


async def test_a_refused_connection_is_not_a_certificate_problem() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.get("https://127.0.0.1:9/")
    assert not certificate_problem(caught.value)
