"""With the default settings, a call never sleeps through a breaker's open duration.

The retry and breaker plugins together, against real loopback servers, on a
manual clock: the call whose failure trips the breaker fails (or is answered
by its degraded response) at once, instead of waiting for the breaker to
half-open.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import healkit
from healkit.testing import Fault, FaultServer, ManualClock, refused_url
from healkit_breaker import BreakerPlugin, BreakerSettings
from healkit_retry import RetryPlugin, RetrySettings

pytestmark = pytest.mark.anyio

OPEN_DURATION = BreakerSettings().open_duration
# With default settings, each call makes 3 attempts and the 10th failure in a
# row trips the breaker: on the 4th call's first attempt.
CALLS_BEFORE_THE_TRIP = -(-BreakerSettings().consecutive_failures // RetrySettings().attempts) - 1


def client(service: dict[str, Any], clock: ManualClock) -> healkit.Client:
    return healkit.Client(
        config={"services": {"svc": service}},
        plugins=[BreakerPlugin(), RetryPlugin()],
        entry_points=False,
        clock=clock,
    )


async def test_the_call_that_trips_the_breaker_fails_at_once(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(503))
    async with client({"endpoints": [fault_server.url]}, manual_clock) as c:
        for _ in range(CALLS_BEFORE_THE_TRIP):
            with pytest.raises(healkit.HTTPStatusError):
                await c.get("/x", service="svc")
        started = manual_clock.now()
        with pytest.raises(healkit.CircuitOpenError) as caught:
            await c.get("/x", service="svc")
        waited = manual_clock.now() - started
    # Only the backoff before the refused retry (at most retry.base), not the open duration.
    assert waited <= RetrySettings().base
    assert all(sleep < OPEN_DURATION for sleep in manual_clock.sleeps)
    assert "longer than retry.max_circuit_wait (0s)" in str(caught.value)
    assert [a.error for a in caught.value.attempts] == ["HTTPStatusError", "CircuitOpenError"]


async def test_the_call_that_trips_the_breaker_gets_its_degraded_answer_at_once(
    manual_clock: ManualClock,
) -> None:
    template = {"status": 503, "json": {"error": "${error_type}"}}
    service = {"endpoints": [refused_url()], "degraded": {"template": template}}
    async with client(service, manual_clock) as c:
        for _ in range(CALLS_BEFORE_THE_TRIP):
            assert (await c.get("/x", service="svc")).headers[healkit.OUTCOME_HEADER] == "degraded"
        started = manual_clock.now()
        response = await c.get("/x", service="svc")
        waited = manual_clock.now() - started
    assert waited <= RetrySettings().base
    assert response.outcome is not None
    assert response.outcome.path == "degraded"
    assert json.loads(response.body) == {"error": "CircuitOpenError"}
