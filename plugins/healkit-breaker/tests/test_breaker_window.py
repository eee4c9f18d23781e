"""The sliding windows, against a list of outcomes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healkit_breaker._window import CountWindow, TimeWindow, new_window

OUTCOMES = st.lists(st.tuples(st.booleans(), st.booleans()), max_size=60)


@given(size=st.integers(1, 12), outcomes=OUTCOMES)
def test_count_window_holds_the_last_n_outcomes(
    size: int, outcomes: list[tuple[bool, bool]]
) -> None:
    window = CountWindow(size)
    for failure, slow in outcomes:
        window.add(0.0, failure, slow)
    kept = outcomes[-size:]
    assert window.outcomes() == kept
    assert window.calls == len(kept)
    assert window.failures == sum(f for f, _ in kept)
    assert window.slow == sum(s for _, s in kept)


@given(size=st.integers(1, 12), new=st.integers(1, 12), outcomes=OUTCOMES)
def test_count_window_resize_keeps_the_most_recent(
    size: int, new: int, outcomes: list[tuple[bool, bool]]
) -> None:
    window = CountWindow(size)
    for failure, slow in outcomes:
        window.add(0.0, failure, slow)
    resized = window.resized(new, 0.0)
    assert resized.outcomes() == outcomes[-size:][-new:]


TIMED = st.lists(
    st.tuples(st.integers(0, 4), st.booleans(), st.booleans()),  # (quarter-seconds later, ...)
    max_size=60,
)


def expected(events: list[tuple[float, bool, bool]], now: float, size: int) -> tuple[int, int, int]:
    """Outcomes whose whole second is one of the ``size`` latest at ``now``."""
    kept = [(f, s) for t, f, s in events if math.floor(t) > math.floor(now) - size]
    return len(kept), sum(f for f, _ in kept), sum(s for _, s in kept)


@given(size=st.integers(1, 5), steps=TIMED, resize=st.integers(1, 5))
def test_time_window_counts_the_last_seconds(
    size: int, steps: list[tuple[int, bool, bool]], resize: int
) -> None:
    now = 1000.0
    window = TimeWindow(size, now)
    events: list[tuple[float, bool, bool]] = []
    for quarters, failure, slow in steps:
        now += quarters * 0.25
        window.add(now, failure, slow)
        events.append((now, failure, slow))
        assert (window.calls, window.failures, window.slow) == expected(events, now, size)
    later = now + 1.5
    window.roll(later)
    assert (window.calls, window.failures, window.slow) == expected(events, later, size)
    resized = window.resized(resize, later)
    assert (resized.calls, resized.failures, resized.slow) == expected(
        events, later, min(size, resize)
    )


def test_time_window_forgets_everything_after_a_long_pause() -> None:
    window = TimeWindow(10, 0.0)
    for second in range(10):
        window.add(second + 0.5, failure=True, slow=False)
    assert window.calls == 10
    window.roll(100.0)
    assert (window.calls, window.failures, window.slow) == (0, 0, 0)


def test_clear_and_kinds() -> None:
    count, time = new_window("count", 3, 0.0), new_window("time", 3, 0.0)
    assert (count.kind, time.kind) == ("count", "time")
    for window in (count, time):
        window.add(0.0, failure=True, slow=True)
        window.clear()
        assert (window.calls, window.failures, window.slow) == (0, 0, 0)
    assert count.outcomes() == []


@pytest.mark.parametrize("kind", [CountWindow, TimeWindow])
def test_a_window_needs_a_size(kind: type[CountWindow | TimeWindow]) -> None:
    with pytest.raises(ValueError, match="size"):
        CountWindow(0) if kind is CountWindow else TimeWindow(0, 0.0)
