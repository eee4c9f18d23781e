"""Fleet-wide rate limit: instances share one rate while one leaves and another joins.

``INSTANCES`` healkit clients, each with its own ``EtcdClient``, ``EtcdSource``
and fleet health (``routing.fleet``), read one service document from a real
etcd (``healkit.testing.EtcdServer``) that gives the service a fleet-wide rate
limit of ``RATE`` calls a second and a burst of ``BURST``
(``limit.rate_scope = "fleet"``, refusing).
Each instance offers ``OFFERED`` calls a second (twice its share at the start:
the limit binds all along) to one loopback upstream, which runs in a process
of its own and notes when each request arrives. The run:

1. the instances start, wait until each counts all of them, and call;
2. after ``STEADY`` seconds one instance stops (its lease is revoked with it,
   so its record goes at once): the others' shares rise;
3. ``BETWEEN`` seconds later a new instance starts and calls at once: the
   shares fall again;
4. ``AFTER`` seconds later the run ends.

Reported: the most requests the upstream saw in any one-second window (over
the whole run, from a second before the leave to the end (the target), and
around the leave and the join) against ``RATE``, the mean
rate of each phase, and how long the remaining instances took to re-balance
after the leave (until their ``LimitPlugin.status`` counted one fewer). The
target: at most ``RATE * 1.1`` in any second. The clients share one event
loop (one process); the upstream has its own. Run: ``python
benchmarks/bench_fleet_rate.py`` (``--quick`` for a smoke run), or through
``run.py --only fleet-rate``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from _harness import ScenarioResult, Settings, Table, Target, progress
from aiohttp import web
from bench_pipeline import logs_dropped

import healkit
from healkit.etcd import EtcdClient, EtcdSource, WatchEvent
from healkit.testing import EtcdServer
from healkit_limit import LimitPlugin

__all__ = ["run"]

RATE: Final = 200.0
"""The fleet's rate limit, calls a second (``R``)."""
BURST: Final = 10
"""The fleet's burst: a token bucket lets ``rate + burst`` through in any second, so a cap of
``RATE * TARGET`` a second needs a burst under a tenth of the rate (the default, one second's
worth, allows twice the rate after a quiet second, or after the clients' event loop stalled)."""
INSTANCES: Final = 4
OFFERED: Final = RATE / 2
"""Calls a second each instance offers: twice its share of four, more than its share of three."""
TARGET: Final = 1.1
"""The most requests in any one second, as a multiple of ``RATE``."""
NAMESPACE: Final = "fleetrate"
SERVICE: Final = "quota"
INSTANCE_RECORDS: Final = f"/healkit/{NAMESPACE}/instances/"
TTL: Final = 5


@dataclass(frozen=True, slots=True)
class Phases:
    """Seconds of each phase of the run."""

    steady: float
    between: float
    after: float


FULL: Final = Phases(steady=4.0, between=3.0, after=4.0)
QUICK: Final = Phases(steady=2.0, between=2.0, after=2.0)


# -- the upstream (its own process) -----------------------------------------------


def serve() -> None:
    """Run the upstream: answer 200, note each arrival; print them all when stdin closes."""
    arrivals: list[float] = []

    async def work(request: web.Request) -> web.Response:
        del request
        arrivals.append(time.monotonic())
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/work", work)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        print(f"http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
        await runner.cleanup()
        print(json.dumps(arrivals), flush=True)

    asyncio.run(main())


@dataclass
class Upstream:
    """The upstream process: its URL, and the arrivals it noted once it ended."""

    url: str
    arrivals: list[float] = field(default_factory=list)


@contextlib.contextmanager
def upstream() -> Iterator[Upstream]:
    """Start the upstream in its own process; its arrivals are filled in on exit."""
    process = subprocess.Popen(  # noqa: S603 - this file, run with this interpreter
        [sys.executable, str(Path(__file__)), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None  # noqa: S101 - set by Popen above
    assert process.stdin is not None  # noqa: S101 - set by Popen above
    server = Upstream(process.stdout.readline().strip())
    try:
        yield server
    finally:
        process.stdin.close()
        # The same CLOCK_MONOTONIC as this process (Linux): comparable with our marks.
        server.arrivals = sorted(json.loads(process.stdout.readline() or "[]"))
        process.wait(timeout=10.0)


# -- the instances -----------------------------------------------------------------


@dataclass
class Member:
    """One instance of the fleet: its client, its limit plugin, its load."""

    stack: AsyncExitStack
    source: EtcdSource
    client: healkit.Client
    plugin: LimitPlugin
    sent: int = 0
    refused: int = 0
    load: asyncio.Task[None] | None = None

    def instances(self) -> int | None:
        status = self.plugin.status(SERVICE)
        return None if status is None else status.instances

    async def offer(self, per_second: float) -> None:
        """Call at ``per_second`` (open loop: a refusal does not slow the next call)."""
        loop = asyncio.get_running_loop()
        interval, due = 1.0 / per_second, loop.time()
        while True:
            try:
                response = await self.client.get("/work", service=SERVICE)
                response.release()
                self.sent += 1
            except healkit.RateLimitedError:
                self.refused += 1
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def leave(self) -> None:
        if self.load is not None:
            self.load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.load
        await self.stack.aclose()


async def join(etcd_url: str) -> Member:
    """Start an instance; its calls start at once."""
    stack = AsyncExitStack()
    etcd = await stack.enter_async_context(EtcdClient(etcd_url))
    source = EtcdSource(etcd, namespace=NAMESPACE)
    plugin = LimitPlugin()
    client = healkit.Client(config=source, plugins=[plugin], entry_points=False)
    await stack.enter_async_context(client)
    member = Member(stack, source, client, plugin)
    member.load = asyncio.create_task(member.offer(OFFERED))
    return member


async def counted(etcd: EtcdClient, members: Sequence[Member], count: int) -> None:
    """Wait until etcd holds ``count`` instance records and every member applied them."""
    async with etcd.watch(INSTANCE_RECORDS, prefix=True) as watch:
        found = await etcd.range_all(INSTANCE_RECORDS, prefix=True)
        if len(found.kvs) != count:
            async for _ in watch:
                found = await etcd.range_all(INSTANCE_RECORDS, prefix=True)
                if len(found.kvs) == count:
                    break
    revision = found.revision
    for member in members:
        await member.source.wait_until(lambda s: s.applied_revision >= revision)


def records_down_to(source: EtcdSource, remaining: int) -> asyncio.Event:
    """Return an event set once ``source`` has delivered ``remaining`` instance records.

    The listener follows the records as the source hands them on: every
    record with ``replace`` (first, and after any re-read of the namespace,
    which absorbs a deletion), then each change. The limit plugin's own
    listener was registered first, so it has re-balanced by then.
    """
    event = asyncio.Event()
    keys: set[bytes] = set()

    def heard(events: Sequence[WatchEvent], revision: int, *, replace: bool) -> None:
        del revision
        if replace:
            keys.clear()
        for change in events:
            if change.type == "DELETE":
                keys.discard(change.kv.key)
            else:
                keys.add(change.kv.key)
        if len(keys) == remaining:
            event.set()

    source.listen("instances/", heard)
    return event


def most_in_a_second(arrivals: Sequence[float], start: float, end: float) -> int:
    """Return the most arrivals in any one-second window that starts in [start, end - 1]."""
    low = bisect.bisect_left(arrivals, start)
    high = bisect.bisect_left(arrivals, end)
    best = 0
    for index in range(low, high):  # a busiest window starts at an arrival
        until = min(arrivals[index] + 1.0, end)
        best = max(best, bisect.bisect_left(arrivals, until, index) - index)
    return best


def mean_rate(arrivals: Sequence[float], start: float, end: float) -> float:
    count = bisect.bisect_left(arrivals, end) - bisect.bisect_left(arrivals, start)
    return count / (end - start)


@dataclass
class Marks:
    """When (on the monotonic clock) each phase began, and the re-balance time."""

    start: float = 0.0
    leave: float = 0.0
    join: float = 0.0
    end: float = 0.0
    rebalanced_ms: float = 0.0


async def fleet_run(phases: Phases, server: Upstream) -> tuple[Marks, list[Member]]:
    marks = Marks()
    document = {
        "endpoints": [server.url],
        "routing": {"fleet": {"ttl": TTL}},
        "limit": {"rate": RATE, "burst": BURST, "rate_scope": "fleet"},
    }
    async with EtcdServer() as etcd_server, EtcdClient(etcd_server.url) as etcd:
        await etcd.put(f"/healkit/{NAMESPACE}/services/{SERVICE}", json.dumps(document).encode())
        members = [await join(etcd_server.url) for _ in range(INSTANCES)]
        await counted(etcd, members, INSTANCES)
        marks.start = time.monotonic()
        await asyncio.sleep(phases.steady)
        leaving, staying = members[0], members[1:]
        heard = [records_down_to(member.source, INSTANCES - 1) for member in staying]
        marks.leave = time.monotonic()
        await leaving.leave()
        await asyncio.gather(*(event.wait() for event in heard))
        marks.rebalanced_ms = (time.monotonic() - marks.leave) * 1000
        assert all(m.instances() == INSTANCES - 1 for m in staying)  # noqa: S101 - re-balanced
        await asyncio.sleep(max(0.0, marks.leave + phases.between - time.monotonic()))
        marks.join = time.monotonic()
        members.append(await join(etcd_server.url))
        await asyncio.sleep(phases.after)
        marks.end = time.monotonic()
        for member in members[1:]:
            await member.leave()
    return marks, members


def run(settings: Settings) -> ScenarioResult:
    """Four instances share ``RATE``; one leaves, one joins; the upstream counts each second."""
    phases = QUICK if settings.quick else FULL
    progress(f"fleet-rate: {INSTANCES} instances sharing {RATE:g} calls/s, one leaves, one joins")
    with logs_dropped(), upstream() as server:
        marks, members = asyncio.run(fleet_run(phases, server))
    arrivals = server.arrivals
    most = most_in_a_second(arrivals, marks.start, marks.end)
    around_leave = most_in_a_second(arrivals, marks.leave - 1.0, marks.leave + 2.0)
    around_join = most_in_a_second(arrivals, marks.join - 1.0, marks.join + 2.0)
    churn = most_in_a_second(arrivals, marks.leave - 1.0, marks.end)
    rates = {
        f"{INSTANCES} instances": mean_rate(arrivals, marks.start, marks.leave),
        f"{INSTANCES - 1} instances (after the leave)": mean_rate(
            arrivals, marks.leave, marks.join
        ),
        f"{INSTANCES} instances (after the join)": mean_rate(arrivals, marks.join, marks.end),
    }
    offered = sum(member.sent + member.refused for member in members)
    rows = [(name, f"{rate:.1f}", f"{rate / RATE:.3f}") for name, rate in rates.items()]
    rows += [
        ("most in any 1 s: the whole run", str(most), f"{most / RATE:.3f}"),
        ("most in any 1 s: leave -1 s to the end", str(churn), f"{churn / RATE:.3f}"),
        ("most in any 1 s: leave -1 s to +2 s", str(around_leave), f"{around_leave / RATE:.3f}"),
        ("most in any 1 s: join -1 s to +2 s", str(around_join), f"{around_join / RATE:.3f}"),
    ]
    table = Table(
        title=f"fleet-wide rate limit {RATE:g} calls/s: requests at the upstream",
        headers=("window", "requests/s", "x R"),
        rows=tuple(rows),
    )
    data = {
        "rate": RATE,
        "burst": BURST,
        "instances": INSTANCES,
        "offered_per_instance": OFFERED,
        "phases_s": {"steady": phases.steady, "between": phases.between, "after": phases.after},
        "mean_rates": {name: round(rate, 2) for name, rate in rates.items()},
        "most_in_one_second": most,
        "most_from_the_leave_on": churn,
        "most_around_leave": around_leave,
        "most_around_join": around_join,
        "rebalanced_after_leave_ms": round(marks.rebalanced_ms, 1),
        "calls_offered": offered,
        "requests_seen": len(arrivals),
    }
    return ScenarioResult(
        data=data,
        tables=[table],
        targets=[
            Target(
                "fleet-rate: most requests in any 1 s, leave and join / R",
                churn / RATE,
                TARGET,
                "x",
            )
        ],
        notes=[
            f"Each instance offers {OFFERED:g} calls/s (open loop); refused calls are not retried.",
            (
                f"After the leave the others counted {INSTANCES - 1} instances within"
                f" {marks.rebalanced_ms:.0f} ms (the leaver's lease is revoked as it stops)."
            ),
            (
                f"The fleet's burst is {BURST}: a token bucket lets rate + burst through in"
                " any second (the start is not in the target: the instances start one by one)."
            ),
            (
                "A crashed instance's record goes only with its lease (routing.fleet.ttl):"
                " until then the others keep its share unused."
            ),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    run(Settings(quick=args.quick)).print()


if __name__ == "__main__":
    main()
