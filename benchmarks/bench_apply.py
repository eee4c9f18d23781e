"""Applying a large document: the event loop's lag, and calls in flight meeting their deadline.

A runtime with every first-party plugin (from the entry points) serves calls to
a loopback server (``healkit.testing.FaultServer``) through a ``Client``, one
after the other, each with a short deadline (``timeout.deadline`` of the
``probe`` service: ``DEADLINE`` seconds). Meanwhile its configuration source
delivers documents of 1,000 and 10,000 services (each with two endpoints and
a ``timeout`` section; 10,000 of them are about 800 KiB of JSON, under the
1 MiB document limit):

* ``file``: a ``FileSource`` (JSON file, polled every 50 ms), the file replaced
  atomically by a worker thread;
* ``etcd``: an ``EtcdSource`` on a real etcd (``healkit.testing.EtcdServer``),
  one document per service written in one transaction by a client of its own
  in another thread (so the writer's work is not on the measured loop).

Two steps per source and size: ``grow`` (from the ``probe`` service alone to
the whole document) and ``change one`` (one service's ``timeout`` changed).
A ticker task (``asyncio.sleep(0.001)`` in a loop) records the worst delay
past its wake-up time from the write until the runtime applied the document:
the event loop's lag. Garbage collections are timed too (``gc.callbacks``):
a full collection stops every thread, the loop included, and takes time in
proportion to every object the process holds, whatever holds them.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from _harness import ScenarioResult, Settings, Table, Target, progress

import healkit
from healkit.etcd import EtcdClient, EtcdSource
from healkit.testing import EtcdServer, FaultServer

__all__ = ["run"]

SIZES: Final = (1_000, 10_000)
QUICK_SIZES: Final = (200, 1_000)
DEADLINE: Final = 0.25
"""Seconds a call to the ``probe`` service may take, all attempts included."""
LAG_LIMIT_MS: Final = 50.0
NAMESPACE: Final = "bench"
ROOT: Final = f"/healkit/{NAMESPACE}/"
APPLIED: Final = 120.0
"""Seconds to wait for a document to be applied (10,000 services validate in seconds)."""
IDLE: Final = 1.0


def _service(i: int, *, attempt: float = 2.0) -> dict[str, Any]:
    # Short names: 10,000 services stay under the 1 MiB document limit (about 800 KiB).
    return {
        "endpoints": [f"http://a{i}.x", f"http://b{i}.x"],
        "timeout": {"attempt": attempt},
    }


def _service_texts(size: int, *, changed: int | None = None) -> Iterator[tuple[str, bytes]]:
    """Each service's name and JSON document, one at a time.

    The writer stands for another process (an operator's tool): it keeps its
    documents as text, so that no tree of its own is in the collector's way.
    """
    for i in range(size):
        yield f"s{i}", _encode(_service(i, attempt=3.0 if i == changed else 2.0))


def _probe(url: str) -> dict[str, Any]:
    return {"endpoints": [url], "timeout": {"deadline": DEADLINE, "attempt": DEADLINE}}


@dataclass(slots=True)
class Observation:
    """What one step saw: lag, collections, calls."""

    lag_ms: float = 0.0
    lag_outside_gc_ms: float = 0.0
    gc_max_ms: float = 0.0
    gc_full: int = 0
    gc_young: int = 0
    """Collections of the younger generations: each moves what is alive then a generation up."""
    calls: int = 0
    missed: int = 0
    configure_ms: float = 0.0
    seconds: float = 0.0
    collections: list[tuple[float, float]] = field(default_factory=list)
    """When each garbage collection started and ended (``time.perf_counter``)."""


class ConfigureTimer:
    """Times every plugin's ``healkit_configure`` together: first and last of them all."""

    healkit_name = "bench-configure-timer"

    def __init__(self) -> None:
        self.started = 0.0
        self.last_ms = 0.0

    @healkit.hookimpl(tryfirst=True)
    def healkit_configure(self) -> None:
        """Note when the plugins start taking the snapshot (this runs first)."""
        self.started = time.perf_counter()


class ConfigureEnd:
    """The ``trylast`` half of :class:`ConfigureTimer`."""

    healkit_name = "bench-configure-end"

    def __init__(self, timer: ConfigureTimer) -> None:
        self.timer = timer

    @healkit.hookimpl(trylast=True)
    def healkit_configure(self) -> None:
        """Note how long the plugins took (this runs last)."""
        self.timer.last_ms = (time.perf_counter() - self.timer.started) * 1000


def _timed_runtime(source: healkit.ConfigSource) -> tuple[healkit.Runtime, ConfigureTimer]:
    timer = ConfigureTimer()
    return healkit.Runtime(config=source, plugins=[timer, ConfigureEnd(timer)]), timer


@contextmanager
def _collections(into: Observation) -> Iterator[None]:
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            into.gc_young += info["generation"] < 2  # not the oldest generation
            return
        ended = time.perf_counter()
        into.collections.append((started[0], ended))
        into.gc_max_ms = max(into.gc_max_ms, (ended - started[0]) * 1000)
        into.gc_full += info["generation"] == 2  # the oldest generation: a full collection

    gc.callbacks.append(timed)
    try:
        yield
    finally:
        gc.callbacks.remove(timed)


async def _observe(
    runtime: healkit.Runtime,
    timer: ConfigureTimer,
    client: healkit.Client,
    write: Callable[[], Awaitable[None]] | None,
) -> Observation:
    """Run ``write`` until the runtime applied a new version; tick and call meanwhile.

    Without ``write``: tick and call for ``IDLE`` seconds (the loop's lag with no document).
    """
    seen = Observation()
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            lag = (now - last - 0.001) * 1000
            seen.lag_ms = max(seen.lag_ms, lag)
            if not any(start < now and end > last for start, end in seen.collections):
                seen.lag_outside_gc_ms = max(seen.lag_outside_gc_ms, lag)
            last = now

    async def call() -> None:
        while not done.is_set():
            seen.calls += 1
            try:
                await client.get("/ok", service="probe")
            except healkit.HealkitError:
                seen.missed += 1

    version = runtime.version
    with _collections(seen):
        tasks = [asyncio.create_task(tick()), asyncio.create_task(call())]
        started = time.perf_counter()
        if write is None:
            await asyncio.sleep(IDLE)
        else:
            await write()
            async with asyncio.timeout(APPLIED):
                await runtime.wait_for_version(version + 1)
        seen.seconds = time.perf_counter() - started
        seen.configure_ms = timer.last_ms if write is not None else 0.0
        done.set()
        await asyncio.gather(*tasks)
    return seen


async def _file_steps(size: int, server: FaultServer) -> dict[str, Observation]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "healkit.json"

        def document(services: Iterator[tuple[str, bytes]]) -> str:
            parts = [f'"probe":{_encode(_probe(server.url)).decode()}']
            parts.extend(f'"{name}":{text.decode()}' for name, text in services)
            return '{"services":{' + ",".join(parts) + "}}"

        def replace(text: str) -> None:
            temporary = path.with_suffix(".tmp")
            temporary.write_text(text)
            temporary.replace(path)

        replace(document(iter(())))
        source = healkit.FileSource(path, poll_interval=0.05)
        runtime, timer = _timed_runtime(source)
        steps: dict[str, Observation] = {}
        async with healkit.Client(runtime=runtime) as client:
            steps["idle"] = await _observe(runtime, timer, client, None)
            for step, changed in (("grow", None), ("change one", 7)):
                text = document(_service_texts(size, changed=changed))  # before the step
                steps[step] = await _observe(
                    runtime, timer, client, lambda text=text: asyncio.to_thread(replace, text)
                )
        return steps


_WRITER: Final = """
import asyncio, sys
from healkit.etcd import EtcdClient, PutOp

async def write(url, root, lines):
    async with EtcdClient(url) as etcd:
        ops = []
        for line in lines:
            key, _, value = line.partition(b" ")
            ops.append(PutOp(key=root.encode() + key, value=value))
        await etcd.txn(success=ops)

asyncio.run(write(sys.argv[1], sys.argv[2], sys.stdin.buffer.read().splitlines()))
"""


def _write_in_thread(url: str, documents: dict[str, bytes]) -> None:
    """Write every document in one transaction, from a process of its own (an operator's tool).

    In this process, the writer's own objects (the transaction's request and
    its 10,000 replies) would be collected, and walked, with the runtime's;
    the documents go to it as lines of bytes (``key value``), which the
    collector does not track.
    """
    lines = b"\n".join(key.encode() + b" " + document for key, document in documents.items())
    subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", _WRITER, url, ROOT], input=lines, check=True
    )


async def _etcd_steps(size: int, server: FaultServer) -> dict[str, Observation]:
    limits = ["--max-txn-ops=20000", f"--max-request-bytes={8 * 1024 * 1024}"]
    async with EtcdServer(extra_args=limits) as etcd_server, AsyncExitStack() as stack:
        await asyncio.to_thread(
            _write_in_thread, etcd_server.url, {"services/probe": _encode(_probe(server.url))}
        )
        etcd = await stack.enter_async_context(EtcdClient(etcd_server.url))
        runtime, timer = _timed_runtime(EtcdSource(etcd, namespace=NAMESPACE))
        client = await stack.enter_async_context(healkit.Client(runtime=runtime))
        steps: dict[str, Observation] = {}
        for step, services in (
            ("grow", _service_texts(size)),
            ("change one", iter([("s7", _encode(_service(7, attempt=3.0)))])),
        ):
            documents = {f"services/{name}": text for name, text in services}
            steps[step] = await _observe(
                runtime,
                timer,
                client,
                lambda documents=documents: asyncio.to_thread(
                    _write_in_thread, etcd_server.url, documents
                ),
            )
        return steps


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


async def _measure(sizes: tuple[int, ...]) -> dict[str, dict[str, Observation]]:
    results: dict[str, dict[str, Observation]] = {}
    # Settled once, as a service is some time after its start: importing every
    # scenario's module and the peers' libraries leaves some 30,000 objects
    # counted towards the next full collection, which the first ten collections
    # of generation 1 (whatever runs then) would start. The steps after this one
    # add their own, one after the other, and nothing settles them again.
    gc.collect()
    # The server records no request: its history would grow with every call and
    # be walked by every full collection (the bench's garbage, not the runtime's).
    async with FaultServer(max_recorded=0) as server:
        for source, steps in (("file", _file_steps), ("etcd", _etcd_steps)):
            for size in sizes:
                progress(f"  apply: {source} source, {size} services")
                for step, seen in (await steps(size, server)).items():
                    results[f"{source}, {size} services, {step}"] = seen
    return results


def run(settings: Settings) -> ScenarioResult:
    """Apply large documents through a file and etcd; the loop's lag and calls in flight."""
    sizes = QUICK_SIZES if settings.quick else SIZES
    results = asyncio.run(_measure(sizes))
    data: dict[str, object] = {
        "unit": "ms",
        "call_deadline_s": DEADLINE,
        "variants": {
            name: {
                "max_lag_ms": round(seen.lag_ms, 1),
                "max_lag_outside_gc_ms": round(seen.lag_outside_gc_ms, 1),
                "max_gc_pause_ms": round(seen.gc_max_ms, 1),
                "full_collections": seen.gc_full,
                "young_collections": seen.gc_young,
                "calls": seen.calls,
                "calls_missing_deadline": seen.missed,
                "write_to_applied_s": round(seen.seconds, 2),
                "configure_ms": round(seen.configure_ms, 2),
            }
            for name, seen in results.items()
        },
    }
    table = Table(
        title=f"Applying a document while calls with a {DEADLINE} s deadline run",
        headers=(
            "source, size, step",
            "max lag ms",
            "outside GC ms",
            "max GC pause ms",
            "full GCs",
            "young GCs",
            "calls",
            "missed deadline",
            "applied after s",
            "configure ms",
        ),
        rows=tuple(
            (
                name,
                f"{seen.lag_ms:.1f}",
                f"{seen.lag_outside_gc_ms:.1f}",
                f"{seen.gc_max_ms:.1f}",
                str(seen.gc_full),
                str(seen.gc_young),
                str(seen.calls),
                str(seen.missed),
                f"{seen.seconds:.2f}",
                f"{seen.configure_ms:.2f}",
            )
            for name, seen in results.items()
        ),
    )
    largest = max(sizes)
    targets = [
        Target(
            f"apply: {name}: max loop lag, garbage collections included",
            seen.lag_ms,
            LAG_LIMIT_MS,
            "ms",
        )
        for name, seen in results.items()
        if f", {largest} services" in name
    ] + [
        Target(
            "apply: calls that missed their deadline",
            sum(seen.missed for seen in results.values()),
            0,
            "calls",
        )
    ]
    notes = [
        (
            "lag: the worst delay of a 1 ms ticker past its wake-up time, from the write until "
            "the runtime applied the document (validation runs in a worker thread meanwhile); "
            "'idle' is the same ticker and calls for 1 s with no document written."
        ),
        (
            "a garbage collection stops the loop too, whichever thread triggers it; a full one "
            "(generation 2) takes time in proportion to every object the process holds. "
            "'outside GC' is the worst lag of the ticks during which no collection ran. "
            "'young GCs': collections of generations 0 and 1, each of which moves what is "
            "alive then (calls in flight included) a generation up, towards the next full one. "
            "The process is collected once before the first step (the imports of every "
            "scenario and peer); the steps' own objects add up from there."
        ),
        (
            "configure: the time every plugin's healkit_configure took together, on the loop "
            "(from a tryfirst to a trylast implementation)."
        ),
    ]
    return ScenarioResult(data=data, tables=[table], targets=targets, notes=notes)
