"""Retries inside a race of concurrent attempts: every retry granted is sent, or never granted.

The retry plugin spends its budget when it grants a retry (``healkit_on_error``).
In a race (a call with a hedge delay) several attempts may fail while another
retry waits for its backoff, and a loser may fail as the winner answers. The
tests run the real retry plugin, a small fixed-delay hedging plugin and a
loopback aiohttp upstream that holds each request until the test answers it
(a decorated function where two attempts must end in one turn of the loop);
backoffs and hedge delays run on a :class:`ManualClock` the test advances. The
budget's count (``RetryPlugin.unconfigured_budgets``) is compared with the
retries the upstream actually received.

The tests under "connections" count the TCP connections a race opens
(aiohttp's ``TraceConfig``, and the peer ports the upstream saw): a loser that
sent its request has its connection closed, and one that sent nothing holds
none. The last ones put a hedge in the limit plugin's queue.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anyio
import pytest

import healkit
from healkit.testing import ManualClock
from healkit_limit import LimitPlugin
from healkit_retry import RetryPlugin
from tests.hold_support import GUARD, Held, Upstream

pytestmark = pytest.mark.anyio

HEDGE_DELAY = 1.0


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with Upstream() as server:
        yield server


class FixedHedge:
    """Hedge the attempts numbered ``hedged`` of an idempotent call, after a fixed delay."""

    healkit_name = "fixed-hedge"

    def __init__(self, delay: float = HEDGE_DELAY, hedged: tuple[int, ...] = (1,)) -> None:
        self.delay = delay
        self.hedged = hedged
        self.cancelled: list[int] = []

    @healkit.hookimpl
    def healkit_hedge_delay(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> float | None:
        if attempt.number not in self.hedged or not call.idempotent:
            return None
        return self.delay

    @healkit.hookimpl
    def healkit_attempt_cancelled(self, attempt: healkit.AttemptContext) -> None:
        self.cancelled.append(attempt.number)


class Half(random.Random):
    """Every jitter draw is 0.5: the n-th retry waits ``0.5 * min(cap, base * 2**(n-1))``."""

    def random(self) -> float:
        return 0.5


def _defaults(**retry: object) -> dict[str, Any]:
    """Retry settings for every service: backoffs of 0.5 s then 1 s; a budget of 10 retries."""
    settings = {
        "base": 1.0,
        "cap": 5.0,
        "budget_ratio": 0.0,
        "budget_window": 10.0,
        "budget_min_retries_per_second": 1.0,
        **retry,
    }
    return {"defaults": {"retry": settings}}


def _granted(retrying: RetryPlugin) -> int:
    """The retries the plugin's budget counted (calls by absolute URL: unconfigured budgets)."""
    return sum(budget.retries for _service, budget in retrying.unconfigured_budgets.items())


async def _until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition()`` holds (checkpoints, no sleep)."""
    with anyio.fail_after(GUARD):
        while not condition():  # noqa: ASYNC110 - checkpoints until the race got there
            await asyncio.sleep(0)


async def _race_of_two(upstream: Upstream, clock: ManualClock) -> tuple[Held, Held]:
    """Wait for the first attempt, pass the hedge delay; return the two requests held."""
    first = await upstream.wait_for(1)
    with anyio.fail_after(GUARD):
        await clock.wait_for_sleepers(1)
    clock.advance(HEDGE_DELAY)
    return first, await upstream.wait_for(2)


# -- defect: a second retry granted while one waits for its backoff was dropped ---------------


async def test_a_retry_granted_while_another_waits_is_sent_after_its_own_backoff(
    upstream: Upstream,
) -> None:
    clock = ManualClock(auto_advance=False)
    retrying = RetryPlugin(rng=Half())
    async with healkit.Client(
        config=_defaults(attempts=4),
        plugins=[retrying, FixedHedge()],
        entry_points=False,
        clock=clock,
    ) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        first, hedge = await _race_of_two(upstream, clock)
        first.reply(503)  # retry 1 granted: backoff 0.5 s
        await _until(lambda: _granted(retrying) == 1)
        hedge.reply(503)  # retry 2 granted while retry 1 waits: backoff 1 s
        await _until(lambda: _granted(retrying) == 2)
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(2)  # both backoffs run
        clock.advance(0.5)
        third = await upstream.wait_for(3)
        clock.advance(0.5)
        fourth = await upstream.wait_for(4)  # the second retry was kept, not dropped
        third.reply(503)  # attempts = 4 made: no retry, nothing spent
        fourth.reply(200)
        with anyio.fail_after(GUARD):
            response = await task
    outcome = response.outcome
    assert response.status == 200
    assert outcome.winner == 4
    assert outcome.path == "retry"
    assert [(a.number, a.hedge, a.error) for a in outcome.attempts] == [
        (1, False, "HTTPStatusError"),
        (2, True, "HTTPStatusError"),
        (3, False, "HTTPStatusError"),
        (4, False, None),
    ]
    # Every retry the budget counted reached the upstream; the hedge is not a retry.
    retries_sent = sum(1 for a in outcome.attempts[1:] if not a.hedge)
    assert _granted(retrying) == retries_sent == 2
    assert len(upstream.requests) == 4


async def test_no_retry_is_granted_beyond_the_attempts_with_one_due(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    retrying = RetryPlugin(rng=Half())
    async with healkit.Client(
        config=_defaults(attempts=3),
        plugins=[retrying, FixedHedge()],
        entry_points=False,
        clock=clock,
    ) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        first, hedge = await _race_of_two(upstream, clock)
        first.reply(503)  # retry 1 granted: it will be attempt 3, the last
        await _until(lambda: _granted(retrying) == 1)
        hedge.reply(503)  # no room for another: refused before the budget is spent
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        for _ in range(10):  # give a (wrong) second grant every chance to be counted
            await asyncio.sleep(0)
        assert _granted(retrying) == 1
        clock.advance(0.5)
        (await upstream.wait_for(3)).reply(200)
        with anyio.fail_after(GUARD):
            response = await task
    assert response.outcome.winner == 3
    assert len(response.outcome.attempts) == 3
    assert _granted(retrying) == 1
    assert len(upstream.requests) == 3


async def test_the_callers_attempts_bound_retries_due_and_hedges(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    retrying = RetryPlugin(rng=Half())
    async with healkit.Client(
        config=_defaults(attempts=5),
        plugins=[retrying, FixedHedge()],
        entry_points=False,
        clock=clock,
    ) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x", attempts=3))
        first, hedge = await _race_of_two(upstream, clock)
        first.reply(503)
        hedge.reply(503)
        await _until(lambda: _granted(retrying) >= 1)
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        for _ in range(10):
            await asyncio.sleep(0)
        clock.advance(0.5)
        (await upstream.wait_for(3)).reply(503)
        with pytest.raises(healkit.HTTPStatusError) as caught, anyio.fail_after(GUARD):
            await task
    assert len(caught.value.attempts) == 3
    assert "all 3 attempts made (the call's attempt_limit)" in str(caught.value)
    assert _granted(retrying) == 1  # one retry sent, one counted
    assert len(upstream.requests) == 3


async def test_no_hedge_takes_the_place_of_a_retry_due(upstream: Upstream) -> None:
    """The hedge of the hedge is due while the retry of attempt 1 waits for its backoff.

    With ``attempts=3`` the retry is attempt 3: the hedge is not sent, and the
    retry is not pushed beyond the caller's attempts.
    """
    clock = ManualClock(auto_advance=False)
    retrying = RetryPlugin(rng=Half())
    async with healkit.Client(
        config=_defaults(attempts=5, base=2.0),  # the first retry waits 1 s
        plugins=[retrying, FixedHedge(hedged=(1, 2))],
        entry_points=False,
        clock=clock,
    ) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x", attempts=3))
        first, _hedge = await _race_of_two(upstream, clock)  # t = 1: the hedge's hedge at 2
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        clock.advance(0.5)
        first.reply(503)  # t = 1.5: the retry is due at 2.5
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(2)
        clock.advance(0.5)  # t = 2: the hedge's hedge is due, and has no room
        for _ in range(20):  # give a (wrong) hedge every chance to be sent
            await asyncio.sleep(0)
        clock.advance(0.5)  # t = 2.5: the retry starts
        third = await upstream.wait_for(3)
        third.reply(200)
        with anyio.fail_after(GUARD):
            response = await task
    assert [(a.number, a.hedge, a.started) for a in response.outcome.attempts] == [
        (1, False, 1000.0),
        (2, True, 1001.0),
        (3, False, 1002.5),  # the retry, after its backoff
    ]
    assert response.outcome.winner == 3
    assert len(upstream.requests) == 3


class LateTimers:
    """A :class:`ManualClock` whose sleeps of ``late`` seconds end a few turns of the loop late.

    As on a real event loop, where two timers due at the same time may run
    in two turns: the race must not depend on which one reports first.
    """

    def __init__(self, late: float) -> None:
        self.manual = ManualClock(auto_advance=False)
        self.late = late

    def now(self) -> float:
        return self.manual.now()

    async def sleep(self, seconds: float) -> None:
        await self.manual.sleep(seconds)
        if seconds == self.late:
            for _ in range(5):
                await asyncio.sleep(0)


async def test_a_hedge_and_a_retry_due_together_whichever_timer_reports_first(
    upstream: Upstream,
) -> None:
    """At t = 2 the hedge of the hedge and the retry of attempt 1 are due; the retry's timer
    reports a few turns late. The retry starts first, and the hedge due is not sent beside
    it: a hedge follows the latest attempt, here the retry (which gets no hedge delay)."""
    clock = LateTimers(late=0.5)  # the retry's backoff
    manual = clock.manual
    retrying = RetryPlugin(rng=Half())
    async with healkit.Client(
        config=_defaults(attempts=5),  # the first retry waits 0.5 s
        plugins=[retrying, FixedHedge(hedged=(1, 2))],
        entry_points=False,
        clock=clock,
    ) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        first, _hedge = await _race_of_two(upstream, manual)  # t = 1: the hedge's hedge at 2
        with anyio.fail_after(GUARD):
            await manual.wait_for_sleepers(1)
        manual.advance(0.5)
        first.reply(503)  # t = 1.5: the retry is due at 2
        with anyio.fail_after(GUARD):
            await manual.wait_for_sleepers(2)
        manual.advance(0.5)  # t = 2: both are due
        third = await upstream.wait_for(3)
        for _ in range(20):  # give a (wrong) hedge every chance to be sent beside it
            await asyncio.sleep(0)
        assert len(upstream.requests) == 3
        third.reply(200)
        with anyio.fail_after(GUARD):
            response = await task
    assert [(a.number, a.hedge, a.started) for a in response.outcome.attempts] == [
        (1, False, 1000.0),
        (2, True, 1001.0),
        (3, False, 1002.0),  # the retry
    ]
    assert response.outcome.winner == 3


# -- defect: a loser that failed as the winner answered was granted a retry -------------------


@pytest.mark.parametrize("failing", [1, 2])
async def test_a_failure_that_comes_with_the_answer_spends_no_retry(failing: int) -> None:
    """Attempt ``failing`` fails in the same turn of the loop as the other answers."""
    clock = ManualClock(auto_advance=False)
    retrying = RetryPlugin(rng=Half())
    hedging = FixedHedge()
    gates = [asyncio.Event(), asyncio.Event()]
    runs: list[int] = []
    async with healkit.Client(
        config=_defaults(), plugins=[retrying, hedging], entry_points=False, clock=clock
    ) as client:

        @healkit.resilient(service="fn", idempotent=True, runtime=client.runtime)
        async def work() -> str:
            number = len(runs) + 1
            runs.append(number)
            await gates[number - 1].wait()
            if number == failing:
                raise OSError(f"run {number} failed")
            return f"run {number}"

        task = asyncio.create_task(work())
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        clock.advance(HEDGE_DELAY)
        await _until(lambda: len(runs) == 2)
        for gate in gates:  # both end in the same turn of the loop
            gate.set()
        with anyio.fail_after(GUARD):
            assert await task == f"run {3 - failing}"
    assert _granted(retrying) == 0  # the call had its answer: no retry was due
    assert len(runs) == 2


# -- the race ends with retries due ------------------------------------------------------------


async def test_a_retry_due_when_the_hedge_answers_is_dropped_and_its_timer_ends(
    upstream: Upstream,
) -> None:
    clock = ManualClock(auto_advance=False)
    retrying = RetryPlugin(rng=Half())
    async with healkit.Client(
        config=_defaults(), plugins=[retrying, FixedHedge()], entry_points=False, clock=clock
    ) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        first, hedge = await _race_of_two(upstream, clock)
        first.reply(503)
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)  # the retry's backoff
        hedge.reply(200)
        with anyio.fail_after(GUARD):
            response = await task
    assert response.outcome.winner == 2
    assert clock.sleeping == 0  # the backoff's timer ended with the call
    assert len(upstream.requests) == 2


async def test_a_caller_that_gives_up_during_a_races_backoff(upstream: Upstream) -> None:
    clock = ManualClock(auto_advance=False)
    retrying = RetryPlugin(rng=Half())
    hedging = FixedHedge()
    async with healkit.Client(
        config=_defaults(attempts=4), plugins=[retrying, hedging], entry_points=False, clock=clock
    ) as client:
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        first, hedge = await _race_of_two(upstream, clock)
        first.reply(503)
        hedge.reply(503)
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(2)  # both retries wait; no attempt in flight
        task.cancel()
        with pytest.raises(asyncio.CancelledError), anyio.fail_after(GUARD):
            await task
        assert clock.sleeping == 0
    assert len(upstream.requests) == 2
    assert hedging.cancelled == []


# -- connections --------------------------------------------------------------------------------


class Connections:
    """Counts the connections an aiohttp session creates and reuses (its TraceConfig)."""

    def __init__(self) -> None:
        self.created = 0
        self.reused = 0
        self.queued = 0
        self.trace = aiohttp.TraceConfig()
        self.trace.on_connection_create_end.append(self._created)
        self.trace.on_connection_reuseconn.append(self._reused)
        self.trace.on_connection_queued_start.append(self._queued)

    async def _created(self, *_: object) -> None:
        self.created += 1

    async def _queued(self, *_: object) -> None:
        self.queued += 1

    async def _reused(self, *_: object) -> None:
        self.reused += 1


async def test_a_loser_that_sent_its_request_closes_its_connection_the_winners_is_reused(
    upstream: Upstream,
) -> None:
    clock = ManualClock(auto_advance=False)
    connections = Connections()
    async with (
        aiohttp.ClientSession(trace_configs=[connections.trace]) as session,
        healkit.Client(
            plugins=[FixedHedge()], entry_points=False, clock=clock, session=session
        ) as client,
    ):
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        first, hedge = await _race_of_two(upstream, clock)
        hedge.reply(200)
        with anyio.fail_after(GUARD):
            await task
            await first.dropped.wait()  # mid-request: its connection cannot be reused
        after = asyncio.create_task(client.get(upstream.url + "/y", attempts=1))
        (await upstream.wait_for(3)).reply(200)
        with anyio.fail_after(GUARD):
            await after
    assert connections.created == 2
    assert connections.reused == 1
    assert upstream.requests[2].peer == hedge.peer  # the next call took the winner's connection
    assert hedge.peer != first.peer


class HoldSecond:
    """Holds the first hedge (attempt 2) it sees in ``healkit_admit`` until it is cancelled."""

    healkit_name = "hold-second"

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.cancelled = asyncio.Event()

    @healkit.hookimpl
    def healkit_admit(self, attempt: healkit.AttemptContext) -> object:
        if attempt.number != 2 or self.waiting.is_set():
            return None
        return self._hold()

    async def _hold(self) -> None:
        self.waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def test_a_loser_still_waiting_for_admission_or_a_connection_holds_none(
    upstream: Upstream,
) -> None:
    """A hedge held in admission, then one waiting for the pool's only connection."""
    clock = ManualClock(auto_advance=False)
    connections = Connections()
    holding = HoldSecond()
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1), trace_configs=[connections.trace]
        ) as session,
        healkit.Client(
            plugins=[FixedHedge(), holding], entry_points=False, clock=clock, session=session
        ) as client,
    ):
        # Call 1: its hedge waits in healkit_admit when the first attempt answers.
        task = asyncio.create_task(client.get(upstream.url + "/x"))
        first = await upstream.wait_for(1)
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        clock.advance(HEDGE_DELAY)
        with anyio.fail_after(GUARD):
            await holding.waiting.wait()
        first.reply(200)
        with anyio.fail_after(GUARD):
            assert (await task).outcome.winner == 1
        assert holding.cancelled.is_set()
        # Call 2: its hedge is admitted and waits for the pool's only connection.
        task = asyncio.create_task(client.get(upstream.url + "/y"))
        second = await upstream.wait_for(2)
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        clock.advance(HEDGE_DELAY)
        await _until(lambda: connections.queued == 1)
        second.reply(200)
        with anyio.fail_after(GUARD):
            assert (await task).outcome.winner == 1
        # The hedge did not take the connection the answer gave back, nor send on it.
        assert len(upstream.requests) == 2
        # Call 3 finds that connection in the pool.
        task = asyncio.create_task(client.get(upstream.url + "/z", attempts=1))
        (await upstream.wait_for(3)).reply(200)
        with anyio.fail_after(GUARD):
            await task
    assert connections.created == 1  # neither loser opened or closed a connection
    assert connections.reused == 2
    assert {r.peer for r in upstream.requests} == {first.peer}


async def test_a_hedge_queued_by_the_limit_plugin_when_the_first_attempt_fails(
    upstream: Upstream,
) -> None:
    """The first attempt fails while its hedge waits in the limit plugin's queue.

    The slot the failure gives back goes to the hedge, which is sent and may
    answer; no slot and no place in the queue is left taken after the call.
    """
    clock = ManualClock(auto_advance=False)
    limiting = LimitPlugin()
    limit = {"concurrency": 1, "queue": 4, "max_wait": 30.0}
    config = {"services": {"svc": {"endpoints": [upstream.url], "limit": limit}}}
    async with healkit.Client(
        config=config,
        plugins=[FixedHedge(), limiting, FailOn503()],
        entry_points=False,
        clock=clock,
    ) as client:
        task = asyncio.create_task(client.get("/x", service="svc"))
        first = await upstream.wait_for(1)
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        clock.advance(HEDGE_DELAY)
        await _until(lambda: _held(limiting) == (1, 1))  # attempt 1's slot, the hedge queued
        first.reply(503)
        (await upstream.wait_for(2)).reply(200)
        with anyio.fail_after(GUARD):
            response = await task
        assert _held(limiting) == (0, 0)
    assert response.outcome.winner == 2
    assert [a.error for a in response.outcome.attempts] == ["HTTPStatusError", None]


class FailOn503:
    """Declares a 503 a failure (no retry plugin here)."""

    healkit_name = "fail-on-503"

    @healkit.hookimpl
    def healkit_post_response(
        self, response: healkit.Response | None
    ) -> healkit.HealkitError | None:
        if response is not None and response.status == 503:
            return healkit.HTTPStatusError(503, url=response.url)
        return None


def _held(limiting: LimitPlugin) -> tuple[int, int]:
    """The slots taken and the attempts queued for ``svc`` (none before its first call)."""
    state = limiting.status("svc")
    return (0, 0) if state is None else (state.in_flight, state.queued)


async def test_a_caller_that_gives_up_while_a_hedge_waits_in_the_limit_queue(
    upstream: Upstream,
) -> None:
    clock = ManualClock(auto_advance=False)
    limiting = LimitPlugin()
    hedging = FixedHedge()
    limit = {"concurrency": 1, "queue": 4, "max_wait": 30.0}
    config = {"services": {"svc": {"endpoints": [upstream.url], "limit": limit}}}
    async with healkit.Client(
        config=config, plugins=[hedging, limiting], entry_points=False, clock=clock
    ) as client:
        task = asyncio.create_task(client.get("/x", service="svc"))
        first = await upstream.wait_for(1)
        with anyio.fail_after(GUARD):
            await clock.wait_for_sleepers(1)
        clock.advance(HEDGE_DELAY)
        await _until(lambda: _held(limiting) == (1, 1))
        task.cancel()
        with pytest.raises(asyncio.CancelledError), anyio.fail_after(GUARD):
            await task
        assert _held(limiting) == (0, 0)  # the slot given back, the queue left
        with anyio.fail_after(GUARD):
            await first.dropped.wait()
        assert clock.sleeping == 0
    assert sorted(hedging.cancelled) == [1, 2]
    assert len(upstream.requests) == 1
