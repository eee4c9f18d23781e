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
from healkit._errors import AttemptTimeout, DeadlineExceeded, HealkitError, PluginError
from healkit._outcome import Outcome
from healkit._timer import TimerWheels

if TYPE_CHECKING:
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
    clock = call.clock
    stop_reason: str | None = None
    delay = 0.0
    started = call.started
    try:
        while True:
            attempt = AttemptContext(
                len(call.attempts) + 1, endpoint, started=started, retry_delay=delay
            )
            call.attempts.append(attempt)
            try:
                if plan.has_route and call.routable:
                    chosen = plan.route(call, attempt)
                    if chosen is not None:
                        attempt.endpoint = chosen
                if plan.has_pre_request:
                    plan.pre_request(call, attempt)
                result, response = await _send(runtime.timers, call, attempt, transport)
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
            _log.attempt_failed(call, attempt, error)
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
            if delay > 0:
                await clock.sleep(delay)
            call.path = "retry"
            endpoint = decision.endpoint or attempt.endpoint
            started = clock.now()
        return await _failed(runtime, call, transport, error, stop_reason)
    except Passthrough as passing:
        if plan.has_call_abandoned:
            plan.call_abandoned(call, passing.error)
        raise passing.error from passing.error.__cause__
    except PluginError as crash:
        crash.attempts = call.records()
        _log.call_failed(call, crash, None)
        if plan.has_call_end:
            plan.call_end(call, _Ending(call, None, clock.now())(), crash)
        raise
    except HealkitError:
        raise  # the call's own error: healkit_call_end saw it
    except BaseException as abandoned:  # cancelled (or interrupted): no result, no healkit error
        if plan.has_call_abandoned:
            plan.call_abandoned(call, abandoned)
        raise


async def _send(
    timers: TimerWheels, call: CallContext, attempt: AttemptContext, transport: Transport[R]
) -> tuple[R, Response | None]:
    """Send one attempt under min(attempt total, time left before the deadline).

    An enclosing cancel scope is not turned into a healkit error here: when it
    expires it cancels the attempt, as the caller asked.
    """
    remaining = call.deadline - attempt.started
    if remaining <= 0:
        raise DeadlineExceeded("the call's deadline passed before the attempt started", limit=0.0)
    total = attempt.timeouts.total
    by_deadline = remaining < total
    limit = remaining if by_deadline else total
    timer = timers.arm(limit)
    try:
        return await transport.send(call, attempt)
    except asyncio.CancelledError as exc:
        if not timer.expired():
            raise
        if by_deadline:
            raise DeadlineExceeded(
                f"the call's deadline passed during attempt {attempt.number}", limit=limit
            ) from exc
        raise AttemptTimeout(
            f"attempt {attempt.number} took longer than {total}s", limit=total
        ) from exc
    finally:
        timer.disarm()


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


async def _failed(
    runtime: Runtime,
    call: CallContext,
    transport: Transport[R],
    error: HealkitError,
    stop_reason: str | None,
) -> R:
    """End a call that failed for good: use a fallback, else raise the typed error."""
    fallback = await runtime.plan.fallback(call, error)
    if fallback is not None:
        result = transport.accept(fallback)
        if result is not None:
            call.path = fallback.path
            _log.substitute_used(call, error)
            outcome = _Ending(call, fallback.endpoint, call.clock.now())
            if runtime.plan.has_call_end:
                runtime.plan.call_end(call, outcome(), None)
            return transport.finish(result, outcome)
    if stop_reason is not None:
        error.message = f"{error.message} (not retried: {stop_reason})"
    error.attempts = call.records()
    _log.call_failed(call, error, stop_reason)
    if runtime.plan.has_call_end:
        runtime.plan.call_end(call, _Ending(call, None, call.clock.now())(), error)
    raise error
