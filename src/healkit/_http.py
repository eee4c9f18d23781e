"""HTTP over aiohttp: the transport of :class:`healkit.Client`.

One attempt = one aiohttp request to ``attempt.endpoint + call.target`` with
the attempt's connect and read timeouts. Buffered calls read the whole body
(under ``max_body_bytes``) before the response is judged, so a truncated or
stalled body is a failed attempt that can be retried; streaming calls are
judged on their head and hand the open response to the caller.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Final, final

import aiohttp
import yarl
from multidict import CIMultiDict

from healkit._config import CORE_TIMEOUTS, Timeouts
from healkit._context import AttemptContext, CallContext, Fallback
from healkit._errors import (
    BodyTooLargeError,
    ClientClosedError,
    RequestError,
    map_aiohttp_error,
)
from healkit._outcome import Outcome
from healkit._response import CHUNK_SIZE, OUTCOME_HEADER, Response

__all__ = ["HttpTransport", "join_url"]

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


@final
class HttpTransport:
    """Sends the attempts of one HTTP call through an aiohttp session."""

    __slots__ = ("_data", "_options", "_session", "_stream")

    def __init__(
        self,
        session: aiohttp.ClientSession,
        data: Any,  # noqa: ANN401 - whatever aiohttp accepts as a body
        options: Mapping[str, Any],
        stream: bool,  # by position (as all four): keywords to a class cost a dict per call
    ) -> None:
        self._session = session
        self._data = data
        self._options = options
        self._stream = stream

    async def send(
        self, call: CallContext, attempt: AttemptContext
    ) -> tuple[Response, Response | None]:
        """Make one request; map aiohttp's errors; read the body unless streaming."""
        if attempt.endpoint is None:
            raise RequestError(f"no endpoint to send {call.method} {call.target} to")
        _check_open(self._session)
        url = join_url(attempt.endpoint, call.target)
        headers = call.headers_if_any()
        if attempt.withheld_headers and headers:
            withheld = attempt.withheld_headers
            headers = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in withheld)
        if attempt.headers:
            headers = CIMultiDict(headers or ())
            headers.update(attempt.headers)
        limits = attempt.timeouts
        options = self._options
        if attempt.ssl is not None and "ssl" not in options:
            options = {**options, "ssl": attempt.ssl}
        try:
            raw = await self._session.request(
                call.method,
                url,
                headers=headers,
                data=self._data,
                timeout=_client_timeout(limits, self._stream),
                # What aiohttp hands to TraceConfig callbacks (a tracing plugin's):
                # they find the attempt, and its stash, there.
                trace_request_ctx=attempt,
                **options,
            )
            # The URL we built has no userinfo; only a redirect can change it.
            public = _public_url(raw.url) if raw.history else url
            if self._stream:
                response = Response.streaming(
                    raw, url=public, limit=call.policy.max_body_bytes, read_timeout=limits.read
                )
                return response, response
            try:
                attempt.status = raw.status  # known even if reading the body fails
                if call.method == "HEAD":
                    body = b""
                else:
                    limit = call.policy.max_body_bytes
                    length = raw.content_length
                    if length is None:  # no declared length: read in chunks, under the cap
                        body = await _read_capped(raw, limit, public)
                    elif length > limit:
                        raise BodyTooLargeError(limit, url=public)
                    else:  # the common case, without a coroutine of its own
                        body = await raw.read()
            finally:
                raw.release()
        except (aiohttp.ClientError, OSError) as exc:
            redacted = call.config.redactor.url(url)
            raise map_aiohttp_error(
                exc, url=redacted, timeouts=(limits.connect, limits.read)
            ) from exc
        response = Response._received(raw, body, public)  # noqa: SLF001 - see _received
        return response, response

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
        result.bind_outcome(outcome)
        return result


def _check_open(session: aiohttp.ClientSession) -> None:
    """Raise ClientClosedError if the client closed its session during the call (a retry)."""
    if session.closed:
        raise ClientClosedError("the client was closed before this attempt")


def join_url(endpoint: str, target: str) -> str:
    """Join an endpoint base URL (no trailing slash) and a target path (with query)."""
    if not target:
        return endpoint
    if target[0] in "?#/":
        return endpoint + target
    return f"{endpoint}/{target}"


def _client_timeout(limits: Timeouts, stream: bool) -> aiohttp.ClientTimeout:
    """Return aiohttp's limits for an attempt with ``limits`` (memoized per Timeouts object).

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
    global _memo  # noqa: PLW0603 - a one-entry memo of the hot path
    memo = _memo  # read once: one tuple, so a concurrent update is never seen half done
    if memo[0] is not limits:  # one Timeouts object per policy and snapshot: an identity check
        memo = _memo = (limits, _timeouts_for(limits))
    return memo[1][1] if stream else memo[1][0]


@functools.lru_cache(maxsize=256)
def _timeouts_for(limits: Timeouts) -> tuple[aiohttp.ClientTimeout, aiohttp.ClientTimeout]:
    """Return (buffered, streaming) aiohttp limits for ``limits``."""
    streaming = aiohttp.ClientTimeout(total=None, connect=limits.connect, sock_read=limits.read)
    if limits.read < limits.total:
        return streaming, streaming
    return aiohttp.ClientTimeout(total=None, connect=limits.connect, sock_read=None), streaming


_memo: tuple[Timeouts, tuple[aiohttp.ClientTimeout, aiohttp.ClientTimeout]] = (
    CORE_TIMEOUTS,
    _timeouts_for(CORE_TIMEOUTS),
)


def _public_url(url: yarl.URL) -> str:
    return str(url.with_user(None)) if url.user is not None else str(url)


async def _read_capped(raw: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    """Read a body of unknown length, failing as soon as it grows past ``limit``."""
    buffer = bytearray()
    while chunk := await raw.content.read(CHUNK_SIZE):
        buffer += chunk
        if len(buffer) > limit:
            raise BodyTooLargeError(limit, url=url)
    return bytes(buffer)
