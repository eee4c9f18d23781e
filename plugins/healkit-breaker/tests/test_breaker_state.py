"""The pure state machine: unit tests, and a hypothesis model checked against a reference."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from healkit_breaker import BreakerSettings, BreakerTransition, State
from healkit_breaker._state import Breaker, Probe


class Recorder:
    def __init__(self) -> None:
        self.events: list[BreakerTransition] = []

    def __call__(self, event: BreakerTransition) -> None:
        self.events.append(event)

    def moves(self) -> list[tuple[str, str, str]]:
        return [(e.from_state.value, e.to_state.value, e.reason) for e in self.events]


def breaker(now: float = 0.0, **options: Any) -> tuple[Breaker, Recorder]:
    recorder = Recorder()
    return Breaker("svc", "http://a", BreakerSettings(**options), recorder, now=now), recorder


def within(seconds: float, now: float) -> Callable[[], float]:
    """A probe's limit: ``seconds`` after ``now``."""
    return lambda: now + seconds


def call(b: Breaker, now: float, outcome: str = "success") -> bool:
    """One whole call at ``now``: admitted and recorded, or refused (False)."""
    failure, slow = "failure" in outcome, "slow" in outcome
    if b.admits:
        b.record(now, now, failure, slow)
        return True
    refused = b.refuses(now)  # the plugin's shortcut: no probe slot could be had
    probe = b.try_probe(now, within(60.0, now))
    assert probe is None or not refused
    if probe is None:
        return False
    b.record_probe(probe, now, failure, slow)
    return True


# --- unit tests ----------------------------------------------------------------------------


def test_consecutive_failures_trip_exactly_at_the_limit() -> None:
    b, events = breaker(consecutive_failures=3, minimum_calls=50)
    for _ in range(2):
        call(b, 0.0, "failure")
    call(b, 0.0, "success")  # a success starts the count again
    for _ in range(2):
        call(b, 0.0, "failure")
    assert b.state is State.CLOSED
    call(b, 0.0, "failure")
    assert b.current(0.0) is State.OPEN
    assert events.events[-1] == BreakerTransition(
        service="svc",
        endpoint="http://a",
        from_state=State.CLOSED,
        to_state=State.OPEN,
        reason="consecutive_failures",
        failures=5,
        calls=6,
        slow_calls=0,
        at=0.0,
    )


def test_failure_rate_needs_the_minimum_number_of_calls() -> None:
    b, events = breaker(window_size=10, minimum_calls=10, failure_rate=0.1, consecutive_failures=0)
    for index in range(9):
        call(b, 0.0, "failure" if index == 0 else "success")
    assert b.state is State.CLOSED  # 1 of 9, but fewer calls than the minimum
    call(b, 0.0, "success")  # a success that brings the window to the minimum
    assert b.current(0.0) is State.OPEN  # 1 of 10 = 0.1: a rate at the threshold trips
    assert events.moves() == [("closed", "open", "failure_rate")]


def test_a_time_window_trips_when_old_successes_slide_out() -> None:
    b, events = breaker(window="time", window_size=10, minimum_calls=4, consecutive_failures=0)
    for _ in range(3):
        call(b, 0.0, "success")
    for _ in range(2):
        call(b, 5.0, "failure")
    assert b.state is State.CLOSED  # 2 of 5
    call(b, 10.0, "failure")
    call(b, 10.0, "success")  # the successes of second 0 are gone: 3 of 4
    assert events.moves() == [("closed", "open", "failure_rate")]


def test_slow_call_rate_trips() -> None:
    b, events = breaker(window_size=4, minimum_calls=4, slow_call_rate=0.5, consecutive_failures=0)
    for outcome in ("slow", "success", "success", "slow"):
        call(b, 0.0, outcome)
    assert events.moves() == [("closed", "open", "slow_call_rate")]
    assert events.events[0].slow_calls == 2


def test_open_duration_doubles_up_to_the_cap_and_resets_after_a_close() -> None:
    b, _ = breaker(consecutive_failures=1, open_duration=1.0, open_duration_max=3.0)
    now = 0.0
    call(b, now, "failure")
    durations = []
    for _ in range(3):
        durations.append(b.retry_at(now) - now)
        now = b.retry_at(now)
        call(b, now, "failure")  # the probe fails
    assert durations == [1.0, 2.0, 3.0]
    now = b.retry_at(now)
    call(b, now, "success")
    assert b.state is State.CLOSED
    call(b, now, "failure")
    assert b.retry_at(now) - now == 1.0


def test_open_refuses_until_retry_at_then_admits_one_probe() -> None:
    b, events = breaker(consecutive_failures=1, open_duration=5.0)
    call(b, 10.0, "failure")
    assert not b.admits
    assert b.refuses(14.999)
    assert b.try_probe(14.999, within(60.0, 14.999)) is None
    assert b.retry_at(14.999) == 15.0
    assert not b.refuses(15.0)  # due: try_probe decides
    probe = b.try_probe(15.0, within(60.0, 15.0))
    assert probe is not None
    assert b.try_probe(15.0, within(60.0, 15.0)) is None  # the one slot is taken
    assert b.retry_at(15.0) == 15.0  # the probe may end at any moment
    b.record_probe(probe, 15.5, failure=False, slow=False)
    assert b.state is State.CLOSED
    assert events.moves() == [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "open_duration_elapsed"),
        ("half_open", "closed", "probes_succeeded"),
    ]


def test_half_open_needs_every_success_and_reopens_on_a_slow_probe() -> None:
    b, events = breaker(consecutive_failures=1, half_open_probes=2, half_open_successes=2)
    call(b, 0.0, "failure")
    first, second = b.try_probe(5.0, within(1, 5.0)), b.try_probe(5.0, within(1, 5.0))
    assert first is not None
    assert second is not None
    assert b.try_probe(5.0, within(1, 5.0)) is None
    b.record_probe(first, 5.0, failure=False, slow=False)
    assert b.state is State.HALF_OPEN
    b.record_probe(second, 5.0, failure=False, slow=True)
    assert b.current(5.0) is State.OPEN
    assert events.moves()[-1] == ("half_open", "open", "probe_slow")
    assert b.retry_at(5.0) == 15.0  # second trip: twice the open duration


def test_an_abandoned_probe_frees_its_slot_after_its_limit() -> None:
    b, _ = breaker(consecutive_failures=1)
    call(b, 0.0, "failure")
    lost = b.try_probe(5.0, lambda: 35.0)  # a probe whose caller was cancelled
    assert lost is not None
    assert b.try_probe(35.0, within(60.0, 35.0)) is None  # at its limit it may still end
    replacement = b.try_probe(35.5, within(60.0, 35.5))
    assert replacement is not None
    b.record_probe(lost, 36.0, failure=True, slow=False)  # too late: ignored
    assert b.state is State.HALF_OPEN
    b.record_probe(replacement, 36.0, failure=False, slow=False)
    assert b.state is State.CLOSED


def test_release_frees_a_probe_slot_without_a_verdict() -> None:
    b, _ = breaker(consecutive_failures=1)
    call(b, 0.0, "failure")
    probe = b.try_probe(5.0, within(60.0, 5.0))
    assert probe is not None
    b.release_probe(probe)
    assert b.state is State.HALF_OPEN
    assert b.available(5.0)
    assert b.try_probe(5.0, within(60.0, 5.0)) is not None


def test_outcomes_of_attempts_started_before_the_last_transition_are_ignored() -> None:
    b, _ = breaker(consecutive_failures=2)
    call(b, 0.0, "failure")
    call(b, 0.0, "failure")
    b.record(0.0, 1.0, failure=True, slow=False)  # in flight while it opened: ignored
    assert call(b, 5.0, "success")  # the probe closes it
    b.record(0.0, 6.0, failure=True, slow=False)  # started before the close: ignored
    b.record(5.0, 6.0, failure=True, slow=False)
    status = b.status(6.0)
    assert (status.state, status.failures, status.consecutive_failures) == (State.CLOSED, 1, 1)


@pytest.mark.parametrize(
    ("mode", "state", "admits"),
    [
        ("force_open", State.FORCED_OPEN, False),
        ("force_closed", State.FORCED_CLOSED, True),
        ("disabled", State.DISABLED, True),
    ],
)
def test_modes(mode: str, state: State, admits: bool) -> None:
    b, events = breaker(mode=mode, consecutive_failures=1)
    assert b.state is state
    assert events.events == []  # a breaker starts in its mode's state silently
    for _ in range(5):
        assert call(b, 0.0, "failure") is admits
    assert b.state is state
    assert b.available(0.0) is admits
    if not admits:
        assert b.retry_at(0.0) == math.inf
        assert b.refuses(0.0)


def test_force_closed_keeps_counting_and_back_to_normal_trips_on_the_next_failure() -> None:
    b, events = breaker(mode="force_closed", consecutive_failures=3)
    for _ in range(4):
        call(b, 0.0, "failure")
    assert b.status(0.0).consecutive_failures == 4
    b.reconfigure(BreakerSettings(consecutive_failures=3), 1.0)
    assert b.state is State.CLOSED
    call(b, 1.0, "failure")
    assert events.moves() == [
        ("forced_closed", "closed", "mode"),
        ("closed", "open", "consecutive_failures"),
    ]


def test_leaving_force_open_goes_through_half_open() -> None:
    b, events = breaker(mode="force_open")
    b.reconfigure(BreakerSettings(), 1.0)
    assert b.state is State.HALF_OPEN
    assert call(b, 1.0, "success")
    assert events.moves() == [
        ("forced_open", "half_open", "mode"),
        ("half_open", "closed", "probes_succeeded"),
    ]


def test_disabled_forgets_and_reenabling_starts_afresh() -> None:
    b, events = breaker(consecutive_failures=2)
    call(b, 0.0, "failure")
    b.reconfigure(BreakerSettings(mode="disabled", consecutive_failures=2), 0.0)
    call(b, 0.0, "failure")
    b.reconfigure(BreakerSettings(consecutive_failures=2), 0.0)
    call(b, 0.0, "failure")
    assert b.state is State.CLOSED
    assert b.status(0.0).calls == 1
    assert events.moves() == [("closed", "disabled", "mode"), ("disabled", "closed", "mode")]


def test_reconfigure_keeps_the_window_and_refuses_another_kind() -> None:
    b, _ = breaker(window_size=4, minimum_calls=4)
    for outcome in ("failure", "success", "failure"):
        call(b, 0.0, outcome)
    b.reconfigure(BreakerSettings(window_size=2, minimum_calls=2, failure_rate=0.9), 0.0)
    assert (b.status(0.0).calls, b.status(0.0).failures) == (2, 1)
    with pytest.raises(ValueError, match="window kind"):
        b.reconfigure(BreakerSettings(window="time"), 0.0)


def test_retire_admits_everything_and_counts_nothing() -> None:
    b, events = breaker(consecutive_failures=1)
    call(b, 0.0, "failure")
    b.retire(0.0)
    assert events.moves()[-1] == ("open", "closed", "reset")
    for _ in range(3):
        assert call(b, 1.0, "failure")
    assert len(events.events) == 2
    assert b.status(1.0).calls == 1


# --- the stateful model --------------------------------------------------------------------


@dataclass
class Token:
    """The reference model's admission."""

    generation: int
    probe: bool
    limit: float


@dataclass
class Reference:
    """A deliberately plain re-statement of the documented behaviour."""

    config: BreakerSettings
    rates: tuple[Fraction, Fraction]
    state: str = "closed"
    outcomes: list[tuple[float, bool, bool]] = field(default_factory=list)
    consecutive: int = 0
    trips: int = 0
    open_until: float = math.inf
    generation: int = 0
    probes: list[Token] = field(default_factory=list)
    probe_results: list[tuple[bool, bool]] = field(default_factory=list)
    moves: list[tuple[str, str, str]] = field(default_factory=list)

    def window(self, now: float) -> list[tuple[float, bool, bool]]:
        size = self.config.size
        if self.config.window == "count":
            return self.outcomes[-size:]
        return [o for o in self.outcomes if math.floor(o[0]) > math.floor(now) - size]

    def counts(self, now: float) -> tuple[int, int, int]:
        window = self.window(now)
        return len(window), sum(o[1] for o in window), sum(o[2] for o in window)

    def move(self, to: str, reason: str) -> None:
        self.moves.append((self.state, to, reason))
        self.state = to
        self.generation += 1
        self.probes = []
        self.probe_results = []

    def trip(self, now: float, reason: str) -> None:
        self.trips += 1
        base, cap = self.config.open_duration, self.config.open_duration_max
        self.open_until = now + min(base * 2 ** (self.trips - 1), cap)
        self.move("open", reason)

    def refresh(self, now: float) -> None:
        if self.state == "open" and now >= self.open_until:
            self.move("half_open", "open_duration_elapsed")
        self.probes = [p for p in self.probes if p.limit >= now]

    def admit(self, now: float, limit: float) -> Token | None:
        if self.state == "closed":
            return Token(self.generation, probe=False, limit=limit)
        self.refresh(now)
        if self.state != "half_open" or len(self.probes) >= self.config.half_open_probes:
            return None
        token = Token(self.generation, probe=True, limit=limit)
        self.probes.append(token)
        return token

    def retry_at(self, now: float) -> float:
        if self.state == "open":
            return self.open_until
        return now

    def record(self, token: Token, now: float, failure: bool, slow: bool) -> None:
        if token.generation != self.generation:
            return
        if token.probe:
            if token not in self.probes:
                return
            self.probes.remove(token)
            self.probe_results.append((failure, slow))
            if failure or slow:
                self.trip(now, "probe_failed" if failure else "probe_slow")
            elif len(self.probe_results) >= self.config.half_open_successes:
                self.trips = self.consecutive = 0
                self.outcomes = []
                self.move("closed", "probes_succeeded")
            return
        self.outcomes.append((now, failure, slow))
        self.consecutive = self.consecutive + 1 if failure else 0
        calls, failures, slows = self.counts(now)
        enough = calls >= self.config.minimum_calls
        if enough and Fraction(failures, calls) >= self.rates[0]:
            self.trip(now, "failure_rate")
        elif enough and Fraction(slows, calls) >= self.rates[1]:
            self.trip(now, "slow_call_rate")
        elif 0 < self.config.consecutive_failures <= self.consecutive:
            self.trip(now, "consecutive_failures")

    def release(self, token: Token) -> None:
        if token.probe and token.generation == self.generation and token in self.probes:
            self.probes.remove(token)


Held = tuple[Probe | float, Token]
"""An admission on both sides: the probe or the start time, and the model's token."""

RATES = st.integers(1, 4).map(lambda k: Fraction(k, 4))


@st.composite
def configurations(draw: st.DrawFn) -> tuple[BreakerSettings, tuple[Fraction, Fraction]]:
    window = draw(st.sampled_from(["count", "time"]))
    size = draw(st.integers(1, 6))
    minimum = draw(st.integers(1, size if window == "count" else 8))
    rates = (draw(RATES), draw(RATES))
    base = draw(st.sampled_from([1.0, 2.0]))
    config = BreakerSettings(
        window=window,
        window_size=size,
        minimum_calls=minimum,
        failure_rate=float(rates[0]),
        slow_call_rate=float(rates[1]),
        consecutive_failures=draw(st.integers(0, 3)),
        open_duration=base,
        open_duration_max=draw(st.sampled_from([base, 4 * base])),
        half_open_probes=draw(st.integers(1, 3)),
        half_open_successes=draw(st.integers(1, 3)),
    )
    return config, rates


OUTCOMES = st.sampled_from(["success", "failure", "slow", "slow_failure"])


class BreakerModel(RuleBasedStateMachine):
    """Drive a Breaker and the Reference with the same calls; they must agree at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.held: list[Held] = []
        self.events = Recorder()

    @initialize(configuration=configurations())
    def build(self, configuration: tuple[BreakerSettings, tuple[Fraction, Fraction]]) -> None:
        config, rates = configuration
        self.breaker = Breaker("svc", None, config, self.events, now=self.now)
        self.model = Reference(config, rates)

    def acquire(self, limit: float) -> Held | None:
        """Admit an attempt on both sides; they must agree."""
        token = self.model.admit(self.now, limit)
        admitted: Held | None
        if self.breaker.admits:
            admitted = (self.now, token)
        else:
            probe = self.breaker.try_probe(self.now, lambda: limit)
            admitted = None if probe is None else (probe, token)
        assert (admitted is None) == (token is None)
        if admitted is None:
            assert self.breaker.retry_at(self.now) == self.model.retry_at(self.now)
            return None
        assert isinstance(admitted[0], Probe) == admitted[1].probe  # type: ignore[union-attr]
        return admitted

    def finish(self, held: Held, outcome: str) -> None:
        admission, token = held
        failure, slow = "failure" in outcome, "slow" in outcome
        if isinstance(admission, Probe):
            if outcome == "release":
                self.breaker.release_probe(admission)
            else:
                self.breaker.record_probe(admission, self.now, failure, slow)
        elif outcome != "release":
            self.breaker.record(admission, self.now, failure, slow)
        if outcome == "release":
            self.model.release(token)
        else:
            self.model.record(token, self.now, failure, slow)

    @rule(outcome=OUTCOMES)
    def record_call(self, outcome: str) -> None:
        """Record success / failure / slow call: one whole call, admitted or refused."""
        pair = self.acquire(self.now + 30.0)
        if pair is not None:
            self.finish(pair, outcome)

    @rule(limit=st.sampled_from([0.5, 3.0, 30.0]))
    def try_acquire(self, limit: float) -> None:
        """Try to acquire and hold the permit (a call in flight)."""
        pair = self.acquire(self.now + limit)
        if pair is not None:
            self.held.append(pair)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), outcome=st.sampled_from(["success", "failure", "slow", "release"]))
    def finish_held(self, data: st.DataObject, outcome: str) -> None:
        """A call in flight ends (in any order), or is released without a verdict."""
        index = data.draw(st.integers(0, len(self.held) - 1))
        self.finish(self.held.pop(index), outcome)

    @rule(quarters=st.integers(1, 24))
    def advance_clock(self, quarters: int) -> None:
        self.now += quarters * 0.25

    @invariant()
    def same_state_and_transitions(self) -> None:
        if hasattr(self, "model"):
            assert self.breaker.state.value == self.model.state
            assert self.events.moves() == self.model.moves
            window = self.breaker._window
            window.roll(self.now)  # ages a time window; changes no state
            counts = (window.calls, window.failures, window.slow)
            assert counts == self.model.counts(self.now)
            assert self.breaker._consecutive == self.model.consecutive

    @precondition(lambda self: hasattr(self, "model"))
    @rule()
    def read_status(self) -> None:
        """Read the status (which moves a due open breaker to half-open, like admit)."""
        status = self.breaker.status(self.now)
        self.model.refresh(self.now)
        assert status.state.value == self.model.state
        assert (status.calls, status.failures, status.slow_calls) == self.model.counts(self.now)
        assert status.consecutive_failures == self.model.consecutive
        assert status.trips == self.model.trips
        assert status.probes == len(self.model.probes)
        if self.model.state == "open":
            assert status.retry_at == self.model.open_until


BreakerModel.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBreakerModel = BreakerModel.TestCase
