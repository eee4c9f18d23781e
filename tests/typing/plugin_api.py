"""Typing test of the plugin author's API, checked by ``mypy --strict`` (``nox -s typecheck``).

Not run, only type-checked; a ``# type: ignore[code]`` marks a line mypy must
reject (``warn_unused_ignores`` fails the check once it no longer does).
"""

from __future__ import annotations

import ssl
from typing import ClassVar, assert_type

import healkit
import healkit.events
import healkit.plugin


class Breaker(healkit.plugin.Plugin):
    """A plugin declaring the attributes of the protocol explicitly."""

    healkit_name: ClassVar[str] = "my-breaker"
    healkit_observer: ClassVar[bool] = False

    @healkit.plugin.hookimpl
    def healkit_endpoint_available(self, service: str, endpoint: str) -> bool | None:
        return None

    @healkit.plugin.hookimpl
    def healkit_circuit_state(
        self, service: str, endpoint: str | None
    ) -> healkit.plugin.CircuitState | None:
        return healkit.plugin.CircuitState(state="open", retry_at=None)

    @healkit.plugin.hookimpl
    def healkit_tls_context(self, service: str) -> ssl.SSLContext | None:
        return None


def events_are_typed(event: object) -> None:
    """Fields of the core's events are typed; the events are frozen."""
    if isinstance(event, healkit.events.EndpointEjected):
        assert_type(event.seconds, float)
        event.seconds = 1.0  # type: ignore[misc]
    if isinstance(event, healkit.events.CircuitTransition):
        assert_type(event.to_state, str)
        assert_type(event.endpoint, str | None)


def the_namespaces_agree() -> None:
    """Top-level names kept for compatibility are the plugin namespace's."""
    key: healkit.plugin.StashKey[int] = healkit.StashKey[int]("k")
    assert_type(key, healkit.plugin.StashKey[int])
    runtime = healkit.plugin.Runtime(entry_points=False)
    status = healkit.endpoint_status(runtime, "svc")
    assert_type(status, tuple[healkit.EndpointStatus, ...])
