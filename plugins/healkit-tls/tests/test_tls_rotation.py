"""Mutual TLS against real servers, and rotation of the material while traffic flows."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp
import pytest
import trustme
from tls_helpers import Events, Material, MtlsServer, fingerprint, server_context

import healkit
from healkit_retry import RetryPlugin
from healkit_tls import TlsMaterialRejected, TlsPlugin, TlsRotated

pytestmark = pytest.mark.anyio

FAST_WATCH = 0.02
NO_WATCH = 3600.0


def document(url: str, tls: dict[str, Any], **service: Any) -> dict[str, Any]:
    return {"services": {"secure": {"endpoints": [url], "tls": tls, **service}}}


def client(
    config: dict[str, Any],
    *plugins: object,
    session: aiohttp.ClientSession | None = None,
) -> healkit.Client:
    return healkit.Client(config=config, plugins=plugins, entry_points=False, session=session)


async def test_mutual_tls_presents_the_client_certificate(
    ca: trustme.CA, material: Material, events: Events
) -> None:
    leaf = ca.issue_cert("client-a.test")
    material.write_leaf(leaf, ca)
    async with MtlsServer(server_context(ca.issue_cert("127.0.0.1"), ca)) as server:
        plugin = TlsPlugin()
        config = document(server.url, material.section())
        async with client(config, plugin, events) as c:
            response = await c.get("/x", service="secure")
        status = plugin.status("secure")
    assert response.status == 200
    assert server.fingerprints() == [fingerprint(leaf)]
    assert status is not None
    assert status.fingerprint == fingerprint(leaf)
    assert status.subject is not None
    assert status.generation == 1
    [loaded] = events.of(TlsRotated)
    assert loaded.trigger == "config"
    assert loaded.services == ("secure",)


async def test_rotation_with_100_requests_in_flight_loses_none(
    ca: trustme.CA, material: Material, events: Events
) -> None:
    """A -> B while 100 requests hold connections made with A: all of them succeed,
    every request started after the swap presents B on a new connection, and the
    pooled connections of A are never reused."""
    leaf_a, leaf_b = ca.issue_cert("client-a.test"), ca.issue_cert("client-b.test")
    material.write_leaf(leaf_a, ca)
    plugin = TlsPlugin()
    async with (
        MtlsServer(server_context(ca.issue_cert("127.0.0.1"), ca)) as server,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
    ):
        config = document(server.url, material.section(reload_interval=FAST_WATCH))
        async with client(config, plugin, events, session=session) as c:
            in_flight = [
                asyncio.ensure_future(c.get("/hold", service="secure")) for _ in range(100)
            ]
            await server.wait_held(100)

            material.write_leaf(leaf_b, ca)  # rename-swapped: the watcher sees A or B
            rotated = await events.wait_for(TlsRotated, count=2)
            assert rotated[-1].trigger == "watch"
            assert rotated[-1].previous_fingerprint == fingerprint(leaf_a)
            assert rotated[-1].fingerprint == fingerprint(leaf_b)

            during = await asyncio.gather(*(c.get("/during", service="secure") for _ in range(10)))
            server.release()
            held = await asyncio.gather(*in_flight, return_exceptions=True)
            after = await asyncio.gather(*(c.get("/after", service="secure") for _ in range(10)))

    assert [getattr(r, "status", r) for r in held] == [200] * 100
    assert all(r.status == 200 for r in (*during, *after))
    assert set(server.fingerprints("/hold")) == {fingerprint(leaf_a)}
    assert set(server.fingerprints("/during")) == {fingerprint(leaf_b)}
    assert set(server.fingerprints("/after")) == {fingerprint(leaf_b)}
    a_connections = {s.connection for s in server.seen if s.path == "/hold"}
    b_connections = {s.connection for s in server.seen if s.path != "/hold"}
    assert len(a_connections) == 100
    assert not a_connections & b_connections  # 100 idle A connections were in the pool
    assert not events.of(TlsMaterialRejected)


async def test_server_ca_rotation_is_picked_up_by_the_retry_after_a_handshake_failure(
    ca: trustme.CA, material: Material, events: Events
) -> None:
    """The server moves to a certificate of a new CA before the watcher ran: the
    certificate failure makes the plugin re-read the bundle and retry once."""
    new_ca = trustme.CA(organization_name="healkit new CA")
    leaf = ca.issue_cert("client.test")
    material.write_leaf(leaf, ca)
    context = server_context(ca.issue_cert("127.0.0.1"), ca)
    plugin = TlsPlugin()
    async with (
        MtlsServer(context) as server,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
    ):
        config = document(server.url, material.section(reload_interval=NO_WATCH))
        async with client(config, plugin, events, session=session) as c:
            assert (await c.get("/before", service="secure")).status == 200
            # The server now presents a certificate of the new CA (new handshakes only).
            new_ca.issue_cert("127.0.0.1").configure_cert(context)
            # Step 1 of the procedure: the bundle trusts both CAs.
            material.write(ca=ca.cert_pem.bytes() + new_ca.cert_pem.bytes())
            response = await c.get("/after", service="secure")
    assert response.status == 200
    outcome = response.outcome
    assert [a.error for a in outcome.attempts] == ["TLSError", None]
    assert outcome.path == "retry"
    assert events.of(TlsRotated)[-1].trigger == "handshake_failure"
    assert server.fingerprints() == [fingerprint(leaf), fingerprint(leaf)]


async def test_a_certificate_failure_without_new_material_is_not_retried_by_the_plugin(
    ca: trustme.CA, material: Material
) -> None:
    other_ca = trustme.CA()
    material.write_leaf(ca.issue_cert("client.test"), ca)
    async with MtlsServer(server_context(other_ca.issue_cert("127.0.0.1"), ca)) as server:
        config = document(server.url, material.section(reload_interval=NO_WATCH))
        async with client(config, TlsPlugin()) as c:
            with pytest.raises(healkit.TLSError) as caught:
                await c.get("/x", service="secure")
    assert len(caught.value.attempts) == 1
    assert server.seen == []


async def test_hostname_mismatch_fails_clearly(ca: trustme.CA, material: Material) -> None:
    material.write_leaf(ca.issue_cert("client.test"), ca)
    async with MtlsServer(server_context(ca.issue_cert("other.test"), ca)) as server:
        config = document(server.url, material.section())
        async with client(config, TlsPlugin(), RetryPlugin()) as c:
            with pytest.raises(healkit.TLSError) as caught:
                await c.get("/x", service="secure")
    assert "TLS handshake" in str(caught.value)
    assert "127.0.0.1" in str(caught.value.__cause__)
    assert caught.value.may_have_reached_server is False
    assert server.seen == []


async def test_the_callers_own_ssl_option_wins(ca: trustme.CA, material: Material) -> None:
    material.write_leaf(ca.issue_cert("client.test"), ca)
    async with MtlsServer(server_context(ca.issue_cert("127.0.0.1"), ca)) as server:
        config = document(server.url, material.section())
        async with client(config, TlsPlugin()) as c:
            with pytest.raises(healkit.TLSError):
                await c.get("/x", service="secure", ssl=ssl.create_default_context())
