"""Helpers shared by the limit plugin's tests: a gated upstream, documents."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
from aiohttp import web

T = TypeVar("T")


class GatedServer:
    """A real aiohttp upstream on loopback that holds every request until the test opens the gate.

    It counts the requests in its handler at once (``active``, ``max_active``),
    so a test sees exactly how many a client has in flight.
    """

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.active = 0
        self.max_active = 0
        self.hits = 0
        self.gate = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.gate.set()
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self._changed.set()
        try:
            await self.gate.wait()
        finally:
            self.active -= 1
            self._changed.set()
        return web.Response(status=self.status, text="ok")

    async def wait_for_active(self, count: int) -> None:
        """Return once exactly ``count`` requests are held in the handler."""
        while self.active != count:
            self._changed.clear()
            await self._changed.wait()


def document(endpoints: list[str] | None = None, name: str = "svc", **limit: Any) -> dict[str, Any]:
    """A one-service document with a ``limit`` section."""
    service: dict[str, Any] = {"limit": limit}
    if endpoints:
        service["endpoints"] = endpoints
    return {"services": {name: service}}


GUARD = 10.0
"""Seconds after which a wait that should end at once fails the test instead of hanging it."""


async def within(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``, failing the test if it takes longer than :data:`GUARD` (a hang)."""
    with anyio.fail_after(GUARD):
        return await awaitable
