"""Attempt timers: cancel the running task when an attempt's time is up.

``asyncio.timeout`` costs about 4.5 µs per use and a bare ``loop.call_at``
about 1.6 µs; with one timer per attempt that is most of the pipeline's cost.
So attempts share timers: deadlines are rounded up to a 10 ms tick, and all
the attempts that end in the same tick hang on one ``loop.call_at`` (a hashed
timing wheel, as in Netty or Finagle). Arming and disarming an attempt is then
a set insert and a set removal. An attempt limit fires at most 10 ms late,
never early.

The cancellation follows ``asyncio.timeout``'s rule: it is the timer's only if
``uncancel()`` brings the task back to the cancel count it had when armed, so
an outside cancellation arriving at the same moment still propagates.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
import weakref
from collections.abc import Callable
from typing import Final, final

__all__ = ["TICK", "AttemptTimer", "TimerWheels"]

TICK: Final = 0.01
"""Resolution of attempt timers, in seconds."""


@final
class AttemptTimer:
    """One armed attempt limit on the current task."""

    __slots__ = ("_bucket", "_cancelling", "_fired", "_task", "_undone")

    def __init__(self, task: asyncio.Task[object], bucket: set[AttemptTimer]) -> None:
        self._task = task
        self._cancelling = task.cancelling()
        self._bucket = bucket
        self._fired = False
        self._undone = False
        bucket.add(self)

    def fire(self) -> None:
        """Cancel the task (called by the wheel when the tick comes)."""
        self._fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """Whether this timer cancelled the task (and nothing else did too).

        Call it once, when the attempt ended with ``CancelledError``.
        """
        if not self._fired:
            return False
        self._undone = True
        return self._task.uncancel() <= self._cancelling

    def disarm(self) -> None:
        """Stop the timer; undo a cancellation that fired but was swallowed."""
        self._bucket.discard(self)
        if self._fired and not self._undone:
            self._task.uncancel()


@final
class _Wheel:
    """The timer buckets of one event loop, keyed by tick number.

    :meth:`TimerWheels.arm` reads and fills the buckets itself (one frame less
    per attempt); the wheel fires them.
    """

    __slots__ = ("buckets", "context", "loop", "time")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buckets: dict[int, set[AttemptTimer]] = {}
        # The context ticks run in: an empty one of this loop's. call_at would
        # otherwise copy the context of the attempt that armed the tick first and
        # keep all its context variables reach (the call, its errors and their
        # frames) alive until the tick: up to the attempt's time limit after the call.
        self.context = contextvars.Context()
        # asyncio's own loops tell time with time.monotonic(): read it without
        # the method's frame. Any other loop (uvloop) is asked, as call_at requires.
        base = getattr(loop.time, "__func__", None) is asyncio.BaseEventLoop.time
        self.time: Callable[[], float] = time.monotonic if base else loop.time

    def fire(self, tick: int) -> None:
        """Fire every timer of ``tick`` (called by the loop when the tick comes)."""
        for timer in self.buckets.pop(tick, ()):
            timer.fire()


@final
class TimerWheels:
    """The wheels of a runtime, one per event loop it runs calls on."""

    __slots__ = ("_last", "_wheels")

    def __init__(self) -> None:
        self._wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wheel] = (
            weakref.WeakKeyDictionary()
        )
        self._last: _Wheel | None = None

    def arm(self, seconds: float) -> AttemptTimer:
        """Arm a limit of ``seconds`` on the current task."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - healkit always runs inside a task
            raise RuntimeError("healkit calls must run inside an asyncio task")
        wheel = self._wheel(task.get_loop())
        tick = math.ceil((wheel.time() + seconds) / TICK)
        buckets = wheel.buckets
        bucket = buckets.get(tick)
        if bucket is None:
            bucket = buckets[tick] = set()
            wheel.loop.call_at(tick * TICK, wheel.fire, tick, context=wheel.context)
        return AttemptTimer(task, bucket)

    def _wheel(self, loop: asyncio.AbstractEventLoop) -> _Wheel:
        """Return the wheel of ``loop`` (made on first use; the last one is kept at hand)."""
        wheel = self._last
        if wheel is None or wheel.loop is not loop:
            wheel = self._wheels.get(loop)
            if wheel is None:
                wheel = self._wheels[loop] = _Wheel(loop)
            self._last = wheel
        return wheel
