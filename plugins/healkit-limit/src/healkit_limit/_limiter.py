"""The concurrency limiter: at most ``limit`` attempts in flight, a bounded FIFO queue.

An attempt takes a slot if one is free. Otherwise it may wait in the queue:
a slot freed by an ending attempt is handed to the oldest waiter at once, by
setting its event (no polling, no sleep). A waiter gives up when its wait
runs out, timed on the call's clock.
"""

from __future__ import annotations

from collections import deque
from typing import Final, final

import anyio

import healkit
from healkit_limit._adaptive import GradientLimit

__all__ = ["Limiter", "wait_event"]

_COMPACT_MIN: Final = 16
"""Waiters that gave up are dropped from the queue once they outnumber the live ones (and this)."""


@final
class _Waiter:
    __slots__ = ("event", "gave_up", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False
        self.gave_up = False


@final
class Limiter:
    """The slots and the queue of one service (or endpoint).

    Attributes:
        in_flight: attempts holding a slot.
        queue: the most attempts that may wait.
        adaptive: the gradient controller, if the limit is adaptive.

    """

    __slots__ = ("_fixed", "_open", "_queued", "_waiters", "adaptive", "in_flight", "queue")

    def __init__(self, limit: int, queue: int, adaptive: GradientLimit | None) -> None:
        self._fixed = limit
        self.queue = queue
        self.adaptive = adaptive
        self.in_flight = 0
        self._queued = 0
        self._waiters: deque[_Waiter] = deque()
        self._open = False  # the limit was turned off: every attempt has room

    def __repr__(self) -> str:
        return f"<Limiter {self.in_flight}/{self.limit} in flight, {self._queued} queued>"

    @property
    def limit(self) -> int:
        """The attempts admitted at once now."""
        adaptive = self.adaptive
        return self._fixed if adaptive is None else adaptive.limit

    @property
    def queued(self) -> int:
        """Attempts waiting for a slot."""
        return self._queued

    @property
    def busy(self) -> bool:
        """Whether an attempt holds a slot or waits for one."""
        return self.in_flight > 0 or self._queued > 0

    def reconfigure(self, limit: int, queue: int, adaptive: GradientLimit | None) -> None:
        """Take a new limit and queue size; attempts in flight and waiting keep their place."""
        self._fixed = limit
        self.queue = queue
        self.adaptive = adaptive
        self._grant()

    @property
    def has_room(self) -> bool:
        """Whether a slot is free and nobody waits for one."""
        return self._open or (self.in_flight < self.limit and not self._queued)

    def try_acquire(self) -> bool:
        """Take a slot if one is free (and nobody waits for one before)."""
        if self.has_room:
            self.in_flight += 1
            return True
        return False

    @property
    def queue_full(self) -> bool:
        """Whether a new attempt would find no room in the queue."""
        return self._queued >= self.queue

    async def wait(self, clock: healkit.Clock, seconds: float) -> bool:
        """Wait in the queue for a slot, at most ``seconds`` on ``clock``; whether one came.

        Cancellation propagates; a slot granted to a cancelled waiter is freed again.
        """
        waiter = _Waiter()
        self._waiters.append(waiter)
        self._queued += 1
        try:
            await wait_event(clock, seconds, waiter.event)
        except BaseException:
            self._give_up(waiter)
            raise
        if waiter.granted:
            return True
        self._give_up(waiter)
        return False

    def open(self) -> None:
        """Let every waiter go at once, past the limit: the limit was turned off or dropped.

        Each takes a slot here, and gives it back here when its attempt ends;
        so does an attempt that comes to this limiter later (one that waited
        for its token while the limit was turned off).
        """
        self._open = True
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.gave_up:
                waiter.granted = True
                self._queued -= 1
                self.in_flight += 1
                waiter.event.set()

    def release(self) -> None:
        """Free a slot: the oldest waiter gets it, if the limit allows."""
        self.in_flight -= 1
        self._grant()

    def _grant(self) -> None:
        waiters = self._waiters
        while waiters and self.in_flight < self.limit:
            waiter = waiters.popleft()
            if waiter.gave_up:
                continue
            waiter.granted = True
            self._queued -= 1
            self.in_flight += 1
            waiter.event.set()

    def _give_up(self, waiter: _Waiter) -> None:
        if waiter.granted:  # the slot came, but too late for the waiter: pass it on
            self.release()
            return
        waiter.gave_up = True
        self._queued -= 1
        waiters = self._waiters
        if len(waiters) > max(_COMPACT_MIN, 2 * self._queued):
            self._waiters = deque(w for w in waiters if not w.gave_up)


async def wait_event(clock: healkit.Clock, seconds: float, event: anyio.Event) -> None:
    """Wait for ``event``, at most ``seconds`` on ``clock``."""
    if isinstance(clock, healkit.MonotonicClock):
        with anyio.move_on_after(seconds):
            await event.wait()
        return
    async with anyio.create_task_group() as group:

        async def expire() -> None:
            await clock.sleep(seconds)
            group.cancel_scope.cancel()

        group.start_soon(expire)
        await event.wait()
        group.cancel_scope.cancel()
