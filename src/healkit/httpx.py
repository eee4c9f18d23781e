"""healkit for httpx: the resilience pipeline as an ``httpx.AsyncBaseTransport``.

Install with ``pip install 'healkit[httpx]'``. Any ``httpx.AsyncClient`` (and
any SDK that accepts one) then runs every request through healkit: the same
configuration, plugins, errors and outcome as :class:`healkit.Client`::

    transport = healkit.httpx.ResilientTransport(config=CONFIG)
    base = "https://payments.internal"
    async with httpx.AsyncClient(transport=transport, base_url=base) as client:
        response = await client.post("/v1/charges", json={"amount": 42})
        print(healkit.httpx.outcome_of(response).path)

What httpx does and what healkit does:

* httpx builds the request (auth, cookies, base URL, encodings) and follows
  redirects above the transport: each hop reaches this transport as a request
  of its own, and so is a healkit call of its own;
* healkit maps the request's URL to a service by its endpoints (or uses
  ``service=``), applies the service's policy (timeouts as httpx's per-request
  connect/read/write/pool limits, retries, breaker, routing, fallback), and
  sends each attempt through the wrapped transport (``httpx.AsyncHTTPTransport()``
  by default). A URL under one of the service's endpoints may be re-routed to
  another endpoint or fallback group, as a call addressed by service name is;
* a request body given as a stream (an async ``content=`` iterator,
  ``files=``) is kept in memory up to ``max_body_bytes``, so that every
  attempt sends it whole; a longer one is sent once, as it is read (what was
  read first, then the rest), and is not retried or hedged;
* the response body is read within the attempt and decoded there (gzip and
  deflate, each step capped by ``max_body_bytes``; the response comes without
  its ``Content-Encoding``, as from a proxy), so a truncated body is a failed
  attempt that can be retried; with
  ``stream=True`` a response is judged on its head and its body is read by the
  caller as it arrives (server-sent events, large downloads);
* failures raise healkit's errors (:class:`healkit.HealkitError` and its
  subclasses, with the attempt history), not httpx's;
* TLS is the wrapped transport's (``httpx.AsyncHTTPTransport(verify=...)``):
  httpx has no per-request TLS context, so the TLS plugin's per-service
  contexts do not apply here.
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Final, Self, final

import httpx
from multidict import CIMultiDict, CIMultiDictProxy

from healkit._client import IDEMPOTENCY_HEADER
from healkit._client import _address as address
from healkit._clock import SYSTEM_CLOCK, Clock
from healkit._config.models import url_under
from healkit._context import AttemptContext, CallContext, Fallback
from healkit._errors import (
    BodyTooLargeError,
    ClientClosedError,
    ConnectError,
    ConnectionLostError,
    ConnectTimeout,
    DNSError,
    HealkitError,
    InvalidRequestError,
    OutcomeUnavailableError,
    ProtocolError,
    ReadTimeout,
    TLSError,
    invalid_status,
)
from healkit._executor import execute
from healkit._http import IDEMPOTENT_METHODS, SentOnce, attempt_headers, join_url
from healkit._outcome import Outcome
from healkit._response import OUTCOME_HEADER, Response
from healkit._runtime import ConfigInput, Runtime, runtime_or_build

__all__ = ["OUTCOME_EXTENSION", "ResilientTransport", "map_httpx_error", "outcome_of"]

OUTCOME_EXTENSION: Final = "healkit.outcome"
"""The key of a response's ``extensions`` under which the call's outcome is kept."""

_HOP_HEADERS: Final = frozenset({"host", "content-length", "transfer-encoding"})
"""Headers of the original request that each attempt's request sets for itself."""

_DECODED: Final = {
    "identity": 0,
    "gzip": zlib.MAX_WBITS | 16,
    "x-gzip": zlib.MAX_WBITS | 16,
    "deflate": zlib.MAX_WBITS,  # zlib-wrapped, else raw (as httpx decodes it)
}
"""The content codings a buffered body is decoded from, with zlib's ``wbits`` for each.

Any other coding (``br``, ``zstd``) is refused: httpx would decode it without a bound.
"""
_MAX_CODINGS: Final = 4
"""The most content codings a response may stack (``gzip, gzip, ...``)."""


@final
class ResilientTransport(httpx.AsyncBaseTransport):
    """An httpx transport that runs each request through healkit's pipeline.

    Args:
        transport: the transport that sends each attempt (by default a new
            ``httpx.AsyncHTTPTransport()``, closed with this one).
        service: the service whose policy applies to every request; by default
            each request's URL is mapped to a service by its endpoints.
        stream: judge responses on their head and let the caller read the body
            as it arrives, instead of reading it within the attempt.
        config: as for :class:`healkit.Client`.
        plugins: as for :class:`healkit.Client`.
        block_plugins: as for :class:`healkit.Client`.
        entry_points: as for :class:`healkit.Client`.
        clock: as for :class:`healkit.Client`.
        runtime: share an existing :class:`healkit.Runtime` (then ``config``,
            ``plugins``, ``block_plugins``, ``entry_points`` and ``clock`` must
            not be given); one this transport did not start is not stopped by it.

    The runtime is started on first use (or by ``async with`` on the client)
    and stopped by ``aclose()``, which ``httpx.AsyncClient`` calls when it closes.

    """

    def __init__(  # noqa: D107, PLR0913 - documented on the class; every option is keyword-only
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        service: str | None = None,
        stream: bool = False,
        config: ConfigInput = None,
        plugins: Iterable[object] = (),
        block_plugins: Iterable[str] = (),
        entry_points: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        runtime: Runtime | None = None,
    ) -> None:
        self._owns_runtime = runtime is None or not runtime.started
        runtime = runtime_or_build(
            runtime,
            config=config,
            plugins=plugins,
            block_plugins=block_plugins,
            entry_points=entry_points,
            clock=clock,
        )
        self.runtime = runtime
        self._inner = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._service = service
        self._stream = stream
        self._starting: asyncio.Lock | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __aenter__(self) -> Self:
        """Start the runtime and enter the wrapped transport."""
        await self._inner.__aenter__()
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        """Close: see :meth:`aclose`."""
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the runtime (if this transport started it) and close the wrapped transport."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._closing:
                await asyncio.gather(*self._closing, return_exceptions=True)
            if self._owns_runtime and self.runtime.started:
                await self.runtime.stop()
        finally:
            await self._inner.aclose()

    async def _start(self) -> None:
        if self.runtime.started:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            await self.runtime.start()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Run ``request`` through the pipeline; return the response it ends with.

        Raises:
            HealkitError: the call failed for good (``error.attempts`` tells how),
                the transport is closed, or the request is invalid.

        """
        if self._closed:
            raise ClientClosedError("the healkit httpx transport is closed")
        await self._start()
        runtime = self.runtime
        config = runtime.config
        target = str(request.url)
        endpoint, path, service, policy, url = address(config, target, self._service)
        body = await _request_body(request, policy.max_body_bytes)
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.multi_items()
            if name.lower() not in _HOP_HEADERS
        )
        if not self._stream and "Accept-Encoding" in headers:
            headers["Accept-Encoding"] = _decodable(headers.getall("Accept-Encoding"))
        method = request.method.upper()
        clock = runtime.clock
        now = clock.now()
        call = CallContext(  # by position, as healkit.Client builds it
            service,
            "http",
            method,
            path,
            config,
            policy,
            clock,
            headers or None,
            method in IDEMPOTENT_METHODS or IDEMPOTENCY_HEADER in headers,
            isinstance(body, bytes),  # replayable: in memory, every attempt can send it
            now,
            math.inf,
            # routable: the URL, as yarl writes it (as the endpoints are kept), is
            # under a configured endpoint; httpx keeps HTTP://h:80 and %41 as written.
            url is not None and url_under(str(url), endpoint),
        )
        attempts = _Attempts(self._inner, body, request.extensions, self._stream, self._closing)
        return await execute(runtime, call, attempts, endpoint)


def outcome_of(response: httpx.Response) -> Outcome:
    """Return how healkit got ``response``: path taken, attempts, endpoint.

    Raises:
        OutcomeUnavailableError: the response did not come through a
            :class:`ResilientTransport` (also a ``LookupError``).

    """
    outcome = response.extensions.get(OUTCOME_EXTENSION)
    if not isinstance(outcome, Outcome):
        raise OutcomeUnavailableError(
            "this response did not come through healkit's httpx transport"
        )
    return outcome


@final
class _Attempts:
    """Sends the attempts of one call through the wrapped httpx transport."""

    __slots__ = ("_body", "_closing", "_extensions", "_inner", "_once", "_stream")

    concurrent = True  # each attempt builds its own httpx.Request

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        body: bytes | _Remainder,
        extensions: dict[str, object],
        stream: bool,
        closing: set[asyncio.Task[None]],
    ) -> None:
        self._inner = inner
        self._body = body
        self._extensions = extensions
        self._stream = stream
        self._closing = closing
        # A body past the buffer is sent at most once, as healkit.Client sends a stream.
        self._once = None if isinstance(body, bytes) else SentOnce(body)

    async def send(
        self, call: CallContext, attempt: AttemptContext
    ) -> tuple[httpx.Response, Response | None]:
        if attempt.endpoint is None:
            raise InvalidRequestError(f"no endpoint to send {call.method} {call.target} to")
        url = join_url(attempt.endpoint, call.target)
        limits = attempt.timeouts
        extensions = {
            **self._extensions,
            "timeout": {
                "connect": limits.connect,
                "pool": limits.connect,
                "read": limits.read,
                "write": limits.read,
            },
        }
        headers = attempt_headers(call, attempt)
        body, once = self._body, self._once
        if once is not None:
            once.take(call, attempt)
        try:
            request = httpx.Request(
                call.method,
                url,
                headers=_with_length(headers, body),
                content=body,
                extensions=extensions,
            )
            answer = await self._inner.handle_async_request(request)
            if not 100 <= answer.status_code <= 599:
                await answer.aclose()
                raise invalid_status(answer.status_code, call.config.redactor.url(url))
            attempt.status = answer.status_code
            answer.headers.pop(OUTCOME_HEADER, None)  # only healkit says how a call went
            shown = call.config.redactor.url(url)
            if self._stream:
                judged = Response(
                    answer.status_code,
                    headers=CIMultiDictProxy(CIMultiDict(answer.headers.multi_items())),
                    url=shown,
                    reason=answer.reason_phrase,
                )
                return answer, judged
            limit = call.policy.max_body_bytes
            try:
                codings = _codings(answer.headers, shown)
                raw = await _read_capped(answer, limit, shown)
            finally:
                await answer.aclose()
            if codings:
                raw = _decode(raw, codings, limit, shown)
                _drop_encoding(answer.headers)
        except httpx.HTTPError as exc:
            redacted = call.config.redactor.url(url)
            error = map_httpx_error(exc, url=redacted, connect=limits.connect, read=limits.read)
            if once is not None:
                once.failed(error)  # given back if the body cannot have been read
            raise error from exc
        except httpx.InvalidURL as exc:
            raise InvalidRequestError(
                f"invalid URL {call.config.redactor.url(url)}: {exc}"
            ) from exc
        result = httpx.Response(
            answer.status_code,
            headers=answer.headers,
            content=raw,
            extensions=dict(answer.extensions),
        )
        judged = Response(
            answer.status_code,
            headers=CIMultiDictProxy(CIMultiDict(result.headers.multi_items())),
            body=raw,
            url=shown,
            reason=answer.reason_phrase,
        )
        return result, judged

    def discard(self, result: httpx.Response) -> None:
        """Close a streaming response declared a failure (in the background: it awaits)."""
        if self._stream and not result.is_closed:
            task = asyncio.get_running_loop().create_task(result.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def accept(self, fallback: Fallback) -> httpx.Response | None:
        value = fallback.value
        if isinstance(value, httpx.Response):  # an answer from a fallback endpoint
            value.headers[OUTCOME_HEADER] = fallback.path
            return value
        if not isinstance(value, Response):
            return None
        headers = [(k, v) for k, v in value.headers.items() if k.lower() != "content-length"]
        headers.append((OUTCOME_HEADER, fallback.path))
        return httpx.Response(value.status, headers=headers, content=value.body)

    def finish(self, result: httpx.Response, outcome: Callable[[], Outcome]) -> httpx.Response:
        result.extensions[OUTCOME_EXTENSION] = outcome()
        return result


@final
class _Remainder(httpx.AsyncByteStream):
    """A request body longer than the buffer: the chunks read so far, then the rest as it comes.

    httpx sends it as it is read, so it is sent once (:class:`~healkit._http.SentOnce`
    refuses a second attempt); it also becomes the request's stream, so that
    httpx's own second send (a 307 or 308 it follows) is refused here, not
    sent cut short. ``length``: the caller's ``Content-Length``, kept (else
    the body goes chunked).
    """

    __slots__ = ("_head", "_limit", "_rest", "_started", "length")

    def __init__(
        self, head: list[bytes], rest: AsyncIterator[bytes], length: str | None, limit: int
    ) -> None:
        self._head = deque(head)
        self._rest = rest
        self._limit = limit
        self._started = False
        self.length = length

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._started:
            raise InvalidRequestError(
                "not sent again: the request body is a stream longer than max_body_bytes"
                f" ({self._limit} bytes), sent once as it was read (pass bytes, or raise"
                " max_body_bytes, for a request that may be sent more than once)"
            )
        self._started = True
        head = self._head
        while head:
            yield head.popleft()  # each chunk let go once sent
        async for chunk in self._rest:
            yield chunk


async def _request_body(request: httpx.Request, limit: int) -> bytes | _Remainder:
    """Return ``request``'s body: in memory if at most ``limit`` bytes, else a :class:`_Remainder`.

    A body given as bytes, text, JSON or a form is in memory already. A stream
    (an async iterator) is read up to ``limit`` bytes, so that every attempt
    can send it; past that, what was read is sent first, then the rest as it
    is read: memory does not grow with the body. Either way the result
    becomes ``request.stream`` (as ``request.aread()`` would make it), which
    httpx sends again when it follows a 307 or 308.

    Raises:
        InvalidRequestError: the body is a synchronous stream, a stream past
            ``limit`` that was sent already, or a stream that raised before
            ``limit`` bytes were read (nothing was sent: the caller's error
            is its ``__cause__``).

    """
    try:
        return request.content
    except httpx.RequestNotRead:
        pass
    stream = request.stream
    if not isinstance(stream, AsyncIterable):
        raise InvalidRequestError(
            "the request body is a synchronous iterator: an httpx.AsyncClient sends async ones"
        )
    rest = aiter(stream)
    head: list[bytes] = []
    size = 0
    while size <= limit:
        try:
            chunk = await anext(rest)
        except StopAsyncIteration:
            body = b"".join(head)
            request.stream = httpx.ByteStream(body)
            return body
        except HealkitError:
            raise  # a body sent once, asked for again (a 307 or 308 httpx follows)
        except Exception as exc:
            raise InvalidRequestError(
                f"the request body stream raised {type(exc).__name__} before it was sent"
            ) from exc
        head.append(chunk)
        size += len(chunk)
    remainder = _Remainder(head, rest, request.headers.get("Content-Length"), limit)
    request.stream = remainder
    return remainder


def _with_length(
    headers: CIMultiDict[str] | None, body: bytes | _Remainder
) -> list[tuple[str, str]] | None:
    """Return an attempt's headers for httpx, with the length of a streamed body if known."""
    fields = list(headers.items()) if headers else None
    if isinstance(body, _Remainder) and body.length is not None:
        fields = [*(fields or ()), ("Content-Length", body.length)]
    return fields


async def _read_capped(answer: httpx.Response, limit: int, url: str) -> bytes:
    """Read a body as it came on the wire (still encoded), failing past ``limit`` bytes."""
    buffer = bytearray()
    async for chunk in answer.aiter_raw():
        buffer += chunk
        if len(buffer) > limit:
            raise BodyTooLargeError(limit, url=url)
    return bytes(buffer)


def _codings(headers: httpx.Headers, url: str) -> list[str]:
    """Return the content codings of a response in the order applied, or refuse them.

    Raises:
        ProtocolError: a coding this transport does not decode, or too many.

    """
    codings = [
        coding.strip().lower()
        for value in headers.get_list("Content-Encoding")
        for coding in value.split(",")
        if coding.strip()
    ]
    if len(codings) > _MAX_CODINGS:
        raise ProtocolError(
            f"malformed response from {url}: more than {_MAX_CODINGS} content codings"
        )
    for coding in codings:
        if coding not in _DECODED:
            raise ProtocolError(
                f"malformed response from {url}: content coding {coding[:32]!r} is not one"
                " healkit's httpx transport decodes (gzip, deflate)"
            )
    return codings


def _decodable(accepted: list[str]) -> str:
    """Return ``Accept-Encoding`` cut to the codings a buffered body is decoded from.

    httpx asks for ``br`` and ``zstd`` when their packages are installed; the
    transport decodes neither within ``max_body_bytes``, so it does not ask.
    """
    kept = [
        part.strip()
        for value in accepted
        for part in value.split(",")
        if part.split(";", 1)[0].strip().lower() in _DECODED
    ]
    return ", ".join(kept) if kept else "identity"


def _decode(body: bytes, codings: list[str], limit: int, url: str) -> bytes:
    """Undo ``codings`` (last applied first), each result capped at ``limit`` bytes.

    Raises:
        BodyTooLargeError: a step decodes past ``limit``.
        ProtocolError: the body does not decode as its codings say.

    """
    for coding in reversed(codings):
        if coding == "identity" or not body:  # no body (HEAD, 204, 304): nothing to decode
            continue
        try:
            try:
                body = _inflate(body, _DECODED[coding], limit, url)
            except zlib.error:
                if coding != "deflate":
                    raise
                body = _inflate(body, -zlib.MAX_WBITS, limit, url)  # raw, as some servers send
        except zlib.error as exc:
            raise ProtocolError(
                f"malformed response from {url}: the body does not decode as {coding}: {exc}"
            ) from exc
    return body


def _inflate(data: bytes, wbits: int, limit: int, url: str) -> bytes:
    """Decompress every member of ``data`` with zlib, failing past ``limit`` bytes."""
    decoded = bytearray()
    while True:
        inflater = zlib.decompressobj(wbits)
        decoded += inflater.decompress(data, limit + 1 - len(decoded))
        if len(decoded) > limit:
            raise BodyTooLargeError(limit, url=url)
        if not inflater.eof:
            raise zlib.error("the stream is truncated")
        data = inflater.unused_data
        if not data or wbits < 0:  # a raw deflate stream has one member
            return bytes(decoded)


def _drop_encoding(headers: httpx.Headers) -> None:
    """Remove what described the encoded body: its coding and its length."""
    del headers["Content-Encoding"]
    headers.pop("Content-Length", None)


def map_httpx_error(exc: httpx.HTTPError, *, url: str, connect: float, read: float) -> HealkitError:
    """Translate an httpx transport exception into the healkit tree.

    Args:
        exc: what the wrapped transport raised.
        url: the (redacted) URL of the attempt, for the message.
        connect: the attempt's connect limit, for a :class:`healkit.ConnectTimeout`.
        read: the attempt's read limit, for a :class:`healkit.ReadTimeout`.

    Returns:
        The most specific healkit error; the caller raises it ``from exc``.

    """
    detail = str(exc) or type(exc).__name__
    error: HealkitError
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        error = ConnectTimeout(f"connect to {url} timed out after {connect}s", limit=connect)
    elif isinstance(exc, httpx.ReadTimeout):
        error = ReadTimeout(f"no data from {url} for {read}s", limit=read)
    elif isinstance(exc, httpx.ConnectError | httpx.ProxyError):
        causes = _causes(exc)
        if any(isinstance(cause, ssl.SSLError) for cause in causes):
            error = TLSError(f"TLS handshake with {url} failed: {detail}")
        elif any(isinstance(cause, socket.gaierror) for cause in causes):
            error = DNSError(f"cannot resolve host of {url}: {detail}")
        else:
            error = ConnectError(f"cannot connect to {url}: {detail}")
    elif isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        error = InvalidRequestError(f"cannot send to {url}: {detail}")
    elif isinstance(exc, httpx.RemoteProtocolError):
        error = ProtocolError(f"malformed response from {url}: {detail}")
    else:
        error = ConnectionLostError(f"connection to {url} lost: {type(exc).__name__}: {detail}")
    return error


def _causes(exc: BaseException) -> list[BaseException]:
    """Return what ``exc`` was raised from or during, nearest first (httpcore's, the socket's)."""
    chain: list[BaseException] = []
    cause = exc.__cause__ or exc.__context__
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain
