"""FaultServer's default mixes (cycled, seeded random) and its capacity."""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest

from healkit.testing import Fault, FaultMix, FaultServer

GUARD = 5.0  # guards against a hang, never a timing assertion


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as sess:
        yield sess


async def _statuses(session: aiohttp.ClientSession, url: str, count: int) -> list[int]:
    statuses = []
    for _ in range(count):
        async with session.get(url) as response:
            statuses.append(response.status)
    return statuses


@pytest.mark.anyio
async def test_a_cycle_answers_in_order_and_starts_over(session: aiohttp.ClientSession) -> None:
    async with FaultServer() as server:
        server.set_default(FaultMix.cycle(Fault.status(503), Fault.ok(), Fault.status(429)))
        assert await _statuses(session, server.url + "/x", 7) == [503, 200, 429] * 2 + [503]
        server.set_default(FaultMix.cycle(Fault.status(502), Fault.ok()))  # starts afresh
        assert await _statuses(session, server.url + "/y", 3) == [502, 200, 502]


@pytest.mark.anyio
async def test_a_random_mix_is_weighted_and_repeats_with_its_seed(
    session: aiohttp.ClientSession,
) -> None:
    mix = FaultMix.random([(Fault.ok(), 3.0), (Fault.status(503), 1.0)], seed=11)
    runs = []
    async with FaultServer() as server:
        for _ in range(2):
            server.set_default(mix)
            runs.append(await _statuses(session, server.url + "/x", 400))
    assert runs[0] == runs[1]
    counts = Counter(runs[0])
    assert set(counts) == {200, 503}
    # 3:1 weights over 400 draws: 100 expected 503s; 60..140 is over 4 standard deviations.
    assert 60 < counts[503] < 140
    with pytest.raises(ValueError, match="weights"):
        FaultMix.random([(Fault.ok(), 0.0)], seed=1)
    with pytest.raises(ValueError, match="at least one fault"):
        FaultMix.cycle()


@pytest.mark.anyio
async def test_capacity_sheds_requests_beyond_the_limit(session: aiohttp.ClientSession) -> None:
    async with FaultServer() as server:
        server.set_default(Fault.blackhole())
        server.script("/free", then=Fault.ok())
        server.set_capacity(2, overflow=Fault.status(429))
        hung = [asyncio.ensure_future(session.get(server.url + "/hang")) for _ in range(2)]
        async with asyncio.timeout(GUARD):
            await server.wait_for_hits(2)
        # Two requests hang: a third is shed at once, whatever its path's script says.
        assert await _statuses(session, server.url + "/free", 1) == [429]
        assert server.hits("/free") == 1
        assert server.requests[-1].fault == Fault.status(429)
        server.set_capacity(None)
        assert await _statuses(session, server.url + "/free", 1) == [200]
        for task in hung:
            task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)
    with pytest.raises(ValueError, match="at least 1"):
        server.set_capacity(0)


@pytest.mark.anyio
async def test_max_recorded_bounds_the_requests_kept_not_the_hits(
    session: aiohttp.ClientSession,
) -> None:
    async with FaultServer(max_recorded=2) as server:
        server.set_default(FaultMix.cycle(Fault.status(201), Fault.status(202), Fault.ok()))
        assert await _statuses(session, server.url + "/x", 5) == [201, 202, 200, 201, 202]
        assert server.hits() == server.hits("/x") == 5
        assert [r.fault.status_code for r in server.requests] == [201, 202]
    with pytest.raises(ValueError, match="max_recorded"):
        FaultServer(max_recorded=-1)
