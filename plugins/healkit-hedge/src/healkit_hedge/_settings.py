"""The ``hedge`` section of a service document, and its validation."""

from __future__ import annotations

from typing import Annotated, Final, final

import msgspec

import healkit

__all__ = ["MAX_HEDGES", "SECTION", "HedgeSettings"]

MAX_HEDGES: Final = 5
"""The most hedges a call may send: beyond that, hedging only multiplies the load."""


@final
class HedgeSettings(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False
):
    """The ``hedge`` section of a service document.

    Attributes:
        enabled: send hedges for this service. Default off: a hedge is an
            extra request, which a service owner turns on knowingly.
        delay: seconds; a fixed hedge delay. ``None`` (the default): the delay
            follows ``percentile`` of the service's recent latency, and no
            hedge is sent until enough answers were timed to know it.
        percentile: which percentile of the recent latency the delay follows
            (strictly between 0 and 100). Default 90, to match the default
            budget of 10%: hedging after the p(100 - x) latency sends about x%
            extra requests, as Finagle's backup requests tie the two.
        min_delay: seconds; the floor of the delay, fixed or estimated.
            Default 0.01 s: below that, a hedge would answer the jitter of the
            event loop and of the network rather than a slow upstream, and the
            percentile of a very fast service would hedge nearly every call.
        max_hedges: hedges per call, at most (0 sends none). Default 1: one
            hedge removes most of the tail; more add load for little gain.
        budget_ratio: hedges may add at most this fraction of the service's
            requests in the last ``budget_window`` seconds. Default 0.1: at
            most 10% more requests, whatever the latency does.
        budget_window: seconds over which requests and hedges are counted.
            Default 10 s, as the retry budget's.
        budget_min_per_second: hedges allowed on top of the ratio, per second
            of window, so that a service with little traffic can still hedge.
            Default 1 per second (10 per default window): hedges are
            speculative, so the reserve is smaller than the retry budget's 3.

    """

    enabled: bool = False
    delay: Annotated[float, msgspec.Meta(gt=0, le=60.0)] | None = None
    percentile: Annotated[float, msgspec.Meta(gt=0, lt=100)] = 90.0
    min_delay: Annotated[float, msgspec.Meta(ge=0, le=60.0)] = 0.01
    max_hedges: Annotated[int, msgspec.Meta(ge=0, le=MAX_HEDGES)] = 1
    budget_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.1
    budget_window: Annotated[float, msgspec.Meta(gt=0, le=3600.0)] = 10.0
    budget_min_per_second: Annotated[float, msgspec.Meta(ge=0, le=10_000.0)] = 1.0

    @property
    def active(self) -> bool:
        """Whether this policy sends hedges at all."""
        return self.enabled and self.max_hedges > 0


SECTION: Final = healkit.ConfigSection(
    "hedge",
    HedgeSettings,
    doc="hedged requests: delay (fixed or a latency percentile), idempotency rules, hedge budget",
)
"""The ``hedge`` section; read it with ``policy.section(SECTION)``."""
