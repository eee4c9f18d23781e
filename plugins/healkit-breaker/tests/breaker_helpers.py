"""Helpers shared by the breaker plugin's tests (fixtures are in conftest.py)."""

from __future__ import annotations

from typing import Any

import healkit
from healkit_breaker import BreakerTransition


class Events:
    """An observer plugin that collects the breaker transitions emitted to ``healkit_event``."""

    healkit_name = "breaker-events"
    healkit_observer = True

    def __init__(self) -> None:
        self.received: list[BreakerTransition] = []

    @healkit.hookimpl
    def healkit_event(self, event: object) -> None:
        if isinstance(event, BreakerTransition):
            self.received.append(event)

    def moves(self) -> list[tuple[str, str, str]]:
        """(from, to, reason) of each transition, in order."""
        return [(e.from_state.value, e.to_state.value, e.reason) for e in self.received]


def document(
    endpoints: list[str] | None = None, name: str = "svc", **breaker: Any
) -> dict[str, Any]:
    """A one-service document with a ``breaker`` section."""
    service: dict[str, Any] = {"breaker": breaker}
    if endpoints:
        service["endpoints"] = endpoints
    return {"services": {name: service}}
