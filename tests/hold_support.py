"""A loopback upstream that holds each request until the test answers it.

For races (hedges, retries beside attempts in flight): the test sees each
request arrive, answers them in the order it chooses, and sees a client
let go of one (the server cancels the handler of a closed connection).
"""

from __future__ import annotations

import asyncio
from typing import Self

import anyio
from aiohttp import web

GUARD = 10.0
"""Seconds a test waits for an event before it fails: a guard against a hang, not a timing."""


class Held:
    """One request the upstream holds until the test answers it."""

    def __init__(self, number: int, path: str, peer: int) -> None:
        self.number = number
        self.path = path
        self.peer = peer  # the client's port: one per TCP connection
        self.answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.dropped = asyncio.Event()  # the client went away before the answer's end
        self.endless = False

    def reply(self, status: int = 200, *, endless: bool = False) -> None:
        """Answer; ``endless``: send the head and a first chunk, and never end the body."""
        self.endless = endless
        self.answer.set_result(status)


class Upstream:
    """A loopback server that holds each request until :meth:`Held.reply`.

    The server cancels a handler whose client closed the connection
    (``handler_cancellation``): that is how it sees a loser released.
    """

    def __init__(self) -> None:
        self.requests: list[Held] = []
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peer = request.transport.get_extra_info("peername")[1]
        held = Held(len(self.requests) + 1, request.path, peer)
        self.requests.append(held)
        async with self._arrived:
            self._arrived.notify_all()
        try:
            status = await held.answer
            if not held.endless:
                return web.Response(status=status, text=f"answer {held.number}")
            response = web.StreamResponse(status=status)
            await response.prepare(request)
            await response.write(b"first chunk")
            await asyncio.Event().wait()  # the rest never comes: the client must let go
        except asyncio.CancelledError:
            held.dropped.set()
            raise
        return response  # pragma: no cover - never reached

    async def wait_for(self, count: int) -> Held:
        """Return the ``count``-th request once it arrived."""
        with anyio.fail_after(GUARD):
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return self.requests[count - 1]

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for held in self.requests:
            if not held.answer.done():
                held.answer.cancel()
        assert self._runner is not None
        await self._runner.cleanup()
