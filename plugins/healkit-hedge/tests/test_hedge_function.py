"""Hedges of decorated functions (``@healkit.resilient``)."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from hedge_support import DELAY, SERVICE, Outcomes, client, hedge_fires

import healkit
from healkit.testing import FaultServer, ManualClock

pytestmark = pytest.mark.anyio


async def test_an_idempotent_function_is_hedged_and_the_loser_coroutine_cancelled(
    fault_server: FaultServer,
) -> None:
    clock = ManualClock(auto_advance=False)
    started = asyncio.Event()
    loser_cancelled = asyncio.Event()
    runs: list[int] = []

    @healkit.resilient(service=SERVICE, idempotent=True)
    async def lookup(key: str) -> str:
        runs.append(len(runs) + 1)
        if len(runs) == 1:
            started.set()
            try:
                await asyncio.Event().wait()  # the first run never answers
            except asyncio.CancelledError:
                loser_cancelled.set()
                raise
        return f"value of {key}"

    outcomes = Outcomes()
    async with client(fault_server.url, outcomes, clock=clock, delay=DELAY):
        value = await hedge_fires(clock, lookup("k"), before=started.wait())
    assert value == "value of k"
    assert runs == [1, 2]
    assert loser_cancelled.is_set()  # cancelled once the hedge answered, not left to run
    (outcome,) = outcomes.seen
    assert outcome.winner == 2
    assert [(a.hedge, a.cancelled) for a in outcome.attempts] == [(False, True), (True, False)]


async def test_a_function_not_declared_idempotent_is_never_hedged(
    fault_server: FaultServer,
) -> None:
    clock = ManualClock(auto_advance=False)
    started = asyncio.Event()

    @healkit.resilient(service=SERVICE)
    async def charge() -> str:
        started.set()
        await asyncio.Event().wait()
        return "charged"  # pragma: no cover - never answers

    async with client(fault_server.url, clock=clock, delay=DELAY):
        task = asyncio.ensure_future(charge())
        with anyio.fail_after(10):
            await started.wait()
            await asyncio.sleep(0)
            assert clock.sleeps == []  # no hedge timer
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
