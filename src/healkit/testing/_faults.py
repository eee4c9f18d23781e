"""A real HTTP upstream on loopback that misbehaves on cue.

:class:`FaultServer` runs an ``aiohttp.web`` server on ``127.0.0.1`` (plain HTTP,
or HTTPS when given an :class:`ssl.SSLContext`) and answers each request with a
scripted :class:`Fault`: a normal response, a status burst, latency, a reset
connection, a hang, a truncated or a slow body, or an answer that is not valid
HTTP (a garbage status line, an oversized header block, broken chunked framing,
any bytes you give). Every request that reaches the
handler is recorded, so a test can assert what the client really sent (over
HTTPS with a context that asks for client certificates, also the certificate
the client presented)::

    async with FaultServer() as server, aiohttp.ClientSession() as session:
        server.script("/pay", Fault.status(503), Fault.reset(), then=Fault.ok())
        ...  # call server.url + "/pay" through the code under test
        assert server.hits("/pay") == 3

Scripts are per path (the request method does not matter) and can be replaced at
any time, also while requests are in flight. Paths without a script get the
default: one fault, or a :class:`FaultMix` (faults cycled in order, or drawn at
random from a seeded generator, so a run can be repeated exactly). A capacity
(:meth:`FaultServer.set_capacity`) makes the server handle at most ``limit``
requests at once, as a saturated upstream does: up to ``queue`` more wait in
line for a slot (their latency grows with the line), and the requests beyond
those are answered at once with an overflow fault (load shed).

Leaving the ``async with`` block aborts the connections of requests still being handled
(a blackhole, a long latency), so shutdown is prompt; their clients see a connection error.
"""

import asyncio
import contextlib
import enum
import json
import math
import random
import socket
import ssl
import struct
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Final, Self, final

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from healkit.testing._ports import listening_socket

__all__ = ["Fault", "FaultKind", "FaultMix", "FaultServer", "RecordedRequest"]

_HOST: Final = "127.0.0.1"
# Grace period aiohttp gives a handler on shutdown before cancelling it. The
# server aborts its own in-flight requests first, so this only bounds requests
# whose handler had not started yet when the server was closed.
_SHUTDOWN_TIMEOUT: Final = 0.5
# struct linger {l_onoff=1, l_linger=0}: close() then sends RST instead of FIN.
_LINGER_RST: Final = struct.pack("ii", 1, 0)
_REPR_BODY_MAX: Final = 32


class FaultKind(enum.Enum):
    """What a :class:`Fault` does to a request."""

    RESPOND = "respond"
    """Send a complete response (``ok``, ``status``, ``latency``, ``json``)."""
    RESET = "reset"
    """Abort the connection without reading the request body or responding."""
    RESET_AFTER_BODY = "reset_after_body"
    """Read the whole request body, then abort the connection without responding."""
    BLACKHOLE = "blackhole"
    """Read the request body and never respond."""
    TRUNCATED = "truncated"
    """Declare a Content-Length, send fewer bytes, then close the connection."""
    SLOW_BODY = "slow_body"
    """Send the headers, then the body in chunks with a delay between chunks."""
    MALFORMED = "malformed"
    """Write the given bytes as the whole answer, then close: not valid HTTP."""


def _check_seconds(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


def _freeze_headers(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return () if headers is None else tuple(headers.items())


def _short(body: bytes) -> str:
    if len(body) <= _REPR_BODY_MAX:
        return repr(body)
    return f"<{len(body)} bytes>"


@final
@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Fault:
    """An immutable description of how the server treats one request.

    Build one with the constructors (:meth:`ok`, :meth:`status`, :meth:`latency`,
    :meth:`json`, :meth:`reset`, :meth:`reset_after_body`, :meth:`blackhole`,
    :meth:`truncated`, :meth:`slow_body`); each accepts a ``latency`` in seconds
    that is waited before the fault acts, and :meth:`with_latency` adds one to any
    fault. Faults are hashable and compare by value.
    """

    kind: FaultKind
    """What the fault does."""
    status_code: int = 200
    """Status of the response, for the kinds that send one."""
    body: bytes = b""
    """The response body; for ``SLOW_BODY`` the content of one chunk; for
    ``MALFORMED`` the raw bytes of the whole answer."""
    headers: tuple[tuple[str, str], ...] = ()
    """Extra response headers, in order."""
    delay: float = 0.0
    """Seconds waited after the request was read, before the fault acts."""
    declared_length: int | None = None
    """For ``TRUNCATED``: the Content-Length announced (more than ``len(body)``)."""
    chunks: int = 0
    """For ``SLOW_BODY``: how many chunks are sent."""
    chunk_delay: float = 0.0
    """For ``SLOW_BODY``: seconds between two chunks."""

    def __post_init__(self) -> None:
        """Reject inconsistent descriptions early, where the test builds them."""
        if not 100 <= self.status_code <= 599:
            raise ValueError(f"status must be in 100..599, got {self.status_code}")
        _check_seconds("latency", self.delay)
        _check_seconds("delay", self.chunk_delay)
        if self.kind is FaultKind.TRUNCATED and (
            self.declared_length is None or self.declared_length <= len(self.body)
        ):
            raise ValueError(
                f"declared_length must exceed the {len(self.body)} bytes sent, "
                f"got {self.declared_length}"
            )
        if self.kind is FaultKind.SLOW_BODY and (self.chunks < 1 or not self.body):
            raise ValueError("slow_body needs chunks >= 1 and a non-empty chunk")
        if self.kind is FaultKind.MALFORMED and not self.body:
            raise ValueError("malformed needs the bytes of the answer")

    # -- constructors --------------------------------------------------------------

    @classmethod
    def ok(
        cls,
        *,
        status: int = 200,
        body: bytes = b"ok",
        headers: Mapping[str, str] | None = None,
        latency: float = 0.0,
    ) -> "Fault":
        """Respond normally (by default ``200`` with body ``b"ok"``)."""
        return cls(
            kind=FaultKind.RESPOND,
            status_code=status,
            body=body,
            headers=_freeze_headers(headers),
            delay=latency,
        )

    @classmethod
    def status(
        cls,
        code: int,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        latency: float = 0.0,
    ) -> "Fault":
        """Respond with status ``code``: ``Fault.status(503, headers={"Retry-After": "1"})``."""
        return cls.ok(status=code, body=body, headers=headers, latency=latency)

    @classmethod
    def latency(
        cls,
        seconds: float,
        *,
        status: int = 200,
        body: bytes = b"ok",
        headers: Mapping[str, str] | None = None,
    ) -> "Fault":
        """Respond normally after ``seconds``."""
        return cls.ok(status=status, body=body, headers=headers, latency=seconds)

    @classmethod
    def json(
        cls,
        obj: object,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        latency: float = 0.0,
    ) -> "Fault":
        """Respond with ``obj`` encoded as JSON (``Content-Type: application/json``)."""
        merged = dict(headers or {})
        if not any(name.lower() == "content-type" for name in merged):
            merged["Content-Type"] = "application/json"
        return cls.ok(
            status=status,
            body=json.dumps(obj, separators=(",", ":")).encode(),
            headers=merged,
            latency=latency,
        )

    @classmethod
    def reset(cls, *, latency: float = 0.0) -> "Fault":
        """Abort the TCP connection (RST) without reading the body or responding.

        The request is recorded with an empty body. The client sees a connection
        error (``ServerDisconnectedError`` or ``ClientOSError`` in aiohttp).
        """
        return cls(kind=FaultKind.RESET, delay=latency)

    @classmethod
    def reset_after_body(cls, *, latency: float = 0.0) -> "Fault":
        """Read the whole request body, then abort the connection without responding.

        The recorded body proves that the request reached the server.
        """
        return cls(kind=FaultKind.RESET_AFTER_BODY, delay=latency)

    @classmethod
    def blackhole(cls) -> "Fault":
        """Read the request and never respond.

        The handler hangs until the client gives up (closes the connection) or the
        server is closed.
        """
        return cls(kind=FaultKind.BLACKHOLE)

    @classmethod
    def truncated(
        cls,
        *,
        body: bytes = b"partial",
        declared_length: int | None = None,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        latency: float = 0.0,
    ) -> "Fault":
        """Announce ``declared_length`` bytes, send only ``body``, then close.

        ``declared_length`` defaults to ``len(body) + 1``. The client sees the
        status and headers, then a payload error while reading the body.
        """
        return cls(
            kind=FaultKind.TRUNCATED,
            status_code=status,
            body=body,
            headers=_freeze_headers(headers),
            delay=latency,
            declared_length=len(body) + 1 if declared_length is None else declared_length,
        )

    @classmethod
    def slow_body(  # noqa: PLR0913 - keyword-only options, like the other constructors
        cls,
        chunks: int,
        delay: float,
        *,
        chunk: bytes = b"x" * 1024,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        latency: float = 0.0,
    ) -> "Fault":
        """Send the headers at once, then ``chunks`` copies of ``chunk``, ``delay`` apart.

        The Content-Length is exact (``chunks * len(chunk)``); the first chunk
        follows the headers immediately.
        """
        return cls(
            kind=FaultKind.SLOW_BODY,
            status_code=status,
            body=chunk,
            headers=_freeze_headers(headers),
            delay=latency,
            chunks=chunks,
            chunk_delay=delay,
        )

    @classmethod
    def malformed(cls, answer: bytes, *, latency: float = 0.0) -> "Fault":
        """Write ``answer`` to the connection as the whole response, then close it.

        The bytes are sent as they are, with nothing added: use it for answers no
        HTTP server would send. The named constructors below cover the usual
        cases (a body shorter than its Content-Length is :meth:`truncated`).
        """
        return cls(kind=FaultKind.MALFORMED, body=answer, delay=latency)

    @classmethod
    def garbage_status_line(cls, *, latency: float = 0.0) -> "Fault":
        """Answer with a status line that is not HTTP (``GARBAGE``), then close.

        aiohttp reports it as ``ClientResponseError(status=400)`` caused by a
        ``BadStatusLine``: a status the server never sent.
        """
        return cls.malformed(b"GARBAGE\r\n\r\n", latency=latency)

    @classmethod
    def oversized_headers(cls, size: int = 200 * 1024, *, latency: float = 0.0) -> "Fault":
        """Answer ``200`` with one header line of ``size`` bytes, then close.

        Far over the 8 KiB line limit of aiohttp's parser (``LineTooLong``).
        """
        if size < 1:
            raise ValueError(f"size must be at least 1 byte, got {size}")
        head = b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * size
        return cls.malformed(head + b"\r\nContent-Length: 0\r\n\r\n", latency=latency)

    @classmethod
    def bad_chunking(cls, *, latency: float = 0.0) -> "Fault":
        """Answer ``200`` with chunked framing whose chunk size is not hexadecimal, then close."""
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        return cls.malformed(head + b"zz\r\nhello\r\n0\r\n\r\n", latency=latency)

    def with_latency(self, seconds: float) -> "Fault":
        """Return a copy of this fault that first waits ``seconds``."""
        return replace(self, delay=seconds)

    def __repr__(self) -> str:
        """Show the fields that matter for this kind, with long bodies elided."""
        parts = [f"kind={self.kind.name}"]
        if self.kind in {FaultKind.RESPOND, FaultKind.TRUNCATED, FaultKind.SLOW_BODY}:
            parts += [f"status_code={self.status_code}", f"body={_short(self.body)}"]
        if self.kind is FaultKind.MALFORMED:
            parts.append(f"body={_short(self.body)}")
        if self.headers:
            parts.append(f"headers={self.headers!r}")
        if self.delay:
            parts.append(f"delay={self.delay!r}")
        if self.kind is FaultKind.TRUNCATED:
            parts.append(f"declared_length={self.declared_length}")
        if self.kind is FaultKind.SLOW_BODY:
            parts += [f"chunks={self.chunks}", f"chunk_delay={self.chunk_delay!r}"]
        return f"Fault({', '.join(parts)})"


_OK: Final = Fault.ok()
_OVERFLOW: Final = Fault.status(503, body=b"over capacity")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class FaultMix:
    """Several faults for the requests to a path: cycled in order, or drawn at random.

    Build one with :meth:`cycle` or :meth:`random` and give it to
    :meth:`FaultServer.set_default`. A random mix draws from its own
    ``random.Random(seed)``: the same requests in the same order get the same
    faults on every run.
    """

    faults: tuple[Fault, ...]
    """The faults, in order."""
    weights: tuple[float, ...] | None = None
    """The relative weight of each fault (``None``: cycle through them in order)."""
    seed: int = 0
    """The seed of the random draw."""

    def __post_init__(self) -> None:
        """Reject a mix that cannot draw."""
        if not self.faults:
            raise ValueError("a FaultMix needs at least one fault")
        if self.weights is not None and (
            len(self.weights) != len(self.faults)
            or not all(math.isfinite(w) and w >= 0 for w in self.weights)
            or not sum(self.weights) > 0
        ):
            raise ValueError("weights must be one finite number >= 0 per fault, not all 0")

    @classmethod
    def cycle(cls, *faults: Fault) -> "FaultMix":
        """Answer with ``faults[0]``, ``faults[1]``... and start over after the last."""
        return cls(faults=faults)

    @classmethod
    def random(cls, choices: Sequence[tuple[Fault, float]], *, seed: int) -> "FaultMix":
        """Draw each request's fault from ``(fault, weight)`` pairs, seeded with ``seed``."""
        return cls(
            faults=tuple(fault for fault, _ in choices),
            weights=tuple(float(weight) for _, weight in choices),
            seed=seed,
        )


@final
class _Drawer:
    """The state of a default :class:`FaultMix`: its generator or its place in the cycle."""

    __slots__ = ("_mix", "_next", "_rng")

    def __init__(self, mix: FaultMix) -> None:
        self._mix = mix
        self._rng = random.Random(mix.seed)  # noqa: S311 - a repeatable draw, not a secret
        self._next = 0

    def draw(self) -> Fault:
        mix = self._mix
        if mix.weights is None:
            fault = mix.faults[self._next % len(mix.faults)]
            self._next += 1
            return fault
        return self._rng.choices(mix.faults, weights=mix.weights)[0]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    """The request method, e.g. ``"POST"``."""
    path: str
    """The percent-decoded path, without the query string."""
    query_string: str
    """The raw query string, without ``?`` (empty if none)."""
    headers: CIMultiDictProxy[str]
    """A copy of the request headers (case-insensitive, repeated names kept)."""
    body: bytes
    """The request body (empty for :meth:`Fault.reset`, which does not read it)."""
    arrived_at: float
    """``time.monotonic()`` when the handler started."""
    fault: Fault
    """The fault applied to this request."""
    peer_certificate: bytes | None = None
    """The certificate the client presented on this request's connection (DER).

    ``None`` over plain HTTP, or when the server's ``ssl_context`` does not ask
    for client certificates (``verify_mode`` ``CERT_NONE``) or the client sent
    none. Load it with ``cryptography.x509.load_der_x509_certificate`` to read
    its subject or fingerprint: requests on one connection share it, so after a
    client rotated its certificate, the requests of its new connections show
    the new one.
    """


@final
class _Script:
    __slots__ = ("_faults", "_next", "_then")

    def __init__(self, faults: tuple[Fault, ...], then: Fault) -> None:
        self._faults = faults
        self._then = then
        self._next = 0

    def advance(self) -> Fault:
        if self._next < len(self._faults):
            fault = self._faults[self._next]
            self._next += 1
            return fault
        return self._then


def _abort(request: web.BaseRequest) -> web.StreamResponse:
    """Reset the request's connection; return a response aiohttp will fail to send."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        transport.abort()
    # Writing this to the aborted transport raises ConnectionResetError inside
    # aiohttp, which treats it as a client that went away: nothing is logged.
    return web.Response(status=500)


@final
class FaultServer:
    """A loopback HTTP(S) server whose answers are scripted per path.

    Use it as an async context manager; the server listens on a free port of
    ``127.0.0.1`` between ``__aenter__`` and ``__aexit__``. Unscripted paths get
    the default fault (``Fault.ok()`` unless changed with :meth:`set_default`).
    Not thread-safe: use it from the event loop that entered it.
    """

    __slots__ = (
        "_capacity",
        "_changed",
        "_closed",
        "_default",
        "_hits",
        "_inflight",
        "_max_active",
        "_overflow",
        "_port",
        "_queue",
        "_requests",
        "_runner",
        "_scripts",
        "_ssl_context",
        "_waiting",
    )

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, max_recorded: int | None = None
    ) -> None:
        """Prepare a server; it starts listening in ``async with``.

        Pass a server-side ``ssl_context`` to serve HTTPS instead of HTTP.
        ``max_recorded`` keeps only the last N requests in :attr:`requests`
        (``None``: all), for long runs; :meth:`hits` still counts every one.
        """
        if max_recorded is not None and max_recorded < 0:
            raise ValueError(f"max_recorded must be >= 0, got {max_recorded}")
        self._ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closed = False
        self._default: Fault | _Drawer = _OK
        self._capacity: int | None = None
        self._queue = 0
        self._overflow = _OVERFLOW
        # Requests waiting for a slot, oldest first: each waits on its future.
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._scripts: dict[str, _Script] = {}
        self._requests: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self._hits: Counter[str] = Counter()
        self._inflight: dict[int, web.BaseRequest] = {}
        self._max_active = 0
        # Set, then replaced, whenever a request is recorded or finishes, and on close.
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        """Show where the server listens, or that it is not running."""
        if self._port is None:
            where = "not started"
        else:
            where = self.url + (" closed" if self._closed else "")
        return f"<FaultServer {where} hits={self.hits()} active={self.active}>"

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start listening on a free loopback port.

        Raises:
            ListenError: the server could not listen (out of file descriptors...).

        """
        if self._runner is not None or self._closed:
            raise RuntimeError("a FaultServer can be started only once")
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
            access_log=None,
        )
        await runner.setup()
        try:
            # Bound here, not by aiohttp: asyncio's create_server skips a socket
            # it cannot create (out of file descriptors) and listens on none.
            sock = listening_socket("FaultServer")
            try:
                site = web.SockSite(runner, sock, ssl_context=self._ssl_context)
                await site.start()
            except BaseException:
                sock.close()
                raise
            self._port = int(sock.getsockname()[1])
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop listening, abort requests still in flight and close every connection."""
        runner = self._runner
        if runner is None:
            return
        self._runner = None
        self._closed = True
        self._notify()
        for site in list(runner.sites):
            await site.stop()
        server = runner.server
        connections = [] if server is None else server.connections
        # Hung handlers (blackhole, latency, slow body) end here: aborting the
        # connection makes aiohttp cancel them (handler_cancellation=True).
        for request in list(self._inflight.values()):
            _abort(request)
        await runner.cleanup()
        # Idle keep-alive connections were closed gracefully by cleanup(); a TLS
        # close may still wait for the peer's close_notify. Abort whatever is left
        # and let the loop run the scheduled connection_lost callbacks, which
        # close the sockets, before returning.
        for connection in connections:
            if connection.transport is not None:
                connection.transport.abort()
        await asyncio.sleep(0)

    # -- addresses -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens on.

        It stays readable after the server closed, when nothing listens there
        any more: a test can keep calling the URL to see a refused connection.
        """
        if self._port is None:
            raise RuntimeError("the FaultServer was never started; use `async with`")
        return self._port

    @property
    def url(self) -> str:
        """The base URL without a trailing slash, e.g. ``http://127.0.0.1:43123``."""
        scheme = "http" if self._ssl_context is None else "https"
        return f"{scheme}://{_HOST}:{self.port}"

    # -- scripting -----------------------------------------------------------------

    def script(self, path: str, *faults: Fault, then: Fault = _OK) -> None:
        """Answer the next requests to ``path`` with ``faults`` in order, then ``then``.

        The first request after this call gets ``faults[0]``, the next one
        ``faults[1]``, and so on; once they are used up every request gets
        ``then``. Any method counts. Calling it again for the same path replaces
        the script and starts the new sequence from its beginning.
        """
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}")
        self._scripts[path] = _Script(faults, then)

    def set_default(self, fault: Fault | FaultMix) -> None:
        """Use ``fault`` for every request to a path without a script.

        A :class:`FaultMix` starts from its beginning (its first fault, or a
        generator freshly seeded) each time it is set.
        """
        self._default = fault if isinstance(fault, Fault) else _Drawer(fault)

    def set_capacity(
        self, limit: int | None, *, queue: int = 0, overflow: Fault = _OVERFLOW
    ) -> None:
        """Handle at most ``limit`` requests at once, queue up to ``queue`` more, shed the rest.

        A request that arrives while ``limit`` are being handled waits in line
        (first in, first out) when fewer than ``queue`` are waiting, and gets
        its scripted or default fault once a request ends and frees a slot: it
        is recorded then (its ``arrived_at`` is still its arrival), and the
        fault's latency counts from then, so the line adds to it as at an
        upstream that serves ``limit`` at once. A request that finds the line
        full gets ``overflow`` (by default an immediate ``503``) instead of its
        fault, which is not used up. A client that gives up leaves the line.
        ``None`` lifts the limit; a new limit applies at once (a higher one, or
        none, lets waiting requests go).
        """
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if queue < 0:
            raise ValueError(f"queue must be at least 0, got {queue}")
        self._capacity = limit
        self._queue = queue
        self._overflow = overflow
        self._admit_waiting()

    def reset(self) -> None:
        """Forget scripts, the default fault, the capacity and the recorded requests.

        Requests in flight are not affected (they keep their fault, and are
        recorded if they had not been yet).
        """
        self._scripts.clear()
        self._default = _OK
        self._capacity = None
        self._queue = 0
        self._admit_waiting()
        self._requests.clear()
        self._hits.clear()
        self._max_active = self.active

    # -- observation ---------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the recorded requests, in the order they were recorded.

        With ``max_recorded``, only the last ones.
        """
        return list(self._requests)

    @property
    def active(self) -> int:
        """How many requests the server is handling right now (those waiting in line included)."""
        return len(self._inflight)

    @property
    def queued(self) -> int:
        """How many requests are waiting for a slot right now (see :meth:`set_capacity`)."""
        return len(self._waiting)

    @property
    def max_active(self) -> int:
        """The most requests handled at the same time so far (since :meth:`reset`)."""
        return self._max_active

    def hits(self, path: str | None = None) -> int:
        """How many requests were recorded for ``path`` (for all paths if ``None``)."""
        return self._hits.total() if path is None else self._hits[path]

    async def wait_for_hits(self, n: int, path: str | None = None) -> int:
        """Wait until at least ``n`` requests were recorded and return the count.

        It does not time out by itself: wrap it in ``asyncio.timeout`` or
        ``anyio.fail_after``. Raises :class:`RuntimeError` if the server closes
        before enough requests arrived.
        """
        while (count := self.hits(path)) < n:
            if self._closed:
                raise RuntimeError(f"FaultServer closed after {count} of {n} hits")
            await self._changed.wait()
        return count

    async def wait_for_idle(self) -> None:
        """Wait until no request is being handled (returns at once if none is).

        Use it after a client gave up on a hanging request, to know that the
        server noticed. Like :meth:`wait_for_hits`, it does not time out by itself.
        """
        while self._inflight:
            await self._changed.wait()

    async def wait_for_queued(self, n: int) -> int:
        """Wait until exactly ``n`` requests wait for a slot and return ``n``.

        Like :meth:`wait_for_hits`, it does not time out by itself. Raises
        :class:`RuntimeError` if the server closes first.
        """
        while self.queued != n:
            if self._closed:
                raise RuntimeError(
                    f"FaultServer closed with {self.queued} requests queued, not {n}"
                )
            await self._changed.wait()
        return n

    def _fault_for(self, path: str) -> Fault:
        script = self._scripts.get(path)
        if script is not None:
            return script.advance()
        default = self._default
        return default if isinstance(default, Fault) else default.draw()

    def _full(self) -> bool:
        """Whether every slot is taken (by requests being handled, not waiting)."""
        busy = len(self._inflight) - len(self._waiting)
        return self._capacity is not None and busy >= self._capacity

    async def _wait_for_a_slot(self) -> None:
        """Wait in line until :meth:`_admit_waiting` hands this request a slot."""
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        self._notify()
        try:
            await turn
        finally:
            if not turn.done() or turn.cancelled():  # the client left (or the server closed)
                with contextlib.suppress(ValueError):
                    self._waiting.remove(turn)

    def _admit_waiting(self) -> None:
        """Hand free slots to the requests waiting longest."""
        while self._waiting and not self._full():
            turn = self._waiting.popleft()  # from now on it counts as being handled
            if not turn.done():
                turn.set_result(None)
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- request handling ----------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived_at = time.monotonic()
        wait = shed = False
        if self._full():
            wait = len(self._waiting) < self._queue
            shed = not wait
        key = id(request)
        self._inflight[key] = request
        self._max_active = max(self._max_active, len(self._inflight))
        try:
            if wait:
                await self._wait_for_a_slot()
            fault = self._overflow if shed else self._fault_for(request.path)
            body = b"" if fault.kind is FaultKind.RESET else await request.content.read()
            self._requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    query_string=request.query_string,
                    headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                    body=body,
                    arrived_at=arrived_at,
                    fault=fault,
                    peer_certificate=_peer_certificate(request),
                )
            )
            self._hits[request.path] += 1
            self._notify()
            if fault.delay:
                await asyncio.sleep(fault.delay)
            return await _apply(fault, request)
        finally:
            del self._inflight[key]
            self._admit_waiting()
            self._notify()


def _peer_certificate(request: web.BaseRequest) -> bytes | None:
    """Return the client certificate of the request's TLS connection (DER), if any."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    return ssl_object.getpeercert(binary_form=True)


# _CLIENT_GONE: a client that stops reading a slow or truncated body (its read
# timeout, a cancelled call) closes the connection, and the next write raises
# ConnectionResetError. That is the end such a fault expects, not a server
# error: the handler returns, and aiohttp, failing to finish the response,
# treats it as a client that went away (nothing logged) instead of logging
# "Error handling request" with a traceback. Any other error still propagates.


async def _apply(fault: Fault, request: web.Request) -> web.StreamResponse:
    match fault.kind:
        case FaultKind.RESPOND:
            return web.Response(status=fault.status_code, body=fault.body, headers=fault.headers)
        case FaultKind.RESET | FaultKind.RESET_AFTER_BODY:
            return _abort(request)
        case FaultKind.BLACKHOLE:
            # Cancelled when the client disconnects or the server closes.
            await asyncio.get_running_loop().create_future()
            return _abort(request)  # pragma: no cover - the future never completes
        case FaultKind.TRUNCATED:
            return await _truncated(fault, request)
        case FaultKind.MALFORMED:
            return _malformed(fault.body, request)
        case FaultKind.SLOW_BODY:
            response = web.StreamResponse(status=fault.status_code, headers=fault.headers)
            response.content_length = fault.chunks * len(fault.body)
            await response.prepare(request)
            # StreamResponse.write() would put body bytes on the wire even for HEAD.
            with contextlib.suppress(ConnectionResetError):  # see _CLIENT_GONE
                for index in range(fault.chunks if request.method != "HEAD" else 0):
                    if index:
                        await asyncio.sleep(fault.chunk_delay)
                    await response.write(fault.body)
            return response


async def _truncated(fault: Fault, request: web.Request) -> web.StreamResponse:
    """Send the head and part of the body, then close the connection."""
    response = web.StreamResponse(status=fault.status_code, headers=fault.headers)
    response.content_length = fault.declared_length
    await response.prepare(request)
    if request.method != "HEAD":
        with contextlib.suppress(ConnectionResetError):  # see _CLIENT_GONE
            await response.write(fault.body)
    if request.transport is not None:
        # close(), not abort(): the partial body must be flushed first.
        request.transport.close()
    return response


def _malformed(answer: bytes, request: web.BaseRequest) -> web.StreamResponse:
    """Write ``answer`` to the request's connection and close it; return a dud response."""
    transport = request.transport
    if transport is not None:
        transport.write(answer)
        transport.close()  # close(), not abort(): the answer is flushed first
    # aiohttp fails to send this on the closing transport, as for _abort().
    return web.Response(status=500)
