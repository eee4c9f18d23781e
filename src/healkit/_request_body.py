"""The caller's request body failing while healkit sends it: the caller's error.

A body read as it is sent (an async iterable, a file object, an aiohttp
payload, an httpx stream) can raise while it is being sent. The HTTP clients
below report that alike with the connection breaking: aiohttp as a
``ClientOSError`` or ``ClientConnectionError`` (the body's exception as its
cause), httpx by letting the body's exception through. healkit tells the two
apart and, like httpx and urllib3 (which re-raise the body's own exception,
never a network error), treats the body's failure as the caller's:

* an :class:`~healkit.InvalidRequestError` raised ``from`` the body's
  exception, with the call's attempts, ``may_have_reached_server`` true once
  any byte of the body was handed to the connection;
* never counted against the endpoint (a breaker, an ejection, fleet health),
  never retried, hedged or failed over: another attempt would find the body
  read, and the endpoint did nothing wrong.

Every HTTP front door uses :func:`body_failed`; :class:`WatchedBody` is how
the aiohttp ones see the body's failure apart from the connection's.
"""

from __future__ import annotations

import asyncio
from typing import Any, final

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from healkit._errors import InvalidRequestError

__all__ = ["WatchedBody", "body_failed"]


def body_failed(error: Exception, sent: int) -> InvalidRequestError:
    """Return the error of a call whose request body raised ``error`` while it was sent.

    ``sent``: the bytes of the body handed to the connection before it
    raised; the server may have seen the request once any was. The caller
    raises the result ``from error``.
    """
    failed = InvalidRequestError(
        f"the request body raised {type(error).__name__} while it was sent, after"
        f" {sent} bytes of it: the caller's body failed, not the endpoint"
    )
    failed.may_have_reached_server = sent > 0
    return failed


@final
class WatchedBody(aiohttp.Payload):
    """The payload of a body read as it is sent, telling its own failure from the connection's.

    It sends ``inner`` as aiohttp would, through a writer that notes what the
    connection took and whether writing to it failed. An exception that
    leaves ``inner`` otherwise is the body's own: kept as :attr:`failure`,
    then let through for aiohttp to end the request as it does.
    """

    def __init__(self, inner: aiohttp.Payload) -> None:
        super().__init__(inner, headers=inner.headers, encoding=inner.encoding)
        self._inner = inner
        self.sent = 0
        """The bytes of the body the connection took."""
        self.failure: Exception | None = None
        """What the body raised while it was sent (``None``: it did not)."""

    @classmethod
    def of(cls, data: Any) -> WatchedBody:  # noqa: ANN401 - whatever aiohttp accepts as a body
        """Return ``data`` (what aiohttp takes as ``data=``) as aiohttp's payload, watched.

        As aiohttp builds a request's payload: a payload as it is, a form
        (``aiohttp.FormData``, a mapping or pairs) as its multipart or encoded
        payload, anything else as the payload registered for its type.
        """
        if isinstance(data, aiohttp.FormData):
            data = data()
        if not isinstance(data, aiohttp.Payload):
            try:
                data = aiohttp.payload.get_payload(data, disposition=None)
            except aiohttp.payload.LookupError:
                data = aiohttp.FormData(data)()
        return cls(data)

    @property
    def size(self) -> int | None:
        """The size of the body, if known before it is read."""
        return self._inner.size

    @property
    def consumed(self) -> bool:
        """Whether the body was read and cannot be sent again."""
        return self._inner.consumed

    @property
    def autoclose(self) -> bool:
        """Whether the body holds nothing to close."""
        return self._inner.autoclose

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        """Return the body as text (aiohttp's ``Payload.decode``)."""
        return self._inner.decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        """Send the whole body to ``writer``."""
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        """Send at most ``content_length`` bytes of the body; note a failure of its own."""
        wire = _Wire(writer, self)
        try:
            await self._inner.write_with_length(wire, content_length)
        except Exception as exc:
            if not wire.broke:
                self.failure = exc
            raise

    async def close(self) -> None:
        """Close the body (a file it is read from)."""
        await self._inner.close()


@final
class _Wire(AbstractStreamWriter):
    """The writer a watched body is sent to: aiohttp's, noting what it took and its failure."""

    def __init__(self, writer: AbstractStreamWriter, body: WatchedBody) -> None:
        self._writer = writer
        self._body = body
        self.broke = False

    @property
    def transport(self) -> asyncio.WriteTransport | None:
        """The transport the connection writes to."""
        return self._writer.transport

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Write ``chunk`` of the body to the connection."""
        try:
            await self._writer.write(chunk)
        except BaseException:
            self.broke = True
            raise
        self._body.sent += len(chunk)

    async def write_eof(self, chunk: bytes = b"") -> None:
        """Write the last ``chunk`` of the body."""
        try:
            await self._writer.write_eof(chunk)
        except BaseException:
            self.broke = True
            raise
        self._body.sent += len(chunk)

    async def drain(self) -> None:
        """Wait until the connection has room."""
        try:
            await self._writer.drain()
        except BaseException:
            self.broke = True
            raise

    def enable_compression(self, encoding: str = "deflate", strategy: int | None = None) -> None:
        """Compress what is written from now on."""
        self._writer.enable_compression(encoding, strategy)

    def enable_chunking(self) -> None:
        """Send what is written from now on in chunks."""
        self._writer.enable_chunking()

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        """Write a head (for a body that sends one of its own)."""
        await self._writer.write_headers(status_line, headers)
