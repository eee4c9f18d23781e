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


def request_budget_is_typed(now: float) -> None:
    """RequestBudget takes its parameters by keyword; its counts are ints."""
    budget = healkit.plugin.RequestBudget(ratio=0.1, window=10.0, minimum_per_second=1.0)
    budget.record_request(now)
    assert_type(budget.try_spend(now), bool)
    assert_type(budget.spent, int)
    assert_type(budget.params, healkit.plugin.BudgetParams)
    healkit.plugin.RequestBudget(0.1, 10.0, 1.0)  # type: ignore[call-arg]
