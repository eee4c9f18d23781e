"""Red team: hedging under ``defaults`` for a flood of hosts nobody configured, and reloads.

Every host called by absolute URL is a service of its own; with hedging under
``defaults`` each gets a latency estimate and a hedge budget. Their number is
bounded by ``state.max_unconfigured`` whatever the callers do, a reload that
lowers the bound applies at once, and one that turns hedging off drops them.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from hedge_support import Events

import healkit
from healkit.testing import FaultServer, LoopbackResolver, ManualClock
from healkit_hedge import HedgePlugin

pytestmark = pytest.mark.anyio


def hedging_everywhere(max_unconfigured: int, *, enabled: bool = True) -> dict[str, Any]:
    return {
        "defaults": {"hedge": {"enabled": enabled, "delay": 1.0}},
        "state": {"max_unconfigured": max_unconfigured},
    }


async def test_the_state_of_a_flood_of_hosts_stays_within_its_bounds(
    fault_server: FaultServer,
) -> None:
    plugin, events = HedgePlugin(), Events()
    connector = aiohttp.TCPConnector(resolver=LoopbackResolver(), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        healkit.Client(
            config=hedging_everywhere(5),
            plugins=[plugin, events],
            entry_points=False,
            clock=ManualClock(auto_advance=False),
            session=session,
        ) as c,
    ):
        for host in range(50):
            response = await c.get(f"http://host-{host}.test:{fault_server.port}/x")
            assert response.status == 200
        assert len(plugin.unconfigured_services) == 5
        assert len(plugin.status()) == 5
        evicted = [e for e in events.seen if isinstance(e, healkit.StateEvicted)]
        assert len(evicted) == 45
        assert {e.owner for e in evicted} == {"hedge"}

        c.runtime.apply(hedging_everywhere(2))  # a lower bound applies at once
        assert len(plugin.unconfigured_services) == 2
        c.runtime.apply(hedging_everywhere(2, enabled=False))  # hedging off: nothing kept
        assert len(plugin.unconfigured_services) == 0
        assert plugin.status() == []
        await c.get(f"http://host-99.test:{fault_server.port}/x")
        assert len(plugin.unconfigured_services) == 0  # and none made while it is off
    assert fault_server.hits("/x") == 51
