"""Red team: a reload with hedging on for thousands of services costs what changed.

Structural, not a timing (as tests/test_apply_cost.py checks the core): the
number of ``ServicePolicy.section`` reads on the event loop's thread while a
one-service change is applied. Old code looked at the state of every service
it kept (10,000 services hedging under ``defaults``: about 20 ms of the event
loop on each reload, so an etcd write for one service stalled every call).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import healkit
from healkit._config.models import ServicePolicy
from healkit_hedge import HedgePlugin

pytestmark = pytest.mark.anyio

SERVICES = 2_000


def document(*, changed: str | None = None, ratio: float = 0.1) -> dict[str, Any]:
    services: dict[str, Any] = {
        f"svc{i}": {"endpoints": [f"http://h{i}.test:8080"]} for i in range(SERVICES)
    }
    if changed is not None:
        hedge = {"enabled": True, "delay": 1.0, "budget_ratio": 0.5}
        services[changed] = {**services[changed], "hedge": hedge}
    return {
        "defaults": {"hedge": {"enabled": True, "delay": 1.0, "budget_ratio": ratio}},
        "services": services,
    }


class Reads:
    """Counts ``ServicePolicy.section`` calls made on the event loop's thread."""

    def __init__(self) -> None:
        self.on_loop = 0
        self.loop_thread = threading.get_ident()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    counter = Reads()
    section = ServicePolicy.section

    def counted(self: ServicePolicy, which: healkit.ConfigSection[Any]) -> Any:
        if threading.get_ident() == counter.loop_thread:
            counter.on_loop += 1
        return section(self, which)

    monkeypatch.setattr(ServicePolicy, "section", counted)
    return counter


async def test_a_one_service_change_looks_at_that_service_only(reads: Reads) -> None:
    plugin = HedgePlugin()
    runtime = healkit.Runtime(plugins=[plugin], entry_points=False)
    assert await runtime.submit(document(), origin="test") is None

    async def job() -> str:
        return "done"

    for i in range(SERVICES):  # every service called once: each has its hedging state
        assert await healkit.resilient(service=f"svc{i}", runtime=runtime)(job)() == "done"
    assert len(plugin.status()) == SERVICES
    kept = {s.service: s for s in plugin.status()}

    reads.on_loop = 0
    assert await runtime.submit(document(changed="svc42"), origin="test") is None
    assert reads.on_loop < 50  # was one read per service with state: 2,000
    statuses = {s.service: s for s in plugin.status()}
    assert len(statuses) == SERVICES
    assert statuses["svc7"].window_requests == kept["svc7"].window_requests == 1
    assert statuses["svc42"].window_requests == 1  # its new budget took the window over

    # A change of the defaults concerns every service: each is looked at again.
    reads.on_loop = 0
    assert await runtime.submit(document(changed="svc42", ratio=0.2), origin="test") is None
    assert reads.on_loop >= SERVICES - 1
    assert len(plugin.status()) == SERVICES
