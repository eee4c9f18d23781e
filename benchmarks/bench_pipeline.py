"""The pipeline alone: µs per successful call on a stub transport, per plugin set.

Variants, each measured as ``await one()`` in a tight loop inside one event loop:

* ``baseline``: ``one`` is a trivial ``async def`` (the cost of the await itself);
* ``execute[<set>]``: what ``healkit.Client`` does per call minus HTTP: read the
  runtime's config snapshot, build a fresh ``CallContext`` (the caller's anyio
  deadline is read lazily, as in ``Client``) and run ``healkit._pipeline.execute``
  with a transport whose ``send`` returns a prebuilt ``healkit.Response`` without I/O;
* ``resilient[<set>]``: a trivial ``async def`` decorated with
  ``@healkit.resilient(service=..., runtime=...)`` (adds the decorator's work:
  the active-runtime lookup, ``functools.wraps``' wrapper, the function transport).

``<set>`` is each entry of :data:`PLUGIN_SETS`. Every 100 calls the loop awaits
``asyncio.sleep(0)`` (timed, paid by every variant alike) so the event loop turns
as it would between real requests and purges the cancelled timer handles that
per-attempt timeouts leave behind; without it the timer heap grows without bound
and the pipeline looks slower than it is.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from _harness import ScenarioResult, Settings, Spread, Table, Target, progress, spread

import healkit
from healkit._pipeline import execute
from healkit_timeout import TimeoutPlugin

__all__ = ["PLUGIN_SETS", "run"]

SERVICE: Final = "bench"
ENDPOINT: Final = "http://127.0.0.1:9"
CONFIG: Final = {"services": {SERVICE: {"endpoints": [ENDPOINT]}}}
BATCH: Final = 100
TARGET_US: Final = 5.0
TARGET_VARIANT: Final = "execute[timeout]"

PLUGIN_SETS: Final[dict[str, Callable[[], Sequence[object]]]] = {
    "none": tuple,
    "timeout": lambda: (TimeoutPlugin(),),
}
"""Plugin sets to measure: name -> a factory of fresh plugin instances. Add new plugins here."""

OneCall = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Sizes:
    """Calls per sample, samples per variant, warm-up calls per variant."""

    calls: int
    repeats: int
    warmup: int


FULL: Final = Sizes(calls=30_000, repeats=11, warmup=3_000)
QUICK: Final = Sizes(calls=10_000, repeats=5, warmup=1_000)


class StubTransport:
    """A transport whose attempts always succeed at once with the same response."""

    __slots__ = ("_response",)

    def __init__(self, response: healkit.Response) -> None:
        self._response = response

    async def send(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> tuple[healkit.Response, healkit.Response | None]:
        del call, attempt
        return self._response, self._response

    def discard(self, result: healkit.Response) -> None:
        del result

    def accept(self, fallback: healkit.Fallback) -> healkit.Response | None:
        del fallback
        return None

    def finish(
        self, result: healkit.Response, outcome: Callable[[], healkit.Outcome]
    ) -> healkit.Response:
        result.bind_outcome(outcome)
        return result


def _runtime(plugins: Sequence[object]) -> healkit.Runtime:
    return healkit.Runtime(config=CONFIG, plugins=plugins, entry_points=False)


def _baseline() -> OneCall:
    async def nothing() -> int:
        return 1

    return nothing


def _execute_call(runtime: healkit.Runtime) -> OneCall:
    transport = StubTransport(healkit.Response(200, body=b'{"ok":true}', url=ENDPOINT + "/"))
    clock = runtime.clock

    async def one() -> healkit.Response:
        config = runtime.config
        call = healkit.CallContext(
            service=SERVICE,
            transport="http",
            method="GET",
            target="/",
            config=config,
            policy=config.policy(SERVICE),
            clock=clock,
            idempotent=True,
            started=clock.now(),
            deadline=math.inf,
        )
        return await execute(runtime, call, transport, ENDPOINT)

    return one


def _decorated_call(runtime: healkit.Runtime) -> OneCall:
    @healkit.resilient(service=SERVICE, runtime=runtime)
    async def nothing() -> int:
        return 1

    return nothing


VARIANT_KINDS: Final[dict[str, Callable[[healkit.Runtime], OneCall]]] = {
    "execute": _execute_call,
    "resilient": _decorated_call,
}
"""Ways of making a call through a runtime: kind -> factory of a zero-argument call."""


async def _sample(one: OneCall, calls: int) -> float:
    """Return µs per call over ``calls`` awaits of ``one()``."""
    gc.collect()
    start = time.perf_counter_ns()
    for _ in range(calls // BATCH):
        for _ in range(BATCH):
            await one()
        await asyncio.sleep(0)
    return (time.perf_counter_ns() - start) / 1_000 / calls


async def _measure(variants: dict[str, OneCall], sizes: Sizes) -> dict[str, Spread]:
    for one in variants.values():
        await _sample(one, sizes.warmup)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(sizes.repeats):
        # Interleave the variants so that drift of the machine hits them all alike.
        for name, one in variants.items():
            samples[name].append(await _sample(one, sizes.calls))
        progress(f"  pipeline: repeat {repeat + 1}/{sizes.repeats}")
    return {name: spread(values) for name, values in samples.items()}


def _variants() -> dict[str, OneCall]:
    variants = {"baseline": _baseline()}
    for set_name, plugins in PLUGIN_SETS.items():
        for kind, factory in VARIANT_KINDS.items():
            # One runtime per variant, so no plugin instance is shared between them.
            variants[f"{kind}[{set_name}]"] = factory(_runtime(plugins()))
    return variants


def run(settings: Settings) -> ScenarioResult:
    """Measure every variant; check execute[timeout] against the 5 µs target."""
    sizes = QUICK if settings.quick else FULL
    progress(f"pipeline: {sizes.repeats} x {sizes.calls} calls per variant")
    results = asyncio.run(_measure(_variants(), sizes))
    base = results["baseline"].median
    data: dict[str, object] = {
        "unit": "µs per call",
        "calls_per_sample": sizes.calls,
        "samples": sizes.repeats,
        "plugin_sets": {
            name: [type(p).__name__ for p in make()] for name, make in PLUGIN_SETS.items()
        },
        "variants": {
            name: {
                "us_per_call": result.as_json(),
                "overhead_us": round(result.median - base, 3),
                "calls_per_second": round(1e6 / result.median),
            }
            for name, result in results.items()
        },
    }
    rows = tuple(
        (
            name,
            f"{result.median:.2f}",
            f"{result.median - base:.2f}",
            f"{result.low:.2f}-{result.high:.2f}",
            f"{100 * result.relative_range:.0f}%",
        )
        for name, result in results.items()
    )
    table = Table(
        title="Pipeline alone (stub transport), µs per call",
        headers=("variant", "median µs", "overhead µs", "min-max µs", "range"),
        rows=rows,
    )
    target = Target(
        name=f"pipeline: {TARGET_VARIANT} µs per call",
        value=results[TARGET_VARIANT].median,
        limit=TARGET_US,
        unit="µs",
    )
    notes = [
        (
            "execute[...] includes reading the config snapshot and building the CallContext, "
            "as Client does per call; resilient[...] is a decorated trivial async function."
        ),
    ]
    return ScenarioResult(data=data, tables=[table], targets=[target], notes=notes)
