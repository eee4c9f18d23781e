"""The ``limit`` section of a service document, and its validation."""

from __future__ import annotations

from typing import Annotated, Final, Literal, final

import msgspec

import healkit

__all__ = [
    "MAX_CONCURRENCY",
    "MAX_QUEUE",
    "SECTION",
    "LimitSettings",
    "RateMode",
    "RateScope",
    "Scope",
]

Scope = Literal["service", "endpoint"]
"""What one limit guards: the service as a whole, or each endpoint of it."""
RateMode = Literal["refuse", "smooth"]
"""Without a token: refuse at once (token bucket), or wait for the next one (leaky bucket)."""
RateScope = Literal["instance", "fleet"]
"""Whose total ``rate`` and ``burst`` are: this instance's, or the whole fleet's (shared)."""

MAX_CONCURRENCY: Final = 100_000
MAX_QUEUE: Final = 100_000

Seconds = Annotated[float, msgspec.Meta(ge=0, le=3600.0)]
Positive = Annotated[float, msgspec.Meta(gt=0, le=3600.0)]
Concurrency = Annotated[int, msgspec.Meta(ge=1, le=MAX_CONCURRENCY)]
Status = Annotated[int, msgspec.Meta(ge=400, le=599)]


@final
class LimitSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``limit`` section of a service document.

    Every limit is off by default: installing the plugin changes nothing until
    a service (or ``defaults``) asks for one. ``docs/plugins/limit.md`` gives
    the reason for each default.

    Attributes:
        scope: ``service`` (one set of limits for the whole service) or
            ``endpoint`` (one per endpoint). Decorated functions have no
            endpoint: their limits are always the service's.
        concurrency: the most attempts in flight at once (``null``: no
            concurrency limit). With ``adaptive``, the limit to start from.
        queue: attempts that may wait for a free slot when all are taken;
            beyond it an attempt is refused at once.
        max_wait: seconds an attempt may wait in the queue (never past the
            call's deadline) before it is refused.
        adaptive: let the concurrency limit follow the upstream's latency
            (the gradient controller).
        min_concurrency: the adaptive limit's floor.
        max_concurrency: the adaptive limit's ceiling.
        tolerance: how much slower than the unloaded latency the upstream may
            answer before the adaptive limit shrinks (1.25: 25 % slower).
        smoothing: the weight of each new estimate of the adaptive limit,
            one per round trip (0 to 1; lower moves more slowly).
        min_rtt_window: how often, in seconds, the unloaded latency is
            measured again (the limit pinned to ``min_concurrency`` for a few
            answers), so the limit re-learns an upstream that became slower
            for good.
        backoff: the factor the adaptive limit is multiplied by when an
            attempt times out or is rejected with one of ``reject_statuses``.
        throttle: client-side adaptive throttling (SRE book, "Handling
            Overload"): refuse locally with probability
            ``max(0, (requests - throttle_k * accepts) / (requests + 1))``.
        throttle_k: the multiplier ``K``; lower throttles sooner.
        throttle_window: seconds over which requests and accepts are counted.
        reject_statuses: the statuses that mean the upstream rejected the
            call for load (not accepted, for throttling; a drop, for the
            adaptive limit).
        rate: the most attempts per second (``null``: no rate limit).
        burst: tokens the bucket holds: attempts that may go at once after a
            quiet period (``null``: one second's worth, at least 1).
        rate_mode: ``refuse`` (no token: refused at once) or ``smooth`` (the
            attempt waits for its token, at most ``max_wait``: calls are
            spaced as a leaky bucket does).
        rate_scope: ``instance`` (``rate`` and ``burst`` are this instance's)
            or ``fleet`` (they are the fleet's total: each instance applies
            its share, ``rate / n`` and ``burst / n`` but at least one token,
            ``n`` the live instances of the namespace that etcd's fleet
            health records show; its bucket starts empty).

    """

    scope: Scope = "service"
    concurrency: Concurrency | None = None
    queue: Annotated[int, msgspec.Meta(ge=0, le=MAX_QUEUE)] = 0
    max_wait: Seconds = 1.0
    adaptive: bool = False
    min_concurrency: Concurrency = 1
    max_concurrency: Concurrency = 1000
    tolerance: Annotated[float, msgspec.Meta(ge=1.0, le=10.0)] = 1.25
    smoothing: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2
    min_rtt_window: Positive = 30.0
    backoff: Annotated[float, msgspec.Meta(ge=0.5, lt=1)] = 0.9
    throttle: bool = False
    throttle_k: Annotated[float, msgspec.Meta(ge=1.0, le=100.0)] = 2.0
    throttle_window: Annotated[float, msgspec.Meta(ge=1.0, le=3600.0)] = 120.0
    reject_statuses: tuple[Status, ...] = (429, 503)
    rate: Annotated[float, msgspec.Meta(gt=0, le=1_000_000.0)] | None = None
    burst: Concurrency | None = None
    rate_mode: RateMode = "refuse"
    rate_scope: RateScope = "instance"

    def __post_init__(self) -> None:
        """Check what one field alone cannot say."""
        if self.min_concurrency > self.max_concurrency:
            raise ValueError(
                f"min_concurrency ({self.min_concurrency}) must not exceed"
                f" max_concurrency ({self.max_concurrency})"
            )
        if self.adaptive and self.concurrency is None:
            raise ValueError("adaptive needs concurrency: the limit to start from")
        if self.concurrency is None and self.queue:
            raise ValueError("queue needs concurrency: there is nothing to wait for")
        if len(set(self.reject_statuses)) != len(self.reject_statuses):
            raise ValueError("reject_statuses must not repeat")
        if self.burst is not None and self.rate is None:
            raise ValueError("burst needs rate")
        if self.rate_scope == "fleet" and self.rate is None:
            raise ValueError('rate_scope = "fleet" needs rate: the fleet\'s total')

    @property
    def active(self) -> bool:
        """Whether any limit is on."""
        return self.concurrency is not None or self.throttle or self.rate is not None

    @property
    def bucket_size(self) -> int:
        """The rate limit's bucket: ``burst``, or one second's worth (at least 1)."""
        if self.burst is not None:
            return self.burst
        return max(1, int(self.rate or 1))

    def bucket(self, instances: int) -> tuple[float, float]:
        """Return the rate and the bucket size this instance applies.

        With ``rate_scope = "instance"``, ``rate`` and :attr:`bucket_size` as
        written. With ``"fleet"``, one share of ``instances`` (at least 1):
        ``rate / n`` and ``bucket_size / n``, the bucket at least one token,
        or no attempt could ever take one.
        """
        rate, size = self.rate or 1.0, float(self.bucket_size)
        if self.rate_scope == "instance":
            return rate, size
        share = max(1, instances)
        return rate / share, max(1.0, size / share)


SECTION: Final = healkit.ConfigSection(
    "limit", LimitSettings, doc="concurrency limits, adaptive throttling and rate limits"
)
"""The ``limit`` section; read it with ``policy.section(SECTION)``."""
