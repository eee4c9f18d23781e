"""The executor: attempts, decisions, deadlines, fallbacks, error policy."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import anyio
import pytest

import healkit
from healkit.testing import ManualClock
from tests.plugins import Recorder, RetryUpTo, StaticFallback

pytestmark = pytest.mark.anyio


def runtime(
    *plugins: object, clock: healkit.Clock | None = None, config: Any = None
) -> healkit.Runtime:
    return healkit.Runtime(
        config=config, plugins=plugins, entry_points=False, clock=clock or healkit.MonotonicClock()
    )


class Flaky:
    """An async callable failing ``failures`` times, then returning "ok"."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.calls = 0
        self.error = error or ConnectionError("boom")

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


async def test_first_attempt_success_is_primary_and_observed_once() -> None:
    recorder = Recorder()
    rt = runtime(recorder)
    flaky = Flaky(0)
    wrapped = healkit.resilient(service="svc", runtime=rt)(flaky.__call__)
    assert await wrapped() == "ok"
    assert recorder.names() == ["pre_request", "post_response", "call_end"]
    assert recorder.events[-1] == ("call_end", ("primary", None))


async def test_retry_decisions_are_carried_out_with_backoff_on_the_clock() -> None:
    clock = ManualClock()
    recorder = Recorder()
    rt = runtime(RetryUpTo(3, delay=0.25), recorder, clock=clock)
    flaky = Flaky(2)
    assert await healkit.resilient(service="svc", runtime=rt)(flaky.__call__)() == "ok"
    assert flaky.calls == 3
    assert clock.sleeps == [0.25, 0.25]
    assert recorder.events[-1] == ("call_end", ("retry", None))


async def test_final_error_is_typed_and_carries_every_attempt(logs: list[dict[str, Any]]) -> None:
    rt = runtime(RetryUpTo(3), clock=ManualClock())
    flaky = Flaky(10)
    with pytest.raises(healkit.CallError) as caught:
        await healkit.resilient(service="svc", runtime=rt)(flaky.__call__)()
    error = caught.value
    assert isinstance(error.error, ConnectionError)
    assert error.__cause__ is error.error
    assert [a.number for a in error.attempts] == [1, 2, 3]
    assert all(a.error == "CallError" for a in error.attempts)
    rt.repeats.flush(rt.clock.now())
    events = [e["event"] for e in logs]
    # The first attempt failure in full; the two identical ones after it in a summary.
    assert events.count("healkit.attempt_failed") == 1
    assert events.count("healkit.retry_scheduled") == 2
    assert events[-2:] == ["healkit.call_failed", "healkit.attempt_failures_summary"]
    assert logs[-1]["count"] == 2


async def test_exceptions_not_counted_as_failures_propagate_unchanged() -> None:
    rt = runtime(RetryUpTo(5))
    flaky = Flaky(1, ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input"):
        await healkit.resilient(service="svc", runtime=rt)(flaky.__call__)()
    assert flaky.calls == 1


async def test_stop_decision_reason_is_in_the_error() -> None:
    class Stop:
        @healkit.hookimpl
        def healkit_on_error(self) -> healkit.RetryDecision:
            return healkit.RetryDecision.stop("retry budget exhausted")

    rt = runtime(Stop())
    with pytest.raises(healkit.CallError, match="not retried: retry budget exhausted"):
        await healkit.resilient(service="svc", runtime=rt)(Flaky(5).__call__)()


async def test_first_decision_in_hook_order_wins() -> None:
    class Stop:
        @healkit.hookimpl(tryfirst=True)
        def healkit_on_error(self) -> healkit.RetryDecision:
            return healkit.RetryDecision.stop("first")

    flaky = Flaky(1)
    rt = runtime(RetryUpTo(5), Stop())
    with pytest.raises(healkit.CallError, match="first"):
        await healkit.resilient(service="svc", runtime=rt)(flaky.__call__)()
    assert flaky.calls == 1


async def test_backoff_never_sleeps_past_the_deadline() -> None:
    clock = ManualClock()
    rt = runtime(RetryUpTo(10, delay=4.0), clock=clock)
    flaky = Flaky(10)
    call_site = healkit.resilient(service="svc", runtime=rt, deadline=10.0)(flaky.__call__)
    with pytest.raises(healkit.CallError, match="could not start before the call's deadline"):
        await call_site()
    assert clock.sleeps == [4.0, 4.0]
    assert flaky.calls == 3


async def test_attempt_that_outlives_the_deadline_raises_deadline_exceeded() -> None:
    rt = runtime()
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    with pytest.raises(healkit.DeadlineExceeded) as caught:
        await healkit.resilient(service="svc", runtime=rt, deadline=0.05)(hang)()
    assert started.is_set()
    assert caught.value.attempts[0].error == "DeadlineExceeded"


async def test_enclosing_anyio_cancel_scope_sets_the_deadline() -> None:
    seen: list[float] = []

    class Peek:
        @healkit.hookimpl
        def healkit_pre_request(self, call: healkit.CallContext) -> None:
            seen.append(call.remaining())

    rt = runtime(Peek())
    with anyio.fail_after(5):
        await healkit.resilient(service="svc", runtime=rt)(Flaky(0).__call__)()
    await healkit.resilient(service="svc", runtime=rt)(Flaky(0).__call__)()
    assert 4.0 < seen[0] <= 5.0
    assert seen[1] == math.inf


async def test_cancellation_is_never_retried_or_swallowed() -> None:
    rt = runtime(RetryUpTo(5))
    calls = 0

    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await healkit.resilient(service="svc", runtime=rt)(cancelled)()
    assert calls == 1


async def test_a_backoff_longer_than_the_caller_scope_is_not_slept() -> None:
    rt = runtime(RetryUpTo(5, delay=30.0))
    flaky = Flaky(5)
    with anyio.move_on_after(5), pytest.raises(healkit.CallError, match="deadline"):
        await healkit.resilient(service="svc", runtime=rt)(flaky.__call__)()
    assert flaky.calls == 1


async def test_cancellation_during_backoff_ends_the_call_at_once() -> None:
    sleeping = asyncio.Event()

    class SignallingClock:
        def now(self) -> float:
            return healkit.MonotonicClock().now()

        async def sleep(self, seconds: float) -> None:
            sleeping.set()
            await asyncio.sleep(seconds)

    rt = runtime(RetryUpTo(5, delay=30.0), clock=SignallingClock())
    flaky = Flaky(5)
    task = asyncio.create_task(healkit.resilient(service="svc", runtime=rt)(flaky.__call__)())
    await sleeping.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert flaky.calls == 1


async def test_pre_request_refusal_goes_to_on_error_and_reaches_nothing() -> None:
    class Refuse:
        @healkit.hookimpl
        def healkit_pre_request(self, call: healkit.CallContext) -> None:
            raise healkit.CircuitOpenError(call.service, None, retry_at=0.0)

    flaky = Flaky(0)
    recorder = Recorder()
    rt = runtime(Refuse(), recorder)
    with pytest.raises(healkit.CircuitOpenError) as caught:
        await healkit.resilient(service="svc", runtime=rt)(flaky.__call__)()
    assert flaky.calls == 0
    assert not caught.value.may_have_reached_server
    assert ("on_error", "CircuitOpenError") in recorder.events


async def test_crash_in_decision_plugin_fails_the_call_with_plugin_error() -> None:
    class Broken:
        healkit_name = "broken"

        @healkit.hookimpl
        def healkit_on_error(self) -> None:
            raise KeyError("oops")

    rt = runtime(RetryUpTo(5), Broken())
    flaky = Flaky(3)
    with pytest.raises(healkit.PluginError) as caught:
        await healkit.resilient(service="svc", runtime=rt)(flaky.__call__)()
    assert caught.value.plugin == "broken"
    assert caught.value.hook == "healkit_on_error"
    assert isinstance(caught.value.__cause__, KeyError)
    assert flaky.calls == 1
    assert len(caught.value.attempts) == 1


async def test_crash_in_observer_is_logged_once_counted_and_harmless(
    logs: list[dict[str, Any]],
) -> None:
    class BrokenObserver:
        healkit_name = "broken-observer"
        healkit_observer = True

        @healkit.hookimpl
        def healkit_pre_request(self) -> None:
            raise RuntimeError("observer bug")

    rt = runtime(BrokenObserver())
    call_site = healkit.resilient(service="svc", runtime=rt)(Flaky(0).__call__)
    for _ in range(3):
        assert await call_site() == "ok"
    assert rt.plugin_errors["broken-observer"] == 3
    plugin_events = [e for e in logs if e["event"] == "healkit.plugin_error"]
    assert len(plugin_events) == 1
    assert plugin_events[0]["plugin"] == "broken-observer"


async def test_post_response_can_declare_a_failure_and_fallback_answers() -> None:
    fallback = StaticFallback("cached", awaited=True)
    rt = runtime(fallback)

    class Judge:
        @healkit.hookimpl
        def healkit_post_response(self) -> healkit.HealkitError:
            return healkit.HTTPStatusError(503, url="fn")

    rt.register(Judge())
    assert await healkit.resilient(service="svc", runtime=rt)(Flaky(0).__call__)() == "cached"
    assert isinstance(fallback.errors[0], healkit.HTTPStatusError)


async def test_fallback_returning_none_after_await_asks_the_next() -> None:
    class Nothing:
        @healkit.hookimpl(tryfirst=True)
        def healkit_fallback(self) -> Any:
            async def none() -> None:
                return None

            return none()

    rt = runtime(StaticFallback("second"), Nothing())
    assert await healkit.resilient(service="svc", runtime=rt)(Flaky(1).__call__)() == "second"


async def test_declared_failure_of_wrong_type_is_a_plugin_error() -> None:
    class Wrong:
        healkit_name = "wrong"

        @healkit.hookimpl
        def healkit_post_response(self) -> str:
            return "not an error"

    rt = runtime(Wrong())
    with pytest.raises(healkit.PluginError, match="not a HealkitError"):
        await healkit.resilient(service="svc", runtime=rt)(Flaky(0).__call__)()


async def test_register_recompiles_the_plan() -> None:
    rt = runtime()
    flaky = Flaky(1)
    call_site = healkit.resilient(service="svc", runtime=rt)(flaky.__call__)
    with pytest.raises(healkit.CallError):
        await call_site()
    rt.register(RetryUpTo(2))
    flaky.calls = 0
    assert await call_site() == "ok"
    assert flaky.calls == 2


async def test_core_limits_apply_without_a_timeout_plugin() -> None:
    recorder = Recorder()
    rt = runtime(recorder)
    await healkit.resilient(service="svc", runtime=rt)(Flaky(0).__call__)()
    number, timeouts, _ = recorder.events[0][1]
    assert number == 1
    assert timeouts == healkit._config.models.CORE_TIMEOUTS
    assert all(math.isfinite(v) for v in (timeouts.connect, timeouts.read, timeouts.total))


async def test_no_task_is_left_behind() -> None:
    before = asyncio.all_tasks()
    rt = runtime(RetryUpTo(3), StaticFallback("x"))
    call_site = healkit.resilient(service="svc", runtime=rt)(Flaky(5).__call__)
    for _ in range(5):
        await call_site()
    assert asyncio.all_tasks() == before


async def test_an_observer_cannot_refuse_or_substitute(logs: list[dict[str, Any]]) -> None:
    class Meddler:
        healkit_name = "meddler"
        healkit_observer = True

        @healkit.hookimpl
        def healkit_pre_request(self, call: healkit.CallContext) -> None:
            raise healkit.CircuitOpenError(call.service, None, retry_at=0.0)

        @healkit.hookimpl
        def healkit_fallback(self) -> healkit.Fallback:
            return healkit.Fallback("from an observer")

    rt = runtime(Meddler())
    assert await healkit.resilient(service="svc", runtime=rt)(Flaky(0).__call__)() == "ok"
    with pytest.raises(healkit.CallError):
        await healkit.resilient(service="svc", runtime=rt)(Flaky(5).__call__)()
    assert rt.plugin_errors["meddler"] == 2


async def test_a_failing_fallback_is_logged_and_the_next_one_answers(
    logs: list[dict[str, Any]],
) -> None:
    class Down:
        healkit_name = "down"

        @healkit.hookimpl(tryfirst=True)
        def healkit_fallback(self) -> healkit.Fallback:
            raise healkit.ConnectError("fallback endpoint down too")

    rt = runtime(StaticFallback("second"), Down())
    assert await healkit.resilient(service="svc", runtime=rt)(Flaky(1).__call__)() == "second"
    failed = [e for e in logs if e["event"] == "healkit.fallback_failed"]
    assert failed[0]["plugin"] == "down"
    assert failed[0]["error"] == "ConnectError"


async def test_a_healkit_error_from_a_nested_call_passes_through_untouched() -> None:
    inner = healkit.ConnectError("inner call failed")
    recorder = Recorder()
    rt = runtime(RetryUpTo(3), StaticFallback("unused"), recorder)

    async def nested() -> None:
        raise inner

    call_site = healkit.resilient(service="svc", failures=(KeyError,), runtime=rt)(nested)
    with pytest.raises(healkit.ConnectError) as caught:
        await call_site()
    assert caught.value is inner
    assert caught.value.attempts == ()
    assert "on_error" not in recorder.names()


async def test_move_on_after_around_a_call_cancels_it_silently() -> None:
    rt = runtime()

    async def hang() -> None:
        await asyncio.Event().wait()

    with anyio.move_on_after(0.05) as scope:
        await healkit.resilient(service="svc", runtime=rt)(hang)()
    assert scope.cancelled_caught


class Abandoned:
    """An observer of calls that end with neither a result nor a healkit error."""

    healkit_observer = True

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.ended = 0

    @healkit.hookimpl
    def healkit_call_abandoned(self, call: healkit.CallContext, exception: BaseException) -> None:
        self.seen.append((call.service, type(exception).__name__))

    @healkit.hookimpl
    def healkit_call_end(self) -> None:
        self.ended += 1


async def test_a_cancelled_call_is_abandoned_not_ended() -> None:
    observer = Abandoned()
    rt = runtime(observer)
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(healkit.resilient(service="svc", runtime=rt)(slow)())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert observer.seen == [("svc", "CancelledError")]
    assert observer.ended == 0


async def test_an_exception_passed_through_is_abandoned_and_a_failure_is_ended() -> None:
    observer = Abandoned()
    rt = runtime(observer)

    async def buggy() -> None:
        raise KeyError("not a failure")

    async def refused() -> None:
        raise ConnectionRefusedError

    with pytest.raises(KeyError):
        await healkit.resilient(service="svc", runtime=rt)(buggy)()
    with pytest.raises(healkit.CallError):
        await healkit.resilient(service="svc", runtime=rt)(refused)()
    assert observer.seen == [("svc", "KeyError")]
    assert observer.ended == 1


async def test_an_observer_failing_on_an_abandoned_call_changes_nothing() -> None:
    class Broken:
        healkit_observer = True

        @healkit.hookimpl
        def healkit_call_abandoned(self) -> None:
            raise RuntimeError("metrics backend down")

    rt = runtime(Broken())

    async def buggy() -> None:
        raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        await healkit.resilient(service="svc", runtime=rt)(buggy)()
    assert rt.plugin_errors["Broken"] == 1


class ServiceLimits:
    """Answers the per-service limits; records what the first per-call hook sees."""

    healkit_name = "service-limits"

    def __init__(self, deadline: object, timeouts: object) -> None:
        self.deadline = deadline
        self.timeouts = timeouts
        self.asked = 0
        self.seen: list[tuple[float, healkit.Timeouts]] = []

    @healkit.hookimpl
    def healkit_attempt_timeouts(self) -> object:
        self.asked += 1
        return self.timeouts

    @healkit.hookimpl
    def healkit_call_deadline(self) -> object:
        return self.deadline

    @healkit.hookimpl(tryfirst=True)
    def healkit_pre_request(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> None:
        self.seen.append((call.deadline - call.started, attempt.timeouts))


async def test_the_services_limits_are_set_before_any_per_call_hook_and_asked_once() -> None:
    limits = healkit.Timeouts(connect=1.0, read=2.0, total=3.0)
    plugin = ServiceLimits(deadline=7, timeouts=limits)
    runtime = healkit.Runtime(
        config={"services": {"svc": {}}}, plugins=[plugin], entry_points=False
    )

    @healkit.resilient(service="svc", runtime=runtime)
    async def work() -> int:
        return 1

    assert await work() == 1
    assert await work() == 1
    assert plugin.seen == [(7.0, limits), (7.0, limits)]
    assert plugin.asked == 1  # once per service and configuration snapshot
    assert runtime.call_deadline(runtime.config.policy("svc")) == 7.0


@pytest.mark.parametrize(
    ("deadline", "timeouts"),
    [(-1.0, "3s"), (True, 3.0), ("5", None), (math.nan, (1.0, 2.0, 3.0))],
    ids=["negative", "a bool", "a string", "not a number"],
)
async def test_a_wrong_answer_for_the_services_limits_is_reported_and_not_used(
    deadline: object, timeouts: object
) -> None:
    plugin = ServiceLimits(deadline=deadline, timeouts=timeouts)
    runtime = healkit.Runtime(
        config={"services": {"svc": {}}}, plugins=[plugin], entry_points=False
    )
    policy = runtime.config.policy("svc")
    assert runtime.call_deadline(policy) == math.inf
    assert runtime.attempt_timeouts(policy) == healkit.Timeouts(connect=10.0, read=30.0, total=60.0)
    assert runtime.plugin_errors["service-limits"] == (2 if timeouts is not None else 1)
