"""The latency estimator: a known distribution, the floor, bounded memory, windows."""

from __future__ import annotations

import random

import pytest

from healkit_hedge import LatencyEstimator
from healkit_hedge._estimator import (
    BUCKET_COUNT,
    GROWTH,
    WINDOW_SAMPLES,
    bucket_of,
    samples_needed,
)
from healkit_hedge._plugin import _Policy
from healkit_hedge._settings import HedgeSettings


def test_the_estimate_follows_the_percentile_of_a_known_distribution() -> None:
    draw = random.Random(3)  # noqa: S311 - seeded test data
    estimator = LatencyEstimator(95.0)
    latencies = [draw.uniform(0.010, 0.110) for _ in range(WINDOW_SAMPLES)]
    for seconds in latencies:
        estimator.record(seconds)
    exact = sorted(latencies)[int(0.95 * len(latencies)) - 1]
    assert estimator.estimate is not None
    assert exact <= estimator.estimate <= exact * GROWTH * GROWTH  # bucket resolution


def test_a_slow_tail_above_the_percentile_does_not_move_it() -> None:
    estimator = LatencyEstimator(95.0)
    draw = random.Random(5)  # noqa: S311 - seeded test data
    for _ in range(2 * WINDOW_SAMPLES):
        estimator.record(0.510 if draw.random() < 0.04 else 0.010)
    assert estimator.estimate is not None
    assert 0.010 <= estimator.estimate <= 0.010 * GROWTH
    estimator.retarget(99.0)  # the same samples, another percentile
    assert estimator.estimate is not None
    assert 0.510 <= estimator.estimate <= 0.510 * GROWTH


def test_no_estimate_before_enough_samples() -> None:
    estimator = LatencyEstimator(95.0)
    assert samples_needed(95.0) == 200
    for _ in range(samples_needed(95.0) - 1):
        estimator.record(0.02)
    assert estimator.estimate is None
    for _ in range(60):
        estimator.record(0.02)
    assert estimator.estimate is not None
    assert samples_needed(99.0) == 1000
    assert samples_needed(50.0) == 100
    assert samples_needed(99.99) == 2 * WINDOW_SAMPLES


def test_old_windows_are_forgotten_and_memory_stays_bounded() -> None:
    estimator = LatencyEstimator(50.0)
    for _ in range(5 * WINDOW_SAMPLES):
        estimator.record(1.0)
    for _ in range(2 * WINDOW_SAMPLES):
        estimator.record(0.001)
    assert estimator.samples <= 2 * WINDOW_SAMPLES
    assert estimator.estimate is not None
    assert estimator.estimate <= 0.001 * GROWTH


@pytest.mark.parametrize("seconds", [-1.0, 0.0, float("nan"), 1e-9, 1e9, float("inf")])
def test_any_duration_lands_in_a_bucket(seconds: float) -> None:
    assert 0 <= bucket_of(seconds) < BUCKET_COUNT


def test_the_delay_never_goes_below_the_floor() -> None:
    estimator = LatencyEstimator(95.0)
    for _ in range(WINDOW_SAMPLES):
        estimator.record(0.001)
    policy = _Policy(HedgeSettings(enabled=True, min_delay=0.02))
    assert policy.delay(estimator) == 0.02
    fixed = _Policy(HedgeSettings(enabled=True, delay=0.005, min_delay=0.02))
    assert fixed.delay(estimator) == 0.02
    unknown = _Policy(HedgeSettings(enabled=True))
    assert unknown.delay(LatencyEstimator(95.0)) is None
