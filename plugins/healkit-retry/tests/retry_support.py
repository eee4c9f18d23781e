"""Helpers shared by the retry plugin's tests (a module of its own, not a conftest,
so that it cannot clash with the conftest of the core's tests)."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import healkit
from healkit_retry import SECTION, RetryPlugin

SERVICE = "svc"


def seeded(seed: int) -> random.Random:
    """A seeded generator for the jitter: reproducible delays (no security role)."""
    return random.Random(seed)  # noqa: S311


def document(endpoints: str | Sequence[str], **retry: Any) -> dict[str, Any]:
    """A one-service document with a ``retry`` section."""
    listed = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    return {"services": {SERVICE: {"endpoints": listed, "retry": retry}}}


def client(
    endpoints: str | Sequence[str],
    *extra: object,
    clock: healkit.Clock | None = None,
    seed: int = 7,
    wall_clock: Callable[[], float] = time.time,
    **retry: Any,
) -> healkit.Client:
    """A Client with the retry plugin (seeded) and ``extra`` plugins, no entry points."""
    plugin = RetryPlugin(rng=seeded(seed), wall_clock=wall_clock)
    options: dict[str, Any] = {} if clock is None else {"clock": clock}
    return healkit.Client(
        config=document(endpoints, **retry),
        plugins=[*extra, plugin],
        entry_points=False,
        **options,
    )


class Events:
    """An observer that keeps every event emitted."""

    healkit_name = "events"
    healkit_observer = True

    def __init__(self) -> None:
        self.seen: list[object] = []

    @healkit.hookimpl
    def healkit_event(self, event: object) -> None:
        self.seen.append(event)


class GateClock:
    """A real monotonic clock whose sleeps never end: only cancellation leaves them."""

    def __init__(self) -> None:
        self.sleeping = asyncio.Event()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.sleeping.set()
        await asyncio.Event().wait()


def call_context(
    config: healkit.HealkitConfig,
    clock: healkit.Clock,
    *,
    method: str = "GET",
    idempotent: bool | None = None,
    deadline: float = math.inf,
) -> healkit.CallContext:
    """A call of service ``svc`` made outside any event loop (no enclosing scope)."""
    policy = config.policy(SERVICE)
    return healkit.CallContext(
        service=SERVICE,
        transport="http",
        method=method,
        target="/x",
        config=config,
        policy=policy,
        clock=clock,
        idempotent=method in {"GET", "PUT"} if idempotent is None else idempotent,
        deadline=deadline,
        scope_deadline=math.inf,
    )


def build(endpoints: str | Sequence[str], **retry: Any) -> healkit.HealkitConfig:
    """A validated snapshot with the retry section."""
    return healkit.build_config(document(endpoints, **retry), [SECTION])
