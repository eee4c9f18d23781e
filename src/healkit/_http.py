"""HTTP over aiohttp: the transport of :class:`healkit.Client`.

One attempt = one aiohttp request to ``attempt.endpoint + call.target`` with
the attempt's connect and read timeouts. Buffered calls read the whole body
(under ``max_body_bytes``) before the response is judged, so a truncated or
stalled body is a failed attempt that can be retried; streaming calls are
judged on their head and hand the open response to the caller.

Redirects are part of the attempt, not a hidden resend: aiohttp is told not
to follow them, and the transport follows each hop itself (when the service's
``follow_redirects`` allows) under the attempt's time limit: at most
``max_redirects`` hops, each to an ``http``/``https`` URL whose origin
``routing.allowed_origins`` admits, with the credentials left out on a hop to
another origin, 303 (and 301/302 after a POST) turned into a GET without a
body, 307/308 resending method and body (a streamed body cannot be: refused).
Each hop is recorded on the attempt; once one was answered, any later failure
of the attempt says the request may have reached the server.

A request body that is read as it is sent (a file object, an async iterable,
a form or multipart holding one: see :func:`replayable`) is sent at most
once per call: :class:`SentOnce` refuses any later send that could find it
read, whoever asked for it (a retry, a failover, a hedge).
"""

from __future__ import annotations

import functools
import io
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from http.cookies import CookieError
from typing import Any, Final, final
from urllib.parse import urljoin

import aiohttp
import yarl
from multidict import CIMultiDict

from healkit._config.models import MAX_REDIRECTS, Timeouts, url_problem
from healkit._context import AttemptContext, CallContext, Fallback
from healkit._errors import (
    BodyTooLargeError,
    ClientClosedError,
    HealkitError,
    InvalidRequestError,
    RedirectRefusedError,
    TooManyRedirects,
    aiohttp_cause,
    invalid_status,
    map_aiohttp_error,
)
from healkit._outcome import Outcome, RedirectRecord
from healkit._request_body import WatchedBody, body_failed
from healkit._response import CHUNK_SIZE, OUTCOME_HEADER, Response
from healkit._routing.settings import redirect_rules

__all__ = [
    "REDIRECT_STATUSES",
    "HttpTransport",
    "SentOnce",
    "attempt_headers",
    "closed_during",
    "join_url",
    "next_method",
    "reached",
    "redirect_target",
    "replayable",
    "unless_closed",
]

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
"""The statuses healkit treats as redirects (as aiohttp, httpx and browsers do)."""
BODY_HEADERS: Final = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "content-language",
        "content-location",
        "transfer-encoding",
    }
)
"""Headers describing a request body: left out when a redirect turns the request into a GET."""
CREDENTIAL_OPTIONS: Final = ("auth", "cookies")
"""aiohttp options that carry credentials: left out on a hop to another origin."""
# What aiohttp raises, outside aiohttp.ClientError, for options it refuses while
# it builds a request: its checks of the options and of the request it builds
# (ClientRequest: compress= beside a Content-Encoding header, chunked= beside a
# Content-Length, auth= beside an Authorization header, the payload of data=,
# the cookie jar), all before a connection is taken. Once it sends, aiohttp
# wraps what fails in ClientError (writing the body, reading the answer). Only
# the caller's own code could raise them later: an adopted session's
# middlewares or trace callbacks, whose errors are taken alike.
_REFUSED_OPTIONS: Final = (ValueError, TypeError, CookieError)
_REQUEST_ERRORS: Final = (aiohttp.ClientError, OSError, *_REFUSED_OPTIONS)
_SHOWN_REFUSAL_CHARS: Final = 200
_IN_MEMORY: Final = (bytes, bytearray, memoryview, str, aiohttp.payload.BytesPayload)
"""Bodies (and form field values) aiohttp sends from memory: the same bytes at every send."""
_READ_WHEN_SENT: Final = (AsyncIterable, aiohttp.payload.AsyncIterablePayload)
"""Bodies first read once a connection is made: untouched by an attempt that never connected."""


@final
class HttpTransport:
    """Sends the attempts of one HTTP call through an aiohttp session."""

    __slots__ = ("_data", "_follow", "_once", "_options", "_session", "_stream", "_watched")

    concurrent = True  # each attempt is a request of its own

    def __init__(
        self,
        session: aiohttp.ClientSession,
        data: Any,  # noqa: ANN401 - whatever aiohttp accepts as a body
        options: Mapping[str, Any],
        stream: bool,  # by position (as all four): keywords to a class cost a dict per call
    ) -> None:
        self._session = session
        self._data = data
        self._stream = stream
        self._once: SentOnce | None = None  # made by the first send of a body read once
        # The payload of a body read once, as sent: its failure is told from the connection's.
        self._watched: WatchedBody | None = None
        self._follow: tuple[bool | None, int | None] | None = None
        if "allow_redirects" in options or "max_redirects" in options:
            options = dict(options)
            self._follow = _redirect_options(
                options.pop("allow_redirects", None), options.pop("max_redirects", None)
            )
        self._options = options

    async def send(
        self, call: CallContext, attempt: AttemptContext
    ) -> tuple[Response, Response | None]:
        """Make one request; map aiohttp's errors; read the body unless streaming."""
        # The request and its reads are awaited in this frame (one coroutine per
        # attempt); the synchronous steps are the functions it calls.
        url, headers, options = self._request(call, attempt)
        limits = attempt.timeouts
        once = watched = None
        data = self._data
        if not call.replayable:
            once = self._once = self._once or SentOnce(data)
            once.take(call, attempt)
            data = watched = self._watched = self._watched or WatchedBody.of(data)
        try:
            raw = await self._session.request(
                call.method,
                url,
                headers=headers,
                data=data,
                timeout=_client_timeout(limits, self._stream),
                # What aiohttp hands to TraceConfig callbacks (a tracing plugin's):
                # they find the attempt, and its stash, there.
                trace_request_ctx=attempt,
                allow_redirects=False,  # healkit follows them: see _redirected
                **options,
            )
        except _REQUEST_ERRORS as exc:
            if watched is not None and (failure := watched.failure) is not None:
                raise body_failed(failure, watched.sent) from failure
            error = _request_failed(exc, call.config.redactor.url(url), limits)
            if once is not None:
                once.failed(error)
            raise unless_closed(self._session, error, attempt) from aiohttp_cause(exc)
        public = url  # the URL we built has no userinfo
        if raw.status in REDIRECT_STATUSES or not 100 <= raw.status <= 599:
            hop = _Hop(call.method, url, headers, self._data, options)
            raw, public = await self._settled(call, attempt, raw, hop, url)
        if self._stream:
            response = Response.streaming(
                raw, url=public, limit=call.policy.max_body_bytes, read_timeout=limits.read
            )
            return response, response
        attempt.status = raw.status  # known even if reading the body fails
        try:
            try:
                if call.method == "HEAD":
                    body = b""
                elif _length_known(raw, call.policy.max_body_bytes, public):
                    body = await raw.read()
                else:
                    body = await _read_capped(raw, call.policy.max_body_bytes, public)
            finally:
                raw.release()
        except (aiohttp.ClientError, OSError) as exc:  # reading the body: a response arrived
            redacted = call.config.redactor.url(public)
            error = map_aiohttp_error(exc, url=redacted, timeouts=(limits.connect, limits.read))
            raise unless_closed(self._session, error, attempt) from aiohttp_cause(exc)
        response = Response._received(raw, body, public)  # noqa: SLF001 - see _received
        return response, response

    def _request(
        self, call: CallContext, attempt: AttemptContext
    ) -> tuple[str, CIMultiDict[str] | None, Mapping[str, Any]]:
        """Return the URL, headers and aiohttp options of the attempt's request.

        Raises:
            InvalidRequestError: the attempt has no endpoint, or may not be sent to it
                (see :meth:`_attempt_options`).
            ClientClosedError: the client was closed during the call.

        """
        if attempt.endpoint is None:
            raise InvalidRequestError(f"no endpoint to send {call.method} {call.target} to")
        if self._session.closed:
            raise ClientClosedError("the client was closed before this attempt")
        options = self._options
        if attempt.ssl is not None or attempt.withheld_headers:
            options = self._attempt_options(call, attempt)
        return join_url(attempt.endpoint, call.target), attempt_headers(call, attempt), options

    def _attempt_options(self, call: CallContext, attempt: AttemptContext) -> Mapping[str, Any]:
        """Return the call's options with the attempt's TLS context, less its credentials.

        Credentials (``cookies=``, ``auth=``) are left out for an endpoint the
        router withholds them from (``attempt.withheld_headers``).

        Raises:
            InvalidRequestError: the session adds credentials to every request (see
                :func:`_ambient_credentials`): nothing is sent to that endpoint.

        """
        options = self._options
        if attempt.ssl is not None and "ssl" not in options:
            options = {**options, "ssl": attempt.ssl}
        if not attempt.withheld_headers:
            return options
        ambient = _ambient_credentials(self._session, attempt.withheld_headers)
        if ambient:
            endpoint = call.config.redactor.url(attempt.endpoint or "")
            raise InvalidRequestError(
                f"not sent to {endpoint}, an endpoint of another origin than service"
                f" {call.service!r}'s first: the session sends {', '.join(ambient)} with every"
                " request (pass credentials per request, or set routing.forward_credentials)"
            )
        return _without_credentials(options)

    def discard(self, result: Response) -> None:
        """Release a streaming response declared a failure."""
        result.release()

    def accept(self, fallback: Fallback) -> Response | None:
        """Accept a fallback whose value is a Response; mark it with the outcome header."""
        value = fallback.value
        if not isinstance(value, Response):
            return None
        return value.with_header(OUTCOME_HEADER, fallback.path)

    def finish(self, result: Response, outcome: Callable[[], Outcome]) -> Response:
        """Attach the outcome."""
        result._bind_outcome(outcome)  # noqa: SLF001 - the transport that made the response
        return result

    def _follows(self, call: CallContext) -> bool:
        follow = self._follow
        if follow is None or follow[0] is None:
            return call.policy.follow_redirects
        return follow[0]

    async def _settled(
        self,
        call: CallContext,
        attempt: AttemptContext,
        raw: aiohttp.ClientResponse,
        hop: _Hop,
        public: str,
    ) -> tuple[aiohttp.ClientResponse, str]:
        """Follow the redirect ``raw`` (if it is one to follow); refuse a status out of range.

        Returns the answer to judge and the (userinfo-free) URL it came from,
        ``public`` (the URL of ``raw``) when no redirect was followed.

        Raises:
            ProtocolError: the answer's status is not 100 to 599.

        """
        if raw.status in REDIRECT_STATUSES and self._follows(call):
            raw, public = await self._redirected(call, attempt, raw, hop)
        if not 100 <= raw.status <= 599:
            raw.release()
            raise reached(invalid_status(raw.status, call.config.redactor.url(public)), attempt)
        return raw, public

    async def _redirected(
        self, call: CallContext, attempt: AttemptContext, raw: aiohttp.ClientResponse, hop: _Hop
    ) -> tuple[aiohttp.ClientResponse, str]:
        """Follow the redirect ``raw`` and every one after it, hop by hop.

        Returns the first answer that is not a redirect to follow, and the
        (userinfo-free) URL it came from. Every hop is recorded on ``attempt``.

        Raises:
            TooManyRedirects: more than ``max_redirects`` hops.
            RedirectRefusedError: a hop healkit does not follow.
            HealkitError: a later hop failed (``may_have_reached_server`` is true).

        """
        follow = self._follow
        limit = call.policy.max_redirects
        if follow is not None and follow[1] is not None:
            limit = follow[1]
        timeout = _client_timeout(attempt.timeouts, self._stream)
        ambient = _ambient_credentials(self._session, redirect_rules(call.policy).credentials)
        while raw.status in REDIRECT_STATUSES:
            location = raw.headers.get("Location")
            if location is None:  # nothing to follow: the redirect is the answer (as in aiohttp)
                break
            raw.release()
            done = len(attempt.redirects)
            record = hop.follow(call, raw.status, location, limit=limit, done=done, ambient=ambient)
            attempt.redirects = (*attempt.redirects, record)
            try:
                raw = await self._session.request(
                    hop.method,
                    hop.url,
                    headers=hop.headers,
                    data=hop.data,
                    timeout=timeout,
                    trace_request_ctx=attempt,
                    allow_redirects=False,
                    **hop.options,
                )
            except _REQUEST_ERRORS as exc:
                error = reached(_request_failed(exc, record.location, attempt.timeouts), attempt)
                raise unless_closed(self._session, error, attempt) from aiohttp_cause(exc)
        return raw, str(hop.url)


@final
class _Hop:
    """The request of an attempt as it goes from hop to hop of its redirects."""

    __slots__ = ("data", "headers", "method", "options", "start", "url")

    def __init__(
        self,
        method: str,
        url: str,
        headers: CIMultiDict[str] | None,
        data: Any,  # noqa: ANN401 - whatever aiohttp accepts as a body
        options: Mapping[str, Any],
    ) -> None:
        self.method = method
        self.url = self.start = yarl.URL(url)
        self.headers = headers
        self.data = data
        self.options = options

    def follow(  # noqa: PLR0913 - the hop's facts, each by keyword
        self,
        call: CallContext,
        status: int,
        location: str,
        *,
        limit: int,
        done: int,
        ambient: tuple[str, ...],
    ) -> RedirectRecord:
        """Apply healkit's rules to the redirect ``status`` to ``location``; become its hop.

        ``ambient`` names the credentials the session adds to every request
        (its default headers, its ``auth``): healkit cannot leave them out of
        one request, so a hop to another origin is refused when there are any.

        Raises:
            TooManyRedirects: ``done`` redirects were followed already, the limit.
            RedirectRefusedError: the redirect is not one healkit follows.

        """
        redactor = call.config.redactor
        current = self.url
        here = redactor.url(current)
        target = redirect_target(current, location)
        if target is None:
            raise _unfollowable(location, status, here)
        shown = redactor.url(target)
        if done >= limit:
            raise TooManyRedirects(limit, url=here)
        rules = redirect_rules(call.policy)
        if not rules.allows(target, self.start):
            reason = "its origin is outside routing.allowed_origins"
            raise RedirectRefusedError(reason, status=status, url=here, location=shown)
        method = next_method(status, self.method)
        if method != self.method:
            self.method, self.data = method, None
            self.headers = _without(self.headers, BODY_HEADERS)
        elif self.data is not None and not call.replayable:
            reason = "the request body was streamed and cannot be sent again (pass bytes)"
            raise RedirectRefusedError(reason, status=status, url=here, location=shown)
        if target.origin() != current.origin():
            if ambient:
                reason = (
                    f"it goes to another origin, and the session sends {', '.join(ambient)}"
                    " with every request (pass credentials per request instead)"
                )
                raise RedirectRefusedError(reason, status=status, url=here, location=shown)
            self.headers = _without(self.headers, rules.credentials)
            self.options = _without_credentials(self.options)
        self.url = target
        return RedirectRecord(url=here, status=status, location=shown, method=self.method)


def unless_closed(
    session: aiohttp.ClientSession, error: HealkitError, attempt: AttemptContext
) -> HealkitError:
    """Return ``error`` of an attempt, or a ClientClosedError if ``session`` was closed under it.

    The attempt then failed because the application closed its client or
    session (the connections went with it), which says nothing of the
    endpoint: a :class:`ClientClosedError` is not counted against it (a
    breaker, an ejection) nor retried. It keeps ``error``'s
    ``may_have_reached_server``.
    """
    return error if not session.closed else closed_during(error, attempt)


def closed_during(error: HealkitError, attempt: AttemptContext) -> ClientClosedError:
    """Return the :class:`ClientClosedError` of an attempt that failed with ``error``.

    For a transport whose client the application closed during the attempt
    (see :func:`unless_closed`); it keeps ``error``'s ``may_have_reached_server``.
    """
    closed = ClientClosedError(
        f"the client was closed during attempt {attempt.number} ({error.message})"
    )
    closed.may_have_reached_server = error.may_have_reached_server
    return closed


def replayable(data: object) -> bool:
    """Whether a request body (what aiohttp takes as ``data=``) can be sent again, whole.

    True for no body, bytes and bytes-like objects, text, aiohttp's in-memory
    payloads (``BytesPayload``: JSON, text, encoded forms), and forms (a
    mapping or ``(name, value)`` pairs) or ``aiohttp.MultipartWriter`` whose
    every value is one of those, or a number: each send rebuilds them from
    memory. False for what is read as it is sent (a file object, an async
    iterable: an async generator, an ``aiohttp.StreamReader``), for a form or
    multipart holding one, for an ``aiohttp.FormData`` (its fields are
    aiohttp's to see: ``healkit.Client`` judges the payload it builds of one),
    and for any other payload.
    """
    if data is None or isinstance(data, _IN_MEMORY):
        return True
    if isinstance(data, Mapping):
        return all(_replayable_field(value) for value in data.values())
    if isinstance(data, list | tuple):
        return all(
            isinstance(field, list | tuple) and len(field) == 2 and _replayable_field(field[1])
            for field in data
        )
    if isinstance(data, aiohttp.MultipartWriter):
        return all(replayable(part) for part, _, _ in data)
    return False


def _replayable_field(value: object) -> bool:
    """Whether a form field's value is sent from memory (text, bytes, a number, a payload)."""
    return isinstance(value, int | float) or (
        not isinstance(value, Mapping | list | tuple) and replayable(value)
    )


@final
class SentOnce:
    """The sends of one call's request body that cannot be replayed: at most one reads it.

    A transport asks :meth:`take` before each send of such a body. The first
    send takes it; a later one (a retry, a failover, a hedge, whoever asked
    for it) is refused, unless every send so far failed before the body could
    be read: an async iterable is read only once a connection is made, and so
    is a file (or a form of files and values in memory), so a refused
    connection leaves them whole. A file is given back only if it is still
    open where it stood when the first send took it: aiohttp closes a file on
    disk when its request ends, however it ends, but not an ``io.BytesIO``.
    """

    __slots__ = ("_body", "_files", "_taken_by")

    def __init__(self, body: object) -> None:
        self._body = body
        self._taken_by: int | None = None  # the number of the attempt that took the body
        # The body's files and where each stood when first taken (None: not only files).
        self._files: tuple[tuple[io.IOBase, int], ...] | None = None

    def take(self, call: CallContext, attempt: AttemptContext) -> None:
        """Take the body for ``attempt``'s send.

        Raises:
            InvalidRequestError: an earlier attempt took it already (nothing is
                sent); it names that attempt's failure, if it failed.

        """
        taken_by = self._taken_by
        if taken_by is not None:
            body = self._body
            kind = (
                "a form holding a file or a stream"
                if isinstance(body, Mapping | list | tuple)
                else type(body).__name__
            )
            failure = next(
                (
                    f", and it failed with {type(a.error).__name__}"
                    for a in call.attempts
                    if a.number == taken_by and a.error is not None
                ),
                "",
            )
            raise InvalidRequestError(
                f"not sent again: the request body ({kind}) is read as it is sent, and"
                f" attempt #{taken_by} of this {call.method} sent it{failure} (pass bytes"
                " for a request that may be sent more than once)"
            )
        if self._files is None:
            self._files = _file_positions(self._body)
        self._taken_by = attempt.number

    def failed(self, error: HealkitError) -> None:
        """Give the body back if the send that took it failed before it could be read."""
        if error.may_have_reached_server:
            return
        if isinstance(self._body, _READ_WHEN_SENT) or _unmoved(self._files):
            self._taken_by = None


def _file_positions(body: object) -> tuple[tuple[io.IOBase, int], ...] | None:
    """Return the files ``body`` is read from, and where each stands.

    ``None`` unless ``body`` is a file, or a form whose fields are files or
    values held in memory.
    """
    if isinstance(body, Mapping):
        values: Iterable[object] = body.values()
    elif isinstance(body, list | tuple):
        values = (field[1] for field in body if isinstance(field, list | tuple) and len(field) == 2)
    else:
        values = (body,)
    files = []
    for value in values:
        if isinstance(value, io.IOBase):
            try:
                files.append((value, value.tell()))
            except (OSError, ValueError):  # closed, or a pipe: where it stands is not known
                return None
        elif not _replayable_field(value):
            return None
    return tuple(files) if files else None


def _unmoved(files: tuple[tuple[io.IOBase, int], ...] | None) -> bool:
    """Whether every one of ``files`` is open and where it stood (nothing of it was read)."""
    if files is None:
        return False
    try:
        return all(not file.closed and file.tell() == position for file, position in files)
    except (OSError, ValueError):
        return False


def attempt_headers(call: CallContext, attempt: AttemptContext) -> CIMultiDict[str] | None:
    """Return the headers one attempt sends: the call's, less withheld ones, plus the attempt's."""
    headers = call.headers_if_any()
    if attempt.withheld_headers:
        headers = _without(headers, attempt.withheld_headers)
    if attempt.headers:
        headers = CIMultiDict(headers or ())
        headers.update(attempt.headers)
    return headers


def join_url(endpoint: str, target: str) -> str:
    """Join an endpoint base URL (no trailing slash) and a target path (with query)."""
    if not target:
        return endpoint
    if target[0] in "?#/":
        return endpoint + target
    return f"{endpoint}/{target}"


def _client_timeout(limits: Timeouts, stream: bool) -> aiohttp.ClientTimeout:
    """Return aiohttp's limits for an attempt with ``limits``.

    ``total`` is enforced by the pipeline (it also covers the deadline);
    ``connect`` includes the wait for a pooled connection. ``sock_read`` is
    left out of a buffered attempt whose read limit is not below its total:
    the pipeline's attempt limit ends the whole attempt, body included, at
    most one 10 ms timer tick after the read limit could have, and aiohttp
    would arm and cancel a timer twice per request for nothing. With
    read equal to total the two used to race (ReadTimeout or AttemptTimeout);
    now it is always AttemptTimeout. A streaming attempt keeps ``sock_read``:
    its body is read after the attempt limit is disarmed.
    """
    buffered, streaming = _timeouts_for(limits)
    return streaming if stream else buffered


@functools.lru_cache(maxsize=256)
def _timeouts_for(limits: Timeouts) -> tuple[aiohttp.ClientTimeout, aiohttp.ClientTimeout]:
    """Return (buffered, streaming) aiohttp limits for ``limits`` (few: one per policy)."""
    streaming = aiohttp.ClientTimeout(total=None, connect=limits.connect, sock_read=limits.read)
    if limits.read < limits.total:
        return streaming, streaming
    return aiohttp.ClientTimeout(total=None, connect=limits.connect, sock_read=None), streaming


def _redirect_options(allow: object, most: object) -> tuple[bool | None, int | None]:
    """Check the per-request ``allow_redirects`` and ``max_redirects`` options."""
    if allow is not None and not isinstance(allow, bool):
        raise InvalidRequestError(f"allow_redirects must be a bool, got {allow!r}")
    if most is not None and (
        isinstance(most, bool) or not isinstance(most, int) or not 0 <= most <= MAX_REDIRECTS
    ):
        # Bounded as the configuration's: each hop is recorded on the attempt.
        shown = "a larger int" if isinstance(most, int) and abs(most) > 10**6 else repr(most)
        raise InvalidRequestError(
            f"max_redirects must be an int from 0 to {MAX_REDIRECTS}, got {shown}"
        )
    return allow, most


def next_method(status: int, method: str) -> str:
    """Return the method of the hop after redirect ``status`` of a ``method`` request.

    303 turns anything but HEAD into a GET; 301 and 302 turn a POST into a GET
    (as browsers, httpx and aiohttp do); 307 and 308 keep the method.
    """
    if (status == 303 and method != "HEAD") or (status in {301, 302} and method == "POST"):
        return "GET"
    return method


def redirect_target(current: yarl.URL, location: str) -> yarl.URL | None:
    """Resolve a redirect's ``Location`` against the URL that sent it.

    Returns ``None`` when it is not an ``http``/``https`` URL with a host that
    can be called (the rule of :func:`~healkit._config.models.url_problem`: a label of
    64 characters would fail in the resolver, outside healkit's errors).
    Userinfo and fragment are dropped: credentials never come from an upstream.
    """
    try:
        relative = yarl.URL(location)
        # RFC 3986's merge on the encoded forms: yarl's URL.join (1.25) decodes
        # the base's path as it merges (``/a%2Fb/c`` + ``d`` gives ``/a/b/d``,
        # a ``%0D%0A`` becomes a raw CR LF that aiohttp then refuses).
        target = yarl.URL(urljoin(str(current), str(relative)))
    except ValueError:
        return None
    if target.scheme not in {"http", "https"} or url_problem(target) is not None:
        return None
    if target.user is not None or target.password is not None:
        target = target.with_user(None)
    return target.with_fragment(None)


def _ambient_credentials(session: aiohttp.ClientSession, names: frozenset[str]) -> tuple[str, ...]:
    """Name the credentials ``session`` adds to every request (default headers, ``auth``, cookies).

    aiohttp merges a session's default headers and ``auth`` into each request,
    and offers no way to leave them out of one; the cookies given to the
    session (``ClientSession(cookies=...)``) have no domain, and its jar sends
    them to every host. Cookies the jar took from a response are the
    responding host's (their domain is set) and do not count.
    """
    found = tuple(sorted({str(name) for name in session.headers if name.lower() in names}))
    if session.auth is not None and "authorization" not in {name.lower() for name in found}:
        found = (*found, "Authorization (the session's auth)")
    if "cookie" in names and any(not morsel["domain"] for morsel in session.cookie_jar):
        found = (*found, "cookies without a domain (the session's cookies=)")
    return found


def _request_failed(exc: Exception, url: str, limits: Timeouts) -> HealkitError:
    """Return healkit's error for what ``session.request()`` raised (``_REQUEST_ERRORS``).

    aiohttp's own errors are mapped by :func:`map_aiohttp_error`; the others
    (``_REFUSED_OPTIONS``) are aiohttp refusing to build the request: nothing
    was sent, a :class:`InvalidRequestError`.
    """
    if isinstance(exc, aiohttp.ClientError | OSError):  # InvalidURL is a ValueError too
        return map_aiohttp_error(exc, url=url, timeouts=(limits.connect, limits.read))
    detail = str(exc) or type(exc).__name__
    if len(detail) > _SHOWN_REFUSAL_CHARS:
        detail = detail[: _SHOWN_REFUSAL_CHARS - 3] + "..."
    return InvalidRequestError(f"aiohttp refused the request's options: {detail}")


def _unfollowable(location: str, status: int, here: str) -> RedirectRefusedError:
    """Return the error of a redirect whose ``Location`` healkit cannot follow."""
    try:
        scheme = yarl.URL(location).scheme
    except ValueError:
        scheme = ""
    if scheme in {"", "http", "https"}:
        reason, shown = "the Location is not a URL healkit can follow", "<invalid URL>"
    else:  # only the scheme is shown: the rest is the upstream's, and may be anything
        reason, shown = f"scheme {scheme[:32]!r} is not http or https", f"{scheme[:32]}:"
    return RedirectRefusedError(reason, status=status, url=here, location=shown)


def _without(headers: CIMultiDict[str] | None, names: frozenset[str]) -> CIMultiDict[str] | None:
    """Return ``headers`` without the (lower-case) ``names``: a copy, the caller's stay whole."""
    if not headers or not any(name.lower() in names for name in headers):
        return headers
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in names)


def _without_credentials(options: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return ``options`` without :data:`CREDENTIAL_OPTIONS`: a copy, the caller's stay whole."""
    if any(name in options for name in CREDENTIAL_OPTIONS):
        return {k: v for k, v in options.items() if k not in CREDENTIAL_OPTIONS}
    return options


def reached(error: HealkitError, attempt: AttemptContext) -> HealkitError:
    """Mark ``error`` of an attempt whose earlier hop was answered: it reached a server."""
    if attempt.redirects and not error.may_have_reached_server:
        error.may_have_reached_server = True
        last = attempt.redirects[-1]
        error.message = (
            f"{error.message} (after {last.url} answered HTTP {last.status}:"
            " the request reached a server)"
        )
        error.args = (error.message,)
    return error


def _length_known(raw: aiohttp.ClientResponse, limit: int, url: str) -> bool:
    """Whether the body's length is declared, and is the length to read (not encoded).

    Raises:
        BodyTooLargeError: the declared length is above ``limit``.

    """
    length = raw.content_length
    if length is None:
        return False
    if length > limit:
        raise BodyTooLargeError(limit, url=url)
    # The length of an encoded body says nothing of what it decodes to (aiohttp
    # decodes gzip...: a small body can decode to gigabytes).
    return "Content-Encoding" not in raw.headers


async def _read_capped(raw: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    """Read a body of unknown (or encoded) length, failing as soon as it grows past ``limit``."""
    buffer = bytearray()
    while chunk := await raw.content.read(CHUNK_SIZE):
        buffer += chunk
        if len(buffer) > limit:
            raise BodyTooLargeError(limit, url=url)
    return bytes(buffer)
