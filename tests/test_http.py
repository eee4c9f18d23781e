"""The HTTP transport's limits: what aiohttp is asked to enforce, and what the pipeline does."""

from __future__ import annotations

import pytest

import healkit
from healkit._http import _client_timeout
from healkit.testing import Fault, FaultServer
from healkit_timeout import TimeoutPlugin
from tests.conftest import service_config

pytestmark = pytest.mark.anyio


def test_a_buffered_attempt_leaves_a_read_limit_not_below_its_total_to_the_pipeline() -> None:
    limits = healkit.Timeouts(connect=1.0, read=5.0, total=5.0)
    buffered = _client_timeout(limits, False)  # noqa: FBT003 - the transport's positional flag
    assert (buffered.total, buffered.connect, buffered.sock_read) == (None, 1.0, None)
    # A streaming body is read after the attempt limit is disarmed: aiohttp keeps watching it.
    streaming = _client_timeout(limits, True)  # noqa: FBT003
    assert (streaming.total, streaming.connect, streaming.sock_read) == (None, 1.0, 5.0)


def test_a_read_limit_below_the_total_is_left_to_aiohttp() -> None:
    limits = healkit.Timeouts(connect=1.0, read=2.0, total=5.0)
    for stream in (False, True):
        timeout = _client_timeout(limits, stream)
        assert (timeout.total, timeout.connect, timeout.sock_read) == (None, 1.0, 2.0)


def test_the_limits_follow_the_timeouts_object_they_are_asked_for() -> None:
    first = healkit.Timeouts(connect=1.0, read=3.0, total=3.0)
    second = healkit.Timeouts(connect=2.0, read=1.0, total=3.0)
    assert _client_timeout(first, False).sock_read is None  # noqa: FBT003
    assert _client_timeout(second, False).sock_read == 1.0  # noqa: FBT003
    assert _client_timeout(first, False).connect == 1.0  # noqa: FBT003


async def test_a_stalled_buffered_attempt_ends_at_its_attempt_limit(
    fault_server: FaultServer,
) -> None:
    # read = attempt: the pipeline's attempt limit ends the silent attempt.
    fault_server.script("/hang", Fault.blackhole())
    config = service_config(fault_server.url, timeout={"read": 0.2, "attempt": 0.2})
    async with healkit.Client(
        config=config, plugins=[TimeoutPlugin()], entry_points=False
    ) as client:
        with pytest.raises(healkit.AttemptTimeout) as caught:
            await client.get("/hang", service="svc")
    assert caught.value.limit == 0.2
