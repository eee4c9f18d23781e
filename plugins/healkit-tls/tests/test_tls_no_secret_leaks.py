"""An inline private key (``tls.key_pem``) is never shown by the settings that hold it."""

from __future__ import annotations

import pprint

import pytest
import trustme
from tls_helpers import pem_chain

import healkit
from healkit_tls import SECTION, TlsSettings


def test_the_repr_of_tls_settings_never_shows_an_inline_key(ca: trustme.CA) -> None:
    leaf = ca.issue_cert("client.test")
    key = leaf.private_key_pem.bytes().decode()
    document = {"services": {"svc": {"tls": {"cert_pem": pem_chain(leaf), "key_pem": key}}}}
    settings = healkit.build_config(document, [SECTION]).policy("svc").section(SECTION)
    assert isinstance(settings, TlsSettings)
    key_body = key.splitlines()[1]  # a line of the key's base64, unique to this key
    shown = [repr(settings), str(settings), pprint.pformat(settings), repr([settings])]
    for text in shown:
        assert key_body not in text
    assert "key_pem='[REDACTED]'" in repr(settings)
    # The rest is shown as msgspec shows it, and the key is still there to use.
    assert "cert_pem='-----BEGIN CERTIFICATE-----" in repr(settings)
    assert "minimum_version='1.2'" in repr(settings)
    assert settings.key_pem == key
    assert "key_pem=None" in repr(TlsSettings())


def test_rich_pretty_printing_does_not_show_an_inline_key(ca: trustme.CA) -> None:
    pretty = pytest.importorskip("rich.pretty")
    leaf = ca.issue_cert("client.test")
    key = leaf.private_key_pem.bytes().decode()
    settings = TlsSettings(cert_pem=pem_chain(leaf), key_pem=key)
    text = pretty.pretty_repr(settings)
    assert key.splitlines()[1] not in text
    assert "[REDACTED]" in text
