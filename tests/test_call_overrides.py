"""Per-call ``attempts=`` and ``attempt_timeout=``: honoured, and never above the policy.

Real upstream on loopback (:class:`FaultServer`); backoff on the manual clock.
The attempt limit is a real timer (it runs on the event loop), so the hanging
upstream is cut off by a short real per-call limit.
"""

from __future__ import annotations

from typing import Any, Final

import pytest

import healkit
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_retry import RetryPlugin
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio

SERVICE: Final = "ledger"
SHORT: Final = 0.2
"""Seconds of the per-call attempt limit that cuts a hanging attempt off."""


def client(
    server: FaultServer, clock: ManualClock, *, retrying: bool = True, **timeout: Any
) -> healkit.Client:
    policy: dict[str, Any] = {"endpoints": [server.url], "timeout": {"attempt": 20.0, **timeout}}
    plugins: list[object] = [TimeoutPlugin()]
    if retrying:
        policy["retry"] = {"attempts": 3}
        plugins.append(RetryPlugin())
    config = {"services": {SERVICE: policy}}
    return healkit.Client(config=config, plugins=plugins, entry_points=False, clock=clock)


async def test_fewer_attempts_than_the_policy(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/x", Fault.reset(), Fault.reset(), Fault.reset())
    async with client(fault_server, manual_clock) as c:
        with pytest.raises(healkit.ConnectionLostError) as caught:
            await c.get("/x", service=SERVICE, attempts=2)
    assert fault_server.hits("/x") == 2
    assert len(caught.value.attempts) == 2
    assert "all 2 attempts made (the call's attempt_limit)" in str(caught.value)


async def test_one_attempt_returns_a_retryable_status_as_it_came(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/x", Fault.status(503))
    async with client(fault_server, manual_clock) as c:
        response = await c.get("/x", service=SERVICE, attempts=1)
        assert response.status == 503
        assert fault_server.hits("/x") == 1
        # Without the override, the policy's three attempts apply.
        fault_server.script("/x", Fault.status(503))
        assert (await c.get("/x", service=SERVICE)).status == 200
    assert manual_clock.sleeps != []


async def test_the_policys_attempts_are_allowed(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/x", Fault.reset(), Fault.reset())
    async with client(fault_server, manual_clock) as c:
        response = await c.post("/x", service=SERVICE, idempotent=True, attempts=3)
    assert response.status == 200
    assert fault_server.hits("/x") == 3


async def test_more_attempts_than_the_policy_allows_are_refused(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    async with client(fault_server, manual_clock) as c:
        with pytest.raises(
            healkit.InvalidRequestError, match=r"attempts=4 is more than the 3 attempt"
        ):
            await c.get("/x", service=SERVICE, attempts=4)
        async with c.stream("GET", "/x", service=SERVICE, attempts=3) as response:
            assert response.status == 200
    assert fault_server.hits("/x") == 1  # the stream only: the refused call sent nothing


async def test_without_a_retry_plugin_one_attempt_is_all_there_is(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    async with client(fault_server, manual_clock, retrying=False) as c:
        with pytest.raises(healkit.InvalidRequestError, match=r"more than the 1 attempt"):
            await c.get("/x", service=SERVICE, attempts=2)
        assert (await c.get("/x", service=SERVICE, attempts=1)).status == 200


@pytest.mark.parametrize("attempts", [0, -2, True, 2.0, "2"])
async def test_attempts_must_be_a_positive_int(
    fault_server: FaultServer, manual_clock: ManualClock, attempts: Any
) -> None:
    async with client(fault_server, manual_clock) as c:
        with pytest.raises(
            healkit.InvalidRequestError, match="attempts must be an int of at least 1"
        ):
            await c.get("/x", service=SERVICE, attempts=attempts)
    assert fault_server.hits() == 0


async def test_a_shorter_attempt_timeout_cuts_a_hanging_attempt(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/x", Fault.blackhole())
    async with client(fault_server, manual_clock) as c:
        with pytest.raises(healkit.AttemptTimeout) as caught:
            await c.get("/x", service=SERVICE, attempts=1, attempt_timeout=SHORT)
    assert caught.value.limit == SHORT
    assert f"took longer than {SHORT}s" in str(caught.value)


async def test_a_longer_attempt_timeout_than_the_policys_is_refused(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    async with client(fault_server, manual_clock) as c:
        with pytest.raises(
            healkit.InvalidRequestError, match=r"attempt_timeout=25 is more than the 20s"
        ):
            await c.get("/x", service=SERVICE, attempt_timeout=25)
        assert (await c.get("/x", service=SERVICE, attempt_timeout=20)).status == 200
    assert fault_server.hits("/x") == 1


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan"), float("inf"), True, "1"])
async def test_attempt_timeout_must_be_finite_seconds(
    fault_server: FaultServer, manual_clock: ManualClock, seconds: Any
) -> None:
    async with client(fault_server, manual_clock) as c:
        with pytest.raises(
            healkit.InvalidRequestError, match="attempt_timeout must be a finite number"
        ):
            await c.get("/x", service=SERVICE, attempt_timeout=seconds)
    assert fault_server.hits() == 0


async def test_a_plugin_answering_a_wrong_attempt_limit_is_skipped(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    class Wrong:
        healkit_name = "wrong"

        @healkit.hookimpl(tryfirst=True)
        def healkit_max_attempts(self, policy: healkit.ServicePolicy) -> object:
            del policy
            return 0

    config = {"services": {SERVICE: {"endpoints": [fault_server.url]}}}
    plugins = [TimeoutPlugin(), RetryPlugin(), Wrong()]
    async with healkit.Client(
        config=config, plugins=plugins, entry_points=False, clock=manual_clock
    ) as c:
        with pytest.raises(healkit.InvalidRequestError, match="more than the 3 attempt"):
            await c.get("/x", service=SERVICE, attempts=4)
        assert c.runtime.plugin_errors["wrong"] == 1
