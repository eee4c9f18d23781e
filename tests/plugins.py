"""Small decision plugins for tests of the core (the real retry and breaker
plugins come with their own distributions)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import healkit


class RetryUpTo:
    """Propose another attempt after ``delay`` until ``attempts`` were made."""

    healkit_name = "retry-up-to"

    def __init__(self, attempts: int, delay: float = 0.0) -> None:
        self.attempts = attempts
        self.delay = delay

    @healkit.hookimpl
    def healkit_on_error(self, attempt: healkit.AttemptContext) -> healkit.RetryDecision | None:
        if attempt.number < self.attempts:
            return healkit.RetryDecision.again(self.delay)
        return None


class FailOnStatus:
    """Declare responses with one of ``statuses`` failures."""

    healkit_name = "fail-on-status"

    def __init__(self, *statuses: int) -> None:
        self.statuses = frozenset(statuses)

    @healkit.hookimpl
    def healkit_post_response(
        self, response: healkit.Response | None
    ) -> healkit.HealkitError | None:
        if response is not None and response.status in self.statuses:
            return healkit.HTTPStatusError(response.status, url=response.url)
        return None


class StaticFallback:
    """Answer failed calls with a fixed value, optionally after awaiting."""

    healkit_name = "static-fallback"

    def __init__(self, value: Any, *, path: str = "fallback", awaited: bool = False) -> None:
        self.value = value
        self.path = path
        self.awaited = awaited
        self.errors: list[healkit.HealkitError] = []

    @healkit.hookimpl
    def healkit_fallback(
        self, error: healkit.HealkitError
    ) -> healkit.Fallback | Awaitable[healkit.Fallback | None] | None:
        self.errors.append(error)
        fallback = healkit.Fallback(self.value, path=self.path)  # type: ignore[arg-type]
        if self.awaited:

            async def later() -> healkit.Fallback:
                return fallback

            return later()
        return fallback


class Recorder:
    """An observer that records every hook call."""

    healkit_name = "recorder"
    healkit_observer = True

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    @healkit.hookimpl
    def healkit_pre_request(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> None:
        self.events.append(("pre_request", (attempt.number, attempt.timeouts, call.deadline)))

    @healkit.hookimpl
    def healkit_post_response(self, attempt: healkit.AttemptContext, response: Any) -> None:
        self.events.append(("post_response", attempt.number))

    @healkit.hookimpl
    def healkit_on_error(
        self, attempt: healkit.AttemptContext, error: healkit.HealkitError
    ) -> None:
        self.events.append(("on_error", type(error).__name__))

    @healkit.hookimpl
    def healkit_call_end(
        self, outcome: healkit.Outcome, error: healkit.HealkitError | None
    ) -> None:
        self.events.append(("call_end", (outcome.path, type(error).__name__ if error else None)))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]
