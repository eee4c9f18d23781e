"""End to end: healkit against raw aiohttp and its peers on one loopback server.

The server (``server.py``) runs in its own process. In this process each client
variant of :data:`CLIENTS` opens its session once; then rounds alternate between
the variants (the order rotates each round: ABCDE, BCDEA, ...), each round sending
the same number of GET requests with the same number of concurrent workers and
reading every body. ``time.process_time()`` around a round is the client CPU it
took (this process only: the server's CPU is not counted), ``time.perf_counter()``
its wall time. Reported per variant: median CPU µs per request and median
requests/s over the rounds, and both as ratios to raw aiohttp.

All variants use aiohttp's default connector (``TCPConnector()``: 100
connections, keep-alive) and the same limits: connect 5 s, read 30 s, 30 s per
attempt (the timeout plugin's defaults; ``ClientTimeout(total=30, connect=5,
sock_read=30)`` for the others). The peers retry up to 3 attempts on connection
errors; no request fails here, so only the success path is measured.
"""

from __future__ import annotations

import asyncio
import gc
import selectors
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
import aiohttp_retry
import httpx
import stamina
import tenacity
from _harness import ScenarioResult, Settings, Spread, Table, progress, spread
from _plugins import (
    SDK_AVAILABLE,
    SDK_MISSING_NOTE,
    SdkTelemetry,
    full_plugins,
    service_document,
    standard_plugins,
)

import healkit
from healkit.httpx import ResilientTransport
from healkit_timeout import TimeoutPlugin

__all__ = ["CLIENTS", "REFERENCE", "loopback_server", "run"]

SERVER: Final = Path(__file__).with_name("server.py")
SERVER_START_TIMEOUT: Final = 15.0
REFERENCE: Final = "aiohttp"
GUARDED_VARIANTS: Final = ("healkit", "healkit[standard]", "healkit[full]")
"""Variants whose CPU ratio is a guard against regressions (reported; not a target)."""
ATTEMPTS: Final = 3
RETRIED: Final = (aiohttp.ClientConnectionError, TimeoutError)
CLIENT_TIMEOUT: Final = aiohttp.ClientTimeout(total=30.0, connect=5.0, sock_read=30.0)

Fetch = Callable[[], Awaitable[int]]
"""One GET of the server's root, body read; returns the status."""

ClientVariant = Callable[[str], AbstractAsyncContextManager[Fetch]]
"""A client under test: given the server's base URL, opens and yields its fetch."""


@dataclass(frozen=True, slots=True)
class Sizes:
    """Requests per variant per round, measured rounds, concurrent workers, warm-up requests."""

    requests: int
    rounds: int
    concurrency: int
    warmup: int


FULL: Final = Sizes(requests=3_000, rounds=31, concurrency=32, warmup=500)
QUICK: Final = Sizes(requests=1_000, rounds=7, concurrency=32, warmup=200)


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(), timeout=CLIENT_TIMEOUT)


async def _get(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url + "/") as response:
        await response.read()
        return response.status


@asynccontextmanager
async def raw_aiohttp(url: str) -> AsyncIterator[Fetch]:
    """Plain ``session.get`` + ``read()``: the reference."""
    async with _session() as session:

        async def fetch() -> int:
            return await _get(session, url)

        yield fetch


@asynccontextmanager
async def _healkit(
    url: str, plugins: Sequence[object], *, tls: bool = False
) -> AsyncIterator[Fetch]:
    config = {"services": {"bench": service_document(url, tls=tls)}}
    async with healkit.Client(config=config, plugins=plugins, entry_points=False) as client:

        async def fetch() -> int:
            response = await client.get("/", service="bench")
            return response.status

        yield fetch


def healkit_client(url: str) -> AbstractAsyncContextManager[Fetch]:
    """``healkit.Client`` with the timeout plugin, addressed by service name."""
    return _healkit(url, [TimeoutPlugin()])


def healkit_standard(url: str) -> AbstractAsyncContextManager[Fetch]:
    """``healkit.Client`` with the standard plugin set: timeout, retry, breaker."""
    return _healkit(url, standard_plugins())


def healkit_full(url: str) -> AbstractAsyncContextManager[Fetch]:
    """The standard set plus tls and tracing, tracing on the API's no-op providers."""
    return _healkit(url, full_plugins(), tls=True)


@asynccontextmanager
async def healkit_full_sdk(url: str) -> AsyncIterator[Fetch]:
    """The full set, tracing on the OpenTelemetry SDK (in-memory exporter and reader)."""
    telemetry = SdkTelemetry()
    try:
        async with _healkit(url, full_plugins(telemetry), tls=True) as traced:
            count = telemetry.count

            async def fetch() -> int:
                count()
                return await traced()

            yield fetch
        telemetry.check()
    finally:
        telemetry.shutdown()


@asynccontextmanager
async def aiohttp_retry_client(url: str) -> AsyncIterator[Fetch]:
    """aiohttp-retry's ``RetryClient`` with exponential backoff."""
    options = aiohttp_retry.ExponentialRetry(attempts=ATTEMPTS, exceptions=set(RETRIED))
    async with aiohttp_retry.RetryClient(
        client_session=_session(), retry_options=options
    ) as client:

        async def fetch() -> int:
            async with client.get(url + "/") as response:
                await response.read()
                return response.status

        yield fetch


@asynccontextmanager
async def tenacity_aiohttp(url: str) -> AsyncIterator[Fetch]:
    """tenacity's ``@retry`` around the raw aiohttp request."""
    async with _session() as session:

        @tenacity.retry(
            stop=tenacity.stop_after_attempt(ATTEMPTS),
            wait=tenacity.wait_exponential_jitter(initial=0.1, max=5.0),
            retry=tenacity.retry_if_exception_type(RETRIED),
            reraise=True,
        )
        async def fetch() -> int:
            return await _get(session, url)

        yield fetch


@asynccontextmanager
async def stamina_aiohttp(url: str) -> AsyncIterator[Fetch]:
    """stamina's ``@retry`` around the raw aiohttp request."""
    async with _session() as session:

        @stamina.retry(on=RETRIED, attempts=ATTEMPTS, timeout=30.0)
        async def fetch() -> int:
            return await _get(session, url)

        yield fetch


@asynccontextmanager
async def raw_httpx(url: str) -> AsyncIterator[Fetch]:
    """Plain ``httpx.AsyncClient.get`` (the body is read): the reference of healkit.httpx."""
    limits = httpx.Timeout(30.0, connect=5.0)
    async with httpx.AsyncClient(timeout=limits) as client:

        async def fetch() -> int:
            response = await client.get(url)
            return response.status_code

        yield fetch


@asynccontextmanager
async def healkit_httpx(url: str) -> AsyncIterator[Fetch]:
    """``httpx.AsyncClient`` on healkit's transport with the timeout plugin."""
    config = {"services": {"bench": service_document(url, tls=False)}}
    transport = ResilientTransport(config=config, plugins=[TimeoutPlugin()], entry_points=False)
    async with httpx.AsyncClient(transport=transport) as client:

        async def fetch() -> int:
            response = await client.get(url)
            return response.status_code

        yield fetch


CLIENTS: Final[dict[str, ClientVariant]] = {
    REFERENCE: raw_aiohttp,
    "healkit": healkit_client,
    "healkit[standard]": healkit_standard,
    "healkit[full]": healkit_full,
    **({"healkit[full+sdk]": healkit_full_sdk} if SDK_AVAILABLE else {}),
    "aiohttp-retry": aiohttp_retry_client,
    "tenacity+aiohttp": tenacity_aiohttp,
    "stamina+aiohttp": stamina_aiohttp,
    "httpx": raw_httpx,
    "healkit.httpx": healkit_httpx,
}
"""The clients compared: name -> variant. The reference comes first.

``healkit[full+sdk]`` is left out when the OpenTelemetry SDK is not installed."""


@dataclass(frozen=True, slots=True)
class Round:
    """One round of one variant."""

    cpu_us_per_request: float
    requests_per_second: float


async def _round(fetch: Fetch, requests: int, concurrency: int) -> Round:
    left = requests
    failures = 0

    async def worker() -> None:
        nonlocal left, failures
        while left > 0:
            left -= 1
            if await fetch() != 200:
                failures += 1

    gc.collect()
    cpu = time.process_time()
    wall = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    if failures:
        raise RuntimeError(f"{failures} of {requests} requests did not answer 200")
    return Round(cpu * 1e6 / requests, requests / wall)


async def _measure(url: str, sizes: Sizes) -> dict[str, list[Round]]:
    names = list(CLIENTS)
    rounds: dict[str, list[Round]] = {name: [] for name in names}
    async with AsyncExitStack() as stack:
        fetches = {
            name: await stack.enter_async_context(open_(url)) for name, open_ in CLIENTS.items()
        }
        for name in names:
            await _round(fetches[name], sizes.warmup, sizes.concurrency)
        for number in range(sizes.rounds):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                rounds[name].append(await _round(fetches[name], sizes.requests, sizes.concurrency))
            progress(f"  http: round {number + 1}/{sizes.rounds}")
    return rounds


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    stdout = process.stdout
    if stdout is None:
        raise RuntimeError("the server's stdout is not a pipe")
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise RuntimeError(f"the benchmark server printed no URL within {timeout}s")
    line = stdout.readline().strip()
    if not line.startswith("http://"):
        code = process.poll()
        raise RuntimeError(f"the benchmark server did not start (exit code {code}): {line!r}")
    return line


@contextmanager
def loopback_server() -> Iterator[str]:
    """Run ``server.py`` in its own process; yield its base URL; stop it at the end."""
    process = subprocess.Popen(  # noqa: S603 - our own script, run with this interpreter
        [sys.executable, str(SERVER), "--watch-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield _read_line(process, SERVER_START_TIMEOUT)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        process.terminate()
        try:
            process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _ratio_spread(rounds: list[Round], reference: list[Round]) -> Spread:
    """Return the CPU ratios to the reference round by round (a round's runs are adjacent)."""
    return spread(
        r.cpu_us_per_request / ref.cpu_us_per_request
        for r, ref in zip(rounds, reference, strict=True)
    )


def run(settings: Settings) -> ScenarioResult:
    """Measure every client variant; report healkit's CPU ratios to raw aiohttp."""
    sizes = QUICK if settings.quick else FULL
    progress(
        f"http: {sizes.rounds} rounds x {sizes.requests} requests x {len(CLIENTS)} clients, "
        f"{sizes.concurrency} concurrent"
    )
    with loopback_server() as url:
        rounds = asyncio.run(_measure(url, sizes))
    cpu = {name: spread(r.cpu_us_per_request for r in rs) for name, rs in rounds.items()}
    rps = {name: spread(r.requests_per_second for r in rs) for name, rs in rounds.items()}
    paired = {name: _ratio_spread(rs, rounds[REFERENCE]) for name, rs in rounds.items()}
    ref_cpu = cpu[REFERENCE].median
    ref_rps = rps[REFERENCE].median
    variants = {
        name: {
            "cpu_us_per_request": cpu[name].as_json(2),
            "requests_per_second": rps[name].as_json(0),
            "cpu_ratio": round(cpu[name].median / ref_cpu, 3),
            "cpu_ratio_per_round": paired[name].as_json(3),
            "throughput_ratio": round(rps[name].median / ref_rps, 3),
        }
        for name in CLIENTS
    }
    data: dict[str, object] = {
        "reference": REFERENCE,
        "requests_per_round": sizes.requests,
        "rounds": sizes.rounds,
        "concurrency": sizes.concurrency,
        "variants": variants,
        "healkit.httpx_cpu_ratio_to_httpx": round(
            cpu["healkit.httpx"].median / cpu["httpx"].median, 3
        ),
    }
    rows = tuple(
        (
            name,
            f"{cpu[name].median:.1f}",
            f"{cpu[name].median / ref_cpu:.3f}",
            f"{paired[name].low:.3f}-{paired[name].high:.3f}",
            f"{rps[name].median:.0f}",
            f"{rps[name].median / ref_rps:.3f}",
        )
        for name in CLIENTS
    )
    table = Table(
        title=(
            f"End to end, loopback, {sizes.concurrency} concurrent, "
            f"medians of {sizes.rounds} rounds"
        ),
        headers=("client", "CPU µs/req", "CPU ratio", "per-round ratio", "req/s", "req/s ratio"),
        rows=rows,
    )
    notes = [
        "CPU is time.process_time() of the client process; the server runs in another process.",
        (
            "The healthy path is at instruction parity with raw aiohttp: the CPU ratios of "
            + ", ".join(GUARDED_VARIANTS)
            + " are a guard against regressions (beyond run-to-run spread), not a target; "
            "the targets are on the failure paths (the failures scenario)."
        ),
        (
            "CPU ratio = median CPU µs/request of the variant / that of raw aiohttp; "
            "per-round ratio = range of the same ratio taken round by round."
        ),
        (
            "healkit[full] = timeout, retry, breaker, tls (the service's own context, TLS 1.3 "
            "minimum, set on every attempt; the server is plain HTTP, so no handshake), tracing "
            "with the API's no-op providers; healkit[full+sdk] = the same with tracing on the "
            "SDK (a span per attempt to an InMemorySpanExporter, cleared every 1,000 requests, "
            "metrics to an InMemoryMetricReader)."
        ),
    ]
    notes.append(
        "healkit.httpx = httpx.AsyncClient on healkit.httpx.ResilientTransport with the "
        "timeout plugin; its CPU per request is "
        f"{cpu['healkit.httpx'].median / cpu['httpx'].median:.3f} x raw httpx's."
    )
    if not SDK_AVAILABLE:
        notes.append(SDK_MISSING_NOTE)
    return ScenarioResult(data=data, tables=[table], notes=notes)
