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
from healkit._context import AttemptContext, CallContext, Fallback, RetryDecision
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
    from healkit._config.models import Timeouts
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


async def execute(  # noqa: C901, PLR0912, PLR0915 - the attempt loop and its three awaits
    runtime: Runtime, call: CallContext, transport: Transport[R], endpoint: str | None
) -> R:
    """Run ``call`` to its end: a result (real, fallback or degraded) or a HealkitError.

    ``CancelledError`` always propagates at once; it is never retried. A
    :class:`PluginError` (a decision plugin crashed) fails the call at once. An
    exception a transport wraps in :class:`Passthrough` leaves unchanged.
    """
    # The loop and its awaits stay in this frame, as pluggy's _multicall keeps its
    # loop; each synchronous step of an attempt is a function of its own below.
    plan = runtime._plan  # noqa: SLF001 - the runtime's own executor
    clock = call.clock
    timeouts = _call_limits(runtime, call)
    deadline_header = call.policy.deadline_header if call.transport == "http" else None
    started = call.started
    delay = 0.0
    try:
        while True:
            attempt = AttemptContext(len(call.attempts) + 1, endpoint, started, timeouts, delay)
            call.attempts.append(attempt)
            try:
                error = _admitted(plan, call, attempt)
                if error is None and plan.has_admit:
                    error = await plan.admit(call, attempt)
                    if error is None:
                        attempt.started = clock.now()  # a wait for room is not the attempt's time
                        error = _too_late(call, attempt)
                if error is None:
                    if deadline_header is not None:
                        stamp_remaining(call, attempt, deadline_header)
                    timer = runtime._timers.arm(_time_limit(call, attempt))  # noqa: SLF001
                    try:
                        result, response = await transport.send(call, attempt)
                    except asyncio.CancelledError as exc:
                        if not timer.expired():
                            raise  # not our limit: the caller (or its cancel scope) cancelled
                        raise _timed_out(call, attempt) from exc
                    finally:
                        timer.disarm()
                    ended = clock.now()
                    error = _judged(plan, call, attempt, transport, result, response, ended)
                    if error is None:
                        return _succeeded(plan, call, attempt, transport, result, ended)
            except PluginError:
                raise
            except HealkitError as failure:
                error = failure
            decision = _next_step(runtime, plan, call, attempt, error)
            if decision is None or not decision.retry:
                break
            delay = decision.delay
            if delay > 0 and not TEST_MODE.on:  # the test mode carries retries out at once
                await clock.sleep(delay)
            call.path = "retry"
            endpoint = decision.endpoint or attempt.endpoint
            started = clock.now()
        # The plan in force now: a backoff may have changed it.
        current = runtime._plan  # noqa: SLF001
        if current.has_fallback:
            offered = await current.fallback(call, error)
            substitute = _substitute(current, call, transport, offered, error)
            if substitute is not None:
                return substitute
        # Raised here, not in _failed: one frame less in the traceback.
        raise _failed(current, runtime.repeats, call, error, decision)  # noqa: TRY301
    except Passthrough as passing:
        _abandoned(plan, call, passing.error)
        raise passing.error from passing.error.__cause__
    except PluginError as crash:
        _crashed(plan, runtime.repeats, call, crash)
        raise
    except HealkitError:
        raise  # the call's own error: healkit_call_end saw it
    except BaseException as abandoned:  # cancelled (or interrupted): no result, no healkit error
        _abandoned(plan, call, abandoned)
        raise


def _call_limits(runtime: Runtime, call: CallContext) -> Timeouts:
    """Apply the service's call deadline, an inbound deadline and the test mode to ``call``.

    Returns the call's attempt limits.

    Both limits are plugin answers (``healkit_attempt_timeouts``,
    ``healkit_call_deadline``), asked once per service and snapshot and kept
    in ``policy.call_limits``.
    """
    timeouts, within = call.policy.call_limits or runtime.call_limits(call.policy)
    call.limit_deadline(within)
    # The scope of healkit.deadlines.deadline_from (an inbound deadline), if any.
    call.deadline = min(call.deadline, INBOUND_DEADLINE.get())
    if TEST_MODE.on and TEST_MODE.attempts is not None:
        allowed = TEST_MODE.attempts
        if call.attempt_limit is None or allowed < call.attempt_limit:
            call.attempt_limit = allowed
    return timeouts


def _admitted(plan: CallPlan, call: CallContext, attempt: AttemptContext) -> HealkitError | None:
    """Route the attempt and run ``healkit_pre_request``; return what refuses it, if anything.

    A refusal is returned, not raised (a plugin that raises one: it
    propagates). An attempt that would start at or after the call's deadline
    is refused with :class:`DeadlineExceeded`.
    """
    if plan.has_route and call.routable:
        chosen = plan.route(call, attempt)
        if chosen is not None:
            attempt.endpoint = chosen
    if plan.has_pre_request:
        refusal = plan.pre_request(call, attempt)
        if refusal is not None:
            return refusal
    return _too_late(call, attempt)


def _too_late(call: CallContext, attempt: AttemptContext) -> DeadlineExceeded | None:
    """Return the refusal of an attempt that would start at or after the call's deadline."""
    if call.deadline <= attempt.started:
        return DeadlineExceeded("the call's deadline passed before the attempt started", limit=0.0)
    return None


def _attempt_total(call: CallContext, attempt: AttemptContext) -> float:
    """Return the attempt's own limit: its ``timeouts.total``, lowered by ``attempt_timeout=``."""
    total = attempt.timeouts.total
    if call.attempt_timeout is not None and call.attempt_timeout < total:
        return call.attempt_timeout
    return total


def _time_limit(call: CallContext, attempt: AttemptContext) -> float:
    """Return how long the attempt may run: its own limit, or less if the deadline is nearer.

    An enclosing cancel scope is not one of them: when it expires it cancels
    the attempt, as the caller asked, and that is not a healkit error.
    """
    remaining = call.deadline - attempt.started
    total = _attempt_total(call, attempt)
    return remaining if remaining < total else total  # noqa: FURB136 - min() costs a call


def _timed_out(call: CallContext, attempt: AttemptContext) -> TimeoutExceeded:
    """Return the error of an attempt that its time limit (:func:`_time_limit`) cancelled."""
    remaining = call.deadline - attempt.started
    total = _attempt_total(call, attempt)
    if remaining < total:
        return DeadlineExceeded(
            f"the call's deadline passed during attempt {attempt.number}", limit=remaining
        )
    return AttemptTimeout(f"attempt {attempt.number} took longer than {total}s", limit=total)


def _judged(  # noqa: PLR0913, PLR0917 - a step of execute, given its locals
    plan: CallPlan,
    call: CallContext,
    attempt: AttemptContext,
    transport: Transport[R],
    result: R,
    response: Response | None,
    ended: float,
) -> HealkitError | None:
    """Record how the sent attempt ended; return the failure ``healkit_post_response`` declared.

    A result declared a failure (or whose judging crashed a plugin) is
    released through the transport.
    """
    attempt.duration = ended - attempt.started
    if response is not None:
        attempt.status = response.status
    if not plan.has_post_response:
        return None
    try:
        error = plan.post_response(call, attempt, response)
    except PluginError:
        transport.discard(result)
        raise
    if error is not None:
        transport.discard(result)
    return error


def _succeeded(  # noqa: PLR0913, PLR0917 - a step of execute, given its locals
    plan: CallPlan,
    call: CallContext,
    attempt: AttemptContext,
    transport: Transport[R],
    result: R,
    ended: float,
) -> R:
    """End the call with the attempt's result: run ``healkit_call_end``, attach the outcome."""
    outcome = _Ending(call, attempt.endpoint, ended)
    if call.path == "fallback":  # a fallback endpoint answered: say so
        marked = transport.accept(Fallback(result, endpoint=attempt.endpoint))
        if marked is not None:
            result = marked
    if plan.has_call_end:
        plan.call_end(call, outcome(), None)
    return transport.finish(result, outcome)


def _next_step(
    runtime: Runtime,
    plan: CallPlan,
    call: CallContext,
    attempt: AttemptContext,
    error: HealkitError,
) -> RetryDecision | None:
    """Record the attempt's failure and return what ``healkit_on_error`` decided.

    ``None``: no plugin decided. A retry that could not start before the
    call's deadline (or its cancel scope's) becomes a stop that says so.
    """
    attempt.error = error
    now = call.clock.now()
    if attempt.duration is None:  # set already if a response was declared a failure
        attempt.duration = now - attempt.started
    _log.attempt_failed(runtime.repeats, call, attempt, error)
    decision = plan.on_error(call, attempt, error)
    if decision is None or not decision.retry:
        return decision
    if now + decision.delay >= min(call.deadline, call.scope_deadline):
        return RetryDecision.stop(DEADLINE_STOP)
    _log.retry_scheduled(call, attempt, decision.delay)
    return decision


def _abandoned(plan: CallPlan, call: CallContext, reason: BaseException) -> None:
    """Run ``healkit_call_abandoned``: the call ends with ``reason``, neither result nor error."""
    if plan.has_call_abandoned:
        plan.call_abandoned(call, reason)


def _crashed(plan: CallPlan, repeats: _log.Repeats, call: CallContext, crash: PluginError) -> None:
    """Put the attempt records on the ``PluginError`` that fails the call; log and end it."""
    crash.attempts = call.records()
    _log.call_failed(repeats, call, crash, None)
    if plan.has_call_end:
        plan.call_end(call, _Ending(call, None, call.clock.now())(), crash)


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
    fallback: Fallback | None,
    error: HealkitError,
) -> R | None:
    """End a failed call with a fallback's substitute.

    Returns ``None`` if no fallback was offered, or the transport cannot use it.
    """
    if fallback is None:
        return None
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
    decision: RetryDecision | None,
) -> HealkitError:
    """End a call that failed for good: return its typed error, for the caller to raise.

    A stop ``decision`` says why the call was not retried, in the error's message.
    """
    stop_reason = None if decision is None else decision.reason
    if stop_reason is not None:
        error.message = f"{error.message} (not retried: {stop_reason})"
    error.attempts = call.records()
    _log.call_failed(repeats, call, error, stop_reason)
    if plan.has_call_end:
        plan.call_end(call, _Ending(call, None, call.clock.now())(), error)
    return error
