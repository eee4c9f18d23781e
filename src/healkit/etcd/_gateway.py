"""The gateway: healkit's one way to etcd's v3 JSON gateway.

A :class:`Gateway` owns everything the calls have in common: one aiohttp
session (TCP keepalive on every socket, no pool limit: each open watch holds
a connection of its own), the endpoints and the order they are tried in, TLS,
the auth token and its renewal, the size limit on what etcd sends, decoding
and checking every reply, and mapping every failure onto healkit's error
tree. :class:`~healkit.etcd.EtcdClient`, :class:`~healkit.etcd.EtcdWatch`,
:class:`~healkit.etcd.LeaseKeeper` and :class:`~healkit.etcd.EtcdSource` are
thin users of it, through the methods here and nothing else.

Several endpoints are tried in turn: a request moves on to the next endpoint
when it could not connect (any request), or when the connection broke or the
member answered ``UNAVAILABLE`` (read-only requests only, which are safe to
repeat). The endpoint that answered is used first from then on. Passwords
and tokens never appear in messages or logs, and are sent only to the
configured endpoints: a redirect is not followed (etcd never sends one), it
is a :class:`~healkit.EtcdProtocolError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Final, TypeVar, final

import aiohttp
import msgspec
import yarl
from aiohttp.connector import AddrInfoType

from healkit._config.models import url_problem
from healkit._errors import (
    EtcdAuthError,
    EtcdCompactedError,
    EtcdError,
    EtcdProtocolError,
    EtcdRequestError,
    EtcdUnavailableError,
    aiohttp_cause,
)
from healkit._log import get_logger
from healkit._redact import without_userinfo
from healkit.etcd._messages import AUTH_REPLY, ENCODER, ERROR_REPLY, R, StreamError

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "Gateway",
    "GatewayStream",
    "Settings",
    "settings",
    "status_error",
    "stream_error",
]

logger: Final = get_logger("healkit.etcd")

M = TypeVar("M")

# gRPC status codes that the gateway puts in its error replies.
_GRPC_INVALID_ARGUMENT: Final = 3
_GRPC_PERMISSION_DENIED: Final = 7
_GRPC_FAILED_PRECONDITION: Final = 9
_GRPC_OUT_OF_RANGE: Final = 11
_GRPC_UNAVAILABLE: Final = 14
_GRPC_UNAUTHENTICATED: Final = 16

# etcd's reasons (api/v3rpc/rpctypes) that decide how an error is classified.
_REASON_COMPACTED: Final = "required revision has been compacted"
_REASON_AUTH_NOT_ENABLED: Final = "authentication is not enabled"
# A token etcd no longer accepts: authenticate again and resend once.
_REASONS_STALE_TOKEN: Final = (
    "invalid auth token",
    "revision of auth store is old",
    "user name is empty",  # auth was enabled after this client found it disabled
)
_REASONS_AUTH: Final = (
    "authentication failed",
    "permission denied",
    "user name is empty",
    "invalid auth token",
    "revision of auth store is old",
    "user name not found",
)

# A canceled watch gives its reason as a formatted gRPC status.
_RPC_ERROR: Final = re.compile(r"rpc error: code = (?P<code>\w+) desc = (?P<desc>.*)", re.DOTALL)
_GRPC_CODES: Final[Mapping[str, int]] = {
    "Canceled": 1,
    "Unknown": 2,
    "InvalidArgument": _GRPC_INVALID_ARGUMENT,
    "DeadlineExceeded": 4,
    "NotFound": 5,
    "AlreadyExists": 6,
    "PermissionDenied": _GRPC_PERMISSION_DENIED,
    "ResourceExhausted": 8,
    "FailedPrecondition": _GRPC_FAILED_PRECONDITION,
    "Aborted": 10,
    "OutOfRange": _GRPC_OUT_OF_RANGE,
    "Unimplemented": 12,
    "Internal": 13,
    "Unavailable": _GRPC_UNAVAILABLE,
    "DataLoss": 15,
    "Unauthenticated": _GRPC_UNAUTHENTICATED,
}

DEFAULT_MAX_MESSAGE: Final = 64 * 1024 * 1024
_KEEPALIVE_IDLE: Final = 10
_KEEPALIVE_INTERVAL: Final = 5
_KEEPALIVE_COUNT: Final = 3
_READ_CHUNK: Final = 64 * 1024
_SNIPPET: Final = 200


# -- errors -----------------------------------------------------------------------


def classify(code: int, reason: str, *, endpoint: str, path: str) -> EtcdError:
    """Map an error etcd sent (gRPC code and reason) onto the healkit tree."""
    if code == _GRPC_UNAVAILABLE:
        return EtcdUnavailableError(
            f"etcd at {endpoint} cannot serve {path}: {reason}",
            failures=[(endpoint, reason)],
            endpoint=endpoint,
        )
    message = f"etcd at {endpoint} refused {path}: {reason} (gRPC code {code})"
    if code == _GRPC_OUT_OF_RANGE and _REASON_COMPACTED in reason:
        return EtcdCompactedError(
            message, compact_revision=None, code=code, reason=reason, endpoint=endpoint
        )
    is_auth = code in {_GRPC_UNAUTHENTICATED, _GRPC_PERMISSION_DENIED} or (
        code == _GRPC_INVALID_ARGUMENT and any(text in reason for text in _REASONS_AUTH)
    )
    if is_auth:
        return EtcdAuthError(message, code=code, reason=reason, endpoint=endpoint)
    return EtcdRequestError(message, code=code, reason=reason, endpoint=endpoint)


def _snippet(raw: bytes) -> str:
    text = raw[:_SNIPPET].decode("utf-8", "replace")
    return text + ("..." if len(raw) > _SNIPPET else "")


def describe(exc: BaseException, endpoint: str = "") -> str:
    """Say what went wrong in one line, for messages and logs.

    aiohttp's connection errors are described from their parts: their own
    text shows the SSL context's ``repr`` (``ssl:<ssl.SSLContext object at
    0x...>``) and ``[None]`` for a cause without a message.
    """
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _describe_connect(exc, tls=endpoint.startswith("https://"))
    if isinstance(exc, aiohttp.ServerDisconnectedError) and endpoint.startswith("http://"):
        # Raised only before any answer began: etcd serving TLS only closes a
        # connection that sends it plain HTTP at once, without a word.
        return (
            f"{endpoint.removeprefix('http://')} closed the connection without answering"
            " (does the endpoint expect TLS? then use https://)"
        )
    text = str(exc)
    name = type(exc).__name__
    if not text and isinstance(exc, TimeoutError):
        text = "timed out"
    return f"{name}: {text}" if text else name


def _describe_connect(exc: aiohttp.ClientConnectorError, *, tls: bool) -> str:
    where = f"{exc.host}:{exc.port}"
    cause = exc.os_error
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        error = exc.certificate_error
        verified = isinstance(error, ssl.SSLCertVerificationError) and error.verify_message
        reason = verified or str(error)
        return (
            f"TLS: the certificate of {where} is not trusted: {reason}"
            " (is the CA that signed it the one given as CA file?)"
        )
    if isinstance(cause, ssl.SSLError):
        reason = cause.reason or cause.strerror or type(cause).__name__
        hint = ""
        if reason in {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"}:
            hint = " (the endpoint does not speak TLS: is it plain HTTP? then use http://)"
        return f"TLS handshake with {where} failed: {reason}{hint}"
    if tls and isinstance(cause, ConnectionResetError | EOFError):
        # etcd without TLS drops a TLS hello at once: nothing else resets there.
        return (
            f"{where} closed the connection during the TLS handshake"
            " (does the endpoint speak plain HTTP? then use http://)"
        )
    reason = cause.strerror or str(cause) or type(cause).__name__
    return f"cannot connect to {where}: {reason}"


def _stale_token(error: EtcdError) -> bool:
    return isinstance(error, EtcdAuthError) and any(
        text in error.reason for text in _REASONS_STALE_TOKEN
    )


# Nothing was sent: safe to try the request on another endpoint, whatever it is.
_REQUIRE_LEADER: Final = "Grpc-Metadata-hasleader"
"""The gateway passes it on as the gRPC metadata ``hasleader`` (clientv3's WithRequireLeader)."""
_NOT_SENT: Final = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


def normalize_endpoint(endpoint: str, *, tls: bool) -> str:
    """Return ``endpoint`` as the client keeps it: ``scheme://host:port``.

    An endpoint without a scheme gets ``https://`` with TLS options, else ``http://``.

    Raises:
        ValueError: ``endpoint`` is not usable (see :func:`endpoint_problem`); the
            message shows it without credentials.

    """
    text = endpoint.strip()
    if "://" not in text:
        text = f"{'https' if tls else 'http'}://{text}"
    problem = endpoint_problem(text)
    if problem is not None:
        raise ValueError(f"invalid etcd endpoint {shown_endpoint(text)}: {problem}")
    return str(yarl.URL(text).origin())


def endpoint_problem(endpoint: str) -> str | None:
    """Return why ``endpoint`` is not an etcd endpoint (``http(s)://HOST[:PORT]``), or ``None``.

    The host and port are held to the rule of every URL healkit calls
    (:func:`~healkit._config.models.url_problem`: IDNA, labels of 1 to 63
    characters, port 1 to 65535). Credentials, a path, a query or a fragment
    are refused. The one rule of :class:`~healkit.etcd.EtcdClient` and of the
    command line's ``--endpoints``.
    """
    if without_userinfo(endpoint) != endpoint:  # before any message quotes it
        return "no credentials in the URL: give the user and the password apart"
    try:
        url = yarl.URL(endpoint)
        url.explicit_port  # noqa: B018 - a port that is not a number raises here
    except ValueError as error:  # UnicodeError (an IDNA failure) included
        return f"invalid URL: {error}"
    if url.scheme not in {"http", "https"} or not url.raw_host:
        return "expected http(s)://HOST:PORT"
    if url.raw_path not in {"", "/"} or url.raw_query_string or url.raw_fragment:
        return "no path, query or fragment"
    return url_problem(url)


def shown_endpoint(endpoint: str) -> str:
    """Return ``endpoint`` quoted for a message, its userinfo (``user:password@``) masked."""
    return repr(_USERINFO.sub("//***@", endpoint))


_USERINFO: Final = re.compile(r"//[^/?#]*@")


def _keepalive_socket(addr_info: AddrInfoType) -> socket.socket:
    """Open a client socket with TCP keepalive, so that the kernel notices a vanished peer.

    A watch may be idle for minutes; without keepalive a connection whose
    path silently died stays "open" for ever. Probes start after
    ``_KEEPALIVE_IDLE`` seconds of silence, ``_KEEPALIVE_INTERVAL`` apart, and
    ``_KEEPALIVE_COUNT`` unanswered ones close it (where the OS has the options).
    """
    family, kind, protocol, _, _ = addr_info
    sock = socket.socket(family=family, type=kind, proto=protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", _KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", _KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", _KEEPALIVE_COUNT),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
    return sock


def tls_context(
    ca_file: str | os.PathLike[str] | None,
    cert_file: str | os.PathLike[str] | None,
    key_file: str | os.PathLike[str] | None,
) -> ssl.SSLContext:
    if key_file is not None and cert_file is None:
        raise ValueError("key_file needs cert_file")
    context = ssl.create_default_context()
    if ca_file is not None:
        with _loading(f"the CA file {os.fspath(ca_file)!r}"):
            context.load_verify_locations(cafile=os.fspath(ca_file))
    if cert_file is not None:
        what = f"the certificate {os.fspath(cert_file)!r}"
        if key_file is not None:
            what += f" with the key {os.fspath(key_file)!r}"
        with _loading(what):
            context.load_cert_chain(
                os.fspath(cert_file), None if key_file is None else os.fspath(key_file)
            )
    return context


@contextlib.contextmanager
def _loading(what: str) -> Iterator[None]:
    """Name the file in the error when ``ssl`` cannot load it (its own error names none)."""
    try:
        yield
    except OSError as exc:  # ssl.SSLError too
        reason = (isinstance(exc, ssl.SSLError) and exc.reason) or exc.strerror or str(exc)
        raise ValueError(f"cannot load {what}: {reason}") from exc


def stream_error(error: StreamError, endpoint: str, path: str) -> EtcdError:
    """Map an error that etcd sent inside a stream (watch, keepalive) onto the healkit tree."""
    return classify(error.grpc_code, error.message, endpoint=endpoint, path=path)


def status_error(reason: str, *, endpoint: str, path: str) -> EtcdError | None:
    """Map a reason worded as a gRPC status (``rpc error: code = X desc = Y``), if it is one."""
    match = _RPC_ERROR.fullmatch(reason)
    code = None if match is None else _GRPC_CODES.get(match["code"])
    if match is None or code is None:
        return None
    return classify(code, match["desc"], endpoint=endpoint, path=path)


def _log_failure(endpoint: str, path: str, reason: str) -> None:
    logger.warning("healkit.etcd_endpoint_failed", endpoint=endpoint, path=path, reason=reason)


def _unavailable_reply(raw: bytes) -> bool:
    try:
        error = ERROR_REPLY.decode(raw)
    except msgspec.DecodeError:
        return False
    return error.code == _GRPC_UNAVAILABLE


def decode(decoder: msgspec.json.Decoder[R], raw: bytes, path: str, endpoint: str) -> R:
    """Decode a whole reply and check that it is etcd's (its header), or raise."""
    try:
        reply = decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise EtcdProtocolError(
            f"invalid reply from {endpoint} to {path}: {exc} (is it an etcd v3 JSON gateway?)",
            endpoint=endpoint,
        ) from exc
    header = reply.header
    if header is not None and not header.from_etcd():
        raise EtcdProtocolError(
            f"invalid reply from {endpoint} to {path}: no etcd header (cluster ID and"
            f" member ID): {_snippet(raw)!r} (is it an etcd v3 JSON gateway?)",
            endpoint=endpoint,
        )
    return reply


def _reply_error(status: int, raw: bytes, endpoint: str, path: str) -> EtcdError:
    try:
        error = ERROR_REPLY.decode(raw)
    except msgspec.DecodeError:
        return EtcdProtocolError(
            f"etcd at {endpoint} answered {path} with HTTP {status}: {_snippet(raw)!r}"
            " (is it an etcd v3 JSON gateway?)",
            endpoint=endpoint,
        )
    return classify(error.code, error.message or error.error, endpoint=endpoint, path=path)


async def _read_body(
    response: aiohttp.ClientResponse, limit: int, endpoint: str, path: str
) -> bytes:
    declared = response.content_length
    if declared is not None and declared > limit:
        raise EtcdProtocolError(
            f"reply from etcd at {endpoint} to {path} is {declared} bytes, over {limit}",
            endpoint=endpoint,
        )
    data = bytearray()
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        data += chunk
        if len(data) > limit:
            raise EtcdProtocolError(
                f"reply from etcd at {endpoint} to {path} exceeds {limit} bytes",
                endpoint=endpoint,
            )
    return bytes(data)


@final
class GatewayStream:
    """One streaming request (a watch, a keepalive stream): messages one JSON line each.

    Closing it drops the connection, which ends the stream in etcd; a read
    waiting in another task then fails.
    """

    __slots__ = ("_limit", "_pending", "_response", "_scanned", "endpoint", "path")

    def __init__(
        self, response: aiohttp.ClientResponse, endpoint: str, path: str, limit: int
    ) -> None:
        self._response: aiohttp.ClientResponse | None = response
        self.endpoint: Final = endpoint
        """The endpoint the stream runs on."""
        self.path: Final = path
        """The streaming RPC."""
        self._limit = limit
        # Bytes read past the last message, and how many of them hold no newline.
        self._pending = bytearray()
        self._scanned = 0

    def close(self) -> None:
        """Drop the connection (again: nothing)."""
        response, self._response = self._response, None
        if response is not None:
            response.close()

    async def message(self, decoder: msgspec.json.Decoder[R]) -> R:
        """Read, decode and check the next message of the stream.

        Raises:
            EtcdUnavailableError: the stream broke or ended.
            EtcdProtocolError: the message is too large, or not etcd's.

        """
        response, endpoint = self._response, self.endpoint
        if response is None:
            raise RuntimeError("the stream is closed")
        while True:
            try:
                line = await self._line(response.content)
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = describe(exc, endpoint)
                raise EtcdUnavailableError(
                    f"{self._kind()} stream from etcd at {endpoint} broke: {reason}",
                    failures=[(endpoint, reason)],
                    endpoint=endpoint,
                ) from exc
            if not line:
                raise EtcdUnavailableError(
                    f"{self._kind()} stream from etcd at {endpoint} ended",
                    failures=[(endpoint, "stream ended")],
                    endpoint=endpoint,
                )
            if line.strip():
                return decode(decoder, line, self.path, endpoint)

    async def _line(self, content: aiohttp.StreamReader) -> bytes:
        """Return the next line (empty at the end of the stream), in time linear in its size.

        Each chunk that arrives is appended once and searched once: a message
        that never ends costs the event loop what its bytes cost, up to the
        limit. (aiohttp's ``readline`` copies the whole line read so far for
        each chunk: a 64 MiB line without a newline kept the loop busy 15 s,
        in stalls of up to 0.4 s.)

        Raises:
            EtcdProtocolError: the line is longer than the limit.

        """
        pending = self._pending
        while True:
            end = pending.find(b"\n", self._scanned)
            if end != -1:
                line = bytes(pending[: end + 1])
                del pending[: end + 1]
                self._scanned = 0
                return line
            self._scanned = len(pending)
            if len(pending) > self._limit:
                pending.clear()
                raise EtcdProtocolError(
                    f"{self._kind()} message from etcd at {self.endpoint} exceeds "
                    f"{self._limit} bytes",
                    endpoint=self.endpoint,
                )
            data = await content.readany()
            if not data:
                line = bytes(pending)
                pending.clear()
                return line
            pending += data

    def _kind(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """How to reach etcd: the options of :class:`~healkit.etcd.EtcdClient`, checked.

    Equal settings reach the same endpoints as the same user through the same
    TLS (the same files with the same content, or the same
    :class:`ssl.SSLContext` object), so their users may share connections.
    """

    endpoints: tuple[str, ...]
    """The endpoints' base URLs, in the order given."""
    username: str | None
    """The user to authenticate as (``None``: no auth)."""
    password: str | None = dataclasses.field(repr=False)
    """The user's password."""
    ssl_context: ssl.SSLContext | None = dataclasses.field(compare=False)
    """The TLS context (``None``: the system's, for https endpoints)."""
    tls: tuple[tuple[str, str, str], ...] | ssl.SSLContext | None
    """What the TLS context is made of: each file's role, path and SHA-256, or the context given.

    The role (``ca_file``, ``cert_file``, ``key_file``) counts: the same files
    in other roles make another context (another trust, another identity).
    """
    timeout: float
    """Seconds a request (not a stream) may take as a whole, per endpoint."""
    connect_timeout: float
    """Seconds to connect to one endpoint."""
    max_message_bytes: int
    """The largest reply or stream message accepted."""


def settings(  # noqa: PLR0913 - keyword-only connection options
    endpoints: str | Sequence[str],
    *,
    username: str | None,
    password: str | None,
    ca_file: str | os.PathLike[str] | None,
    cert_file: str | os.PathLike[str] | None,
    key_file: str | os.PathLike[str] | None,
    ssl_context: ssl.SSLContext | None,
    timeout: float,
    connect_timeout: float,
    max_message_bytes: int,
) -> Settings:
    """Check and normalize :class:`~healkit.etcd.EtcdClient`'s options; load the TLS files.

    Raises:
        ValueError: an option is invalid, or a TLS file cannot be loaded.

    """
    files = ca_file is not None or cert_file is not None or key_file is not None
    if files and ssl_context is not None:
        raise ValueError("give TLS files or ssl_context, not both")
    if (username is None) != (password is None):
        raise ValueError("username and password go together")
    if not (timeout > 0 and connect_timeout > 0):
        raise ValueError("timeout and connect_timeout must be > 0")
    if max_message_bytes <= 0:
        raise ValueError("max_message_bytes must be > 0")
    listed = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    if not listed:
        raise ValueError("at least one etcd endpoint is needed")
    tls = files or ssl_context is not None
    normalized = tuple(normalize_endpoint(item, tls=tls) for item in listed)
    if tls and any(item.startswith("http://") for item in normalized):
        raise ValueError("TLS options are given but an endpoint uses http://")
    made_of: tuple[tuple[str, str, str], ...] | ssl.SSLContext | None = ssl_context
    if files:
        ssl_context = tls_context(ca_file, cert_file, key_file)
        roles = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
        made_of = tuple(
            (role, os.fspath(path), _digest(path))
            for role, path in roles.items()
            if path is not None
        )
    return Settings(
        endpoints=normalized,
        username=username,
        password=password,
        ssl_context=ssl_context,
        tls=made_of,
        timeout=timeout,
        connect_timeout=connect_timeout,
        max_message_bytes=max_message_bytes,
    )


def _digest(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 of a TLS file (read once more after ``ssl`` loaded it)."""
    with _loading(f"the file {os.fspath(path)!r}"):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@final
class Gateway:
    """One etcd connection set: session, endpoint order, TLS, auth token, decoding.

    Connections are opened on first use; :meth:`close` closes them all, open
    streams included, and the gateway cannot be used again.
    """

    __slots__ = (
        "_auth_task",
        "_closed",
        "_order_start",
        "_session",
        "_timeout",
        "_token",
        "settings",
    )

    def __init__(self, settings: Settings) -> None:
        self.settings: Final = settings
        """What the gateway connects with."""
        self._timeout = aiohttp.ClientTimeout(
            total=settings.timeout, connect=settings.connect_timeout
        )
        self._order_start = 0
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # None: not authenticated yet; "": etcd has auth disabled.
        self._token: str | None = None
        self._auth_task: asyncio.Task[None] | None = None

    def open(self) -> None:
        """Create the session now (connections are still opened on first use)."""
        self._ensure_session()

    async def close(self) -> None:
        """Close every connection, open streams included."""
        self._closed = True
        task, self._auth_task = self._auth_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the EtcdClient is closed")
        if self._session is None:
            # No pool limit: every open watch holds a connection of its own.
            connector = aiohttp.TCPConnector(limit=0, socket_factory=_keepalive_socket)
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"Content-Type": "application/json"},
            )
        return self._session

    def _ssl(self) -> ssl.SSLContext | bool:
        context = self.settings.ssl_context
        return True if context is None else context

    def _order(self) -> list[int]:
        count = len(self.settings.endpoints)
        return [(self._order_start + step) % count for step in range(count)]

    # -- requests ------------------------------------------------------------------

    async def call(
        self,
        path: str,
        body: Mapping[str, object],
        decoder: msgspec.json.Decoder[R],
        *,
        idempotent: bool,
    ) -> tuple[R, str]:
        """Send one request and decode the reply; return it and the endpoint that answered.

        The request is authenticated (the token renewed and the request sent
        once more when etcd refuses a stale one) and fails over to the next
        endpoint as the module docstring says.
        """
        payload = ENCODER.encode(body)
        renewed = False
        while True:
            token = await self._auth_token()
            status, raw, endpoint = await self._post(path, payload, token, idempotent=idempotent)
            if status == 200:
                return decode(decoder, raw, path, endpoint), endpoint
            error = _reply_error(status, raw, endpoint, path)
            if token and not renewed and _stale_token(error):
                # The token expired or etcd restarted: the request was refused,
                # so it is safe to resend it once with a new token.
                self._forget_token(token)
                renewed = True
                continue
            raise error

    async def _post(
        self, path: str, payload: bytes, token: str | None, *, idempotent: bool
    ) -> tuple[int, bytes, str]:
        """POST to the first endpoint that answers; return status, body and endpoint."""
        session = self._ensure_session()
        headers = {"Authorization": token} if token else None
        failures: list[tuple[str, str]] = []
        reached = False
        cause: BaseException | None = None
        for index in self._order():
            endpoint = self.settings.endpoints[index]
            try:
                async with session.post(
                    endpoint + path,
                    data=payload,
                    headers=headers,
                    timeout=self._timeout,
                    ssl=self._ssl(),
                    allow_redirects=False,  # the body may hold the password: never resend it
                ) as response:
                    raw = await _read_body(
                        response, self.settings.max_message_bytes, endpoint, path
                    )
                    status = response.status
            except _NOT_SENT as exc:
                cause, failure = exc, describe(exc, endpoint)
            except (aiohttp.ClientError, TimeoutError) as exc:
                cause, failure, reached = exc, describe(exc, endpoint), True
                if not idempotent:
                    # It may have been applied: never resend it elsewhere.
                    failures.append((endpoint, failure))
                    _log_failure(endpoint, path, failure)
                    break
            else:
                if status >= 500 and idempotent and _unavailable_reply(raw):
                    reached = True
                    failure = f"HTTP {status}: {_snippet(raw)}"
                else:
                    self._order_start = index
                    return status, raw, endpoint
            failures.append((endpoint, failure))
            _log_failure(endpoint, path, failure)
        tried = "; ".join(f"{endpoint}: {reason}" for endpoint, reason in failures)
        error = EtcdUnavailableError(
            f"no etcd endpoint could serve {path} ({tried})",
            failures=failures,
            may_have_reached_server=reached,
        )
        raise error from aiohttp_cause(cause)  # its repr would show the token

    # -- streams -------------------------------------------------------------------

    async def open_stream(
        self,
        path: str,
        body: Mapping[str, object],
        first: Callable[[GatewayStream], Awaitable[M]],
        *,
        idle_timeout: float | None,
    ) -> tuple[GatewayStream, M]:
        """Open a streaming request and read what it starts with, through ``first``.

        The stream runs on the first endpoint that accepts a connection (opening
        one changes nothing in etcd, so any failure moves on). ``first`` reads
        the opening message(s); if etcd refuses the request, or ``first`` raises
        :class:`~healkit.EtcdAuthError` (a stale token shows as "permission
        denied" on a watch), the token is renewed and the stream opened once
        more. On any error the stream is closed.

        Args:
            path: the streaming RPC, e.g. ``/v3/watch``.
            body: its (first) request.
            first: reads the stream's first message(s); its result is returned.
            idle_timeout: fail a read after this many seconds without data.

        """
        payload = ENCODER.encode(body)
        renewed = False
        while True:
            token = await self._auth_token()
            response, endpoint = await self._open(path, payload, token, idle_timeout=idle_timeout)
            stream = GatewayStream(response, endpoint, path, self.settings.max_message_bytes)
            try:
                return stream, await self._begin(stream, response, first)
            except EtcdAuthError:
                stream.close()
                if token and not renewed:
                    self._forget_token(token)
                    renewed = True
                    continue
                raise
            except BaseException:
                stream.close()
                raise

    async def _begin(
        self,
        stream: GatewayStream,
        response: aiohttp.ClientResponse,
        first: Callable[[GatewayStream], Awaitable[M]],
    ) -> M:
        """Raise the error etcd refused a stream with (not HTTP 200), else read its start."""
        if response.status != 200:
            raw = await _read_body(
                response, self.settings.max_message_bytes, stream.endpoint, stream.path
            )
            raise _reply_error(response.status, raw, stream.endpoint, stream.path)
        return await first(stream)

    async def _open(
        self, path: str, payload: bytes, token: str | None, *, idle_timeout: float | None
    ) -> tuple[aiohttp.ClientResponse, str]:
        """Open a streaming POST on the first endpoint that accepts a connection."""
        session = self._ensure_session()
        # etcd's "require leader": a member that has no leader (cut off from its
        # cluster, or the cluster lost quorum) refuses the stream, or cancels it
        # when it loses its leader, instead of confirming a watch it cannot feed.
        headers = {_REQUIRE_LEADER: "true"}
        if token:
            headers["Authorization"] = token
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.settings.connect_timeout, sock_read=idle_timeout
        )
        failures: list[tuple[str, str]] = []
        cause: BaseException | None = None
        reached = False
        for index in self._order():
            endpoint = self.settings.endpoints[index]
            try:
                # A member that accepts the connection but never answers (a dead
                # route, a hung process) counts as one that cannot be reached:
                # the next endpoint is tried, instead of this one again forever.
                async with asyncio.timeout(self.settings.connect_timeout):
                    response = await session.post(
                        endpoint + path,
                        data=payload,
                        headers=headers,
                        timeout=timeout,
                        ssl=self._ssl(),
                        allow_redirects=False,
                    )
            except _NOT_SENT as exc:
                failure, cause = describe(exc, endpoint), exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Opening a stream changes nothing: safe to try the next endpoint.
                failure, cause, reached = describe(exc, endpoint), exc, True
            else:
                if response.status != HTTPStatus.SERVICE_UNAVAILABLE:
                    self._order_start = index
                    return response, endpoint
                # This member has no leader: another one may have.
                try:
                    raw = await _read_body(
                        response, self.settings.max_message_bytes, endpoint, path
                    )
                finally:
                    response.release()
                failure, reached = f"HTTP 503: {_snippet(raw)}", True
            failures.append((endpoint, failure))
            _log_failure(endpoint, path, failure)
        tried = "; ".join(f"{endpoint}: {reason}" for endpoint, reason in failures)
        raise EtcdUnavailableError(
            f"no etcd endpoint could serve {path} ({tried})",
            failures=failures,
            may_have_reached_server=reached,
        ) from aiohttp_cause(cause)

    # -- authentication ------------------------------------------------------------

    async def _auth_token(self) -> str | None:
        """Return the token to send (``None``: no credentials, or auth disabled in etcd)."""
        if self.settings.username is None:
            return None
        while self._token is None:
            task = self._auth_task
            if task is None:
                # One authentication at a time, shared by every request waiting
                # for it (so in none's context); shield() keeps it going if one
                # waiter is cancelled.
                context = contextvars.Context()
                task = asyncio.create_task(self._authenticate(), context=context)
                task.add_done_callback(self._auth_done, context=context)
                self._auth_task = task
            await asyncio.shield(task)
        return self._token or None

    def _auth_done(self, task: asyncio.Task[None]) -> None:
        if self._auth_task is task:
            self._auth_task = None
        if not task.cancelled():
            task.exception()  # retrieved here; every waiter got it through shield()

    def _forget_token(self, token: str) -> None:
        if self._token == token:
            self._token = None

    async def _authenticate(self) -> None:
        path = "/v3/auth/authenticate"
        payload = ENCODER.encode(
            {"name": self.settings.username, "password": self.settings.password}
        )
        status, raw, endpoint = await self._post(path, payload, None, idempotent=True)
        if status != 200:
            error = _reply_error(status, raw, endpoint, path)
            if isinstance(error, EtcdRequestError):
                if _REASON_AUTH_NOT_ENABLED in error.reason:
                    self._token = ""
                    return
                user = self.settings.username
                raise EtcdAuthError(
                    f"etcd at {endpoint} refused authentication as user {user!r}: {error.reason}",
                    code=error.code,
                    reason=error.reason,
                    endpoint=endpoint,
                )
            raise error
        reply = decode(AUTH_REPLY, raw, path, endpoint)
        if not reply.token:
            raise EtcdProtocolError(f"invalid reply from etcd at {endpoint} to {path}: no token")
        logger.debug("healkit.etcd_authenticated", endpoint=endpoint, user=self.settings.username)
        self._token = reply.token
