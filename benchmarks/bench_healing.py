"""Auto-healing: failover to a fallback group, recovery of the primary, endpoint selection.

Wall-clock times (``time.perf_counter()``) of real calls through
``healkit.Client`` (the standard plugin set: timeout, retry, breaker) to
``healkit.testing.FaultServer`` upstreams on loopback, in this process and event
loop. The service (:func:`_document`) has one primary endpoint and one healthy
``FaultServer`` as its fallback group, ``eject_after`` 3, and probes only where
said (recovery).

* Failover, one call at a time: the primary is a closed port (connections
  refused) and every repetition has a fresh client. Each call is timed from its
  start to its successful fallback response: the client's first call (it opens
  the client's first connection, to the fallback), the calls after it while the
  primary is still usable (a refused connection, then the pooled connection to
  the fallback), and the calls once the refusals ejected the primary (straight
  to the fallback). A fresh client whose only endpoint is the same server gives
  the same calls without a failover, for reference. A warm-up client, not
  counted, runs first.
* Failover under traffic: open-loop calls (:data:`RATE` per second, each in its
  own task) to a healthy primary ``FaultServer``; at a random moment the primary
  stops listening (its connections are cut, new ones refused) or answers every
  request with 503. Timed from the fault until the first fallback response
  ended; the calls that failed are counted. No probes: failover and passive
  ejection alone.
* Recovery: the primary answers 503, the probes (:data:`PROBE`: interval I,
  ``healthy_threshold`` M) took it down, and open-loop traffic goes to the
  fallback. At a random phase of the probes the primary answers 200 again (t0).
  Timed from t0 until the router's ``EndpointReturned`` event and until the end
  of the first call the primary served; the documented bound is I x (M + 1).
* Selection cost: ``bench_pipeline``'s ``execute`` on its stub transport (no
  plugin but the built-in routing, a call by service name) with one endpoint
  (the routing plugin idle, out of the call plan) and with four endpoints,
  ``round_robin`` or ``least_outstanding`` (power of two choices); µs per call,
  sampled the way ``bench_pipeline`` samples, and the overhead over one endpoint.

healkit's log events are dropped during the scenario (as in ``bench_pipeline``):
every refused attempt logs one, and what that costs is the application's choice.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import Final, Self

from _harness import ScenarioResult, Settings, Spread, Table, Target, progress
from _plugins import standard_plugins
from bench_pipeline import (
    ENDPOINT,
    FULL,
    QUICK,
    SERVICE,
    OneCall,
    Sizes,
    execute_call,
    interleaved,
    logs_dropped,
)

import healkit
from healkit.events import EndpointDown, EndpointReturned
from healkit.testing import Fault, FaultServer, refused_url

__all__ = ["run"]

PATH: Final = "/"
EJECT_AFTER: Final = 3
RATE: Final = 500
"""Calls started per second by the open-loop traffic."""
PERIOD: Final = 1 / RATE
WARM_CALLS: Final = 25
"""Calls the primary answers before a fault is injected."""
WAIT: Final = 5.0
"""Seconds any single step may take before the scenario gives up."""
SEED: Final = 20261123

PROBE_INTERVAL: Final = 0.1
HEALTHY_THRESHOLD: Final = 2
PROBE: Final = {
    "path": "/health",
    "interval": PROBE_INTERVAL,
    "timeout": PROBE_INTERVAL,
    "healthy_threshold": HEALTHY_THRESHOLD,
    "unhealthy_threshold": 2,
}
RECOVERY_BOUND_MS: Final = round(PROBE_INTERVAL * (HEALTHY_THRESHOLD + 1) * 1000, 3)
"""The documented bound (docs/routing.md): interval x healthy_threshold, plus one interval."""

FIRST: Final = "refused primary: first call"
BEFORE_EJECTION: Final = "refused primary: before ejection"
EJECTED: Final = "refused primary: ejected"
HEALTHY_FIRST: Final = "reference: healthy primary, first call"
HEALTHY: Final = "reference: healthy primary, later calls"
CLOSES: Final = "primary stops listening mid-traffic"
ANSWERS_503: Final = "primary answers 503 mid-traffic"
RETURNED: Final = "probes: EndpointReturned"
SERVED: Final = "first call served by the primary"

STUB_ENDPOINTS: Final = tuple(f"http://127.0.0.{n}:9" for n in range(1, 5))
"""The four endpoints of the selection variants (never contacted: the transport is a stub)."""
SELECTION: Final[dict[str, str | None]] = {
    "execute[1 endpoint]": None,
    "execute[round_robin x4]": "round_robin",
    "execute[least_outstanding x4]": "least_outstanding",
}
"""Selection variants: name -> the ``balance`` of four endpoints (``None``: one endpoint)."""
SELECTION_BASE: Final = "execute[1 endpoint]"


@dataclass(frozen=True, slots=True)
class Repeats:
    """Fresh clients per failover mode, later calls per client, faults per kind, recoveries."""

    clients: int
    later_calls: int
    faults: int
    recoveries: int


FULL_REPEATS: Final = Repeats(clients=100, later_calls=20, faults=40, recoveries=40)
QUICK_REPEATS: Final = Repeats(clients=10, later_calls=5, faults=4, recoveries=4)


def _document(primary: str, *fallback: str, **routing: object) -> dict[str, object]:
    section: dict[str, object] = {"eject_after": EJECT_AFTER, **routing}
    if fallback:
        section["fallback_groups"] = [list(fallback)]
    return {"services": {SERVICE: {"endpoints": [primary], "routing": section}}}


def _client(config: dict[str, object], *observers: object) -> healkit.Client:
    return healkit.Client(
        config=config, plugins=[*standard_plugins(), *observers], entry_points=False
    )


def _ms(seconds: float) -> float:
    return seconds * 1000


async def _timed_call(client: healkit.Client, endpoint: str, errors: Sequence[str | None]) -> float:
    """Return the ms one call took; check who answered and what its attempts met."""
    start = time.perf_counter()
    response = await client.get(PATH, service=SERVICE)
    took = _ms(time.perf_counter() - start)
    outcome = response.outcome
    met = [attempt.error for attempt in outcome.attempts]
    if response.status != 200 or outcome.endpoint != endpoint or met != list(errors):
        raise AssertionError(f"{outcome.endpoint} answered {response.status} after {met}")
    return took


def _primary_usable(client: healkit.Client) -> bool:
    seen = healkit.endpoint_status(client.runtime, SERVICE)
    if not seen:
        raise TypeError("the built-in routing plugin is missing")
    return seen[0].usable


async def _sequential(server: FaultServer, repeats: Repeats) -> dict[str, list[float]]:
    """Time calls one by one: fresh clients with a refused primary, and the reference."""
    times: dict[str, list[float]] = {
        name: [] for name in (FIRST, BEFORE_EJECTION, EJECTED, HEALTHY_FIRST, HEALTHY)
    }
    refused_then_ok = ("ConnectError", None)
    for _ in range(repeats.clients):
        async with _client(_document(refused_url(), server.url)) as client:
            times[FIRST].append(await _timed_call(client, server.url, refused_then_ok))
            for _ in range(EJECT_AFTER - 1):
                times[BEFORE_EJECTION].append(
                    await _timed_call(client, server.url, refused_then_ok)
                )
            if _primary_usable(client):
                raise AssertionError(f"{EJECT_AFTER} refusals did not eject the primary")
            for _ in range(repeats.later_calls):
                times[EJECTED].append(await _timed_call(client, server.url, (None,)))
        async with _client(_document(server.url)) as client:
            times[HEALTHY_FIRST].append(await _timed_call(client, server.url, (None,)))
            for _ in range(repeats.later_calls):
                times[HEALTHY].append(await _timed_call(client, server.url, (None,)))
    return times


class Traffic:
    """Open-loop calls to the service, :data:`RATE` per second, until the ``async with`` ends.

    Each call runs in its own task, started on schedule whether or not the
    earlier ones have ended, as requests reach a server: a call waiting for a
    retry does not hold the next one back. Leaving the block stops starting
    calls and waits until those in flight have ended.

    Attributes:
        answered: successful calls per endpoint that answered.
        failed: calls that ended in an error or a status other than 200.

    """

    def __init__(self, client: healkit.Client) -> None:
        self._client = client
        self.answered: Counter[str | None] = Counter()
        self.failed = 0
        self._stopping = False
        self._watch: tuple[Callable[[healkit.Outcome], bool], asyncio.Future[float]] | None = None
        self._launcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._launcher = asyncio.create_task(self._launch())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stopping = True
        if self._launcher is not None:
            # On timeout the launcher is cancelled, and with it every call in flight.
            async with asyncio.timeout(WAIT):
                await self._launcher

    def watch(self, wanted: Callable[[healkit.Outcome], bool]) -> asyncio.Future[float]:
        """Return a future of the moment the first call from now on that is ``wanted`` ended."""
        found = asyncio.get_running_loop().create_future()
        self._watch = (wanted, found)
        return found

    async def _launch(self) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as calls:
            next_at = loop.time()
            while not self._stopping:
                calls.create_task(self._call())
                # A start made late (the loop was busy) is not made up for with a burst.
                next_at = max(next_at + PERIOD, loop.time())
                await asyncio.sleep(next_at - loop.time())

    async def _call(self) -> None:
        try:
            response = await self._client.get(PATH, service=SERVICE)
        except healkit.HealkitError:
            self.failed += 1
            return
        ended = time.perf_counter()
        if response.status != 200:
            self.failed += 1
            return
        outcome = response.outcome
        self.answered[outcome.endpoint] += 1
        if self._watch is not None:
            wanted, found = self._watch
            if not found.done() and wanted(outcome):
                found.set_result(ended)


async def _switch(fallback: FaultServer, kind: str, rng: random.Random) -> tuple[float, int]:
    """Inject a fault into a primary under traffic; return ms until a fallback answer, failures."""
    async with AsyncExitStack() as serving:
        primary = await serving.enter_async_context(FaultServer())
        async with _client(_document(primary.url, fallback.url)) as client:
            async with Traffic(client) as traffic:
                async with asyncio.timeout(WAIT):
                    await primary.wait_for_hits(WARM_CALLS, PATH)
                await asyncio.sleep(rng.uniform(0, PERIOD))  # a random phase of the call starts
                if traffic.answered[fallback.url] or traffic.failed:
                    raise AssertionError(
                        "the fallback answered, or a call failed, before the fault"
                    )
                found = traffic.watch(lambda outcome: outcome.path == "fallback")
                fault_at = time.perf_counter()
                if kind == CLOSES:
                    await serving.aclose()  # stops listening and cuts every connection
                else:
                    primary.set_default(Fault.status(503))
                async with asyncio.timeout(WAIT):
                    answered = await found
            return _ms(answered - fault_at), traffic.failed


class Transitions:
    """An observer of the router's probe verdicts on one endpoint: when it went down, came back."""

    healkit_observer = True

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        loop = asyncio.get_running_loop()
        self.down: asyncio.Future[float] = loop.create_future()
        self.returned: asyncio.Future[float] = loop.create_future()

    @healkit.hookimpl
    def healkit_event(self, event: object) -> None:
        """Note the moment of the endpoint's first ``EndpointDown`` and ``EndpointReturned``."""
        now = time.perf_counter()
        if isinstance(event, EndpointDown | EndpointReturned) and event.endpoint == self._endpoint:
            future = self.down if isinstance(event, EndpointDown) else self.returned
            if not future.done():
                future.set_result(now)


async def _recovery(
    primary: FaultServer, fallback: FaultServer, rng: random.Random
) -> tuple[float, float]:
    """Bring a primary that probes took down back; return ms until returned, until it served."""
    primary.set_default(Fault.status(503))
    transitions = Transitions(primary.url)
    config = _document(primary.url, fallback.url, probe=PROBE)
    async with _client(config, transitions) as client:
        async with asyncio.timeout(WAIT):
            await transitions.down
        async with Traffic(client) as traffic:
            # Traffic on the fallback for a while, ending at a random phase of the probes.
            await asyncio.sleep(PROBE_INTERVAL * rng.uniform(1, 2))
            if traffic.answered[primary.url] or not traffic.answered[fallback.url]:
                raise AssertionError("the traffic did not all go to the fallback")
            found = traffic.watch(lambda outcome: outcome.endpoint == primary.url)
            healthy_at = time.perf_counter()
            primary.set_default(Fault.ok())
            async with asyncio.timeout(WAIT):
                served = await found
                returned = await transitions.returned
    return _ms(returned - healthy_at), _ms(served - healthy_at)


async def _measure_healing(repeats: Repeats) -> tuple[dict[str, list[float]], dict[str, int]]:
    rng = random.Random(SEED)
    failures = {CLOSES: 0, ANSWERS_503: 0}
    async with FaultServer() as fallback, FaultServer() as primary:
        progress(f"  healing: failover, {repeats.clients} fresh clients")
        # A warm-up client, not counted: the process's first failover pays one-time
        # costs (the retry plugin's first read of the caller's anyio deadline imports
        # anyio's asyncio backend, 50-80 ms), which are not the failover's.
        await _sequential(fallback, replace(repeats, clients=1))
        times = await _sequential(fallback, repeats)
        for kind in (CLOSES, ANSWERS_503):
            progress(f"  healing: {kind}, {repeats.faults} times")
            times[kind] = []
            for _ in range(repeats.faults):
                took, failed = await _switch(fallback, kind, rng)
                times[kind].append(took)
                failures[kind] += failed
        progress(f"  healing: recovery, {repeats.recoveries} times")
        times[RETURNED], times[SERVED] = [], []
        for _ in range(repeats.recoveries):
            returned, served = await _recovery(primary, fallback, rng)
            times[RETURNED].append(returned)
            times[SERVED].append(served)
    return times, failures


def _selection_call(balance: str | None) -> OneCall:
    """``execute`` by service name on a runtime whose service has one or four endpoints."""
    if balance is None:
        service: dict[str, object] = {"endpoints": [ENDPOINT]}
    else:
        service = {"endpoints": list(STUB_ENDPOINTS), "routing": {"balance": balance}}
    runtime = healkit.Runtime(config={"services": {SERVICE: service}}, entry_points=False)
    if ("routing" in runtime._plan.idle) != (balance is None):  # noqa: SLF001 - checked, not used
        raise AssertionError("the routing plugin is idle exactly when there is no choice")
    return execute_call(runtime, routable=True)


async def _check_selection(variants: dict[str, OneCall]) -> None:
    """Fail unless the calls went where each variant's balancing sends them."""
    turns = 4
    for name, one in variants.items():
        chosen: Counter[str | None] = Counter()
        for _ in range(turns * len(STUB_ENDPOINTS)):
            response = await one()
            if not isinstance(response, healkit.Response):
                raise TypeError(f"{name} returned {response!r}")
            chosen[response.outcome.endpoint] += 1
        match SELECTION[name]:
            case None:
                expected = chosen.keys() == {ENDPOINT}
            case "round_robin":
                expected = chosen == Counter(dict.fromkeys(STUB_ENDPOINTS, turns))
            case _:  # random draws: 16 times the same endpoint is a 1 in 4**15 chance
                expected = len(chosen) > 1
        if not expected:
            raise AssertionError(f"{name} chose {dict(chosen)}")


async def _measure_selection(sizes: Sizes) -> dict[str, Spread]:
    variants = {name: _selection_call(balance) for name, balance in SELECTION.items()}
    await _check_selection(variants)
    return await interleaved(variants, sizes, "healing: selection")


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "samples": len(values),
        "p50_ms": round(statistics.median(values), 2),
        "p99_ms": round(statistics.quantiles(values, n=100, method="inclusive")[98], 2),
        "max_ms": round(max(values), 2),
    }


def _row(name: str, summary: dict[str, float], last: str, digits: int) -> tuple[str, ...]:
    times = (f"{summary[key]:.{digits}f}" for key in ("p50_ms", "p99_ms", "max_ms"))
    return (name, str(summary["samples"]), *times, last)


def run(settings: Settings) -> ScenarioResult:
    """Time failover and recovery on loopback; measure the routing plugin's choice per call."""
    repeats, sizes = (QUICK_REPEATS, QUICK) if settings.quick else (FULL_REPEATS, FULL)
    progress(
        f"healing: failover ({repeats.clients} clients, {repeats.faults} faults of each kind), "
        f"recovery ({repeats.recoveries}), selection ({sizes.repeats} x {sizes.calls} calls)"
    )
    with logs_dropped():
        times, failures = asyncio.run(_measure_healing(repeats))
        selection = asyncio.run(_measure_selection(sizes))
    summary = {name: _summary(values) for name, values in times.items()}
    base = selection[SELECTION_BASE].median
    data: dict[str, object] = {
        "unit": "ms (failover, recovery); µs per call (selection)",
        "rate_per_second": RATE,
        "eject_after": EJECT_AFTER,
        "probe": PROBE,
        "recovery_bound_ms": RECOVERY_BOUND_MS,
        "variants": {
            **{
                name: {**values, **({"failed_calls": failures[name]} if name in failures else {})}
                for name, values in summary.items()
            },
            **{
                name: {
                    "us_per_call": result.as_json(),
                    "overhead_us": round(result.median - base, 3),
                }
                for name, result in selection.items()
            },
        },
    }
    failover = Table(
        title="Failover to the fallback group, ms",
        headers=("variant", "samples", "p50", "p99", "max", "failed calls"),
        rows=tuple(
            _row(name, summary[name], str(failures.get(name, "-")), 2)
            for name in (
                FIRST,
                BEFORE_EJECTION,
                EJECTED,
                HEALTHY_FIRST,
                HEALTHY,
                CLOSES,
                ANSWERS_503,
            )
        ),
    )
    recovery = Table(
        title=(
            f"Recovery: ms from the primary healthy again (probe interval {PROBE_INTERVAL} s, "
            f"healthy_threshold {HEALTHY_THRESHOLD})"
        ),
        headers=("variant", "samples", "p50", "p99", "max", "bound"),
        rows=tuple(
            _row(name, summary[name], f"{RECOVERY_BOUND_MS:.0f}", 1) for name in (RETURNED, SERVED)
        ),
    )
    choice = Table(
        title="Endpoint selection (stub transport), µs per call",
        headers=("variant", "median µs", "overhead µs", "min-max µs", "range"),
        rows=tuple(
            (
                name,
                f"{result.median:.2f}",
                f"{result.median - base:.2f}",
                f"{result.low:.2f}-{result.high:.2f}",
                f"{100 * result.relative_range:.0f}%",
            )
            for name, result in selection.items()
        ),
    )
    targets = [
        Target(
            name=(
                "healing: recovery, primary healthy to the first call it served, max "
                "(interval x (healthy_threshold + 1))"
            ),
            value=summary[SERVED]["max_ms"],
            limit=RECOVERY_BOUND_MS,
            unit="ms",
        )
    ]
    notes = [
        (
            "Clients have the standard plugin set and eject_after 3; the upstreams are "
            "FaultServers on loopback in the same process and event loop as the clients."
        ),
        (
            f"Mid-traffic faults: {RATE} calls started per second (open loop); timed from the "
            "fault to the end of the first fallback answer. 'failed calls': calls that ended "
            "in an error over all repetitions."
        ),
        (
            "Failover one call at a time: a warm-up client first, not counted; a process's "
            "first failover costs 50-80 ms more, once (the retry plugin's first read of the "
            "caller's anyio deadline imports anyio's asyncio backend)."
        ),
        (
            f"Recovery: probes every {PROBE_INTERVAL} s, healthy_threshold {HEALTHY_THRESHOLD}, "
            "unhealthy_threshold 2; the primary's 503s took it down before the traffic began."
        ),
        (
            "Selection: execute by service name with no plugin but the built-in routing; "
            "with one endpoint the routing plugin is idle (out of the call plan). Overhead: "
            "healkit_route's choice plus healkit_post_response's bookkeeping per call."
        ),
    ]
    return ScenarioResult(
        data=data, tables=[failover, recovery, choice], targets=targets, notes=notes
    )
