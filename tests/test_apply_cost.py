"""Applying a document costs the event loop what changed, not the size of the document.

Structural checks, not timings: the plugins' look at every service runs in
``healkit_prepare`` (a worker thread for a source's document), and what runs on
the event loop (``healkit_configure`` and the plan refresh) reads a number of
service settings in proportion to the services that changed. Unchanged
services keep their policy object, so what plugins derived for it (a routing
plan, a compiled breaker policy) and the state they keep (breakers, health)
survive.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import healkit
from healkit._config.models import ServicePolicy
from healkit._routing import settings as _routing
from healkit.etcd import EtcdSource
from healkit.testing import EtcdServer, Fault, FaultServer

pytestmark = pytest.mark.anyio

SERVICES = 5_000


def document(services: int, *, changed: str | None = None, base: str = "") -> dict[str, Any]:
    """``services`` services with two endpoints and a fallback group; ``changed`` differs."""
    docs: dict[str, Any] = {
        f"svc{i}": {
            "endpoints": [f"http://h{i}.test:8080", f"http://h{i}b.test:8080"],
            "routing": {"fallback_groups": [[f"http://dr{i}.test:8080"]]},
            "timeout": {"attempt": 2.0},
        }
        for i in range(services)
    }
    if changed is not None:
        docs[changed] = {**docs[changed], "timeout": {"attempt": 3.0}}
    if base:
        docs["svc0"] = {"endpoints": [base], "breaker": {"consecutive_failures": 2}}
    return {"defaults": {"retry": {"attempts": 1}}, "services": docs}


def plain(services: int) -> dict[str, Any]:
    """``services`` services with one endpoint and no plugin sections."""
    return {"services": {f"svc{i}": {"endpoints": [f"http://h{i}.test"]} for i in range(services)}}


class _Reads:
    """Counts ``ServicePolicy.section`` calls made on the event loop's thread."""

    def __init__(self) -> None:
        self.on_loop = 0
        self.off_loop = 0
        self.loop_thread = threading.get_ident()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> _Reads:
    counter = _Reads()
    section = ServicePolicy.section

    def counted(self: ServicePolicy, which: healkit.ConfigSection[Any]) -> Any:
        if threading.get_ident() == counter.loop_thread:
            counter.on_loop += 1
        else:
            counter.off_loop += 1
        return section(self, which)

    monkeypatch.setattr(ServicePolicy, "section", counted)
    return counter


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch) -> list[ServicePolicy]:
    """The policies routing compiles a plan for, in order."""
    built: list[ServicePolicy] = []
    plan = _routing.RoutingPlan  # counted, not replaced

    def counted(policy: ServicePolicy, settings: _routing.RoutingSettings) -> Any:
        built.append(policy)
        return plan(policy, settings)

    monkeypatch.setattr(_routing, "RoutingPlan", counted)
    return built


async def test_a_one_service_change_is_configured_in_proportion_to_it(
    reads: _Reads, plans: list[ServicePolicy]
) -> None:
    runtime = healkit.Runtime()  # every first-party plugin, from the entry points
    assert await runtime.submit(document(SERVICES), origin="test") is None
    first = runtime.config
    # The first document: every service is looked at once per plugin, off the loop.
    assert reads.off_loop >= SERVICES
    assert reads.on_loop < 50
    assert plans == []  # plans are compiled on a service's first call

    reads.on_loop = reads.off_loop = 0
    assert await runtime.submit(document(SERVICES, changed="svc42"), origin="test") is None
    second = runtime.config
    changes = second.changes_since(first)
    assert changes is not None
    assert changes.services == {"svc42"}
    assert not changes.defaults
    kept = [name for name in second.services if second.services[name] is first.services[name]]
    assert len(kept) == SERVICES - 1
    assert second.services["svc42"] is not first.services["svc42"]
    assert reads.on_loop < 50  # was 5 plugins x 5,000 services
    assert plans == []


async def test_prepare_runs_off_the_event_loop_and_configure_on_it() -> None:
    seen: dict[str, int] = {}

    class Watcher:
        @healkit.hookimpl
        def healkit_prepare(self, config: healkit.HealkitConfig) -> None:
            del config
            seen["prepare"] = threading.get_ident()

        @healkit.hookimpl
        def healkit_configure(self, config: healkit.HealkitConfig) -> None:
            del config
            seen["configure"] = threading.get_ident()

    runtime = healkit.Runtime(plugins=[Watcher()], entry_points=False)
    assert await runtime.submit(plain(3), origin="test") is None
    assert seen["configure"] == threading.get_ident()
    assert seen["prepare"] != threading.get_ident()


async def test_a_failed_prepare_is_reported_and_the_document_still_applies() -> None:
    class Broken:
        healkit_name = "broken"

        @healkit.hookimpl
        def healkit_prepare(self) -> None:
            raise RuntimeError("boom")

    runtime = healkit.Runtime(plugins=[Broken()])
    failures = runtime.plugin_errors["broken"]  # the runtime's first (empty) document too
    assert await runtime.submit(document(3), origin="test") is None
    assert set(runtime.config.services) == {"svc0", "svc1", "svc2"}
    assert runtime.plugin_errors["broken"] == failures + 1


async def test_state_of_unchanged_services_survives_and_their_derived_state_is_kept(
    fault_server: FaultServer, plans: list[ServicePolicy]
) -> None:
    fault_server.script("/pay", Fault.reset(), Fault.reset())
    runtime = healkit.Runtime(config=document(SERVICES, base=fault_server.url))
    breaker: Any = runtime.plugin_manager.get_plugin("breaker")
    async with healkit.Client(runtime=runtime) as client:
        for _ in range(2):
            with pytest.raises(healkit.TransportError):
                await client.get("/pay", service="svc0")
        assert breaker.state("svc0", fault_server.url).value == "open"
        assert plans == [runtime.config.services["svc0"]]
        before = runtime.config
        changed = document(SERVICES, base=fault_server.url, changed="svc7")
        assert await runtime.submit(changed, origin="test") is None
        assert runtime.config.services["svc0"] is before.services["svc0"]
        assert breaker.state("svc0", fault_server.url).value == "open"
        with pytest.raises(healkit.CircuitOpenError):
            await client.get("/pay", service="svc0")
        assert len(plans) == 1  # the kept policy kept its plan


async def test_register_derives_everything_afresh() -> None:
    runtime = healkit.Runtime(config=plain(3), entry_points=False)
    before = runtime.config

    class Late:
        healkit_name = "late"

    runtime.register(Late())
    assert runtime.config.changes_since(before) is None
    assert all(runtime.config.services[n] is not before.services[n] for n in before.services)


def test_build_config_keeps_equal_policies_and_records_changes() -> None:
    first = healkit.build_config(plain(4))
    changed = plain(4)
    changed["services"]["svc1"]["max_redirects"] = 3
    second = healkit.build_config(changed, previous=first)
    changes = second.changes_since(first)
    assert changes is not None
    assert changes.services == {"svc1"}
    assert not changes.defaults
    assert second.services["svc0"] is first.services["svc0"]
    third = healkit.build_config({**plain(3), "state": {"max_unconfigured": 7}}, previous=second)
    changes = third.changes_since(second)
    assert changes is not None
    assert changes.services == {"svc1", "svc3"}  # svc1 changed back, svc3 removed
    assert changes.state
    assert third.changes_since(first) is None  # not built from it
    assert third.changes_since(None) is None


async def test_the_etcd_snapshot_file_is_written_off_the_event_loop(
    etcd_server: EtcdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    fsync = os.fsync

    def recorded(fd: int) -> None:
        synced.append(threading.get_ident())
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recorded)
    snapshot = tmp_path / "healkit-etcd.json"
    async with etcd_server.client() as etcd:
        await etcd.put(
            "/healkit/test/services/a", json.dumps(plain(1)["services"]["svc0"]).encode()
        )
        source = EtcdSource(etcd, namespace="test", snapshot_path=snapshot)
        async with healkit.Runtime(config=source, entry_points=False) as runtime:
            assert set(runtime.config.services) == {"a"}
    assert synced
    assert threading.get_ident() not in synced
    assert set(json.loads(snapshot.read_text())["documents"]) == {"services/a"}
