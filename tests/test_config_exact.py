"""Validation is exact: hosts as IDNA and RFC 3986 allow them, ordered lists, whole-value
patterns, and a path for every problem; a call never raises outside the error tree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import healkit
from healkit import ConfigError, HealkitError, build_config
from healkit._config.formats import parse_document
from healkit.etcd import EtcdClient, EtcdSource, etcd_prefix

pytestmark = pytest.mark.anyio

BAD_HOSTS = [
    ("http://a\x00b", 'invalid host "a\\u0000b": letters, digits'),
    ("http://%00", 'invalid host "%00": letters, digits'),
    ("http://a b.test", "must match the pattern"),
    ("http://a.test:0", "invalid port 0: must be 1 to 65535"),
    ("http://" + "a" * 64 + ".test", "a label is longer than 63 characters"),
    ("http://a..b", 'invalid host "a..b": empty label'),
    ("http://.a", "empty label"),
    ("http://" + ".".join(["a" * 60] * 5), "longer than 253 characters"),
    ("http://xn--a.test", "invalid host:"),
    ("http://-/", "letters, digits"),
]


def issues_of(document: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        build_config(document, healkit.Runtime(entry_points=False).sections)
    return [(issue.path, issue.reason) for issue in caught.value.issues]


@pytest.mark.parametrize(("endpoint", "reason"), BAD_HOSTS)
def test_an_endpoint_with_a_bad_host_is_refused_at_its_own_path(endpoint: str, reason: str) -> None:
    [(path, found)] = issues_of({"services": {"svc": {"endpoints": ["http://ok.test", endpoint]}}})
    assert path == "$.services.svc.endpoints[1]"
    assert reason in found


@pytest.mark.parametrize(("endpoint", "reason"), BAD_HOSTS[:6])
def test_a_fallback_endpoint_with_a_bad_host_is_refused_at_its_own_path(
    endpoint: str, reason: str
) -> None:
    service = {
        "endpoints": ["http://ok.test"],
        "routing": {"fallback_groups": [["http://b.test", endpoint]]},
    }
    [(path, found)] = issues_of({"services": {"svc": service}})
    assert path == "$.services.svc.routing.fallback_groups[0][1]"
    assert reason in found


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://a.test",
        "https://a-b_c.test:8443/base",
        "http://[::1]:8080",
        "http://127.0.0.1",
        "http://bücher.test",
    ],
)
def test_hosts_that_can_be_called_are_accepted(endpoint: str) -> None:
    build_config({"services": {"svc": {"endpoints": [endpoint]}}})


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://a..b/", "empty label"),
        ("http://%00/", "letters, digits"),
        ("http://a\x00b/x", "letters, digits"),
        ("http://a.test:0/", "invalid port 0"),
        ("http://" + "a" * 64 + ".test/", "longer than 63"),
    ],
)
async def test_a_call_to_a_bad_absolute_url_raises_a_request_error(
    make_client: Callable[..., healkit.Client], url: str, reason: str
) -> None:
    async with make_client() as client:  # no configuration at all
        with pytest.raises(healkit.InvalidRequestError, match=reason) as caught:
            await client.get(url)
    assert isinstance(caught.value, HealkitError)


def test_a_set_is_refused_where_a_list_is_required() -> None:
    assert issues_of({"services": {"svc": {"endpoints": {"http://a.test", "http://b.test"}}}}) == [
        ("$.services.svc.endpoints", "expected a list, got set")
    ]
    yaml = "services:\n  svc:\n    endpoints: !!set {http://a.test: null, http://b.test: null}\n"
    assert issues_of(parse_document(yaml, fmt="yaml", origin="test")) == [
        ("$.services.svc.endpoints", "expected a list, got set")
    ]
    assert issues_of({"logging": {"redact_headers": frozenset({"X-A"})}}) == [
        ("$.logging.redact_headers", "expected a list, got frozenset")
    ]


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"services": {"svc\n": {}}}, "$.services"),
        ({"services": {"svc": {"endpoints": ["http://a.test\n"]}}}, "$.services.svc.endpoints[0]"),
        (
            {"services": {"svc": {"routing": {"credential_headers": ["X-Key\n"]}}}},
            "$.services.svc.routing.credential_headers[0]",
        ),
    ],
)
def test_a_pattern_must_match_the_whole_value_final_newline_included(
    document: dict[str, Any], path: str
) -> None:
    [(found, reason)] = issues_of(document)
    assert found == path
    assert "must match the pattern" in reason


def test_a_json_number_out_of_range_is_refused_at_its_path() -> None:
    text = '{"services": {"svc": {"max_body_bytes": 1e999, "routing": {"eject_time": -1e999}}}}'
    assert issues_of(parse_document(text, fmt="json", origin="test")) == [
        ("$.services.svc.max_body_bytes", "expected an integer, got float"),
        ("$.services.svc.routing.eject_time", "must be a finite number, got -inf"),
    ]


@pytest.mark.parametrize("name", ["shop\n", "shop/x", "..", ""])
async def test_namespace_and_channel_names_follow_the_service_name_rule(name: str) -> None:
    with pytest.raises(ValueError, match="invalid namespace"):
        etcd_prefix(name)
    async with EtcdClient("http://127.0.0.1:9") as client:  # never contacted
        with pytest.raises(ValueError, match="invalid channel"):
            EtcdSource(client, channel=name)
