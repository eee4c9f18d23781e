"""Client-side adaptive throttling, as in the SRE book's "Handling Overload".

Over a sliding window the client counts its ``requests`` (every attempt it
made or refused itself) and the ``accepts`` (attempts the upstream did not
reject for load). While the upstream accepts everything the two grow together
and nothing is refused. When it rejects, the client refuses new attempts
locally with probability ``max(0, (requests - K * accepts) / (requests + 1))``:
it sends about ``K`` times what the upstream accepts, so the upstream spends
little on rejections, and it recovers as soon as accepts come back.
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

    __slots__ = ("_accepts", "_current", "_requests", "_width", "accepts", "k", "requests")

    def __init__(self, k: float, window: float, now: float) -> None:
        self.k = k
        self._width = window / BUCKETS
        self._requests = [0] * BUCKETS
        self._accepts = [0] * BUCKETS
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

    def request(self, now: float) -> None:
        """Count a request (sent, or refused by this throttle)."""
        self._advance(now)
        self._requests[self._current % BUCKETS] += 1
        self.requests += 1

    def accept(self, now: float) -> None:
        """Count a request the upstream accepted."""
        self._advance(now)
        self._accepts[self._current % BUCKETS] += 1
        self.accepts += 1

    def _advance(self, now: float) -> None:
        bucket = int(now // self._width)
        current = self._current
        if bucket <= current:
            return
        for index in range(current + 1, min(bucket, current + BUCKETS) + 1):
            slot = index % BUCKETS
            self.requests -= self._requests[slot]
            self.accepts -= self._accepts[slot]
            self._requests[slot] = 0
            self._accepts[slot] = 0
        self._current = bucket
