"""Deadline propagation: stop work that nobody will wait for.

Two halves, one format. On the way out, a service whose configuration names a
``deadline_header`` sends, with every HTTP attempt, the time the call has left
at the moment the attempt is sent: whole milliseconds, rounded down (after
rounding to the microsecond, so float noise costs no millisecond), never
negative, at most :data:`MAX_INBOUND_MS` (``X-Request-Deadline-Ms: 2350``). On
the way in, a server reads that header from the request it is handling with
:func:`deadline_from`; inside the
``with`` block, every healkit call (client requests, the middleware, decorated
functions) ends by that deadline at the latest::

    async def handler(request: web.Request) -> web.Response:
        with healkit.deadlines.deadline_from(request.headers, header="X-Request-Deadline-Ms"):
            answer = await client.get("/stock", service="inventory")
        ...

A value is a string of ASCII digits: the milliseconds left. Anything else (a
sign, a fraction, a unit, an empty value, more than 20 characters, more than
:data:`MAX_VALUES` values) is invalid; several values (repeated header lines or
a comma-separated list) are all checked and the smallest wins, so a proxy that
appends its own budget can only shorten the deadline. A value above
:data:`MAX_INBOUND_MS` (24 hours) counts as 24 hours.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Final, Literal

from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

from healkit._clock import SYSTEM_CLOCK, Clock
from healkit._errors import DeadlineHeaderError

if TYPE_CHECKING:
    from healkit._context import AttemptContext, CallContext

__all__ = ["MAX_INBOUND_MS", "MAX_VALUES", "deadline_from"]

MAX_INBOUND_MS: Final = 86_400_000
"""The longest inbound deadline honoured, in milliseconds (24 hours); longer counts as this."""

MAX_VALUES: Final = 16
"""The most values one inbound deadline header may carry (lines and comma-separated items)."""

_MAX_VALUE_CHARS: Final = 20
_DIGITS: Final = re.compile(r"[0-9]+")

INBOUND_DEADLINE: Final[ContextVar[float]] = ContextVar(
    "healkit.inbound_deadline", default=math.inf
)
"""The scope's deadline on the call clocks' time base (``math.inf`` outside any scope).

The executor reads it once per call and takes the earlier of it and the call's
own deadline. Not public: set it with :func:`deadline_from`.
"""


@contextlib.contextmanager
def deadline_from(
    headers: Mapping[str, str] | MultiMapping[str],
    *,
    header: str,
    clock: Clock = SYSTEM_CLOCK,
    on_invalid: Literal["raise", "ignore"] = "raise",
) -> Iterator[float | None]:
    """Bound every healkit call inside the block by an inbound request's deadline.

    Args:
        headers: the inbound request's headers: an aiohttp
            ``request.headers`` or any other multidict (every repeated line
            read), or any mapping; names are matched without regard to case,
            also in a case-sensitive ``multidict.MultiDict``.
        header: the header's name, as the calling service's ``deadline_header``
            sends it.
        clock: the clock of the clients whose calls the block bounds (the
            monotonic clock unless they were given another one).
        on_invalid: ``"raise"`` raises :class:`healkit.DeadlineHeaderError` for
            an invalid value (answer your caller ``400``); ``"ignore"`` leaves
            the calls to their own limits, as if the header were absent.

    Yields:
        the seconds granted (after the 24-hour cap), or ``None`` when the header
        is absent (or invalid and ignored): then the block changes nothing.

    Raises:
        DeadlineHeaderError: an invalid value, with ``on_invalid="raise"``.

    Scopes nest: an inner one can shorten the deadline, never extend it. A
    header of ``0`` is valid: calls inside fail at once with
    :class:`healkit.DeadlineExceeded`.

    """
    try:
        granted = _granted_ms(headers, header)
    except DeadlineHeaderError:
        if on_invalid == "raise":
            raise
        granted = None
    if granted is None:
        yield None
        return
    seconds = granted / 1000
    deadline = clock.now() + seconds
    token = INBOUND_DEADLINE.set(min(deadline, INBOUND_DEADLINE.get()))
    try:
        yield seconds
    finally:
        INBOUND_DEADLINE.reset(token)


def _granted_ms(headers: Mapping[str, str] | MultiMapping[str], header: str) -> int | None:
    """Return the smallest valid value of ``header`` (capped), ``None`` if absent."""
    if isinstance(headers, CIMultiDict | CIMultiDictProxy):
        lines = headers.getall(header, ())
    else:  # a case-sensitive multidict's items() has every line too
        wanted = header.lower()
        lines = [value for name, value in headers.items() if name.lower() == wanted]
    if not lines:
        return None
    smallest = MAX_INBOUND_MS
    count = 0
    for line in lines:
        for item in line.split(",", MAX_VALUES):
            count += 1
            value = item.strip(" \t")
            if count > MAX_VALUES:
                raise _invalid(header, line, f"more than {MAX_VALUES} values")
            if len(value) > _MAX_VALUE_CHARS or not _DIGITS.fullmatch(value):
                raise _invalid(header, value, "not a whole number of milliseconds")
            smallest = min(smallest, int(value))
    return smallest


def _invalid(header: str, value: str, reason: str) -> DeadlineHeaderError:
    shown = value[:64]
    return DeadlineHeaderError(
        f"inbound deadline header {header}: {reason}: {shown!r}", header=header, value=shown
    )


def stamp_remaining(call: CallContext, attempt: AttemptContext, header: str) -> None:
    """Add ``header`` with the call's remaining milliseconds to ``attempt``, if finite.

    Counts the call's deadline and an enclosing anyio cancel scope's, from now.
    At most :data:`MAX_INBOUND_MS`: what a receiver counts anyway, and short
    enough for :func:`deadline_from` to accept (a 10**18-second deadline has
    22 digits).
    """
    left = min(call.deadline, call.scope_deadline) - call.clock.now()
    if left < math.inf:
        # To the microsecond first: 1000.4 - 1000.0 is 0.39999999999997726.
        ms = min(MAX_INBOUND_MS, max(0, round(left * 1_000_000) // 1000))
        attempt.headers[header] = str(ms)
