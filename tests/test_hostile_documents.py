"""Hostile configuration documents: refused within their limits, decoded and validated off the loop.

A document comes from a file or from etcd, and whoever writes there must not be
able to stall the event loop of the instances that read it (see
``docs/configuration.md``, "Document limits"). These tests use real files
watched by a real runtime and a real loopback server; etcd's side is in
``test_etcd_hostile.py``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import healkit
from healkit import ConfigError, DocumentLimits
from healkit._config.formats import DocumentFormat, parse_document
from healkit._config.models import build_config
from healkit.testing import FaultServer
from healkit_timeout import SECTION, TimeoutPlugin

pytestmark = pytest.mark.anyio

DEADLINE = 10.0
MIB = 1024 * 1024


def billion_laughs(levels: int = 9, width: int = 9, *, under: str = "") -> str:
    """A YAML alias bomb: ``levels`` anchors, ``width ** levels`` strings, a few hundred bytes.

    With ``under`` (``services.svc.degraded.template.json``: a template body
    takes any JSON value), the anchors are the keys of the mapping at that path.
    """
    parents = under.split(".") if under else []
    lines = [f"{'  ' * depth}{name}:" for depth, name in enumerate(parents)]
    indent = "  " * len(parents)
    lines.append(f"{indent}l0: &l0 [{', '.join(['lol'] * width)}]")
    lines += [
        f"{indent}l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * width)}]" for n in range(1, levels)
    ]
    return "\n".join(lines) + "\n"


def nested(depth: int, fmt: DocumentFormat) -> str:
    """A document whose values nest ``depth`` levels (the top-level mapping is level 1)."""
    if fmt == "toml":
        return "a = " + "[" * (depth - 1) + "]" * (depth - 1) + "\n"
    value = "[" * (depth - 1) + "]" * (depth - 1)
    return f'{{"a": {value}}}' if fmt == "json" else f"a: {value}\n"


@contextmanager
def calls_on_this_thread(*functions: Callable[..., object]) -> Iterator[list[str]]:
    """Record every call of ``functions`` made on the current thread (the event loop's)."""
    codes = {function.__code__: function.__name__ for function in functions}
    seen: list[str] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        del arg
        if event == "call" and frame.f_code in codes:
            seen.append(codes[frame.f_code])

    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(None)


def rejection_reasons(logs: list[dict[str, Any]]) -> list[str]:
    return [
        issue
        for entry in logs
        if entry["event"] == "healkit.config_rejected"
        for issue in entry["issues"]
    ]


def service_yaml(url: str, **lines: str) -> str:
    extra = "".join(f"    {key}: {value}\n" for key, value in lines.items())
    return f"services:\n  svc:\n    endpoints: [{url}]\n{extra}"


# -- limits, at the decoder -------------------------------------------------------------


def test_the_billion_laughs_is_refused_before_it_is_expanded() -> None:
    text = billion_laughs(under="services.svc.degraded.template.json")
    assert len(text.encode()) < 1024  # 9 ** 9 strings from under 1 KiB
    with pytest.raises(ConfigError) as caught:
        parse_document(text, fmt="yaml", origin="app.yaml")
    assert caught.value.origin == "app.yaml"
    assert caught.value.path == "$"
    assert caught.value.reason == "YAML aliases expand beyond 250,000 nodes (max_nodes)"


def test_aliases_count_what_they_expand_to_and_within_the_limit_they_work() -> None:
    # The mapping, "a", the list and its 2 items, "b", the 3 nodes *a stands for; and
    # room for key "c", not for its alias.
    limits = DocumentLimits(max_nodes=1 + 1 + 3 + 1 + 3 + 1)
    text = "a: &a [x, y]\nb: *a\n"
    assert parse_document(text, fmt="yaml", origin="t", limits=limits) == {
        "a": ["x", "y"],
        "b": ["x", "y"],
    }
    with pytest.raises(ConfigError, match=r"YAML aliases expand beyond 10 nodes \(max_nodes\)"):
        parse_document(text + "c: *a\n", fmt="yaml", origin="t", limits=limits)
    merged = "base: &b {k: 1}\nsvc: {<<: *b, j: 2}\n"
    assert parse_document(merged, fmt="yaml", origin="t")["svc"] == {"k": 1, "j": 2}  # type: ignore[index]


def test_aliases_of_a_long_string_count_its_text() -> None:
    # 100 KiB of text, referred to 20 times: 2 MiB once expanded, from a 100 KiB document.
    text = f"s: &s {'x' * 100 * 1024}\nt: [{', '.join(['*s'] * 20)}]\n"
    with pytest.raises(ConfigError) as caught:
        parse_document(text, fmt="yaml", origin="t")
    assert caught.value.reason == "YAML aliases expand beyond 1 MiB of text (max_bytes)"
    # Nine aliases: 1000 KiB of text in all, within the limit.
    text = f"s: &s {'x' * 100 * 1024}\nt: [{', '.join(['*s'] * 9)}]\n"
    assert len(parse_document(text, fmt="yaml", origin="t")["t"]) == 9  # type: ignore[index]


def test_a_yaml_alias_inside_its_own_anchor_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_document("a: &a [1, *a]\n", fmt="yaml", origin="t")
    assert caught.value.reason == "a YAML alias refers to a node that contains it"


def test_an_alias_counts_the_depth_of_what_it_expands_to() -> None:
    deep = "[" * 5 + "]" * 5
    limits = DocumentLimits(max_depth=7)
    text = f"a: &a {deep}\n"  # the innermost list is at level 6
    assert parse_document(text + "b: [*a]\n", fmt="yaml", origin="t", limits=limits)  # 7
    with pytest.raises(ConfigError, match=r"nests deeper than 7 levels \(max_depth\)"):
        parse_document(text + "b: [[*a]]\n", fmt="yaml", origin="t", limits=limits)


@pytest.mark.parametrize("fmt", ["json", "yaml", "toml"])
def test_nesting_is_refused_beyond_max_depth_and_accepted_at_it(fmt: DocumentFormat) -> None:
    assert parse_document(nested(64, fmt), fmt=fmt, origin="t")
    for depth in (65, 200_000):
        with pytest.raises(ConfigError) as caught:
            parse_document(nested(depth, fmt), fmt=fmt, origin="t", limits=DocumentLimits())
        assert caught.value.reason == "the document nests deeper than 64 levels (max_depth)"


@pytest.mark.parametrize("fmt", ["json", "yaml", "toml"])
def test_the_node_count_is_refused_beyond_max_nodes_and_accepted_at_it(
    fmt: DocumentFormat,
) -> None:
    limits = DocumentLimits(max_nodes=1 + 2 + 10)  # the mapping, key "a", the list, 10 items
    items = ", ".join(["1"] * 10)
    text = {"json": '{"a": [%s]}', "yaml": "a: [%s]\n", "toml": "a = [%s]\n"}[fmt]
    assert parse_document(text % items, fmt=fmt, origin="t", limits=limits) == {"a": [1] * 10}
    with pytest.raises(ConfigError) as caught:
        parse_document(text % (items + ", 1"), fmt=fmt, origin="t", limits=limits)
    assert caught.value.reason == "the document holds more than 13 nodes (max_nodes)"


def test_the_size_is_checked_before_anything_is_decoded() -> None:
    # Not even JSON: the size alone refuses it, so the decoder never ran.
    text = b"{" + b"x" * (10 * MIB)
    with pytest.raises(ConfigError) as caught:
        parse_document(text, fmt="json", origin="t")
    assert caught.value.reason == ("the document is 10 MiB, over the limit of 1 MiB (max_bytes)")
    # Text is measured in UTF-8 bytes: 8 characters, 9 bytes.
    with pytest.raises(ConfigError) as caught:
        parse_document('{"é": 1}', fmt="json", origin="t", limits=DocumentLimits(max_bytes=8))
    assert caught.value.reason == "the document is 9 bytes, over the limit of 8 bytes (max_bytes)"


def test_a_document_of_exactly_max_bytes_is_accepted() -> None:
    body = b'{"services": {}}'
    padded = body + b" " * (MIB - len(body))
    assert len(padded) == MIB
    assert parse_document(padded, fmt="json", origin="t") == {"services": {}}
    with pytest.raises(ConfigError) as caught:
        parse_document(padded + b" ", fmt="json", origin="t")
    assert caught.value.reason == (
        "the document is 1,048,577 bytes, over the limit of 1,048,576 bytes (max_bytes)"
    )


def test_a_file_is_never_read_past_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    with path.open("wb") as file:
        file.truncate(10 * MIB)  # 10 MiB of NUL bytes: invalid JSON, refused by size
    with pytest.raises(ConfigError) as caught:
        healkit.FileSource(path).read()
    assert caught.value.origin == str(path)
    assert caught.value.reason == "the document is 10 MiB, over the limit of 1 MiB (max_bytes)"
    small = DocumentLimits(max_bytes=4 * MIB)
    with pytest.raises(ConfigError, match="the document is 10 MiB, over the limit of 4 MiB"):
        healkit.FileSource(path, limits=small).read()


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_bytes", 0), ("max_depth", -1), ("max_nodes", 1.5), ("max_depth", True)],
)
def test_limits_must_be_positive_integers(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{field} must be an integer >= 1"):
        DocumentLimits(**{field: value})  # type: ignore[arg-type]


# -- random documents through the whole entry point ----------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=60,
)
TIGHT = DocumentLimits(max_bytes=2048, max_depth=6, max_nodes=40)


def entry_point(text: str, fmt: DocumentFormat, limits: DocumentLimits) -> object:
    """Decode and validate ``text`` as a source does: a configuration, or the ConfigError."""
    try:
        raw = parse_document(text, fmt=fmt, origin="t", limits=limits)
        return build_config(raw, (SECTION,), origin="t")
    except ConfigError as error:
        return error


def check_outcome(outcome: object) -> None:
    if isinstance(outcome, ConfigError):
        assert outcome.issues
        assert all(issue.path.startswith("$") for issue in outcome.issues)
    else:
        assert isinstance(outcome, healkit.HealkitConfig)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=JSON_VALUES,
    fmt=st.sampled_from(["json", "yaml"]),
    wrap=st.sampled_from(["services", "defaults", "services.svc", ""]),
    tight=st.booleans(),
)
def test_random_nested_documents_only_ever_raise_config_error(
    value: object, fmt: DocumentFormat, wrap: str, *, tight: bool
) -> None:
    document: object = value
    for key in reversed(wrap.split(".") if wrap else []):
        document = {key: document}
    text = msgspec.json.encode(document).decode() if fmt == "json" else yaml.safe_dump(document)
    check_outcome(entry_point(text, fmt, TIGHT if tight else DocumentLimits()))


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from('{}[]:,="&*!<> -\nabc1'), max_size=80),
    fmt=st.sampled_from(["json", "yaml", "toml"]),
)
def test_random_text_only_ever_raises_config_error(text: str, fmt: DocumentFormat) -> None:
    check_outcome(entry_point(text, fmt, TIGHT))


@settings(max_examples=100, deadline=None)
@given(
    levels=st.integers(1, 12),
    width=st.integers(1, 12),
    where=st.sampled_from(["", "services.svc.degraded.template.json", "defaults.x"]),
)
def test_alias_bombs_of_any_shape_are_refused_or_small(levels: int, width: int, where: str) -> None:
    # The anchors are top-level keys no schema knows: refused by size, by
    # expansion or by validation, never accepted, never anything but a ConfigError.
    outcome = entry_point(billion_laughs(levels, width, under=where), "yaml", TIGHT)
    assert isinstance(outcome, ConfigError)
    check_outcome(outcome)


# -- off the event loop, with a real runtime ----------------------------------------------


async def test_a_watched_file_with_the_billion_laughs_is_refused_off_the_loop(
    tmp_path: Path, fault_server: FaultServer, logs: list[dict[str, Any]]
) -> None:
    path = tmp_path / "healkit.yaml"
    path.write_text(service_yaml(fault_server.url))
    source = healkit.FileSource(path, poll_interval=0.01)
    async with healkit.Client(
        config=source, plugins=[TimeoutPlugin()], entry_points=False
    ) as client:
        runtime = client.runtime
        good = runtime.config
        with calls_on_this_thread(parse_document, build_config) as on_loop:
            path.write_text(billion_laughs(under="services.svc.degraded.template.json"))
            with anyio.fail_after(DEADLINE):
                await runtime.wait_for_rejections(1)
        assert on_loop == []
        assert runtime.config is good
        assert rejection_reasons(logs) == [
            "$: YAML aliases expand beyond 250,000 nodes (max_nodes)"
        ]
        response = await client.get("/ok", service="svc")
        assert response.status == 200


async def test_a_watched_file_is_decoded_and_validated_off_the_loop(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    path = tmp_path / "healkit.toml"
    path.write_text(f'[services.svc]\nendpoints = ["{fault_server.url}"]\n')
    source = healkit.FileSource(path, poll_interval=0.01)
    async with healkit.Client(
        config=source, plugins=[TimeoutPlugin()], entry_points=False
    ) as client:
        runtime = client.runtime
        version = runtime.version
        with calls_on_this_thread(parse_document, build_config) as on_loop:
            path.write_text(
                f'[services.svc]\nendpoints = ["{fault_server.url}"]\nmax_body_bytes = 10\n'
            )
            with anyio.fail_after(DEADLINE):
                await runtime.wait_for_version(version + 1)
        assert on_loop == []
        assert runtime.config.policy("svc").max_body_bytes == 10


class Gate:
    """Holds the validation of a document (in whatever thread runs it) until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.left = threading.Event()
        self.threads: list[int] = []
        self.timed_out = False

    def hold(self) -> None:
        self.threads.append(threading.get_ident())
        self.entered.set()
        if not self.release.wait(DEADLINE):
            self.timed_out = True  # the loop could not run while validation was held
        self.left.set()


def gated_plugin(gate: Gate) -> object:
    """A plugin whose section holds validation at the gate when ``hold: true``."""

    class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
        hold: bool = False

        def __post_init__(self) -> None:
            if self.hold:
                gate.hold()

    section = healkit.ConfigSection("gate", Settings)

    class GatePlugin:
        @healkit.hookimpl
        def healkit_config_sections(self) -> list[healkit.ConfigSection[Any]]:
            return [section]

    return GatePlugin()


async def test_calls_keep_their_deadlines_while_a_document_is_being_validated(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    gate = Gate()
    path = tmp_path / "healkit.yaml"
    path.write_text(service_yaml(fault_server.url, timeout="{deadline: 1.0}"))
    source = healkit.FileSource(path, poll_interval=0.01)
    async with healkit.Client(
        config=source, plugins=[TimeoutPlugin(), gated_plugin(gate)], entry_points=False
    ) as client:
        runtime = client.runtime
        version = runtime.version
        path.write_text(
            service_yaml(fault_server.url, timeout="{deadline: 1.0}", gate="{hold: true}")
        )
        with anyio.fail_after(DEADLINE):
            await anyio.to_thread.run_sync(gate.entered.wait)
        # The new document is held mid-validation: calls go on under the one in force.
        for _ in range(3):
            response = await client.get("/ok", service="svc")
            assert response.status == 200
        gate.release.set()
        with anyio.fail_after(DEADLINE):
            await runtime.wait_for_version(version + 1)
        assert not gate.timed_out
        assert threading.get_ident() not in gate.threads
        assert runtime.config.policy("svc").section(SECTION).deadline == 1.0


async def test_a_runtime_stopped_mid_validation_stops_at_once_and_applies_nothing(
    tmp_path: Path, fault_server: FaultServer, logs: list[dict[str, Any]]
) -> None:
    gate = Gate()
    path = tmp_path / "healkit.yaml"
    path.write_text(service_yaml(fault_server.url))
    source = healkit.FileSource(path, poll_interval=0.01)
    async with healkit.Client(
        config=source, plugins=[TimeoutPlugin(), gated_plugin(gate)], entry_points=False
    ) as client:
        runtime = client.runtime
        good, version = runtime.config, runtime.version
        path.write_text(service_yaml(fault_server.url, gate="{hold: true}"))
        with anyio.fail_after(DEADLINE):
            await anyio.to_thread.run_sync(gate.entered.wait)
    # Stopped while the document was held: the stop did not wait for it...
    assert not gate.left.is_set()
    gate.release.set()
    with anyio.fail_after(DEADLINE):
        await anyio.to_thread.run_sync(gate.left.wait)
    # ...and the worker's result, once there, is dropped.
    assert not gate.timed_out
    assert runtime.config is good
    assert runtime.version == version
    assert not any(entry["event"] == "healkit.background_task_failed" for entry in logs)
