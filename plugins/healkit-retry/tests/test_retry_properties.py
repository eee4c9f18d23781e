"""Properties of the backoff and of the plugin's decisions, for any settings (hypothesis).

The decision properties drive the plugin's hooks the way the executor does, on
a ManualClock and without a network, so that thousands of calls cost nothing.
"""

from __future__ import annotations

import email.utils
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from retry_support import build, call_context, seeded

import healkit
from healkit.testing import ManualClock
from healkit_retry import RetryPlugin, decorrelated_jitter, full_jitter, parse_retry_after

ENDPOINT = "http://svc.test"
FAST = settings(max_examples=150, deadline=None)

draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
bases = st.floats(min_value=0.001, max_value=60.0)


@st.composite
def base_and_cap(draw: st.DrawFn) -> tuple[float, float]:
    base = draw(bases)
    cap = draw(st.floats(min_value=base, max_value=300.0))
    return base, cap


@FAST
@given(retry=st.integers(1, 10), limits=base_and_cap(), draw=draws)
def test_full_jitter_stays_below_the_exponential_step_and_the_cap(
    retry: int, limits: tuple[float, float], draw: float
) -> None:
    base, cap = limits
    delay = full_jitter(retry, base=base, cap=cap, draw=draw)
    assert 0.0 <= delay <= min(cap, base * 2 ** (retry - 1))


@FAST
@given(previous=st.floats(min_value=0.0, max_value=1000.0), limits=base_and_cap(), draw=draws)
def test_decorrelated_jitter_stays_between_base_and_three_times_the_last_delay(
    previous: float, limits: tuple[float, float], draw: float
) -> None:
    base, cap = limits
    delay = decorrelated_jitter(previous, base=base, cap=cap, draw=draw)
    assert base <= delay <= cap
    assert delay <= max(3 * previous, 3 * base)


@FAST
@given(seconds=st.integers(0, 10**9), wall=st.integers(0, 4 * 10**9))
def test_retry_after_both_forms(seconds: int, wall: int) -> None:
    assert parse_retry_after(f" {seconds} ", wall_now=wall) == seconds
    date = email.utils.formatdate(wall + seconds, usegmt=True)
    assert parse_retry_after(date, wall_now=wall) == seconds
    assert parse_retry_after(email.utils.formatdate(wall, usegmt=True), wall_now=wall + 5) == 0


def test_retry_after_rejects_junk() -> None:
    for junk in ("", "soon", "-1", "1e3", "Mon, 99 Foo 2024 00:00:00 GMT"):
        assert parse_retry_after(junk, wall_now=0.0) is None


def simulate(  # noqa: PLR0913 - the knobs of one simulated call
    plugin: RetryPlugin,
    config: healkit.HealkitConfig,
    clock: ManualClock,
    error: healkit.HealkitError,
    *,
    deadline: float,
    duration: float,
    cap: float,
) -> tuple[list[healkit.AttemptContext], healkit.RetryDecision]:
    """Run one call as the executor would, checking every decision on the way."""
    call = call_context(config, clock, deadline=clock.now() + deadline)
    delay = 0.0
    while True:
        attempt = healkit.AttemptContext(
            len(call.attempts) + 1, ENDPOINT, started=clock.now(), retry_delay=delay
        )
        call.attempts.append(attempt)
        plugin.healkit_pre_request(call, attempt)
        clock.advance(duration)
        attempt.duration = duration
        decision = plugin.healkit_on_error(call, attempt, error)
        if not decision.retry:
            return call.attempts, decision
        assert 0.0 <= decision.delay <= cap
        assert clock.now() + decision.delay < call.deadline  # never sleeps past it
        clock.advance(decision.delay)
        delay = decision.delay


retry_sections = st.fixed_dictionaries(
    {
        "attempts": st.integers(1, 10),
        "jitter": st.sampled_from(["full", "decorrelated"]),
        "budget_min_retries_per_second": st.just(1000.0),  # the budget is tested below
    }
)


@FAST
@given(
    section=retry_sections,
    limits=base_and_cap(),
    deadline=st.floats(min_value=0.01, max_value=120.0),
    duration=st.floats(min_value=0.0, max_value=5.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_decisions_respect_attempts_cap_and_deadline(
    section: dict[str, Any],
    limits: tuple[float, float],
    deadline: float,
    duration: float,
    seed: int,
) -> None:
    base, cap = limits
    config = build(ENDPOINT, base=base, cap=cap, **section)
    plugin = RetryPlugin(rng=seeded(seed))
    clock = ManualClock()
    error = healkit.HTTPStatusError(503, url=ENDPOINT + "/x")
    attempts, decision = simulate(
        plugin, config, clock, error, deadline=deadline, duration=duration, cap=cap
    )
    assert 1 <= len(attempts) <= section["attempts"]
    if len(attempts) < section["attempts"]:
        assert "deadline" in decision.reason


@FAST
@given(
    ratio=st.floats(min_value=0.0, max_value=1.0),
    minimum=st.floats(min_value=0.0, max_value=5.0),
    calls=st.integers(1, 300),
    gap=st.floats(min_value=0.0, max_value=0.03),
)
def test_budget_bounds_the_attempts_of_a_full_outage(
    ratio: float, minimum: float, calls: int, gap: float
) -> None:
    window = 10.0
    config = build(
        ENDPOINT,
        attempts=10,
        base=0.0001,
        cap=0.0001,
        budget_ratio=ratio,
        budget_window=window,
        budget_min_retries_per_second=minimum,
    )
    plugin = RetryPlugin(rng=seeded(0))
    clock = ManualClock()
    start = clock.now()
    error = healkit.ConnectError("refused")
    attempts = 0
    for _ in range(calls):
        clock.advance(gap)
        made, _ = simulate(plugin, config, clock, error, deadline=60.0, duration=0.0, cap=0.0001)
        attempts += len(made)
    assert clock.now() - start < window
    # The bound is often met exactly: allow for the rounding of the float formula.
    assert attempts <= (1 + ratio) * calls + minimum * window + 1e-6
