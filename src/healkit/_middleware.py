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
  gets a :class:`healkit.InvalidRequestError`);
* a fallback must be a response aiohttp can return, so substitute responses
  (fallback and degraded bodies) are not used: the call's error is raised;
* the request body is aiohttp's payload, which every attempt sends again: a
  body read as it is sent (a file object, an async iterable, a multipart
  holding one) makes the call not replayable; it is sent at most once. Such a
  body that raises while it is sent is the caller's
  :class:`healkit.InvalidRequestError` (as in ``healkit.Client``) when aiohttp's
  payload holds nothing to close (an async iterable, ``io.BytesIO``); a file
  on disk whose read fails stays the ``ConnectionLostError`` aiohttp reports
  (see :func:`_watch`).

Redirects: aiohttp, not healkit, follows them (``allow_redirects``,
``max_redirects`` of the request), calling the middleware once per hop. The
middleware links a hop to the redirect it returned just before (in the same
task: a request for exactly the ``Location`` of that redirect) and applies
healkit's rules before the hop is sent: the service's ``follow_redirects``
and ``max_redirects``, ``routing.allowed_origins``, and no
``routing.credential_headers`` on a hop to another origin (aiohttp drops
``Authorization``, ``Proxy-Authorization`` and ``Cookie`` itself); a hop
that aiohttp resolved against the decoded path (yarl's URL.join: ``%2F``
becomes ``/``) is refused, and so is a hop that would send again a body read
as it was sent (a 307 or 308 after a streamed upload: aiohttp before 3.14
sends it empty; 3.14 raises ``aiohttp.ClientPayloadError`` before the hop
for an async iterable). A failure of a hop says ``may_have_reached_server``,
and the hops so far are in its attempt history.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextvars import ContextVar
from typing import Final, final

import aiohttp
import yarl

from healkit._config.models import ServicePolicy, url_problem, url_under
from healkit._context import AttemptContext, CallContext, Fallback
from healkit._errors import (
    ClientClosedError,
    InvalidRequestError,
    RedirectRefusedError,
    TooManyRedirects,
    aiohttp_cause,
    invalid_status,
    map_aiohttp_error,
)
from healkit._executor import execute
from healkit._http import (
    IDEMPOTENT_METHODS,
    REDIRECT_STATUSES,
    SentOnce,
    next_method,
    reached,
    redirect_target,
    replayable,
    unless_closed,
)
from healkit._outcome import Outcome, RedirectRecord
from healkit._request_body import WatchedBody, body_failed
from healkit._response import Response
from healkit._routing.settings import redirect_rules
from healkit._runtime import Runtime, current_runtime, default_runtime

__all__ = ["ResilienceMiddleware"]


@final
class _Redirected:
    """A redirect the middleware returned to aiohttp, which aiohttp may follow next."""

    __slots__ = ("hops", "misresolved", "policy", "resends_stream", "source", "target")

    def __init__(  # noqa: PLR0913, PLR0917 - the redirect's facts, by position as the others
        self,
        hops: tuple[RedirectRecord, ...],
        policy: ServicePolicy,
        source: yarl.URL,
        target: yarl.URL,
        location: str,
        resends_stream: bool,
    ) -> None:
        self.hops = hops  # every redirect of the chain so far, this one last
        self.policy = policy  # the policy of the chain's first request: its rules hold
        # Whether the hop would send again a body that was read as it was sent.
        self.resends_stream = resends_stream
        self.source = source
        self.target = target
        # Where aiohttp goes instead of ``target``, if anywhere: it resolves the
        # Location with yarl's URL.join, which decodes the base path as it merges
        # (/files/a%2Fb/c + d gives /files/a/b/d), requoting the Location or not
        # (the session's requote_redirect_url).
        self.misresolved = _joined(source, location) - {target}


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_REDIRECTED: Final = ContextVar[_Redirected | None]("healkit_middleware_redirect", default=None)
"""The redirect the middleware returned last in this task (aiohttp follows it in the same task)."""


@final
class _MiddlewareTransport:
    __slots__ = (
        "_attempt_headers",
        "_handler",
        "_hops",
        "_once",
        "_origin",
        "_request",
        "_watched",
    )

    # Every attempt sends the one aiohttp request the middleware was given, its
    # headers rewritten per attempt: two at once would send each other's.
    concurrent = False

    def __init__(
        self,
        request: aiohttp.ClientRequest,
        handler: aiohttp.ClientHandlerType,
        origin: str,
        hops: tuple[RedirectRecord, ...],
    ) -> None:
        self._request = request
        self._handler = handler
        self._origin = origin
        self._hops = hops
        self._attempt_headers: tuple[str, ...] = ()
        self._once: SentOnce | None = None  # made by the first send of a body read once
        self._watched: WatchedBody | None = None  # the body read once, as sent (see _watch)

    async def send(
        self, call: CallContext, attempt: AttemptContext
    ) -> tuple[aiohttp.ClientResponse, Response | None]:
        request = self._request
        if attempt.endpoint is not None and not attempt.endpoint.startswith(self._origin):
            raise InvalidRequestError(
                "the aiohttp middleware cannot re-route a request; use healkit.Client"
            )
        # call.headers is the request's own header multidict: call-wide plugin
        # headers are already in it. Replace the previous attempt's own headers.
        for name in self._attempt_headers:
            request.headers.popall(name, None)
        self._attempt_headers = tuple(attempt.headers)
        for name, value in attempt.headers.items():
            request.headers[name] = value
        attempt.redirects = self._hops
        # aiohttp's handler asserts that the session is open (an AssertionError):
        # a retry after the application closed the session is refused here.
        session = request.session
        if session.closed:
            raise ClientClosedError(
                f"the aiohttp session was closed before attempt {attempt.number}"
            )
        once = watched = None
        if not call.replayable:
            once = self._once = self._once or SentOnce(request.body)
            once.take(call, attempt)
            watched = self._watched = self._watched or _watch(request)
        try:
            raw = await self._handler(request)
        except (aiohttp.ClientError, OSError) as exc:
            if watched is not None and (failure := watched.failure) is not None:
                raise body_failed(failure, watched.sent) from failure
            url = call.config.redactor.url(request.url)
            error = reached(map_aiohttp_error(exc, url=url, timeouts=(None, None)), attempt)
            if once is not None:
                once.failed(error)
            raise unless_closed(session, error, attempt) from aiohttp_cause(exc)
        if not 100 <= raw.status <= 599:
            raw.release()
            error = invalid_status(raw.status, call.config.redactor.url(request.url))
            raise reached(error, attempt)
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
        if (problem := url_problem(request.url)) is not None:
            # aiohttp would fail in its resolver, outside its own errors (UnicodeError).
            raise InvalidRequestError(f"invalid URL: {problem}")
        if _CONTROL.search(request.url.raw_path_qs):
            # A redirect aiohttp resolved with yarl's URL.join, which decodes the
            # path it merges (%00, %0D%0A): aiohttp would refuse to write it (ValueError).
            raise InvalidRequestError("invalid URL: a control character in its path or query")
        runtime = self._runtime or current_runtime() or default_runtime()
        config = runtime.config
        url = str(request.url)
        origin = str(request.url.origin())
        service = self._service or config.service_for_url(url) or request.url.host or origin
        policy = config.policy(service)
        endpoint = next((e for e in policy.endpoints if url_under(url, e)), origin)
        chain = _hop_of(request)
        hops = () if chain is None else chain.hops
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
            replayable=replayable(request.body),
        )
        transport = _MiddlewareTransport(request, handler, origin, hops)
        response = await execute(runtime, call, transport, endpoint)
        if response.status in REDIRECT_STATUSES:
            location = response.headers.get("Location")
            target = None if location is None else redirect_target(request.url, location)
            if location is not None and target is not None:
                record = RedirectRecord(
                    url=config.redactor.url(request.url),
                    status=response.status,
                    location=config.redactor.url(target),
                    method=next_method(response.status, method),
                )
                first = policy if chain is None else chain.policy
                resends = not call.replayable and record.method == method
                _REDIRECTED.set(
                    _Redirected((*hops, record), first, request.url, target, location, resends)
                )
        return response


def _watch(request: aiohttp.ClientRequest) -> WatchedBody | None:
    """Have aiohttp send ``request``'s body watched, if it holds nothing to close.

    An async iterable or a body in memory (``autoclose``): aiohttp takes the
    new payload as it took the first. Not a file on disk (or a form holding
    one): replacing its payload, aiohttp would warn of the open file (or close
    it, with ``update_body``), so a failure of its reads stays the connection's.
    """
    body = request.body
    # Payload.autoclose is aiohttp 3.12.1's: with 3.12.0 no body is watched.
    if not isinstance(body, aiohttp.Payload) or not getattr(body, "autoclose", False):
        return None
    watched = WatchedBody(body)
    request.update_body_from_data(watched)
    return watched


def _joined(source: yarl.URL, location: str) -> frozenset[yarl.URL]:
    """Return the URLs aiohttp may resolve ``location`` to from ``source`` (yarl's URL.join)."""
    joined: set[yarl.URL] = set()
    for encoded in (False, True):
        try:
            joined.add(source.join(yarl.URL(location, encoded=encoded)).with_fragment(None))
        except ValueError:
            continue
    return frozenset(joined)


def _hop_of(request: aiohttp.ClientRequest) -> _Redirected | None:
    """Return the redirect ``request`` is the hop of, if any, after checking the hop.

    Raises:
        RedirectRefusedError: the chain's service does not follow redirects,
            the hop would send again a body that cannot be replayed, the
            hop's origin is outside its ``routing.allowed_origins``, or
            aiohttp resolved the redirect's relative ``Location`` to another
            URL than RFC 3986 does.
        TooManyRedirects: the hop is one more than its ``max_redirects``.

    """
    chain = _REDIRECTED.get()
    if chain is None:
        return None
    _REDIRECTED.set(None)
    last = chain.hops[-1]
    if chain.target != request.url:
        if request.url in chain.misresolved:
            reason = (
                "aiohttp resolved the relative Location against the decoded path, another"
                f" resource than {last.location} (follow it with healkit.Client, or pass"
                " allow_redirects=False to aiohttp)"
            )
            raise RedirectRefusedError(
                reason, status=last.status, url=last.url, location=last.location
            )
        return None  # a new request: the redirect before was not followed
    policy = chain.policy
    if not policy.follow_redirects:
        reason = "follow_redirects is false (pass allow_redirects=False to aiohttp)"
        raise RedirectRefusedError(reason, status=last.status, url=last.url, location=last.location)
    if len(chain.hops) > policy.max_redirects:
        raise TooManyRedirects(policy.max_redirects, url=last.url)
    if chain.resends_stream:
        reason = (
            "the request body was read as it was sent and cannot be sent again"
            " (pass bytes, or allow_redirects=False to aiohttp)"
        )
        raise RedirectRefusedError(reason, status=last.status, url=last.url, location=last.location)
    rules = redirect_rules(policy)
    if not rules.allows(request.url, yarl.URL(chain.hops[0].url)):
        reason = "its origin is outside routing.allowed_origins"
        raise RedirectRefusedError(reason, status=last.status, url=last.url, location=last.location)
    if request.url.origin() != chain.source.origin():
        for name in [name for name in request.headers if name.lower() in rules.credentials]:
            request.headers.popall(name, None)
    return chain
