"""healkit as an aiohttp client middleware on the user's own session."""

from __future__ import annotations

import aiohttp
import pytest

import healkit
from healkit.testing import Fault, FaultServer
from tests.plugins import FailOnStatus, RetryUpTo, StaticFallback

pytestmark = pytest.mark.anyio


async def test_middleware_retries_declared_failures_and_releases(fault_server: FaultServer) -> None:
    fault_server.script("/x", Fault.status(503), then=Fault.ok(body=b"fine"))
    config = {"services": {"svc": {"endpoints": [fault_server.url]}}}
    runtime = healkit.Runtime(
        config=config, plugins=[RetryUpTo(3), FailOnStatus(503)], entry_points=False
    )
    middleware = healkit.ResilienceMiddleware(runtime)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, middlewares=[middleware]) as session:
        async with session.get(f"{fault_server.url}/x") as response:
            assert response.status == 200
            assert await response.read() == b"fine"
        assert len(connector._acquired) == 0
    assert fault_server.hits("/x") == 2


async def test_middleware_maps_errors_and_skips_substitutes(fault_server: FaultServer) -> None:
    fault_server.script("/x", Fault.reset())
    runtime = healkit.Runtime(plugins=[StaticFallback("unused")], entry_points=False)
    async with aiohttp.ClientSession(
        middlewares=[healkit.ResilienceMiddleware(runtime)]
    ) as session:
        with pytest.raises(healkit.ConnectionLostError) as caught:
            await session.post(f"{fault_server.url}/x", data=b"body")
    assert caught.value.attempts[0].endpoint == fault_server.url


async def test_middleware_adds_call_headers_from_plugins(fault_server: FaultServer) -> None:
    class Tag:
        @healkit.hookimpl
        def healkit_pre_request(
            self, call: healkit.CallContext, attempt: healkit.AttemptContext
        ) -> None:
            call.headers["X-Call"] = call.service
            attempt.headers["X-Attempt"] = str(attempt.number)

    runtime = healkit.Runtime(plugins=[Tag()], entry_points=False)
    middleware = healkit.ResilienceMiddleware(runtime, service="tagged")
    async with (
        aiohttp.ClientSession(middlewares=[middleware]) as session,
        session.get(f"{fault_server.url}/y") as response,
    ):
        assert response.status == 200
    headers = fault_server.requests[0].headers
    assert headers["X-Call"] == "tagged"
    assert headers["X-Attempt"] == "1"
