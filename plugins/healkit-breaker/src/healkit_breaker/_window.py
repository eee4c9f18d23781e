"""Sliding windows of call outcomes: the last N calls, or the calls of the last N seconds.

A window keeps three running totals, ``calls``, ``failures`` and ``slow``, so
that reading them is free; adding an outcome is O(1) (a time window also clears
the seconds that slid out, at most ``size`` of them). Time is the breaker's
monotonic clock, passed in by the caller.
"""

from __future__ import annotations

import math
from typing import Final, Literal, final

__all__ = ["CountWindow", "TimeWindow", "Window", "new_window"]

_CALL: Final = 1
_FAILURE: Final = 2
_SLOW: Final = 4


@final
class CountWindow:
    """The outcomes of the last ``size`` calls, in a ring buffer.

    Attributes:
        size: how many outcomes it holds at most.
        calls: outcomes held (up to ``size``).
        failures: failures among them.
        slow: slow calls among them.

    """

    __slots__ = ("_next", "_ring", "calls", "failures", "size", "slow")

    kind: Literal["count"] = "count"

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self.size = size
        self._ring = bytearray(size)  # 0: empty slot; else _CALL | _FAILURE? | _SLOW?
        self._next = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def __repr__(self) -> str:
        return (
            f"<CountWindow {self.failures}/{self.calls} failed, {self.slow} slow, of {self.size}>"
        )

    def add(self, now: float, failure: bool, slow: bool) -> None:
        """Record one outcome, pushing out the oldest when full (``now`` is unused)."""
        del now
        ring = self._ring
        index = self._next
        old = ring[index]
        if old == _CALL:
            pass  # a plain success makes way: the totals do not change
        elif old:
            if old & _FAILURE:
                self.failures -= 1
            if old & _SLOW:
                self.slow -= 1
        else:
            self.calls += 1
        if failure or slow:
            ring[index] = _CALL | (_FAILURE if failure else 0) | (_SLOW if slow else 0)
            self.failures += failure
            self.slow += slow
        else:
            ring[index] = _CALL
        index += 1
        self._next = index if index < self.size else 0

    def roll(self, now: float) -> None:
        """Nothing to do: a count window does not age."""

    def clear(self) -> None:
        """Forget every outcome."""
        self._ring = bytearray(self.size)
        self._next = 0
        self.calls = self.failures = self.slow = 0

    def outcomes(self) -> list[tuple[bool, bool]]:
        """Return ``(failure, slow)`` of each outcome held, oldest first."""
        ring = self._ring
        ordered = ring[self._next :] + ring[: self._next]
        return [(bool(code & _FAILURE), bool(code & _SLOW)) for code in ordered if code]

    def resized(self, size: int, now: float) -> CountWindow:
        """Return a window of ``size`` holding the most recent outcomes of this one."""
        window = CountWindow(size)
        for failure, slow in self.outcomes()[-size:]:
            window.add(now, failure, slow)
        return window


@final
class TimeWindow:
    """The outcomes of the last ``size`` seconds, in one bucket per second.

    An outcome recorded at time ``t`` is counted while ``floor(t)`` is one of
    the ``size`` most recent whole seconds (the current one included), so the
    window spans between ``size - 1`` and ``size`` seconds.

    Attributes:
        size: the span, in seconds.
        calls: outcomes in the window, as of the last :meth:`add` or :meth:`roll`.
        failures: failures among them.
        slow: slow calls among them.

    """

    __slots__ = ("_calls", "_failures", "_head", "_slow", "calls", "failures", "size", "slow")

    kind: Literal["time"] = "time"

    def __init__(self, size: int, now: float) -> None:
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self.size = size
        self._calls = [0] * size
        self._failures = [0] * size
        self._slow = [0] * size
        self._head = math.floor(now)  # the second of the newest bucket
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def __repr__(self) -> str:
        return (
            f"<TimeWindow {self.failures}/{self.calls} failed, {self.slow} slow, in {self.size}s>"
        )

    def roll(self, now: float) -> None:
        """Drop the seconds that slid out of the window by ``now``."""
        second = math.floor(now)
        head = self._head
        if second <= head:
            return  # same second (or a clock that did not move forward)
        size = self.size
        if second - head >= size:
            self._calls = [0] * size
            self._failures = [0] * size
            self._slow = [0] * size
            self.calls = self.failures = self.slow = 0
        else:
            calls, failures, slow = self._calls, self._failures, self._slow
            for moment in range(head + 1, second + 1):
                index = moment % size
                self.calls -= calls[index]
                self.failures -= failures[index]
                self.slow -= slow[index]
                calls[index] = failures[index] = slow[index] = 0
        self._head = second

    def add(self, now: float, failure: bool, slow: bool) -> None:
        """Record one outcome at ``now``."""
        self.roll(now)
        index = self._head % self.size
        self._calls[index] += 1
        self.calls += 1
        if failure:
            self._failures[index] += 1
            self.failures += 1
        if slow:
            self._slow[index] += 1
            self.slow += 1

    def clear(self) -> None:
        """Forget every outcome."""
        size = self.size
        self._calls = [0] * size
        self._failures = [0] * size
        self._slow = [0] * size
        self.calls = self.failures = self.slow = 0

    def resized(self, size: int, now: float) -> TimeWindow:
        """Return a window of ``size`` seconds holding what this one holds of them."""
        self.roll(now)
        window = TimeWindow(size, self._head)
        for moment in range(self._head - min(size, self.size) + 1, self._head + 1):
            old, new = moment % self.size, moment % size
            window._calls[new] = self._calls[old]
            window._failures[new] = self._failures[old]
            window._slow[new] = self._slow[old]
        window.calls = sum(window._calls)
        window.failures = sum(window._failures)
        window.slow = sum(window._slow)
        return window


Window = CountWindow | TimeWindow
"""Either kind of window; ``window.kind`` tells which."""


def new_window(kind: Literal["count", "time"], size: int, now: float) -> Window:
    """Return an empty window of ``kind`` and ``size`` (calls or seconds)."""
    return CountWindow(size) if kind == "count" else TimeWindow(size, now)
