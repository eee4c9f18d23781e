"""Helpers shared by the hedge plugin's tests (a module of its own, not a conftest,
so that it cannot clash with the conftest of the core's tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import aiohttp
import anyio

import healkit
from healkit.testing import ManualClock
from healkit_hedge import HedgePlugin

SERVICE = "svc"
DELAY = 0.05
"""The fixed hedge delay most tests use (virtual seconds on a ManualClock)."""

T = TypeVar("T")


def document(endpoints: str | Sequence[str], **hedge: Any) -> dict[str, Any]:
    """A one-service document with a ``hedge`` section (enabled unless told otherwise)."""
    listed = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    section = {"enabled": True, **hedge}
    return {"services": {SERVICE: {"endpoints": listed, "hedge": section}}}


def client(
    endpoints: str | Sequence[str],
    *extra: object,
    clock: healkit.Clock | None = None,
    session: aiohttp.ClientSession | None = None,
    plugin: HedgePlugin | None = None,
    **hedge: Any,
) -> healkit.Client:
    """A Client with the hedge plugin and ``extra`` plugins, no entry points."""
    options: dict[str, Any] = {}
    if clock is not None:
        options["clock"] = clock
    if session is not None:
        options["session"] = session
    return healkit.Client(
        config=document(endpoints, **hedge),
        plugins=[*extra, plugin or HedgePlugin()],
        entry_points=False,
        **options,
    )


class Events:
    """An observer that keeps every event emitted."""

    healkit_name = "events"
    healkit_observer = True

    def __init__(self) -> None:
        self.seen: list[object] = []

    @healkit.hookimpl
    def healkit_event(self, event: object) -> None:
        self.seen.append(event)


async def hedge_fires(
    clock: ManualClock, call: Awaitable[T], *, before: Awaitable[object], delay: float = DELAY
) -> T:
    """Run ``call``; once ``before`` is done and the hedge timer sleeps, let ``delay`` pass.

    ``before`` is what the first attempt must have done (reached the server)
    before the hedge may go: the test waits for it, not for a length of time.
    """
    task = asyncio.ensure_future(call)
    with anyio.fail_after(10):
        await before
        await clock.wait_for_sleepers()
        clock.advance(delay)
        return await task


class Outcomes:
    """An observer that keeps the outcome of every call that ended."""

    healkit_name = "outcomes"
    healkit_observer = True

    def __init__(self) -> None:
        self.seen: list[healkit.Outcome] = []

    @healkit.hookimpl
    def healkit_call_end(
        self,
        call: healkit.CallContext,
        outcome: healkit.Outcome,
        error: healkit.HealkitError | None,
    ) -> None:
        self.seen.append(outcome)
