"""What a source's documents leave for the garbage collector between the loop's turns.

A source hands the runtime its document *compact*: the ``defaults`` and each
service's document as msgpack bytes in an untracked object, decoded one at a
time when validated. The etcd source keeps each key's last good document the
same way, and the runtime keeps the document in force so. Structural checks
(tracked containers, per service), against a real file and a real etcd; no
timings.
"""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import healkit
from healkit import ConfigError, build_config, plain_document
from healkit._config.compact import Encoded, compacted
from healkit._config.formats import DocumentLimits, parse_compact, parse_document
from healkit.etcd import EtcdClient, EtcdSource, KeyValue, PutOp, WatchEvent
from healkit.plugin import StashKey
from healkit.testing import EtcdServer

pytestmark = pytest.mark.anyio

ROOT = "/healkit/gc/"
SERVICES = 500
DEADLINE = 30.0


def service(i: int, *, size: int = 4096) -> dict[str, Any]:
    return {"endpoints": [f"http://a{i}.test", f"http://b{i}.test"], "max_body_bytes": size}


def tracked_containers(document: object) -> int:
    """How many objects the collector tracks in ``document``, walking dicts and lists."""
    count, pending = 0, [document]
    while pending:
        value = pending.pop()
        count += gc.is_tracked(value)
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return count


def tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


class Capture:
    """A ConfigSink that records the documents submitted to it."""

    def __init__(self) -> None:
        self.documents: list[object] = []
        self.arrived = anyio.Event()

    async def submit(self, raw: object, *, origin: str) -> ConfigError | None:
        del origin
        self.documents.append(raw)
        self.arrived.set()
        return None

    def reject(self, error: ConfigError) -> None:
        raise AssertionError(error)

    def emit(self, event: object) -> None:
        del event


async def test_a_file_sources_document_holds_two_tracked_containers(tmp_path: Path) -> None:
    path = tmp_path / "healkit.json"
    path.write_text("{}")
    source = healkit.FileSource(path, poll_interval=0.01)
    source.read()
    sink = Capture()
    doc = {
        "defaults": {"max_redirects": 3},
        "services": {f"s{i}": service(i) for i in range(SERVICES)},
    }
    path.write_text(json.dumps(doc))
    async with anyio.create_task_group() as group:
        group.start_soon(source.watch, sink)
        with anyio.fail_after(DEADLINE):
            await sink.arrived.wait()
        group.cancel_scope.cancel()
    submitted = sink.documents[0]
    assert tracked_containers(submitted) <= 2  # the document and its services; was 3 a service
    assert plain_document(submitted) == doc


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with etcd_server.client() as client:
        yield client


async def put_services(etcd: EtcdClient, first: int, last: int) -> None:
    """Write services ``first`` to ``last - 1``, 100 keys a transaction (etcd allows 128)."""
    for start in range(first, last, 100):
        await etcd.txn(
            success=[
                PutOp(key=f"{ROOT}services/s{i}".encode(), value=json.dumps(service(i)).encode())
                for i in range(start, min(start + 100, last))
            ]
        )


async def test_the_etcd_source_submits_and_keeps_its_documents_compact(etcd: EtcdClient) -> None:
    await etcd.put(ROOT + "defaults", b'{"max_redirects": 3}')
    await put_services(etcd, 0, 20)
    await etcd.put(ROOT + "channels/canary/services/s0", b'{"max_redirects": 4}')
    source = EtcdSource(etcd, namespace="gc", channel="canary")
    sink = Capture()
    await source.load_into(sink)
    submitted = sink.documents[-1]
    assert tracked_containers(submitted) <= 2
    plain = plain_document(submitted)
    assert isinstance(plain, dict)
    assert plain["defaults"] == {"max_redirects": 3}
    assert plain["services"]["s0"] == {**service(0), "max_redirects": 4}  # the overlay on top
    assert plain["services"]["s7"] == service(7)
    # load() returns the plain document, as the ConfigSource protocol says.
    assert await EtcdSource(etcd, namespace="gc", channel="canary").load() == plain


async def test_a_runtime_on_etcd_keeps_about_two_tracked_objects_per_service(
    etcd: EtcdClient,
) -> None:
    await put_services(etcd, 0, 10)
    runtime = healkit.Runtime(config=EtcdSource(etcd, namespace="gc"), entry_points=False)
    async with runtime:
        before = tracked()
        version = runtime.version
        await put_services(etcd, 10, 10 + SERVICES)
        with anyio.fail_after(DEADLINE):
            await runtime.wait_for_version(version + SERVICES // 100)
        assert len(runtime.config.services) == 10 + SERVICES
        added = tracked() - before
    # The policy and its known endpoints (2 a service), and bounded caches (yarl's
    # parsed URLs, the last revision's events): 3.7 a service here. The source kept
    # its decoded documents too (a dict and a list a service): 5.7.
    assert added < 4.5 * SERVICES


@pytest.mark.parametrize(
    "document",
    [
        {"services": {"s1": service(1), "s2": service(2)}, "defaults": {"max_redirects": 2}},
        {"services": {"s1": 3, "s2": ["x"], "s3": None}},
        {"services": {"s1": {"endpoints": ["http://a.test"], "timeout": {"attempt": -1}}}},
        {"services": {"s1": service(1)}, "defaults": 7},
        {"services": {"s1": service(1)}, "defaults": None, "unknown": 1},
        {"services": {"s1": service(1), "bad name": service(2)}, "defaults": {"endpoints": []}},
        {"services": {"s1": {"endpoints": ("http://a.test",)}}},  # a tuple: no encoding
    ],
)
def test_a_compact_document_is_judged_as_the_plain_one(document: dict[str, Any]) -> None:
    def outcome(raw: object) -> object:
        try:
            config = healkit.build_config(raw)
        except ConfigError as error:
            return sorted((issue.path, issue.reason) for issue in error.issues)
        return {name: policy.as_document() for name, policy in config.services.items()}

    compact = compacted(document)
    assert isinstance(compact, dict)
    assert outcome(compact) == outcome(document)
    encoded = [part for part in compact["services"].values() if isinstance(part, Encoded)]
    assert all(not gc.is_tracked(part) for part in encoded)


def test_a_compact_document_does_not_follow_edits_of_the_original() -> None:
    document: dict[str, Any] = {
        "services": {"s1": service(1)},
        "logging": {"redact_headers": ["x-secret"]},
    }
    compact = compacted(document)
    document["services"]["s1"]["max_redirects"] = -1
    document["logging"]["redact_headers"].append(3)
    config = healkit.build_config(compact)
    assert config.services["s1"].max_redirects == 10
    assert "x-secret" in config.logging.redact_headers


def test_a_json_document_is_decoded_one_service_at_a_time() -> None:
    text = json.dumps({"services": {f"s{i}": service(i) for i in range(10_000)}}).encode()
    peak = [0]

    def sample(phase: str, info: dict[str, int]) -> None:
        del info
        if phase == "start":  # each collection, young ones included, counts what is alive
            peak[0] = max(peak[0], len(gc.get_objects()))

    before = tracked()
    gc.callbacks.append(sample)
    try:
        compact = parse_compact(text, fmt="json", origin="test")
    finally:
        gc.callbacks.remove(sample)
    # No collection ran, or one found few more objects alive than before; decoded
    # whole, the tree alone is 20,000 containers (29,500 more objects at the peak).
    assert max(peak[0], before) - before < 1_000
    assert plain_document(compact) == parse_document(text, fmt="json", origin="test")


JSON_CASES = [
    b'{"services":{"a":{"endpoints":["x"]},"b":{"t":{"x":1.5}}},"defaults":{"m":1},"x":[1]}',
    b'{"services":null}',
    b"[]",
    b'{"services":{"a":1e999}}',
    b'{"services":{"a":[[[[[[1]]]]]]}}',
    b'{"services":{"a":{"x":1},"a":{"y":2}}}',
    b'{"services":{"a":{"x":1}}, "services":{"b":2}}',
    b'\xef\xbb\xbf{"services":{}}',
    b'{"services":{"a":{"x":',
    b'{"a":1}',
    b"\xff",
    b'{"services":{"a":123456789012345678901234567890}}',
    json.dumps({"services": {f"s{i}": {"e": [1, 2, 3]} for i in range(50)}}).encode(),
]
LIMITS = [
    DocumentLimits(),
    DocumentLimits(max_depth=5),
    DocumentLimits(max_depth=3),
    DocumentLimits(max_nodes=100),
    DocumentLimits(max_nodes=10),
    DocumentLimits(max_bytes=30),
]


@pytest.mark.parametrize("limits", LIMITS)
@pytest.mark.parametrize("text", JSON_CASES)
def test_a_json_document_decoded_compact_is_the_same_or_refused_the_same(
    text: bytes, limits: DocumentLimits
) -> None:
    def outcome(parse: Callable[..., object]) -> object:
        try:
            return plain_document(parse(text, fmt="json", origin="test", limits=limits))
        except ConfigError as error:
            return str(error)

    assert outcome(parse_compact) == outcome(parse_document)


async def test_an_installed_document_adds_no_tracked_object_per_service() -> None:
    runtime = healkit.Runtime()  # every first-party plugin, from the entry points
    assert await runtime.submit({"services": {"s0": service(0)}}, origin="test") is None
    before = tracked()
    doc = compacted({"services": {f"s{i}": service(i) for i in range(2_000)}})
    assert await runtime.submit(doc, origin="test") is None
    added = tracked() - before
    # A policy holds nothing tracked until it is used: what is left is bounded
    # caches (yarl's parsed URLs). Each policy was one tracked object before.
    assert added < 0.2 * 2_000
    policy = runtime.config.services["s7"]
    assert not gc.is_tracked(policy)
    assert policy.known_endpoints == {"http://a7.test", "http://b7.test"}
    assert policy.known_endpoints is policy.known_endpoints
    assert runtime.config.configured("s7", "http://b7.test")
    assert gc.is_tracked(policy)  # it holds a set now: the collector must see what it holds


class Derived:
    """Plugin state that refers back to its policy, as a compiled plan may."""

    def __init__(self, policy: object) -> None:
        self.policy = policy


def test_plugin_state_that_refers_to_its_policy_is_collected_with_it() -> None:
    # An untracked object inside a cycle would never be freed: a policy is
    # tracked from the moment it holds state, so the cycle is the collector's.
    config = build_config({"services": {"s1": service(1)}})
    policy = config.services["s1"]
    derived = policy.stash[StashKey[Derived]("test.derived")] = Derived(policy)
    gone = weakref.ref(derived)
    del derived, policy, config
    gc.collect()
    assert gone() is None


def test_etcd_watch_events_are_not_tracked_by_the_garbage_collector() -> None:
    kv = KeyValue(key=b"/healkit/gc/services/s1", value=b"{}", mod_revision=7)
    event = WatchEvent(kv=kv, prev_kv=kv)
    assert not gc.is_tracked(kv)
    assert not gc.is_tracked(event)  # one a key of a revision: 10,000 for a large write


def objects_built(build: Callable[[], object]) -> tuple[object, int]:
    """Return what ``build`` returns and how many collector objects it left alive.

    The collector's count of its youngest generation: objects it allocated
    minus those freed (tracked or not). Each young collection comes after
    700 of them, and promotes whatever is alive then, calls in flight
    included: a large document that leaves few objects behind causes few.
    """
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        built = build()
        return built, gc.get_count()[0] - before
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "defaults",
    [{}, {"timeout": {"attempt": 2.0}, "retry": {"attempts": 2}, "breaker": {"minimum_calls": 5}}],
    ids=["no defaults", "sections in defaults"],
)
def test_validating_a_large_document_leaves_few_objects_per_service(
    defaults: dict[str, Any],
) -> None:
    sections = healkit.Runtime().sections  # every first-party plugin
    services = 5_000
    doc = compacted(
        {"defaults": defaults, "services": {f"s{i}": service(i) for i in range(services)}}
    )
    config, left = objects_built(lambda: build_config(doc, sections))
    assert isinstance(config, healkit.HealkitConfig)
    assert len(config.services) == services
    # A policy, its endpoints and entries of bounded caches: 2.4 to 2.6 per
    # service. Before, every section a service did not write was a settings
    # object of its own: 9.4 to 9.6 per service.
    assert left < 4 * services


def test_a_section_a_service_does_not_write_is_one_shared_object() -> None:
    sections = healkit.Runtime().sections
    by_name = {section.name: section for section in sections}
    config = build_config(
        {
            "defaults": {"timeout": {"attempt": 2.0}, "retry": {"attempts": 2}},
            "services": {
                "a": service(1),
                "b": service(2),
                "c": {**service(3), "retry": {"statuses": [502]}},
            },
        },
        sections,
    )
    a, b, c = (config.services[name] for name in "abc")
    breaker = by_name["breaker"]
    assert a.section(breaker) is b.section(breaker) is breaker.default()
    timeout = by_name["timeout"]
    assert a.section(timeout) is b.section(timeout) is config.defaults.section(timeout)
    assert a.section(timeout).attempt == 2.0
    retry = by_name["retry"]
    assert c.section(retry) is not a.section(retry)  # merged: the defaults' and its own
    assert (c.section(retry).attempts, c.section(retry).statuses) == (2, (502,))
    assert a.section(retry).statuses != (502,)


def test_a_section_whose_settings_are_not_frozen_is_refused() -> None:
    class Mutable(msgspec.Struct):
        level: int = 1

    with pytest.raises(TypeError, match=r"section 'mutable': settings must be a frozen"):
        healkit.ConfigSection("mutable", Mutable)
