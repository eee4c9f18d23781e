"""The timeout plugin against real loopback servers: each limit, its own error."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

import healkit
from healkit.testing import Fault, FaultServer
from healkit_timeout import SECTION, TimeoutPlugin, TimeoutSettings

pytestmark = pytest.mark.anyio


class RetryAlways:
    """Retry every failure at once (the retry plugin comes with its own issue)."""

    @healkit.hookimpl
    def healkit_on_error(self) -> healkit.RetryDecision:
        return healkit.RetryDecision.again(0.0)


def client(url: str, *plugins: object, **timeout: float) -> healkit.Client:
    config = {"services": {"svc": {"endpoints": [url], "timeout": timeout}}}
    return healkit.Client(config=config, plugins=[*plugins, TimeoutPlugin()], entry_points=False)


async def test_read_timeout_on_a_server_that_never_answers(fault_server: FaultServer) -> None:
    fault_server.script("/hang", Fault.blackhole())
    async with client(fault_server.url, read=0.2) as c:
        with pytest.raises(healkit.ReadTimeout) as caught:
            await c.get("/hang", service="svc")
    assert caught.value.limit == 0.2
    assert caught.value.may_have_reached_server
    assert isinstance(caught.value, TimeoutError)


async def test_attempt_timeout_on_a_body_that_trickles(fault_server: FaultServer) -> None:
    # Each chunk comes within the read timeout, but the whole body takes too long.
    fault_server.script("/slow", Fault.slow_body(chunks=20, delay=0.05))
    async with client(fault_server.url, read=1.0, attempt=0.3, deadline=5.0) as c:
        with pytest.raises(healkit.AttemptTimeout) as caught:
            await c.get("/slow", service="svc")
    assert caught.value.limit == 0.3


async def test_connect_timeout_includes_waiting_for_a_pooled_connection(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/hang", Fault.blackhole())
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    config = {
        "services": {
            "svc": {"endpoints": [fault_server.url], "timeout": {"connect": 0.2, "read": 5.0}}
        }
    }
    async with (
        session,
        healkit.Client(
            config=config, plugins=[TimeoutPlugin()], entry_points=False, session=session
        ) as c,
    ):
        holder = asyncio.create_task(c.get("/hang", service="svc"))
        await fault_server.wait_for_hits(1, "/hang")
        with pytest.raises(healkit.ConnectTimeout) as caught:
            await c.get("/other", service="svc")
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
    assert not caught.value.may_have_reached_server
    assert fault_server.hits("/other") == 0


async def test_deadline_spans_all_attempts(fault_server: FaultServer) -> None:
    fault_server.set_default(Fault.latency(0.15))
    async with client(fault_server.url, RetryAlways(), read=1.0, attempt=0.1, deadline=0.35) as c:
        with pytest.raises(healkit.DeadlineExceeded) as caught:
            await c.get("/x", service="svc")
    errors = [a.error for a in caught.value.attempts]
    assert errors[:-1] == ["AttemptTimeout"] * (len(errors) - 1)
    assert errors[-1] == "DeadlineExceeded"
    assert 3 <= len(errors) <= 4


async def test_caller_deadline_argument_wins_when_earlier(fault_server: FaultServer) -> None:
    fault_server.script("/hang", Fault.blackhole())
    async with client(fault_server.url, read=10.0, attempt=10.0, deadline=10.0) as c:
        with pytest.raises(healkit.DeadlineExceeded):
            await c.get("/hang", service="svc", deadline=0.2)


async def test_enclosing_asyncio_timeout_cancels_cleanly(fault_server: FaultServer) -> None:
    fault_server.script("/hang", Fault.blackhole())
    async with client(fault_server.url, read=10.0) as c:
        with pytest.raises(TimeoutError) as caught:
            async with asyncio.timeout(0.2):
                await c.get("/hang", service="svc")
        assert not isinstance(caught.value, healkit.HealkitError)
        assert (await c.get("/fine", service="svc")).status == 200


async def test_settings_come_from_defaults_and_service_documents() -> None:
    config = {
        "defaults": {"timeout": {"connect": 1.0, "read": 2.0}},
        "services": {"a": {"endpoints": ["http://a.test"], "timeout": {"read": 3.0}}},
    }
    runtime = healkit.Runtime(config=config, plugins=[TimeoutPlugin()], entry_points=False)
    assert runtime.config.policy("a").section(SECTION) == TimeoutSettings(connect=1.0, read=3.0)
    assert runtime.config.policy("other").section(SECTION) == TimeoutSettings(connect=1.0, read=2.0)


@pytest.mark.parametrize(
    ("timeout", "path", "reason"),
    [
        ({"read": 0}, "$.services.svc.timeout.read", "must be > 0"),
        ({"read": "fast"}, "$.services.svc.timeout.read", "expected a number"),
        ({"conect": 1}, "$.services.svc.timeout", "unknown key 'conect'"),
        ({"attempt": 90, "deadline": 60}, "$.services.svc.timeout", "must not exceed deadline"),
    ],
)
def test_invalid_settings_are_rejected_with_their_path(
    timeout: dict[str, Any], path: str, reason: str
) -> None:
    config = {"services": {"svc": {"endpoints": ["http://svc.test"], "timeout": timeout}}}
    with pytest.raises(healkit.ConfigError) as caught:
        healkit.Runtime(config=config, plugins=[TimeoutPlugin()], entry_points=False)
    assert caught.value.path == path
    assert reason in caught.value.reason


def test_deadline_alone_bounds_the_attempt_limit() -> None:
    # Half the deadline: a hanging attempt leaves time for a second one.
    assert TimeoutSettings(deadline=10.0).attempt_limit == 5.0
    assert TimeoutSettings(deadline=100.0).attempt_limit == 30.0
    assert TimeoutSettings().attempt_limit == 30.0
    assert TimeoutSettings(attempt=5.0, deadline=10.0).attempt_limit == 5.0


class Crashing:
    """A plugin whose answer for attempt limits fails."""

    healkit_name = "crashing"

    @healkit.hookimpl
    def healkit_attempt_timeouts(self) -> healkit.Timeouts:
        raise RuntimeError("boom")


def test_attempt_timeouts_outside_a_call_are_the_service_limits() -> None:
    config = {"services": {"svc": {"endpoints": ["http://a.test"], "timeout": {"read": 2.0}}}}
    runtime = healkit.Runtime(
        config=config, plugins=[Crashing(), TimeoutPlugin()], entry_points=False
    )
    limits = runtime.attempt_timeouts(runtime.config.policy("svc"))
    assert limits == healkit.Timeouts(connect=5.0, read=2.0, total=30.0)
    assert runtime.plugin_errors["crashing"] == 1
    bare = healkit.Runtime(
        config={"services": {"svc": {"endpoints": ["http://a.test"]}}}, entry_points=False
    )
    assert bare.attempt_timeouts(bare.config.policy("svc")) == healkit.Timeouts(
        connect=10.0, read=30.0, total=60.0
    )
