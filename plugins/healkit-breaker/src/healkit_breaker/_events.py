"""What a breaker tells the world: its states, its transitions, its status."""

from __future__ import annotations

import enum
from typing import Literal, final

import msgspec

from healkit.events import CircuitTransition

__all__ = ["BreakerStatus", "BreakerTransition", "State", "TransitionReason"]


class State(enum.StrEnum):
    """The state of one breaker (a ``str``: ``State.OPEN == "open"``).

    ``CLOSED``, ``OPEN`` and ``HALF_OPEN`` are the breaker's own; the other
    three are set by the ``mode`` an operator configures.
    """

    CLOSED = "closed"
    """Calls pass; outcomes are counted in the sliding window."""
    OPEN = "open"
    """Calls are refused with ``CircuitOpenError`` until the open duration has passed."""
    HALF_OPEN = "half_open"
    """A few probe calls pass; their outcomes decide between closed and open."""
    FORCED_OPEN = "forced_open"
    """``mode = "force_open"``: every call is refused."""
    FORCED_CLOSED = "forced_closed"
    """``mode = "force_closed"``: every call passes; outcomes are still counted."""
    DISABLED = "disabled"
    """``mode = "disabled"``: no breaker; nothing is counted."""


TransitionReason = Literal[
    "failure_rate",
    "slow_call_rate",
    "consecutive_failures",
    "open_duration_elapsed",
    "probes_succeeded",
    "probe_failed",
    "probe_slow",
    "mode",
    "reset",
]
"""Why a breaker changed state (see ``docs/plugins/breaker.md``)."""


@final
class BreakerTransition(CircuitTransition, frozen=True, kw_only=True):
    """A breaker changed state: emitted to ``healkit_event`` and logged.

    A :class:`healkit.events.CircuitTransition`, with the breaker's own states
    and the counts its decision was based on.

    Attributes:
        service: the service of the breaker.
        endpoint: the endpoint it guards; ``None`` for a per-service breaker
            (``scope = "service"``, or a decorated function).
        from_state: the state it left.
        to_state: the state it entered.
        reason: why.
        failures: failures among the outcomes the decision was based on: the
            sliding window's for a trip, the probes' for a half-open decision,
            the window's otherwise.
        calls: outcomes the decision was based on.
        slow_calls: slow calls among them.
        at: monotonic time of the transition, on the runtime's clock.

    """

    from_state: State
    to_state: State
    reason: TransitionReason
    failures: int
    calls: int
    slow_calls: int


@final
class BreakerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A breaker as it is now, for ``healkit status``, routing and tests.

    Attributes:
        service: the service of the breaker.
        endpoint: the endpoint it guards (``None``: the whole service).
        state: its state.
        window: ``"count"`` or ``"time"``.
        calls: outcomes in its sliding window.
        failures: failures among them.
        slow_calls: slow calls among them.
        consecutive_failures: failures since the last success.
        trips: consecutive trips without a close in between (the open duration
            doubles with each).
        retry_at: when it may admit a call again (monotonic), ``None`` if it
            admits calls now, ``math.inf`` if forced open.
        probes: probe calls in flight (half-open).

    """

    service: str
    endpoint: str | None
    state: State
    window: Literal["count", "time"]
    calls: int
    failures: int
    slow_calls: int
    consecutive_failures: int
    trips: int
    retry_at: float | None
    probes: int
