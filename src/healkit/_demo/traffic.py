"""The demo's load generator: callers looping on one call, and what they counted.

Every call ends as a response (counted by ``response.outcome.path`` and status)
or as a :class:`healkit.HealkitError` (counted by type). Anything else is
*lost*, which is a bug in healkit: the demo shows it and exits with status 1.

Hedges and load-limit refusals are counted from each call's attempt records
(:class:`~healkit.AttemptRecord`: ``hedge``, ``error``, and the outcome's
``winner``), not from a plugin's internals: any hedging or limit plugin shows.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, final

from healkit._demo.scenes import PATH, SERVICE
from healkit._errors import (
    CircuitOpenError,
    HealkitError,
    OutcomeUnavailableError,
    OverloadError,
)
from healkit._outcome import AttemptRecord

if TYPE_CHECKING:
    from healkit._client import Client
    from healkit._demo import Say
    from healkit._demo.telemetry import Tracing

__all__ = ["REFUSALS", "Recent", "Tally", "Traffic", "failures", "percentile", "to_ms"]

ERROR_PAUSE: Final = 0.01
"""Seconds a caller pauses after an error or a degraded response before its
next call, as a client loop would: a refusal by an open breaker (answered by
the degraded template or not) takes microseconds, and callers that never wait
would keep the event loop from everything else."""
WINDOW: Final = 1.0
"""Seconds of recent traffic behind the live rates and percentiles."""
LOST_EXAMPLES: Final = 5
"""Lost calls described in the summary (the others are counted only)."""


def _subclasses(cls: type[HealkitError]) -> Iterator[type[HealkitError]]:
    yield cls
    for sub in cls.__subclasses__():
        yield from _subclasses(sub)


REFUSALS: Final = frozenset(cls.__name__ for cls in _subclasses(OverloadError))
"""The names of the errors of an attempt a load limit refused (``OverloadError`` and below)."""


@final
@dataclass(slots=True)
class Tally:
    """Counts and latencies of a set of calls (all of them, or one scene's).

    ``hedges``: attempts sent as hedges; ``hedges_won``: calls a hedge
    answered. ``refused``: calls a load limit refused an attempt of;
    ``refused_degraded``: those the degraded response answered. With
    ``keep_answered``, the latencies of the calls an upstream answered (not a
    template, not a refusal) are kept apart: the latency of admitted calls
    under a load limit.
    """

    keep_answered: bool = False
    requests: int = 0
    lost: int = 0
    retries: int = 0
    rejected_by_breaker: int = 0
    hedges: int = 0
    hedges_won: int = 0
    refused: int = 0
    refused_degraded: int = 0
    answered_ok: int = 0
    """Calls an upstream answered with a 2xx (the goodput's count)."""
    by_path: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    _sorted: list[float] = field(default_factory=list)
    _pending: list[float] = field(default_factory=list)
    _answered: list[float] = field(default_factory=list)

    def add(
        self,
        latency: float,
        attempts: Sequence[AttemptRecord],
        *,
        winner: int | None = None,
        label: str = "",
        status: str | None = None,
    ) -> None:
        """Count one finished call and its attempts (its outcome is counted by the caller).

        Args:
            latency: seconds the call took.
            attempts: its attempt records.
            winner: the number of the attempt whose answer the call returned.
            label: how it ended (a path, or ``error: <type>``).
            status: the status of its response, if it ended in one.

        """
        self.requests += 1
        self._pending.append(latency)
        if attempts:
            self.retries += sum(not attempt.hedge for attempt in attempts) - 1
            self.rejected_by_breaker += sum(
                attempt.error == CircuitOpenError.__name__ for attempt in attempts
            )
            self.hedges += sum(attempt.hedge for attempt in attempts)
            if any(attempt.error in REFUSALS for attempt in attempts):
                self.refused += 1
                self.refused_degraded += label == "degraded"
        if winner is None:
            return
        self.hedges_won += attempts[winner - 1].hedge
        self.answered_ok += status is not None and status.startswith("2")
        if self.keep_answered:
            self._answered.append(latency)

    def latencies(self) -> list[float]:
        """Every latency recorded, sorted (kept sorted between calls: cheap to repeat)."""
        if self._pending:
            self._sorted.extend(self._pending)
            self._pending.clear()
            self._sorted.sort()  # timsort merges the sorted run with the new tail
        return self._sorted

    def answered(self) -> list[float]:
        """Return the latencies of the calls an upstream answered, sorted (``keep_answered``)."""
        self._answered.sort()
        return self._answered

    def as_dict(self) -> dict[str, Any]:
        """Return the tally as JSON-ready values."""
        ordered = self.latencies()
        return {
            "requests": self.requests,
            "lost": self.lost,
            "retries": self.retries,
            "rejected_by_breaker": self.rejected_by_breaker,
            "hedges": self.hedges,
            "hedges_won": self.hedges_won,
            "refused": self.refused,
            "refused_degraded": self.refused_degraded,
            "by_path": dict(sorted(self.by_path.items())),
            "errors_by_type": dict(sorted(self.errors.items())),
            "statuses": dict(sorted(self.statuses.items())),
            "p50_ms": to_ms(percentile(ordered, 0.50)),
            "p99_ms": to_ms(percentile(ordered, 0.99)),
        }


@final
@dataclass(frozen=True, slots=True)
class Recent:
    """One finished call, for the rates and percentiles of the last second."""

    ended: float
    latency: float
    label: str
    status: str | None


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Return the nearest-rank ``q`` percentile of sorted values (``None`` if empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(round(q * len(ordered), 9)))  # round: 0.07 * 100 is 7.000000000000001
    return ordered[rank - 1]


def to_ms(seconds: float | None) -> float | None:
    """Return seconds as milliseconds rounded to the microsecond (``None`` stays ``None``)."""
    return None if seconds is None else round(seconds * 1000, 3)


def failures(tally: Tally) -> int:
    """Count the calls of a tally that did not end in a 2xx response."""
    other = sum(n for code, n in tally.statuses.items() if not code.startswith("2"))
    return tally.lost + sum(tally.errors.values()) + other


def one_line(text: str, limit: int = 160) -> str:
    """Return ``text`` on one line, cut to ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


@final
class Traffic:
    """Callers that each loop on ``await client.get(PATH, service=SERVICE)`` until the end.

    Each call counts in the scene during which it started (:attr:`scene`, moved
    by the demo) and in the total.

    Args:
        scenes: how many scenes the run plays.
        answered: the indexes of the scenes whose tallies keep the latencies
            of the calls an upstream answered apart (``Tally.keep_answered``).
        say: shows a notable moment (the first error of a type, a lost call).
        keep_recent: keep the calls of the last :data:`WINDOW` seconds (the live view).
        tracing: with ``--trace``, runs each call in a span of the demo's own.

    """

    def __init__(
        self,
        *,
        scenes: int,
        say: Say,
        keep_recent: bool,
        tracing: Tracing | None,
        answered: frozenset[int] = frozenset(),
    ) -> None:
        self.total = Tally()
        self.by_scene = [Tally(keep_answered=index in answered) for index in range(scenes)]
        self.scene = 0
        """The index of the scene playing now."""
        self.recent: deque[Recent] = deque()
        self.lost_examples: list[str] = []
        self.in_flight = 0
        """Calls started and not ended (after the end: those cancelled by a second Ctrl-C)."""
        self.stopping = False
        """Set when the callers must issue no new call."""
        self._say = say
        self._keep_recent = keep_recent
        self._tracing = tracing

    def start(self, client: Client, *, concurrency: int, until: float) -> list[asyncio.Task[None]]:
        """Start ``concurrency`` callers that call until ``until`` (``time.monotonic()``)."""
        return [
            asyncio.create_task(self._caller(client, until), name=f"healkit-demo caller {n}")
            for n in range(concurrency)
        ]

    def window(self, started: float) -> tuple[list[Recent], float]:
        """Return the calls that ended in the last WINDOW seconds, and the span covered."""
        now = time.monotonic()
        while self.recent and self.recent[0].ended < now - WINDOW:
            self.recent.popleft()
        span = min(WINDOW, now - started) or WINDOW
        return list(self.recent), span

    async def _caller(self, client: Client, until: float) -> None:
        """Call the upstream in a loop until the end; count how every call ended."""
        while not self.stopping and time.monotonic() < until:
            scene = self.by_scene[self.scene]
            started = time.monotonic()
            self.in_flight += 1  # stays counted only if cancelled (a second Ctrl-C)
            if self._tracing is None:
                status, attempts, label, winner = await self._call(client, scene)
            else:
                with self._tracing.call() as mark:
                    status, attempts, label, winner = await self._call(client, scene)
                    mark(len(attempts), label)
            self.in_flight -= 1
            ended = time.monotonic()
            latency = ended - started
            for tally in (self.total, scene):
                tally.add(latency, attempts, winner=winner, label=label, status=status)
            if self._keep_recent:
                self.recent.append(Recent(ended, latency, label, status))
            if status is None or label == "degraded":
                await asyncio.sleep(ERROR_PAUSE)

    async def _call(
        self, client: Client, scene: Tally
    ) -> tuple[str | None, Sequence[AttemptRecord], str, int | None]:
        """Make one call; count how it ended; return its status, attempts, label and winner."""
        try:
            response = await client.get(PATH, service=SERVICE)
        except HealkitError as error:
            label = self._count_error(scene, type(error).__name__, error.message)
            return None, error.attempts, label, None
        except Exception as error:  # noqa: BLE001 - a lost call is what the demo exists to catch
            return None, (), self._count_lost(scene, f"{type(error).__name__}: {error}"), None
        try:
            outcome = response.outcome
        except OutcomeUnavailableError:
            description = f"response without an outcome: {response!r}"
            return None, (), self._count_lost(scene, description), None
        status = str(response.status)
        label = self._count_response(scene, outcome.path, status)
        return status, outcome.attempts, label, outcome.winner

    def _count_response(self, scene: Tally, path: str, status: str) -> str:
        if status not in self.total.statuses and not status.startswith("2"):
            self._say(f"first HTTP {status} (a response, path {path})", "yellow")
        if path not in self.total.by_path and path != "primary":
            self._say(f"first response by path {path}", "green")
        for tally in (self.total, scene):
            tally.by_path[path] += 1
            tally.statuses[status] += 1
        return path

    def _count_error(self, scene: Tally, name: str, message: str) -> str:
        if name not in self.total.errors:
            self._say(f"first {name}: {one_line(message)}", "red")
        for tally in (self.total, scene):
            tally.errors[name] += 1
        return f"error: {name}"

    def _count_lost(self, scene: Tally, description: str) -> str:
        for tally in (self.total, scene):
            tally.lost += 1
        if len(self.lost_examples) < LOST_EXAMPLES:
            self.lost_examples.append(description)
            self._say(f"LOST CALL: {one_line(description)}", "bold red reverse")
        return "lost"
