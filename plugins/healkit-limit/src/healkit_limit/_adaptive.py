"""The adaptive concurrency limit: a gradient controller on the upstream's latency.

The limit follows the ratio of the upstream's unloaded latency (the smallest
latency seen, ``min_rtt``) to its current latency (the mean of a round
trip's answers), once per round trip, as Envoy's adaptive concurrency filter
and Netflix's concurrency-limits gradient do. An upstream answering about as
fast as unloaded lets the limit grow by :data:`HEADROOM`; one answering more
than ``tolerance`` times slower than unloaded (requests queue up there) makes
it shrink in proportion. A timeout or
a rejection for load (``reject_statuses``) multiplies it by ``backoff``, at
most once per round trip (as TCP's congestion control does): the attempts
that time out together (a burst, a stall) report one overload, not one each.

The unloaded latency cannot be seen while the limit keeps the upstream busy,
so every ``min_rtt_window`` seconds the controller measures it again, as
Envoy does: it pins the limit to ``min_concurrency`` for
:data:`MEASURE_SAMPLES` answers, takes their smallest latency, and restores
the limit it had.
"""

from __future__ import annotations

import math
from typing import Final, final

from healkit_limit._settings import LimitSettings

__all__ = ["HEADROOM", "MEASURE_SAMPLES", "GradientLimit"]

MEASURE_SAMPLES: Final = 16
"""Answers taken, at ``min_concurrency``, to measure the unloaded latency again."""
HEADROOM: Final = 1.0
"""Attempts added to each estimate: how the limit probes for more room."""
_MIN_GRADIENT: Final = 0.5
"""The limit at most halves per answer (before smoothing), as in concurrency-limits."""
_RESOLUTION: Final = 1e-9
"""Latencies below a nanosecond (a clock that did not move: 0 s) count as one nanosecond.

Both sides of the gradient's ratio are floored, so answers as fast as the
unloaded latency give a ratio of 1 even when both measured 0 s.
"""


@final
class GradientLimit:
    """The adaptive concurrency limit of one service (or endpoint).

    Pure logic on the times it is given: no clock of its own, no I/O.

    Attributes:
        value: the limit in force (a float; the limiter admits ``int(value)``
            attempts at once).
        min_rtt: the unloaded latency in seconds (``None`` before a first answer).
        rtt: the mean latency of the last round trip's answers.

    """

    __slots__ = (
        "_backed_off",
        "_busiest",
        "_count",
        "_measured",
        "_measuring",
        "_resumed",
        "_settings",
        "_sum",
        "_window",
        "min_rtt",
        "rtt",
        "value",
    )

    def __init__(self, settings: LimitSettings, now: float) -> None:
        self._settings = settings
        self.value = float(settings.concurrency or settings.min_concurrency)
        self.min_rtt: float | None = None
        self.rtt: float | None = None
        self._measuring: list[float] | None = None  # latencies of a min_rtt measurement
        self._resumed = self.value  # the limit to restore after a measurement
        self._measured = now  # when min_rtt was last measured
        self._backed_off = -math.inf  # when the limit was last multiplied by backoff
        self._window = now  # the start of the round trip whose answers are summed
        self._sum = 0.0
        self._count = 0
        self._busiest = 0  # the most attempts in flight at an answer of the round trip

    def reconfigure(self, settings: LimitSettings) -> None:
        """Take new parameters; the learned latencies and the limit (bounded anew) stay."""
        self._settings = settings
        self.value = self._bounded(self.value)
        self._resumed = self._bounded(self._resumed)

    @property
    def limit(self) -> int:
        """The number of attempts admitted at once."""
        return int(self.value)

    def sample(self, rtt: float, now: float, *, in_flight: int, dropped: bool) -> None:
        """Adjust the limit to one finished attempt: its latency, and whether it was dropped.

        Args:
            rtt: the attempt's duration in seconds (not its wait in the queue).
            now: the time it ended.
            in_flight: attempts in flight when it ended, itself included.
            dropped: it timed out, or the upstream rejected it for load.

        """
        settings = self._settings
        measuring = self._measuring
        if measuring is not None:
            if not dropped:
                measuring.append(rtt)
            if len(measuring) >= MEASURE_SAMPLES:
                self.min_rtt = min(measuring)
                self._measuring = None
                self._measured = now
                self.value = self._resumed
            return
        if dropped:
            if now - self._backed_off >= (self.rtt or rtt):  # once per round trip
                self._backed_off = now
                self.value = self._bounded(self.value * settings.backoff)
            return
        if self.min_rtt is None or rtt < self.min_rtt:
            self.min_rtt = rtt
        # One update per round trip, on the mean latency of its answers: per answer,
        # the limit would chase each answer's noise.
        self._sum += rtt
        self._count += 1
        self._busiest = max(self._busiest, in_flight)
        if now - self._window < self.min_rtt:
            return
        self.rtt = self._sum / self._count
        busiest = self._busiest
        self._window, self._sum, self._count, self._busiest = now, 0.0, 0, 0
        if now - self._measured >= settings.min_rtt_window:
            self._measuring = []
            self._resumed = self.value
            self.value = float(settings.min_concurrency)
            return
        gradient = max(
            _MIN_GRADIENT,
            min(
                1.0,
                settings.tolerance * max(self.min_rtt, _RESOLUTION) / max(self.rtt, _RESOLUTION),
            ),
        )
        if gradient >= 1.0 and busiest * 2 < self.value:
            return  # the caller, not the upstream, limits the load: nothing learned
        estimate = self.value * gradient + HEADROOM
        smoothed = self.value + (estimate - self.value) * settings.smoothing
        self.value = self._bounded(smoothed)

    def _bounded(self, value: float) -> float:
        settings = self._settings
        return min(float(settings.max_concurrency), max(float(settings.min_concurrency), value))
