"""Overload and throttling: healkit-limit against an upstream with a fixed capacity.

Two scenarios, each with its figures side by side in one run:

* ``overload``: an upstream that serves at most ``C`` requests at once (each
  takes ``LATENCY``) and queues the rest, offered three times what it can
  serve (open-loop arrivals at ``3 * C / LATENCY`` calls a second), with an
  attempt timeout of ``TIMEOUT_FACTOR * LATENCY``. Variants: no limit; a static
  limit of ``C`` (an operator who knows the capacity); the adaptive limit
  (starting from twice ``C``, learning the rest). Reported: goodput (successful
  calls a second, and as a share of the upstream's capacity), the latency of
  admitted calls (p50, p99, and p99 over the unloaded latency), timeouts, and
  how long a refusal takes.
* ``throttling``: an upstream that answers 429 to everything for
  ``REJECT_SECONDS``, then accepts everything. Reported: requests sent to it
  while it rejected, against ``K * accepted`` (+ a small constant), and the
  time from the switch until the client is no longer throttling. The bound
  counts the throttle's probes (one per twelfth of the window without a
  request sent).

The upstream is this file run with ``--serve`` in its own process, so that its
event loop does not share the client's. Run: ``python
benchmarks/bench_overload.py`` (``--quick`` for a smoke run), or through
``run.py --only overload``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from _harness import ScenarioResult, Settings, Table, Target, progress
from _upstream import serve as serve_app
from _upstream import upstream_process
from aiohttp import web
from bench_pipeline import logs_dropped

import healkit
from healkit_limit import LimitPlugin, LimitSettings
from healkit_limit._throttle import BUCKETS
from healkit_timeout import TimeoutPlugin

__all__ = ["run"]

CAPACITY: Final = 8
"""Requests the upstream serves at once (``C``)."""
LATENCY: Final = 0.05
"""Seconds one request takes at the upstream, unloaded."""
OFFERED: Final = 3
"""Offered load, in multiples of the upstream's capacity."""
TIMEOUT_FACTOR: Final = 4
"""The attempt timeout, in multiples of the unloaded latency."""
UNUSED_TARGET: Final = 0.1
"""At most this share of the upstream's capacity left unused (goodput at least 90 %)."""
P99_TARGET: Final = 2.0
REFUSAL_TARGET_MS: Final = 1.0
REJECT_SECONDS: Final = 2.0
ACCEPT_SECONDS: Final = 4.0
THROTTLE_RATE: Final = 200.0
"""Calls a second offered in the throttling scenario."""
THROTTLE_WINDOW: Final = 2.0
"""The throttle's window in this run (the default is 120 s; a short run needs a short window)."""
THROTTLE_SLACK: Final = 10


# -- the upstream (its own process) -----------------------------------------------


def serve(capacity: int, latency: float) -> None:
    """Run the upstream: ``capacity`` at once, the rest queued; ``/reject`` toggles 429s."""
    slots = asyncio.Semaphore(capacity)
    rejecting = [False]

    async def work(request: web.Request) -> web.Response:
        del request
        if rejecting[0]:
            return web.Response(status=429, text="busy")
        async with slots:
            await asyncio.sleep(latency)
        return web.Response(text="ok")

    async def toggle(request: web.Request) -> web.Response:
        rejecting[0] = request.query.get("on") == "1"
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/work", work)
    app.router.add_post("/reject", toggle)
    serve_app(app)


def upstream() -> contextlib.AbstractContextManager[str]:
    """Start the upstream in its own process; yield its base URL."""
    return upstream_process(Path(__file__), CAPACITY, LATENCY)


# -- the overload scenario ---------------------------------------------------------


@dataclass
class Tally:
    """What the calls of one variant came to."""

    ok: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    timeouts: int = 0
    other: int = 0


VARIANTS: Final[dict[str, dict[str, Any] | None]] = {
    "no limit": None,
    f"static limit {CAPACITY}": {"concurrency": CAPACITY},
    "adaptive limit": {
        "concurrency": 2 * CAPACITY,
        "adaptive": True,
        "min_concurrency": 2,
    },
}


async def offer(url: str, limit: dict[str, Any] | None, seconds: float) -> Tally:
    """Offer ``OFFERED`` times the capacity for ``seconds`` (open loop); tally the calls."""
    service: dict[str, Any] = {
        "endpoints": [url],
        "timeout": {"attempt": TIMEOUT_FACTOR * LATENCY, "connect": 1.0},
    }
    if limit is not None:
        service["limit"] = limit
    plugins: list[object] = [TimeoutPlugin(), LimitPlugin()]
    tally = Tally()
    config = {"services": {"up": service}}
    async with healkit.Client(config=config, plugins=plugins, entry_points=False) as client:

        async def one() -> None:
            started = time.perf_counter()
            try:
                await client.get("/work", service="up")
            except healkit.OverloadError:
                tally.refused.append(time.perf_counter() - started)
            except healkit.TimeoutExceeded:
                tally.timeouts += 1
            except healkit.HealkitError:
                tally.other += 1
            else:
                tally.ok.append(time.perf_counter() - started)

        rate = OFFERED * CAPACITY / LATENCY
        tasks: set[asyncio.Task[None]] = set()
        begin = time.perf_counter()
        sent = 0
        while (now := time.perf_counter()) - begin < seconds:
            due = int((now - begin) * rate) + 1
            while sent < due:
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
    return tally


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank), ``nan`` if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def unloaded(url: str) -> float:
    """The median latency of one call at a time through healkit (no limit)."""
    config = {"services": {"up": {"endpoints": [url]}}}
    async with healkit.Client(config=config, entry_points=False) as client:
        times = []
        for _ in range(20):
            started = time.perf_counter()
            await client.get("/work", service="up")
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def overload(settings: Settings) -> tuple[Table, list[Target], dict[str, Any]]:
    seconds = 1.5 if settings.quick else 4.0
    rows = []
    targets = []
    data: dict[str, Any] = {}
    with upstream() as url:
        base = asyncio.run(unloaded(url))
    for name, limit in VARIANTS.items():
        progress(f"  overload: {name}")
        gc.collect()  # the previous variant's garbage (1,900 failed calls) is not this one's pause
        # A fresh upstream each: the work abandoned by the previous variant's callers is gone.
        with upstream() as url:
            tally = asyncio.run(offer(url, limit, seconds))
        goodput = len(tally.ok) / seconds
        share = goodput / (CAPACITY / LATENCY)
        p50, p99 = quantile(tally.ok, 0.5), quantile(tally.ok, 0.99)
        refusal_p99 = quantile(tally.refused, 0.99) * 1000
        data[name] = {
            "goodput_per_s": round(goodput, 1),
            "goodput_share": round(share, 3),
            "p50_ms": round(p50 * 1000, 1),
            "p99_ms": round(p99 * 1000, 1),
            "p99_over_unloaded": round(p99 / base, 2),
            "timeouts": tally.timeouts,
            "refused": len(tally.refused),
            "refusal_p99_ms": round(refusal_p99, 3),
            "other_errors": tally.other,
        }
        rows.append(
            (
                name,
                f"{goodput:.0f}",
                f"{share:.0%}",
                f"{p50 * 1000:.0f}",
                f"{p99 * 1000:.0f}",
                f"{p99 / base:.2f}",
                str(tally.timeouts),
                str(len(tally.refused)),
                "-" if not tally.refused else f"{refusal_p99:.3f}",
            )
        )
        if name == "adaptive limit":
            targets += [
                Target(
                    "overload: adaptive capacity left unused",
                    1 - share,
                    UNUSED_TARGET,
                    "x",
                ),
                Target("overload: adaptive p99 / unloaded", p99 / base, P99_TARGET, "x"),
                Target("overload: refusal p99", refusal_p99, REFUSAL_TARGET_MS, "ms"),
            ]
    data["unloaded_ms"] = round(base * 1000, 1)
    table = Table(
        title=(
            f"Overload: upstream serves {CAPACITY} at once, {LATENCY * 1000:.0f} ms each"
            f" (unloaded through healkit: {base * 1000:.1f} ms), offered {OFFERED}x its"
            f" capacity for {seconds:g} s, attempt timeout {TIMEOUT_FACTOR * LATENCY * 1000:.0f} ms"
        ),
        headers=(
            "variant",
            "goodput /s",
            "of capacity",
            "p50 ms",
            "p99 ms",
            "p99 / unloaded",
            "timeouts",
            "refused",
            "refusal p99 ms",
        ),
        rows=tuple(rows),
    )
    return table, targets, data


# -- the throttling scenario -------------------------------------------------------


async def throttled(url: str) -> dict[str, Any]:
    """Offer THROTTLE_RATE calls a second to a rejecting, then accepting upstream."""
    import aiohttp  # noqa: PLC0415 - only to flip the upstream's mode

    limit = {"throttle": True, "throttle_window": THROTTLE_WINDOW}
    config = {"services": {"up": {"endpoints": [url], "limit": limit}}}
    plugin = LimitPlugin()
    phases: dict[str, dict[str, int]] = {
        phase: {"sent": 0, "accepted": 0, "throttled": 0} for phase in ("reject", "accept")
    }
    phase = "reject"
    last_throttled = 0.0
    switched = 0.0
    async with (
        aiohttp.ClientSession() as control,
        healkit.Client(config=config, plugins=[plugin], entry_points=False) as client,
    ):
        await control.post(url + "/reject?on=1")

        async def one() -> None:
            nonlocal last_throttled
            counts = phases[phase]
            try:
                response = await client.get("/work", service="up")
            except healkit.ThrottledError:
                counts["throttled"] += 1
                last_throttled = time.perf_counter()
                return
            counts["sent"] += 1
            if response.status != 429:
                counts["accepted"] += 1

        tasks: set[asyncio.Task[None]] = set()
        begin = time.perf_counter()
        sent = 0
        while (now := time.perf_counter()) - begin < REJECT_SECONDS + ACCEPT_SECONDS:
            if phase == "reject" and now - begin >= REJECT_SECONDS:
                await asyncio.gather(*tasks)
                await control.post(url + "/reject?on=0")
                phase = "accept"
                switched = time.perf_counter()
            due = int((now - begin) * THROTTLE_RATE) + 1
            while sent < due:
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(1 / THROTTLE_RATE)
        await asyncio.gather(*tasks)
    status = plugin.status("up")
    return {
        "reject_phase": phases["reject"],
        "accept_phase": phases["accept"],
        "recovered_after_s": round(max(0.0, last_throttled - switched), 3),
        "window_requests": 0 if status is None else status.requests,
        "window_accepts": 0 if status is None else status.accepts,
    }


def throttling(settings: Settings) -> tuple[Table, list[Target], dict[str, Any]]:
    del settings  # already a few seconds
    with upstream() as url:
        progress("  throttling: 100% 429, then 100% accepted")
        data = asyncio.run(throttled(url))
    reject, accept = data["reject_phase"], data["accept_phase"]
    k = LimitSettings().throttle_k
    probes = math.ceil(REJECT_SECONDS / (THROTTLE_WINDOW / BUCKETS))
    bound = k * reject["accepted"] + probes + THROTTLE_SLACK
    table = Table(
        title=(
            f"Throttling: {THROTTLE_RATE:.0f} calls/s; the upstream answers 429 to all for"
            f" {REJECT_SECONDS:g} s, then accepts all for {ACCEPT_SECONDS:g} s"
            f" (K = {k:g}, window {THROTTLE_WINDOW:g} s)"
        ),
        headers=(
            "phase",
            "sent to upstream",
            "accepted",
            "throttled locally",
            f"bound K*acc+{probes} probes+{THROTTLE_SLACK}",
        ),
        rows=(
            (
                "rejecting",
                str(reject["sent"]),
                str(reject["accepted"]),
                str(reject["throttled"]),
                f"{bound:g}",
            ),
            (
                "accepting",
                str(accept["sent"]),
                str(accept["accepted"]),
                str(accept["throttled"]),
                "",
            ),
            (
                "last local refusal after the switch",
                f"{data['recovered_after_s'] * 1000:.0f} ms",
                "",
                "",
                "",
            ),
        ),
    )
    targets = [
        Target("throttling: sent while rejecting", reject["sent"], bound, "calls"),
        Target(
            "throttling: recovered after the switch",
            data["recovered_after_s"],
            THROTTLE_WINDOW,
            "s",
        ),
    ]
    return table, targets, data


def run(settings: Settings) -> ScenarioResult:
    """Both scenarios: overload with and without limits, and throttling (healkit's logs dropped)."""
    with logs_dropped():
        overload_table, overload_targets, overload_data = overload(settings)
        throttle_table, throttle_targets, throttle_data = throttling(settings)
    return ScenarioResult(
        data={"overload": overload_data, "throttling": throttle_data},
        tables=[overload_table, throttle_table],
        targets=[*overload_targets, *throttle_targets],
        notes=[
            "Open-loop arrivals: a refused call ends at once and is not retried.",
            "healkit's log events are dropped at the logger (bench_pipeline.logs_dropped).",
            (
                "The upstream keeps serving requests their callers abandoned (a timeout),"
                " as a real server does: the work the no-limit variant wastes."
            ),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", nargs=2, metavar=("CAPACITY", "LATENCY"))
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), float(args.serve[1]))
        return
    run(Settings(quick=args.quick)).print()


if __name__ == "__main__":
    main()
