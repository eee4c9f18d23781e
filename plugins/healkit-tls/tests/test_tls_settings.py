"""The ``tls`` section: static checks, and errors that never echo PEM text."""

from __future__ import annotations

from typing import Any

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st
from tls_helpers import pem_chain

import healkit
from healkit_tls import SECTION, TlsSettings


def build(tls: dict[str, Any]) -> healkit.HealkitConfig:
    return healkit.build_config({"services": {"svc": {"tls": tls}}}, [SECTION])


def problems(tls: dict[str, Any]) -> healkit.ConfigError:
    with pytest.raises(healkit.ConfigError) as caught:
        build(tls)
    return caught.value


def test_defaults_leave_the_service_alone() -> None:
    settings = build({}).policy("svc").section(SECTION)
    assert settings == TlsSettings()
    assert settings.active is False
    assert TlsSettings(reload_interval=1.0).active is False
    assert TlsSettings(minimum_version="1.3").active is True


@pytest.mark.parametrize(
    ("tls", "reason"),
    [
        ({"cert_file": "/c.pem"}, "a client certificate needs its key"),
        ({"key_file": "/k.pem"}, "a client certificate needs its key"),
        ({"ca_file": "ca.pem"}, "ca_file must be an absolute path"),
        ({"ca_file": "/ca.pem", "ca_pem": "x"}, "give ca_file or ca_pem, not both"),
        ({"key_password_env": "X"}, "no key is configured"),
        (
            {"cert_file": "/c", "key_file": "/k", "key_password_env": "A B"},
            "must be an environment variable name",
        ),
    ],
)
def test_inconsistent_sections_are_rejected(tls: dict[str, Any], reason: str) -> None:
    error = problems(tls)
    assert error.path == "$.services.svc.tls"
    assert reason in error.reason


def test_unknown_keys_and_bad_values_name_their_path() -> None:
    assert problems({"verify_hostname": False}).path == "$.services.svc.tls"
    assert problems({"minimum_version": "1.1"}).path == "$.services.svc.tls.minimum_version"
    assert problems({"expiry_warning_days": -1}).path == "$.services.svc.tls.expiry_warning_days"


def test_errors_about_inline_pem_never_echo_it(ca: trustme.CA) -> None:
    leaf, other = ca.issue_cert("a.test"), ca.issue_cert("b.test")
    key = other.private_key_pem.bytes().decode()
    mismatched = problems({"cert_pem": pem_chain(leaf), "key_pem": key})
    assert "does not belong to the client certificate" in mismatched.reason
    garbage_key = (
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n"
    )
    broken = problems({"cert_pem": pem_chain(leaf), "key_pem": garbage_key})
    assert "key_pem: not a usable PEM private key" in broken.reason
    not_a_cert = problems({"ca_pem": "c2VjcmV0"})
    assert "ca_pem: no valid PEM certificate found" in not_a_cert.reason
    as_list = problems({"key_pem": [key], "cert_pem": pem_chain(leaf)})
    for error in (mismatched, broken, not_a_cert, as_list):
        text = str(error) + repr(error.issues)
        assert "BEGIN" not in text
        assert "c2VjcmV0" not in text
        assert key.splitlines()[1] not in text


def test_inline_material_that_matches_is_accepted(ca: trustme.CA) -> None:
    leaf = ca.issue_cert("a.test")
    tls = {
        "ca_pem": ca.cert_pem.bytes().decode(),
        "cert_pem": pem_chain(leaf),
        "key_pem": leaf.private_key_pem.bytes().decode(),
    }
    assert build(tls).policy("svc").section(SECTION).active


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30), st.just("/abs/path")
)


@given(
    st.dictionaries(
        st.sampled_from([*TlsSettings.__struct_fields__, "other"]),
        st.one_of(scalars, st.lists(scalars, max_size=2)),
        max_size=5,
    )
)
def test_any_section_is_accepted_or_a_config_error(tls: dict[str, Any]) -> None:
    try:
        build(tls)
    except healkit.ConfigError as error:  # the only exception allowed
        issues = error.issues
    else:
        issues = ()
    assert isinstance(issues, tuple)
