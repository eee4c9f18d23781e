"""Simulated time for real loopback I/O: an event loop whose clock jumps when idle.

A simulation runs healkit's real pipeline against real servers on loopback, but
a 2-second upstream latency, a 30-second breaker window or a 5-second backoff
must not take that long. :class:`VirtualTimeLoop` is an ordinary selector event
loop whose :meth:`~VirtualTimeLoop.time` is virtual: it stands still while
callbacks run and I/O is ready, and when nothing is left to do but wait for a
timer, it moves straight to that timer. Everything scheduled on the loop's
clock follows it: ``asyncio.sleep``, aiohttp's client and server timeouts,
healkit's attempt timers (which ask ``loop.time()`` on a loop that is not
asyncio's own), and :class:`LoopClock` for the runtime (backoff, breaker
windows, probes, retry budgets).

Loopback I/O and CPU time therefore count as zero: a simulated latency is the
sum of the scripted waits, time limits and backoffs a call went through, the
same on every run. The only real wait is for I/O when no timer is due at all.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Final, final

__all__ = ["LoopClock", "VirtualTimeLoop"]

_START: Final = 1000.0


@final
class _Now:
    """The loop's virtual time, shared by the loop and its selector."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = value


@final
class _IdleJumpSelector(selectors.DefaultSelector):
    """A selector that, instead of sleeping until the next timer, moves time to it."""

    def __init__(self, now: _Now) -> None:
        super().__init__()
        self._now = now

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Return the ready I/O; with none, jump to the next timer instead of waiting."""
        ready = super().select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None:  # no timer at all: only I/O (or another thread) can wake the loop
            return super().select(None)
        self._now.value += timeout  # idle until the next timer: go there
        return []


@final
class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time that jumps over idle waits.

    Use it with ``asyncio.Runner(loop_factory=VirtualTimeLoop)``. Only code
    that tells time with ``loop.time()`` (or a :class:`LoopClock`) sees the
    virtual time; ``time.monotonic()`` still moves for real.
    """

    def __init__(self) -> None:
        """Start at a fixed virtual time, so that two runs read the same clock."""
        self._virtual_now = _Now(_START)
        super().__init__(_IdleJumpSelector(self._virtual_now))

    def time(self) -> float:
        """Return the virtual time, in seconds."""
        return self._virtual_now.value


@final
class LoopClock:
    """A :class:`healkit.Clock` that reads the running loop's time and sleeps on it.

    On a :class:`VirtualTimeLoop` every runtime window, backoff and probe
    interval runs on virtual time.
    """

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tell the time of ``loop``."""
        self._loop = loop

    def now(self) -> float:
        """Return the loop's time."""
        return self._loop.time()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the loop's clock."""
        await asyncio.sleep(seconds)
