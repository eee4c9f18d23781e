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
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar, final

from healkit import _log
from healkit._context import AttemptContext, CallContext, Fallback, RetryDecision
from healkit._errors import (
    AttemptTimeout,
    DeadlineExceeded,
    HealkitError,
    PluginError,
    TimeoutExceeded,
)
from healkit._outcome import Outcome, PathTaken
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
    """One way of making an attempt: HTTP over aiohttp, a function call, ...

    Attributes:
        concurrent: whether two attempts of one call may be in flight at once
            (hedging). ``False`` for a transport whose attempts share one
            mutable request (the aiohttp middleware's): its calls are never
            raced, whatever ``healkit_hedge_delay`` says.

    """

    concurrent: bool

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


async def execute(  # noqa: C901, PLR0912 - the attempt loop and its awaits
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
            error = _admitted(plan, call, attempt)
            if error is None:
                if (
                    plan.has_hedge_delay
                    and transport.concurrent
                    and (after := plan.hedge_delay(call, attempt)) is not None
                ):
                    race = _Race(runtime, plan, call, transport, deadline_header, timeouts)
                    lost = await race.run(attempt, after)
                    if not isinstance(lost, _Lost):
                        return lost
                    error, decision = lost.error, lost.decision
                    break
                sent = await _attempt(runtime, plan, call, attempt, transport, deadline_header)
                if not isinstance(sent, HealkitError):
                    return _succeeded(plan, call, attempt, transport, sent[0], sent[1])
                error = sent
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
            offered = await _fallback(current, call, error)
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


async def _attempt(  # noqa: PLR0913, PLR0917 - a step of execute, given its locals
    runtime: Runtime,
    plan: CallPlan,
    call: CallContext,
    attempt: AttemptContext,
    transport: Transport[R],
    deadline_header: str | None,
) -> tuple[R, float] | HealkitError:
    """Admit, send and judge an attempt ``healkit_pre_request`` let through (:func:`_admitted`).

    Returns its result and end time, or the error it ended with (a refusal of
    ``healkit_admit`` included). ``CancelledError`` (unless the attempt's own
    time limit fired), :class:`PluginError` and :class:`Passthrough` propagate.
    """
    try:
        if plan.has_admit:
            error = await plan.admit(call, attempt)
            if error is None:
                attempt.started = call.clock.now()  # a wait for room is not the attempt's time
                error = _too_late(call, attempt)
            if error is not None:
                return error
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
        ended = call.clock.now()
        error = _judged(plan, call, attempt, transport, result, response, ended)
    except PluginError:
        raise
    except HealkitError as failure:
        return failure
    if error is not None:
        return error
    return result, ended


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

    A refusal a plugin returns or raises is returned (a :class:`PluginError`
    propagates). An attempt that would start at or after the call's deadline
    is refused with :class:`DeadlineExceeded`.
    """
    if plan.has_route and call.routable:
        chosen = plan.route(call, attempt)
        if chosen is not None:
            attempt.endpoint = chosen
    if plan.has_pre_request:
        try:
            refusal = plan.pre_request(call, attempt)
        except PluginError:
            raise
        except HealkitError as raised:
            return raised
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
    outcome = _Ending(call, attempt.endpoint, ended, attempt.number)
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

    __slots__ = ("_built", "call", "ended", "endpoint", "winner")

    def __init__(
        self, call: CallContext, endpoint: str | None, ended: float, winner: int | None = None
    ) -> None:
        self.call = call
        self.endpoint = endpoint
        self.ended = ended
        self.winner = winner
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
                winner=self.winner,
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


async def _fallback(plan: CallPlan, call: CallContext, error: HealkitError) -> Fallback | None:
    """Run ``healkit_fallback`` within the time the call has left before its deadline.

    A fallback that answers without waiting (a degraded template) always
    answers; one whose awaitable is still pending when the deadline passes
    (a cache that does not answer) is cancelled, no later implementation is
    asked, and ``error``'s message says so: the call ends by its deadline.
    """
    remaining = call.deadline - call.clock.now()
    if remaining == math.inf:
        return await plan.fallback(call, error)
    try:
        async with asyncio.timeout(max(remaining, 0.0)):
            return await plan.fallback(call, error)
    except TimeoutError:
        error.message = f"{error.message} (the fallback was cut short by the call's deadline)"
        error.args = (error.message,)
        return None


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


@final
class _Lost:
    """How a race of concurrent attempts ended without an answer: its last failure."""

    __slots__ = ("decision", "error")

    def __init__(self, error: HealkitError, decision: RetryDecision | None) -> None:
        self.error = error
        self.decision = decision


@final
class _Due:
    """A retry granted in a race, waiting for its backoff (``timer``) to pass."""

    __slots__ = ("at", "decision", "failed", "timer")

    def __init__(
        self,
        at: float,
        timer: asyncio.Future[None],
        failed: AttemptContext,
        decision: RetryDecision,
    ) -> None:
        self.at = at
        self.timer = timer
        self.failed = failed
        self.decision = decision


@final
class _Race(Generic[R]):
    """A call's attempts run concurrently: the first answer wins, the others are cancelled.

    The executor hands a call over to a race when ``healkit_hedge_delay``
    gives a delay for one of its attempts. Each attempt is then prepared as
    one after another is (:func:`_admitted`: routing, ``pre_request``) and
    run in a task of its own (:func:`_attempt`: admission, its own time
    limit, ``post_response``). A
    hedge is launched when the delay passes with the attempt it follows
    still in flight and ``healkit_hedge`` does not decline; a failed attempt
    goes to ``healkit_on_error`` as usual, and every retry it is granted is
    launched after its own backoff beside the attempts still in flight (the
    retries granted and not launched yet are ``call.retries_due``, which
    retry plugins count towards their limits). The first attempt whose
    result no plugin declared a failure wins; the attempts still in flight
    are cancelled, awaited (their connections are released) and reported
    with ``healkit_attempt_cancelled``, and the retries still due are
    dropped unsent.

    What ends in one turn of the event loop is taken in one order, whatever
    the scheduler did: an answer first (the first answer cancels the other
    attempts at once; of two that came anyway, the earlier attempt's), then
    the failures in launch order, then the retries due (in the order of their
    end of backoff), then the hedge; a hedge due as a retry starts follows
    the retry.

    Every attempt starts from the call's limits (``timeouts``), as one after
    another does, whatever a plugin set on the attempt before it; hedges
    count towards the caller's ``attempts=`` (``call.attempt_limit``).
    """

    __slots__ = (
        "_call",
        "_deadline_header",
        "_dropped",
        "_due",
        "_hedge_after",
        "_hedge_timer",
        "_hedging",
        "_lost",
        "_paths",
        "_plan",
        "_running",
        "_runtime",
        "_timeouts",
        "_transport",
    )

    def __init__(  # noqa: PLR0913, PLR0917 - the race's part of execute's locals
        self,
        runtime: Runtime,
        plan: CallPlan,
        call: CallContext,
        transport: Transport[R],
        deadline_header: str | None,
        timeouts: Timeouts,
    ) -> None:
        self._runtime = runtime
        self._timeouts = timeouts
        self._plan = plan
        self._call = call
        self._transport = transport
        self._deadline_header = deadline_header
        self._running: dict[asyncio.Task[tuple[R, float] | HealkitError], AttemptContext] = {}
        self._hedging = True
        self._hedge_after: AttemptContext | None = None
        self._hedge_timer: asyncio.Future[None] | None = None
        # The retries granted and not launched yet, in the order of their end of backoff.
        self._due: list[_Due] = []
        self._dropped: list[asyncio.Future[None]] = []
        self._lost: _Lost | None = None
        # The call's path when each attempt was routed: the call's path if it wins.
        self._paths: dict[int, PathTaken] = {}

    async def run(self, first: AttemptContext, after: float) -> R | _Lost:
        """Race from ``first`` to the call's answer or last failure.

        ``first`` is in ``call.attempts`` and ``healkit_pre_request`` let it
        through; ``after`` is its hedge delay.
        """
        call = self._call
        # Read in the caller's task: an attempt's task is outside the caller's cancel scopes.
        _ = call.scope_deadline
        self._paths[first.number] = call.path
        self._launch(first, after)
        try:
            while self._running or self._due:
                waiting: set[asyncio.Future[Any]] = set(self._running)
                waiting.update(due.timer for due in self._due)
                if self._hedge_timer is not None:
                    waiting.add(self._hedge_timer)
                done, _pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                ended = [task for task in self._running if task in done]  # in launch order
                for task in ended:  # an answer wins over the failures that came with it
                    if (answer := _answer(task)) is not None:
                        return await self._won(self._running.pop(task), answer[0], answer[1])
                for task in ended:
                    attempt = self._running.pop(task)
                    sent = task.result()  # a failure; PluginError and Passthrough propagate
                    if isinstance(sent, HealkitError):
                        self._failed(attempt, sent)
                self._start_due()
                if self._hedge_timer is not None and self._hedge_timer in done:
                    self._hedge_timer = None
                    self._send_hedge()
        finally:
            await self._stop()
        if self._lost is None:  # pragma: no cover - a race ends by an attempt's end
            raise RuntimeError("a race ended with no attempt ended")
        return self._lost

    def _start(self, attempt: AttemptContext) -> None:
        """Prepare a hedge or a retry as one after another does; launch it unless refused."""
        call, plan = self._call, self._plan
        call.attempts.append(attempt)
        refusal = _admitted(plan, call, attempt)
        if refusal is not None:
            self._failed(attempt, refusal)
            return
        self._paths[attempt.number] = call.path
        self._launch(attempt, plan.hedge_delay(call, attempt) if self._hedging else None)

    def _launch(self, attempt: AttemptContext, after: float | None) -> None:
        """Start ``attempt`` in a task of its own; arm the hedge due ``after`` seconds later."""
        call = self._call
        task = asyncio.ensure_future(self._attempt(attempt))
        self._running[task] = attempt
        self._drop_timer(self._hedge_timer)
        self._hedge_timer = None
        if after is not None and self._hedging:
            self._hedge_after = attempt
            self._hedge_timer = asyncio.ensure_future(call.clock.sleep(after))

    async def _attempt(self, attempt: AttemptContext) -> tuple[R, float] | HealkitError:
        """Run ``attempt`` (:func:`_attempt`); if it answers, cancel the other attempts at once.

        At once, in this task, before the event loop runs another: an HTTP
        attempt has given its connection back to the pool by now, and an
        attempt of this call waiting for a connection would take it, send the
        request again, and close the connection when it is cancelled.
        """
        call = self._call
        sent = await _attempt(
            self._runtime, self._plan, call, attempt, self._transport, self._deadline_header
        )
        if not isinstance(sent, HealkitError):
            this = asyncio.current_task()
            for task in self._running:
                if task is not this:
                    task.cancel()
        return sent

    def _send_hedge(self) -> None:
        """Launch the hedge that is due, unless its attempt ended or a plugin declines it."""
        call, plan = self._call, self._plan
        previous = self._hedge_after
        if previous is None or not previous.in_flight:
            return  # it ended (a failure whose retry may hedge in turn): nothing to back up
        now = call.clock.now()
        limit = call.attempt_limit
        if (
            (limit is not None and len(call.attempts) + call.retries_due >= limit)
            or now >= min(call.deadline, call.scope_deadline)
            or not plan.hedge(call, previous)
        ):
            self._hedging = False  # no room, no time, or declined: no more hedges for this call
            return
        hedge = AttemptContext(len(call.attempts) + 1, previous.endpoint, now, self._timeouts)
        hedge.hedge = True
        self._start(hedge)

    def _failed(self, attempt: AttemptContext, error: HealkitError) -> None:
        """Report a failed attempt to ``healkit_on_error``; keep the retry it was granted."""
        call = self._call
        decision = _next_step(self._runtime, self._plan, call, attempt, error)
        if decision is not None and decision.retry:
            delay = 0.0 if TEST_MODE.on else decision.delay
            at = call.clock.now() + delay
            due = _Due(at, asyncio.ensure_future(call.clock.sleep(delay)), attempt, decision)
            # Behind those due no later: of two due together, the one granted first starts first.
            index = len(self._due)
            while index and self._due[index - 1].at > at:
                index -= 1
            self._due.insert(index, due)
            call.retries_due += 1
        self._lost = _Lost(error, decision)

    def _start_due(self) -> None:
        """Launch the retries whose backoff passed, in the order their backoffs end.

        A retry whose backoff ends now is launched even if its timer has not
        reported yet: a hedge due at the same time then follows the retry,
        whichever timer the event loop ran first.
        """
        call = self._call
        now = call.clock.now()
        ready = [due for due in self._due if due.timer.done() or due.at <= now]
        if not ready:
            return
        self._due = [due for due in self._due if due not in ready]
        for due in ready:
            self._drop_timer(due.timer)
            call.retries_due -= 1
            failed, decision = due.failed, due.decision
            attempt = AttemptContext(
                len(call.attempts) + 1,
                decision.endpoint or failed.endpoint,
                call.clock.now(),
                self._timeouts,
                decision.delay,
            )
            call.path = "retry"
            self._start(attempt)

    async def _won(self, winner: AttemptContext, result: R, ended: float) -> R:
        """End the call with ``winner``'s result, once the other attempts are cancelled.

        If the caller gives up meanwhile, the result is released: nobody will have it.
        """
        try:
            await self._stop()
        except BaseException:
            self._transport.discard(result)
            raise
        call = self._call
        call.path = self._paths[winner.number]
        return _succeeded(self._plan, call, winner, self._transport, result, ended)

    async def _stop(self) -> None:
        """Cancel the timers and the attempts in flight; await them; report what they became.

        The retries still due are dropped unsent. An attempt that ended on its
        own meanwhile is reported as it ended (a failure to
        ``healkit_on_error``, a result is released); the cancelled ones to
        ``healkit_attempt_cancelled``. While they are reported the call
        allows no attempt beyond those it made (``call.attempt_limit``): no
        retry follows, so a retry plugin grants none and spends no budget.

        The attempts are awaited to their end even if the caller is cancelled
        meanwhile (an anyio cancel scope cancels it again at every await), as
        ``asyncio.TaskGroup`` awaits its children; that cancellation is raised
        once they ended and were reported. Cancelled timers are awaited too:
        no task of the race outlives the call.
        """
        call = self._call
        self._drop_timer(self._hedge_timer)
        self._hedge_timer = None
        for due in self._due:
            self._drop_timer(due.timer)
        self._due = []
        call.retries_due = 0
        running, self._running = self._running, {}
        for task in running:
            if not task.cancelling():  # an answer cancelled the others already
                task.cancel()
        interrupted: asyncio.CancelledError | None = None
        pending: list[asyncio.Future[Any]] = [*self._dropped, *running]
        self._dropped = []
        pending = [task for task in pending if not task.done()]
        while pending:
            try:
                await asyncio.wait(pending)
            except asyncio.CancelledError as exc:  # the caller gave up too: raised below
                interrupted = exc
            pending = [task for task in pending if not task.done()]
        if running:
            limit = call.attempt_limit
            call.attempt_limit = len(call.attempts)
            try:
                self._report(running)
            finally:
                call.attempt_limit = limit
        if interrupted is not None:
            raise interrupted

    def _report(
        self, stopped: dict[asyncio.Task[tuple[R, float] | HealkitError], AttemptContext]
    ) -> None:
        call, plan = self._call, self._plan
        now = call.clock.now()
        for task, attempt in stopped.items():
            if task.done() and not task.cancelled():
                problem = task.exception()
                if problem is None:
                    sent = task.result()
                    if isinstance(sent, HealkitError):
                        try:
                            _next_step(self._runtime, plan, call, attempt, sent)
                        except PluginError as crash:  # the call's end is decided already
                            plan.crashed_late(crash)
                    else:
                        if attempt.duration is None:
                            attempt.duration = sent[1] - attempt.started
                        self._transport.discard(sent[0])
                    continue
                if isinstance(problem, PluginError):
                    plan.crashed_late(problem)  # the call has its answer: reported, not raised
            attempt.cancelled = True
            if attempt.duration is None:
                attempt.duration = max(now - attempt.started, 0.0)
            plan.attempt_cancelled(call, attempt)

    def _drop_timer(self, timer: asyncio.Future[None] | None) -> None:
        """Cancel ``timer``; keep it, until it ended, for :meth:`_stop` to await."""
        if timer is not None and not timer.done():
            timer.cancel()
            self._dropped = [t for t in self._dropped if not t.done()]
            self._dropped.append(timer)


def _answer(task: asyncio.Future[tuple[R, float] | HealkitError]) -> tuple[R, float] | None:
    """Return an ended attempt's result and end time; ``None`` if it failed or raised."""
    if task.cancelled() or task.exception() is not None:
        return None
    sent = task.result()
    return None if isinstance(sent, HealkitError) else sent
