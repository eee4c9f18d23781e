"""The rate limit: a token bucket that refuses, or spaces calls as a leaky bucket does.

The bucket holds up to ``size`` tokens and gains ``rate`` tokens a second.
An attempt takes one. In ``refuse`` mode an attempt that finds no token is
refused at once (with the time until the next one). In ``smooth`` mode it
reserves the next token and waits until it is due, so calls leave at the rate
instead of in bursts; a reservation further away than the allowed wait is
refused instead, so the debt (and every wait) stays bounded.

A bucket starts full, or ``empty`` (an instance's share of a fleet-wide rate:
a full one would add tokens the fleet never earned each time an instance
starts).
"""

from __future__ import annotations

from typing import final

__all__ = ["TokenBucket"]


@final
class TokenBucket:
    """The tokens of one service (or endpoint). Pure logic on the times it is given.

    Attributes:
        rate: tokens gained per second.
        size: the most tokens held.
        tokens: tokens now (negative while reservations are outstanding).

    """

    __slots__ = ("_stamp", "rate", "size", "tokens")

    def __init__(self, rate: float, size: float, now: float, *, empty: bool = False) -> None:
        self.rate = rate
        self.size = size
        self.tokens = 0.0 if empty else float(size)
        self._stamp = now

    def reconfigure(self, rate: float, size: float, now: float) -> None:
        """Take a new rate and size; the tokens held stay (capped by the new size)."""
        self._refill(now)
        self.rate = rate
        self.size = size
        self.tokens = min(self.tokens, size)

    def reserve(self, now: float, max_wait: float) -> float | None:
        """Take a token; return the seconds until it is due (``None``: later than ``max_wait``)."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        wait = (1.0 - self.tokens) / self.rate
        if wait > max_wait:
            return None
        self.tokens -= 1.0
        return wait

    def wait_for_token(self, now: float) -> float:
        """Return the seconds until a token is free."""
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) / self.rate)

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        if elapsed > 0:
            self.tokens = min(self.size, self.tokens + elapsed * self.rate)
            self._stamp = now
