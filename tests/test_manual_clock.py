"""ManualClock: instant sleeps by default; sleepers that wait for advance() on request."""

from __future__ import annotations

import anyio
import pytest

from healkit.testing import ManualClock

pytestmark = pytest.mark.anyio


async def test_by_default_a_sleep_returns_at_once_and_moves_time_on() -> None:
    clock = ManualClock(start=10.0)
    await clock.sleep(2.5)
    await clock.sleep(-1.0)
    assert clock.now() == 12.5
    assert clock.sleeps == [2.5, -1.0]
    assert clock.sleeping == 0


async def test_without_auto_advance_a_sleeper_wakes_when_time_reaches_its_end() -> None:
    clock = ManualClock(start=0.0, auto_advance=False)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper, "short", 1.0)
            tg.start_soon(sleeper, "long", 3.0)
            await clock.wait_for_sleepers(2)
            clock.advance(0.5)
            await anyio.wait_all_tasks_blocked()
            assert (woke, clock.sleeping) == ([], 2)  # nobody's time came
            clock.advance(0.5)
            await clock.wait_for_sleepers(1)
            await anyio.wait_all_tasks_blocked()
            assert (woke, clock.sleeping) == ([("short", 1.0)], 1)
            clock.advance(5.0)  # past the end: wakes, and the time stays where it was moved
    assert woke == [("short", 1.0), ("long", 6.0)]
    assert clock.sleeps == [1.0, 3.0]


async def test_without_auto_advance_a_sleep_of_nothing_returns_at_once() -> None:
    clock = ManualClock(start=0.0, auto_advance=False)
    with anyio.fail_after(10):
        await clock.sleep(0)
        await clock.sleep(-2.0)
    assert (clock.now(), clock.sleeping) == (0.0, 0)


async def test_a_cancelled_sleeper_is_no_longer_counted() -> None:
    clock = ManualClock(auto_advance=False)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(clock.sleep, 60.0)
            await clock.wait_for_sleepers()
            tg.cancel_scope.cancel()
    assert clock.sleeping == 0
    clock.advance(60.0)  # nothing left to wake


async def test_waiting_for_sleepers_needs_a_clock_that_waits() -> None:
    with pytest.raises(RuntimeError, match="auto_advance=False"):
        await ManualClock().wait_for_sleepers()


def test_time_does_not_go_backwards() -> None:
    with pytest.raises(ValueError, match="backwards"):
        ManualClock().advance(-1.0)
