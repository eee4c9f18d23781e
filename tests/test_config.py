"""Configuration: whole-document validation, atomic swaps, file hot reload, CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import healkit
from healkit._cli.entry import main
from healkit.testing import Fault, FaultServer
from healkit_timeout import SECTION, TimeoutPlugin

pytestmark = pytest.mark.anyio

SECTIONS = (SECTION,)


def build(doc: Any) -> healkit.HealkitConfig:
    return healkit.build_config(doc, SECTIONS)


def test_empty_document_gives_safe_defaults() -> None:
    config = build({})
    policy = config.policy("anything")
    assert policy.name == "*"
    assert policy.endpoints == ()
    assert policy.max_body_bytes == 16 * 1024 * 1024
    assert policy.section(SECTION).deadline == 60.0


def test_every_problem_is_reported_with_its_path() -> None:
    doc = {
        "defaults": {"timeout": {"read": -1}},
        "services": {
            "a": {"endpoints": ["ftp://a.test"], "retries": 3},
            "b c": {"endpoints": []},
        },
        "logging": {"redact_headers": "X-Key"},
        "extra": True,
    }
    with pytest.raises(healkit.ConfigError) as caught:
        build(doc)
    paths = {issue.path for issue in caught.value.issues}
    assert "$" in paths  # the unknown top-level key
    assert any("unknown key 'extra'" in i.reason for i in caught.value.issues)


def test_nested_problems_each_get_a_path() -> None:
    doc = {
        "defaults": {"timeout": {"read": -1}},
        "services": {"a": {"endpoints": ["ftp://a.test"], "retries": 3}},
    }
    with pytest.raises(healkit.ConfigError) as caught:
        build(doc)
    issues = {(i.path, i.reason.split(" (")[0]) for i in caught.value.issues}
    assert ("$.defaults.timeout.read", "must be > 0") in issues
    assert any(p == "$.services.a.endpoints[0]" for p, _ in issues)
    assert any(p == "$.services.a" and "unknown key 'retries'" in r for p, r in issues)


def test_defaults_merge_key_by_key_into_services() -> None:
    config = build(
        {
            "defaults": {"timeout": {"connect": 1.5, "read": 4.0}},
            "services": {"a": {"endpoints": ["http://a.test/"], "timeout": {"read": 2.0}}},
        }
    )
    settings_a = config.policy("a").section(SECTION)
    assert (settings_a.connect, settings_a.read) == (1.5, 2.0)
    assert config.policy("a").endpoints == ("http://a.test",)


def test_endpoints_in_defaults_are_refused() -> None:
    with pytest.raises(healkit.ConfigError, match="endpoints belong to a service"):
        build({"defaults": {"endpoints": ["http://x.test"]}})


def test_an_endpoint_shared_by_two_services_is_refused() -> None:
    doc = {
        "services": {"a": {"endpoints": ["http://x.test"]}, "b": {"endpoints": ["http://x.test/"]}}
    }
    with pytest.raises(healkit.ConfigError, match="also an endpoint of service 'a'"):
        build(doc)


def test_urls_map_to_the_longest_matching_endpoint() -> None:
    config = build(
        {
            "services": {
                "gateway": {"endpoints": ["http://gw.test"]},
                "payments": {"endpoints": ["http://gw.test/payments"]},
            }
        }
    )
    assert config.service_for_url("http://gw.test/payments/v1") == "payments"
    assert config.service_for_url("http://gw.test/paymentsx") == "gateway"
    assert config.service_for_url("http://gw.test/orders") == "gateway"
    assert config.service_for_url("http://other.test/") is None


@pytest.mark.parametrize("section", ["timeout", "retry", "breaker", "tls", "tracing"])
def test_a_section_of_an_uninstalled_first_party_plugin_names_its_extra(section: str) -> None:
    document = {"defaults": {section: {}}, "services": {"a": {section: {"x": 1}}}}
    with pytest.raises(healkit.ConfigError) as caught:
        healkit.build_config(document, ())
    hint = (
        f"section {section!r} belongs to the healkit-{section} plugin, which is not installed "
        f"(or is blocked): pip install 'healkit[{section}]'"
    )
    assert [(i.path, i.reason) for i in caught.value.issues] == [
        ("$.defaults", hint),
        ("$.services.a", hint),
    ]


def test_a_section_of_an_unknown_plugin_is_an_unknown_key() -> None:
    with pytest.raises(healkit.ConfigError, match="unknown key 'ratelimit'"):
        healkit.build_config({"services": {"a": {"ratelimit": {"rate": 1}}}}, ())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
keys = st.sampled_from(
    ["defaults", "services", "logging", "timeout", "endpoints", "read", "svc", "x"]
)
documents = st.recursive(
    json_values,
    lambda children: st.dictionaries(keys, children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_document_is_a_config_or_a_config_error(doc: Any) -> None:
    outcome: object
    try:
        outcome = build(doc)
    except healkit.ConfigError as error:
        outcome = error
    if isinstance(outcome, healkit.ConfigError):
        assert outcome.issues
        assert all(issue.path.startswith("$") for issue in outcome.issues)
    else:
        assert isinstance(outcome, healkit.HealkitConfig)


async def test_invalid_document_keeps_the_last_good_configuration(
    logs: list[dict[str, Any]],
) -> None:
    runtime = healkit.Runtime(
        config={"services": {"a": {"endpoints": ["http://a.test"]}}},
        plugins=[TimeoutPlugin()],
        entry_points=False,
    )
    good = runtime.config
    version = runtime.version
    with pytest.raises(healkit.ConfigError):
        runtime.apply({"services": {"a": {"endpoints": "nope"}}})
    assert runtime.config is good
    assert runtime.version == version
    assert await runtime.submit({"services": 1}, origin="test") is not None
    assert runtime.config is good
    rejected = [e for e in logs if e["event"] == "healkit.config_rejected"]
    assert rejected
    assert rejected[0]["origin"] == "test"


async def test_in_flight_calls_finish_under_the_configuration_they_started_with(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/slow", Fault.latency(0.2))
    doc = {"services": {"svc": {"endpoints": [fault_server.url], "max_body_bytes": 100}}}
    async with healkit.Client(config=doc, plugins=[TimeoutPlugin()], entry_points=False) as client:
        in_flight = asyncio.create_task(client.get("/slow", service="svc"))
        await fault_server.wait_for_hits(1, "/slow")
        client.runtime.apply(
            {"services": {"svc": {"endpoints": [fault_server.url], "max_body_bytes": 1}}}
        )
        response = await in_flight  # b"ok" is 2 bytes: over the new cap, under the old
        assert response.body == b"ok"
        with pytest.raises(healkit.BodyTooLargeError):
            await client.get("/now", service="svc")


async def test_file_source_hot_reloads_and_rejects_bad_documents(
    tmp_path: Path, fault_server: FaultServer, logs: list[dict[str, Any]]
) -> None:
    path = tmp_path / "healkit.toml"
    path.write_text(f'[services.svc]\nendpoints = ["{fault_server.url}"]\n')
    source = healkit.FileSource(path, poll_interval=0.01)
    async with healkit.Client(
        config=source, plugins=[TimeoutPlugin()], entry_points=False
    ) as client:
        runtime = client.runtime
        start = runtime.version
        assert runtime.config.policy("svc").max_body_bytes == 16 * 1024 * 1024
        path.write_text(
            f'[services.svc]\nendpoints = ["{fault_server.url}"]\nmax_body_bytes = 10\n'
        )
        await asyncio.wait_for(runtime.wait_for_version(start + 1), 5)
        assert runtime.config.policy("svc").max_body_bytes == 10
        good = runtime.config
        path.write_text("[services.svc\n")  # broken TOML
        await asyncio.wait_for(runtime.wait_for_rejections(1), 5)
        path.write_text('[services.svc]\nendpoints = "not a list"\n')
        await asyncio.wait_for(runtime.wait_for_rejections(2), 5)
        assert runtime.config is good
        rejected = [e for e in logs if e["event"] == "healkit.config_rejected"]
        assert "invalid TOML" in rejected[0]["issues"][0]
        assert rejected[1]["issues"][0].startswith("$.services.svc.endpoints: ")
        path.write_text(
            f'[services.svc]\nendpoints = ["{fault_server.url}"]\nmax_body_bytes = 20\n'
        )
        await asyncio.wait_for(runtime.wait_for_version(start + 2), 5)
        assert runtime.config.policy("svc").max_body_bytes == 20


def test_a_bad_file_at_start_fails_loudly(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("services: [1, 2]\n")
    with pytest.raises(healkit.ConfigError) as caught:
        healkit.Runtime(config=path, entry_points=False)
    assert caught.value.origin == str(path)
    assert caught.value.path == "$.services"


def test_cli_validate_reports_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"services": {"a": {"endpoints": [1], "max_body_bytes": -1}}}))
    assert main(["config", "validate", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # problems go to stderr
    err = captured.err.splitlines()
    assert err[0] == f"healkit: {path}: invalid (2 problems):"
    assert "  $.services.a.endpoints[0]: expected a string, got int" in err
    assert any(line.startswith("  $.services.a.max_body_bytes: must be >= 0") for line in err)


def test_cli_validate_accepts_a_good_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "good.yaml"
    path.write_text("services:\n  a:\n    endpoints: [http://a.test]\n    timeout: {read: 2}\n")
    assert main(["config", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "valid (1 services: a; plugin sections:" in out


def test_top_level_problems_do_not_hide_the_services_problems() -> None:
    doc = {
        "extra": 1,
        "services": {"a": {"endpoints": ["http://a.test"], "max_body_bytes": -5}, "b c": {}},
        "defaults": {"endpoints": ["http://x.test"], "timeout": {"read": 0}},
    }
    with pytest.raises(healkit.ConfigError) as caught:
        build(doc)
    paths = sorted(issue.path for issue in caught.value.issues)
    assert paths == [
        "$",
        "$.defaults.endpoints",
        "$.defaults.timeout.read",
        "$.services",
        "$.services.a.max_body_bytes",
    ]


def test_a_section_without_safe_defaults_is_refused_when_declared() -> None:
    class Needs(msgspec.Struct, frozen=True):
        url: str

    with pytest.raises(TypeError, match="every setting needs a safe default"):
        healkit.ConfigSection("needs", Needs)
