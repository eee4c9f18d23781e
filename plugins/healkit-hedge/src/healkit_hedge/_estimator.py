"""A bounded, O(1)-per-sample estimate of a percentile of a service's recent latency.

Latencies are counted in a histogram of logarithmic buckets (each
:data:`GROWTH` times as wide as the one before, from :data:`LOWEST` to
:data:`HIGHEST` seconds: about 5% resolution), over two windows of
:data:`WINDOW_SAMPLES` samples: the current one and the one before. When the
current window is full it becomes the previous one and a new one starts, so the
estimate follows the last one to two windows of answers and forgets older
ones. The percentile is recomputed every :data:`REFRESH_SAMPLES` samples (a
pass over the buckets, a fixed cost spread over those samples), never per
read. Memory is fixed: two arrays of :data:`BUCKET_COUNT` 16-bit counters
(about 1.2 KB per service, so that the ``state.max_unconfigured`` services a
flood of hosts may create stay a few megabytes).
"""

from __future__ import annotations

import math
from array import array
from itertools import accumulate
from operator import add
from typing import Final, final

__all__ = [
    "BUCKET_COUNT",
    "GROWTH",
    "HIGHEST",
    "LOWEST",
    "REFRESH_SAMPLES",
    "WINDOW_SAMPLES",
    "LatencyEstimator",
    "samples_needed",
]

LOWEST: Final = 1e-4
"""Seconds; latencies below 100 µs count in the first bucket."""
HIGHEST: Final = 120.0
"""Seconds; latencies above two minutes count in the last bucket."""
GROWTH: Final = 1.05
"""Each bucket's upper edge is 5% above the previous one's: the estimate's resolution."""
_LOG_GROWTH: Final = math.log(GROWTH)
BUCKET_COUNT: Final = math.ceil(math.log(HIGHEST / LOWEST) / _LOG_GROWTH) + 1
_EDGES: Final = tuple(LOWEST * GROWTH**index for index in range(BUCKET_COUNT))
"""The upper edge of each bucket, in seconds: what the estimate answers."""

WINDOW_SAMPLES: Final = 1000
"""Samples per window: the estimate covers the last 1000 to 2000 answers."""
_EMPTY: Final = array("H", [0]) * BUCKET_COUNT
"""A window with no sample; ``H`` counters hold a full window's samples in one bucket."""
REFRESH_SAMPLES: Final = 50
"""The percentile is recomputed every 50 samples."""
MIN_SAMPLES: Final = 100
"""Never fewer samples than this before a percentile is trusted."""


def samples_needed(percentile: float) -> int:
    """Return how many samples make ``percentile`` worth trusting.

    Enough that about ten samples lie above it (200 for the 95th, 1000 for
    the 99th), at least :data:`MIN_SAMPLES`, at most two windows.
    """
    above = 1.0 - percentile / 100.0
    wanted = math.ceil(10.0 / above) if above > 0 else 2 * WINDOW_SAMPLES
    return min(max(MIN_SAMPLES, wanted), 2 * WINDOW_SAMPLES)


def bucket_of(seconds: float) -> int:
    """Return the index of the bucket that counts ``seconds`` (O(1))."""
    if not seconds > LOWEST:  # NaN and negatives too: they cannot come from a clock
        return 0
    if seconds >= HIGHEST:
        return BUCKET_COUNT - 1
    index = math.ceil(math.log(seconds / LOWEST) / _LOG_GROWTH)
    return min(index, BUCKET_COUNT - 1)


@final
class LatencyEstimator:
    """The recent latencies of one service, and a percentile of them.

    Args:
        percentile: the percentile :attr:`estimate` follows (0 < p < 100).

    """

    __slots__ = (
        "_current",
        "_current_total",
        "_fraction",
        "_needed",
        "_previous",
        "_previous_total",
        "_until_refresh",
        "estimate",
        "percentile",
    )

    def __init__(self, percentile: float) -> None:
        self._current = array("H", _EMPTY)
        self._previous = array("H", _EMPTY)
        self._current_total = 0
        self._previous_total = 0
        self._until_refresh = REFRESH_SAMPLES
        self.percentile = percentile
        self._fraction = percentile / 100.0
        self._needed = samples_needed(percentile)
        self.estimate: float | None = None
        """Seconds: the percentile of the recent latency (``None``: too few samples yet)."""

    def __repr__(self) -> str:
        return f"<LatencyEstimator p{self.percentile:g}={self.estimate} samples={self.samples}>"

    @property
    def samples(self) -> int:
        """The samples the estimate is made of."""
        return self._current_total + self._previous_total

    def retarget(self, percentile: float) -> None:
        """Follow another percentile of the same samples (a new configuration)."""
        if percentile != self.percentile:
            self.percentile = percentile
            self._fraction = percentile / 100.0
            self._needed = samples_needed(percentile)
            self._refresh()

    def record(self, seconds: float) -> None:
        """Count one latency, in seconds: O(1), and a refresh every few samples."""
        self._current[bucket_of(seconds)] += 1
        self._current_total += 1
        if self._current_total >= WINDOW_SAMPLES:
            self._previous, self._current = self._current, self._previous
            self._previous_total = self._current_total
            self._current_total = 0
            self._current[:] = _EMPTY
            self._until_refresh = 0
        self._until_refresh -= 1
        if self._until_refresh <= 0:
            self._until_refresh = REFRESH_SAMPLES
            self._refresh()

    def _refresh(self) -> None:
        """Recompute :attr:`estimate` from both windows."""
        total = self._current_total + self._previous_total
        if total < self._needed:
            self.estimate = None
            return
        rank = max(1, math.ceil(self._fraction * total))
        # The running count of both windows, bucket by bucket, reaches the total
        # (>= rank) at the last bucket at the latest.
        counts = zip(_EDGES, accumulate(map(add, self._current, self._previous)), strict=True)
        self.estimate = next(edge for edge, seen in counts if seen >= rank)
