"""Per-call and per-attempt context, and the decisions hooks hand back.

A :class:`CallContext` lives for one logical call (one HTTP request, or one
invocation of a decorated function); each try of it is an :class:`AttemptContext`.
Hooks read and adjust these objects and return decisions
(:class:`RetryDecision`, :class:`Fallback`); the pipeline carries the decisions out.
Plugins keep their own state in ``stash`` slots, never in globals.
"""

from __future__ import annotations

import math
import ssl
from typing import TYPE_CHECKING, Final, Literal, final

import anyio
from multidict import CIMultiDict

from healkit._config.models import CORE_TIMEOUTS, HealkitConfig, ServicePolicy, Timeouts
from healkit._outcome import AttemptRecord, PathTaken, RedirectRecord
from healkit._stash import Stash

if TYPE_CHECKING:
    from healkit._clock import Clock
    from healkit._errors import HealkitError

__all__ = [
    "AttemptContext",
    "CallContext",
    "Fallback",
    "RetryDecision",
    "TransportKind",
    "scope_deadline_now",
]

TransportKind = Literal["http", "function"]

_NOTHING_WITHHELD: Final[frozenset[str]] = frozenset()
"""Every attempt's ``withheld_headers`` until a router says otherwise (shared: immutable)."""


@final
class CallContext:
    """One logical call, across all of its attempts.

    The constructor takes its arguments by position or by keyword; the ones
    after ``clock`` have defaults (``started``: the clock's now).

    Attributes:
        service: the service the call is for (from ``service=``, the URL, or the
            decorator).
        transport: ``"http"`` or ``"function"``.
        method: the HTTP method, upper case (``"CALL"`` for a decorated function).
        target: the path (with query) requested below the endpoint, or the
            function's qualified name.
        idempotent: whether repeating the call is safe by its method (GET, HEAD,
            OPTIONS, PUT, DELETE, TRACE), an ``Idempotency-Key`` header, or the
            caller's declaration.
        replayable: whether the request body can be sent again (``False`` for
            streamed bodies).
        policy: the service's policy in the configuration snapshot the call
            started with; it does not change during the call.
        config: that whole snapshot.
        clock: the runtime's clock.
        started: monotonic start time of the call.
        deadline: monotonic time by which the call must end (``math.inf`` for
            none): the earliest of ``deadline=`` and the plugins' limits. An
            attempt still running then fails with ``DeadlineExceeded``.
        attempts: the attempts so far, oldest first.
        path: the path taken so far.
        routable: whether an attempt may go to any endpoint of the service
            (``healkit_route``): true for an HTTP call of :class:`healkit.Client`
            addressed by service name; false for an absolute URL, the aiohttp
            middleware and decorated functions.
        attempt_limit: the most attempts the caller allows this call
            (``attempts=``), never above what the policy allows
            (``healkit_max_attempts``), or what the test mode allows
            (``healkit.testing.set_testing(True, attempts=...)``); ``None``:
            the policy decides. A retry plugin proposes no attempt beyond it.
        attempt_timeout: the caller's limit in seconds on each attempt as a
            whole (``attempt_timeout=``), never above the policy's; the executor
            sends each attempt under the lower of it and ``attempt.timeouts.total``.
            ``None``: the policy's limit alone.
        retries_due: retries that ``healkit_on_error`` granted and that wait
            for their backoff beside attempts still in flight (a call with
            concurrent attempts, see ``healkit_hedge_delay``): attempts the
            call will make. Always 0 for a call whose attempts run one after
            another. The next retry granted is attempt number
            ``len(call.attempts) + call.retries_due + 1``: a retry plugin
            counts these towards its limits.

    """

    __slots__ = (
        "_headers",
        "_scope_deadline",
        "_stash",
        "attempt_limit",
        "attempt_timeout",
        "attempts",
        "clock",
        "config",
        "deadline",
        "idempotent",
        "method",
        "path",
        "policy",
        "replayable",
        "retries_due",
        "routable",
        "service",
        "started",
        "target",
        "transport",
    )

    def __init__(  # noqa: PLR0913, PLR0917 - a context is a bag of named facts
        self,
        service: str,
        transport: TransportKind,
        method: str,
        target: str,
        config: HealkitConfig,
        policy: ServicePolicy,
        clock: Clock,
        headers: CIMultiDict[str] | None = None,
        idempotent: bool = False,
        replayable: bool = True,
        started: float | None = None,
        deadline: float = math.inf,
        routable: bool = False,
        scope_deadline: float | None = None,
        attempt_limit: int | None = None,
        attempt_timeout: float | None = None,
    ) -> None:
        # healkit's call paths pass these by position: keywords to a class cost a dict each call.
        self.service = service
        self.routable = routable
        self.transport: TransportKind = transport
        self.method = method
        self.target = target
        self.config = config
        self.policy = policy
        self.clock = clock
        self._headers = headers
        self.idempotent = idempotent
        self.replayable = replayable
        self.started = clock.now() if started is None else started
        self.deadline = deadline
        self._scope_deadline = scope_deadline
        self.attempts: list[AttemptContext] = []
        self.path: PathTaken = "primary"
        self._stash: Stash | None = None
        self.attempt_limit = attempt_limit
        self.attempt_timeout = attempt_timeout
        self.retries_due = 0

    def __repr__(self) -> str:
        """Return ``<CallContext service GET /target path=...>``, the target's secrets redacted.

        A plugin may log it: the query values the configuration's redactor
        hides (tokens, signatures) are hidden here too.
        """
        target = self.config.redactor.url(self.target) if self.transport == "http" else self.target
        return f"<CallContext {self.service} {self.method} {target} path={self.path}>"

    @property
    def headers(self) -> CIMultiDict[str]:
        """The call's request headers (created on first use).

        A plugin may add call-wide headers here (an ``Idempotency-Key``) that
        every attempt then carries.
        """
        if self._headers is None:
            self._headers = CIMultiDict()
        return self._headers

    def headers_if_any(self) -> CIMultiDict[str] | None:
        """Return the request headers, or ``None`` if the call has none (no allocation)."""
        return self._headers

    @property
    def stash(self) -> Stash:
        """Per-call plugin state (created on first use)."""
        if self._stash is None:
            self._stash = Stash()
        return self._stash

    @property
    def scope_deadline(self) -> float:
        """The deadline of the caller's enclosing anyio cancel scope (``math.inf`` for none).

        healkit starts no backoff sleep that would end after it; the scope itself
        cancels what runs past it. Read on first use, from the caller's task:
        read it in hooks (which run there), not from a background task.
        """
        if self._scope_deadline is None:
            self._scope_deadline = scope_deadline_now(self.clock.now())
        return self._scope_deadline

    @property
    def attempt_number(self) -> int:
        """The number of the current (latest) attempt; 0 before the first."""
        return len(self.attempts)

    def remaining(self) -> float:
        """Seconds left before the deadline or the scope's, whichever is first."""
        return min(self.deadline, self.scope_deadline) - self.clock.now()

    def limit_deadline(self, seconds: float) -> None:
        """Shorten the deadline to ``seconds`` after the call started, if sooner."""
        limit = self.started + seconds
        if limit < self.deadline:  # noqa: PLR1730 - a comparison is cheaper than min() here
            self.deadline = limit

    def records(self) -> tuple[AttemptRecord, ...]:
        """Return the attempt records so far."""
        attempts = self.attempts
        if len(attempts) == 1:  # most calls: no generator or list to build
            return (attempts[0].record(),)
        return tuple([a.record() for a in attempts])


def scope_deadline_now(clock_now: float) -> float:
    """Return the enclosing anyio cancel scope's deadline on the clock's time base.

    ``math.inf`` when no enclosing scope has a deadline. Call it from the task
    whose scopes count.
    """
    effective = anyio.current_effective_deadline()
    if effective == math.inf:
        return math.inf
    return clock_now + (effective - anyio.current_time())


@final
class AttemptContext:
    """One try of a call.

    ``pre_request`` hooks may change ``endpoint``, ``timeouts``, ``headers``
    and ``ssl`` before the attempt is sent; afterwards ``status``, ``error``
    and ``duration`` tell how it ended.

    Attributes:
        number: 1 for the first attempt.
        endpoint: the base URL this attempt goes to (``None`` for a decorated
            function).
        timeouts: this attempt's limits; the pipeline also caps them by the
            call's remaining deadline.
        headers: headers added to this attempt only (``traceparent``).
        withheld_headers: names (lower case) of the call's headers not sent with
            this attempt: the credentials a router keeps from an endpoint of
            another origin.
        ssl: the TLS context for this attempt's connection (set by a TLS
            plugin); ``None`` leaves aiohttp's default (the system's CA
            bundle, hostname verification on). An ``ssl=`` option the caller
            passes with the request wins over it.
        started: monotonic time the attempt started.
        status: the HTTP status received, if any.
        error: the error the attempt ended with, if any.
        duration: seconds the attempt took, once ended.
        retry_delay: the backoff delay slept before this attempt (0 for the first).
        redirects: the redirects this attempt followed so far (set by the
            transport, one record per hop that answered with a redirect).
        hedge: whether this attempt is a hedge, sent while an earlier attempt
            of the call is still in flight (see ``healkit_hedge_delay``).
        cancelled: whether healkit cancelled this attempt because another one
            answered first (``healkit_attempt_cancelled``).
        in_flight: whether the attempt was launched and has not ended yet:
            what a router reads to send a hedge elsewhere.

    """

    __slots__ = (
        "_stash",
        "cancelled",
        "duration",
        "endpoint",
        "error",
        "headers",
        "hedge",
        "number",
        "redirects",
        "retry_delay",
        "ssl",
        "started",
        "status",
        "timeouts",
        "withheld_headers",
    )

    def __init__(
        self,
        number: int,
        endpoint: str | None,
        started: float,
        timeouts: Timeouts = CORE_TIMEOUTS,
        retry_delay: float = 0.0,
    ) -> None:
        self.number = number
        self.endpoint = endpoint
        self.timeouts = timeouts
        self.headers: dict[str, str] = {}
        self.started = started
        self.status: int | None = None
        self.error: HealkitError | None = None
        self.duration: float | None = None
        self.retry_delay = retry_delay
        self.ssl: ssl.SSLContext | None = None
        self.withheld_headers: frozenset[str] = _NOTHING_WITHHELD
        self.redirects: tuple[RedirectRecord, ...] = ()
        self.hedge = False
        self.cancelled = False
        self._stash: Stash | None = None

    def __repr__(self) -> str:
        return f"<AttemptContext #{self.number} {self.endpoint}>"

    @property
    def in_flight(self) -> bool:
        """Whether the attempt was launched and has not ended yet."""
        return self.duration is None and self.error is None

    @property
    def stash(self) -> Stash:
        """Per-attempt plugin state (created on first use)."""
        if self._stash is None:
            self._stash = Stash()
        return self._stash

    def record(self) -> AttemptRecord:
        """Return the frozen record of this attempt."""
        error = self.error
        return AttemptRecord(
            number=self.number,
            endpoint=self.endpoint,
            started=self.started,
            duration=self.duration if self.duration is not None else 0.0,
            status=self.status,
            error=type(error).__name__ if error is not None else None,
            reason=error.message if error is not None else None,
            redirects=self.redirects,
            hedge=self.hedge,
            cancelled=self.cancelled,
        )


@final
class RetryDecision:
    """What an ``on_error`` hook proposes after a failed attempt.

    Build one with :meth:`again` or :meth:`stop`. The first decision returned
    (in hook order) is the one carried out.

    Attributes:
        retry: whether to make another attempt.
        delay: seconds to wait before it (the pipeline never waits past the deadline).
        endpoint: the endpoint the next attempt should use, or ``None`` for the
            pipeline's choice.
        reason: why; a stop reason ends up in the error message.

    """

    __slots__ = ("delay", "endpoint", "reason", "retry")

    def __init__(self, retry: bool, delay: float, endpoint: str | None, reason: str) -> None:
        if not 0.0 <= delay < math.inf:  # NaN fails the comparison too
            raise ValueError(f"retry delay must be finite and >= 0, got {delay!r}")
        self.retry = retry
        self.delay = delay
        self.endpoint = endpoint
        self.reason = reason

    def __repr__(self) -> str:
        if self.retry:
            return f"RetryDecision.again({self.delay!r}, endpoint={self.endpoint!r})"
        return f"RetryDecision.stop({self.reason!r})"

    @classmethod
    def again(
        cls, delay: float = 0.0, *, endpoint: str | None = None, reason: str = ""
    ) -> RetryDecision:
        """Propose another attempt after ``delay`` seconds."""
        return cls(True, delay, endpoint, reason)  # noqa: FBT003 - by position, as in CallContext

    @classmethod
    def stop(cls, reason: str) -> RetryDecision:
        """Refuse further attempts, saying why (e.g. ``"retry budget exhausted"``)."""
        return cls(False, 0.0, None, reason)  # noqa: FBT003 - by position, as in CallContext


@final
class Fallback:
    """A substitute result returned by a ``fallback`` hook.

    Attributes:
        value: for HTTP calls a :class:`healkit.Response`; for decorated
            functions a value of the function's return type.
        path: ``"fallback"`` (another source answered) or ``"degraded"`` (a
            degraded response built locally).
        endpoint: the endpoint that answered, if any.

    """

    __slots__ = ("endpoint", "path", "value")

    def __init__(
        self,
        value: object,
        *,
        path: Literal["fallback", "degraded"] = "fallback",
        endpoint: str | None = None,
    ) -> None:
        self.value = value
        self.path: Literal["fallback", "degraded"] = path
        self.endpoint = endpoint

    def __repr__(self) -> str:
        return f"Fallback({self.value!r}, path={self.path!r})"
