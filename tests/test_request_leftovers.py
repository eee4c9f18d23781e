"""Leftovers of the request path, each against real loopback servers.

* the httpx transport keeps a streamed request body in memory only up to
  ``max_body_bytes``; a longer one is sent once, as it is read;
* an absolute URL's scheme is case-insensitive (RFC 3986), in calls and in
  configured endpoints;
* the runtime's background tasks (probes, watches) run in a context of their
  own, not in the context of whoever started the runtime.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import tracemalloc
import weakref
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Self

import httpx
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import healkit
from healkit._routing.settings import SECTION as ROUTING
from healkit.etcd._feed import Reset, Subscription
from healkit.httpx import ResilientTransport, outcome_of
from healkit.testing import EtcdServer, FaultServer, ManualClock, refused_url
from healkit_retry import RetryPlugin
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio

CHUNK = bytes(range(256)) * 256
"""64 KiB of a request body, sent again and again (one object: it costs no memory per chunk)."""


class Uploads:
    """A loopback aiohttp server that counts and hashes the request bodies it reads.

    It keeps no body: a test measuring the client's memory measures the
    client's. ``/upload`` answers ``status`` (503 by default: a status the
    retry plugin retries); ``/moved`` answers 307 to ``/upload``.
    """

    def __init__(self, status: int = 503) -> None:
        self.status = status
        self.received: list[tuple[int, str, str | None, str | None]] = []
        self.url = ""
        app = web.Application()
        app.router.add_route("*", "/upload", self._upload)
        app.router.add_route("*", "/moved", self._moved)
        self._runner = web.AppRunner(app, handle_signals=False)

    async def __aenter__(self) -> Self:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    async def _moved(self, request: web.Request) -> web.Response:
        await self._upload(request)
        return web.Response(status=307, headers={"Location": "/upload"})

    async def _upload(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(len(CHUNK)):
            digest.update(chunk)
            size += len(chunk)
        self.received.append(
            (
                size,
                digest.hexdigest(),
                request.headers.get("Content-Length"),
                request.headers.get("Transfer-Encoding"),
            )
        )
        return web.Response(status=self.status)


async def _chunks(count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield CHUNK


def _digest(count: int) -> str:
    digest = hashlib.sha256()
    for _ in range(count):
        digest.update(CHUNK)
    return digest.hexdigest()


def _transport(url: str, limit: int) -> ResilientTransport:
    document = {
        "defaults": {"retry": {"base": 0.001, "cap": 0.002}},
        "services": {"svc": {"endpoints": [url], "max_body_bytes": limit}},
    }
    return ResilientTransport(
        config=document, plugins=[TimeoutPlugin(), RetryPlugin()], entry_points=False
    )


# -- the httpx transport: a streamed request body is buffered up to max_body_bytes --------


async def test_httpx_a_stream_within_max_body_bytes_is_kept_and_sent_again() -> None:
    async with (
        Uploads() as server,
        httpx.AsyncClient(transport=_transport(server.url, limit=4 * len(CHUNK))) as client,
    ):
        with pytest.raises(healkit.HTTPStatusError) as caught:
            await client.put(f"{server.url}/upload", content=_chunks(4))
    assert len(caught.value.attempts) == 3  # the retry plugin's default: the body was replayed
    assert server.received == [(4 * len(CHUNK), _digest(4), str(4 * len(CHUNK)), None)] * 3


async def test_httpx_a_stream_past_max_body_bytes_arrives_whole_once_and_is_not_retried() -> None:
    async with (
        Uploads() as server,
        httpx.AsyncClient(transport=_transport(server.url, limit=2 * len(CHUNK))) as client,
    ):
        response = await client.put(f"{server.url}/upload", content=_chunks(16))
    assert response.status_code == 503  # the answer, not retried: the body cannot be sent again
    assert len(outcome_of(response).attempts) == 1
    assert server.received == [(16 * len(CHUNK), _digest(16), None, "chunked")]


async def test_httpx_a_stream_sent_once_keeps_the_callers_content_length() -> None:
    length = str(16 * len(CHUNK))
    async with (
        Uploads(status=200) as server,
        httpx.AsyncClient(transport=_transport(server.url, limit=len(CHUNK))) as client,
    ):
        response = await client.put(
            f"{server.url}/upload", content=_chunks(16), headers={"Content-Length": length}
        )
    assert response.status_code == 200
    assert outcome_of(response).path == "primary"
    assert server.received == [(16 * len(CHUNK), _digest(16), length, None)]


async def test_httpx_does_not_follow_a_307_with_a_stream_it_sent_once() -> None:
    async with (
        Uploads(status=200) as server,
        httpx.AsyncClient(
            transport=_transport(server.url, limit=len(CHUNK)), follow_redirects=True
        ) as client,
    ):
        with pytest.raises(healkit.InvalidRequestError, match="not sent again"):
            await client.put(f"{server.url}/moved", content=_chunks(4))
        moved = await client.put(f"{server.url}/moved", content=_chunks(1))  # within the limit
    assert moved.status_code == 200
    whole = (4 * len(CHUNK), _digest(4), None, "chunked")
    once = (len(CHUNK), _digest(1), str(len(CHUNK)), None)
    assert server.received == [whole, once, once]  # /moved; then /moved and /upload


async def test_httpx_memory_does_not_grow_with_a_streamed_body() -> None:
    count = 256  # 16 MiB, sent past a buffer of 256 KiB
    async with (
        Uploads(status=200) as server,
        httpx.AsyncClient(transport=_transport(server.url, limit=4 * len(CHUNK))) as client,
    ):
        await client.put(f"{server.url}/upload", content=_chunks(2))  # connections, imports
        tracemalloc.start()
        try:
            response = await client.put(f"{server.url}/upload", content=_chunks(count))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert response.status_code == 200
    assert server.received[-1][:2] == (count * len(CHUNK), _digest(count))
    assert peak < count * len(CHUNK) // 8  # 2 MiB: a few chunks, not the body


async def test_httpx_a_stream_past_the_buffer_fails_over_whole_after_a_refused_connection() -> None:
    dead = refused_url()
    async with Uploads(status=200) as server:
        document = {
            "services": {
                "svc": {
                    "endpoints": [dead],
                    "max_body_bytes": len(CHUNK),
                    "routing": {"fallback_groups": [[server.url]]},
                }
            }
        }
        transport = ResilientTransport(
            config=document, plugins=[TimeoutPlugin(), RetryPlugin()], entry_points=False
        )
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.put(f"{dead}/upload", content=_chunks(8))
    assert response.status_code == 200
    assert outcome_of(response).endpoint == server.url  # nothing was read by the refused one
    assert server.received == [(8 * len(CHUNK), _digest(8), None, "chunked")]


# -- an absolute URL's scheme is case-insensitive --------------------------------------------

schemes = st.tuples(*(st.sampled_from([c, c.upper()]) for c in "http")).map("".join)
"""``http`` with any of its letters in capitals (the fault server speaks plain HTTP)."""
suffixes = st.sampled_from(["/base", "/base/x", "/base/x?q=1", "/base?q=2", "/other/y"])


def test_an_endpoint_with_a_scheme_in_capitals_is_the_same_endpoint() -> None:
    config = healkit.build_config(
        {
            "services": {
                "svc": {
                    "endpoints": ["HTTP://Upstream.test:8080/Base/"],
                    "routing": {
                        "allowed_origins": ["HTTPS://*.Internal"],
                        "fallback_groups": [["Https://dr.internal"]],
                    },
                }
            }
        },
        [ROUTING],
    )
    policy = config.policy("svc")
    assert policy.endpoints == ("http://upstream.test:8080/Base",)
    assert policy.known_endpoints == {"http://upstream.test:8080/Base", "https://dr.internal"}
    assert config.service_for_url("http://upstream.test:8080/Base/x") == "svc"
    assert config.configured("svc", "http://upstream.test:8080/Base")


def test_an_endpoint_in_capitals_and_in_lower_case_is_one_endpoint_twice() -> None:
    with pytest.raises(healkit.ConfigError, match="must not repeat"):
        healkit.build_config(
            {"services": {"svc": {"endpoints": ["HTTP://a.test", "http://a.test"]}}}
        )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(configured=schemes, called=schemes, suffix=suffixes)
async def test_any_casing_of_the_scheme_behaves_as_lower_case(
    fault_server: FaultServer, configured: str, called: str, suffix: str
) -> None:
    address = fault_server.url.removeprefix("http://")
    document = {"services": {"svc": {"endpoints": [f"{configured}://{address}/base"]}}}
    plugins = [TimeoutPlugin()]
    seen: list[tuple[object, ...]] = []
    async with healkit.Client(config=document, plugins=plugins, entry_points=False) as client:
        for scheme in (called, "http"):
            response = await client.get(f"{scheme}://{address}{suffix}")
            outcome = response.outcome
            seen.append((response.status, outcome.service, outcome.endpoint, response.url))
            seen.append(_arrived(fault_server))
    transport = ResilientTransport(config=document, plugins=plugins, entry_points=False)
    async with httpx.AsyncClient(transport=transport) as http:
        for scheme in (called, "http"):
            answer = await http.get(f"{scheme}://{address}{suffix}")
            outcome = outcome_of(answer)
            seen.append((answer.status_code, outcome.service, outcome.endpoint))
            seen.append(_arrived(fault_server))
    assert seen[0:2] == seen[2:4]  # healkit.Client: as in lower case
    assert seen[4:6] == seen[6:8]  # the httpx transport: as in lower case
    assert seen[0][1] == seen[4][1] == ("svc" if suffix.startswith("/base") else "127.0.0.1")


def _arrived(server: FaultServer) -> tuple[object, ...]:
    received = server.requests[-1]
    return (received.method, received.path, received.query_string)


# -- the runtime's background tasks run in a context of their own ---------------------------

TENANT: ContextVar[object] = ContextVar("healkit_test_tenant")
"""A request-scoped context variable, as an application sets one (a tenant, a request's state)."""


class Held:
    """What a request's context variable holds (large, in an application)."""

    __slots__ = ("__weakref__",)


class Watching:
    """A clock whose sleeps note what the sleeping task's context holds.

    Each sleep is made in the task that sleeps (the probe loop's): it notes
    whether :data:`TENANT` is set there, and starts a span there, as any
    instrumented library would for work done in that task.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        self.manual = ManualClock(auto_advance=False)
        self.tracer = tracer
        self.saw_tenant: list[bool] = []

    def now(self) -> float:
        return self.manual.now()

    async def sleep(self, seconds: float) -> None:
        self.saw_tenant.append(TENANT.get(None) is not None)
        with self.tracer.start_as_current_span("probe round"):
            pass
        await self.manual.sleep(seconds)


async def test_probes_keep_nothing_of_the_context_that_started_the_runtime(
    fault_server: FaultServer,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    clock = Watching(tracer)
    document = {
        "services": {
            "svc": {"endpoints": [fault_server.url], "routing": {"probe": {"interval": 5.0}}}
        }
    }
    runtime = healkit.Runtime(
        config=document, plugins=[TimeoutPlugin()], entry_points=False, clock=clock
    )

    async def request() -> weakref.ref[Held]:
        """A request's scope that starts the runtime (a first call starts it so)."""
        held = Held()
        TENANT.set(held)
        with tracer.start_as_current_span("request"):
            await runtime.start()
        return weakref.ref(held)

    try:
        held = await asyncio.create_task(request())  # its context ends with it
        await fault_server.wait_for_hits(1)  # the first probe
        await clock.manual.wait_for_sleepers()  # the probe loop waits for the next round
        gc.collect()
        assert held() is None
        assert clock.saw_tenant == [False]
    finally:
        await runtime.stop()
    (probe_round,) = [s for s in exporter.get_finished_spans() if s.name == "probe round"]
    assert probe_round.parent is None


async def test_the_shared_etcd_watch_keeps_nothing_of_its_first_subscribers_context(
    etcd_server: EtcdServer,
) -> None:
    async with etcd_server.client() as client:

        async def request() -> tuple[Subscription, weakref.ref[Held]]:
            held = Held()
            TENANT.set(held)
            subscription = client.follow("/ctx/", liveness_timeout=5.0, random=lambda: 0.0)
            return subscription, weakref.ref(held)

        subscription, held = await asyncio.create_task(request())
        try:
            while not isinstance(await subscription.next(), Reset):  # the watch runs
                pass
            gc.collect()
            assert held() is None
        finally:
            await subscription.aclose()
