"""``healkit_admit``: a plugin may make an attempt wait for room, or refuse it, before it is sent.

Against a real loopback upstream: an awaitable admission holds the attempt
until it resolves (nothing is sent before), the attempt's clock starts when
the wait ends, a refusal is a failed attempt seen by ``healkit_on_error`` and
the fallbacks, and an observer cannot refuse.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest

import healkit
from healkit.testing import FaultServer, ManualClock
from tests.plugins import Recorder

pytestmark = pytest.mark.anyio


class Gate:
    """Admits each attempt once ``opened`` is set; the wait moves the manual clock on."""

    healkit_name = "gate"

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.opened = asyncio.Event()
        self.waiting = asyncio.Event()

    @healkit.hookimpl
    def healkit_admit(self) -> object:
        return self._wait()

    async def _wait(self) -> None:
        self.waiting.set()
        await self.opened.wait()
        self.clock.advance(5.0)  # the time spent waiting


class Refuse:
    """Refuses every attempt with an ``OverloadError``."""

    healkit_name = "refuse"

    def __init__(self, *, observer: bool = False) -> None:
        self.healkit_observer = observer

    @healkit.hookimpl
    def healkit_admit(self, call: healkit.CallContext) -> healkit.HealkitError:
        return healkit.ConcurrencyLimitError("full", service=call.service)


async def test_an_awaitable_admission_holds_the_attempt_until_it_resolves(
    fault_server: FaultServer,
) -> None:
    clock = ManualClock()
    gate = Gate(clock)
    async with healkit.Client(plugins=[gate], entry_points=False, clock=clock) as client:
        started = clock.now()
        task = asyncio.create_task(client.get(fault_server.url + "/x"))
        with anyio.fail_after(10):  # a guard against a hang, not a timing assertion
            await gate.waiting.wait()
        assert fault_server.hits() == 0
        gate.opened.set()
        response = await task
    assert response.status == 200
    assert fault_server.hits() == 1
    (attempt,) = response.outcome.attempts
    assert attempt.started == started + 5.0  # the wait is not the attempt's time


async def test_a_refusal_is_a_failed_attempt_and_nothing_is_sent(
    fault_server: FaultServer,
) -> None:
    recorder = Recorder()
    async with healkit.Client(plugins=[recorder, Refuse()], entry_points=False) as client:
        with pytest.raises(healkit.ConcurrencyLimitError) as caught:
            await client.get(fault_server.url + "/x")
    assert fault_server.hits() == 0
    assert [a.error for a in caught.value.attempts] == ["ConcurrencyLimitError"]
    assert ("on_error", "ConcurrencyLimitError") in recorder.events


async def test_an_observer_cannot_refuse(fault_server: FaultServer) -> None:
    async with healkit.Client(plugins=[Refuse(observer=True)], entry_points=False) as client:
        response = await client.get(fault_server.url + "/x")
    assert response.status == 200
