"""``healkit.Client``: resilient HTTP calls over one aiohttp session."""

from __future__ import annotations

import io
import math
import re
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from http.cookies import BaseCookie, CookieError, Morsel, SimpleCookie
from types import TracebackType
from typing import Any, Final, Self, TypedDict, Unpack, final

import aiohttp
import msgspec
import yarl
from aiohttp.typedefs import LooseCookies, LooseHeaders
from multidict import CIMultiDict

from healkit._clock import SYSTEM_CLOCK, Clock
from healkit._config.models import (
    HealkitConfig,
    ServicePolicy,
    is_http_url,
    url_problem,
    url_under,
)
from healkit._context import CallContext
from healkit._errors import ClientClosedError, InvalidRequestError
from healkit._executor import execute
from healkit._http import IDEMPOTENT_METHODS, HttpTransport, replayable
from healkit._redact import without_userinfo
from healkit._response import Response
from healkit._runtime import ConfigInput, Runtime, runtime_or_build

__all__ = ["AiohttpOptions", "Client", "RequestOptions"]

RESERVED_OPTIONS: Final = frozenset(
    {"timeout", "method", "url", "headers", "data", "json", "trace_request_ctx"}
)
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
STANDARD_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
# RFC 9110 5.6.2: a method or a field name is a token.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 5.5: a field value holds no control character but horizontal tab.
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SHOWN_NAME_CHARS: Final = 64
# What aiohttp sends as a body besides bytes, bytes-like objects, FormData (each made
# into bytes or a payload first) and str (forms are Mappings or pairs).
_BODY_TYPES: Final = (
    io.IOBase,
    aiohttp.Payload,
    AsyncIterable,
)


class AiohttpOptions(TypedDict, total=False):
    """The ``aiohttp.ClientSession.request`` options a call passes through to aiohttp.

    Typed so that a type checker catches a misspelt option; ``timeout`` and
    ``trace_request_ctx`` are healkit's and are not among them.
    """

    cookies: LooseCookies | None
    skip_auto_headers: Iterable[str] | None
    auth: aiohttp.BasicAuth | None
    allow_redirects: bool
    max_redirects: int
    compress: str | bool | None
    chunked: bool | None
    expect100: bool
    read_until_eof: bool
    proxy: str | yarl.URL | None
    proxy_auth: aiohttp.BasicAuth | None
    proxy_headers: LooseHeaders | None
    ssl: ssl.SSLContext | bool | aiohttp.Fingerprint
    server_hostname: str | None
    read_bufsize: int | None
    auto_decompress: bool | None
    max_line_size: int | None
    max_field_size: int | None


class RequestOptions(AiohttpOptions, total=False):
    """Every keyword option of :meth:`Client.request`: what ``get``, ``post``, ... accept."""

    service: str | None
    params: Mapping[str, str] | None
    headers: Mapping[str, str] | None
    json: object
    data: Any
    deadline: float | None
    idempotent: bool | None
    attempts: int | None
    attempt_timeout: float | None


@final
class Client:
    """Resilient HTTP calls: an async context manager around one aiohttp session.

    Address a call by service name and path (``service="payments"``,
    ``"/v1/charges"``: it goes to the service's endpoints) or by absolute URL
    (mapped to the service whose endpoint it starts with, else the defaults).

    Args:
        config: a document, a path to a TOML/YAML/JSON file (watched), a
            :class:`healkit.ConfigSource`, or ``None`` for the defaults.
        session: an aiohttp session to adopt (healkit will not close it, but
            turns off aiohttp's silent resend on it, so that every attempt is
            seen and counted by the pipeline); by default the client creates and
            closes its own.
        plugins: plugin objects to register besides the entry-point plugins.
        block_plugins: entry-point plugin names not to load.
        entry_points: whether to load plugins from entry points.
        clock: the clock of deadlines and backoff (inject a manual one in tests).
        runtime: share an existing :class:`healkit.Runtime` instead of building one
            (then ``config``, ``plugins``, ``block_plugins``, ``entry_points`` and
            ``clock`` must not be given).

    """

    __slots__ = ("_owns_session", "_session", "_starts_runtime", "_token", "runtime")

    def __init__(  # noqa: PLR0913 - every option is keyword-only and documented
        self,
        *,
        config: ConfigInput = None,
        session: aiohttp.ClientSession | None = None,
        plugins: Iterable[object] = (),
        block_plugins: Iterable[str] = (),
        entry_points: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        runtime: Runtime | None = None,
    ) -> None:
        runtime = runtime_or_build(
            runtime,
            config=config,
            plugins=plugins,
            block_plugins=block_plugins,
            entry_points=entry_points,
            clock=clock,
        )
        self.runtime = runtime
        self._session = session
        self._owns_session = session is None
        self._starts_runtime = False
        self._token: Any = None

    async def __aenter__(self) -> Self:
        """Open the session (unless adopted) and start the runtime (unless started).

        A runtime passed as ``runtime=`` that is already started is shared: this
        client neither starts nor stops it.
        """
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise RuntimeError("the adopted aiohttp session is closed")
            self._session = _own_session(self.runtime.trace_configs())
        else:
            _count_every_attempt(self._session)
        self._starts_runtime = not self.runtime.started
        try:
            await self.runtime.start()
        except BaseException:
            await self._close_session()
            raise
        self._token = self.runtime.activate()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the runtime's background work and close an owned session."""
        try:
            if self._token is not None:
                Runtime.deactivate(self._token)
                self._token = None
            if self._starts_runtime:
                await self.runtime.stop()
        finally:
            await self._close_session()

    async def _close_session(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session (for what healkit does not wrap)."""
        session = self._session
        if session is None or session.closed:
            raise ClientClosedError(
                "the client is not open (use `async with healkit.Client(...)`), or is closed"
            )
        return session

    async def request(  # noqa: PLR0913 - keyword-only options, as in aiohttp
        self,
        method: str,
        target: str,
        *,
        service: str | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json: object = None,
        data: Any = None,  # noqa: ANN401 - whatever aiohttp accepts as a body
        deadline: float | None = None,
        idempotent: bool | None = None,
        attempts: int | None = None,
        attempt_timeout: float | None = None,
        **options: Unpack[AiohttpOptions],
    ) -> Response:
        """Make a resilient request and return the buffered response.

        Args:
            method: the HTTP method.
            target: a path (with ``service=``) or an absolute URL.
            service: the service whose endpoints and policy to use.
            params: query parameters.
            headers: request headers.
            json: a body encoded as JSON with msgspec.
            data: a raw body (bytes, str, a form mapping) as aiohttp accepts it.
                A bytearray or memoryview is copied: every attempt sends the
                bytes it held when the call was made. A body read as it is
                sent (a file object, an async iterable, a form holding one) is
                sent at most once: the call is not retried once it was sent,
                nor redirected by a 307 or 308.
            deadline: seconds within which the whole call must end, all attempts
                and backoff included (combined with the timeout plugin's deadline
                and any enclosing anyio cancel scope: the earliest wins).
            idempotent: declare the request safe (or unsafe) to repeat, overriding
                the method's default.
            attempts: the most attempts for this call, the first included
                (``1``: no retry); at most what the service's policy allows
                (``retry.attempts``), which it can only lower.
            attempt_timeout: seconds within which each attempt as a whole must
                end; at most the policy's attempt limit, which it can only lower.
            **options: passed to ``aiohttp.ClientSession.request`` (``ssl``,
                ``proxy``, ``cookies``, ...), except ``allow_redirects`` and
                ``max_redirects``, which override the service's
                ``follow_redirects`` and ``max_redirects`` (healkit follows
                redirects itself, hop by hop); ``timeout`` is
                not accepted: limits come from the policy and ``deadline``;
                ``trace_request_ctx`` is healkit's (the attempt, for TraceConfig
                callbacks). An ``ssl`` given here wins over a TLS plugin's.

        Returns:
            The response (real, fallback or degraded; see ``response.outcome``).

        Raises:
            InvalidRequestError: the request is invalid as given (the message names the
                argument: ``method``, ``target``, ``params``, ``headers``, ``json``,
                ``data``, ``deadline``, ``attempts``, ``attempt_timeout``, or
                above what the service's policy allows); nothing was sent.
            ClientClosedError: the client is not open.
            HealkitError: the call failed for good; ``error.attempts`` tells how.

        """
        call, transport, endpoint = self._prepare(
            method,
            target,
            service,
            params,
            headers,
            json,
            data,
            deadline,
            idempotent,
            attempts,
            attempt_timeout,
            options,
            stream=False,
        )
        return await execute(self.runtime, call, transport, endpoint)

    @asynccontextmanager
    async def stream(  # noqa: PLR0913 - keyword-only options, as in aiohttp
        self,
        method: str,
        target: str,
        *,
        service: str | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json: object = None,
        data: Any = None,  # noqa: ANN401 - whatever aiohttp accepts as a body
        deadline: float | None = None,
        idempotent: bool | None = None,
        attempts: int | None = None,
        attempt_timeout: float | None = None,
        **options: Unpack[AiohttpOptions],
    ) -> AsyncIterator[Response]:
        """Make a resilient request whose body is read as it arrives.

        Resilience (timeouts, retries, fallback) applies until the response
        head arrives; read the body with ``response.iter_chunks()`` or
        ``await response.read()`` inside the block (``max_body_bytes`` still
        applies). The connection is released when the block ends.

        Raises:
            HealkitError: as :meth:`request`.

        """
        call, transport, endpoint = self._prepare(
            method,
            target,
            service,
            params,
            headers,
            json,
            data,
            deadline,
            idempotent,
            attempts,
            attempt_timeout,
            options,
            stream=True,
        )
        response = await execute(self.runtime, call, transport, endpoint)
        try:
            yield response
        finally:
            response.release()

    def _prepare(  # noqa: PLR0913, PLR0917 - the request's parts, forwarded from request() and stream()
        self,
        method: str,
        target: str,
        service: str | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        json: object,
        data: object,
        deadline: float | None,
        idempotent: bool | None,
        attempts: int | None,
        attempt_timeout: float | None,
        options: Mapping[str, Any],
        *,
        stream: bool,
    ) -> tuple[CallContext, HttpTransport, str]:
        session = self.session
        if options:
            _check_options(options)
        if method not in STANDARD_METHODS:
            _check_method(method)
        method = method.upper()
        config = self.runtime.config
        endpoint, path, service_name, policy, url = _address(config, target, service)
        if params:
            path = _with_query(path, params)
        request_headers = _call_headers(headers, url, json)
        body = _body(json, data)
        clock = self.runtime.clock
        now = clock.now()
        call = CallContext(  # by position: see CallContext.__init__
            service_name,
            "http",
            method,
            path,
            config,
            policy,
            clock,
            request_headers,
            _is_idempotent(method, request_headers, idempotent),
            replayable(body),
            now,
            math.inf if deadline is None else now + _deadline_seconds(deadline),
            url is None,  # routable
        )
        if attempts is not None or attempt_timeout is not None:
            self._override(call, attempts, attempt_timeout)
        transport = HttpTransport(session, body, options, stream)
        return call, transport, endpoint

    def _override(
        self, call: CallContext, attempts: int | None, attempt_timeout: float | None
    ) -> None:
        """Set the caller's ``attempts=`` and ``attempt_timeout=`` on ``call``, once checked.

        Each may only lower what the service's policy allows: ``attempts`` at
        most its ``healkit_max_attempts``, ``attempt_timeout`` at most its
        attempt limit (``attempt.timeouts.total``).
        """
        policy = call.policy
        if attempts is not None:
            if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
                raise InvalidRequestError(
                    f"attempts must be an int of at least 1, got {attempts!r}"
                )
            allowed = self.runtime.max_attempts(policy)
            if attempts > allowed:
                raise InvalidRequestError(
                    f"attempts={attempts} is more than the {allowed} attempt(s) the policy of"
                    f" service {call.service!r} allows"
                )
            call.attempt_limit = attempts
        if attempt_timeout is not None:
            if (
                isinstance(attempt_timeout, bool)
                or not isinstance(attempt_timeout, int | float)
                or not 0 < attempt_timeout < math.inf
            ):
                raise InvalidRequestError(
                    "attempt_timeout must be a finite number of seconds > 0,"
                    f" got {attempt_timeout!r}"
                )
            limit = self.runtime.attempt_timeouts(policy).total
            if attempt_timeout > limit:
                raise InvalidRequestError(
                    f"attempt_timeout={attempt_timeout:g} is more than the {limit:g}s the policy"
                    f" of service {call.service!r} allows an attempt"
                )
            call.attempt_timeout = float(attempt_timeout)

    def get(self, target: str, **kwargs: Unpack[RequestOptions]) -> Coroutine[Any, Any, Response]:
        """``request("GET", target, ...)``: await it."""
        return self.request("GET", target, **kwargs)

    def head(self, target: str, **kwargs: Unpack[RequestOptions]) -> Coroutine[Any, Any, Response]:
        """``request("HEAD", target, ...)``: await it."""
        return self.request("HEAD", target, **kwargs)

    def options(
        self, target: str, **kwargs: Unpack[RequestOptions]
    ) -> Coroutine[Any, Any, Response]:
        """``request("OPTIONS", target, ...)``: await it."""
        return self.request("OPTIONS", target, **kwargs)

    def post(self, target: str, **kwargs: Unpack[RequestOptions]) -> Coroutine[Any, Any, Response]:
        """``request("POST", target, ...)``: await it."""
        return self.request("POST", target, **kwargs)

    def put(self, target: str, **kwargs: Unpack[RequestOptions]) -> Coroutine[Any, Any, Response]:
        """``request("PUT", target, ...)``: await it."""
        return self.request("PUT", target, **kwargs)

    def patch(self, target: str, **kwargs: Unpack[RequestOptions]) -> Coroutine[Any, Any, Response]:
        """``request("PATCH", target, ...)``: await it."""
        return self.request("PATCH", target, **kwargs)

    def delete(
        self, target: str, **kwargs: Unpack[RequestOptions]
    ) -> Coroutine[Any, Any, Response]:
        """``request("DELETE", target, ...)``: await it."""
        return self.request("DELETE", target, **kwargs)


def _own_session(trace_configs: list[aiohttp.TraceConfig]) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None), trace_configs=trace_configs or None
    )
    _count_every_attempt(session)
    return session


def aiohttp_release(version: str) -> tuple[int, int]:
    """Return the (major, minor) of an aiohttp version string (``(0, 0)`` if unreadable)."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found[1]), int(found[2])) if found else (0, 0)


VERIFIED_AIOHTTP: Final = ((3, 12), (3, 14))
"""aiohttp releases whose ``ClientSession._retry_connection`` was read (3.12.0 to 3.14.5)."""

_RESEND_SWITCH: Final = (
    VERIFIED_AIOHTTP[0] <= aiohttp_release(aiohttp.__version__) <= VERIFIED_AIOHTTP[1]
)


def _count_every_attempt(session: aiohttp.ClientSession) -> None:
    # aiohttp resends an idempotent request once, silently, when a reused connection
    # breaks before a response; healkit must see (and count) every attempt, and
    # aiohttp has no public switch: its private one is set only in the releases
    # read (VERIFIED_AIOHTTP); tests/test_client.py fails if it stops working.
    if _RESEND_SWITCH:
        session._retry_connection = False  # noqa: SLF001


def _address(
    config: HealkitConfig, target: str, service: str | None
) -> tuple[str, str, str, ServicePolicy, yarl.URL | None]:
    """Return (endpoint, path below it, service name, policy, URL if absolute) for a target."""
    if not isinstance(target, str):
        raise InvalidRequestError(
            f"target must be a path or a URL (a str), got {type(target).__name__}"
        )
    if is_http_url(target):
        url, host = _absolute_url(target)
        # As yarl writes it, as the endpoints are kept: HTTP://API.test:80/x is
        # http://api.test/x, and belongs to the service of http://api.test. Without
        # its userinfo (sent as Authorization: see _call_headers), which no endpoint
        # has: http://user:pw@api.test/x belongs to that service too, and its policy
        # (credential_headers, allowed_origins...) applies to it.
        target = str(url.with_user(None) if _has_userinfo(url) else url)
        name = service or config.service_for_url(target)
        policy = config.policy(name) if name else config.defaults
        for endpoint in policy.endpoints:
            if url_under(target, endpoint):
                return endpoint, target[len(endpoint) :], name or policy.name, policy, url
        return str(url.origin()), url.raw_path_qs, name or host, policy, url
    if service is None:
        raise InvalidRequestError(
            # Shown without userinfo: HTTP://user:pw@host/ or user:pw@host/ holds credentials.
            f"{_shown(without_userinfo(target))} is not an absolute URL: pass service= to"
            " address a service"
        )
    policy = config.policy(service)
    endpoints = policy.endpoints
    if not endpoints or policy.name != service:
        raise InvalidRequestError(f"service {service!r} has no endpoints configured")
    return endpoints[0], target, service, policy, None


def _absolute_url(target: str) -> tuple[yarl.URL, str]:
    """Parse the absolute URL ``target`` (return it and its host), unless it cannot be called.

    Raises:
        InvalidRequestError: ``target`` does not parse, or its host or port is invalid.

    """
    try:
        url = yarl.URL(target)
    except ValueError:  # UnicodeError (a host IDNA rejects) included
        url = None
    if url is None:  # raised here: yarl's error, which quotes the userinfo, is no context
        raise _invalid_url(target)
    # url_problem first: reading url.host decodes an IDNA host, which may raise.
    if (problem := url_problem(url)) is not None:
        raise InvalidRequestError(f"invalid URL: {problem}")
    host = url.host
    if not host:
        raise InvalidRequestError("invalid URL: no host")
    return url, host


def _invalid_url(target: str) -> InvalidRequestError:
    """Return the error for an absolute URL that yarl cannot parse, saying why.

    yarl's messages quote the URL's authority, userinfo included: the reason is
    that of the URL without its userinfo.
    """
    try:
        yarl.URL(without_userinfo(target))
    except ValueError as exc:
        return InvalidRequestError(f"invalid URL: {exc}")
    return InvalidRequestError("invalid URL: its user name or password is not valid")


def _is_idempotent(method: str, headers: CIMultiDict[str] | None, declared: bool | None) -> bool:
    if declared is not None:
        return declared
    return method in IDEMPOTENT_METHODS or (headers is not None and IDEMPOTENCY_HEADER in headers)


def _check_method(method: object) -> None:
    """Raise InvalidRequestError unless ``method`` is an RFC 9110 token (an extension method)."""
    if not isinstance(method, str) or not _TOKEN.fullmatch(method):
        raise InvalidRequestError(
            f"method {_shown(method)} is not an HTTP method (an RFC 9110 token)"
        )


def _call_headers(
    headers: Mapping[str, str] | None, url: yarl.URL | None, json: object
) -> CIMultiDict[str] | None:
    """Return the call's headers: the caller's (checked), its URL's credentials, a JSON type.

    Credentials in the URL become a Basic ``Authorization`` header (as aiohttp
    would do), so that logs and errors never carry the URL's. ``None``: no
    header at all (most calls; nothing allocated).
    """
    checked = _request_headers(headers) if headers else None
    if url is not None and _has_userinfo(url):
        if checked is None:
            checked = CIMultiDict()
        checked.setdefault("Authorization", _basic_auth(url))
    if json is not None:
        if checked is None:
            checked = CIMultiDict()
        checked.setdefault("Content-Type", "application/json")
    return checked


def _deadline_seconds(deadline: object) -> float:
    """Return ``deadline=`` once checked: a finite number of seconds > 0.

    Raises:
        InvalidRequestError: it is not.

    """
    if not isinstance(deadline, int | float) or not 0 < deadline < math.inf:
        raise InvalidRequestError(
            f"deadline must be a finite number of seconds > 0, got {deadline!r}"
        )
    return deadline


def _request_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """Copy the caller's headers, rejecting what cannot be sent as a header field.

    A name must be a token; a value a str with no control character but tab
    (a CR or LF would split the header and inject another). Messages name the
    header, never its value (it may be a credential).
    """
    try:
        checked: CIMultiDict[str] = CIMultiDict(headers)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"headers= must map header names (str) to values: {exc}") from exc
    for name, value in checked.items():
        if not _TOKEN.fullmatch(name):
            raise InvalidRequestError(
                f"headers: {_shown(name)} is not a header name (an RFC 9110 token)"
            )
        if not isinstance(value, str):
            raise InvalidRequestError(
                f"headers: the value of {_shown(name)} must be a str, got {type(value).__name__}"
            )
        if _CONTROL.search(value):
            raise InvalidRequestError(
                f"headers: the value of {_shown(name)} contains a control character (CR, LF, NUL)"
            )
        _check_text(value, f"headers: the value of {_shown(name)}")
    return checked


def _with_query(path: str, params: Mapping[str, str]) -> str:
    """Return ``path`` with ``params`` added to its query string."""
    try:
        return str(yarl.URL(path).update_query(params))
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"params= cannot be put in a query string: {exc}") from exc


def _has_userinfo(url: yarl.URL) -> bool:
    """Whether ``url`` has userinfo: a user name, a password, or both (``http://:pw@host``)."""
    return url.user is not None or url.password is not None


def _basic_auth(url: yarl.URL) -> str:
    """Return the Basic ``Authorization`` value for the userinfo of ``url``."""
    try:
        return aiohttp.encode_basic_auth(url.user or "", url.password or "")
    except ValueError as exc:  # UnicodeEncodeError: Basic credentials are Latin-1
        raise InvalidRequestError("invalid URL: its user name or password is not Latin-1") from exc


def _body(json: object, data: object) -> object:
    """Return the body to send: ``json`` encoded, else ``data`` once checked.

    Every attempt sends the same body: a bytearray or memoryview is copied
    (the caller may change it while the call is retried or hedged), and an
    ``aiohttp.FormData`` is built into its payload once (in memory unless it
    holds a file or a stream).
    """
    if json is None:
        if data is None or isinstance(data, bytes):
            return data
        if isinstance(data, bytearray | memoryview):
            return bytes(data)
        if isinstance(data, aiohttp.FormData):
            return _form_payload(data)
        _check_data(data)
        return data
    if data is not None:
        raise InvalidRequestError("pass json= or data=, not both")
    try:
        return msgspec.json.encode(json)
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
        raise InvalidRequestError(f"json= cannot be encoded as JSON: {exc}") from exc


def _form_payload(form: aiohttp.FormData) -> aiohttp.Payload:
    """Return the payload aiohttp makes of ``form`` (it would make it at the first send)."""
    try:
        return form()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidRequestError(f"data= is a FormData aiohttp cannot send: {exc}") from exc


def _check_data(data: object) -> None:
    """Raise InvalidRequestError unless aiohttp can send ``data`` as a body.

    Besides bytes, bytes-like objects and ``aiohttp.FormData`` (not checked)
    aiohttp sends text (as UTF-8), file objects, async iterables of bytes,
    payloads, and forms: a mapping with str keys, or (name, value) pairs.
    """
    if isinstance(data, str):
        _check_text(data, "data")
        return
    if isinstance(data, io.IOBase):
        _check_file(data)
        return
    if isinstance(data, _BODY_TYPES):
        return
    if isinstance(data, Mapping):
        fields: Iterable[object] = data.items()
    elif isinstance(data, list | tuple):
        fields = data
    else:
        raise InvalidRequestError(
            "data= must be bytes, str, a form (a mapping or (name, value) pairs), a file"
            f" object, or an async iterable of bytes; got {type(data).__name__}"
        )
    _check_form(fields)


def _check_form(fields: Iterable[object]) -> None:
    """Raise InvalidRequestError unless ``fields`` are (name, value) pairs of an aiohttp form."""
    for field in fields:
        if not (isinstance(field, list | tuple) and len(field) == 2):
            raise InvalidRequestError("data: the fields of a form must be (name, value) pairs")
        name, value = field
        if not isinstance(name, str):
            raise InvalidRequestError(
                f"data: a form field name must be a str, got {type(name).__name__}"
            )
        if _CONTROL.search(name):  # it goes into a header of a multipart form
            raise InvalidRequestError("data: a form field name contains a control character")
        _check_text(name, "data: a form field name")
        if isinstance(value, str):
            _check_text(value, f"data: the form field {_shown(name)}")
        elif isinstance(value, Mapping):  # aiohttp would send its keys alone, as values
            raise InvalidRequestError(
                f"data: the form field {_shown(name)} is a mapping; a form is flat"
                " (pass its entries as fields of their own, or json=)"
            )


def _check_file(data: io.IOBase) -> None:
    """Raise InvalidRequestError unless ``data`` is a file open for reading (not ValueError)."""
    if data.closed:
        raise InvalidRequestError("data= is a closed file")
    if not data.readable():
        raise InvalidRequestError("data= is a file object not open for reading")


def _check_options(options: Mapping[str, Any]) -> None:
    """Raise InvalidRequestError for an option healkit does not take, or aiohttp would refuse.

    The options healkit sets itself (``RESERVED_OPTIONS``) are not accepted.
    aiohttp checks ``ssl=`` (TypeError) and the ``cookies=`` names
    (``http.cookies.CookieError``) while it builds the request, outside
    ``aiohttp.ClientError``: checked here, before anything is sent.
    """
    if reserved := RESERVED_OPTIONS & options.keys():
        raise InvalidRequestError(f"option(s) {', '.join(sorted(reserved))} are not accepted here")
    if "ssl" in options:
        given = options["ssl"]
        if given is not None and not isinstance(given, bool | ssl.SSLContext | aiohttp.Fingerprint):
            raise InvalidRequestError(
                "ssl= must be None, a bool, an ssl.SSLContext or an aiohttp.Fingerprint,"
                f" got {type(given).__name__}"
            )
    if (cookies := options.get("cookies")) is not None:
        _check_cookies(cookies)


def _check_cookies(cookies: object) -> None:
    """Raise InvalidRequestError unless every cookie of ``cookies=`` has a valid name.

    aiohttp takes a ``http.cookies.BaseCookie`` (its names already checked), a
    mapping, or (name, value) pairs, each value a str or a ``Morsel``.
    """
    if isinstance(cookies, BaseCookie):
        return
    if isinstance(cookies, Mapping):
        pairs: Iterable[object] = cookies.items()
    elif isinstance(cookies, list | tuple):
        pairs = cookies
    else:
        raise InvalidRequestError(
            "cookies= must be a mapping, (name, value) pairs or an http.cookies.BaseCookie,"
            f" got {type(cookies).__name__}"
        )
    jar: SimpleCookie = SimpleCookie()
    for pair in pairs:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise InvalidRequestError("cookies: each cookie must be a (name, value) pair")
        name, value = pair
        if not isinstance(name, str):
            raise InvalidRequestError(
                f"cookies: a cookie name must be a str, got {type(name).__name__}"
            )
        if isinstance(value, Morsel):
            continue  # aiohttp sends the Morsel's own (checked) name
        try:
            jar[name] = value  # the standard library's check, as aiohttp's jar makes it
        except CookieError as exc:
            raise InvalidRequestError(f"cookies: {_shown(name)} is not a cookie name") from exc


def _check_text(text: str, what: str) -> None:
    """Raise InvalidRequestError naming ``what`` unless ``text`` can be encoded as UTF-8."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate
            raise InvalidRequestError(f"{what} cannot be encoded as UTF-8") from exc


def _shown(value: object) -> str:
    """Return ``repr(value)`` cut to a length fit for an error message."""
    text = repr(value)
    if len(text) > _SHOWN_NAME_CHARS:
        return text[: _SHOWN_NAME_CHARS - 3] + "..."
    return text
