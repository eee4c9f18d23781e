"""What a call did: the path it took and the record of each attempt.

These are frozen values handed to users (``Response.outcome``, ``error.attempts``)
and to observing plugins; they never change once made.
"""

from __future__ import annotations

from typing import Literal, final

import msgspec

__all__ = ["AttemptRecord", "Outcome", "PathTaken", "RedirectRecord"]

PathTaken = Literal["primary", "retry", "fallback", "degraded"]
"""How a call got its answer.

``primary``: the first attempt succeeded. ``retry``: a later attempt succeeded.
``fallback``: a substitute from a fallback endpoint or cache. ``degraded``: a
degraded response built from a template.
"""


@final
class RedirectRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One redirect an attempt followed: a hop that answered 301, 302, 303, 307 or 308.

    Attributes:
        url: the URL that answered with the redirect (redacted as in logs).
        status: the redirect's status.
        location: where it sent the request next (resolved, redacted).
        method: the method of the next hop (``GET`` after a 303, or after a
            301/302 answering a POST).

    """

    url: str
    status: int
    location: str
    method: str


@final
class AttemptRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of a call, as it ended.

    Attributes:
        number: 1 for the first attempt.
        endpoint: the endpoint (base URL) tried, or ``None`` for a decorated function.
        status: the HTTP status received, if a response arrived.
        error: the name of the healkit error class if the attempt failed.
        reason: the error message (redacted) if the attempt failed.
        started: monotonic start time.
        duration: seconds from start to the end of the attempt.
        redirects: the redirects this attempt followed, in order (``status``
            and ``error`` are those of the last hop).
        hedge: whether the attempt was a hedge: sent while an earlier attempt
            of the call was still in flight (``healkit_hedge_delay``).
        cancelled: whether healkit cancelled the attempt because another one
            answered first (or the call was abandoned while it was in
            flight): not a failure, and ``error`` is ``None``.

    """

    number: int
    endpoint: str | None
    started: float
    duration: float
    status: int | None = None
    error: str | None = None
    reason: str | None = None
    redirects: tuple[RedirectRecord, ...] = ()
    hedge: bool = False
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        """Whether the attempt succeeded (a cancelled attempt did not)."""
        return self.error is None and not self.cancelled

    def describe(self) -> str:
        """Return a one-line summary, used in error messages.

        ``#2 https://a.example HTTP 200 in 3.1ms`` for an HTTP attempt that was
        answered, ``#1 call returned in 0.4ms`` for a decorated function's
        attempt that returned, the error's class name for a failed attempt,
        ``no answer yet`` for an HTTP attempt still in flight.
        """
        where = self.endpoint or "call"
        if self.hedge:
            where = f"{where} (hedge)"
        if self.cancelled:
            return f"#{self.number} {where} cancelled after {self.duration * 1000:.1f}ms"
        if self.error is not None:
            result = self.error if self.status is None else f"{self.error} (HTTP {self.status})"
        elif self.status is not None:
            result = f"HTTP {self.status}"
        elif self.endpoint is None:
            result = "returned"  # a decorated function's attempt: no endpoint, no status
        else:  # a record taken while the attempt is in flight: it has no duration yet
            return f"#{self.number} {where} no answer yet"
        if self.redirects:
            count = len(self.redirects)
            result = f"{result} after {count} redirect{'s' if count > 1 else ''}"
        return f"#{self.number} {where} {result} in {self.duration * 1000:.1f}ms"


@final
class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """How a call ended.

    Attributes:
        service: the service the call was made for.
        path: the path taken (see :data:`PathTaken`).
        attempts: every attempt, oldest first.
        endpoint: the endpoint that answered (``None`` for a degraded response
            or a decorated function).
        duration: seconds from the start of the call to its end.
        winner: the number of the attempt whose answer the call returned
            (``attempts[winner - 1]``); ``None`` when none did (a degraded
            answer, a cached substitute, a failed call). With hedging it need
            not be the last attempt.

    """

    service: str
    path: PathTaken
    attempts: tuple[AttemptRecord, ...]
    endpoint: str | None
    duration: float
    winner: int | None = None

    @property
    def redirects(self) -> tuple[RedirectRecord, ...]:
        """The redirects followed by the attempt that answered (empty if none answered)."""
        if self.winner is None:
            return ()
        return self.attempts[self.winner - 1].redirects
