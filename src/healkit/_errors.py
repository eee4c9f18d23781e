"""The healkit exception tree.

Every error that leaves a healkit call is a :class:`HealkitError` and carries the
attempts made (``error.attempts``)::

    HealkitError
    ├── TransportError              the request did not produce a response
    │   ├── ConnectError            no connection: never reached the server
    │   │   ├── DNSError
    │   │   └── TLSError
    │   ├── ConnectionLostError     the connection broke after the request was written
    │   └── ProtocolError           the answer is not valid HTTP (status line, headers, framing)
    ├── TimeoutExceeded             also a builtins.TimeoutError
    │   ├── ConnectTimeout          connect or pool wait took too long: never sent
    │   ├── ReadTimeout             no byte from the server for too long
    │   ├── AttemptTimeout          one attempt as a whole took too long
    │   └── DeadlineExceeded        the call's deadline (all attempts and backoff) passed
    ├── HTTPStatusError             a response declared a failure (status, body excerpt)
    ├── CircuitOpenError            a circuit breaker refused the attempt
    ├── DegradedModeError           an operator forced the service into degraded mode
    ├── RedirectRefusedError        a redirect healkit will not follow (origin, scheme, body)
    ├── LimitError
    │   ├── BudgetExhaustedError    a retry or concurrency budget is spent
    │   ├── BodyTooLargeError       the response body exceeded the configured cap
    │   ├── OverloadError           a load limit refused the attempt before it was sent
    │   │   ├── ConcurrencyLimitError   too many in flight: the queue is full or the wait ran out
    │   │   ├── RateLimitedError        the service's rate limit has no token left in time
    │   │   └── ThrottledError          adaptive throttling: the upstream rejects too much
    │   └── TooManyRedirects        more redirects than the service's ``max_redirects``
    ├── CallError                   a decorated function raised an exception counted as failure
    ├── InvalidRequestError                the request itself is invalid (bad URL, unknown service)
    │   └── ClientClosedError       the client is not open (never entered, or already closed)
    ├── OutcomeUnavailableError     no healkit call returned this response (also a LookupError)
    ├── DeadlineHeaderError         an inbound deadline header is invalid (also a ValueError)
    ├── ConfigError                 a configuration document is invalid (path and reason per issue)
    ├── PluginError                 a plugin crashed in a decision hook (names the plugin)
    └── EtcdError                   talking to etcd failed (healkit's own etcd client)
        ├── EtcdUnavailableError         no endpoint could serve (refused, timed out, no leader)
        ├── EtcdProtocolError       a reply that is not what etcd's JSON gateway sends
        └── EtcdRequestError        etcd answered with an error (gRPC code and etcd's reason)
            ├── EtcdAuthError       authentication failed, or the user lacks permission
            └── EtcdCompactedError       the requested revision was compacted away

``may_have_reached_server`` on every error says whether the request may have been
seen by the server. Retry logic uses it: a request that provably never left is
safe to resend whatever its method. Once a hop of a redirected request got an
answer, every later failure of that attempt says ``True``, whatever its class
(a ``ConnectError`` at the redirect's target included).

aiohttp's exceptions are translated in one place, :func:`map_aiohttp_error`,
and raised ``from`` :func:`aiohttp_cause` (the original is the ``__cause__``,
unless its text quotes the request's URL unredacted: then what it reports, or
nothing).
The etcd client maps its own transport errors to :class:`EtcdError` subclasses
the same way; no etcd error message ever contains a password or an auth token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, final

import aiohttp
import yarl
from aiohttp.http_exceptions import HttpProcessingError

if TYPE_CHECKING:
    from healkit._outcome import AttemptRecord

__all__ = [
    "AttemptTimeout",
    "BodyTooLargeError",
    "BudgetExhaustedError",
    "CallError",
    "CircuitOpenError",
    "ClientClosedError",
    "ConcurrencyLimitError",
    "ConfigError",
    "ConfigIssue",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLostError",
    "DNSError",
    "DeadlineExceeded",
    "DeadlineHeaderError",
    "DegradedModeError",
    "EtcdAuthError",
    "EtcdCompactedError",
    "EtcdError",
    "EtcdProtocolError",
    "EtcdRequestError",
    "EtcdUnavailableError",
    "HTTPStatusError",
    "HealkitError",
    "InvalidRequestError",
    "LimitError",
    "OverloadError",
    "PluginError",
    "ProtocolError",
    "RateLimitedError",
    "ReadTimeout",
    "RedirectRefusedError",
    "TLSError",
    "ThrottledError",
    "TimeoutExceeded",
    "TooManyRedirects",
    "TransportError",
    "aiohttp_cause",
    "invalid_status",
    "map_aiohttp_error",
]

BODY_EXCERPT_BYTES: Final = 200
PROTOCOL_DETAIL_CHARS: Final = 200
"""At most this much of aiohttp's parser message goes into a ProtocolError's message."""
_CAUSE_DEPTH: Final = 4


class HealkitError(Exception):
    """Base of every error healkit raises.

    Attributes:
        attempts: the attempts of the call that ended in this error, oldest
            first (empty for errors raised outside a call, such as ConfigError).
        may_have_reached_server: ``False`` only when the request provably never
            left this process (refused connection, DNS failure, TLS handshake
            failure, connect timeout, refused by a breaker).

    """

    may_have_reached_server: bool = True

    def __init__(self, message: str) -> None:
        # What Exception.__init__ does, without the super() call: a refused or
        # failed call makes one of these.
        self.args = (message,)
        self.message = message
        self.attempts: tuple[AttemptRecord, ...] = ()

    def __str__(self) -> str:
        """Return the message, followed by a one-line attempt history if any."""
        if not self.attempts:
            return self.message
        history = "; ".join(record.describe() for record in self.attempts)
        return f"{self.message} [attempts: {history}]"


class TransportError(HealkitError):
    """The attempt produced no response."""


class ConnectError(TransportError):
    """No connection could be made; the request never reached the server."""

    may_have_reached_server = False


class DNSError(ConnectError):
    """The endpoint's host name could not be resolved."""


class TLSError(ConnectError):
    """The TLS handshake failed (certificate, hostname or protocol problem)."""


class ConnectionLostError(TransportError):
    """The connection broke after the request may have been written."""


@final
class ProtocolError(TransportError):
    """The upstream's answer is not valid HTTP, so there is no response to judge.

    A garbage status line, a header block over aiohttp's limits, broken chunked
    framing, a body shorter (or longer) than its ``Content-Length``, a body that
    does not decode as its ``Content-Encoding`` says, a status outside 100 to
    599. The upstream sent no real
    status: this is a failure of the endpoint (counted by ejection and breakers),
    and the request may have reached the server, so only an idempotent request
    is retried.
    """


class TimeoutExceeded(HealkitError, TimeoutError):  # noqa: N818 - names what happened, like its subclasses
    """A time limit was reached. Also a :class:`builtins.TimeoutError`."""

    def __init__(self, message: str, *, limit: float | None) -> None:
        super().__init__(message)
        self.limit = limit
        """The limit that was reached, in seconds (``None`` if not known to healkit)."""


class ConnectTimeout(TimeoutExceeded):
    """Connecting (or waiting for a pooled connection) took too long."""

    may_have_reached_server = False


class ReadTimeout(TimeoutExceeded):
    """The server sent no byte for longer than the read timeout."""


class AttemptTimeout(TimeoutExceeded):
    """One attempt, from start to the end of its body, took too long."""


class DeadlineExceeded(TimeoutExceeded):
    """The call's overall deadline passed (it spans all attempts and backoff)."""


@final
class HTTPStatusError(HealkitError):
    """A response was declared a failure, by a plugin or by ``raise_for_status()``.

    Attributes:
        status: the HTTP status code.
        body_excerpt: at most the first 200 bytes of the body, decoded leniently.
        retry_after: seconds from a ``Retry-After`` header when one was parsed.

    """

    def __init__(self, status: int, *, url: str, body_excerpt: str = "") -> None:
        super().__init__(f"HTTP {status} from {display_url(url)}")
        self.status = status
        self.url = url
        self.body_excerpt = body_excerpt[:BODY_EXCERPT_BYTES]
        self.retry_after: float | None = None


@final
class CircuitOpenError(HealkitError):
    """A circuit breaker refused the attempt without contacting the server.

    Attributes:
        service: the service whose breaker is open.
        endpoint: the endpoint the breaker guards (``None`` for a per-service breaker).
        retry_at: monotonic time at which the breaker may let a probe through.

    """

    may_have_reached_server = False

    def __init__(self, service: str, endpoint: str | None, *, retry_at: float) -> None:
        where = f"{service} ({endpoint})" if endpoint else service
        super().__init__(f"circuit open for {where}")
        self.service = service
        self.endpoint = endpoint
        self.retry_at = retry_at


@final
class DegradedModeError(HealkitError):
    """An operator forced the service into degraded mode: nothing was sent.

    The call is answered by the service's degraded response template (see
    ``degraded.force``); this error reaches the caller only when no template
    could be used (a decorated function, or the aiohttp middleware).

    Attributes:
        service: the service in degraded mode.

    """

    may_have_reached_server = False

    def __init__(self, service: str) -> None:
        super().__init__(f"{service} is in degraded mode (degraded.force)")
        self.service = service


class LimitError(HealkitError):
    """A configured limit was reached."""


@final
class BudgetExhaustedError(LimitError):
    """A retry or concurrency budget is spent."""

    may_have_reached_server = False


class OverloadError(LimitError):
    """A load limit of the service refused the attempt: nothing was sent.

    Raised by a limit plugin (``healkit-limit``) to protect the upstream and
    the caller's latency. Like any failed attempt it goes to ``healkit_on_error``
    and, if the call fails for good, to the fallbacks (a fallback group, a
    degraded response).

    Attributes:
        service: the service whose limit refused the attempt.
        endpoint: the endpoint whose limit refused it (``None`` for a
            per-service limit).
        retry_after: seconds after which a call may be admitted, when known.

    """

    may_have_reached_server = False

    def __init__(
        self,
        message: str,
        *,
        service: str,
        endpoint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.service = service
        self.endpoint = endpoint
        self.retry_after = retry_after


@final
class ConcurrencyLimitError(OverloadError):
    """The concurrency limit was reached: the wait queue was full, or the wait ran out."""


@final
class RateLimitedError(OverloadError):
    """The service's rate limit had no token for the attempt within the allowed wait."""


@final
class ThrottledError(OverloadError):
    """Adaptive throttling refused the attempt: the upstream rejects too many calls.

    Refused with the probability of the SRE book's client-side throttling,
    ``max(0, (requests - K * accepts) / (requests + 1))`` over a window.
    """


@final
class BodyTooLargeError(LimitError):
    """The response body is larger than ``max_body_bytes``."""

    def __init__(self, limit: int, *, url: str) -> None:
        super().__init__(f"response body from {display_url(url)} exceeds {limit} bytes")
        self.limit = limit


@final
class TooManyRedirects(LimitError):  # noqa: N818 - the name httpx and aiohttp users know
    """A request was redirected more times than its service's ``max_redirects``.

    The request reached a server (every hop was answered), so
    ``may_have_reached_server`` is ``True``.

    Attributes:
        limit: the maximum number of redirects that was exceeded.
        url: the (redacted) URL of the last redirect response.

    """

    def __init__(self, limit: int, *, url: str) -> None:
        super().__init__(f"more than {limit} redirects, the last from {display_url(url)}")
        self.limit = limit
        self.url = url


@final
class RedirectRefusedError(HealkitError):
    """An upstream answered with a redirect that healkit does not follow.

    The target's origin is outside ``routing.allowed_origins``, its scheme is
    not ``http`` or ``https``, its ``Location`` is not a URL, or a 307/308 asks
    to resend a request body that was streamed and cannot be sent again. The
    redirect response itself reached healkit, so ``may_have_reached_server``
    is ``True``.

    Attributes:
        status: the redirect's status (301, 302, 303, 307 or 308).
        url: the (redacted) URL that answered with the redirect.
        location: the (redacted) target of the redirect, as far as it could be read.

    """

    def __init__(self, reason: str, *, status: int, url: str, location: str) -> None:
        target = display_url(location) if location.startswith(("http://", "https://")) else location
        super().__init__(
            f"redirect {status} from {display_url(url)} to {target} not followed: {reason}"
        )
        self.status = status
        self.url = url
        self.location = location


@final
class CallError(HealkitError):
    """A decorated function raised an exception that its policy counts as a failure.

    The original exception is ``error.error`` and ``error.__cause__``.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


class InvalidRequestError(HealkitError):
    """The request cannot be made as given (invalid URL, unknown service, bad body).

    Raised before anything is sent; the message names the argument at fault
    (``method``, ``headers``, ``json``, ``data``, ``params``, the URL). Not a
    failure to reach the server: that is :class:`TransportError`, which is
    what ``httpx.RequestError`` means in httpx.
    """

    may_have_reached_server = False


@final
class ClientClosedError(InvalidRequestError):
    """A call was made on a :class:`healkit.Client` that is not open.

    The client was never entered (``async with healkit.Client() as client``),
    has been closed, or its adopted aiohttp session was closed. Nothing was sent.
    """


@final
class DeadlineHeaderError(HealkitError, ValueError):
    """An inbound request's deadline header is not a valid number of milliseconds.

    Raised by :func:`healkit.deadlines.deadline_from` (unless told to ignore
    bad values) before anything is sent; a server usually answers its caller
    ``400 Bad Request``.

    Attributes:
        header: the header's name.
        value: the offending value, cut to 64 characters.

    """

    may_have_reached_server = False

    def __init__(self, message: str, *, header: str, value: str) -> None:
        super().__init__(message)
        self.header = header
        self.value = value


@final
class OutcomeUnavailableError(HealkitError, LookupError):
    """A response has no outcome: no healkit call returned it (yet).

    Raised by :attr:`healkit.Response.outcome` on a response that a plugin built
    and no call has returned, or that a hook reads before its call ended, and by
    :func:`healkit.httpx.outcome_of` on an httpx response that did not come
    through healkit's transport. Every response a call returns has one. No
    request is involved, so nothing was sent.
    """

    may_have_reached_server = False


@final
class ConfigIssue:
    """One problem in a configuration document: where it is and what is wrong."""

    __slots__ = ("path", "reason")

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason

    def __repr__(self) -> str:
        return f"ConfigIssue({self.path!r}, {self.reason!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfigIssue):
            return NotImplemented
        return (self.path, self.reason) == (other.path, other.reason)

    def __hash__(self) -> int:
        return hash((self.path, self.reason))

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@final
class ConfigError(HealkitError):
    """A configuration document was rejected.

    Attributes:
        issues: every problem found, each with its path (``$.services.pay.timeout``)
            and reason. The first one is also ``path`` / ``reason``.
        origin: where the document came from (a file path, ``"python"``, an etcd key).

    """

    may_have_reached_server = False

    def __init__(self, issues: Sequence[ConfigIssue], *, origin: str = "") -> None:
        if not issues:
            raise ValueError("ConfigError needs at least one issue")
        self.issues = tuple(issues)
        self.origin = origin
        self.path = self.issues[0].path
        self.reason = self.issues[0].reason
        where = f" in {origin}" if origin else ""
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        count = len(self.issues)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"invalid configuration{where}: {count} {noun}\n{lines}")


@final
class PluginError(HealkitError):
    """A plugin raised an unexpected exception in a decision hook.

    Attributes:
        plugin: the registered name of the plugin.
        hook: the hook that crashed.

    """

    def __init__(self, plugin: str, hook: str, error: BaseException) -> None:
        message = f"plugin {plugin!r} crashed in {hook}: {type(error).__name__}: {error}"
        if hook in _SETUP_STEPS:
            message += (
                f" (to run without it, block it: HEALKIT_BLOCK_PLUGINS={plugin} in the "
                f"environment, or healkit.Client(block_plugins=[{plugin!r}]))"
            )
        super().__init__(message)
        self.plugin = plugin
        self.hook = hook


_SETUP_STEPS: Final = frozenset({"load", "register"})
"""The ``PluginError.hook`` values of a plugin that could not be set up at all."""


class EtcdError(HealkitError):
    """Talking to etcd failed.

    Attributes:
        endpoint: the etcd endpoint (base URL) the error comes from, or ``None``
            when it concerns no single endpoint (every endpoint failed).

    """

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


@final
class EtcdUnavailableError(EtcdError):
    """No etcd endpoint could serve the request.

    Raised when every endpoint refused the connection, timed out, lost the
    connection, or answered that it cannot serve now (gRPC ``UNAVAILABLE``: no
    leader, a request that timed out inside etcd), and when a watch stream ends.

    Attributes:
        failures: ``(endpoint, reason)`` for each endpoint tried, in order.
        may_have_reached_server: ``False`` only when no endpoint can have seen
            the request (every connection attempt failed).

    """

    def __init__(
        self,
        message: str,
        *,
        failures: Sequence[tuple[str, str]] = (),
        may_have_reached_server: bool = True,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.failures = tuple(failures)
        self.may_have_reached_server = may_have_reached_server


@final
class EtcdProtocolError(EtcdError):
    """A reply could not be understood: not JSON, the wrong shape, or too large.

    The endpoint is probably not an etcd v3 JSON gateway (or not a version
    healkit supports); the message says what was wrong and where.
    """


class EtcdRequestError(EtcdError):
    """etcd answered the request with an error.

    Attributes:
        code: the gRPC status code of the error (``None`` when etcd gave none,
            as for a canceled watch).
        reason: etcd's own message, e.g.
            ``"etcdserver: mvcc: required revision is a future revision"``.

    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None,
        reason: str,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.code = code
        self.reason = reason


@final
class EtcdAuthError(EtcdRequestError):
    """Authentication failed (wrong user or password, auth required) or permission denied.

    The message names the user, never the password or a token.
    """


@final
class EtcdCompactedError(EtcdRequestError):
    """The requested revision is older than the history etcd still keeps.

    Attributes:
        compact_revision: the revision etcd's history was compacted at, when
            etcd said (a canceled watch says; a range at a compacted revision
            does not, and then it is ``None``). Re-read at a current revision
            and watch from the revision after it.

    """

    def __init__(
        self,
        message: str,
        *,
        compact_revision: int | None,
        code: int | None = None,
        reason: str = "",
        endpoint: str | None = None,
    ) -> None:
        super().__init__(message, code=code, reason=reason, endpoint=endpoint)
        self.compact_revision = compact_revision


def display_url(url: str) -> str:
    """Return ``url`` fit for a message: no userinfo, no query, no fragment."""
    try:
        parsed = yarl.URL(url)
    except (TypeError, ValueError):
        return "<invalid URL>"
    if not parsed.is_absolute():
        return parsed.path
    return str(parsed.with_user(None).with_query(None).with_fragment(None))


def invalid_status(status: int, url: str) -> ProtocolError:
    """Return the error of an answer whose status is outside 100 to 599.

    RFC 9110 (section 15) calls such values invalid; parsers still accept any
    three digits (``000``, ``999``). Judged as a response, such an answer would
    count as a success for breakers and ejection: it is a malformed answer.
    Callers check ``100 <= status <= 599`` themselves (the healthy path pays
    one comparison) and call this only when it fails.
    """
    return ProtocolError(
        f"malformed response from {url}: status {status} is not an HTTP status (100 to 599)"
    )


def map_aiohttp_error(
    exc: aiohttp.ClientError | OSError,
    *,
    url: str,
    timeouts: tuple[float | None, float | None],
) -> HealkitError:
    """Translate an aiohttp (or socket-level) exception into the healkit tree.

    Args:
        exc: the exception raised while sending or reading (aiohttp's, or a
            socket error that escaped it).
        url: the (redacted) URL of the attempt, for the message.
        timeouts: the attempt's ``(connect, read)`` limits, for timeout errors
            (``None`` where aiohttp applied a limit healkit does not know).

    Returns:
        The most specific healkit error; the caller raises it
        ``from aiohttp_cause(exc)``.

    """
    connect_limit, read_limit = timeouts
    detail = str(exc) or type(exc).__name__
    error: HealkitError
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        after = f" after {connect_limit}s" if connect_limit is not None else ""
        error = ConnectTimeout(f"connect to {url} timed out{after}", limit=connect_limit)
    elif isinstance(exc, aiohttp.SocketTimeoutError | aiohttp.ServerTimeoutError):
        within = f" for {read_limit}s" if read_limit is not None else " within the read timeout"
        error = ReadTimeout(f"no data from {url}{within}", limit=read_limit)
    elif isinstance(exc, aiohttp.ClientConnectorDNSError):
        error = DNSError(f"cannot resolve host of {url}: {detail}")
    elif isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        error = TLSError(f"TLS handshake with {url} failed: {detail}")
    elif isinstance(exc, aiohttp.ClientConnectorError):
        error = ConnectError(f"cannot connect to {url}: {detail}")
    elif (malformed := _malformed_answer(exc)) is not None:
        error = ProtocolError(f"malformed response from {url}: {malformed}")
    elif isinstance(exc, aiohttp.InvalidURL):
        error = InvalidRequestError(f"invalid URL {url}")  # aiohttp's text repeats the raw URL
    elif isinstance(exc, aiohttp.ClientResponseError):  # a real status (raise_for_status=True)
        error = HTTPStatusError(exc.status, url=url, body_excerpt=exc.message)
    else:
        error = ConnectionLostError(f"connection to {url} lost: {type(exc).__name__}: {detail}")
    return error


def aiohttp_cause(exc: BaseException | None) -> BaseException | None:
    """Return the exception a healkit error mapped from ``exc`` is raised ``from``.

    That is ``exc``, except for aiohttp's errors whose text holds the request
    as sent: ``ClientResponseError`` (its ``str`` shows ``request_info.real_url``,
    userinfo and query included, and its ``repr`` the request's headers,
    ``Authorization`` included) gives way to the parser error behind it, which
    says what was wrong with the answer without them, and ``InvalidURL`` (its
    text is the raw URL) to nothing. A traceback logged by the application
    (``logger.exception``) then shows no secret of the request; the healkit
    error's own message has the redacted URL.
    """
    if isinstance(exc, aiohttp.ClientResponseError):
        return _parser_error(exc)
    if isinstance(exc, aiohttp.InvalidURL):
        return None
    return exc


def _parser_error(exc: BaseException) -> HttpProcessingError | None:
    """Return the most specific parser error in ``exc``'s cause chain, or ``None``."""
    parser_error: HttpProcessingError | None = None
    cause = exc.__cause__
    for _ in range(_CAUSE_DEPTH):  # aiohttp chains a copy of the parser's error to it
        if not isinstance(cause, HttpProcessingError):
            break
        parser_error = cause
        cause = cause.__cause__
    return parser_error


def _malformed_answer(exc: BaseException) -> str | None:
    """Describe what aiohttp's parser rejected in the answer, or ``None`` if it did not.

    aiohttp reports an unparsable response head as ``ClientResponseError`` with
    ``status=400`` (a status the upstream never sent), caused by its parser's
    ``HttpProcessingError``; a broken body (framing, length, encoding) as
    ``ClientPayloadError``. The most specific parser error in the cause chain
    names the problem; its message is cut short, as it may quote the answer.
    """
    if not isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return None
    parser_error = _parser_error(exc)
    if parser_error is None:
        if isinstance(exc, aiohttp.ClientPayloadError):
            return _first_line(str(exc)) or "the body is incomplete or malformed"
        return None
    reason = _first_line(parser_error.message) or "unparsable answer"
    return f"{type(parser_error).__name__}: {reason}"


def _first_line(text: str) -> str:
    """Return the first line of ``text`` without the answer's bytes aiohttp may quote."""
    line = text.strip().split("\n", 1)[0].split(" b'", 1)[0].strip().rstrip(":")
    return line[:PROTOCOL_DETAIL_CHARS]
