"""healkit-timeout: connect, read, per-attempt and per-call time limits per service.

Configure per service (or under ``defaults``) in the ``timeout`` section::

    [services.payments.timeout]
    connect = 1.0     # TCP/TLS connect, waiting for a pooled connection included
    read = 5.0        # until the first byte, and between two reads
    attempt = 8.0     # one attempt, start to end of its body (default: min(30, deadline / 2))
    deadline = 20.0   # the whole call: every attempt and every backoff sleep

Each limit raises its own error: :class:`healkit.ConnectTimeout`,
:class:`healkit.ReadTimeout`, :class:`healkit.AttemptTimeout`,
:class:`healkit.DeadlineExceeded`. A caller's own deadline (``deadline=`` on
the call, or an enclosing anyio cancel scope) still applies: the earliest wins.

The plugin has no per-call hook: it answers ``healkit_attempt_timeouts`` and
``healkit_call_deadline`` once per service and configuration snapshot, and the
executor applies the limits to every call and attempt before any per-call hook
runs, so every plugin (a retry plugin checking the time left) sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final, final

import msgspec

import healkit

__all__ = ["SECTION", "TimeoutPlugin", "TimeoutSettings"]

Seconds = Annotated[float, msgspec.Meta(gt=0, le=24 * 3600.0)]
DEFAULT_ATTEMPT: Final = 30.0


@final
class TimeoutSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``timeout`` section of a service document (seconds).

    Attributes:
        connect: connecting, TLS handshake and pool wait included. Default 5 s:
            a healthy peer on a data-center network connects in milliseconds.
        read: until the first byte of the response, and between two reads.
            Default 30 s.
        attempt: one attempt as a whole, body included. Default: the smaller of
            30 s and half of ``deadline``, so that an attempt that hangs leaves
            the call time for a second one (a retry, a fallback group) whatever
            the deadline, and setting ``deadline`` alone is enough.
        deadline: the whole call, across attempts and backoff. Default 60 s.

    """

    connect: Seconds = 5.0
    read: Seconds = 30.0
    attempt: Seconds | None = None
    deadline: Seconds = 60.0

    def __post_init__(self) -> None:
        """Reject an attempt limit longer than the call's deadline."""
        if self.attempt is not None and self.attempt > self.deadline:
            raise ValueError(
                f"attempt ({self.attempt}s) must not exceed deadline ({self.deadline}s)"
            )

    @property
    def attempt_limit(self) -> float:
        """The limit of one attempt: ``attempt``, or by default min(30 s, ``deadline`` / 2)."""
        if self.attempt is not None:
            return self.attempt
        return min(DEFAULT_ATTEMPT, self.deadline / 2)


SECTION: Final = healkit.ConfigSection(
    "timeout", TimeoutSettings, doc="time limits of attempts and calls"
)


@final
class TimeoutPlugin:
    """Gives every call and attempt the time limits of the ``timeout`` section of its service."""

    __slots__ = ()

    healkit_name = "timeout"

    @healkit.hookimpl
    def healkit_config_sections(self) -> Sequence[healkit.ConfigSection[Any]]:
        """Contribute the ``timeout`` section."""
        return (SECTION,)

    @healkit.hookimpl
    def healkit_attempt_timeouts(self, policy: healkit.ServicePolicy) -> healkit.Timeouts:
        """Return the limits of each attempt to ``policy``'s service (probes included).

        Asked once per service and configuration snapshot: the runtime keeps the answer.
        """
        settings = policy.section(SECTION)
        return healkit.Timeouts(
            connect=settings.connect, read=settings.read, total=settings.attempt_limit
        )

    @healkit.hookimpl
    def healkit_call_deadline(self, policy: healkit.ServicePolicy) -> float:
        """Return the seconds a whole call to ``policy``'s service may take."""
        return policy.section(SECTION).deadline
