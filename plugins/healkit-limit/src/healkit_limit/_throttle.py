"""Client-side adaptive throttling, as in the SRE book's "Handling Overload".

Over a sliding window the client counts its ``requests`` (every attempt it
made or refused itself) and the ``accepts`` (attempts the upstream did not
reject for load). While the upstream accepts everything the two grow together
and nothing is refused. When it rejects, the client refuses new attempts
locally with probability ``max(0, (requests - K * accepts) / (requests + 1))``:
it sends about ``K`` times what the upstream accepts, so the upstream spends
little on rejections.

A request refused locally counts as a request while the upstream's last
answer was a rejection, as in the SRE book and gRPC's adaptive throttler:
that is what keeps an outage's cost at a handful of requests (about
``ln(rate * window)`` in the first window). Three additions make recovery
prompt once the upstream accepts again:

* a probe: one request goes through whenever none was sent for a twelfth of
  the window (like a half-open breaker's), so the first accept comes soon.
  Left to the formula alone, about one request a window gets through an
  outage, and a recovered upstream would wait a window or more to be noticed.
  The probes cost twelve requests a window during an outage;
* the first accept after a window without any takes the outage's local
  refusals out of the count: they were a guess, and kept in, they would hold
  the refusal probability near 1 for several windows;
* after an accept, local refusals do not count until the upstream rejects
  again: they are no evidence of overload, and counting them would feed the
  probability while the accepts catch up.

While the upstream accepts some requests and rejects others, the client sends
about ``K`` times what it accepts.
"""

from __future__ import annotations

from typing import Final, final

__all__ = ["BUCKETS", "Throttle"]

BUCKETS: Final = 12
"""The window slides in twelfths: counts older than the window leave a twelfth at a time."""


@final
class Throttle:
    """The requests and accepts of one service (or endpoint) over a sliding window.

    Pure logic on the times it is given: no clock of its own.

    Attributes:
        k: the multiplier ``K`` of accepts.
        requests: requests counted in the window.
        accepts: accepts counted in the window.

    """

    __slots__ = (
        "_accepts",
        "_current",
        "_last_request",
        "_refused",
        "_refused_total",
        "_rejecting",
        "_requests",
        "_width",
        "accepts",
        "k",
        "requests",
    )

    def __init__(self, k: float, window: float, now: float) -> None:
        self.k = k
        self._width = window / BUCKETS
        self._requests = [0] * BUCKETS
        self._accepts = [0] * BUCKETS
        self._refused = [0] * BUCKETS  # local refusals counted in _requests, per bucket
        self._refused_total = 0
        self._last_request = now
        self._rejecting = False  # whether the upstream's last answer was a rejection
        self._current = int(now // self._width)
        self.requests = 0
        self.accepts = 0

    @property
    def window(self) -> float:
        """The window's length in seconds."""
        return self._width * BUCKETS

    def probability(self, now: float) -> float:
        """Return the probability with which a new request is refused now."""
        self._advance(now)
        requests = self.requests
        return max(0.0, (requests - self.k * self.accepts) / (requests + 1))

    def probe_due(self, now: float) -> bool:
        """Whether no request was sent for a twelfth of the window (the next one goes)."""
        return now - self._last_request >= self._width

    def request(self, now: float) -> None:
        """Count a request sent to the upstream."""
        self._last_request = now
        self._advance(now)
        self._requests[self._current % BUCKETS] += 1
        self.requests += 1

    def refused(self, now: float) -> None:
        """Count a request this throttle refused, if the upstream's last answer was a rejection."""
        if not self._rejecting:
            return
        self._advance(now)
        slot = self._current % BUCKETS
        self._requests[slot] += 1
        self.requests += 1
        self._refused[slot] += 1
        self._refused_total += 1

    def accept(self, now: float) -> None:
        """Count a request the upstream accepted (the first in a window drops the refusals)."""
        self._advance(now)
        self._rejecting = False
        if not self.accepts and self._refused_total:
            for slot in range(BUCKETS):
                self._requests[slot] -= self._refused[slot]
                self._refused[slot] = 0
            self.requests -= self._refused_total
            self._refused_total = 0
        self._accepts[self._current % BUCKETS] += 1
        self.accepts += 1

    def reject(self) -> None:
        """Note that the upstream rejected a request (counted when it was sent)."""
        self._rejecting = True

    def _advance(self, now: float) -> None:
        bucket = int(now // self._width)
        current = self._current
        if bucket <= current:
            return
        for index in range(current + 1, min(bucket, current + BUCKETS) + 1):
            slot = index % BUCKETS
            self.requests -= self._requests[slot]
            self.accepts -= self._accepts[slot]
            self._refused_total -= self._refused[slot]
            self._requests[slot] = 0
            self._accepts[slot] = 0
            self._refused[slot] = 0
        self._current = bucket
