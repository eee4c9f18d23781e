"""The executor: runs one call as attempts, carrying out what the hooks decide.

It is transport-agnostic. A :class:`Transport` sends one attempt (an HTTP
request, a call of a decorated function) and knows how to release a result
that was declared a failure and how to accept a fallback value. The executor
owns the rest: attempt contexts, the per-attempt and per-call time limits, the
backoff sleeps a retry decision asks for, fallbacks, the path taken, logging,
and the guarantee that a call ends in exactly one result or one typed error
carrying its attempt history.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Generic, Protocol, TypeVar, final

from healkit import _log
from healkit._context import AttemptContext, CallContext, Fallback
from healkit._errors import (
    AttemptTimeout,
    DeadlineExceeded,
    HealkitError,
    PluginError,
    TimeoutExceeded,
)
from healkit._outcome import Outcome
from healkit._testmode import TEST_MODE
from healkit.deadlines import INBOUND_DEADLINE, stamp_remaining

if TYPE_CHECKING:
    from healkit._plan import CallPlan
    from healkit._response import Response
    from healkit._runtime import Runtime

__all__ = ["Passthrough", "Transport", "execute"]

R = TypeVar("R")

DEADLINE_STOP: Final = "the next attempt could not start before the call's deadline"


class Transport(Protocol, Generic[R]):
    """One way of making an attempt: HTTP over aiohttp, a function call, ..."""

    async def send(self, call: CallContext, attempt: AttemptContext) -> tuple[R, Response | None]:
        """Make the attempt; return the result and, for HTTP, the response to judge.

        Raises:
            HealkitError: the attempt failed (errors are mapped by the transport).

        """
        ...

    def discard(self, result: R) -> None:
        """Release a result that was declared a failure (close a streaming response)."""
        ...

    def accept(self, fallback: Fallback) -> R | None:
        """Turn a fallback's value into a result, or ``None`` if this transport cannot use it."""
        ...

    def finish(self, result: R, outcome: Callable[[], Outcome]) -> R:
        """Attach the outcome (built on first use) to the result and return it."""
        ...


class Passthrough(Exception):  # noqa: N818 - not an error of its own: a carrier
    """Carries an exception of the called code that the pipeline must not handle.

    A decorated function's exception that its policy does not count as a failure
    (a ``ValueError``, or a healkit error from a nested call) must reach the
    caller unchanged and untouched by retry, fallback or attempt bookkeeping.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


async def execute(  # noqa: C901, PLR0912, PLR0915 - the hot loop is kept in one frame on purpose
    runtime: Runtime, call: CallContext, transport: Transport[R], endpoint: str | None
) -> R:
    """Run ``call`` to its end: a result (real, fallback or degraded) or a HealkitError.

    ``CancelledError`` always propagates at once; it is never retried. A
    :class:`PluginError` (a decision plugin crashed) fails the call at once. An
    exception a transport wraps in :class:`Passthrough` leaves unchanged.
    """
    plan = runtime.plan
    timers = runtime.timers
    clock = call.clock
    stop_reason: str | None = None
    delay = 0.0
    started = call.started
    # The service's limits (healkit_attempt_timeouts, healkit_call_deadline), asked
    # once per snapshot and kept with the policy: no hook per call.
    timeouts, within = call.policy.call_limits or runtime.call_limits(call.policy)
    if started + within < call.deadline:  # noqa: PLR1730 - call.limit_deadline(within), inlined
        call.deadline = started + within
    inbound = INBOUND_DEADLINE.get()  # healkit.deadlines.deadline_from's scope, if any
    if inbound < call.deadline:  # noqa: PLR1730 - as above
        call.deadline = inbound
    deadline_header = call.policy.deadline_header if call.transport == "http" else None
    if TEST_MODE.on and TEST_MODE.attempts is not None:
        _limit_attempts(call, TEST_MODE.attempts)
    try:
        while True:
            attempt = AttemptContext._start(  # noqa: SLF001 - by position: see _start
                len(call.attempts) + 1, endpoint, started, timeouts, delay
            )
            call.attempts.append(attempt)
            try:
                if plan.has_route and call.routable:
                    chosen = plan.route(call, attempt)
                    if chosen is not None:
                        attempt.endpoint = chosen
                if plan.has_pre_request:
                    refusal = plan.pre_request(call, attempt)
                    if refusal is not None:
                        raise refusal  # caught below, in this frame: handled as a failed attempt
                if plan.has_admit:
                    refusal = await plan.admit(call, attempt)
                    if refusal is not None:
                        raise refusal
                    attempt.started = clock.now()  # a wait for room is not the attempt's time
                # Sent under min(attempt total, time left before the deadline); inlined
                # (no coroutine of its own) as this runs on every attempt. An enclosing
                # cancel scope is not turned into a healkit error here: when it expires
                # it cancels the attempt, as the caller asked.
                remaining = call.deadline - attempt.started
                if remaining <= 0:
                    raise DeadlineExceeded(
                        "the call's deadline passed before the attempt started", limit=0.0
                    )
                total = attempt.timeouts.total
                if call.attempt_timeout is not None and call.attempt_timeout < total:
                    total = call.attempt_timeout  # the caller's attempt_timeout= lowers it
                by_deadline = remaining < total
                if deadline_header is not None:
                    stamp_remaining(call, attempt, deadline_header)
                timer = timers.arm(remaining if by_deadline else total)
                try:
                    result, response = await transport.send(call, attempt)
                except asyncio.CancelledError as exc:
                    if not timer.expired():
                        raise
                    raise _timed_out(attempt, remaining, total, by_deadline=by_deadline) from exc
                finally:
                    timer.disarm()
                ended = clock.now()
                attempt.duration = ended - attempt.started
                if response is not None:
                    attempt.status = response.status
                error = None
                if plan.has_post_response:
                    try:
                        error = plan.post_response(call, attempt, response)
                    except PluginError:
                        transport.discard(result)
                        raise
                if error is None:
                    outcome = _Ending(call, attempt.endpoint, ended)
                    if call.path == "fallback":  # a fallback endpoint answered: say so
                        marked = transport.accept(Fallback(result, endpoint=attempt.endpoint))
                        result = result if marked is None else marked
                    if plan.has_call_end:
                        plan.call_end(call, outcome(), None)
                    return transport.finish(result, outcome)
                transport.discard(result)
            except PluginError:
                raise
            except HealkitError as failure:
                error = failure
            attempt.error = error
            now = clock.now()
            if attempt.duration is None:  # set already if a response was declared a failure
                attempt.duration = now - attempt.started
            _log.attempt_failed(runtime.repeats, call, attempt, error)
            decision = plan.on_error(call, attempt, error)
            if decision is None:
                break
            if not decision.retry:
                stop_reason = decision.reason
                break
            delay = decision.delay
            if now + delay >= min(call.deadline, call.scope_deadline):
                stop_reason = DEADLINE_STOP
                break
            _log.retry_scheduled(call, attempt, delay)
            if delay > 0 and not TEST_MODE.on:  # the test mode carries retries out at once
                await clock.sleep(delay)
            call.path = "retry"
            endpoint = decision.endpoint or attempt.endpoint
            started = clock.now()
        current = runtime.plan  # the plan in force now: it may have changed during a backoff
        if current.has_fallback:
            fallback = await current.fallback(call, error)
            if fallback is not None:
                substitute = _substitute(current, call, transport, fallback, error)
                if substitute is not None:
                    return substitute
        final = _failed(current, runtime.repeats, call, error, stop_reason)
        raise final  # noqa: TRY301 - here, not in _failed: one frame less in the traceback
    except Passthrough as passing:
        if plan.has_call_abandoned:
            plan.call_abandoned(call, passing.error)
        raise passing.error from passing.error.__cause__
    except PluginError as crash:
        crash.attempts = call.records()
        _log.call_failed(runtime.repeats, call, crash, None)
        if plan.has_call_end:
            plan.call_end(call, _Ending(call, None, clock.now())(), crash)
        raise
    except HealkitError:
        raise  # the call's own error: healkit_call_end saw it
    except BaseException as abandoned:  # cancelled (or interrupted): no result, no healkit error
        if plan.has_call_abandoned:
            plan.call_abandoned(call, abandoned)
        raise


def _limit_attempts(call: CallContext, allowed: int) -> None:
    """Lower ``call.attempt_limit`` to the test mode's ``attempts``."""
    if call.attempt_limit is None or allowed < call.attempt_limit:
        call.attempt_limit = allowed


def _timed_out(
    attempt: AttemptContext, remaining: float, total: float, *, by_deadline: bool
) -> TimeoutExceeded:
    """Return the error of an attempt its time limit cancelled."""
    if by_deadline:
        return DeadlineExceeded(
            f"the call's deadline passed during attempt {attempt.number}", limit=remaining
        )
    return AttemptTimeout(f"attempt {attempt.number} took longer than {total}s", limit=total)


@final
class _Ending:
    """How a call ended, turned into an :class:`Outcome` only when someone asks."""

    __slots__ = ("_built", "call", "ended", "endpoint")

    def __init__(self, call: CallContext, endpoint: str | None, ended: float) -> None:
        self.call = call
        self.endpoint = endpoint
        self.ended = ended
        self._built: Outcome | None = None

    def __call__(self) -> Outcome:
        if self._built is None:
            call = self.call
            self._built = Outcome(
                service=call.service,
                path=call.path,
                attempts=call.records(),
                endpoint=self.endpoint,
                duration=self.ended - call.started,
            )
        return self._built


def _substitute(
    plan: CallPlan,
    call: CallContext,
    transport: Transport[R],
    fallback: Fallback,
    error: HealkitError,
) -> R | None:
    """End a failed call with a fallback's substitute; ``None`` if the transport cannot use it."""
    result = transport.accept(fallback)
    if result is None:
        return None
    call.path = fallback.path
    _log.substitute_used(call, error)
    outcome = _Ending(call, fallback.endpoint, call.clock.now())
    if plan.has_call_end:
        plan.call_end(call, outcome(), None)
    return transport.finish(result, outcome)


def _failed(
    plan: CallPlan,
    repeats: _log.Repeats,
    call: CallContext,
    error: HealkitError,
    stop_reason: str | None,
) -> HealkitError:
    """End a call that failed for good: return its typed error, for the caller to raise."""
    if stop_reason is not None:
        error.message = f"{error.message} (not retried: {stop_reason})"
    error.attempts = call.records()
    _log.call_failed(repeats, call, error, stop_reason)
    if plan.has_call_end:
        plan.call_end(call, _Ending(call, None, call.clock.now())(), error)
    return error
