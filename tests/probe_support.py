"""Health probe results as a test sees them: each endpoint's probes, on virtual time.

The router schedules each endpoint's probe on its own (no rounds): a test that
steps a :class:`ManualClock` waits for the probes it expects to have *ended*
(their :class:`~healkit.events.EndpointProbed` event: the result is counted
and the endpoint's next probe is due one interval later), then moves the clock.
"""

from __future__ import annotations

import asyncio

import anyio

import healkit
from healkit.events import EndpointProbed
from healkit.testing import ManualClock

GUARD = 30.0
"""Seconds a test waits for a probe to end: a guard against a hang, not a timing."""


class Probes:
    """An observer of the probes' results: when (virtual time) each endpoint's ended, and how."""

    healkit_observer = True

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.results: list[tuple[float, str, bool]] = []  # (when, endpoint, good)
        self._changed = asyncio.Event()

    @healkit.hookimpl
    def healkit_event(self, event: object) -> None:
        if isinstance(event, EndpointProbed):
            self.results.append((self.clock.now(), event.endpoint, event.good))
            self._changed.set()

    def of(self, endpoint: str) -> list[tuple[float, bool]]:
        """The probes of ``endpoint`` that ended: when, and whether each was good."""
        return [(when, good) for when, name, good in self.results if name == endpoint]

    async def wait_for(self, endpoint: str | None, count: int) -> None:
        """Return once ``count`` probes of ``endpoint`` (``None``: of any) ended in all."""
        with anyio.fail_after(GUARD):
            while len(self.results if endpoint is None else self.of(endpoint)) < count:
                self._changed.clear()
                await self._changed.wait()

    async def step(self, seconds: float, *endpoints: str) -> None:
        """Move the clock on by ``seconds``; return once one more probe of each endpoint ended."""
        counts = {endpoint: len(self.of(endpoint)) + 1 for endpoint in endpoints}
        self.clock.advance(seconds)
        for endpoint, count in counts.items():
            await self.wait_for(endpoint, count)
