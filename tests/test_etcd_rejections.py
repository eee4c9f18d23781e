"""EtcdSource against a real etcd: every key judged on its own, at every revision, from the start.

A document that Python finds equal to the last good one (``True == 1``,
``2 == 2.0``) is still judged; an invalid key never costs the others their
change; an instance starts with every valid key; bytes that are not UTF-8 are
refused. The property test writes random mixes of valid and invalid documents
and checks the applied configuration against "every valid document at its
latest valid revision".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import healkit
from healkit import ConfigError
from healkit.etcd import DeleteOp, EtcdClient, EtcdSource, EtcdSourceStatus, PutOp
from healkit.testing import EtcdServer, capture_events

pytestmark = pytest.mark.anyio

NAMESPACE = "rejections"
ROOT = f"/healkit/{NAMESPACE}/"
DEADLINE = 10.0


def encode(document: object) -> bytes:
    return json.dumps(document).encode()


def service(endpoint: str, **routing: object) -> bytes:
    return encode(
        {"endpoints": [endpoint], "routing": routing} if routing else {"endpoints": [endpoint]}
    )


async def until(source: EtcdSource, condition: Callable[[EtcdSourceStatus], bool]) -> None:
    with anyio.fail_after(DEADLINE):
        await source.wait_until(condition)


async def put(etcd: EtcdClient, source: EtcdSource, key: str, value: bytes) -> int:
    """Write one key and wait until the source has applied (or rejected) that revision."""
    revision = (await etcd.put(ROOT + key, value)).revision
    await until(source, lambda s: s.applied_revision >= revision)
    return revision


def rejected_events(logs: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    return [
        (e["key"].removeprefix(ROOT), e["revision"], e["path"])
        for e in logs
        if e["event"] == "healkit.etcd_document_rejected"
    ]


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with etcd_server.client() as client:
        yield client


def runtime_of(source: EtcdSource) -> healkit.Runtime:
    return healkit.Runtime(config=source, entry_points=False)


async def test_an_invalid_default_equal_in_python_is_rejected_and_costs_no_later_change(
    etcd: EtcdClient,
) -> None:
    # eject_time is a number: 1 is valid, true is not, although True == 1.
    await etcd.put(ROOT + "defaults", encode({"routing": {"eject_time": 1}}))
    await etcd.put(ROOT + "services/svc", service("http://a.test"))
    source = EtcdSource(etcd, namespace=NAMESPACE)
    async with runtime_of(source) as runtime:
        with capture_events() as logs:
            bad = await put(etcd, source, "defaults", encode({"routing": {"eject_time": True}}))
        assert source.status.rejected == {"defaults": bad}
        assert rejected_events(logs) == [("defaults", bad, "$.defaults.routing.eject_time")]
        assert runtime.rejections == 1

        # The next write, to another key, is applied.
        version = runtime.version
        await put(
            etcd, source, "services/svc", encode({"endpoints": ["http://a.test", "http://b.test"]})
        )
        assert runtime.version == version + 1
        assert runtime.config.policy("svc").endpoints == ("http://a.test", "http://b.test")
        assert source.status.rejected == {"defaults": bad}
        assert runtime.rejections == 1

        # Writing the old valid value back is applied, and clears the rejection.
        await put(etcd, source, "defaults", encode({"routing": {"eject_time": 1}}))
        assert source.status.rejected == {}
        assert runtime.rejections == 1


@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [
        ("eject_after", 2, 2.0),  # an integer: 2.0 == 2 in Python
        ("failover", True, 1),  # a boolean: 1 == True in Python
        ("eject_time", 1, True),  # a number: True == 1 in Python
    ],
)
async def test_every_invalid_revision_is_rejected_on_its_own(
    etcd: EtcdClient, field: str, good: object, bad: object
) -> None:
    await etcd.put(ROOT + "services/svc", service("http://a.test", **{field: good}))
    source = EtcdSource(etcd, namespace=NAMESPACE)
    async with runtime_of(source) as runtime:
        path = f"$.services.svc.routing.{field}"
        with capture_events() as logs:
            first = await put(
                etcd, source, "services/svc", service("http://a.test", **{field: bad})
            )
            assert source.status.rejected == {"services/svc": first}
            await put(etcd, source, "services/other", service("http://o.test"))
            assert set(runtime.config.services) == {"svc", "other"}
            # The same invalid document again: a new revision, a new rejection.
            second = await put(
                etcd, source, "services/svc", service("http://a.test", **{field: bad})
            )
        assert source.status.rejected == {"services/svc": second}
        assert rejected_events(logs) == [
            ("services/svc", first, path),
            ("services/svc", second, path),
        ]
        assert runtime.rejections == 2
        assert runtime.config.policy("svc").as_document()["routing"][field] == good


async def test_a_change_to_defaults_that_breaks_a_service_is_rejected_with_its_key(
    etcd: EtcdClient,
) -> None:
    await etcd.put(ROOT + "services/svc", service("http://a.test", eject_time_max=50))
    source = EtcdSource(etcd, namespace=NAMESPACE)
    async with runtime_of(source) as runtime:
        # Valid alone, but the service's eject_time would exceed its eject_time_max.
        with capture_events() as logs:
            bad = await put(etcd, source, "defaults", encode({"routing": {"eject_time": 100}}))
        assert source.status.rejected == {"defaults": bad}
        assert rejected_events(logs) == [("defaults", bad, "$.services.svc.routing")]
        assert runtime.config.defaults.as_document()["routing"]["eject_time"] == 30.0
        await put(etcd, source, "services/b", service("http://b.test"))
        assert set(runtime.config.services) == {"svc", "b"}


async def test_a_service_name_that_is_not_an_identifier_is_blamed_alone(etcd: EtcdClient) -> None:
    source = EtcdSource(etcd, namespace=NAMESPACE)
    await etcd.put(ROOT + "services/a.b", service("http://ab.test"))
    async with runtime_of(source) as runtime:
        result = await etcd.txn(
            success=[
                PutOp(
                    key=(ROOT + "services/a.b").encode(),
                    value=service("http://ab.test", failover=1),
                ),
                PutOp(key=(ROOT + "services/c").encode(), value=service("http://c.test")),
            ]
        )
        await until(source, lambda s: s.applied_revision >= result.revision)
        assert set(runtime.config.services) == {"a.b", "c"}
        assert source.status.rejected == {"services/a.b": result.revision}


async def test_an_instance_starts_with_every_valid_key(etcd: EtcdClient) -> None:
    await etcd.put(ROOT + "defaults", encode({"max_body_bytes": 1024}))
    await etcd.put(ROOT + "services/good", service("http://good.test"))
    bad = await etcd.put(ROOT + "services/bad", service("http://bad.test", eject_after="3"))
    broken = await etcd.put(ROOT + "services/broken", b"{not json")
    source = EtcdSource(etcd, namespace=NAMESPACE)
    with capture_events() as logs:
        runtime = runtime_of(source)
        await runtime.start()
    try:
        assert set(runtime.config.services) == {"good"}
        assert runtime.config.policy("good").max_body_bytes == 1024
        at = broken.revision  # everything is read at one revision
        assert source.status.rejected == {"services/bad": at, "services/broken": at}
        assert ("services/bad", at, "$.services.bad.routing.eject_after") in rejected_events(logs)
        assert bad.revision < at
        # Once repaired, the key is applied like any other.
        await put(etcd, source, "services/bad", service("http://bad.test", eject_after=3))
        assert set(runtime.config.services) == {"good", "bad"}
        assert source.status.rejected == {"services/broken": at}
    finally:
        await runtime.stop()


async def test_an_instance_refuses_to_start_when_no_document_is_usable(etcd: EtcdClient) -> None:
    await etcd.put(ROOT + "services/bad", service("http://bad.test", eject_after="3"))
    await etcd.put(ROOT + "defaults", b"[1, 2")
    runtime = runtime_of(EtcdSource(etcd, namespace=NAMESPACE))
    with pytest.raises(ConfigError, match="no valid document") as caught:
        await runtime.start()
    assert {issue.reason.split(" was ")[0] for issue in caught.value.issues} == {
        ROOT + "defaults",
        ROOT + "services/bad",
    }
    assert not runtime.started


async def test_an_empty_namespace_starts_with_the_defaults(etcd: EtcdClient) -> None:
    async with runtime_of(EtcdSource(etcd, namespace=NAMESPACE)) as runtime:
        assert runtime.config.services == {}
        assert runtime.version == 1  # the namespace's (empty) document was applied


async def test_a_value_that_is_not_utf8_is_rejected_not_replaced(etcd: EtcdClient) -> None:
    await etcd.put(ROOT + "services/m", service("http://m.test/m1"))
    await etcd.put(ROOT + "services/s", b'{"endpoints": ["http://s.test/s\xff"]}')
    source = EtcdSource(etcd, namespace=NAMESPACE)
    async with runtime_of(source) as runtime:
        assert set(runtime.config.services) == {"m"}  # at start
        assert "services/s" in source.status.rejected
        with capture_events() as logs:
            revision = await put(
                etcd, source, "services/m", b'{"endpoints": ["http://m.test/m2\xff"]}'
            )
        assert runtime.config.policy("m").endpoints == ("http://m.test/m1",)
        assert source.status.rejected["services/m"] == revision
        [event] = [e for e in logs if e["event"] == "healkit.etcd_document_rejected"]
        assert "not valid UTF-8" in event["reason"]
        assert runtime.rejections == 0  # undecodable: never submitted to the runtime


# --- the property: every valid document at its latest valid revision ----------------

KEYS = ("defaults", "services/a", "services/b", "services/c")
# Each document's validity is its own (no field depends on another document), so
# the expected configuration is well defined whatever the order of the writes.
VALID_ROUTING = st.fixed_dictionaries(
    {},
    optional={
        "eject_after": st.integers(0, 9),
        "failover": st.booleans(),
        "max_ejected_fraction": st.sampled_from([0.25, 0.5, 1]),
    },
)
INVALID_ROUTING = st.sampled_from(
    [
        {"eject_after": 2.0},
        {"eject_after": True},
        {"eject_after": "3"},
        {"failover": 1},
        {"failover": 0},
        {"max_ejected_fraction": True},
    ]
)


def documents(key: str, routing: st.SearchStrategy[dict[str, object]]) -> st.SearchStrategy[bytes]:
    if key == "defaults":
        return routing.map(lambda r: encode({"routing": r}))
    host = key.rsplit("/", 1)[1]
    endpoints = st.sampled_from(
        [[f"http://{host}1.test"], [f"http://{host}1.test", f"http://{host}2.test"]]
    )
    return st.builds(lambda e, r: encode({"endpoints": e, "routing": r}), endpoints, routing)


def writes(key: str) -> st.SearchStrategy[tuple[str, bytes | None, bool]]:
    """(key, value or None for a delete, whether the value is valid)."""
    host = key.rsplit("/", 1)[-1]
    invalid = (
        documents(key, INVALID_ROUTING)
        | st.just(b"{not json")
        | st.just(b'{"endpoints": ["http://x.test/\xff"]}')
        | st.just(encode({"endpoints": [f"http://{host}..test"]}))
        | st.just(encode({"endpoints": "http://x.test"}))
    )
    return (
        documents(key, VALID_ROUTING).map(lambda v: (key, v, True))
        | invalid.map(lambda v: (key, v, False))
        | st.just((key, None, True))
    )


transactions = st.lists(
    st.lists(
        st.sampled_from(KEYS).flatmap(writes), min_size=1, max_size=3, unique_by=lambda w: w[0]
    ),
    min_size=1,
    max_size=8,
)


def assemble(latest: dict[str, bytes]) -> dict[str, object]:
    services = {
        key.removeprefix("services/"): json.loads(v)
        for key, v in latest.items()
        if key != "defaults"
    }
    document: dict[str, object] = {"services": services}
    if "defaults" in latest:
        document["defaults"] = json.loads(latest["defaults"])
    return document


def policies(config: healkit.HealkitConfig) -> dict[str, object]:
    return {"*": config.defaults.as_document()} | {
        name: policy.as_document() for name, policy in config.services.items()
    }


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(initial=transactions, later=transactions)
async def test_the_applied_configuration_is_every_valid_document_at_its_latest_valid_revision(
    etcd: EtcdClient,
    initial: list[list[tuple[str, bytes | None, bool]]],
    later: list[list[tuple[str, bytes | None, bool]]],
) -> None:
    # The model. A starting instance has no history: it applies each key's
    # current document if valid. A watching instance keeps each key's latest
    # valid document.
    latest: dict[str, bytes] = {}
    present: set[str] = set()

    async def write(transaction: list[tuple[str, bytes | None, bool]], *, watching: bool) -> int:
        ops = [
            DeleteOp(key=(ROOT + key).encode())
            if value is None
            else PutOp(key=(ROOT + key).encode(), value=value)
            for key, value, _ in transaction
        ]
        for key, value, valid in transaction:
            if value is None:
                latest.pop(key, None)
                present.discard(key)
                continue
            present.add(key)
            if valid:
                latest[key] = value
            elif not watching:
                latest.pop(key, None)
        return (await etcd.txn(success=ops)).revision

    try:
        for transaction in initial:  # what a starting instance finds
            await write(transaction, watching=False)
        source = EtcdSource(etcd, namespace=NAMESPACE)
        runtime = runtime_of(source)
        try:
            await runtime.start()
        except ConfigError:
            # Only when documents exist and not one of them is valid.
            assert present
            assert not latest
            return
        assert latest or not present
        try:
            sections = runtime.sections
            assert policies(runtime.config) == policies(
                healkit.build_config(assemble(latest), sections)
            )
            previous = source.status.applied_revision
            for transaction in later:
                revision = await write(transaction, watching=True)
                await until(source, lambda s, r=revision: s.applied_revision >= r)
                expected = healkit.build_config(assemble(latest), sections)
                assert policies(runtime.config) == policies(expected)
                if revision == previous:
                    continue  # etcd made no revision (only deletes of absent keys)
                previous = revision
                rejected = {
                    key for key, value, valid in transaction if value is not None and not valid
                }
                assert {k for k, r in source.status.rejected.items() if r == revision} == rejected
        finally:
            await runtime.stop()
    finally:
        await etcd.delete(ROOT, prefix=True)
