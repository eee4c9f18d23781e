"""The response type of every HTTP call: real, fallback or degraded alike.

A buffered response holds its whole body (read under the body-size cap). A
streaming response (``Client.stream``) holds the open aiohttp response; its
body is read with :meth:`Response.iter_chunks` or :meth:`Response.read`, and
the connection is released when the ``stream`` block ends.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar, final, overload

import aiohttp
import msgspec
from multidict import CIMultiDict, CIMultiDictProxy

from healkit._errors import (
    BodyTooLargeError,
    HealkitError,
    HTTPStatusError,
    OutcomeUnavailableError,
    aiohttp_cause,
    display_url,
    map_aiohttp_error,
)

if TYPE_CHECKING:
    from healkit._outcome import Outcome

__all__ = ["OUTCOME_HEADER", "Response"]

T = TypeVar("T")

OUTCOME_HEADER: Final = "Healkit-Outcome"
"""Header set on fallback and degraded responses: its value is the path taken.

Only healkit sets it: it is removed from every answer an upstream sends.
"""

CHUNK_SIZE: Final = 64 * 1024


@final
class Response:
    """An HTTP response as healkit returns it.

    Attributes:
        status: the HTTP status code.
        reason: the reason phrase.
        headers: the response headers (case-insensitive, read-only).
        url: the URL that answered (redacted of userinfo).
        outcome: how the call got this response: path taken, attempts, endpoint.
            Set on every response a call returns; reading it on another one
            raises :class:`OutcomeUnavailableError`.

    """

    __slots__ = (
        "_body",
        "_limit",
        "_outcome",
        "_outcome_source",
        "_read_timeout",
        "_stream",
        "headers",
        "reason",
        "status",
        "url",
    )

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str] | CIMultiDictProxy[str] | None = None,
        body: bytes = b"",
        url: str = "",
        reason: str = "",
    ) -> None:
        """Build a buffered response (how plugins make fallback and degraded responses).

        The arguments may be given by position (as healkit's transport does, once
        per attempt) or by keyword.
        """
        self.status = status
        self.reason = reason
        self.headers: CIMultiDictProxy[str] = (
            headers
            if isinstance(headers, CIMultiDictProxy)
            else CIMultiDictProxy(CIMultiDict(headers or {}))
        )
        self.url = url
        self._body: bytes | None = body
        self._stream: aiohttp.ClientResponse | None = None
        self._limit = 0
        self._read_timeout: float | None = None
        self._outcome: Outcome | None = None
        self._outcome_source: Callable[[], Outcome] | None = None

    @classmethod
    def streaming(
        cls, raw: aiohttp.ClientResponse, *, url: str, limit: int, read_timeout: float | None
    ) -> Response:
        """Wrap an open aiohttp response whose body has not been read yet.

        ``limit`` is the body cap; ``read_timeout`` the read limit the connection
        was opened with, if known (for the message of a ReadTimeout while streaming).
        """
        self = cls._received(raw, b"", url)
        self._body = None  # to be read from the stream
        self._stream = raw
        self._limit = limit
        self._read_timeout = read_timeout
        return self

    @classmethod
    def _received(cls, raw: aiohttp.ClientResponse, body: bytes, url: str) -> Response:
        """Wrap what aiohttp received, less an upstream's outcome header.

        Only healkit says how a call went (:data:`OUTCOME_HEADER`).
        """
        headers = raw.headers
        if OUTCOME_HEADER in headers:
            headers = _without_outcome(headers)
        return cls(raw.status, headers, body, url, raw.reason or "")

    @property
    def outcome(self) -> Outcome:
        """How the call got this response: path taken, attempts, endpoint.

        Raises:
            OutcomeUnavailableError: no healkit call returned this response (a
                plugin built it, or a hook reads it before its call ended).

        """
        outcome = self._bound_outcome()
        if outcome is None:
            raise OutcomeUnavailableError(
                "this response has no outcome: no healkit call returned it (yet)"
            )
        return outcome

    def _bound_outcome(self) -> Outcome | None:
        """Return the outcome if a call bound one (built on first read), else None."""
        if self._outcome is None and self._outcome_source is not None:
            self._outcome = self._outcome_source()
        return self._outcome

    def _bind_outcome(self, source: Callable[[], Outcome]) -> None:
        """Attach the call's outcome, built on first read of :attr:`outcome`."""
        self._outcome_source = source
        self._outcome = None

    def with_header(self, name: str, value: str) -> Response:
        """Return a copy of this response with header ``name`` set to ``value``."""
        headers = CIMultiDict(self.headers)
        headers[name] = value
        copy = Response(
            self.status, headers=headers, body=self._body or b"", url=self.url, reason=self.reason
        )
        copy._body = self._body
        copy._stream = self._stream
        copy._limit = self._limit
        copy._read_timeout = self._read_timeout
        return copy

    def __repr__(self) -> str:
        """Return ``<Response 200 https://host/path path=primary>``: the URL without its query.

        ``url`` keeps the query as sent (tokens, signatures); a ``repr`` ends up
        in logs, so it shows the URL as error messages do.
        """
        outcome = self._bound_outcome()
        path = outcome.path if outcome is not None else "?"
        return f"<Response {self.status} {display_url(self.url)} path={path}>"

    @property
    def ok(self) -> bool:
        """Whether the status is below 400."""
        return self.status < 400

    @property
    def is_streaming(self) -> bool:
        """Whether the body is still to be read from the connection."""
        return self._body is None

    @property
    def body(self) -> bytes:
        """The whole body. For a streaming response, call :meth:`read` first."""
        if self._body is None:
            raise RuntimeError(
                "the body of a streaming response is not read yet: await response.read()"
            )
        return self._body

    async def read(self) -> bytes:
        """Read the whole body (at most ``max_body_bytes``) and return it."""
        if self._body is None:
            chunks = [chunk async for chunk in self.iter_chunks()]
            self._body = b"".join(chunks)
        return self._body

    async def iter_chunks(self, size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """Yield the body in chunks of at most ``size`` bytes as they arrive, under the cap.

        Raises:
            ValueError: ``size`` is not an int of at least 1 (aiohttp reads ``-1``
                as "until the end", which would read the whole body before the
                cap could stop it; ``0`` would end at once with no body).
            BodyTooLargeError: when the body grows past the cap.
            ReadTimeout, ConnectionLostError: when the connection fails mid-body.

        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int of at least 1, got {size!r}")
        if self._body is not None:
            for start in range(0, len(self._body), size):
                yield self._body[start : start + size]
            return
        raw = self._stream
        if raw is None:  # pragma: no cover - a response always has one or the other
            raise RuntimeError("response has no body source")
        received = 0
        try:
            while chunk := await raw.content.read(size):
                received += len(chunk)
                if received > self._limit:
                    raise self._with_attempts(BodyTooLargeError(self._limit, url=self.url))
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            error = map_aiohttp_error(
                exc, url=display_url(self.url), timeouts=(None, self._read_timeout)
            )
            raise self._with_attempts(error) from aiohttp_cause(exc)

    def _with_attempts(self, error: HealkitError) -> HealkitError:
        outcome = self._bound_outcome()
        if outcome is not None:
            error.attempts = outcome.attempts
        return error

    def text(self, encoding: str | None = None) -> str:
        """Decode the body: ``encoding``, else the charset of Content-Type, else UTF-8.

        Bytes that do not decode become U+FFFD. A charset Python does not know,
        or one that cannot decode with replacement (``idna``, ``undefined``, a
        name that is not ASCII), is replaced by UTF-8: the charset is the
        upstream's word, and reading the text never raises.
        """
        charset = encoding or _charset(self.headers.get("Content-Type", "")) or "utf-8"
        if not body_charset(charset):
            charset = "utf-8"
        try:
            return self.body.decode(charset, errors="replace")
        # LookupError: a charset Python does not know. ValueError (UnicodeError among
        # them): a codec that refuses errors="replace", or a name that is not ASCII.
        except (LookupError, ValueError):
            return self.body.decode("utf-8", errors="replace")

    @overload
    def json(self) -> Any: ...  # noqa: ANN401 - untyped JSON is Any
    @overload
    def json(self, type: type[T]) -> T: ...
    def json(self, type: Any = Any) -> Any:  # noqa: A002
        """Decode the body as JSON with msgspec, optionally into ``type``.

        Raises:
            msgspec.DecodeError: the body is not valid JSON.
            msgspec.ValidationError: the JSON does not match ``type``.

        """
        return msgspec.json.decode(self.body, type=type)

    def raise_for_status(self) -> Response:
        """Raise :class:`HTTPStatusError` for a 4xx or 5xx status; return self otherwise."""
        if self.status >= 400:
            excerpt = self._body[:200].decode("utf-8", errors="replace") if self._body else ""
            raise self._with_attempts(
                HTTPStatusError(self.status, url=self.url, body_excerpt=excerpt)
            )
        return self

    def release(self) -> None:
        """Give the connection of a streaming response back (safe to call twice)."""
        raw = self._stream
        if raw is not None:
            self._stream = None
            raw.release()


def _without_outcome(headers: CIMultiDictProxy[str]) -> CIMultiDictProxy[str]:
    """Return ``headers`` without the :data:`OUTCOME_HEADER` an upstream sent."""
    kept = CIMultiDict(headers)
    kept.popall(OUTCOME_HEADER)
    return CIMultiDictProxy(kept)


NOT_BODY_CHARSETS: Final = frozenset({"idna", "punycode", "undefined"})
"""Python codecs (by their name) that no body is written in: host names, one that always fails."""


def body_charset(charset: str) -> bool:
    """Whether an upstream's ``charset`` names a codec a body may be decoded with.

    Not one Python does not know (or a name that is not ASCII), nor one of
    :data:`NOT_BODY_CHARSETS` (which decode some bytes into nonsense, or refuse
    them, depending on the Python version): the body is read as UTF-8 then.
    """
    try:
        return codecs.lookup(charset).name not in NOT_BODY_CHARSETS
    except (LookupError, ValueError):  # ValueError: a name that is not ASCII
        return False


def _charset(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip('"')
    return None
