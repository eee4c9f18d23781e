"""Health probes are scheduled per endpoint: a slow probe holds up nothing else.

Each endpoint's next probe is due one ``interval`` after its last one ended,
and runs on its own; a probe still running is not started again, one whose
endpoint the configuration dropped is cancelled, and all of them end with the
runtime. Real upstreams on loopback (one that holds each request until the test
answers it), a :class:`ManualClock` that moves only when the test says so.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

import healkit
from healkit.testing import Fault, FaultServer, ManualClock
from tests.hold_support import GUARD, Upstream
from tests.probe_support import Probes

pytestmark = pytest.mark.anyio

FAST = {"path": "/probe", "interval": 1.0}
# Virtual intervals; the real time limit (the core's 30 s read limit) is far off.
SLOW = {"path": "/probe", "interval": 60.0, "timeout": 60.0}


def two_services(fast: str, slow: str) -> dict[str, Any]:
    return {
        "services": {
            "fast": {"endpoints": [fast], "routing": {"probe": FAST}},
            "slow": {"endpoints": [slow], "routing": {"probe": SLOW}},
        }
    }


def client(config: dict[str, Any], clock: ManualClock, *plugins: object) -> healkit.Client:
    return healkit.Client(config=config, plugins=plugins, entry_points=False, clock=clock)


async def test_a_probe_still_running_is_not_started_again(fault_server: FaultServer) -> None:
    clock = ManualClock(auto_advance=False)
    probes = Probes(clock)
    async with Upstream() as slow, client(two_services(fault_server.url, slow.url), clock, probes):
        held = await slow.wait_for(1)
        await probes.wait_for(fault_server.url, 1)
        for _ in range(70):  # past the slow endpoint's interval; 70 of the fast one's
            await probes.step(1.0, fault_server.url)
        assert len(slow.requests) == 1  # still running: not started again
        assert not held.dropped.is_set()
        held.reply(200)
        await probes.wait_for(slow.url, 1)
        ended = clock.now()
        for _ in range(60):
            await probes.step(1.0, fault_server.url)
        (await slow.wait_for(2)).reply(200)  # due now
        await probes.wait_for(slow.url, 2)
    # The next probe was due one interval after the slow one ended, not after it began.
    assert probes.of(slow.url) == [(ended, True), (ended + 60.0, True)]
    assert len(probes.of(fault_server.url)) == 1 + 70 + 60


async def test_switching_back_waits_for_no_other_endpoints_probe(
    fault_server: FaultServer,
) -> None:
    # The fallback's probe hangs; the primary's probes still bring it back on time.
    fault_server.script("/probe", Fault.status(503))  # then healthy again
    clock = ManualClock(auto_advance=False)
    probes = Probes(clock)
    probe = {**SLOW, "unhealthy_threshold": 1, "healthy_threshold": 1}
    async with Upstream() as hanging:
        routing = {"fallback_groups": [[hanging.url]], "probe": probe}
        config = {"services": {"orders": {"endpoints": [fault_server.url], "routing": routing}}}
        async with client(config, clock, probes) as c:
            held = await hanging.wait_for(1)
            await probes.wait_for(fault_server.url, 1)
            primary, _ = healkit.endpoint_status(c.runtime, "orders")
            assert primary.down
            await probes.step(60.0, fault_server.url)
            primary, _ = healkit.endpoint_status(c.runtime, "orders")
            assert not primary.down
            assert not held.answer.done()  # the fallback's probe is still waiting
            response = await c.get("/x", service="orders")
    assert response.outcome is not None
    assert (response.outcome.endpoint, response.outcome.path) == (fault_server.url, "primary")


async def test_a_probe_of_an_endpoint_the_configuration_dropped_is_cancelled(
    fault_server: FaultServer,
) -> None:
    clock = ManualClock(auto_advance=False)
    probes = Probes(clock)
    async with Upstream() as slow:
        config = two_services(fault_server.url, slow.url)
        async with client(config, clock, probes) as c:
            held = await slow.wait_for(1)
            await probes.wait_for(fault_server.url, 1)
            del config["services"]["slow"]
            c.runtime.apply(config)
            with anyio.fail_after(GUARD):
                await held.dropped.wait()  # the client let go of it
            await probes.step(1.0, fault_server.url)  # the others go on
            assert probes.of(slow.url) == []  # it counted nothing
            assert healkit.endpoint_status(c.runtime, "slow") == ()


async def test_probes_in_flight_end_with_the_runtime(fault_server: FaultServer) -> None:
    clock = ManualClock(auto_advance=False)
    async with Upstream() as slow:
        async with client(two_services(fault_server.url, slow.url), clock) as c:
            held = await slow.wait_for(1)
            runtime = c.runtime
        with anyio.fail_after(GUARD):
            await held.dropped.wait()
    assert runtime.background_tasks == frozenset()
    coroutines = [task.get_coro() for task in asyncio.all_tasks()]
    assert not [c for c in coroutines if "Prober" in getattr(c, "__qualname__", "")]
