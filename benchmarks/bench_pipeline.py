"""The pipeline alone: µs per successful call on a stub transport, per plugin set.

Variants, each measured as ``await one()`` in a tight loop inside one event loop:

* ``baseline``: ``one`` is a trivial ``async def`` (the cost of the await itself);
* ``execute[<set>]``: what ``healkit.Client`` does per call minus HTTP: read the
  runtime's config snapshot, build a fresh ``CallContext`` (the caller's anyio
  deadline is read lazily, as in ``Client``) and run ``healkit._executor.execute``
  with a transport whose ``send`` returns a prebuilt ``healkit.Response`` without I/O;
* ``resilient[<set>]``: a trivial ``async def`` decorated with
  ``@healkit.resilient(service=..., runtime=...)`` (adds the decorator's work:
  the active-runtime lookup, ``functools.wraps``' wrapper, the function transport);
* ``execute[full+sdk]``: ``execute`` with the full set, the tracing plugin on
  the OpenTelemetry SDK (in-memory span exporter and metric reader; see
  ``_plugins.py``); skipped, with a note, when the SDK is not installed;
* ``rejected[standard]``: ``execute`` with the standard plugin set against a
  service whose breaker is open (tripped once before the measurement): the
  breaker refuses the attempt, the retry plugin declines to wait for it, and the
  call ends in ``CircuitOpenError`` without the transport being asked to send;
* ``rejected[bare]``: the same refusal by :class:`Refuser`, a plugin whose
  ``healkit_pre_request`` only raises ``CircuitOpenError``, and no other plugin:
  what the pipeline itself costs for a refused call, plugins' work aside. Their
  goal is a ratio to the Python circuit breakers, measured side by side in
  ``bench_failures.py``; here they are reported, not checked.

``<set>`` is each entry of :data:`PLUGIN_SETS` (``full``: timeout, retry,
breaker, tls, tracing with the API's no-op providers). Every 100 calls the loop awaits
``asyncio.sleep(0)`` (timed, paid by every variant alike) so the event loop turns
as it would between real requests and purges the cancelled timer handles that
per-attempt timeouts leave behind; without it the timer heap grows without bound
and the pipeline looks slower than it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from _harness import ScenarioResult, Settings, Spread, Table, Target, progress, spread
from _plugins import (
    SDK_AVAILABLE,
    SDK_MISSING_NOTE,
    SdkTelemetry,
    full_plugins,
    names,
    service_document,
    standard_plugins,
)

import healkit
from healkit._executor import execute
from healkit_timeout import TimeoutPlugin

__all__ = [
    "ENDPOINT",
    "FULL",
    "PLUGIN_SETS",
    "QUICK",
    "SERVICE",
    "OneCall",
    "Sizes",
    "execute_call",
    "interleaved",
    "logs_dropped",
    "run",
]

SERVICE: Final = "bench"
ENDPOINT: Final = "http://127.0.0.1:9"
BATCH: Final = 100
TARGET_US: Final = 5.0
TARGET_VARIANTS: Final = ("execute[timeout]", "execute[standard]")
REJECTED_VARIANT: Final = "rejected[standard]"
BARE_REJECTED_VARIANT: Final = "rejected[bare]"
OPEN_FOR: Final = 86_400.0
"""Seconds the breaker of ``rejected[standard]`` stays open: the whole run."""

PLUGIN_SETS: Final[dict[str, Callable[[], Sequence[object]]]] = {
    "none": tuple,
    "timeout": lambda: (TimeoutPlugin(),),
    "standard": standard_plugins,
    "full": full_plugins,
}
"""Plugin sets to measure: name -> a factory of fresh plugin instances. Add new plugins here."""
TLS_SETS: Final = frozenset({"full"})
"""Sets whose service gets a ``tls`` section (the TLS plugin is idle without one)."""
SDK_VARIANT: Final = "execute[full+sdk]"

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
    """A transport whose attempts all get the same response at once, without I/O.

    Attributes:
        sends: attempts it was asked to send.

    """

    __slots__ = ("_response", "sends")

    def __init__(self, response: healkit.Response) -> None:
        self._response = response
        self.sends = 0

    async def send(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> tuple[healkit.Response, healkit.Response | None]:
        del call, attempt
        self.sends += 1
        return self._response, self._response

    def discard(self, result: healkit.Response) -> None:
        del result

    def accept(self, fallback: healkit.Fallback) -> healkit.Response | None:
        del fallback
        return None

    def finish(
        self, result: healkit.Response, outcome: Callable[[], healkit.Outcome]
    ) -> healkit.Response:
        result._bind_outcome(outcome)  # noqa: SLF001 - as healkit's HTTP transport does
        return result


def _runtime(plugins: Sequence[object], *, tls: bool = False) -> healkit.Runtime:
    config = {"services": {SERVICE: service_document(ENDPOINT, tls=tls)}}
    return healkit.Runtime(config=config, plugins=plugins, entry_points=False)


def _baseline() -> OneCall:
    async def nothing() -> int:
        return 1

    return nothing


def execute_call(
    runtime: healkit.Runtime, transport: StubTransport | None = None, *, routable: bool = False
) -> OneCall:
    """``execute`` as ``Client`` runs it; ``routable``: a call by service name (routing chooses)."""
    if transport is None:
        transport = StubTransport(healkit.Response(200, body=b'{"ok":true}', url=ENDPOINT + "/"))
    clock = runtime.clock

    async def one() -> healkit.Response:
        config = runtime.config
        # Built as Client._prepare builds it: by position (keywords to a class
        # cost CPython 3.11 a dictionary per call).
        call = healkit.CallContext(
            SERVICE,
            "http",
            "GET",
            "/",
            config,
            config.policy(SERVICE),
            clock,
            None,  # headers
            True,  # idempotent  # noqa: FBT003 - by position, as Client passes it
            True,  # replayable  # noqa: FBT003
            clock.now(),
            math.inf,  # deadline
            routable,
        )
        return await execute(runtime, call, transport, ENDPOINT)

    return one


def _sdk_call(telemetry: SdkTelemetry) -> OneCall:
    """``execute`` with the full set, tracing on the SDK; counts calls for the exporter."""
    one = execute_call(_runtime(full_plugins(telemetry), tls=True))
    count = telemetry.count

    async def traced() -> healkit.Response:
        count()
        return await one()

    return traced


def _decorated_call(runtime: healkit.Runtime) -> OneCall:
    @healkit.resilient(service=SERVICE, runtime=runtime)
    async def nothing() -> int:
        return 1

    return nothing


class Refuser:
    """A plugin that refuses every attempt as an open breaker does, and does nothing else."""

    healkit_name = "refuser"

    @healkit.hookimpl
    def healkit_pre_request(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> None:
        """Refuse the attempt."""
        raise healkit.CircuitOpenError(call.service, attempt.endpoint, retry_at=math.inf)


class RejectedCall:
    """``execute`` refused before sending; checks that nothing was ever sent.

    Args:
        plugins: the runtime's plugins.
        breaker: the service's ``breaker`` section, if it has one.

    """

    def __init__(self, plugins: Sequence[object], breaker: dict[str, object] | None) -> None:
        service: dict[str, object] = {"endpoints": [ENDPOINT]}
        if breaker is not None:
            service["breaker"] = breaker
        self.runtime = healkit.Runtime(
            config={"services": {SERVICE: service}}, plugins=plugins, entry_points=False
        )
        failing = healkit.Response(500, body=b"", url=ENDPOINT + "/")
        self.transport = StubTransport(failing)
        self._execute = execute_call(self.runtime, self.transport)
        self.sent_before = 0

    @classmethod
    def by_open_breaker(cls) -> RejectedCall:
        """The standard set against a breaker that one failure opens for the whole run."""
        breaker: dict[str, object] = {
            "consecutive_failures": 1,
            "open_duration": OPEN_FOR,
            "open_duration_max": OPEN_FOR,
        }
        return cls(standard_plugins(), breaker)

    async def trip(self) -> None:
        """Make the first call (a 500, not retried, opens a breaker); count what it sent."""
        with contextlib.suppress(healkit.CircuitOpenError):
            await self._execute()
        self.sent_before = self.transport.sends

    async def __call__(self) -> None:
        try:
            await self._execute()
        except healkit.CircuitOpenError:
            return
        raise AssertionError("the call was not refused")

    def check(self) -> None:
        """Fail if the transport was asked to send anything after the trip."""
        if self.transport.sends != self.sent_before:
            raise AssertionError(f"{self.transport.sends - self.sent_before} attempts were sent")


VARIANT_KINDS: Final[dict[str, Callable[[healkit.Runtime], OneCall]]] = {
    "execute": execute_call,
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


async def interleaved(variants: dict[str, OneCall], sizes: Sizes, label: str) -> dict[str, Spread]:
    """Warm every variant up, then sample them in turns; return µs per call per variant."""
    for one in variants.values():
        await _sample(one, sizes.warmup)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(sizes.repeats):
        # Interleave the variants so that drift of the machine hits them all alike.
        for name, one in variants.items():
            samples[name].append(await _sample(one, sizes.calls))
        progress(f"  {label}: repeat {repeat + 1}/{sizes.repeats}")
    return {name: spread(values) for name, values in samples.items()}


async def _measure(variants: dict[str, OneCall], sizes: Sizes) -> dict[str, Spread]:
    rejected = [one for one in variants.values() if isinstance(one, RejectedCall)]
    for refused in rejected:
        await refused.trip()
    results = await interleaved(variants, sizes, "pipeline")
    for refused in rejected:
        refused.check()
    return results


def _variants(telemetry: SdkTelemetry | None) -> dict[str, OneCall]:
    variants = {"baseline": _baseline()}
    for set_name, plugins in PLUGIN_SETS.items():
        for kind, factory in VARIANT_KINDS.items():
            # One runtime per variant, so no plugin instance is shared between them.
            runtime = _runtime(plugins(), tls=set_name in TLS_SETS)
            variants[f"{kind}[{set_name}]"] = factory(runtime)
    if telemetry is not None:
        variants[SDK_VARIANT] = _sdk_call(telemetry)
    variants[REJECTED_VARIANT] = RejectedCall.by_open_breaker()
    variants[BARE_REJECTED_VARIANT] = RejectedCall((Refuser(),), None)
    return variants


@contextlib.contextmanager
def logs_dropped() -> Iterator[None]:
    """Drop healkit's log events at the logger, as an application logging only criticals would.

    A refused call's log events (once per kind, then summarised) cost what the
    application's choice of logging setup makes them cost: left out here
    (``bench_failures.py`` measures with JSON logs).
    """
    top = logging.getLogger("healkit")
    level = top.level
    top.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        top.setLevel(level)


def run(settings: Settings) -> ScenarioResult:
    """Measure every variant; check the successful calls against their target."""
    sizes = QUICK if settings.quick else FULL
    progress(f"pipeline: {sizes.repeats} x {sizes.calls} calls per variant")
    telemetry = SdkTelemetry() if SDK_AVAILABLE else None
    with logs_dropped():
        results = asyncio.run(_measure(_variants(telemetry), sizes))
    if telemetry is not None:
        telemetry.check()
        telemetry.shutdown()
    base = results["baseline"].median
    data: dict[str, object] = {
        "unit": "µs per call",
        "calls_per_sample": sizes.calls,
        "samples": sizes.repeats,
        "plugin_sets": {
            **{name: names(make()) for name, make in PLUGIN_SETS.items()},
            **({"full+sdk": [*names(full_plugins()), "(SDK providers)"]} if SDK_AVAILABLE else {}),
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
    targets = [
        Target(
            name=f"pipeline: {variant} µs per call",
            value=results[variant].median,
            limit=TARGET_US,
            unit="µs",
        )
        for variant in TARGET_VARIANTS
    ]
    notes = [
        (
            "execute[...] includes reading the config snapshot and building the CallContext, "
            "as Client does per call; resilient[...] is a decorated trivial async function."
        ),
        (
            "the healkit logger drops every event below CRITICAL during this scenario: what a "
            "refused call logs costs what the application's logging setup makes it cost."
        ),
        (
            "full = timeout, retry, breaker, tls (a tls section with minimum_version 1.3: the "
            "plugin sets the service's context on each attempt), tracing with the API's no-op "
            "providers; full+sdk = the same with tracing on the SDK (a span per attempt to an "
            "InMemorySpanExporter, cleared every 1,000 calls, and an InMemoryMetricReader)."
        ),
    ]
    if not SDK_AVAILABLE:
        notes.append(SDK_MISSING_NOTE)
    return ScenarioResult(data=data, tables=[table], targets=targets, notes=notes)
