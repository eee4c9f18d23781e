"""What the router knows of each endpoint: its record, its status, and which failures count."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, final

import msgspec

from healkit._errors import (
    CircuitOpenError,
    ConnectError,
    ConnectTimeout,
    DeadlineExceeded,
    HealkitError,
    HTTPStatusError,
    OverloadError,
    TimeoutExceeded,
    TransportError,
)

if TYPE_CHECKING:
    from healkit._context import AttemptContext, CallContext
    from healkit._routing.settings import RoutingPlan, RoutingSettings

__all__ = [
    "EndpointStatus",
    "Health",
    "counts_against",
    "failed_groups",
    "moves_on",
    "resendable",
]


@final
class EndpointStatus(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint of a service as the router sees it now.

    Attributes:
        service: the service.
        endpoint: the endpoint.
        group: 0 for the primary group, 1 for the first fallback group, ...
        usable: whether an attempt may go there now.
        ejected_for: seconds of ejection left (0: not ejected).
        down: whether its probes take it for down.
        fleet_reports: instances (this one included) that report it out.
        consecutive_failures: failures since its last success.
        outstanding: attempts in flight there.

    """

    service: str
    endpoint: str
    group: int
    usable: bool
    ejected_for: float
    down: bool
    fleet_reports: int
    consecutive_failures: int
    outstanding: int


@final
class Health:
    """What the router remembers of one endpoint of one service.

    ``ejected_until`` is when its ejection ends or ended (``-inf``: never
    ejected); ``ejections`` the ejections still remembered (see :meth:`eject`);
    ``probe_failed`` whether its probes saw it fail since it was last ejected
    (the last probe before the ejection, or one after it).
    """

    __slots__ = (
        "down",
        "ejected_until",
        "ejections",
        "failures",
        "outstanding",
        "probe_failed",
        "probes_bad",
        "probes_good",
        "returned_at",
    )

    def __init__(self) -> None:
        self.failures = 0
        self.ejections = 0
        self.ejected_until = -math.inf
        self.outstanding = 0
        self.down = False
        self.probes_good = 0
        self.probes_bad = 0
        self.probe_failed = False
        self.returned_at = -math.inf

    def eject(self, settings: RoutingSettings, now: float) -> float:
        """Eject the endpoint from ``now``; return for how many seconds.

        Each earlier ejection still remembered doubles the time, up to
        ``eject_time_max``; one is forgotten for each ``eject_decay`` seconds
        since the last ejection ended, and no more are remembered than it
        takes to reach the cap (``ejections`` counts this one too: at most
        one more). The probes' good answers so far no longer count
        (:func:`~healkit._routing.probes.count_probe`); if the last probe
        failed, the probes saw what the calls saw (a crash) and their next
        good streak may end the ejection.
        """
        doublings, decay = settings.eject_doublings, settings.eject_decay
        # Beyond the cap an ejection adds nothing to remember: the next is as long.
        remembered = min(self.ejections, doublings)
        quiet = max(now - self.ejected_until, 0.0)  # inf: never ejected
        remembered = 0 if quiet >= decay * remembered else remembered - int(quiet // decay)
        seconds = settings.ejection_time(remembered)
        self.ejections = min(remembered + 1, doublings + 1)
        self.ejected_until = now + seconds
        self.failures = 0
        self.probes_good = 0
        self.probe_failed = self.probes_bad > 0
        return seconds


def failed_groups(
    call: CallContext, plan: RoutingPlan, attempts: Sequence[AttemptContext]
) -> frozenset[int]:
    """Return the groups ``attempts`` failed on in a way that moves the call on."""
    return frozenset(
        plan.group_of.get(a.endpoint, 0)
        for a in attempts
        if a.error is not None and moves_on(call, a.error)
    )


def moves_on(call: CallContext, error: HealkitError) -> bool:
    """Whether ``error`` says the endpoint failed and the request may go to another group."""
    if isinstance(error, HTTPStatusError):
        failed = error.status >= 500
    else:
        failed = isinstance(
            error, TransportError | CircuitOpenError | TimeoutExceeded
        ) and not isinstance(error, DeadlineExceeded)
    return failed and (not error.may_have_reached_server or resendable(call))


def fails_over(error: HealkitError) -> bool:
    """Whether ``error`` never reached the server and another endpoint may take the call."""
    if isinstance(error, OverloadError):
        return error.endpoint is not None  # a per-service limit would refuse on every endpoint
    # A redirect's target refused: the first hop was answered, the request arrived.
    return (
        isinstance(error, ConnectError | ConnectTimeout | CircuitOpenError)
        and not error.may_have_reached_server
    )


def resendable(call: CallContext) -> bool:
    """Whether the request may be sent again although it may have reached a server."""
    return call.idempotent and call.replayable


def counts_against(call: CallContext, attempt: AttemptContext, error: HealkitError) -> bool:
    """Whether ``error`` says the endpoint failed (not the caller, not another plugin)."""
    if isinstance(error, HTTPStatusError):
        return error.status >= 500
    if isinstance(error, DeadlineExceeded):
        return call.deadline > attempt.started  # the attempt was sent, and timed out
    # No connection, a broken one, or an answer that is not HTTP (ProtocolError).
    return isinstance(error, TransportError | TimeoutExceeded)
