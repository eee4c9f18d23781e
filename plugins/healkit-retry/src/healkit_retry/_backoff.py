"""Backoff delays and ``Retry-After``: pure functions, so their bounds can be proven.

Both jitter strategies take ``draw``, a number in ``[0, 1)`` from the plugin's
random generator, instead of drawing it themselves: the functions are then
deterministic, and tests can cover every draw.

* Full jitter: the ``n``-th retry waits ``draw * min(cap, base * 2**(n-1))``.
  Delays spread evenly from 0 to the exponential step, which de-synchronizes
  clients the most.
* Decorrelated jitter: a retry waits between ``base`` and three times the
  previous delay (``base`` if there was none), never more than ``cap``. Delays
  still grow, with less chance of a near-zero wait after a long one.
"""

from __future__ import annotations

import email.utils
import math
import re
from datetime import UTC
from typing import Final

__all__ = ["decorrelated_jitter", "full_jitter", "parse_retry_after"]

# ASCII digits only: \d (and float()) also take other scripts' digits, "٣" among them.
_DELAY_SECONDS: Final = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?")
# The exponent beyond which base * 2**n exceeds any cap a document may set.
_MAX_DOUBLINGS: Final = 64


def full_jitter(retry: int, *, base: float, cap: float, draw: float) -> float:
    """Return the delay before retry number ``retry`` (1 for the first retry).

    The result is in ``[0, min(cap, base * 2**(retry-1))]``.
    """
    step = base * 2.0 ** min(max(retry - 1, 0), _MAX_DOUBLINGS)
    return min(cap, step) * draw


def decorrelated_jitter(previous: float, *, base: float, cap: float, draw: float) -> float:
    """Return a delay between ``base`` and ``min(cap, 3 * previous)``.

    ``previous`` is the delay slept before the attempt that just failed (0 for
    the first attempt, which counts as ``base``). Requires ``base <= cap``.
    """
    upper = min(cap, 3.0 * max(previous, base))
    return base + (upper - base) * draw


def parse_retry_after(value: str, *, wall_now: float) -> float | None:
    """Return the seconds to wait that a ``Retry-After`` header asks for.

    Accepts both forms of RFC 9110: ``delay-seconds`` (``"120"``; a fraction is
    tolerated) and an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``), which is
    compared with ``wall_now`` (seconds since the epoch). A date in the past
    means 0. Returns ``None`` for a value that is neither.
    """
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; obsolete forms may omit it
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - wall_now
    return max(0.0, seconds) if math.isfinite(seconds) else None
