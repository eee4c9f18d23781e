"""A manual clock: virtual time for exact, instant tests of time-dependent logic."""

from __future__ import annotations

from typing import final

import anyio
import anyio.lowlevel

__all__ = ["ManualClock"]


@final
class ManualClock:
    """A :class:`healkit.Clock` whose time moves only when told to, or when slept on.

    ``sleep(seconds)`` returns at once (after yielding to the event loop once)
    and advances the virtual time by ``seconds``, so backoff sleeps cost
    nothing and their lengths can be asserted from ``sleeps``.

    Args:
        start: the initial virtual time.

    """

    __slots__ = ("_now", "sleeps")

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        """Return the virtual time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the virtual time forward."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the sleep, advance virtual time, and yield once to the loop."""
        self.sleeps.append(seconds)
        self.advance(max(seconds, 0.0))
        await anyio.lowlevel.checkpoint()
