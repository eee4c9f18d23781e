"""A loopback TCP proxy a test can cut: the network failures between two real processes."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Final, Self, final

from healkit.testing._ports import listening_socket

__all__ = ["TcpProxy"]

_CHUNK: Final = 64 * 1024


@final
class TcpProxy:
    """Forwards connections from a free loopback port to ``host:port``.

    :meth:`cut` drops every open connection at once (both sides see a reset);
    :meth:`block` makes new connections fail until :meth:`unblock`;
    :meth:`blackhole` makes the network drop packets without a reset: nothing
    is forwarded any more and nothing is closed. Use it as an async context
    manager; leaving it closes everything it opened.

    Attributes:
        port: the loopback port the proxy listens on.
        accepted: connections accepted so far (refused ones included).
        forwarded: bytes passed on from clients to the target so far (handed
            to the target's socket: a request counted here is in its queue).

    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._blocked = False
        self._blackholed = False
        # Client sides of the connections whose packets are dropped for good.
        self._silenced: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.accepted = 0
        self.forwarded = 0

    def __repr__(self) -> str:
        host, port = self._target
        return f"<TcpProxy 127.0.0.1:{self.port} -> {host}:{port}>"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the proxy's address as an HTTP base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        """Start listening on a free loopback port.

        Raises:
            ListenError: the proxy could not listen (out of file descriptors...).

        """
        sock = listening_socket("TcpProxy")
        try:
            self._server = await asyncio.start_server(self._accept, sock=sock)
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        await self.cut()
        if self._server is not None:
            await self._server.wait_closed()

    def retarget(self, host: str, port: int) -> None:
        """Forward new connections to ``host:port`` from now on (open ones stay)."""
        self._target = (host, port)

    def block(self) -> None:
        """Refuse new connections (closed at once) until :meth:`unblock`."""
        self._blocked = True

    def blackhole(self) -> None:
        """Drop every packet without a reset, like a dead route, until :meth:`unblock`.

        Open connections stay open and go silent for good (what either side
        sends is lost, as when a NAT forgot them); new connections are
        accepted and held silent. Only a keepalive, a timeout or a probe of
        the client can notice.
        """
        self._blackholed = True
        self._silenced.update(self._writers)

    def unblock(self) -> None:
        """Accept and forward new connections again (silenced ones stay silent)."""
        self._blocked = False
        self._blackholed = False

    async def cut(self) -> None:
        """Drop every open connection, both sides, and wait until they are gone."""
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._blocked:
            writer.transport.abort()
            return
        if self._blackholed:
            await self._hold(reader, writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))
        pair = [
            asyncio.create_task(self._pipe(reader, upstream_writer, writer, upstream=True)),
            asyncio.create_task(self._pipe(upstream_reader, writer, writer, upstream=False)),
        ]
        self._tasks.update(pair)
        try:
            await asyncio.wait(pair, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pair:
                task.cancel()
            await asyncio.gather(*pair, return_exceptions=True)
            self._tasks.difference_update(pair)
            for side in (writer, upstream_writer):
                self._writers.discard(side)
                side.transport.abort()
            self._silenced.discard(writer)

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Keep a connection open and answer nothing, until it or the proxy closes."""
        self._writers.add(writer)
        self._silenced.add(writer)
        try:
            with contextlib.suppress(ConnectionError, OSError):
                while await reader.read(_CHUNK):
                    pass
        finally:
            self._writers.discard(writer)
            self._silenced.discard(writer)
            writer.transport.abort()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(_CHUNK):
                if client in self._silenced:
                    continue  # dropped on the way
                writer.write(data)
                await writer.drain()
                if upstream:
                    self.forwarded += len(data)
