"""A key repeated in one mapping of a configuration document is refused, at its path.

``{"attempts": 1, "attempts": 5}`` means two things: JSON and YAML decoders
would silently keep the last value. Every reader refuses it with a ConfigIssue
at the repeated key's path: parse_document, parse_compact (the same issue), the
YAML loader, files, the command line, an etcd key (refused alone, real etcd)
and a scenario file. TOML refuses it itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import pytest

import healkit
from healkit import ConfigError, ConfigIssue
from healkit._config.formats import DocumentFormat, load_file, parse_compact, parse_document
from healkit._simulate import load_scenarios
from healkit.etcd import EtcdClient, EtcdSource, EtcdSourceStatus
from healkit.testing import EtcdServer, capture_events
from tests.cli_support import cli


def reason(key: str) -> str:
    return (
        f"duplicate key {key!r}: it appears more than once in the same mapping,"
        " and only one of its values can be meant"
    )


def refused(text: str, fmt: DocumentFormat) -> tuple[ConfigIssue, ...]:
    """The issues of ``text`` from parse_document, checked equal to parse_compact's."""
    with pytest.raises(ConfigError) as whole:
        parse_document(text, fmt=fmt, origin="doc")
    with pytest.raises(ConfigError) as compact:
        parse_compact(text, fmt=fmt, origin="doc")
    assert compact.value.issues == whole.value.issues
    assert whole.value.origin == compact.value.origin == "doc"
    return whole.value.issues


RETRY_TWICE_JSON = '{"services": {"svc": {"retry": {"attempts": 1, "attempts": 5}}}}'


@pytest.mark.parametrize(
    ("text", "path", "key"),
    [
        (RETRY_TWICE_JSON, "$.services.svc.retry.attempts", "attempts"),
        # The same service twice: the compact reader decodes services one by one.
        ('{"services": {"a": {}, "b": {}, "a": {"endpoints": []}}}', "$.services.a", "a"),
        ('{"services": {}, "services": {}}', "$.services", "services"),
        ('{"defaults": {"retry": {}, "retry": {}}, "services": {}}', "$.defaults.retry", "retry"),
        ('{"logging": {"x": [{"k": 1}, {"k": 1, "k": 2}]}}', "$.logging.x[1].k", "k"),
        # Blanks between a key and its colon; a key that is not an identifier.
        ('{"services" :\n {"a b" : {}, "a b"\t: {}}}', '$.services["a b"]', "a b"),
        # An escaped spelling is the same key.
        ('{"services": {"s": {}, "\\u0073": {}}}', "$.services.s", "s"),
    ],
)
def test_json_refuses_a_repeated_key_at_its_path(text: str, path: str, key: str) -> None:
    assert refused(text, "json") == (ConfigIssue(path, reason(key)),)


@pytest.mark.parametrize(
    "text",
    [
        # A string value holding a quote and a colon: looks like more keys, is not.
        '{"services": {"svc": {"endpoints": ["http://a\\":b"]}}, "x": {"y": "\\":\\":"}}',
        '{"a" : 1, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]}',
    ],
)
def test_json_without_a_repeated_key_is_decoded_as_before(text: str) -> None:
    expected = json.loads(text)
    assert parse_document(text, fmt="json", origin="doc") == expected
    assert healkit.plain_document(parse_compact(text, fmt="json", origin="doc")) == expected


@pytest.mark.parametrize(
    ("text", "path", "key"),
    [
        (
            "services:\n  svc:\n    retry:\n      attempts: 1\n      attempts: 5\n",
            "$.services.svc.retry.attempts",
            "attempts",
        ),
        # A quoted key is the same key as a plain one.
        ('services:\n  a: {}\n  "a": {}\n', "$.services.a", "a"),
        ("logging:\n  x:\n    - {k: 1}\n    - {k: 1, k: 2}\n", "$.logging.x[1].k", "k"),
        ("services: {}\nservices: {}\n", "$.services", "services"),
        # A mapping repeated by an alias is named where it is written first.
        ("base: &b {a: 1, a: 2}\nsvc: *b\n", "$.base.a", "a"),
        ("x: [0, &b {a: 1, a: 2}]\nz: [*b]\n", "$.x[1].a", "a"),
    ],
)
def test_yaml_refuses_a_repeated_key_at_its_path(text: str, path: str, key: str) -> None:
    assert refused(text, "yaml") == (ConfigIssue(path, reason(key)),)


def test_a_yaml_merge_key_is_overridden_not_repeated() -> None:
    text = "base: &base {attempts: 1, x: 2}\nsvc:\n  <<: *base\n  attempts: 5\n"
    assert parse_document(text, fmt="yaml", origin="doc") == {
        "base": {"attempts": 1, "x": 2},
        "svc": {"attempts": 5, "x": 2},
    }


def test_toml_refuses_a_repeated_key_itself() -> None:
    text = "[services.svc.retry]\nattempts = 1\nattempts = 5\n"
    [issue] = refused(text, "toml")
    assert issue.path == "$"
    assert issue.reason.startswith("invalid TOML: Cannot overwrite a value (at line 3")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("shop.json", RETRY_TWICE_JSON),
        ("shop.yaml", "services:\n  svc:\n    retry: {attempts: 1, attempts: 5}\n"),
    ],
)
def test_a_file_and_config_validate_name_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    assert caught.value.issues == (
        ConfigIssue("$.services.svc.retry.attempts", reason("attempts")),
    )
    result = cli(capsys, "config", "validate", str(path))
    assert result.status == 1
    assert "$.services.svc.retry.attempts: duplicate key 'attempts'" in result.err


@pytest.fixture(scope="module")
def module_etcd() -> Iterator[EtcdServer]:
    etcd = EtcdServer()
    asyncio.run(etcd.__aenter__())
    try:
        yield etcd
    finally:
        asyncio.run(etcd.__aexit__(None, None, None))


def test_config_push_refuses_and_writes_nothing(
    module_etcd: EtcdServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "shop.json"
    path.write_text(
        '{"services": {"ok": {"endpoints": ["http://ok.test"]},'
        ' "svc": {"endpoints": ["http://a.test"], "retry": {"attempts": 1, "attempts": 5}}}}',
        encoding="utf-8",
    )
    namespace = "duplicates"
    result = cli(
        capsys,
        "config",
        "push",
        str(path),
        "--endpoints",
        module_etcd.url,
        "--namespace",
        namespace,
    )
    assert result.status == 1
    assert "$.services.svc.retry.attempts: duplicate key 'attempts'" in result.err

    async def stored() -> list[bytes]:
        async with module_etcd.client() as client:
            kvs = (await client.range_all(f"/healkit/{namespace}/", prefix=True)).kvs
            return [kv.key for kv in kvs]

    assert asyncio.run(stored()) == []


NAMESPACE = "duplicates"
ROOT = f"/healkit/{NAMESPACE}/"


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with etcd_server.client() as client:
        yield client


async def until(source: EtcdSource, condition: Callable[[EtcdSourceStatus], bool]) -> None:
    with anyio.fail_after(10.0):
        await source.wait_until(condition)


@pytest.mark.anyio
async def test_an_etcd_key_with_a_repeated_key_is_rejected_alone(etcd: EtcdClient) -> None:
    await etcd.put(ROOT + "services/svc", b'{"endpoints": ["http://a.test"]}')
    source = EtcdSource(etcd, namespace=NAMESPACE)
    async with healkit.Runtime(config=source, entry_points=False) as runtime:
        with capture_events() as logs:
            bad = (
                await etcd.put(
                    ROOT + "services/svc",
                    b'{"endpoints": ["http://b.test"], "endpoints": ["http://c.test"]}',
                )
            ).revision
            await until(source, lambda s: s.applied_revision >= bad)
        assert source.status.rejected == {"services/svc": bad}
        [event] = [e for e in logs if e["event"] == "healkit.etcd_document_rejected"]
        assert (event["key"], event["path"]) == (ROOT + "services/svc", "$.endpoints")
        assert event["reason"] == reason("endpoints")
        assert runtime.config.policy("svc").endpoints == ("http://a.test",)

        # Another key is applied; the rejected one keeps its last good document.
        other = await etcd.put(ROOT + "services/other", b'{"endpoints": ["http://o.test"]}')
        await until(source, lambda s: s.applied_revision >= other.revision)
        assert set(runtime.config.services) == {"svc", "other"}
        assert runtime.config.policy("svc").endpoints == ("http://a.test",)


def test_a_scenario_file_with_a_repeated_key_names_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(
        '{"scenarios": {"blip": {"seed": 3, "seed": 4, "phases": [{"name": "calm",'
        ' "duration": 1.0}]}}}',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_scenarios(scenarios)
    assert caught.value.issues == (ConfigIssue("$.scenarios.blip.seed", reason("seed")),)
    current = tmp_path / "current.json"
    current.write_text('{"services": {"pay": {"endpoints": ["http://pay.test"]}}}')
    result = cli(capsys, "config", "simulate", str(current), "--scenario-file", str(scenarios))
    assert result.status != 0
    assert "$.scenarios.blip.seed: duplicate key 'seed'" in result.err


@pytest.mark.parametrize(
    "hidden",
    ["[" * 3000 + "]" * 3000, "[" * 100 + "]" * 100, "[" + ",".join(["0"] * 20_000) + "]"],
)
def test_a_value_a_repeated_key_hides_is_refused_too(hidden: str) -> None:
    # msgspec keeps only the last value: the first was never held to the limits.
    text = '{"services": {"s": ' + hidden + ', "s": {}}}'
    issues = refused(text, "json")
    assert len(issues) == 1
    assert issues[0].path in {"$", "$.services.s"}


@pytest.mark.anyio
async def test_a_file_source_refuses_the_file(tmp_path: Path) -> None:
    path = tmp_path / "healkit.json"
    path.write_text(RETRY_TWICE_JSON, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        async with healkit.Runtime(config=healkit.FileSource(path), entry_points=False):
            pass
    assert caught.value.issues == (
        ConfigIssue("$.services.svc.retry.attempts", reason("attempts")),
    )
    assert caught.value.origin == str(path)
