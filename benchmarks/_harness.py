"""What every benchmark scenario shares: settings, results, statistics, the environment.

A scenario is one function ``run(settings) -> ScenarioResult`` registered in the
``SCENARIOS`` table of ``run.py``. It returns JSON-ready data (keyed by variant
name), a table for humans and the targets it checks; ``run.py`` prints them.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Scenario",
    "ScenarioResult",
    "Settings",
    "Spread",
    "Table",
    "Target",
    "environment",
    "progress",
    "spread",
]

JSONValue = Any
"""A value ``json.dumps`` accepts (nested dicts, lists, str, float, int, bool, None)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """How hard to run: ``quick`` is a smoke run (~20 s) that only proves the harness works."""

    quick: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """A goal a scenario checks: ``value`` must not exceed ``limit``."""

    name: str
    value: float
    limit: float
    unit: str

    @property
    def met(self) -> bool:
        """Whether the value is within the limit."""
        return self.value <= self.limit

    def describe(self) -> str:
        """Return one line: the value against the limit, and whether it was met."""
        verdict = "met" if self.met else "MISSED"
        unit = self.unit
        return f"{self.name}: {self.value:.3f} {unit} (limit {self.limit} {unit}): {verdict}"

    def as_json(self) -> dict[str, JSONValue]:
        """Return the target as a JSON object."""
        return {
            "name": self.name,
            "value": round(self.value, 4),
            "limit": self.limit,
            "unit": self.unit,
            "met": self.met,
        }


@dataclass(frozen=True, slots=True)
class Table:
    """Rows for humans; the first column names the variant."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def render(self, *, markdown: bool = False) -> str:
        """Return the table as aligned text, or as a Markdown table."""
        if markdown:
            lines = [
                "| " + " | ".join(self.headers) + " |",
                "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.headers))) + "|",
            ]
            lines += ["| " + " | ".join(row) + " |" for row in self.rows]
            return f"**{self.title}**\n\n" + "\n".join(lines)
        widths = [
            max(len(r[i]) for r in (self.headers, *self.rows)) for i in range(len(self.headers))
        ]

        def line(cells: Sequence[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
            return "  ".join((first, *rest))

        rule = "-" * len(line(self.headers))
        return "\n".join([self.title, rule, line(self.headers), rule, *map(line, self.rows), rule])


@dataclass(slots=True)
class ScenarioResult:
    """What a scenario hands back to ``run.py``."""

    data: dict[str, JSONValue]
    tables: list[Table]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, JSONValue]:
        """Return data, targets and notes as one JSON object."""
        return {**self.data, "targets": [t.as_json() for t in self.targets], "notes": self.notes}

    def print(self) -> None:
        """Print the tables, notes and targets: a scenario's file run on its own."""
        for table in self.tables:
            print(table.render())
        for note in self.notes:
            print(f"  note: {note}")
        for target in self.targets:
            print(target.describe())


@dataclass(frozen=True, slots=True)
class Scenario:
    """An entry of the scenario table: the function and one line saying what it measures."""

    run: Callable[[Settings], ScenarioResult]
    summary: str


@dataclass(frozen=True, slots=True)
class Spread:
    """Median and range of repeated samples."""

    median: float
    low: float
    high: float
    samples: tuple[float, ...]

    @property
    def relative_range(self) -> float:
        """``(high - low) / median``: how far apart the repeats were."""
        return (self.high - self.low) / self.median if self.median else 0.0

    def as_json(self, digits: int = 3) -> dict[str, JSONValue]:
        """Return median, range and samples, rounded."""
        return {
            "median": round(self.median, digits),
            "min": round(self.low, digits),
            "max": round(self.high, digits),
            "relative_range": round(self.relative_range, 3),
            "samples": [round(s, digits) for s in self.samples],
        }


def spread(samples: Iterable[float]) -> Spread:
    """Summarize repeated samples (at least one)."""
    values = tuple(samples)
    return Spread(statistics.median(values), min(values), max(values), values)


def progress(message: str) -> None:
    """Report progress on stderr, so that ``--json`` output stays clean."""
    print(message, file=sys.stderr, flush=True)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(distributions: Iterable[str]) -> dict[str, JSONValue]:
    """Describe the machine and software the numbers were measured on."""
    load: Mapping[str, float] = {}
    if hasattr(os, "getloadavg"):
        one, five, fifteen = os.getloadavg()
        load = {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "load_average_at_start": load,
        "event_loop": "asyncio (default selector loop)",
        "packages": {name: _version(name) for name in distributions},
    }
