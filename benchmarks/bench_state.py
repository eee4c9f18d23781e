"""State of hosts nobody configured: first-call cost and memory with 10,000s of new keys.

Two workloads, each a stream of calls that each name a key never seen before:

* ``services``: 10,000 service names without a document, one call each, all to
  one endpoint (a retry budget and a breaker each);
* ``hosts``: 100,000 one-off hosts called by absolute URL (webhooks): service
  ``h<i>.test``, endpoint ``http://h<i>.test:9`` (a budget and a breaker each).

Calls run the real pipeline (``healkit._executor.execute``, built as ``Client``
builds it) with the standard plugin set (timeout, retry, breaker), and with the
timeout plugin alone (no per-key state) for comparison, on the stub transport
of ``bench_pipeline``: no socket is opened, because a socket per host would
measure the kernel, not the state healkit keeps per host. Each stream is cut
into ten blocks and run three times on fresh plugins; the table gives the
median µs per call of the first, second and last block (flat: the last
thousand new keys cost what the first did). A second pass under
``tracemalloc`` gives the memory healkit holds after each block. The state is
bounded by the ``state`` settings (defaults: 4,096 entries per plugin, 600 s
idle), so the memory stops growing once the cap is reached.
"""

from __future__ import annotations

import asyncio
import gc
import math
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from _harness import ScenarioResult, Settings, Table, Target, progress
from _plugins import names, standard_plugins
from bench_pipeline import StubTransport, logs_dropped

import healkit
from healkit._executor import execute
from healkit_timeout import TimeoutPlugin

__all__ = ["run"]

BLOCKS: Final = 10
REPEATS: Final = 3
DOCUMENT: Final = {"defaults": {"timeout": {"attempt": 1.0}}}
"""Every key is unconfigured. An attempt timeout of 1 s (not the default 30 s) keeps
the timer wheel's pending 10 ms buckets, which grow with the run's duration up to
the timeout and not with the keys, from blurring the memory figures."""
BATCH: Final = 100
FLAT_LIMIT: Final = 3.0
"""The last block may cost at most this many times the first.

Beyond the cap, a new key also pays one eviction per plugin (and its event), which
the first keys did not; a scan of the known keys would cost hundreds of times more.
"""


@dataclass(frozen=True, slots=True)
class Workload:
    """A stream of calls, each to a key never seen before."""

    name: str
    calls: int
    key: Callable[[int], tuple[str, str]]
    """Call number -> (service, endpoint)."""


def _service(index: int) -> tuple[str, str]:
    return f"svc-{index}", "http://127.0.0.1:9"


def _host(index: int) -> tuple[str, str]:
    host = f"h{index}.test"
    return host, f"http://{host}:9"


PLUGIN_SETS: Final[dict[str, Callable[[], Sequence[object]]]] = {
    "standard": standard_plugins,
    "timeout": lambda: (TimeoutPlugin(),),
}
"""``timeout`` keeps no per-key state: the cost of the pipeline alone, for comparison."""


def _runtime(plugins: Sequence[object]) -> healkit.Runtime:
    return healkit.Runtime(config=DOCUMENT, plugins=plugins, entry_points=False)


async def _stream(
    runtime: healkit.Runtime, workload: Workload, after_block: Callable[[int], None]
) -> list[float]:
    """Make every call of ``workload``; return the µs per call of each block."""
    clock = runtime.clock
    per_block = workload.calls // BLOCKS
    timings: list[float] = []
    for block in range(BLOCKS):
        started = time.perf_counter()
        for index in range(block * per_block, (block + 1) * per_block):
            service, endpoint = workload.key(index)
            transport = StubTransport(healkit.Response(200, body=b"{}", url=endpoint + "/"))
            config = runtime.config
            call = healkit.CallContext(  # by position, as Client builds it
                service,
                "http",
                "POST",
                "/",
                config,
                config.policy(service),
                clock,
                None,  # headers
                True,  # idempotent  # noqa: FBT003 - by position, as Client passes it
                True,  # replayable  # noqa: FBT003
                clock.now(),
                math.inf,  # deadline
                False,  # routable  # noqa: FBT003
            )
            await execute(runtime, call, transport, endpoint)
            if index % BATCH == 0:
                # The event loop turns as between real requests (and purges the
                # timer handles of finished attempts), as in bench_pipeline.
                await asyncio.sleep(0)
        timings.append((time.perf_counter() - started) * 1e6 / per_block)
        after_block(block)
    return timings


def _timed(plugins: Callable[[], Sequence[object]], workload: Workload) -> list[float]:
    """The median over :data:`REPEATS` streams (each on fresh plugins) of each block's µs."""
    runs = []
    for _ in range(REPEATS):
        gc.collect()
        runs.append(asyncio.run(_stream(_runtime(plugins()), workload, lambda _block: None)))
    return [statistics.median(block) for block in zip(*runs, strict=True)]


def _memory(workload: Workload) -> tuple[list[float], dict[str, int]]:
    """KiB held after each block (the standard set, under tracemalloc); entries and evictions."""
    plugins = standard_plugins()
    held: list[float] = []
    tracemalloc.start()
    try:
        runtime = _runtime(plugins)
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]

        def measure(_block: int) -> None:
            gc.collect()
            held.append((tracemalloc.get_traced_memory()[0] - base) / 1024)

        asyncio.run(_stream(runtime, workload, measure))
    finally:
        tracemalloc.stop()
    counts: dict[str, int] = {}
    for plugin in plugins:
        bounded = getattr(plugin, "unconfigured_budgets", None) or getattr(
            plugin, "unconfigured_breakers", None
        )
        if isinstance(bounded, healkit.BoundedMap):
            label = type(plugin).__name__
            counts[f"{label} entries"] = len(bounded)
            counts[f"{label} evictions"] = bounded.evictions
    return held, counts


def run(settings: Settings) -> ScenarioResult:
    """Stream new services and new hosts; first vs last block cost, memory per block."""
    scale = 10 if settings.quick else 1
    workloads = (
        Workload("services", 10_000 // scale, _service),
        Workload("hosts", 100_000 // scale if not settings.quick else 6_000, _host),
    )
    rows: list[tuple[str, ...]] = []
    memory_rows: list[tuple[str, ...]] = []
    data: dict[str, object] = {
        "unit": "µs per call; KiB held",
        "transport": "stub (no socket): the pipeline and its plugins only",
        "plugin_sets": {name: names(make()) for name, make in PLUGIN_SETS.items()},
        "state_defaults": {"max_unconfigured": 4096, "idle_expiry": 600.0},
    }
    targets: list[Target] = []
    with logs_dropped():
        for workload in workloads:
            for set_name, plugins in PLUGIN_SETS.items():
                progress(f"state: {workload.calls} new {workload.name}, {set_name} plugins")
                blocks = _timed(plugins, workload)
                ratio = blocks[-1] / blocks[0]
                variant = f"{workload.name}[{set_name}]"
                data[variant] = {
                    "calls": workload.calls,
                    "us_per_call_by_block": [round(b, 2) for b in blocks],
                    "last_over_first": round(ratio, 3),
                }
                rows.append(
                    (
                        variant,
                        str(workload.calls),
                        f"{blocks[0]:.1f}",
                        f"{blocks[1]:.1f}",
                        f"{blocks[-1]:.1f}",
                        f"{ratio:.2f}",
                    )
                )
                if set_name == "standard":
                    targets.append(
                        Target(
                            name=f"state: {variant} last block / first block µs per call",
                            value=ratio,
                            limit=FLAT_LIMIT,
                            unit="x",
                        )
                    )
            progress(f"state: {workload.calls} new {workload.name}, memory (tracemalloc)")
            held, counts = _memory(workload)
            data[f"{workload.name}[memory]"] = {
                "kib_held_by_block": [round(h) for h in held],
                **counts,
            }
            memory_rows.append(
                (
                    workload.name,
                    str(workload.calls),
                    *(f"{held[i]:.0f}" for i in (0, BLOCKS // 2 - 1, BLOCKS - 1)),
                    f"{counts['RetryPlugin entries']} / {counts['BreakerPlugin entries']}",
                    f"{counts['RetryPlugin evictions']} / {counts['BreakerPlugin evictions']}",
                )
            )
    tables = [
        Table(
            title="New keys, one call each (stub transport), µs per call",
            headers=("workload[plugins]", "calls", "1st tenth", "2nd tenth", "10th", "10th/1st"),
            rows=tuple(rows),
        ),
        Table(
            title="Memory held by healkit after each tenth of the stream (standard set), KiB",
            headers=(
                "workload",
                "calls",
                "after 1st tenth",
                "after 5th",
                "after 10th",
                "budgets / breakers kept",
                "evicted",
            ),
            rows=tuple(memory_rows),
        ),
    ]
    notes = [
        (
            "stub transport: no socket per host; what is measured is the pipeline and the state "
            "its plugins keep per key (retry budget, circuit breaker)."
        ),
        (
            "memory is tracemalloc's traced size after gc, minus the size before the first call; "
            "it levels off once each plugin holds state.max_unconfigured (4,096) entries. "
            "timeout.attempt is 1 s, so that the timer wheel's pending buckets (bounded by "
            "the attempt timeout, not by the keys) stay small."
        ),
    ]
    return ScenarioResult(data=data, tables=tables, targets=targets, notes=notes)
