"""Attempt timers share ticks but behave like asyncio.timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from healkit._timer import TICK, TimerWheels

pytestmark = pytest.mark.anyio


class RecordingLoop(asyncio.SelectorEventLoop):
    """A real event loop that also notes the moment of every ``call_at``."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduled: list[float] = []

    def call_at(
        self, when: float, callback: Callable[..., object], *args: object, **kwargs: Any
    ) -> asyncio.TimerHandle:
        self.scheduled.append(when)
        return super().call_at(when, callback, *args, **kwargs)


def test_a_timer_cancels_after_its_limit_never_before() -> None:
    limit = 0.05

    async def attempt() -> tuple[float, float, float, bool]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, RecordingLoop)
        wheels = TimerWheels()
        before = loop.time()
        timer = wheels.arm(limit)
        after = loop.time()
        (when,) = loop.scheduled[-1:]
        expired = False
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            expired = timer.expired()
        finally:
            timer.disarm()
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        return before, after, when, expired

    with asyncio.Runner(loop_factory=RecordingLoop) as runner:
        before, after, when, expired = runner.run(attempt())
    assert expired
    # The wheel fires on the first tick at or after the limit: never early, at most a tick late.
    assert before + limit <= when < after + limit + TICK
    assert round(when / TICK, 6).is_integer()


async def test_a_disarmed_timer_never_fires() -> None:
    wheels = TimerWheels()
    timers = [wheels.arm(0.02) for _ in range(100)]
    for timer in timers:
        timer.disarm()
    await asyncio.sleep(0.05)  # past the tick: nothing cancels this sleep


async def test_an_outside_cancellation_is_not_mistaken_for_the_timer() -> None:
    wheels = TimerWheels()
    timer_seen: list[bool] = []

    async def attempt() -> None:
        timer = wheels.arm(0.02)
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            timer_seen.append(timer.expired())
            raise
        finally:
            timer.disarm()

    task = asyncio.create_task(attempt())
    await asyncio.sleep(0)
    task.cancel()  # the caller cancels before the timer would fire
    with pytest.raises(asyncio.CancelledError):
        await task
    assert timer_seen == [False]


async def test_a_swallowed_timer_cancellation_is_undone() -> None:
    wheels = TimerWheels()
    task = asyncio.current_task()
    assert task is not None
    timer = wheels.arm(0.01)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(1)  # code under the timer swallows the cancellation
    timer.disarm()
    assert task.cancelling() == 0
    await asyncio.sleep(0)  # and the task is not cancelled again later


async def test_timers_in_one_tick_share_one_loop_callback() -> None:
    wheels = TimerWheels()
    loop = asyncio.get_running_loop()
    before = len(loop._scheduled)  # type: ignore[attr-defined]
    timers = [wheels.arm(5.0) for _ in range(50)]
    assert len(loop._scheduled) - before <= 2  # type: ignore[attr-defined]
    for timer in timers:
        timer.disarm()


async def test_each_timer_cancels_the_task_that_armed_it() -> None:
    wheels = TimerWheels()  # after the first arm, later ones find their task by the wheel's loop
    outcomes: dict[str, bool] = {}

    async def attempt(name: str, limit: float, wait: float) -> None:
        timer = wheels.arm(limit)
        try:
            await asyncio.sleep(wait)
            outcomes[name] = False
        except asyncio.CancelledError:
            outcomes[name] = timer.expired()
        finally:
            timer.disarm()

    await asyncio.gather(
        attempt("long", 5.0, 0.1), attempt("short", 0.02, 1.0), attempt("other", 5.0, 0.1)
    )
    assert outcomes == {"long": False, "short": True, "other": False}


def test_one_set_of_wheels_serves_loops_one_after_another_and_in_other_threads() -> None:
    wheels = TimerWheels()

    async def armed_task() -> asyncio.Task[object]:
        timer = wheels.arm(5.0)
        try:
            return timer._task  # the task the timer would cancel
        finally:
            timer.disarm()

    async def check() -> None:
        assert await asyncio.create_task(armed_task()) is not asyncio.current_task()
        assert await armed_task() is asyncio.current_task()

    async def alongside_a_thread() -> None:
        await check()  # this loop's wheel is the last one used
        await asyncio.to_thread(asyncio.run, check())  # a loop in another thread, meanwhile
        await check()

    asyncio.run(check())
    asyncio.run(alongside_a_thread())  # a new loop: the last wheel's loop is closed
