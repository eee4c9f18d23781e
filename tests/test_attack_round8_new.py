"""Round 8 red team: what was built in the last hour, attacked as a hostile user would.

YAML documents decoded one service at a time must be the document decoded
whole, or refused with the same message; a YAML refusal never quotes the
document (a secret written on the line at fault).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import msgspec
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import healkit
from healkit import ConfigError, HealkitError, InvalidRequestError, plain_document
from healkit._config.formats import DocumentLimits, _describe_error, parse_compact, parse_document
from healkit._config.models import ConfigSection
from healkit.httpx import ResilientTransport, outcome_of
from healkit.testing import FaultServer, refused_url
from healkit_retry import SECTION as RETRY
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio

KEY = "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"


def outcome(parse: Callable[..., object], text: str, limits: DocumentLimits) -> object:
    try:
        return plain_document(parse(text, fmt="yaml", origin="test", limits=limits))
    except ConfigError as error:
        return str(error)


ORDER_CASES = {
    # PyYAML constructs breadth first: a service's shallow error comes before
    # an earlier service's deep one, a part's before a service's deeper one.
    "a deep error in a service, a shallow one in the next": (
        "services:\n  a: {x: {<<: 1}}\n  b: {<<: 2}\n"
    ),
    "a deep error in defaults, one in a service": (
        "defaults: {x: {<<: 1}}\nservices:\n  a: {<<: 2}\n"
    ),
    "a merge error in a part above, one in a service": (
        "x: {<<: {<<: 1}}\nservices:\n  a: {<<: 2}\n"
    ),
    "a service merging an anchor whose merge is bad, then a bad part": (
        "services:\n  a: [&m {<<: 1}]\n  b: {z: {<<: *m}}\nlogging: {<<: 3}\n"
    ),
    "an error in a service, a bad integer deeper in the next": (
        "services:\n  a: {x: {y: !!int 0o9}}\n  b: !!int 0x1g\n"
    ),
    # The first mapping that repeats a key is the one named, as decoded whole.
    "services twice, each repeating a service": (
        "services:\n  a: {}\n  a: {}\nservices:\n  b: {}\n  b: {}\n"
    ),
}


@pytest.mark.parametrize("text", ORDER_CASES.values(), ids=ORDER_CASES.keys())
def test_a_refused_yaml_document_names_the_error_the_whole_document_would(text: str) -> None:
    limits = DocumentLimits()
    whole = outcome(parse_document, text, limits)
    assert isinstance(whole, str)  # refused
    assert outcome(parse_compact, text, limits) == whole


pieces = st.sampled_from(
    ["1", "[]", "{}", "{<<: 1}", "{x: 1, x: 2}", "!!int 0o9", "!!binary '@'", "[1", "*nowhere"]
)
values = st.recursive(
    pieces,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(st.tuples(st.sampled_from(["x", "y", "<<"]), inner), max_size=3).map(
            lambda pairs: "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
        ),
    ),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(
        st.tuples(
            st.sampled_from(["defaults", "logging", "services", "x"]),
            st.lists(st.tuples(st.sampled_from(["s0", "s1", "s2"]), values), max_size=3),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_any_yaml_document_with_errors_is_refused_compact_as_whole(
    parts: list[tuple[str, list[tuple[str, str]]]],
) -> None:
    text = "".join(
        f"{name}:\n" + "".join(f"  {key}: {value}\n" for key, value in entries)
        if name == "services"
        else f"{name}: {entries[0][1] if entries else '{}'}\n"
        for name, entries in parts
    )
    for limits in (DocumentLimits(), DocumentLimits(max_nodes=12), DocumentLimits(max_depth=4)):
        assert outcome(parse_compact, text, limits) == outcome(parse_document, text, limits)


@pytest.mark.parametrize(
    "scalar",
    ["!!bool x", "!!int ''", "!!int '-'", "!!float ''", "!!timestamp x", "!!timestamp 2001-1"],
)
@pytest.mark.parametrize("parse", [parse_document, parse_compact])
def test_a_malformed_explicitly_tagged_scalar_is_a_config_error(
    scalar: str, parse: Callable[..., object]
) -> None:
    # PyYAML's constructors raised KeyError, IndexError, AttributeError: a crash.
    with pytest.raises(ConfigError, match="not a valid !!"):
        parse(f"services:\n  a: {{x: {scalar}}}\n", fmt="yaml", origin="test")


@pytest.mark.parametrize("tag", ["!!int", "!!float"])
def test_a_secret_under_a_number_tag_is_not_quoted_in_the_refusal(tag: str) -> None:
    text = f'services:\n  a:\n    tls: {{key_pem: {tag} "{KEY}"}}\n'
    with pytest.raises(ConfigError) as caught:
        parse_document(text, fmt="yaml", origin="test")
    assert "PRIVATE KEY" not in str(caught.value)
    assert "line 3" in str(caught.value)


@pytest.mark.parametrize(
    "loader", [yaml.SafeLoader, yaml.CSafeLoader] if yaml.__with_libyaml__ else [yaml.SafeLoader]
)
def test_a_yaml_syntax_error_is_described_without_the_documents_line(
    loader: type[yaml.SafeLoader],
) -> None:
    # PyYAML's pure-Python parser writes the line at fault under each mark;
    # libyaml's does not. The description is the same shape for both.
    text = f'services:\n  a: {{tls: {{key_pem: "{KEY}", x: [1}}}}\n'
    with pytest.raises(yaml.YAMLError) as caught:
        yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    described = _describe_error(caught.value, text, "yaml")
    assert "PRIVATE KEY" not in described
    assert described.startswith("while parsing a flow sequence at line 2, column ")
    assert "^" not in described
    assert '"<unicode string>"' not in described


# -- the httpx transport: a URL written another way is the same URL ------------------------


@pytest.mark.parametrize("written", ["/%41pi/x", "/x/../Api/x"])
async def test_an_httpx_request_to_an_endpoint_written_otherwise_may_use_fallback_groups(
    fault_server: FaultServer, written: str
) -> None:
    # The URL is under the service's endpoint once normalised (as the service
    # is found): its attempts may go to the fallback group, as for /Api/x.
    down = refused_url()
    config = {
        "services": {
            "pay": {
                "endpoints": [f"{down}/Api"],
                "routing": {"fallback_groups": [[f"{fault_server.url}/Api"]]},
            }
        }
    }
    transport = ResilientTransport(config=config, plugins=[TimeoutPlugin()], entry_points=False)
    async with httpx.AsyncClient(transport=transport) as http:
        for path in ("/Api/x", written):
            response = await http.get(f"{down}{path}")
            assert response.status_code == 200
            assert outcome_of(response).path == "fallback"


async def failing_body(chunks: int, fail_at: int) -> AsyncIterator[bytes]:
    for i in range(chunks):
        if i == fail_at:
            raise OSError("the disk went away")
        yield b"x"


async def test_an_httpx_body_stream_that_raises_before_it_is_sent_is_an_invalid_request(
    fault_server: FaultServer,
) -> None:
    config = {"services": {"s": {"endpoints": [fault_server.url], "max_body_bytes": 3}}}
    transport = ResilientTransport(config=config, plugins=[TimeoutPlugin()], entry_points=False)
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(InvalidRequestError, match="raised OSError before it was") as raised:
            await http.post(f"{fault_server.url}/p", content=failing_body(2, 1))
    assert isinstance(raised.value.__cause__, OSError)
    assert fault_server.requests == []  # nothing was sent


async def test_an_httpx_body_stream_that_raises_while_it_is_sent_is_a_healkit_error(
    fault_server: FaultServer,
) -> None:
    config = {"services": {"s": {"endpoints": [fault_server.url], "max_body_bytes": 3}}}
    transport = ResilientTransport(config=config, plugins=[TimeoutPlugin()], entry_points=False)
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(HealkitError) as raised:
            await http.post(f"{fault_server.url}/p", content=failing_body(6, 5))
    assert raised.value.attempts


# -- one shared settings object per section ---------------------------------------------------


class _TaggedSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Frozen, yet with containers that can be changed in place."""

    tags: list[str] = []
    weights: dict[str, int] = {}


TAGGED: ConfigSection[_TaggedSettings] = ConfigSection("tagged", _TaggedSettings)


def test_a_section_whose_settings_hold_mutable_containers_is_not_shared() -> None:
    # A frozen Struct's list or dict still changes in place: shared by every
    # service (and every runtime of the process), one plugin's slip would
    # change the settings of all. Such settings are one object per service.
    document = {
        "defaults": {"tagged": {"tags": ["from-defaults"]}},
        "services": {"a": {}, "b": {}},
    }
    config = healkit.build_config(document, [TAGGED])
    a, b = (config.policy(name).section(TAGGED) for name in ("a", "b"))
    a.tags.append("changed in a")
    a.weights["x"] = 1
    assert b.tags == ["from-defaults"]
    assert b.weights == {}
    first = TAGGED.default()
    first.tags.append("changed")
    assert TAGGED.default().tags == []


def test_a_section_of_immutable_settings_is_still_one_shared_object() -> None:
    config = healkit.build_config({"services": {"a": {}, "b": {}}}, [RETRY])
    a, b = (config.policy(name).section(RETRY) for name in ("a", "b"))
    assert a is b is RETRY.default()
