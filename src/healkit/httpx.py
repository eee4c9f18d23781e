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
  read first, then the rest), and is not retried or hedged; a stream that
  raises is the caller's error, a :class:`healkit.InvalidRequestError` with
  the stream's exception as its ``__cause__`` (before anything was sent, or
  while it was: then ``may_have_reached_server`` is true), never counted
  against the endpoint;
* the response body is read within the attempt and decoded there (gzip and
  deflate, each step capped by ``max_body_bytes``; the response comes without
  its ``Content-Encoding``, as from a proxy), so a truncated body is a failed
  attempt that can be retried; with
  ``stream=True`` a response is judged on its head and its body is read by the
  caller as it arrives (server-sent events, large downloads), decoded as it
  is read;
* failures raise healkit's errors (:class:`healkit.HealkitError` and its
  subclasses, with the attempt history), not httpx's: the call's, the reading
  of a streamed body, a redirect httpx could not turn into its next request,
  a chain of redirects past ``max_redirects``; a call cut short by closing the
  client is a :class:`healkit.ClientClosedError`, not the endpoint's failure;
* TLS is the wrapped transport's (``httpx.AsyncHTTPTransport(verify=...)``):
  httpx has no per-request TLS context, so the TLS plugin's per-service
  contexts do not apply here.
"""

from __future__ import annotations

import asyncio
import codecs
import math
import socket
import ssl
import weakref
import zlib
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Final, Self, final

import httpx
from multidict import CIMultiDict, CIMultiDictProxy

from healkit._client import IDEMPOTENCY_HEADER
from healkit._client import _address as address
from healkit._clock import SYSTEM_CLOCK, Clock
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
    RedirectRefusedError,
    TLSError,
    TooManyRedirects,
    invalid_status,
)
from healkit._executor import execute
from healkit._http import (
    IDEMPOTENT_METHODS,
    REDIRECT_STATUSES,
    SentOnce,
    attempt_headers,
    closed_during,
    join_url,
)
from healkit._outcome import AttemptRecord, Outcome
from healkit._request_body import body_failed
from healkit._response import NOT_BODY_CHARSETS, OUTCOME_HEADER, Response
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
_CHAIN: Final = "healkit.redirects"
"""The key of a request's ``extensions`` under which the redirects that led to it are counted.

httpx copies a request's extensions into the next request of its redirect.
"""
_SAFE_CHARSETS: Final = frozenset({"utf-8", "ascii", "iso8859-1", "cp1252"})
"""Codecs (by Python's name) that decode any bytes with replacement: not tried on a body."""
_PIECE: Final = 64 * 1024
"""The most bytes one step of a streamed body's decoding hands on at a time."""


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

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called: no attempt is sent after it."""
        return self._closed

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
        endpoint, path, service, policy, _ = address(config, target, self._service)
        _count_hop(request, policy.max_redirects, config.redactor.url(target))
        body = await _request_body(request, policy.max_body_bytes)
        # As sent: httpx takes header values as bytes, and Latin-1 gives each byte back.
        headers = CIMultiDict(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower().decode("latin-1") not in _HOP_HEADERS
        )
        if "Accept-Encoding" in headers:
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
            # routable: the URL is under a configured endpoint (userinfo or not: see address)
            endpoint in policy.endpoints,
        )
        attempts = _Attempts(
            self, self._inner, request, body, stream=self._stream, closing=self._closing
        )
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

    __slots__ = ("_body", "_closing", "_extensions", "_inner", "_once", "_owner", "_stream", "_url")

    concurrent = True  # each attempt builds its own httpx.Request

    def __init__(  # noqa: PLR0913 - what one call's attempts share; built in one place
        self,
        owner: ResilientTransport,
        inner: httpx.AsyncBaseTransport,
        request: httpx.Request,
        body: bytes | _Remainder,
        *,
        stream: bool,
        closing: set[asyncio.Task[None]],
    ) -> None:
        self._owner = owner
        self._inner = inner
        self._url = request.url
        self._body = body
        self._extensions = {k: v for k, v in request.extensions.items() if k != _CHAIN}
        self._stream = stream
        self._closing = closing
        # A body past the buffer is sent at most once, as healkit.Client sends a stream.
        self._once = None if isinstance(body, bytes) else SentOnce(body)

    async def send(
        self, call: CallContext, attempt: AttemptContext
    ) -> tuple[httpx.Response, Response | None]:
        if attempt.endpoint is None:
            raise InvalidRequestError(f"no endpoint to send {call.method} {call.target} to")
        if self._owner.closed:  # the wrapped transport is closed: its pool would open anew
            raise ClientClosedError(f"the client was closed before attempt {attempt.number}")
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
        shown = call.config.redactor.url(url)
        try:
            request = httpx.Request(
                call.method,
                url,
                headers=_with_length(headers, body),
                content=body,
                extensions=extensions,
            )
            answer = await self._answer(request, body)
            body_stream = _async_body(answer, shown)
            try:
                codings = self._judge_head(answer, attempt, shown)
            except HealkitError:
                await answer.aclose()
                raise
            if self._stream:
                answer.stream = _Streamed(body_stream, codings, shown, self._owner, attempt)
                return answer, _judged(answer, shown, b"")
            raw = await _read_body(answer, codings, call.policy.max_body_bytes, shown)
        except httpx.HTTPError as exc:
            error = map_httpx_error(exc, url=shown, connect=limits.connect, read=limits.read)
            if once is not None:
                once.failed(error)  # given back if the body cannot have been read
            raise _unless_closed(self._owner, error, attempt) from exc
        except httpx.InvalidURL as exc:
            raise InvalidRequestError(f"invalid URL {shown}: {exc}") from exc
        result = httpx.Response(
            answer.status_code,
            headers=answer.headers,
            content=raw,
            extensions=dict(answer.extensions),
        )
        return result, _judged(result, shown, raw)

    async def _answer(self, request: httpx.Request, body: bytes | _Remainder) -> httpx.Response:
        """Send ``request`` through the wrapped transport.

        Raises:
            InvalidRequestError: the caller's stream raised while it was sent,
                with what it raised as its ``__cause__`` (httpcore's pool raises
                the error again ``from None``).

        """
        try:
            return await self._inner.handle_async_request(request)
        except InvalidRequestError as exc:
            if isinstance(body, _Remainder) and body.failure is not None:
                raise exc from body.failure
            raise

    def _judge_head(self, answer: httpx.Response, attempt: AttemptContext, url: str) -> list[str]:
        """Check an answer's head; return the content codings its body is decoded from.

        The codings' headers are dropped: the body is handed on decoded.

        Raises:
            ProtocolError: a status out of 100 to 599, or codings not decoded here.
            RedirectRefusedError: a redirect whose ``Location`` httpx cannot follow.

        """
        if not 100 <= answer.status_code <= 599:
            raise invalid_status(answer.status_code, url)
        attempt.status = answer.status_code
        answer.headers.pop(OUTCOME_HEADER, None)  # only healkit says how a call went
        _drop_unsendable_cookies(answer.headers)
        if answer.status_code in REDIRECT_STATUSES and "Location" in answer.headers:
            _check_location(self._url, answer.status_code, answer.headers["Location"], url)
        codings = _codings(answer.headers, url)
        if codings:
            _drop_encoding(answer.headers)
        return codings

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
        made = result.extensions[OUTCOME_EXTENSION] = outcome()
        if isinstance(result.stream, _Streamed):
            result.stream.attempts = made.attempts
        try:
            body = result.content
        except httpx.ResponseNotRead:  # streamed: only a codec that decodes no body is told
            body = b""
        _readable_text(result, body)
        return result


def _readable_text(response: httpx.Response, body: bytes) -> None:
    """Have ``response.text`` decode with UTF-8 if its charset cannot decode ``body``.

    httpx decodes the text with the Content-Type's charset, the upstream's
    word, and with replacement; a codec that refuses replacement (``idna``),
    always fails (``undefined``), is not text (``base64``) or fails on the body
    (``utf-16`` without a byte order mark) would raise its own error from
    ``response.text``. As :meth:`healkit.Response.text` does, UTF-8 is used
    then. A charset Python does not know is left to httpx's default encoding.
    """
    if "charset" not in response.headers.get("Content-Type", "").lower():
        return  # most answers (JSON) name none: httpx's parse of the header costs microseconds
    charset = response.charset_encoding
    if charset is None:
        return
    try:
        name = codecs.lookup(charset).name
        if name in _SAFE_CHARSETS:
            return
        if name in NOT_BODY_CHARSETS:
            response.encoding = "utf-8"
            return
        decoder = codecs.getincrementaldecoder(charset)(errors="replace")
        decoder.decode(body)  # as httpx decodes it: the body, then the end
        decoder.decode(b"", final=True)
    except LookupError:  # a charset Python does not know: httpx uses its default encoding
        return
    except Exception:  # noqa: BLE001 - a codec is any code: whatever it raises, it cannot decode
        response.encoding = "utf-8"


def _async_body(answer: httpx.Response, url: str) -> httpx.AsyncByteStream:
    """Return the body stream of the wrapped transport's ``answer``, which must be async.

    Raises:
        ProtocolError: the body is a synchronous stream (a custom wrapped
            transport's): httpx's ``AsyncClient`` would raise ``TypeError``.

    """
    stream = answer.stream
    if not isinstance(stream, httpx.AsyncByteStream):
        answer.close()
        raise ProtocolError(
            f"malformed response from {url}: the wrapped transport answered with a"
            " synchronous body (an httpx.AsyncBaseTransport answers with an AsyncByteStream)"
        )
    return stream


def _drop_unsendable_cookies(headers: httpx.Headers) -> None:
    """Drop each ``Set-Cookie`` that is not ASCII (RFC 6265's cookies are).

    httpx's client keeps such a cookie in its jar, then fails every later
    request to that host as it builds the ``Cookie`` header (``UnicodeEncodeError``,
    before the transport): an upstream could so break the client for good.
    """
    cookies = [value for name, value in headers.raw if name.lower() == b"set-cookie"]
    if all(value.isascii() for value in cookies):
        return
    del headers["Set-Cookie"]
    headers.update(httpx.Headers([(b"Set-Cookie", v) for v in cookies if v.isascii()]))


def _judged(answer: httpx.Response, url: str, body: bytes) -> Response:
    """Return healkit's view of ``answer``, for the plugins to judge (``b""``: body unread)."""
    return Response(
        answer.status_code,
        headers=CIMultiDictProxy(CIMultiDict(answer.headers.multi_items())),
        body=body,
        url=url,
        reason=answer.reason_phrase,
    )


@final
class _Chain:
    """The redirects httpx followed to reach a request (``request.extensions[_CHAIN]``)."""

    __slots__ = ("hops", "last", "limit", "url")

    def __init__(self, request: httpx.Request, limit: int, url: str) -> None:
        self.hops = 0
        self.last = weakref.ref(request)  # the chain's latest request
        self.limit = limit  # the first request's service's max_redirects
        self.url = url  # the (redacted) URL of the latest request


def _count_hop(request: httpx.Request, limit: int, url: str) -> None:
    """Count ``request`` as a hop of the redirects httpx follows; refuse one too many.

    httpx follows redirects above the transport (``follow_redirects=True``),
    each hop a request of its own: its ``max_redirects`` (20) would end a
    chain with its own ``httpx.TooManyRedirects``. The chain is counted in
    the requests' extensions, which httpx hands from each hop to the next; a
    request sent again as it is (``client.send(request)``) is not a hop.

    Raises:
        TooManyRedirects: more hops than the first request's service's
            ``max_redirects``.

    """
    chain = request.extensions.get(_CHAIN)
    if not isinstance(chain, _Chain):
        request.extensions[_CHAIN] = _Chain(request, limit, url)
        return
    if chain.last() is request:
        return
    chain.hops += 1
    if chain.hops > chain.limit:
        raise TooManyRedirects(chain.limit, url=chain.url)
    chain.last = weakref.ref(request)
    chain.url = url


def _unless_closed(
    owner: ResilientTransport, error: HealkitError, attempt: AttemptContext
) -> HealkitError:
    """Return ``error``, or a ClientClosedError if the application closed ``owner`` under it.

    The wrapped transport's connections went with it: the failure is not the
    endpoint's, and is neither counted against it nor retried (as for
    :class:`healkit.Client`).
    """
    return closed_during(error, attempt) if owner.closed else error


def _check_location(sent: httpx.URL, status: int, location: str, url: str) -> None:
    """Refuse a redirect whose ``Location`` httpx cannot turn into its next request.

    httpx's client builds the next request of every redirect, even with
    ``follow_redirects`` off (``response.next_request``), as its
    ``_redirect_url`` does here: ``sent`` is the URL the client sent,
    ``url`` the (redacted) URL that answered.

    Raises:
        RedirectRefusedError: the ``Location`` is not a URL httpx can parse or
            resolve (it would raise ``httpx.RemoteProtocolError``,
            ``httpx.InvalidURL`` or idna's ``UnicodeError`` to the caller).

    """
    try:
        target = httpx.URL(location)
        if target.scheme and not target.host:
            target = target.copy_with(host=sent.host)
        if target.is_relative_url:
            sent.join(target)
    except (httpx.InvalidURL, ValueError):  # idna's errors are UnicodeErrors: ValueErrors
        raise RedirectRefusedError(
            "the Location is not a URL httpx can follow",
            status=status,
            url=url,
            location="<invalid URL>",
        ) from None


@final
class _Remainder(httpx.AsyncByteStream):
    """A request body longer than the buffer: the chunks read so far, then the rest as it comes.

    httpx sends it as it is read, so it is sent once (:class:`~healkit._http.SentOnce`
    refuses a second attempt); it also becomes the request's stream, so that
    httpx's own second send (a 307 or 308 it follows) is refused here, not
    sent cut short. ``length``: the caller's ``Content-Length``, kept (else
    the body goes chunked).
    """

    __slots__ = ("_head", "_limit", "_rest", "_started", "failure", "length")

    def __init__(
        self, head: list[bytes], rest: AsyncIterator[bytes], length: str | None, limit: int
    ) -> None:
        self._head = deque(head)
        self._rest = rest
        self._limit = limit
        self._started = False
        self.length = length
        self.failure: Exception | None = None  # what the caller's stream raised while sent

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._started:
            raise InvalidRequestError(
                "not sent again: the request body is a stream longer than max_body_bytes"
                f" ({self._limit} bytes), sent once as it was read (pass bytes, or raise"
                " max_body_bytes, for a request that may be sent more than once)"
            )
        self._started = True
        head = self._head
        sent = 0  # what httpx took: it sends a chunk before it asks for the next
        while head:
            chunk = head.popleft()  # each chunk let go once sent
            yield chunk
            sent += len(chunk)
        rest = self._rest
        while True:
            try:
                chunk = await anext(rest)
            except StopAsyncIteration:
                return
            except Exception as exc:  # the caller's stream failed, not the connection
                self.failure = exc
                raise body_failed(exc, sent) from exc
            yield chunk
            sent += len(chunk)


@final
class _Streamed(httpx.AsyncByteStream):
    """The body of a response handed over unread (``stream=True``), as the caller reads it.

    Decoded here from its content codings (gzip, deflate) and with httpx's
    errors translated, so that reading it raises healkit's errors only, with
    the call's attempts (``attempts``, set when the call ends).
    """

    __slots__ = ("_attempt", "_owner", "_raw", "_steps", "_url", "attempts")

    def __init__(
        self,
        raw: httpx.AsyncByteStream,
        codings: Sequence[str],
        url: str,
        owner: ResilientTransport,
        attempt: AttemptContext,
    ) -> None:
        self._raw = raw
        self._steps = [_Inflating(coding) for coding in reversed(codings) if coding != "identity"]
        self._url = url
        self._owner = owner
        self._attempt = attempt
        self.attempts: tuple[AttemptRecord, ...] = ()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._raw:
                for piece in _through(self._steps, chunk, self._url):
                    yield piece
            for step in self._steps:
                step.end(self._url)
        except httpx.HTTPError as exc:
            raise self._failed(self._mapped(exc)) from exc
        except ProtocolError as error:
            raise self._failed(error) from error.__cause__

    async def aclose(self) -> None:
        try:
            await self._raw.aclose()
        except httpx.HTTPError as exc:
            raise self._failed(self._mapped(exc)) from exc

    def _mapped(self, exc: httpx.HTTPError) -> HealkitError:
        limits = self._attempt.timeouts
        return map_httpx_error(exc, url=self._url, connect=limits.connect, read=limits.read)

    def _failed(self, error: HealkitError) -> HealkitError:
        error = _unless_closed(self._owner, error, self._attempt)
        error.attempts = self.attempts
        return error


@final
class _Inflating:
    """One content coding of a streamed body, undone as the body arrives.

    What it hands on comes in pieces of at most :data:`_PIECE` bytes, so that a
    small chunk that decodes to much is never held whole. ``deflate`` is
    zlib-wrapped or raw (as some servers send it), told by its first two bytes.
    """

    __slots__ = ("_coding", "_fed", "_pending", "_wbits", "_zlib")

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._wbits = _DECODED[coding]
        self._zlib = zlib.decompressobj(self._wbits)
        self._pending: bytes | None = b"" if coding == "deflate" else None
        self._fed = False

    def feed(self, data: bytes, url: str) -> Iterator[bytes]:
        """Yield what ``data``, the next bytes of the body, decodes to."""
        if self._pending is not None:
            data = self._pending + data
            if len(data) < 2:
                self._pending = data
                return
            self._pending = None
            if data[0] & 0x0F != 8 or (data[0] << 8 | data[1]) % 31:  # RFC 1950's header check
                self._wbits = -zlib.MAX_WBITS
                self._zlib = zlib.decompressobj(self._wbits)
        self._fed = self._fed or bool(data)
        try:
            while True:
                if self._zlib.eof and data:
                    if self._wbits < 0:  # a raw deflate stream has one member
                        return
                    self._zlib = zlib.decompressobj(self._wbits)  # the next gzip member
                piece = self._zlib.decompress(data, _PIECE)
                data = self._zlib.unused_data if self._zlib.eof else self._zlib.unconsumed_tail
                if piece:
                    yield piece
                if not data and len(piece) < _PIECE:
                    return
        except zlib.error as exc:
            raise self._malformed(str(exc), url) from exc

    def end(self, url: str) -> None:
        """Check that the body ended where its coding does.

        Raises:
            ProtocolError: the coded stream is cut short.

        """
        if self._pending or (self._fed and not self._zlib.eof):
            raise self._malformed("the stream is truncated", url)

    def _malformed(self, detail: str, url: str) -> ProtocolError:
        return ProtocolError(
            f"malformed response from {url}: the body does not decode as {self._coding}: {detail}"
        )


def _through(steps: Sequence[_Inflating], data: bytes, url: str) -> Iterator[bytes]:
    """Yield what ``data`` decodes to through ``steps`` (the coding applied last first)."""
    if not steps:
        if data:
            yield data
        return
    for piece in steps[0].feed(data, url):
        yield from _through(steps[1:], piece, url)


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
) -> list[tuple[bytes, bytes]] | None:
    """Return an attempt's headers for httpx, with the length of a streamed body if known.

    As bytes: httpx would encode text as ASCII, and refuse (``UnicodeEncodeError``)
    the bytes its caller gave (read here as Latin-1).
    """
    fields = [(_octets(k), _octets(v)) for k, v in headers.items()] if headers else None
    if isinstance(body, _Remainder) and body.length is not None:
        fields = [*(fields or ()), (b"Content-Length", _octets(body.length))]
    return fields


def _octets(text: str) -> bytes:
    """Return a header name or value as sent: Latin-1 gives back the caller's bytes.

    Text past Latin-1 (a plugin's) goes as UTF-8, as aiohttp sends it.
    """
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode()


async def _read_body(answer: httpx.Response, codings: list[str], limit: int, url: str) -> bytes:
    """Read a buffered body within its attempt and decode it, each step under ``limit``."""
    try:
        raw = await _read_capped(answer, limit, url)
    finally:
        await answer.aclose()
    return _decode(raw, codings, limit, url) if codings else raw


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
