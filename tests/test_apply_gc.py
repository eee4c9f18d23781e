"""What an applied document leaves for the garbage collector, and what a change re-validates.

A full garbage collection stops the event loop for a time in proportion to
every object it tracks. The configuration models are ``gc=False`` Structs, a
policy makes its stash on first use and shares its snapshot's section names,
and the runtime keeps a plain document encoded: an installed document of N
services adds at most about two tracked objects per service (its policy, and
the frozenset of its known endpoints once asked for), where it added more
than seven. A new
document validates only the services whose own document (or the defaults)
changed. Structural checks, not timings.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

import healkit
from healkit._config.validate import fingerprint

pytestmark = pytest.mark.anyio

SERVICES = 2_000


def document(services: int, *, attempt: float = 2.0) -> dict[str, Any]:
    """``services`` services with two endpoints and a ``timeout`` section."""
    return {
        "services": {
            f"s{i}": {
                "endpoints": [f"http://h{i}.test:8080", f"http://h{i}b.test:8080"],
                "timeout": {"attempt": attempt},
            }
            for i in range(services)
        }
    }


def tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


async def test_an_installed_document_adds_about_two_tracked_objects_per_service() -> None:
    runtime = healkit.Runtime()  # every first-party plugin, from the entry points
    assert await runtime.submit(document(10), origin="test") is None  # loads what loads once
    before = tracked()
    assert await runtime.submit(document(SERVICES), origin="test") is None
    added = tracked() - before
    assert added < 2.5 * SERVICES  # was 7.3 per service


async def test_configuration_structs_are_not_tracked_by_the_garbage_collector() -> None:
    runtime = healkit.Runtime()
    doc = document(3)
    doc["services"]["s1"]["retry"] = {"statuses": [502, 503]}
    doc["services"]["s1"]["routing"] = {"fallback_groups": [["http://dr1.test"]]}
    assert await runtime.submit(doc, origin="test") is None
    config = runtime.config
    gc.collect()
    policy = config.services["s1"]
    assert not gc.is_tracked(policy._resolved)  # the service document, plugin sections in it
    assert not gc.is_tracked(config.defaults._resolved)
    assert not gc.is_tracked(config.logging)
    assert not gc.is_tracked(healkit.Timeouts(connect=1.0, read=1.0, total=1.0))
    for section in config.sections:
        settings = policy.section(section)
        if section.name in doc["services"]["s1"]:
            assert not gc.is_tracked(settings), section.name
        else:  # not mentioned: the section's one default object, whatever it holds
            assert settings is section.default(), section.name
    assert policy._stash is None  # never asked for: not made
    assert policy.stash is policy.stash


class Counted(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A section that counts how many times it is built (each validation builds it)."""

    weight: int = 1

    def __post_init__(self) -> None:
        BUILT[0] += 1


BUILT = [0]


COUNTED = healkit.ConfigSection("counted", Counted)


class CountedPlugin:
    healkit_name = "counted"

    @healkit.hookimpl
    def healkit_config_sections(self) -> Sequence[healkit.ConfigSection[Any]]:
        return [COUNTED]


def builds() -> int:
    """How many times ``Counted`` was built since the last call."""
    count, BUILT[0] = BUILT[0], 0
    return count


def counted(services: int, **changed: int) -> dict[str, Any]:
    return {
        "services": {
            f"s{i}": {
                "endpoints": [f"http://h{i}.test"],
                "counted": {"weight": changed.get(f"s{i}", 1)},
            }
            for i in range(services)
        }
    }


@pytest.fixture
def runtime() -> healkit.Runtime:
    builds()
    return healkit.Runtime(plugins=[CountedPlugin()], entry_points=False)


async def test_a_one_service_change_validates_only_that_service(runtime: healkit.Runtime) -> None:
    builds()
    assert await runtime.submit(counted(200), origin="test") is None
    one_document = builds()
    assert one_document >= 200
    first = runtime.config
    assert await runtime.submit(counted(200, s7=2), origin="test") is None
    one_service = builds()
    assert one_service < 10  # the defaults and s7; was as many as the first document
    assert runtime.config.services["s7"].section(COUNTED).weight == 2
    kept = [n for n in first.services if runtime.config.services[n] is first.services[n]]
    assert len(kept) == 199


async def test_changed_defaults_validate_every_service_again(runtime: healkit.Runtime) -> None:
    assert await runtime.submit(counted(50), origin="test") is None
    builds()
    changed = {**counted(50), "defaults": {"max_redirects": 3}}
    assert await runtime.submit(changed, origin="test") is None
    assert builds() >= 50
    assert all(p.max_redirects == 3 for p in runtime.config.services.values())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_redirects", 3.0),  # == 3, but not an integer
        ("follow_redirects", 1),  # == True, but not a boolean
        ("endpoints", {"http://h1.test"}),  # a set: no order
        ("endpoints", ("http://h1.test", "http://h1.test")),  # a tuple: validated, repeats
    ],
)
def test_a_value_equal_to_a_valid_one_is_still_validated(key: str, value: object) -> None:
    valid = {"services": {"s1": {"endpoints": ["http://h1.test"], "max_redirects": 3}}}
    valid["services"]["s1"]["follow_redirects"] = True
    first = healkit.build_config(valid)
    invalid = {"services": {"s1": {**valid["services"]["s1"], key: value}}}
    with pytest.raises(healkit.ConfigError):
        healkit.build_config(invalid, previous=first)


def test_a_document_edited_in_place_is_validated_again() -> None:
    doc: dict[str, Any] = {"services": {"s1": {"endpoints": ["http://h1.test"]}}}
    first = healkit.build_config(doc)
    doc["services"]["s1"]["max_redirects"] = -1
    with pytest.raises(healkit.ConfigError, match="max_redirects"):
        healkit.build_config(doc, previous=first)


@pytest.mark.parametrize(
    "document",
    [
        {"a": [1, 2.0, True, None, "x", {"b": []}]},
        [0, -(2**63), 2**64 - 1],
    ],
)
def test_a_plain_document_has_a_fingerprint_that_decodes_to_it(document: object) -> None:
    encoded = fingerprint(document)
    assert encoded is not None
    assert msgspec.msgpack.decode(encoded) == document


def test_only_a_plain_document_has_a_fingerprint() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    for document in ({1: "a"}, {"a": (1,)}, {"a": {1}}, [2**64], cycle, [b"x"]):
        assert fingerprint(document) is None, document
    assert fingerprint(1) != fingerprint(True) != fingerprint(1.0)  # noqa: FBT003
    assert fingerprint({"a": 1, "b": 2}) != fingerprint({"b": 2, "a": 1})


class Late:
    healkit_name = "late"


async def test_register_applies_the_plain_document_as_it_was_submitted() -> None:
    runtime = healkit.Runtime(entry_points=False)
    doc = {"services": {f"s{i}": {"endpoints": [f"http://h{i}.test"]} for i in range(3)}}
    assert await runtime.submit(doc, origin="test") is None
    doc["services"]["s0"]["max_redirects"] = 4  # the caller's object, edited afterwards
    runtime.register(Late())
    assert set(runtime.config.services) == {"s0", "s1", "s2"}
    assert runtime.config.services["s0"].max_redirects == 10  # as submitted


async def test_register_applies_a_document_that_is_not_plain() -> None:
    runtime = healkit.Runtime(entry_points=False)
    doc = {"services": {"s0": {"endpoints": ("http://h0.test",)}}}  # a tuple: kept as it is
    assert await runtime.submit(doc, origin="test") is None
    runtime.register(Late())
    assert runtime.config.services["s0"].endpoints == ("http://h0.test",)


def test_threads_that_ask_a_policy_for_its_stash_at_once_get_the_same_one() -> None:
    # A kept policy is in two snapshots: a call on the loop and healkit_prepare
    # in a worker thread may make its stash at the same moment.
    config = healkit.build_config(
        {"services": {f"s{i}": {"endpoints": [f"http://h{i}.test"]} for i in range(2_000)}}
    )
    policies = list(config.services.values())
    threads = 4
    seen: list[list[object]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads)

    def ask(k: int) -> None:
        barrier.wait()
        seen[k].extend(policy.stash for policy in policies)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        workers = [threading.Thread(target=ask, args=(k,)) for k in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(interval)
    for i, policy in enumerate(policies):
        assert all(stashes[i] is policy.stash for stashes in seen), policy.name
