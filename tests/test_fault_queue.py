"""FaultServer's capacity with a queue: a saturated upstream serves C at once and queues the rest.

Before, a capacity could only shed (an immediate overflow answer): nothing
could play an upstream whose latency grows with its line, the overload that an
adaptive concurrency limit exists for (``healkit demo``'s overload scene).
"""

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest

from healkit._simulate import BUILTIN_SCENARIOS, FaultSpec, Upstream, figures, simulate_service
from healkit.testing import Fault, FaultServer

GUARD = 5.0  # guards against a hang, never a timing assertion


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as sess:
        yield sess


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        await response.read()
        return response.status


async def wait_until(server: FaultServer, *, hits: int, queued: int) -> None:
    """Wait for ``hits`` recorded requests and ``queued`` in line (a queued one is not recorded)."""
    async with asyncio.timeout(GUARD):
        await server.wait_for_hits(hits)
        await server.wait_for_queued(queued)


@pytest.mark.anyio
async def test_requests_beyond_the_capacity_wait_in_line_and_the_rest_are_shed(
    session: aiohttp.ClientSession,
) -> None:
    async with FaultServer() as server:
        server.script("/busy", then=Fault.blackhole())
        server.script("/a", then=Fault.status(201))
        server.script("/b", then=Fault.status(202))
        server.set_capacity(2, queue=2, overflow=Fault.status(429))
        busy = [asyncio.ensure_future(status_of(session, server.url + "/busy")) for _ in range(2)]
        await wait_until(server, hits=2, queued=0)
        first = asyncio.ensure_future(status_of(session, server.url + "/a"))
        await wait_until(server, hits=2, queued=1)
        second = asyncio.ensure_future(status_of(session, server.url + "/b"))
        await wait_until(server, hits=2, queued=2)
        # The line is full: the next request is shed at once, and recorded as such.
        assert await status_of(session, server.url + "/a") == 429
        assert server.requests[-1].fault == Fault.status(429)
        assert (server.active, server.queued) == (4, 2)
        # A slot frees: the request waiting longest gets it and its own fault; when it
        # ends, the next one gets the slot.
        busy[0].cancel()
        async with asyncio.timeout(GUARD):
            assert await first == 201
            assert await second == 202
        assert (server.active, server.queued) == (1, 0)  # the other /busy still hangs
        busy[1].cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        # A queued request is recorded when it leaves the line, with its arrival time.
        recorded = {r.path: r for r in server.requests}
        assert recorded["/a"].arrived_at < recorded["/b"].arrived_at
        assert [r.path for r in server.requests] == ["/busy", "/busy", "/a", "/a", "/b"]


@pytest.mark.anyio
async def test_a_client_that_gives_up_leaves_the_line(session: aiohttp.ClientSession) -> None:
    async with FaultServer() as server:
        server.script("/busy", Fault.blackhole(), then=Fault.ok())
        server.script("/x", Fault.status(201), then=Fault.status(202))
        server.set_capacity(1, queue=1)
        busy = asyncio.ensure_future(status_of(session, server.url + "/busy"))
        await wait_until(server, hits=1, queued=0)
        leaver = asyncio.ensure_future(status_of(session, server.url + "/x"))
        await wait_until(server, hits=1, queued=1)
        leaver.cancel()
        busy.cancel()
        await asyncio.gather(busy, leaver, return_exceptions=True)
        async with asyncio.timeout(GUARD):
            await server.wait_for_idle()
        # It left without a slot and without using up its path's script.
        assert (server.active, server.queued, server.hits("/x")) == (0, 0, 0)
        assert await status_of(session, server.url + "/x") == 201


@pytest.mark.anyio
async def test_lifting_the_capacity_lets_the_line_go(session: aiohttp.ClientSession) -> None:
    async with FaultServer() as server:
        server.script("/busy", then=Fault.blackhole())
        server.set_capacity(1, queue=3)
        busy = asyncio.ensure_future(status_of(session, server.url + "/busy"))
        await wait_until(server, hits=1, queued=0)
        waiting = [asyncio.ensure_future(status_of(session, server.url + "/x")) for _ in range(3)]
        await wait_until(server, hits=1, queued=3)
        server.set_capacity(None)
        async with asyncio.timeout(GUARD):
            assert await asyncio.gather(*waiting) == [200, 200, 200]
        busy.cancel()
        await asyncio.gather(busy, return_exceptions=True)
    with pytest.raises(ValueError, match="queue must be at least 0"):
        server.set_capacity(1, queue=-1)


@pytest.mark.anyio
async def test_a_scenario_upstream_with_a_queue(session: aiohttp.ClientSession) -> None:
    upstream = Upstream(faults=(FaultSpec(kind="hang"),), capacity=1, queue=1)
    async with FaultServer() as server:
        upstream.apply(server, seed=1, probe_path=None)
        hung = [asyncio.ensure_future(status_of(session, server.url + "/x")) for _ in range(2)]
        await wait_until(server, hits=1, queued=1)
        assert await status_of(session, server.url + "/x") == 503  # the line is full
        for task in hung:
            task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)
    with pytest.raises(ValueError, match="a queue needs a capacity"):
        Upstream(queue=4)


def test_simulate_an_upstream_that_queues_instead_of_shedding() -> None:
    """The built-in overload (10 at once, 150 ms, 15 wanted) with a line: slower, not failing."""
    overload = BUILTIN_SCENARIOS["overload"]
    shedding = overload.phases[0].primary
    queueing = msgspec.structs.replace(shedding, queue=1000)
    scenario = msgspec.structs.replace(
        overload, phases=(msgspec.structs.replace(overload.phases[0], primary=queueing),)
    )
    document = {
        "services": {
            "pay": {
                "endpoints": ["https://pay.internal:8443"],
                "retry": {"attempts": 1},
                "breaker": {"mode": "disabled"},
                "timeout": {"attempt": 30.0, "read": 30.0, "deadline": 60.0},
            }
        }
    }
    shed = figures(simulate_service(document, "pay", {"shed": overload})[0])
    queued = figures(simulate_service(document, "pay", {"queued": scenario})[0])
    latency = shedding.faults[0].latency
    assert shed.success_rate < 1.0  # the calls beyond 10 at once were answered 503
    assert shed.max == pytest.approx(latency, abs=0.01)
    # In line, every call is served, later and later: 15 wanted a second for 10 served.
    assert queued.success_rate == 1.0
    assert queued.max > 2 * latency, queued.max
