"""A manual clock: virtual time for exact, instant tests of time-dependent logic."""

from __future__ import annotations

from typing import final

import anyio
import anyio.lowlevel

__all__ = ["ManualClock"]


@final
class ManualClock:
    """A :class:`healkit.Clock` whose time moves only when told to, or when slept on.

    By default (``auto_advance=True``) ``sleep(seconds)`` returns at once
    (after yielding to the event loop once) and advances the virtual time by
    ``seconds``, so backoff sleeps cost nothing and their lengths can be
    asserted from ``sleeps``.

    Code that sleeps in a background loop (routing's active probes, the fleet
    health publisher) would spin on such a clock, each sleep moving time on.
    Give it ``auto_advance=False``: then ``sleep(seconds)`` waits until the
    test moves the time past its end with :meth:`advance`, and the test can
    wait for the loop to be asleep with :meth:`wait_for_sleepers` first::

        clock = ManualClock(auto_advance=False)
        ...
        await clock.wait_for_sleepers()  # the probe loop waits for its next round
        clock.advance(interval)  # and wakes: the next probes start

    Args:
        start: the initial virtual time.
        auto_advance: whether a sleep moves the time on by itself and returns
            at once (``False``: it waits for :meth:`advance`).

    """

    __slots__ = ("_auto", "_changed", "_now", "_sleepers", "sleeps")

    def __init__(self, start: float = 1000.0, *, auto_advance: bool = True) -> None:
        self._now = start
        self._auto = auto_advance
        self.sleeps: list[float] = []
        # The tasks asleep (only without auto_advance): their end, and what wakes them.
        self._sleepers: list[tuple[float, anyio.Event]] = []
        self._changed: anyio.Event | None = None  # set when a task falls asleep

    def now(self) -> float:
        """Return the virtual time."""
        return self._now

    @property
    def sleeping(self) -> int:
        """How many tasks sleep now, waiting for :meth:`advance`."""
        return len(self._sleepers)

    def advance(self, seconds: float) -> None:
        """Move the virtual time forward, and wake the sleepers whose end it reached."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds
        due = [sleeper for sleeper in self._sleepers if sleeper[0] <= self._now]
        for sleeper in due:
            self._sleepers.remove(sleeper)
            sleeper[1].set()

    async def sleep(self, seconds: float) -> None:
        """Record the sleep; then advance virtual time, or wait for it to be advanced.

        Either way the sleep yields to the event loop at least once.
        """
        self.sleeps.append(seconds)
        if self._auto or seconds <= 0:
            self.advance(max(seconds, 0.0))
            await anyio.lowlevel.checkpoint()
            return
        sleeper = (self._now + seconds, anyio.Event())
        self._sleepers.append(sleeper)
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        try:
            await sleeper[1].wait()
        finally:
            if sleeper in self._sleepers:  # cancelled before its time came
                self._sleepers.remove(sleeper)

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Return once at least ``count`` tasks sleep on this clock (``auto_advance=False``)."""
        if self._auto:
            raise RuntimeError("sleepers wait only on a clock made with auto_advance=False")
        while len(self._sleepers) < count:
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
