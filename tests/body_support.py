"""A loopback aiohttp upstream that records the body of every request it gets."""

from __future__ import annotations

from typing import Self

from aiohttp import web


class Upstream:
    """A loopback aiohttp server recording the body of every request it got.

    ``/flaky`` reads the whole body and answers 503 the first time, 200 after;
    ``/cut`` reads the body's first bytes and resets the connection;
    ``/moved`` reads the whole body and answers 307 to ``/landed``, which
    answers 200.
    """

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.url = ""
        app = web.Application()
        app.router.add_route("*", "/flaky", self._flaky)
        app.router.add_route("*", "/cut", self._cut)
        app.router.add_route("*", "/moved", self._moved)
        app.router.add_route("*", "/landed", self._landed)
        self._runner = web.AppRunner(app, handle_signals=False)

    async def __aenter__(self) -> Self:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    def bodies(self, path: str) -> list[bytes]:
        return [body for where, body in self.received if where == path]

    async def _flaky(self, request: web.Request) -> web.Response:
        self.received.append(("/flaky", await request.read()))
        return web.Response(status=503 if len(self.bodies("/flaky")) == 1 else 200)

    async def _cut(self, request: web.Request) -> web.Response:
        self.received.append(("/cut", await request.content.readexactly(3)))
        assert request.transport is not None
        request.transport.abort()  # a reset in the middle of the request body
        return web.Response()

    async def _moved(self, request: web.Request) -> web.Response:
        self.received.append(("/moved", await request.read()))
        return web.Response(status=307, headers={"Location": "/landed"})

    async def _landed(self, request: web.Request) -> web.Response:
        self.received.append(("/landed", await request.read()))
        return web.Response(text="stored")
