"""A minimal HTTP/1.1 keep-alive server on 127.0.0.1 for the end-to-end benchmark.

Run as its own process (``python benchmarks/server.py``): it binds a free port,
prints its base URL (``http://127.0.0.1:PORT``) as the first line of stdout, and
answers every request with the same small ``200`` JSON body. It is a bare
``asyncio.Protocol`` rather than a web framework so that it spends as little CPU
as possible next to the client on a small machine. It stops on SIGTERM/SIGINT and,
with ``--watch-stdin``, when its stdin closes (the parent died), so it never
outlives the benchmark.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Final

__all__ = ["BODY", "main"]

BODY: Final = b'{"ok":true,"service":"bench"}'
RESPONSE: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"\r\n" + BODY
)
BAD_REQUEST: Final = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
HEAD_END: Final = b"\r\n\r\n"
MAX_HEAD: Final = 64 * 1024


class HTTPProtocol(asyncio.Protocol):
    """Answers each request head (and skips its body, if any) with :data:`RESPONSE`."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._skip = 0  # body bytes of the current request still to discard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - TCP servers give stream transports
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        transport = self._transport
        if transport is None:
            return
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buffer))
                del self._buffer[:dropped]
                self._skip -= dropped
                if self._skip:
                    return
            end = self._buffer.find(HEAD_END)
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    self._refuse(transport)
                return
            head = bytes(self._buffer[:end])
            del self._buffer[: end + len(HEAD_END)]
            length, close = _parse_head(head)
            if length < 0:
                self._refuse(transport)
                return
            self._skip = length
            transport.write(RESPONSE)
            if close:
                transport.close()
                return

    def _refuse(self, transport: asyncio.Transport) -> None:
        transport.write(BAD_REQUEST)
        transport.close()
        self._buffer.clear()


def _parse_head(head: bytes) -> tuple[int, bool]:
    """Return (body length, close after answering); length -1 for a bad request."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return -1, True
    length = 0
    close = parts[2] == b"HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return -1, True
        elif key == b"transfer-encoding":
            return -1, True  # chunked request bodies are not needed here
        elif key == b"connection":
            close = value.strip().lower() == b"close"
    return length, close


async def _until_stdin_closes(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass
    stop.set()


async def main(*, watch_stdin: bool) -> None:
    """Serve until a signal (or, with ``watch_stdin``, the end of stdin) says stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(HTTPProtocol, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    watcher = asyncio.create_task(_until_stdin_closes(loop, stop)) if watch_stdin else None
    async with server:
        await stop.wait()
    if watcher is not None:
        watcher.cancel()


if __name__ == "__main__":
    asyncio.run(main(watch_stdin="--watch-stdin" in sys.argv[1:]))
