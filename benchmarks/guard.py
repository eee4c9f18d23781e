"""The healthy-path guard: this tree against a base revision, side by side in one run.

``run.py --guard REV`` exports ``src/``, ``plugins/`` and ``benchmarks/`` of
the git revision ``REV`` into a temporary directory, then runs the
``pipeline`` scenario (the pipeline alone on a stub transport) of each tree
in its own process, in turns: base, this tree, this tree, base, ...
(``ROUNDS`` rounds), so that the machine's drift hits both alike. Each process
imports its own tree's ``healkit`` and its own tree's plugins
(``PYTHONPATH``: ``src/`` and every ``plugins/*/src``, ahead of the installed
distributions), so a base whose core lacks an API that this tree's plugins
use (``CallContext.retries_due`` for the retry plugin) runs with the plugins
written for it. A plugin the base does not have comes from the installed
distribution.

For every healthy variant (``execute[...]`` and ``resilient[...]``, not the
refused calls, not the SDK variant) the guard reports the median over the
rounds of each tree's per-run medians, and the run-to-run spread: the larger
of the two trees' ranges (highest minus lowest per-run median). The target:
this tree is not slower than the base by more than that spread.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Final

from _harness import ScenarioResult, Settings, Table, Target, progress

ROUNDS: Final = 4
"""Runs of each tree (in turns: A B B A ...)."""
QUICK_ROUNDS: Final = 2
_SHOWN_STDERR: Final = 4000
"""The characters of a failed run's stderr shown (its traceback's end)."""
HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent


def _export(revision: str, into: Path) -> None:
    """Write ``src/``, ``plugins/`` and ``benchmarks/`` of ``revision`` under ``into``."""
    command = [
        *("git", "-C", str(ROOT), "archive", "--format=tar", revision),
        *("src", "plugins", "benchmarks"),
    ]
    # git from PATH, as the developer running the benchmarks does.
    archive = subprocess.run(command, check=True, capture_output=True).stdout  # noqa: S603
    with tempfile.TemporaryFile() as buffer:
        buffer.write(archive)
        buffer.seek(0)
        with tarfile.open(fileobj=buffer) as tar:
            tar.extractall(into, filter="data")


def _pipeline(tree: Path, *, quick: bool) -> dict[str, float]:
    """Run ``tree``'s pipeline scenario in a process of its own; return median µs per variant."""
    command = [sys.executable, str(tree / "benchmarks" / "run.py"), "--only", "pipeline", "--json"]
    if quick:
        command.append("--quick")
    env = {**os.environ, "PYTHONPATH": _import_path(tree)}
    done = subprocess.run(command, capture_output=True, env=env, text=True, check=False)  # noqa: S603 - our own script
    if done.returncode != 0:
        # The tree's own error (an API its benchmark or plugins need), not a bare exit status.
        shown = done.stderr.strip()[-_SHOWN_STDERR:]
        raise GuardError(f"{tree}: {' '.join(command[1:])} failed:\n{shown}")
    variants = json.loads(done.stdout)["pipeline"]["variants"]
    return {name: float(v["us_per_call"]["median"]) for name, v in variants.items()}


def _import_path(tree: Path) -> str:
    """Return the ``PYTHONPATH`` of a process running ``tree``: its core, then its plugins."""
    paths = [tree / "src", *sorted((tree / "plugins").glob("*/src"))]
    return os.pathsep.join(str(path) for path in paths)


class GuardError(RuntimeError):
    """A tree's pipeline scenario failed; the message holds what it wrote on stderr."""


def _healthy(name: str) -> bool:
    return name.startswith(("execute[", "resilient[")) and "+sdk" not in name


def run(settings: Settings, base: str) -> ScenarioResult:
    """Measure the base revision and this tree in turns; check the healthy path's change."""
    rounds = QUICK_ROUNDS if settings.quick else ROUNDS
    runs: dict[str, list[dict[str, float]]] = {"base": [], "this": []}
    with tempfile.TemporaryDirectory(prefix="healkit-guard-") as scratch:
        base_tree = Path(scratch)
        _export(base, base_tree)
        trees = {"base": base_tree, "this": ROOT}
        for number in range(rounds):
            order = ("base", "this") if number % 2 == 0 else ("this", "base")
            for label in order:
                progress(f"guard: round {number + 1}/{rounds}, {label}")
                runs[label].append(_pipeline(trees[label], quick=settings.quick))
    names = [name for name in runs["this"][0] if _healthy(name) and name in runs["base"][0]]
    rows = []
    targets = []
    variants: dict[str, object] = {}
    for name in names:
        before = [run[name] for run in runs["base"]]
        after = [run[name] for run in runs["this"]]
        spread = max(max(before) - min(before), max(after) - min(after))
        change = statistics.median(after) - statistics.median(before)
        variants[name] = {"base_us": before, "this_us": after, "spread_us": round(spread, 3)}
        rows.append(
            (
                name,
                f"{statistics.median(before):.2f}",
                f"{statistics.median(after):.2f}",
                f"{change:+.2f}",
                f"{spread:.2f}",
            )
        )
        targets.append(
            Target(
                name=f"guard: {name} slower than {base} by (µs, limit: the spread)",
                value=change,
                limit=round(spread, 3),
                unit="µs",
            )
        )
    table = Table(
        title=f"Healthy path, this tree against {base} ({rounds} runs each, in turns), µs per call",
        headers=("variant", "base", "this tree", "change", "spread"),
        rows=tuple(rows),
    )
    notes = [
        (
            "each number is the median over the runs of each run's median; spread: the larger"
            " of the two trees' ranges of per-run medians."
        ),
        "each tree runs with its own plugins (its plugins/*/src ahead of the installed ones).",
    ]
    data: dict[str, object] = {"base": base, "rounds": rounds, "variants": variants}
    return ScenarioResult(data=data, tables=[table], targets=targets, notes=notes)
