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

from healkit._config import Timeouts
from healkit._context import AttemptContext, CallContext, Fallback
from healkit._errors import BodyTooLargeError, RequestError, map_aiohttp_error
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
        *,
        data: Any,  # noqa: ANN401 - whatever aiohttp accepts as a body
        options: Mapping[str, Any],
        stream: bool,
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
                timeout=_client_timeout(limits),
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
                body = (
                    b""
                    if call.method == "HEAD"
                    else await _read_capped(raw, call.policy.max_body_bytes, public)
                )
            finally:
                raw.release()
        except (aiohttp.ClientError, OSError) as exc:
            redacted = call.config.redactor.url(url)
            raise map_aiohttp_error(
                exc, url=redacted, timeouts=(limits.connect, limits.read)
            ) from exc
        response = Response(
            raw.status, headers=raw.headers, body=body, url=public, reason=raw.reason or ""
        )
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


def join_url(endpoint: str, target: str) -> str:
    """Join an endpoint base URL (no trailing slash) and a target path (with query)."""
    if not target:
        return endpoint
    if target[0] in "?#/":
        return endpoint + target
    return f"{endpoint}/{target}"


@functools.lru_cache(maxsize=256)
def _client_timeout(limits: Timeouts) -> aiohttp.ClientTimeout:
    # total is enforced by the pipeline (it also covers the deadline);
    # connect includes the wait for a pooled connection.
    return aiohttp.ClientTimeout(total=None, connect=limits.connect, sock_read=limits.read)


def _public_url(url: yarl.URL) -> str:
    return str(url.with_user(None)) if url.user is not None else str(url)


async def _read_capped(raw: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    length = raw.content_length
    if length is not None:
        if length > limit:
            raise BodyTooLargeError(limit, url=url)
        return await raw.read()
    buffer = bytearray()
    while chunk := await raw.content.read(CHUNK_SIZE):
        buffer += chunk
        if len(buffer) > limit:
            raise BodyTooLargeError(limit, url=url)
    return bytes(buffer)
