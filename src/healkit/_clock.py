"""Clocks: every window, deadline and backoff in healkit reads one of these.

The default is the monotonic clock with real sleeps. Tests (and users testing
their own code) inject :class:`healkit.testing.ManualClock`, whose ``sleep``
returns at once and advances virtual time, so timing logic is fast and exact.
"""

from __future__ import annotations

import time
from typing import Final, Protocol, final, runtime_checkable

import anyio

__all__ = ["SYSTEM_CLOCK", "Clock", "MonotonicClock"]


@runtime_checkable
class Clock(Protocol):
    """A monotonic time source that can also sleep."""

    def now(self) -> float:
        """Return the current monotonic time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait for ``seconds`` (cancellable; never swallows cancellation)."""
        ...


@final
class MonotonicClock:
    """The real clock: :func:`time.monotonic` and :func:`anyio.sleep`."""

    __slots__ = ()

    # time.monotonic itself, not a method calling it: every call reads the
    # clock at least twice, and a Python frame costs more than the read.
    now = staticmethod(time.monotonic)
    """Return :func:`time.monotonic`."""

    async def sleep(self, seconds: float) -> None:
        """Sleep for real."""
        await anyio.sleep(seconds)


SYSTEM_CLOCK: Final[Clock] = MonotonicClock()
