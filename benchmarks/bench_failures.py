"""Failure paths: what a call costs when it fails, next to the peers, in one run.

Two measurements, each interleaving its variants sample by sample so that a
drift of the machine hits them all alike:

* **A refused call**: a breaker that one failure opened (for the whole run)
  refuses the call, and nothing is sent. Measured through ``client.get`` (the
  standard plugin set: timeout, retry, breaker; the breaker tripped by one
  refused connection to a loopback port) and through ``@healkit.resilient``
  (the same set; a function that raises ``ConnectionError`` trips it), next to
  the Python breakers ``circuitbreaker``, ``purgatory`` and ``aiobreaker``
  around an async function, each opened by one failure. µs per call (wall
  clock: no I/O happens, one task). The goal: healkit's refusal costs at most
  :data:`TARGET_REFUSED_RATIO` times the fastest of those breakers, while the
  refusal still goes through ``healkit_on_error``, the fallbacks and routing.
* **A failed call**: one attempt to a loopback port where nothing listens
  (connection refused), through raw aiohttp (``session.get``), aiohttp-retry
  (``RetryClient``, 1 attempt) and ``client.get`` (standard plugins, 1 attempt,
  breaker disabled so that every call fails the same way). Client CPU µs per
  call (``time.process_time()``), as a ratio to raw aiohttp. The goal: at most
  :data:`TARGET_FAILED_RATIO`.

healkit logs as an application with JSON logs would: a logging handler with
structlog's ``ProcessorFormatter`` and JSON renderer writing to ``os.devnull``
at level INFO, so what a failure logs (the first in
full, then a summary per interval) is part of its cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import aiobreaker
import aiohttp
import aiohttp_retry
import circuitbreaker
import purgatory
import structlog
from _harness import ScenarioResult, Settings, Spread, Table, Target, progress, spread
from _plugins import standard_plugins

import healkit
from healkit.testing import refused_url

__all__ = ["run"]

TARGET_REFUSED_RATIO: Final = 1.5
TARGET_FAILED_RATIO: Final = 1.10
OPEN_FOR: Final = 3600.0
"""Seconds every breaker stays open once tripped: the whole run."""
SERVICE: Final = "bench"
BATCH: Final = 100

OneCall = Callable[[], Awaitable[None]]
"""One call that is expected to fail; it swallows the expected error, raises any other."""


@dataclass(frozen=True, slots=True)
class Sizes:
    """Calls per sample and samples per variant, for each measurement, and warm-up calls."""

    refused_calls: int
    refused_repeats: int
    failed_calls: int
    failed_repeats: int
    warmup: int


FULL: Final = Sizes(
    refused_calls=20_000, refused_repeats=9, failed_calls=2_000, failed_repeats=9, warmup=500
)
QUICK: Final = Sizes(
    refused_calls=3_000, refused_repeats=3, failed_calls=300, failed_repeats=3, warmup=100
)


# -- refused calls --------------------------------------------------------------------------


def _breaker_document(endpoint: str) -> dict[str, Any]:
    breaker = {"consecutive_failures": 1, "open_duration": OPEN_FOR, "open_duration_max": OPEN_FOR}
    return {"services": {SERVICE: {"endpoints": [endpoint], "breaker": breaker}}}


async def _down() -> None:
    raise ConnectionError("down")


@asynccontextmanager
async def refused_client_get() -> AsyncIterator[OneCall]:
    """``client.get`` refused by the open breaker of a service (standard plugins)."""
    config = _breaker_document(refused_url())
    async with healkit.Client(config=config, plugins=standard_plugins(), entry_points=False) as c:
        with contextlib.suppress(healkit.ConnectError, healkit.CircuitOpenError):
            await c.get("/", service=SERVICE)  # trips the breaker (the retry is refused)

        async def one() -> None:
            try:
                await c.get("/", service=SERVICE)
            except healkit.CircuitOpenError:
                return
            raise AssertionError("the call was not refused")

        yield one


@asynccontextmanager
async def refused_resilient() -> AsyncIterator[OneCall]:
    """A ``@healkit.resilient`` function refused by its service's open breaker."""
    runtime = healkit.Runtime(
        config=_breaker_document("http://127.0.0.1:9"),
        plugins=standard_plugins(),
        entry_points=False,
    )
    async with runtime:
        down = healkit.resilient(service=SERVICE, failures=(ConnectionError,), runtime=runtime)(
            _down
        )
        with contextlib.suppress(healkit.CallError, healkit.CircuitOpenError):
            await down()  # trips the breaker (the retry is refused)

        async def one() -> None:
            try:
                await down()
            except healkit.CircuitOpenError:
                return
            raise AssertionError("the call was not refused")

        yield one


@asynccontextmanager
async def refused_circuitbreaker() -> AsyncIterator[OneCall]:
    """circuitbreaker's ``@circuit`` around an async function."""
    down = circuitbreaker.circuit(
        failure_threshold=1, recovery_timeout=int(OPEN_FOR), expected_exception=ConnectionError
    )(_down)
    with contextlib.suppress(ConnectionError):
        await down()

    async def one() -> None:
        try:
            await down()
        except circuitbreaker.CircuitBreakerError:
            return
        raise AssertionError("the call was not refused")

    yield one


@asynccontextmanager
async def refused_purgatory() -> AsyncIterator[OneCall]:
    """purgatory's async ``@circuitbreaker`` (in-memory state)."""
    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=1, default_ttl=OPEN_FOR)
    down = factory(SERVICE)(_down)
    with contextlib.suppress(ConnectionError):
        await down()

    async def one() -> None:
        try:
            await down()
        except purgatory.domain.model.OpenedState:
            return
        raise AssertionError("the call was not refused")

    yield one


@asynccontextmanager
async def refused_aiobreaker() -> AsyncIterator[OneCall]:
    """aiobreaker's ``CircuitBreaker`` decorating an async function."""
    breaker = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=dt.timedelta(seconds=OPEN_FOR))
    down = breaker(_down)
    with contextlib.suppress(ConnectionError, aiobreaker.CircuitBreakerError):
        await down()

    async def one() -> None:
        try:
            await down()
        except aiobreaker.CircuitBreakerError:
            return
        raise AssertionError("the call was not refused")

    yield one


REFUSED: Final[dict[str, Callable[[], contextlib.AbstractAsyncContextManager[OneCall]]]] = {
    "healkit client.get": refused_client_get,
    "healkit @resilient": refused_resilient,
    "circuitbreaker": refused_circuitbreaker,
    "purgatory": refused_purgatory,
    "aiobreaker": refused_aiobreaker,
}
HEALKIT_REFUSED: Final = ("healkit client.get", "healkit @resilient")
PEER_BREAKERS: Final = ("circuitbreaker", "purgatory", "aiobreaker")


# -- failed calls -----------------------------------------------------------------------------


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector())


@asynccontextmanager
async def failed_aiohttp(url: str) -> AsyncIterator[OneCall]:
    """Raw aiohttp: ``session.get`` of a port where nothing listens."""
    async with _session() as session:

        async def one() -> None:
            try:
                async with session.get(url) as response:
                    await response.read()
            except aiohttp.ClientConnectorError:
                return
            raise AssertionError("the call did not fail")

        yield one


@asynccontextmanager
async def failed_aiohttp_retry(url: str) -> AsyncIterator[OneCall]:
    """aiohttp-retry's ``RetryClient``, one attempt."""
    options = aiohttp_retry.ExponentialRetry(attempts=1)
    async with aiohttp_retry.RetryClient(client_session=_session(), retry_options=options) as c:

        async def one() -> None:
            try:
                async with c.get(url) as response:
                    await response.read()
            except aiohttp.ClientConnectorError:
                return
            raise AssertionError("the call did not fail")

        yield one


@asynccontextmanager
async def failed_healkit(url: str) -> AsyncIterator[OneCall]:
    """``client.get`` with the standard plugins, one attempt, the breaker disabled."""
    service = {"endpoints": [url], "retry": {"attempts": 1}, "breaker": {"mode": "disabled"}}
    config = {"services": {SERVICE: service}}
    async with healkit.Client(config=config, plugins=standard_plugins(), entry_points=False) as c:

        async def one() -> None:
            try:
                await c.get("/", service=SERVICE)
            except healkit.ConnectError:
                return
            raise AssertionError("the call did not fail")

        yield one


FAILED: Final[dict[str, Callable[[str], contextlib.AbstractAsyncContextManager[OneCall]]]] = {
    "aiohttp": failed_aiohttp,
    "aiohttp-retry": failed_aiohttp_retry,
    "healkit client.get": failed_healkit,
}
FAILED_REFERENCE: Final = "aiohttp"


# -- measuring --------------------------------------------------------------------------------


async def _sample(one: OneCall, calls: int, timer: Callable[[], float]) -> float:
    """Return µs per call over ``calls`` calls, by ``timer``."""
    gc.collect()
    start = timer()
    for _ in range(calls // BATCH):
        for _ in range(BATCH):
            await one()
        await asyncio.sleep(0)
    return (timer() - start) * 1e6 / calls


async def _interleaved(
    variants: dict[str, OneCall],
    *,
    calls: int,
    repeats: int,
    warmup: int,
    timer: Callable[[], float],
    label: str,
) -> dict[str, list[float]]:
    for one in variants.values():
        await _sample(one, max(warmup // BATCH, 1) * BATCH, timer)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(await _sample(variants[name], calls, timer))
        progress(f"  {label}: repeat {repeat + 1}/{repeats}")
    return samples


async def _measure(sizes: Sizes) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    async with AsyncExitStack() as stack:
        refused = {name: await stack.enter_async_context(make()) for name, make in REFUSED.items()}
        refused_us = await _interleaved(
            refused,
            calls=sizes.refused_calls,
            repeats=sizes.refused_repeats,
            warmup=sizes.warmup * 10,
            timer=time.perf_counter,
            label="refused",
        )
    url = refused_url() + "/"
    async with AsyncExitStack() as stack:
        failed = {name: await stack.enter_async_context(make(url)) for name, make in FAILED.items()}
        failed_cpu = await _interleaved(
            failed,
            calls=sizes.failed_calls,
            repeats=sizes.failed_repeats,
            warmup=sizes.warmup,
            timer=time.process_time,
            label="failed",
        )
    return refused_us, failed_cpu


@contextlib.contextmanager
def json_logs() -> Iterator[None]:
    """Log as an application with JSON logs would, to ``os.devnull``."""
    top = logging.getLogger("healkit")
    level = top.level
    with open(os.devnull, "w", encoding="utf-8") as sink:  # noqa: PTH123 - a plain text sink
        handler = logging.StreamHandler(sink)
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.stdlib.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso"),
                    structlog.processors.JSONRenderer(),
                ]
            )
        )
        top.addHandler(handler)
        top.setLevel(logging.INFO)
        try:
            yield
        finally:
            top.removeHandler(handler)
            top.setLevel(level)


def _paired_ratios(samples: list[float], reference: list[float]) -> Spread:
    return spread(s / r for s, r in zip(samples, reference, strict=True))


def run(settings: Settings) -> ScenarioResult:
    """Measure both failure paths; check the two ratios against their goals."""
    sizes = QUICK if settings.quick else FULL
    progress(
        f"failures: {sizes.refused_repeats} x {sizes.refused_calls} refused calls, "
        f"{sizes.failed_repeats} x {sizes.failed_calls} failed calls per variant"
    )
    with json_logs():
        refused_samples, failed_samples = asyncio.run(_measure(sizes))
    refused = {name: spread(values) for name, values in refused_samples.items()}
    failed = {name: spread(values) for name, values in failed_samples.items()}
    fastest = min(PEER_BREAKERS, key=lambda name: refused[name].median)
    fastest_us = refused[fastest].median
    reference_us = failed[FAILED_REFERENCE].median
    data: dict[str, object] = {
        "refused": {
            "unit": "µs per call",
            "calls_per_sample": sizes.refused_calls,
            "samples": sizes.refused_repeats,
            "fastest_peer": fastest,
            "variants": {
                name: {
                    "us_per_call": result.as_json(),
                    "ratio_to_fastest_peer": round(result.median / fastest_us, 3),
                }
                for name, result in refused.items()
            },
        },
        "failed": {
            "unit": "client CPU µs per call",
            "reference": FAILED_REFERENCE,
            "calls_per_sample": sizes.failed_calls,
            "samples": sizes.failed_repeats,
            "variants": {
                name: {
                    "cpu_us_per_call": result.as_json(2),
                    "cpu_ratio": round(result.median / reference_us, 3),
                    "cpu_ratio_per_sample": _paired_ratios(
                        failed_samples[name], failed_samples[FAILED_REFERENCE]
                    ).as_json(3),
                }
                for name, result in failed.items()
            },
        },
    }
    refused_table = Table(
        title="A refused call (open breaker, nothing sent), µs per call",
        headers=("variant", "median µs", "min-max µs", f"ratio to {fastest}"),
        rows=tuple(
            (
                name,
                f"{result.median:.2f}",
                f"{result.low:.2f}-{result.high:.2f}",
                f"{result.median / fastest_us:.2f}",
            )
            for name, result in refused.items()
        ),
    )
    failed_table = Table(
        title="A failed call (connection refused, one attempt), client CPU µs per call",
        headers=("variant", "median CPU µs", "CPU ratio", "per-sample ratio", "extra µs"),
        rows=tuple(
            (
                name,
                f"{result.median:.1f}",
                f"{result.median / reference_us:.3f}",
                "{0.low:.3f}-{0.high:.3f}".format(
                    _paired_ratios(failed_samples[name], failed_samples[FAILED_REFERENCE])
                ),
                f"{result.median - reference_us:+.1f}",
            )
            for name, result in failed.items()
        ),
    )
    targets = [
        Target(
            name=f"failures: {name} refused / fastest Python breaker ({fastest})",
            value=refused[name].median / fastest_us,
            limit=TARGET_REFUSED_RATIO,
            unit="x",
        )
        for name in HEALKIT_REFUSED
    ]
    targets.append(
        Target(
            name=f"failures: healkit client.get failed call CPU / {FAILED_REFERENCE}",
            value=failed["healkit client.get"].median / reference_us,
            limit=TARGET_FAILED_RATIO,
            unit="x",
        )
    )
    notes = [
        (
            "healkit runs the standard plugins (timeout, retry, breaker) and logs JSON to "
            "os.devnull at INFO; repeated failures are logged once, then summarised."
        ),
        (
            "refused: wall µs per call, one task, no I/O; the peers' breakers wrap an async "
            "function and were opened by one ConnectionError."
        ),
        (
            "failed: a loopback port where nothing listens; client CPU (time.process_time) per "
            "call, sequential calls; per-sample ratio = the same ratio sample by sample."
        ),
    ]
    return ScenarioResult(
        data=data, tables=[refused_table, failed_table], targets=targets, notes=notes
    )
