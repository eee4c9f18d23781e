"""Rejected material keeps the context in use; verification needs local permission;
expiry warnings; secrets never reach errors or logs."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from tls_helpers import Events, Material, MtlsServer, fingerprint, pem_chain, server_context

import healkit
from healkit_retry import RetryPlugin
from healkit_tls import (
    ALLOW_INSECURE_ENV,
    TlsCertificateExpiring,
    TlsMaterialRejected,
    TlsPlugin,
    TlsRotated,
)

pytestmark = pytest.mark.anyio

FAST_WATCH = 0.02
UTC = dt.UTC


def document(url: str, tls: dict[str, Any]) -> dict[str, Any]:
    return {"services": {"secure": {"endpoints": [url], "tls": tls}}}


def client(config: dict[str, Any], *plugins: object) -> healkit.Client:
    return healkit.Client(config=config, plugins=plugins, entry_points=False)


def key_of(leaf: trustme.LeafCert) -> bytes:
    return leaf.private_key_pem.bytes()


def chain_of(leaf: trustme.LeafCert) -> bytes:
    return b"".join(blob.bytes() for blob in leaf.cert_chain_pems)


def expired(ca: trustme.CA) -> trustme.LeafCert:
    now = dt.datetime.now(UTC)
    return ca.issue_cert(
        "expired.test", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
    )


@pytest.mark.parametrize("problem", ["expired", "mismatched key", "untrusted chain"])
async def test_rejected_file_material_keeps_the_context_in_use(
    ca: trustme.CA, material: Material, events: Events, logs: list[dict[str, Any]], problem: str
) -> None:
    leaf = ca.issue_cert("client.test")
    material.write_leaf(leaf, ca)
    async with MtlsServer(server_context(ca.issue_cert("127.0.0.1"), ca)) as server:
        plugin = TlsPlugin()
        config = document(server.url, material.section(reload_interval=FAST_WATCH))
        async with client(config, plugin, events) as c:
            if problem == "expired":
                bad = expired(ca)
                material.write(cert=chain_of(bad), key=key_of(bad))
            elif problem == "mismatched key":
                material.write(key=key_of(ca.issue_cert("other.test")))
            else:
                stranger = trustme.CA().issue_cert("stranger.test")
                material.write(cert=chain_of(stranger), key=key_of(stranger))
            [rejected] = await events.wait_for(TlsMaterialRejected)
            response = await c.get("/x", service="secure")
            status = plugin.status("secure")
    assert response.status == 200
    assert server.fingerprints() == [fingerprint(leaf)]  # still the old certificate
    assert rejected.trigger == "watch"
    assert rejected.kept_previous is True
    expected = {
        "expired": "expired on",
        "mismatched key": "does not belong to the client certificate",
        "untrusted chain": "does not chain to the CA bundle",
    }[problem]
    assert expected in rejected.reason
    assert status is not None
    assert status.error == rejected.reason
    assert status.fingerprint == fingerprint(leaf)
    assert [e.generation for e in events.of(TlsRotated)] == [1]
    [logged] = [e for e in logs if e["event"] == "healkit.tls_material_rejected"]
    assert logged["log_level"] == "error"
    assert logged["reason"] == rejected.reason


async def test_rejected_inline_material_keeps_the_previous_context(
    ca: trustme.CA, events: Events
) -> None:
    leaf = ca.issue_cert("client.test")
    tls = {"ca_pem": ca.cert_pem.bytes().decode(), "cert_pem": pem_chain(leaf)}
    tls["key_pem"] = key_of(leaf).decode()
    async with MtlsServer(server_context(ca.issue_cert("127.0.0.1"), ca)) as server:
        plugin = TlsPlugin()
        async with client(document(server.url, tls), plugin, events) as c:
            bad = expired(ca)
            # The document is valid on its own (an expiring certificate must not make
            # every later document invalid); the material is rejected when loaded.
            c.runtime.apply(
                document(
                    server.url, {**tls, "cert_pem": pem_chain(bad), "key_pem": key_of(bad).decode()}
                )
            )
            response = await c.get("/x", service="secure")
    assert response.status == 200
    assert server.fingerprints() == [fingerprint(leaf)]
    [rejected] = events.of(TlsMaterialRejected)
    assert (rejected.trigger, rejected.kept_previous) == ("config", True)
    assert "expired" in rejected.reason


async def test_without_any_valid_material_attempts_are_refused(
    ca: trustme.CA, material: Material, events: Events
) -> None:
    bad = expired(ca)
    material.write_leaf(bad, ca)
    async with MtlsServer(server_context(ca.issue_cert("127.0.0.1"), ca)) as server:
        config = document(server.url, material.section())
        async with client(config, TlsPlugin(), RetryPlugin(), events) as c:
            with pytest.raises(
                healkit.TLSError, match="no valid TLS material for service 'secure'"
            ):
                await c.get("/x", service="secure")
    assert server.seen == []
    [rejected] = events.of(TlsMaterialRejected)
    assert rejected.kept_previous is False


async def test_a_file_that_appears_later_is_picked_up(
    ca: trustme.CA, tmp_path: Path, events: Events
) -> None:
    leaf = ca.issue_cert("client.test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    tls = {"cert_file": str(cert), "key_file": str(key), "reload_interval": FAST_WATCH}
    tls["ca_file"] = str(tmp_path / "ca.pem")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    async with MtlsServer(server_context(ca.issue_cert("127.0.0.1"), ca)) as server:
        plugin = TlsPlugin()
        async with client(document(server.url, tls), plugin, events) as c:
            [missing] = events.of(TlsMaterialRejected)
            assert "cannot read cert_file" in missing.reason
            key.write_bytes(key_of(leaf))
            cert.write_bytes(chain_of(leaf))  # the key first, then the certificate
            await events.wait_for(TlsRotated)
            assert (await c.get("/x", service="secure")).status == 200
    assert server.fingerprints() == [fingerprint(leaf)]


async def test_verification_cannot_be_disabled_by_a_document(
    ca: trustme.CA, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOW_INSECURE_ENV, raising=False)
    untrusted = trustme.CA()
    async with MtlsServer(
        server_context(untrusted.issue_cert("127.0.0.1"), require=False)
    ) as server:
        config = document(server.url, {"verify": False})
        async with client(config, TlsPlugin(), events) as c:
            with pytest.raises(healkit.TLSError):
                await c.get("/x", service="secure")
        [refused] = events.of(TlsMaterialRejected)
        assert "verify = false is not permitted" in refused.reason

        async with client(config, TlsPlugin(allow_insecure=True)) as c:
            assert (await c.get("/x", service="secure")).status == 200

        monkeypatch.setenv(ALLOW_INSECURE_ENV, "1")
        plugin = TlsPlugin()
        assert plugin.allow_insecure is True
        async with client(config, plugin) as c:
            assert (await c.get("/x", service="secure")).status == 200
        status = plugin.status("secure")
        assert status is not None
        assert status.verify is False


async def test_minimum_version_1_3_refuses_a_tls_1_2_server(ca: trustme.CA) -> None:
    context = server_context(ca.issue_cert("127.0.0.1"), require=False)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    async with MtlsServer(context) as server:
        tls = {"ca_pem": ca.cert_pem.bytes().decode()}
        async with client(document(server.url, tls), TlsPlugin()) as c:
            assert (await c.get("/x", service="secure")).status == 200
        async with client(
            document(server.url, {**tls, "minimum_version": "1.3"}), TlsPlugin()
        ) as c:
            # No common version: the server aborts the handshake (a reset, for aiohttp).
            with pytest.raises(healkit.ConnectError):
                await c.get("/x", service="secure")


async def test_expiry_warnings_are_emitted_logged_and_readable(
    ca: trustme.CA, material: Material, events: Events, logs: list[dict[str, Any]]
) -> None:
    leaf = ca.issue_cert("client.test")
    material.write_leaf(leaf, ca)
    now = [dt.datetime(2999, 12, 26, 12, tzinfo=UTC)]  # trustme certificates end on 3000-01-01
    plugin = TlsPlugin(wall_clock=lambda: now[0])
    config = {"services": {"secure": {"tls": material.section(reload_interval=FAST_WATCH)}}}
    async with client(config, plugin, events):
        [first] = await events.wait_for(TlsCertificateExpiring)
        status = plugin.status("secure")
        now[0] += dt.timedelta(days=1)
        second = (await events.wait_for(TlsCertificateExpiring, count=2))[1]
    assert (first.days_left, second.days_left) == (5, 4)
    assert first.fingerprint == fingerprint(leaf)
    assert first.not_after == dt.datetime(3000, 1, 1, tzinfo=UTC)
    assert status is not None
    assert (status.days_left, status.expiring) == (5, True)
    warnings = [e for e in logs if e["event"] == "healkit.tls_certificate_expiring"]
    assert [w["days_left"] for w in warnings] == [5, 4]
    assert {w["log_level"] for w in warnings} == {"warning"}


async def test_no_expiry_warning_outside_the_window(
    ca: trustme.CA, material: Material, events: Events
) -> None:
    material.write_leaf(ca.issue_cert("client.test"), ca)
    plugin = TlsPlugin(wall_clock=lambda: dt.datetime(2999, 12, 1, tzinfo=UTC))
    config = {"services": {"secure": {"tls": material.section(expiry_warning_days=14)}}}
    async with client(config, plugin, events):
        plugin.reload()
    status = plugin.status("secure")
    assert status is not None
    assert (status.days_left, status.expiring) == (31, False)
    assert events.of(TlsCertificateExpiring) == []


async def test_an_encrypted_key_with_its_passphrase_from_the_environment(
    ca: trustme.CA,
    material: Material,
    monkeypatch: pytest.MonkeyPatch,
    logs: list[dict[str, Any]],
    events: Events,
) -> None:
    leaf = ca.issue_cert("client.test")
    passphrase = "correct horse battery staple"  # noqa: S105 - a test key's
    key = serialization.load_pem_private_key(key_of(leaf), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode()),
    )
    material.write(cert=chain_of(leaf), key=encrypted, ca=ca.cert_pem.bytes())
    tls = material.section(key_password_env="CLIENT_KEY_PASSPHRASE")  # noqa: S106 - a name
    async with MtlsServer(server_context(ca.issue_cert("127.0.0.1"), ca)) as server:
        async with client(document(server.url, tls), TlsPlugin(), events) as c:
            with pytest.raises(healkit.TLSError, match="CLIENT_KEY_PASSPHRASE is not set"):
                await c.get("/x", service="secure")
        monkeypatch.setenv("CLIENT_KEY_PASSPHRASE", "wrong")
        async with client(document(server.url, tls), TlsPlugin(), events) as c:
            with pytest.raises(healkit.TLSError, match="passphrase is wrong"):
                await c.get("/x", service="secure")
        monkeypatch.setenv("CLIENT_KEY_PASSPHRASE", passphrase)
        async with client(document(server.url, tls), TlsPlugin()) as c:
            assert (await c.get("/x", service="secure")).status == 200
    assert server.fingerprints() == [fingerprint(leaf)]
    text = repr(logs) + repr(events.received)
    assert passphrase not in text
    assert "wrong" not in text.replace("passphrase is wrong", "")
    assert "PRIVATE KEY" not in text


async def test_shared_material_is_loaded_once_and_survives_unrelated_changes(
    ca: trustme.CA, material: Material, events: Events
) -> None:
    material.write_leaf(ca.issue_cert("client.test"), ca)
    config = {
        "defaults": {"tls": material.section()},
        "services": {"a": {}, "b": {}},
    }
    plugin = TlsPlugin()
    async with client(config, plugin, events) as c:
        c.runtime.apply({**config, "services": {"a": {}, "b": {}, "c": {}}})
        statuses = plugin.snapshot()
    [loaded] = events.of(TlsRotated)
    assert loaded.services == ("*", "a", "b")
    assert [s.service for s in statuses] == ["*", "a", "b", "c"]
    assert {s.generation for s in statuses} == {1}
    unknown = plugin.status("unknown")
    assert unknown is not None
    assert unknown.service == "unknown"
