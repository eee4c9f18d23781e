"""Chaos with a fallback group: a primary that fails 30% of calls, a healthy fallback.

Real calls through ``healkit.Client`` (the standard plugin set: timeout, retry,
breaker, each with its defaults but the time limits below) to two
``healkit.testing.FaultServer`` upstreams on loopback, in this process and
event loop. The service has the primary as its endpoint and the healthy server
as its fallback group. The primary answers each request with a fault drawn at
random (seeded) with probability :data:`FAULT_SHARE`, the four kinds equally
often: a 503, a reset connection, a hang (no answer: the attempt ends at
:data:`ATTEMPT` seconds) and a truncated body; otherwise 200.

:data:`WORKERS` tasks call one after another until the variant's calls are
made (a closed loop). Variants:

* ``ejection on``: ``eject_after`` 3 (the default), with short ejections
  (:data:`EJECT_TIME` s, doubling up to :data:`EJECT_TIME_MAX` s), and the
  breaker (defaults: it opens at a 50% failure rate, for 5 s doubling up to
  60 s): the primary is out of the way for much of the run;
* ``ejection off``: ``eject_after`` 0 and the breaker ``disabled``: every
  call's first attempt goes to the primary, which fails 30% of them;
* ``ejection off, retry_other_groups off``: the same, with the behaviour before
  ``routing.retry_other_groups``, for reference (its failed calls are not a target).

Reported per variant: the calls that failed (an error, or a status other than
200: the goal is 0 while the fallback group is healthy), the path each call
took (``primary``, ``retry``, ``fallback``), the calls the primary answered,
and the latency of the calls (p50, p99, max) in ms.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from _harness import ScenarioResult, Settings, Table, Target, progress
from _plugins import standard_plugins
from bench_pipeline import logs_dropped

import healkit
from healkit.testing import Fault, FaultServer

__all__ = ["run"]

SERVICE: Final = "chaos"
PATH: Final = "/"
SEED: Final = 20261207
FAULT_SHARE: Final = 0.3
FAULTS: Final = {
    "503": Fault.status(503),
    "reset": Fault.reset(),
    "hang": Fault.blackhole(),
    "truncated": Fault.truncated(body=b"part", declared_length=100),
}
"""The chaos mix, drawn equally often."""
ATTEMPT: Final = 0.5
"""Seconds of one attempt (and of a read): how long a hang holds its call."""
DEADLINE: Final = 5.0
EJECT_TIME: Final = 0.5
EJECT_TIME_MAX: Final = 2.0
WORKERS: Final = 32
FULL_CALLS: Final = 50_000
QUICK_CALLS: Final = 1_000
REFERENCE_SHARE: Final = 0.2
EXAMPLES: Final = 3
"""Failed calls per variant whose message (with its attempts) the result shows."""
GC_EVERY: Final = 2_000
"""Calls between two ``gc.collect(); gc.freeze()`` (see :func:`_chaos`)."""
"""The share of a variant's calls the reference variant (the old behaviour) makes."""

EJECTION_ON: Final = "ejection on"
EJECTION_OFF: Final = "ejection off"
REFERENCE: Final = "ejection off, retry_other_groups off"


@dataclass(frozen=True, slots=True)
class Variant:
    """A routing section to run the chaos against, and how many calls to make."""

    eject_after: int
    """The routing's ``eject_after``; 0 also disables the breaker."""
    retry_other_groups: bool
    calls: int
    target: bool
    """Whether its failed calls are a target (0)."""


@dataclass(slots=True)
class Tally:
    """What the calls of a variant met."""

    failed: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    """The messages of the first failed calls (each lists the call's attempts)."""
    paths: Counter[str] = field(default_factory=Counter)
    by_primary: int = 0
    times_ms: list[float] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    gc_pause_ms: float = 0.0
    """The longest of the scenario's own collections during the calls."""


def _document(primary: str, fallback: str, variant: Variant) -> dict[str, object]:
    routing = {
        "fallback_groups": [[fallback]],
        "eject_after": variant.eject_after,
        "eject_time": EJECT_TIME,
        "eject_time_max": EJECT_TIME_MAX,
        "retry_other_groups": variant.retry_other_groups,
    }
    timeout = {"read": ATTEMPT, "attempt": ATTEMPT, "deadline": DEADLINE}
    service = {"endpoints": [primary], "routing": routing, "timeout": timeout}
    if variant.eject_after == 0:  # no ejection of any kind: the breaker is the other one
        service["breaker"] = {"mode": "disabled"}
    return {"services": {SERVICE: service}}


def _script(calls: int, rng: random.Random) -> tuple[list[Fault], Counter[str]]:
    """Return the primary's answers, one per call, and how many faults of each kind."""
    kinds = list(FAULTS)
    script: list[Fault] = []
    drawn: Counter[str] = Counter()
    for _ in range(calls):
        if rng.random() < FAULT_SHARE:
            kind = rng.choice(kinds)
            drawn[kind] += 1
            script.append(FAULTS[kind])
        else:
            script.append(Fault.ok())
    return script, drawn


async def _chaos(variant: Variant, rng: random.Random) -> Tally:
    """Make the variant's calls; return what they met.

    The fault servers record every request they handle: tens of thousands of
    records that a full collection of the garbage collector walks, pausing
    the event loop for longer than the attempt limit (0.4 s seen after 15,000
    calls), so calls to the healthy fallback would time out because of the
    benchmark itself. A collection and ``gc.freeze()`` before the calls, then
    every :data:`GC_EVERY` calls a collection of what is new and another
    ``gc.freeze()``, keep each pause short; the longest is reported.
    """
    tally = Tally()
    script, tally.faults = _script(variant.calls, rng)
    left = variant.calls
    async with FaultServer() as primary, FaultServer() as fallback:
        # Each request takes the next answer, in arrival order; more requests
        # than calls (the primary tried again) find it healthy.
        primary.script(PATH, *script)
        config = _document(primary.url, fallback.url, variant)
        async with healkit.Client(
            config=config, plugins=standard_plugins(), entry_points=False
        ) as client:

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    if left % GC_EVERY == 0:
                        tally.gc_pause_ms = max(tally.gc_pause_ms, _collect())
                    start = time.perf_counter()
                    try:
                        response = await client.get(PATH, service=SERVICE)
                    except healkit.HealkitError as error:
                        tally.failed[type(error).__name__] += 1
                        if len(tally.examples) < EXAMPLES:
                            tally.examples.append(str(error))
                        continue
                    tally.times_ms.append((time.perf_counter() - start) * 1000)
                    if response.status != 200:
                        tally.failed[f"HTTP {response.status}"] += 1
                        continue
                    outcome = response.outcome
                    tally.paths[outcome.path] += 1
                    tally.by_primary += outcome.endpoint == primary.url

            _collect()  # everything made so far, before any call is in flight
            started = time.perf_counter()
            try:
                async with asyncio.TaskGroup() as workers:
                    for _ in range(WORKERS):
                        workers.create_task(worker())
            finally:
                gc.unfreeze()
            tally.seconds = time.perf_counter() - started
    return tally


def _collect() -> float:
    """Collect the garbage of the objects made since the last call; freeze the rest; ms taken."""
    start = time.perf_counter()
    gc.collect()
    gc.freeze()
    return (time.perf_counter() - start) * 1000


def _percentile(values: list[float], q: int) -> float:
    if len(values) < 2:  # quantiles needs two values
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run(settings: Settings) -> ScenarioResult:
    """Run each variant; report failed calls, paths and latency."""
    calls = QUICK_CALLS if settings.quick else FULL_CALLS
    variants = {
        EJECTION_ON: Variant(3, retry_other_groups=True, calls=calls, target=True),
        EJECTION_OFF: Variant(0, retry_other_groups=True, calls=calls, target=True),
        REFERENCE: Variant(
            0, retry_other_groups=False, calls=round(calls * REFERENCE_SHARE), target=False
        ),
    }
    rng = random.Random(SEED)
    tallies: dict[str, Tally] = {}
    with logs_dropped():
        for name, variant in variants.items():
            progress(f"  chaos: {name}, {variant.calls} calls, {WORKERS} at a time")
            tallies[name] = asyncio.run(_chaos(variant, rng))
    data: dict[str, object] = {
        "unit": "calls; ms (latency)",
        "fault_share": FAULT_SHARE,
        "faults": list(FAULTS),
        "attempt_s": ATTEMPT,
        "deadline_s": DEADLINE,
        "workers": WORKERS,
        "variants": {
            name: {
                "calls": variants[name].calls,
                "failed_calls": sum(t.failed.values()),
                "failed_by_error": dict(t.failed),
                "failed_examples": t.examples,
                "paths": dict(t.paths),
                "answered_by_primary": t.by_primary,
                "faults_scripted": dict(t.faults),
                "p50_ms": round(_percentile(t.times_ms, 50), 2),
                "p99_ms": round(_percentile(t.times_ms, 99), 2),
                "max_ms": round(max(t.times_ms, default=0.0), 2),
                "seconds": round(t.seconds, 1),
                "longest_gc_pause_ms": round(t.gc_pause_ms, 1),
            }
            for name, t in tallies.items()
        },
    }
    table = Table(
        title=(
            f"Chaos: primary failing {FAULT_SHARE:.0%} of calls (503, reset, hang, truncated), "
            "healthy fallback group"
        ),
        headers=(
            "variant",
            "calls",
            "failed",
            "primary",
            "retry",
            "fallback",
            "by primary",
            "p50 ms",
            "p99 ms",
            "max ms",
        ),
        rows=tuple(
            (
                name,
                str(variants[name].calls),
                str(sum(t.failed.values())),
                str(t.paths["primary"]),
                str(t.paths["retry"]),
                str(t.paths["fallback"]),
                str(t.by_primary),
                f"{_percentile(t.times_ms, 50):.2f}",
                f"{_percentile(t.times_ms, 99):.2f}",
                f"{max(t.times_ms, default=0.0):.2f}",
            )
            for name, t in tallies.items()
        ),
    )
    targets = [
        Target(
            name=f"chaos: failed calls with a healthy fallback group, {name}",
            value=sum(tallies[name].failed.values()),
            limit=0,
            unit="calls",
        )
        for name, variant in variants.items()
        if variant.target
    ]
    failures = "; ".join(
        f"{name}: " + ", ".join(f"{error} {count}" for error, count in t.failed.most_common())
        for name, t in tallies.items()
        if t.failed
    )
    notes = [
        (
            "Standard plugin set, retry and breaker defaults (the breaker disabled where "
            "ejection is off); timeout attempt = read = "
            f"{ATTEMPT} s, deadline {DEADLINE} s; {WORKERS} calls at a time (closed loop). "
            f"Ejection on: eject_after 3, eject_time {EJECT_TIME} s up to {EJECT_TIME_MAX} s. "
            "The upstreams are FaultServers on loopback in the same process and event loop."
        ),
        (
            "'failed': calls that ended in an error or a status other than 200. 'primary', "
            "'retry', 'fallback': the path of the successful calls; 'by primary': those the "
            "primary answered. p50/p99/max: every call's time, start to end."
        ),
        (
            f"The reference variant ({REFERENCE}) is the behaviour before "
            "routing.retry_other_groups: every retry went to the primary again."
        ),
        f"Failed calls by error: {failures or 'none'}.",
        *(
            f"A failed call, {name}: {example}"
            for name, t in tallies.items()
            if variants[name].target
            for example in t.examples
        ),
        (
            f"Before the calls and every {GC_EVERY:,} calls: gc.collect() and gc.freeze(), "
            "so that the fault servers' records of every request do not make the garbage "
            "collector pause the event loop past the attempt limit. Longest such pause: "
            + ", ".join(f"{name} {t.gc_pause_ms:.0f} ms" for name, t in tallies.items())
            + "."
        ),
    ]
    return ScenarioResult(data=data, tables=[table], targets=targets, notes=notes)
