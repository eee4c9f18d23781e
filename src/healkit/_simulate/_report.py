"""Figures from a run, thresholds on them, and the comparison of two policies.

Every figure is computed from what the run recorded: each call's start, end
and path on the simulated clock, and the requests the loopback upstreams
really received. Times are simulated (see :mod:`healkit._simulate._loop`);
counts are measured.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, Literal, final

import msgspec

from healkit._simulate._runner import CallRecord, PhaseWindow, Run

__all__ = [
    "FIGURES",
    "PHASE_FIGURES",
    "Figures",
    "PhaseFigures",
    "Threshold",
    "Verdict",
    "change",
    "check_thresholds",
    "figures",
    "parse_threshold",
    "value",
]

Never = Literal["never"]
"""A time to fail over or to recover that the run never reached."""

PATHS: Final = ("primary", "retry", "fallback", "degraded", "failed")


@final
class PhaseFigures(msgspec.Struct, frozen=True, kw_only=True):
    """The figures of one phase: the calls started in it, the requests received during it."""

    name: str
    start: float
    duration: float
    mark: str | None
    calls: int
    success_rate: float
    amplification: float
    p99: float


@final
class TransitionFigure(msgspec.Struct, frozen=True, kw_only=True):
    """A breaker transition: when (seconds from the start), which endpoint, from and to."""

    at: float
    endpoint: str
    from_state: str
    to_state: str


@final
class Figures(msgspec.Struct, frozen=True, kw_only=True):
    """What one policy did in one scenario.

    Attributes:
        calls: calls made.
        success_rate: the share of calls that got a real 2xx or 3xx answer
            (degraded responses and errors are not successes).
        paths: calls by the path they ended on: ``primary``, ``retry``,
            ``fallback``, ``degraded``, ``failed`` (a healkit error).
        p50: median call latency, simulated seconds.
        p99: 99th percentile call latency, simulated seconds.
        max: the longest call, simulated seconds.
        upstream_attempts: requests the upstreams received for the calls
            (measured; attempts a breaker or budget refused are not sent).
        amplification: ``upstream_attempts / calls``.
        probes: health-probe requests the upstreams received.
        breaker_transitions: the transitions, in order.
        failover_time: seconds from the start of the ``disruption`` phase until
            calls succeed again for the rest of it; ``"never"``; ``None`` when
            the scenario has no such phase.
        recovery_time: seconds from the start of the ``recovery`` phase until
            calls end on the primary endpoints for the rest of it; ``"never"``;
            ``None`` when the scenario has no such phase.
        phases: per-phase figures.

    """

    calls: int
    success_rate: float
    paths: dict[str, int]
    p50: float
    p99: float
    max: float
    upstream_attempts: int
    amplification: float
    probes: int
    breaker_transitions: tuple[TransitionFigure, ...]
    failover_time: float | Never | None
    recovery_time: float | Never | None
    phases: tuple[PhaseFigures, ...]


FIGURES: Final[Mapping[str, str]] = {
    "success_rate": "share of calls with a real 2xx/3xx answer",
    "amplification": "upstream requests per call",
    "p50": "median latency (s)",
    "p99": "99th percentile latency (s)",
    "max": "longest call (s)",
    "upstream_attempts": "requests the upstreams received for the calls",
    "failed_rate": "share of calls that raised an error",
    "degraded_rate": "share of calls answered with the degraded template",
    "fallback_rate": "share of calls answered by a fallback endpoint",
    "breaker_transitions": "breaker state changes",
    "failover_time": "seconds until calls succeed again after the disruption starts",
    "recovery_time": "seconds until calls are back on the primary after recovery starts",
    "probes": "health-probe requests",
}
"""The figures a threshold may name for a whole scenario, with what each is."""

PHASE_FIGURES: Final = ("success_rate", "amplification", "p99", "calls")
"""The figures a threshold may name for one phase (``SCENARIO/PHASE:FIGURE``)."""


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _percentile(values: Sequence[float], share: float) -> float:
    """Return the nearest-rank percentile of sorted ``values`` (0.0 when empty)."""
    if not values:
        return 0.0
    return values[max(0, math.ceil(share * len(values)) - 1)]


def _round(seconds: float) -> float:
    return round(seconds, 6)  # simulated time sums floats: drop their last-bit noise


def figures(run: Run) -> Figures:
    """Compute the figures of ``run``."""
    calls = run.calls
    latencies = sorted(call.end - call.start for call in calls)
    paths = Counter(call.path for call in calls)
    return Figures(
        calls=len(calls),
        success_rate=_rate(sum(call.ok for call in calls), len(calls)),
        paths={path: paths[path] for path in PATHS},
        p50=_round(_percentile(latencies, 0.50)),
        p99=_round(_percentile(latencies, 0.99)),
        max=_round(latencies[-1] if latencies else 0.0),
        upstream_attempts=run.upstream_attempts,
        amplification=_rate(run.upstream_attempts, len(calls)),
        probes=run.probes,
        breaker_transitions=tuple(
            TransitionFigure(
                at=_round(t.at), endpoint=t.endpoint, from_state=t.from_state, to_state=t.to_state
            )
            for t in run.transitions
        ),
        failover_time=_time_until(run, "disruption", lambda call: call.ok),
        recovery_time=_time_until(run, "recovery", lambda call: call.ok and call.primary_group),
        phases=tuple(_phase(window, calls) for window in run.phases),
    )


def _in(window: PhaseWindow, calls: Iterable[CallRecord]) -> list[CallRecord]:
    return [call for call in calls if window.start <= call.start < window.end]


def _phase(window: PhaseWindow, calls: Sequence[CallRecord]) -> PhaseFigures:
    mine = _in(window, calls)
    latencies = sorted(call.end - call.start for call in mine)
    return PhaseFigures(
        name=window.name,
        start=_round(window.start),
        duration=_round(window.end - window.start),
        mark=window.mark,
        calls=len(mine),
        success_rate=_rate(sum(call.ok for call in mine), len(mine)),
        amplification=_rate(window.upstream_attempts, len(mine)),
        p99=_round(_percentile(latencies, 0.99)),
    )


def _time_until(run: Run, mark: str, good: Callable[[CallRecord], bool]) -> float | Never | None:
    """Seconds from the marked phase's start until every later call of it is ``good``.

    ``None`` without such a phase, or when no call started in it (nothing to measure).
    """
    window = next((w for w in run.phases if w.mark == mark), None)
    mine = [] if window is None else sorted(_in(window, run.calls), key=lambda c: c.start)
    if window is None or not mine:
        return None
    bad = [index for index, call in enumerate(mine) if not good(call)]
    if not bad:
        return 0.0
    if bad[-1] == len(mine) - 1:
        return "never"
    return _round(mine[bad[-1] + 1].start - window.start)


# -- values for thresholds and comparisons ------------------------------------------------


def value(report: Figures, figure: str, phase: str | None = None) -> float | None:
    """Return the number a threshold compares (``"never"``: infinite; ``None``: not applicable)."""
    if phase is not None:
        return _phase_value(report, figure, phase)
    if figure.endswith("_rate") and figure != "success_rate":
        return _rate(report.paths[figure.removesuffix("_rate")], report.calls)
    if figure == "breaker_transitions":
        return float(len(report.breaker_transitions))
    raw = getattr(report, figure)
    if raw == "never":
        return math.inf
    return None if raw is None else float(raw)


def _phase_value(report: Figures, figure: str, phase: str) -> float | None:
    """Return a phase's figure; ``None`` without such a phase.

    A phase in which no call started has only ``calls``: its rates and
    latency are of nothing, not 0.
    """
    for entry in report.phases:
        if entry.name == phase:
            return float(getattr(entry, figure)) if entry.calls or figure == "calls" else None
    return None


def change(current: Figures, proposed: Figures) -> dict[str, float | None]:
    """Return each figure's change from ``current`` to ``proposed`` (``None``: not comparable)."""
    changes: dict[str, float | None] = {}
    for figure in FIGURES:
        before, after = value(current, figure), value(proposed, figure)
        if before is None or after is None or math.isinf(before) or math.isinf(after):
            changes[figure] = None
        else:
            changes[figure] = _round(after - before)
    return changes


# -- thresholds -----------------------------------------------------------------------------

_THRESHOLD: Final = re.compile(
    r"^(?:(?P<scenario>[A-Za-z0-9][A-Za-z0-9_-]*)(?:/(?P<phase>[A-Za-z0-9][A-Za-z0-9_-]*))?:)?"
    r"(?P<figure>[a-z_0-9]+)\s*(?P<op><=|>=|<|>)\s*(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<percent>%?)$"
)
_OPERATORS: Final = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


@final
class Threshold(msgspec.Struct, frozen=True, kw_only=True):
    """``[SCENARIO[/PHASE]:]FIGURE OP NUMBER``: the proposed policy fails if it holds."""

    spec: str
    scenario: str | None
    phase: str | None
    figure: str
    op: str
    number: float

    def crossed(self, observed: float) -> bool:
        """Whether ``observed`` crosses the threshold."""
        return bool(_OPERATORS[self.op](observed, self.number))


def parse_threshold(text: str) -> Threshold:
    """Parse ``outage-recovery/outage:amplification>1.5`` or ``success_rate<99.9%``.

    Raises:
        ValueError: the text is not a threshold, names an unknown figure, or its
            number is too large for a float.

    """
    match = _THRESHOLD.match(text.strip())
    if match is None:
        raise ValueError(
            f"{text!r} is not [SCENARIO[/PHASE]:]FIGURE<NUMBER (or >, <=, >=; NUMBER may end in %)"
        )
    figure, phase = match["figure"], match["phase"]
    known: Iterable[str] = PHASE_FIGURES if phase is not None else FIGURES
    if figure not in known:
        where = "a phase" if phase is not None else "a scenario"
        raise ValueError(f"unknown figure {figure!r} for {where}; known: {', '.join(known)}")
    number = float(match["number"]) / (100 if match["percent"] else 1)
    if not math.isfinite(number):
        raise ValueError(f"{text!r}: {match['number']} is not a finite number")
    return Threshold(
        spec=text,
        scenario=match["scenario"],
        phase=phase,
        figure=figure,
        op=match["op"],
        number=number,
    )


@final
class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """A threshold checked against one service's figures in one scenario."""

    threshold: str
    service: str
    scenario: str
    observed: float | Never
    crossed: bool


def check_thresholds(
    thresholds: Sequence[Threshold], service: str, reports: Mapping[str, Figures]
) -> list[Verdict]:
    """Check each threshold against the scenarios it names (all, if it names none).

    A figure that does not apply to a scenario (no disruption phase for
    ``failover_time``, no such phase) is not checked there.
    """
    verdicts = []
    for threshold in thresholds:
        for name, report in reports.items():
            if threshold.scenario not in {None, name}:
                continue
            observed = value(report, threshold.figure, threshold.phase)
            if observed is None:
                continue
            verdicts.append(
                Verdict(
                    threshold=threshold.spec,
                    service=service,
                    scenario=name,
                    observed="never" if math.isinf(observed) else _round(observed),
                    crossed=threshold.crossed(observed),
                )
            )
    return verdicts
