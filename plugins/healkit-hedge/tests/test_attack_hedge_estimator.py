"""Red team: the latency estimator's memory, per service, under a flood of services."""

from __future__ import annotations

import tracemalloc

from healkit_hedge import LatencyEstimator
from healkit_hedge._estimator import BUCKET_COUNT, WINDOW_SAMPLES, bucket_of


def test_an_estimator_with_full_windows_takes_about_a_kilobyte() -> None:
    # Hedging under ``defaults`` gives every host called by absolute URL an
    # estimator, up to state.max_unconfigured (4096) of them. Old code kept two
    # lists of 288 counters: 4.7 KB each, some 19 MB for a flood of hosts.
    durations = [1e-4 * 1.05**index for index in range(BUCKET_COUNT)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        estimators = [LatencyEstimator(95.0) for _ in range(50)]
        for estimator in estimators:
            for sample in range(2 * WINDOW_SAMPLES - 1):  # both windows, every bucket used
                estimator.record(durations[sample % BUCKET_COUNT])
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert estimators[0].samples == 2 * WINDOW_SAMPLES - 1
    assert grown / len(estimators) < 1600


def test_a_full_window_in_one_bucket_is_counted_exactly() -> None:
    # The counters are 16 bits: a window's samples all in one bucket still fit.
    estimator = LatencyEstimator(50.0)
    for _ in range(2 * WINDOW_SAMPLES - 1):
        estimator.record(120.0)
    assert estimator.samples == 2 * WINDOW_SAMPLES - 1
    assert bucket_of(120.0) == BUCKET_COUNT - 1
    assert estimator.estimate is not None
    assert estimator.estimate >= 120.0
