"""Tail latency: healkit-hedge against an upstream whose answers are sometimes very slow.

Two scenarios, each with its figures side by side in one run:

* ``slow tail``: an upstream that answers in ``BASE`` seconds, except a seeded
  ``SLOW_SHARE`` of its answers (drawn per request, hedges included), which
  take ``SLOW_EXTRA`` more. ``CALLS`` GET calls at a concurrency of
  ``CONCURRENCY``, after ``WARMUP`` calls that are not measured (the latency
  estimator needs answers before it knows a percentile; every variant gets the
  same warm-up). Variants: no hedging; hedging after a fixed delay; hedging
  after the estimated p90 (the default); after the estimated p95. Reported:
  the latency p50, p90, p99, p99 / p50, the extra requests the upstream
  received (a share of the calls), and the hedges that won. Goal: p99 within
  ``P99_TARGET`` times the p50, for at most ``EXTRA_TARGET`` extra requests.
* ``always slow``: every answer takes ``BASE + SLOW_EXTRA``; hedging after a
  fixed delay shorter than that, so that every call would like a hedge.
  Reported: the extra requests against the hedge budget's bound
  (``budget_ratio * calls + budget_min_per_second * budget_window``, the run
  being shorter than one window). Goal: within the bound.

The upstream is this file run with ``--serve`` in its own process, so that its
event loop does not share the client's. Run: ``python benchmarks/bench_tail.py``
(``--quick`` for a smoke run), or through ``run.py --only tail``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from _harness import ScenarioResult, Settings, Table, Target, progress
from _upstream import serve as serve_app
from _upstream import upstream_process
from aiohttp import web
from bench_pipeline import logs_dropped

import healkit
from healkit_hedge import HedgePlugin, HedgeSettings
from healkit_timeout import TimeoutPlugin

__all__ = ["run"]

BASE: Final = 0.010
"""Seconds every answer takes at the upstream."""
SLOW_SHARE: Final = 0.05
"""The share of answers that are slow (seeded draw per request)."""
SLOW_EXTRA: Final = 0.5
"""Seconds a slow answer takes on top of ``BASE``."""
SEED: Final = 20261207
CONCURRENCY: Final = 16
"""Calls in flight at once (closed loop: each worker calls again when answered)."""
FIXED_DELAY: Final = 0.05
"""The fixed hedge delay of the fixed-delay variants (five times the base latency)."""
P99_TARGET: Final = 3.0
EXTRA_TARGET: Final = 0.10
ALWAYS_SLOW_CONCURRENCY: Final = 32

VARIANTS: Final[dict[str, dict[str, Any]]] = {
    "no hedging": {"enabled": False},
    f"fixed delay {FIXED_DELAY * 1000:.0f} ms": {"enabled": True, "delay": FIXED_DELAY},
    "p90 estimator (default)": {"enabled": True},
    "p95 estimator": {"enabled": True, "percentile": 95.0},
}


# -- the upstream (its own process) -----------------------------------------------


def serve(base: float, share: float, extra: float, seed: int) -> None:
    """Run the upstream: ``/work`` is slow for ``share`` of its answers, ``/slow`` always.

    ``POST /reset`` zeroes the counts and reseeds the draw; ``GET /count``
    answers the requests received since.
    """
    state: dict[str, Any] = {"draw": random.Random(seed), "count": 0}

    async def work(request: web.Request) -> web.Response:
        state["count"] += 1
        slow = request.path == "/slow" or state["draw"].random() < share
        await asyncio.sleep(base + (extra if slow else 0.0))
        return web.Response(text="ok")

    async def reset(request: web.Request) -> web.Response:
        del request
        state["draw"] = random.Random(seed)
        state["count"] = 0
        return web.Response(text="ok")

    async def count(request: web.Request) -> web.Response:
        del request
        return web.Response(text=str(state["count"]))

    app = web.Application()
    app.router.add_get("/work", work)
    app.router.add_get("/slow", work)
    app.router.add_post("/reset", reset)
    app.router.add_get("/count", count)
    serve_app(app)


def upstream() -> contextlib.AbstractContextManager[str]:
    """Start the upstream in its own process; yield its base URL."""
    return upstream_process(Path(__file__), BASE, SLOW_SHARE, SLOW_EXTRA, SEED)


# -- running calls -------------------------------------------------------------------


@dataclass
class Tally:
    """What the measured calls of one variant came to."""

    latencies: list[float] = field(default_factory=list)
    hedges: int = 0
    hedges_won: int = 0
    errors: int = 0
    upstream_requests: int = 0


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank), ``nan`` if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def calls(
    client: healkit.Client, path: str, count: int, concurrency: int, tally: Tally | None
) -> None:
    """Make ``count`` calls of ``path``, ``concurrency`` at a time; tally them if asked."""
    left = [count]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            started = time.perf_counter()
            try:
                response = await client.get(path, service="up")
            except healkit.HealkitError:
                if tally is not None:
                    tally.errors += 1
                continue
            elapsed = time.perf_counter() - started
            outcome = response.outcome
            if tally is None or outcome is None:
                continue
            tally.latencies.append(elapsed)
            tally.hedges += sum(a.hedge for a in outcome.attempts)
            if outcome.winner is not None and outcome.attempts[outcome.winner - 1].hedge:
                tally.hedges_won += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(
    url: str, hedge: dict[str, Any], path: str, *, count: int, warmup: int, concurrency: int
) -> Tally:
    """Warm up, reset the upstream's count, then make and tally ``count`` calls."""
    config = {"services": {"up": {"endpoints": [url], "hedge": hedge}}}
    plugins: list[object] = [TimeoutPlugin(), HedgePlugin()]
    tally = Tally()
    async with (
        aiohttp.ClientSession() as control,
        healkit.Client(config=config, plugins=plugins, entry_points=False) as client,
    ):
        await calls(client, path, warmup, concurrency, None)
        async with control.post(url + "/reset") as answer:
            answer.raise_for_status()
        await calls(client, path, count, concurrency, tally)
        async with control.get(url + "/count") as answer:
            tally.upstream_requests = int(await answer.text())
    return tally


# -- the scenarios ---------------------------------------------------------------------


def slow_tail(settings: Settings) -> tuple[Table, list[Target], dict[str, Any]]:
    count, warmup = (400, 300) if settings.quick else (3000, 400)
    rows = []
    targets = []
    data: dict[str, Any] = {}
    for name, hedge in VARIANTS.items():
        progress(f"  slow tail: {name}")
        gc.collect()
        with upstream() as url:
            tally = asyncio.run(
                measure(url, hedge, "/work", count=count, warmup=warmup, concurrency=CONCURRENCY)
            )
        measured = len(tally.latencies)
        p50, p90, p99 = (quantile(tally.latencies, q) for q in (0.5, 0.9, 0.99))
        extra = (tally.upstream_requests - measured) / measured if measured else math.nan
        data[name] = {
            "calls": measured,
            "p50_ms": round(p50 * 1000, 1),
            "p90_ms": round(p90 * 1000, 1),
            "p99_ms": round(p99 * 1000, 1),
            "p99_over_p50": round(p99 / p50, 2),
            "upstream_requests": tally.upstream_requests,
            "extra_requests_share": round(extra, 4),
            "hedges_sent": tally.hedges,
            "hedges_won": tally.hedges_won,
            "errors": tally.errors,
        }
        rows.append(
            (
                name,
                f"{p50 * 1000:.1f}",
                f"{p90 * 1000:.1f}",
                f"{p99 * 1000:.1f}",
                f"{p99 / p50:.2f}",
                f"{extra:.1%}",
                str(tally.hedges),
                str(tally.hedges_won),
                str(tally.errors),
            )
        )
        if name == "p90 estimator (default)":
            targets += [
                Target("slow tail: default-hedged p99 / p50", p99 / p50, P99_TARGET, "x"),
                Target("slow tail: default-hedged extra requests", extra, EXTRA_TARGET, "share"),
            ]
    table = Table(
        title=(
            f"Slow tail: answers take {BASE * 1000:.0f} ms, {SLOW_SHARE:.0%} of them (seeded)"
            f" {SLOW_EXTRA * 1000:.0f} ms more; {count} calls measured after {warmup},"
            f" {CONCURRENCY} at a time"
        ),
        headers=(
            "variant",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99 / p50",
            "extra requests",
            "hedges sent",
            "hedges won",
            "errors",
        ),
        rows=tuple(rows),
    )
    return table, targets, data


def always_slow(settings: Settings) -> tuple[Table, list[Target], dict[str, Any]]:
    # Fewer calls than a budget window's worth of time: the run fits in one window.
    count = 100 if settings.quick else 320
    hedge = {"enabled": True, "delay": FIXED_DELAY}
    defaults = HedgeSettings()
    progress("  always slow: fixed delay, every answer slow")
    with upstream() as url:
        started = time.perf_counter()
        tally = asyncio.run(
            measure(url, hedge, "/slow", count=count, warmup=0, concurrency=ALWAYS_SLOW_CONCURRENCY)
        )
        seconds = time.perf_counter() - started
    measured = len(tally.latencies)
    extra = tally.upstream_requests - measured
    bound = defaults.budget_ratio * measured + (
        defaults.budget_min_per_second * defaults.budget_window
    )
    data = {
        "calls": measured,
        "seconds": round(seconds, 2),
        "upstream_requests": tally.upstream_requests,
        "extra_requests": extra,
        "hedges_sent": tally.hedges,
        "budget_bound": bound,
        "extra_over_bound": round(extra / bound, 3),
        "errors": tally.errors,
    }
    table = Table(
        title=(
            f"Always slow: every answer takes {(BASE + SLOW_EXTRA) * 1000:.0f} ms; hedge after"
            f" {FIXED_DELAY * 1000:.0f} ms; {measured} calls, {ALWAYS_SLOW_CONCURRENCY} at a"
            f" time, in {seconds:.1f} s (one budget window: {defaults.budget_window:g} s)"
        ),
        headers=(
            "calls",
            "upstream requests",
            "extra",
            "extra / calls",
            (
                f"budget {defaults.budget_ratio:g} x calls"
                f" + {defaults.budget_min_per_second:g}/s x {defaults.budget_window:g} s"
            ),
            "extra / budget",
        ),
        rows=(
            (
                str(measured),
                str(tally.upstream_requests),
                str(extra),
                f"{extra / measured:.1%}",
                f"{bound:g}",
                f"{extra / bound:.2f}",
            ),
        ),
    )
    targets = [Target("always slow: extra requests / hedge budget", extra / bound, 1.0, "x")]
    return table, targets, data


def run(settings: Settings) -> ScenarioResult:
    """Both scenarios: the slow tail with and without hedging, and an always-slow upstream."""
    with logs_dropped():
        tail_table, tail_targets, tail_data = slow_tail(settings)
        slow_table, slow_targets, slow_data = always_slow(settings)
    return ScenarioResult(
        data={"slow_tail": tail_data, "always_slow": slow_data},
        tables=[tail_table, slow_table],
        targets=[*tail_targets, *slow_targets],
        notes=[
            (
                "Extra requests are counted by the upstream: a loser cancelled before it was"
                " sent is not one."
            ),
            "Closed loop: each of the concurrent workers calls again once answered.",
            "healkit's log events are dropped at the logger (bench_pipeline.logs_dropped).",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", nargs=4, metavar=("BASE", "SHARE", "EXTRA", "SEED"))
    args = parser.parse_args()
    if args.serve:
        base, share, extra, seed = args.serve
        serve(float(base), float(share), float(extra), int(seed))
        return
    run(Settings(quick=args.quick)).print()


if __name__ == "__main__":
    main()
