"""The plugin's per-policy and per-attempt state, kept in healkit stashes."""

from __future__ import annotations

from contextvars import Token
from typing import TYPE_CHECKING, Final, final

import healkit
from healkit_tracing._settings import SECTION, TracingSettings

if TYPE_CHECKING:
    from opentelemetry import trace

    from healkit_tracing._logging import OpenSpan

__all__ = ["ATTEMPT", "POLICY", "AttemptSpan", "Policy", "attempt_span", "policy_of"]


@final
class Policy:
    """A service policy's ``tracing`` settings, compiled once per configuration snapshot."""

    __slots__ = ("enabled", "metrics", "propagate", "timings")

    def __init__(self, settings: TracingSettings) -> None:
        self.enabled = settings.enabled
        self.propagate = settings.propagate
        self.metrics = settings.record_metrics
        self.timings = settings.connection_timings


POLICY: Final = healkit.StashKey[Policy]("healkit_tracing.policy")


def policy_of(policy: healkit.ServicePolicy) -> Policy:
    """Return the compiled ``tracing`` settings of ``policy`` (compiled on first use)."""
    compiled = policy.stash.get(POLICY)
    if compiled is None:
        compiled = policy.stash[POLICY] = Policy(policy.section(SECTION))
    return compiled


@final
class AttemptSpan:
    """The plugin's state of one attempt, in ``attempt.stash``.

    Made only while spans or metrics may be recorded (an SDK is installed):
    without one, no attempt gets a state. ``span`` is the API's
    ``INVALID_SPAN`` when only metrics may be recorded.
    """

    __slots__ = (
        "attempt",
        "call",
        "end_ns",
        "ended",
        "metrics",
        "policy",
        "sent",
        "span",
        "token",
    )

    def __init__(  # noqa: PLR0913 - a state is a bag of named facts
        self,
        call: healkit.CallContext,
        attempt: healkit.AttemptContext,
        span: trace.Span,
        policy: Policy,
        *,
        sent: bool,
        metrics: bool,
    ) -> None:
        self.call = call
        self.attempt = attempt
        self.span = span
        self.policy = policy
        self.sent = sent
        self.metrics = metrics
        self.ended = False
        self.end_ns = 0
        self.token: Token[OpenSpan | None] | None = None

    def __repr__(self) -> str:
        return f"<AttemptSpan #{self.attempt.number} {'ended' if self.ended else 'open'}>"


ATTEMPT: Final = healkit.StashKey[AttemptSpan]("healkit_tracing.attempt")


def attempt_span(attempt: healkit.AttemptContext) -> AttemptSpan | None:
    """Return the plugin's state of ``attempt``, if the plugin traced it."""
    return attempt.stash.get(ATTEMPT)
