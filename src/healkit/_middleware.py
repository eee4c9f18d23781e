"""healkit as an aiohttp client middleware, for users who keep their own session.

::

    async with aiohttp.ClientSession(middlewares=[healkit.ResilienceMiddleware()]) as session:
        async with session.get("https://payments.internal/v1/charges") as response:
            ...

Each request (each hop of a redirect too, as aiohttp calls middlewares per
hop) runs through the same pipeline as ``healkit.Client``: the request's URL
is mapped to a service by its endpoints, ``pre_request`` hooks add headers or
refuse the attempt, ``post_response`` hooks judge the response head,
``on_error`` hooks decide retries, and the attempt's total time and the call's
deadline are enforced. What differs, because aiohttp owns the request:

* the connect and read limits are the session's (``ClientSession(timeout=...)``),
  not the policy's; healkit still bounds each attempt and the whole call;
* an attempt cannot be re-routed to another endpoint (a plugin that tries
  gets a :class:`healkit.RequestError`);
* a fallback must be a response aiohttp can return, so substitute responses
  (fallback and degraded bodies) are not used: the call's error is raised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import final

import aiohttp

from healkit._config import url_under
from healkit._context import AttemptContext, CallContext, Fallback
from healkit._errors import RequestError, map_aiohttp_error
from healkit._http import IDEMPOTENT_METHODS
from healkit._outcome import Outcome
from healkit._pipeline import execute
from healkit._response import Response
from healkit._runtime import Runtime, current_runtime, default_runtime

__all__ = ["ResilienceMiddleware"]


@final
class _MiddlewareTransport:
    __slots__ = ("_attempt_headers", "_handler", "_origin", "_request")

    def __init__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType, origin: str
    ) -> None:
        self._request = request
        self._handler = handler
        self._origin = origin
        self._attempt_headers: tuple[str, ...] = ()

    async def send(
        self, call: CallContext, attempt: AttemptContext
    ) -> tuple[aiohttp.ClientResponse, Response | None]:
        request = self._request
        if attempt.endpoint is not None and not attempt.endpoint.startswith(self._origin):
            raise RequestError(
                "the aiohttp middleware cannot re-route a request; use healkit.Client"
            )
        # call.headers is the request's own header multidict: call-wide plugin
        # headers are already in it. Replace the previous attempt's own headers.
        for name in self._attempt_headers:
            request.headers.popall(name, None)
        self._attempt_headers = tuple(attempt.headers)
        for name, value in attempt.headers.items():
            request.headers[name] = value
        try:
            raw = await self._handler(request)
        except (aiohttp.ClientError, OSError) as exc:
            url = call.config.redactor.url(request.url)
            raise map_aiohttp_error(exc, url=url, timeouts=(None, None)) from exc
        url = str(raw.url.with_user(None))
        # The body is read by the caller through aiohttp: neither the body cap
        # nor healkit's read limit apply to it (the session's do).
        response = Response.streaming(
            raw, url=url, limit=call.policy.max_body_bytes, read_timeout=None
        )
        return raw, response

    def discard(self, result: aiohttp.ClientResponse) -> None:
        result.release()

    def accept(self, fallback: Fallback) -> aiohttp.ClientResponse | None:
        del fallback
        return None

    def finish(
        self, result: aiohttp.ClientResponse, outcome: Callable[[], Outcome]
    ) -> aiohttp.ClientResponse:
        del outcome
        return result


@final
class ResilienceMiddleware:
    """An aiohttp client middleware running healkit's pipeline on each request.

    Args:
        runtime: the runtime to use; by default the one of an enclosing
            ``async with healkit.Client()``, else :func:`healkit.default_runtime`.
        service: the service whose policy applies to every request of the
            session; by default each request's URL is mapped to a service by
            its endpoints.

    """

    __slots__ = ("_runtime", "_service")

    def __init__(self, runtime: Runtime | None = None, *, service: str | None = None) -> None:
        self._runtime = runtime
        self._service = service

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """Run the request through the pipeline."""
        runtime = self._runtime or current_runtime() or default_runtime()
        config = runtime.config
        url = str(request.url)
        origin = str(request.url.origin())
        service = self._service or config.service_for_url(url) or request.url.host or origin
        policy = config.policy(service)
        endpoint = next((e for e in policy.endpoints if url_under(url, e)), origin)
        clock = runtime.clock
        method = request.method.upper()
        call = CallContext(
            service=service,
            transport="http",
            method=method,
            target=url[len(endpoint) :],
            config=config,
            policy=policy,
            clock=clock,
            headers=request.headers,
            idempotent=method in IDEMPOTENT_METHODS or "Idempotency-Key" in request.headers,
        )
        return await execute(
            runtime, call, _MiddlewareTransport(request, handler, origin), endpoint
        )
