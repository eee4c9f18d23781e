"""Concurrent attempts (hedged requests): the executor's race, attacked against real servers.

A small hedging plugin (a fixed ``healkit_hedge_delay``, a counting
``healkit_hedge``, a recording ``healkit_attempt_cancelled``) runs against a
loopback aiohttp upstream that holds every request until the test answers
it, so the order of events is the test's, never the scheduler's or a sleep's.
Hedge delays run on a :class:`ManualClock` that the test advances.
"""

from __future__ import annotations

import asyncio
import gc
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anyio
import pytest

import healkit
from healkit.testing import ManualClock
from tests.hold_support import GUARD, Held, Upstream
from tests.plugins import FailOnStatus, Recorder, RetryUpTo, StaticFallback

pytestmark = pytest.mark.anyio


class Hedge:
    """Hedge every attempt after ``delay`` seconds; record the race's hooks."""

    healkit_name = "hedge"

    def __init__(self, delay: object = 1.0, *, allow: object = True) -> None:
        self.delay = delay
        self.allow = allow
        self.asked: list[int] = []
        self.hedges: list[int] = []
        self.cancelled: list[tuple[int, float | None, bool]] = []
        self.events: list[str] = []
        self.running_then: list[int] = []

    @healkit.hookimpl
    def healkit_hedge_delay(self, attempt: healkit.AttemptContext) -> object:
        self.asked.append(attempt.number)
        if isinstance(self.delay, BaseException):
            raise self.delay
        return self.delay

    @healkit.hookimpl
    def healkit_hedge(self, attempt: healkit.AttemptContext) -> object:
        self.hedges.append(attempt.number)
        if isinstance(self.allow, BaseException):
            raise self.allow
        return self.allow

    @healkit.hookimpl
    def healkit_attempt_cancelled(self, attempt: healkit.AttemptContext) -> None:
        self.cancelled.append((attempt.number, attempt.duration, attempt.cancelled))
        self.events.append(f"cancelled {attempt.number}")
        # Called once the attempt's task ended: no attempt of the race may still run.
        self.running_then.append(len(_attempts_running()))

    @healkit.hookimpl
    def healkit_on_error(self, attempt: healkit.AttemptContext) -> None:
        self.events.append(f"on_error {attempt.number}")

    @healkit.hookimpl
    def healkit_call_end(self, error: healkit.HealkitError | None) -> None:
        self.events.append(f"call_end {type(error).__name__ if error else None}")

    @healkit.hookimpl
    def healkit_call_abandoned(self, exception: BaseException) -> None:
        self.events.append(f"abandoned {type(exception).__name__}")


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with Upstream() as server:
        yield server


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the loop's exception handler (a task destroyed pending, an exception
    never retrieved, an unclosed response) during the test, a garbage collection included."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield seen
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert seen == []


def _client(clock: ManualClock, *plugins: object) -> healkit.Client:
    return healkit.Client(plugins=list(plugins), entry_points=False, clock=clock)


async def _hedged(
    upstream: Upstream, clock: ManualClock, hedge: Hedge, *, count: int = 2
) -> list[Held]:
    """Wait for the first attempt, pass each hedge delay, and return the ``count`` requests."""
    held = [await upstream.wait_for(1)]
    for number in range(2, count + 1):
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        clock.advance(float(hedge.delay))  # type: ignore[arg-type]
        held.append(await upstream.wait_for(number))
    return held


def _tasks_of_the_race() -> set[asyncio.Task[Any]]:
    """The unfinished tasks running healkit's code (the race's attempts and timers)."""
    current = asyncio.current_task()
    return {
        t
        for t in asyncio.all_tasks()
        if t is not current and not t.done() and "/healkit/" in _where(t)
    }


def _attempts_running() -> list[asyncio.Task[Any]]:
    """The race's attempt tasks that did not end yet."""
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and getattr(t.get_coro(), "__qualname__", "") == "_Race._attempt"
    ]


def _where(task: asyncio.Task[Any]) -> str:
    code = getattr(task.get_coro(), "cr_code", None)
    return "" if code is None else code.co_filename


# -- the first answer wins -------------------------------------------------------------


async def test_the_first_answer_wins_and_the_loser_is_cancelled_and_released(
    upstream: Upstream, loop_errors: list[dict[str, Any]]
) -> None:
    clock = ManualClock(auto_advance=False)
    hedge, recorder = Hedge(1.5), Recorder()
    async with _client(clock, hedge, recorder) as client:
        before = _tasks_of_the_race()
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        first, second = await _hedged(upstream, clock, hedge)
        assert clock.sleeps == [1.5, 1.5]  # the hedge delays, on the call's clock
        second.reply(200)
        with anyio.fail_after(GUARD):
            response = await task
        assert _tasks_of_the_race() <= before  # nothing of the race left running
        with anyio.fail_after(GUARD):
            await first.dropped.wait()  # the loser's connection was closed, not left to finish
    assert response.status == 200
    assert response.text() == "answer 2"
    outcome = response.outcome
    assert outcome.winner == 2
    assert outcome.endpoint == upstream.url
    loser, winner = outcome.attempts
    assert (loser.hedge, loser.cancelled, loser.ok, loser.error) == (False, True, False, None)
    assert (winner.hedge, winner.cancelled, winner.ok) == (True, False, True)
    assert "cancelled after" in loser.describe()
    assert "(hedge)" in winner.describe()
    assert [n for n, _, _ in hedge.cancelled] == [1]
    assert all(flag for _, _, flag in hedge.cancelled)
    assert all(d is not None and d >= 0 for _, d, _ in hedge.cancelled)
    assert hedge.events == ["cancelled 1", "call_end None"]  # never on_error for the loser
    assert hedge.running_then == [0]
    assert recorder.names().count("call_end") == 1
    assert "on_error" not in recorder.names()
    assert len(upstream.requests) == 2
    assert hedge.hedges == [1]
    assert loop_errors == []


async def test_the_first_attempt_may_win_against_its_hedge(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(1.0)
    async with _client(clock, hedge) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        first, second = await _hedged(upstream, clock, hedge)
        first.reply(200)
        with anyio.fail_after(GUARD):
            response = await task
        with anyio.fail_after(GUARD):
            await second.dropped.wait()
    assert response.outcome.winner == 1
    assert [a.cancelled for a in response.outcome.attempts] == [False, True]
    assert response.outcome.path == "primary"
    assert hedge.events == ["cancelled 2", "call_end None"]


async def test_no_hedge_when_the_first_answer_comes_in_time(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(1.0)
    async with _client(clock, hedge) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        (await upstream.wait_for(1)).reply(200)
        with anyio.fail_after(GUARD):
            response = await task
    assert len(upstream.requests) == 1
    assert response.outcome.winner == 1
    assert hedge.hedges == []
    assert hedge.events == ["call_end None"]


async def test_a_declined_hedge_sends_nothing_and_the_call_waits(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(1.0, allow=False)
    async with _client(clock, hedge) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        first = await upstream.wait_for(1)
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        clock.advance(1.0)
        with anyio.fail_after(GUARD):
            while not hedge.hedges:  # noqa: ASYNC110 - checkpoints until the race asked
                await asyncio.sleep(0)
        first.reply(200)
        with anyio.fail_after(GUARD):
            response = await task
    assert len(upstream.requests) == 1
    assert response.outcome.winner == 1
    assert hedge.cancelled == []


async def test_the_callers_attempt_limit_bounds_the_hedges(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(1.0)
    async with _client(clock, hedge) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x", attempts=1))
        first = await upstream.wait_for(1)
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        clock.advance(1.0)
        for _ in range(20):  # give a (wrong) hedge every chance to be sent
            await asyncio.sleep(0)
        first.reply(200)
        with anyio.fail_after(GUARD):
            response = await task
    assert len(upstream.requests) == 1
    assert len(response.outcome.attempts) == 1


# -- every attempt fails ---------------------------------------------------------------


async def test_a_lost_race_fails_with_every_attempts_record(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(1.0)
    async with _client(clock, hedge, FailOnStatus(503)) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        first, second = await _hedged(upstream, clock, hedge)
        first.reply(503)
        with anyio.fail_after(GUARD):
            while "on_error 1" not in hedge.events:  # noqa: ASYNC110 - checkpoints, no sleep
                await asyncio.sleep(0)
        second.reply(503)
        with pytest.raises(healkit.HTTPStatusError) as caught, anyio.fail_after(GUARD):
            await task
    records = caught.value.attempts
    assert [(r.number, r.hedge, r.cancelled, r.error) for r in records] == [
        (1, False, False, "HTTPStatusError"),
        (2, True, False, "HTTPStatusError"),
    ]
    assert hedge.cancelled == []
    assert hedge.events == ["on_error 1", "on_error 2", "call_end HTTPStatusError"]


async def test_a_retry_granted_inside_a_race_is_sent_and_may_win(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(1.0)
    async with _client(clock, hedge, FailOnStatus(503), RetryUpTo(3)) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        first, second = await _hedged(upstream, clock, hedge)
        first.reply(503)  # a retry is granted (no backoff): attempt 3 beside the hedge
        third = await upstream.wait_for(3)
        third.reply(200)
        with anyio.fail_after(GUARD):
            response = await task
        with anyio.fail_after(GUARD):
            await second.dropped.wait()
    outcome = response.outcome
    assert outcome.winner == 3
    assert outcome.path == "retry"
    assert [(a.error, a.cancelled) for a in outcome.attempts] == [
        ("HTTPStatusError", False),
        (None, True),
        (None, False),
    ]
    assert hedge.events == ["on_error 1", "cancelled 2", "call_end None"]


async def test_a_fallback_answers_a_lost_race(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(1.0)
    degraded = healkit.Response(503, body=b"later")
    fallback = StaticFallback(degraded, path="degraded")
    async with _client(clock, hedge, FailOnStatus(503), fallback) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        first, second = await _hedged(upstream, clock, hedge)
        second.reply(503)
        first.reply(503)
        with anyio.fail_after(GUARD):
            response = await task
    assert response.status == 503
    assert response.outcome.path == "degraded"
    assert response.outcome.winner is None
    assert [r.number for r in response.outcome.attempts] == [1, 2]
    assert len(fallback.errors) == 1
    assert hedge.events[-1] == "call_end None"


# -- the caller gives up -----------------------------------------------------------------


async def _cancelled_mid_race(
    upstream: Upstream, give_up: Callable[[healkit.Client], Any]
) -> tuple[Hedge, list[Held]]:
    """Run a call with two attempts held, end it with ``give_up``; return what was seen."""
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(1.0)
    async with _client(clock, hedge) as client:
        before = _tasks_of_the_race()
        ready = asyncio.Event()

        async def when_held() -> None:
            await _hedged(upstream, clock, hedge)
            ready.set()

        async with anyio.create_task_group() as group:
            group.start_soon(when_held)
            with anyio.fail_after(GUARD):
                await give_up_after(give_up(client), ready)
        assert _tasks_of_the_race() <= before
        held = upstream.requests
        with anyio.fail_after(GUARD):
            for request in held:
                await request.dropped.wait()
    return hedge, held


async def give_up_after(run: Any, ready: asyncio.Event) -> None:
    await run(ready)


def _expect_abandoned(hedge: Hedge, reason: str) -> None:
    assert hedge.running_then == [0, 0]
    assert sorted(hedge.events[:2]) == ["cancelled 1", "cancelled 2"]
    assert hedge.events[2:] == [f"abandoned {reason}"]


async def test_task_cancel_mid_race(upstream: Upstream, loop_errors: list[dict[str, Any]]) -> None:
    def give_up(client: healkit.Client) -> Any:
        async def run(ready: asyncio.Event) -> None:
            task = asyncio.create_task(client.get(upstream.url + "/x"))
            await ready.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        return run

    hedge, held = await _cancelled_mid_race(upstream, give_up)
    assert len(held) == 2
    _expect_abandoned(hedge, "CancelledError")
    assert loop_errors == []


async def test_asyncio_timeout_mid_race(upstream: Upstream) -> None:
    def give_up(client: healkit.Client) -> Any:
        async def run(ready: asyncio.Event) -> None:
            async def call_within_a_timeout() -> None:
                async with asyncio.timeout(None) as scope:
                    expire = asyncio.create_task(_expire_when(ready, scope))
                    try:
                        await client.get(upstream.url + "/x")
                    finally:
                        await expire

            with pytest.raises(TimeoutError):
                await call_within_a_timeout()

        return run

    hedge, _ = await _cancelled_mid_race(upstream, give_up)
    _expect_abandoned(hedge, "CancelledError")


async def _expire_when(ready: asyncio.Event, scope: asyncio.Timeout) -> None:
    await ready.wait()
    scope.reschedule(asyncio.get_running_loop().time())


async def test_anyio_move_on_after_mid_race(upstream: Upstream) -> None:
    def give_up(client: healkit.Client) -> Any:
        async def run(ready: asyncio.Event) -> None:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as group:

                    async def cancel_when_ready() -> None:
                        await ready.wait()
                        scope.cancel()

                    group.start_soon(cancel_when_ready)
                    await client.get(upstream.url + "/x")
            assert scope.cancelled_caught

        return run

    hedge, _ = await _cancelled_mid_race(upstream, give_up)
    _expect_abandoned(hedge, "CancelledError")


async def test_an_anyio_deadline_is_honoured_by_the_race(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(1.0)
    async with _client(clock, hedge) as client:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.3):  # the caller's deadline: the race must end at it
                await client.get(upstream.url + "/x")
        with anyio.fail_after(GUARD):
            await upstream.requests[0].dropped.wait()
    assert hedge.events == ["cancelled 1", "abandoned CancelledError"]


async def test_a_task_group_cancelled_mid_race(upstream: Upstream) -> None:
    def give_up(client: healkit.Client) -> Any:
        async def run(ready: asyncio.Event) -> None:
            async def call() -> None:
                await client.get(upstream.url + "/x")

            async def fail() -> None:
                await ready.wait()
                raise LookupError("a sibling failed")

            async def siblings() -> None:
                async with asyncio.TaskGroup() as group:
                    group.create_task(call())
                    group.create_task(fail())

            with pytest.raises(ExceptionGroup):
                await siblings()

        return run

    hedge, _ = await _cancelled_mid_race(upstream, give_up)
    _expect_abandoned(hedge, "CancelledError")


# -- time limits ---------------------------------------------------------------------------


async def test_each_attempt_has_its_own_time_limit(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(1.0)
    async with _client(clock, hedge) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x", attempt_timeout=0.2))
        await _hedged(upstream, clock, hedge)
        with pytest.raises(healkit.AttemptTimeout) as caught, anyio.fail_after(GUARD):
            await task
    assert [r.error for r in caught.value.attempts] == ["AttemptTimeout", "AttemptTimeout"]
    assert hedge.events == ["on_error 1", "on_error 2", "call_end AttemptTimeout"]


async def test_the_calls_deadline_ends_the_race(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(0.5)
    async with _client(clock, hedge) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x", deadline=2.0))
        await _hedged(upstream, clock, hedge)  # the hedge has 1.5 s left, attempt 1 has 2 s
        with pytest.raises(healkit.DeadlineExceeded) as caught, anyio.fail_after(GUARD):
            await task
    assert [(r.hedge, r.error) for r in caught.value.attempts] == [
        (False, "DeadlineExceeded"),
        (True, "DeadlineExceeded"),
    ]
    assert hedge.cancelled == []


async def test_no_hedge_is_sent_after_the_calls_deadline(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(5.0)
    async with _client(clock, hedge) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x", deadline=4.0))
        first = await upstream.wait_for(1)
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        clock.advance(5.0)  # the hedge is due after the deadline (on the call's clock)
        for _ in range(20):  # give a (wrong) hedge every chance to be sent
            await asyncio.sleep(0)
        first.reply(200)
        with anyio.fail_after(GUARD):
            response = await task
    assert len(upstream.requests) == 1
    assert response.outcome.winner == 1
    assert hedge.hedges == []


# -- plugin faults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "delay", [math.nan, 0, -1, True, "1", math.inf, -math.inf, RuntimeError("boom")]
)
async def test_a_wrong_hedge_delay_is_the_plugins_error(upstream: Upstream, delay: object) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(delay)
    async with _client(clock, hedge) as client:
        with pytest.raises(healkit.PluginError) as caught, anyio.fail_after(GUARD):
            await client.get(upstream.url + "/x")
    assert caught.value.plugin == "hedge"
    assert caught.value.hook == "healkit_hedge_delay"
    assert upstream.requests == []
    assert hedge.events == ["call_end PluginError"]


@pytest.mark.parametrize("allowed", [RuntimeError("boom"), 1, "yes"])
async def test_a_faulty_hedge_decision_fails_the_call_and_cancels_the_race(
    upstream: Upstream, allowed: object
) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(1.0, allow=allowed)
    async with _client(clock, hedge) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        first = await upstream.wait_for(1)
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        clock.advance(1.0)
        with pytest.raises(healkit.PluginError) as caught, anyio.fail_after(GUARD):
            await task
        with anyio.fail_after(GUARD):
            await first.dropped.wait()
    assert caught.value.hook == "healkit_hedge"
    assert [r.cancelled for r in caught.value.attempts] == [True]
    assert hedge.events == ["cancelled 1", "call_end PluginError"]


class BrokenRelease:
    """An observer whose ``healkit_attempt_cancelled`` raises."""

    healkit_name = "broken-release"
    healkit_observer = True

    def __init__(self) -> None:
        self.calls = 0

    @healkit.hookimpl
    def healkit_attempt_cancelled(self) -> None:
        self.calls += 1
        raise RuntimeError("cannot release")


async def test_a_crash_in_attempt_cancelled_is_logged_and_counted(
    upstream: Upstream, logs: list[dict[str, Any]]
) -> None:
    clock = ManualClock(auto_advance=False)
    hedge, broken = Hedge(1.0), BrokenRelease()
    async with _client(clock, hedge, broken) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        _first, second = await _hedged(upstream, clock, hedge)
        second.reply(200)
        with anyio.fail_after(GUARD):
            response = await task
        assert client.runtime.plugin_errors["broken-release"] == 1
    assert response.status == 200
    assert broken.calls == 1
    assert hedge.events == ["cancelled 1", "call_end None"]
    assert any("broken-release" in str(event) for event in logs)


class CrashOnCancel:
    """A decision plugin whose admission wait crashes when it is cancelled (a loser's bug)."""

    healkit_name = "crash-on-cancel"

    def __init__(self) -> None:
        self.admitted = 0

    @healkit.hookimpl
    def healkit_admit(self, attempt: healkit.AttemptContext) -> object:
        self.admitted += 1
        return None if attempt.number != 1 else self._wait()

    async def _wait(self) -> None:
        try:
            await asyncio.Event().wait()  # attempt 1 waits for room forever
        except asyncio.CancelledError:
            raise RuntimeError("crashed while cancelled") from None


async def test_a_plugin_error_in_a_loser_after_the_winner_is_reported_not_raised(
    upstream: Upstream, logs: list[dict[str, Any]], loop_errors: list[dict[str, Any]]
) -> None:
    clock = ManualClock(auto_advance=False)
    hedge, crash = Hedge(1.0), CrashOnCancel()
    async with _client(clock, hedge, crash) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        clock.advance(1.0)
        (await upstream.wait_for(1)).reply(200)  # the hedge, attempt 2
        with anyio.fail_after(GUARD):
            response = await task
        assert client.runtime.plugin_errors["crash-on-cancel"] == 1
    assert response.outcome.winner == 2
    assert response.outcome.attempts[0].cancelled
    assert hedge.events == ["cancelled 1", "call_end None"]
    assert loop_errors == []


# -- decorated functions and streams ------------------------------------------------------


async def test_a_passthrough_exception_while_a_hedge_is_in_flight(
    loop_errors: list[dict[str, Any]],
) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(1.0)
    started: list[asyncio.Event] = []
    fail_first = asyncio.Event()
    hedge_cancelled = asyncio.Event()

    async with _client(clock, hedge) as client:

        @healkit.resilient(service="fn", idempotent=True, runtime=client.runtime)
        async def work() -> str:
            started.append(asyncio.Event())
            if len(started) == 1:
                await fail_first.wait()
                raise ValueError("not a failure: passes through")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                hedge_cancelled.set()
                raise
            return "never"

        task = asyncio.create_task(work())
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        clock.advance(1.0)
        with anyio.fail_after(GUARD):
            while len(started) < 2:  # noqa: ASYNC110 - a checkpoint until the hedge started
                await asyncio.sleep(0)
        fail_first.set()
        with pytest.raises(ValueError, match="passes through"), anyio.fail_after(GUARD):
            await task
    assert hedge_cancelled.is_set()
    assert hedge.events == ["cancelled 2", "abandoned ValueError"]
    assert loop_errors == []


async def test_a_streaming_winner_and_its_released_loser(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(1.0)
    async with _client(clock, hedge) as client:

        async def fetch() -> tuple[bytes, healkit.Outcome]:
            async with client.stream("GET", upstream.url + "/s") as response:
                return await response.read(), response.outcome

        task = asyncio.create_task(fetch())
        first, second = await _hedged(upstream, clock, hedge)
        second.reply(200)
        with anyio.fail_after(GUARD):
            body, outcome = await task
        with anyio.fail_after(GUARD):
            await first.dropped.wait()
    assert body == b"answer 2"
    assert outcome.winner == 2
    assert hedge.events == ["cancelled 1", "call_end None"]


class SlowRelease:
    """Holds attempt 1 in admission; when cancelled, it lets go only once ``release`` is set."""

    healkit_name = "slow-release"

    def __init__(self) -> None:
        self.cancelling = asyncio.Event()
        self.release = asyncio.Event()

    @healkit.hookimpl
    def healkit_admit(self, attempt: healkit.AttemptContext) -> object:
        if attempt.number != 1 or self.cancelling.is_set():
            return None  # one call's attempt 1 is held, once
        return self._hold()

    async def _hold(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelling.set()
            await self.release.wait()
            raise


async def _slow_race(
    upstream: Upstream, clock: ManualClock, hedge: Hedge, *, stream: bool = False
) -> Held:
    """Attempt 1 held in admission, the hedge (attempt 2) held by the server: return it."""
    with anyio.fail_after(GUARD):
        await clock.wait_for_sleepers(1)
    clock.advance(1.0)
    return await upstream.wait_for(1)


async def test_an_anyio_cancel_waits_for_the_losers_to_end(
    upstream: Upstream, loop_errors: list[dict[str, Any]]
) -> None:
    clock = ManualClock(auto_advance=False)
    hedge, slow = Hedge(1.0), SlowRelease()
    async with _client(clock, hedge, slow) as client:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:

                async def give_up() -> None:
                    await _slow_race(upstream, clock, hedge)
                    scope.cancel()
                    with anyio.CancelScope(shield=True):
                        await slow.cancelling.wait()
                        for _ in range(10):  # the caller's scope keeps cancelling it meanwhile
                            await asyncio.sleep(0)
                        assert hedge.events == []  # nothing reported while attempt 1 runs
                        slow.release.set()

                group.start_soon(give_up)
                await client.get(upstream.url + "/x")
        assert scope.cancelled_caught
        assert _attempts_running() == []
    assert sorted(hedge.events[:2]) == ["cancelled 1", "cancelled 2"]
    assert hedge.events[2:] == ["abandoned CancelledError"]
    assert hedge.running_then == [0, 0]
    assert loop_errors == []


async def test_a_winner_is_released_when_the_caller_gives_up_while_losers_end(
    upstream: Upstream, loop_errors: list[dict[str, Any]]
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_debug(True)  # aiohttp reports a response collected unreleased: "Unclosed response"
    try:
        await _winner_released(upstream)
        gc.collect()
    finally:
        loop.set_debug(False)
    assert [e["message"] for e in loop_errors if "response" in e["message"]] == []


async def _winner_released(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    hedge, slow = Hedge(1.0), SlowRelease()
    connector = aiohttp.TCPConnector(limit=1)  # one connection: a leaked one blocks the next call
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        healkit.Client(
            plugins=[hedge, slow], entry_points=False, clock=clock, session=session
        ) as client,
    ):

        async def fetch() -> None:
            async with client.stream("GET", upstream.url + "/s"):
                pytest.fail("the caller gave up: no response reaches it")

        task = asyncio.create_task(fetch())
        won = await _slow_race(upstream, clock, hedge)
        won.reply(200, endless=True)  # the hedge won; its body holds the connection
        with anyio.fail_after(GUARD):
            await slow.cancelling.wait()  # the winner waits for attempt 1 to end
        task.cancel()
        slow.release.set()
        with pytest.raises(asyncio.CancelledError), anyio.fail_after(GUARD):
            await task
        with anyio.fail_after(GUARD):
            await won.dropped.wait()  # the winner's response was released, its connection closed
        after = asyncio.create_task(client.get(upstream.url + "/y", attempts=1))
        (await upstream.wait_for(2)).reply(200)
        with anyio.fail_after(GUARD):
            assert (await after).status == 200  # the winner's connection came back
    assert hedge.events == ["cancelled 1", "abandoned CancelledError", "call_end None"]


class ShrinkFirst:
    """Gives attempt 1 a short limit of its own in ``pre_request``; records what each saw."""

    healkit_name = "shrink-first"

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}

    @healkit.hookimpl
    def healkit_pre_request(self, attempt: healkit.AttemptContext) -> None:
        self.seen[attempt.number] = attempt.timeouts.total
        if attempt.number == 1:
            attempt.timeouts = healkit.Timeouts(connect=1.0, read=30.0, total=30.0)


async def test_a_hedge_starts_from_the_calls_limits_not_its_predecessors(
    upstream: Upstream,
) -> None:
    clock = ManualClock(auto_advance=False)
    hedge, shrink = Hedge(1.0), ShrinkFirst()
    async with _client(clock, hedge, shrink) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        _first, second = await _hedged(upstream, clock, hedge)
        second.reply(200)
        with anyio.fail_after(GUARD):
            await task
    assert shrink.seen[2] == shrink.seen[1]  # as a retry would: the call's limits


class ScopeReader:
    """Records ``call.scope_deadline`` as each attempt's ``pre_request`` sees it."""

    healkit_name = "scope-reader"
    healkit_observer = True

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}

    @healkit.hookimpl
    def healkit_pre_request(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> None:
        self.seen[attempt.number] = call.scope_deadline


async def test_a_hedge_sees_the_callers_cancel_scope_deadline(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    hedge, reader = Hedge(1.0), ScopeReader()
    async with _client(clock, hedge, reader) as client:

        async def answer_the_hedge() -> None:
            _first, second = await _hedged(upstream, clock, hedge)
            second.reply(200)

        async with anyio.create_task_group() as group:
            group.start_soon(answer_the_hedge)
            with anyio.fail_after(GUARD * 6):  # the caller's deadline, far away
                response = await client.get(upstream.url + "/x")
    assert response.outcome.winner == 2
    # Read in the caller's task, not in the hedge's (which is in no cancel scope).
    assert reader.seen[2] < math.inf
    assert reader.seen[2] == reader.seen[1]


class CrashingRetry:
    """A decision plugin whose ``healkit_on_error`` crashes."""

    healkit_name = "crashing-retry"

    def __init__(self) -> None:
        self.calls = 0

    @healkit.hookimpl
    def healkit_on_error(self) -> None:
        self.calls += 1
        raise RuntimeError("on_error crashed")


async def test_a_decision_crash_on_a_loser_that_failed_with_the_winner_is_reported(
    logs: list[dict[str, Any]], loop_errors: list[dict[str, Any]]
) -> None:
    clock = ManualClock(auto_advance=False)
    hedge, crashing = Hedge(1.0), CrashingRetry()
    gates = [asyncio.Event(), asyncio.Event()]
    calls: list[int] = []

    async with _client(clock, hedge, crashing) as client:

        @healkit.resilient(service="fn", idempotent=True, runtime=client.runtime)
        async def work() -> str:
            number = len(calls) + 1
            calls.append(number)
            await gates[number - 1].wait()
            if number == 2:
                raise OSError("the hedge failed as the first answered")
            return "first"

        task = asyncio.create_task(work())
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        clock.advance(1.0)
        with anyio.fail_after(GUARD):
            while len(calls) < 2:  # noqa: ASYNC110 - checkpoints until the hedge started
                await asyncio.sleep(0)
        # Both end in the same turn of the loop, the failing hedge first (an answer
        # first would cancel the hedge before it ran).
        for gate in reversed(gates):
            gate.set()
        with anyio.fail_after(GUARD):
            assert await task == "first"
        assert client.runtime.plugin_errors["crashing-retry"] == 1
    assert crashing.calls == 1
    assert hedge.events == ["call_end None"]  # the crash stopped healkit_on_error


async def test_no_timer_of_the_race_outlives_the_call(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(1.0)
    async with _client(clock, hedge) as client:
        before = _tasks_of_the_race()

        async def answer() -> None:
            (await upstream.wait_for(1)).reply(200)

        async with anyio.create_task_group() as group:
            group.start_soon(answer)
            with anyio.fail_after(GUARD):
                response = await client.get(upstream.url + "/x")
            left = _tasks_of_the_race() - before  # read at once, before any other await
    assert response.outcome.winner == 1
    assert left == set()
    assert clock.sleeping == 0  # the hedge's timer ended with the call


async def test_a_decorated_function_that_fails_twice_in_a_race() -> None:
    clock = ManualClock(auto_advance=False)
    hedge = Hedge(1.0)
    fail = asyncio.Event()
    calls: list[int] = []

    async with _client(clock, hedge) as client:

        @healkit.resilient(service="fn", idempotent=True, runtime=client.runtime)
        async def work() -> str:
            calls.append(len(calls) + 1)
            await fail.wait()
            raise OSError(f"attempt {len(calls)} failed")

        task = asyncio.create_task(work())
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        clock.advance(1.0)
        with anyio.fail_after(GUARD):
            while len(calls) < 2:  # noqa: ASYNC110 - checkpoints until the hedge started
                await asyncio.sleep(0)
        fail.set()
        with pytest.raises(healkit.CallError) as caught, anyio.fail_after(GUARD):
            await task
    assert isinstance(caught.value.error, OSError)
    assert [(r.hedge, r.error, r.cancelled) for r in caught.value.attempts] == [
        (False, "CallError", False),
        (True, "CallError", False),
    ]
    assert hedge.events == ["on_error 1", "on_error 2", "call_end CallError"]
