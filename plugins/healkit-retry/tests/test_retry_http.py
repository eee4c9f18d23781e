"""The retry plugin on HTTP calls, against real loopback servers."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import AsyncIterator

import pytest
from retry_support import SERVICE, GateClock, client

import healkit
from healkit.testing import Fault, FaultServer, ManualClock, refused_url
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio


# -- what is retried -----------------------------------------------------------------


async def test_retryable_status_is_retried_with_growing_full_jitter(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/x", Fault.status(503), Fault.status(502))
    async with client(fault_server.url, clock=manual_clock, base=0.1, cap=5.0) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.status == 200
    assert fault_server.hits("/x") == 3
    assert response.outcome is not None
    assert response.outcome.path == "retry"
    assert [a.status for a in response.outcome.attempts] == [503, 502, 200]
    first, second = manual_clock.sleeps
    assert 0 <= first <= 0.1
    assert 0 <= second <= 0.2


async def test_attempts_are_limited_and_the_error_says_so(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(503, body=b"down for maintenance"))
    async with client(fault_server.url, clock=manual_clock, attempts=4) as c:
        with pytest.raises(healkit.HTTPStatusError) as caught:
            await c.get("/x", service=SERVICE)
    assert fault_server.hits("/x") == 4
    assert len(caught.value.attempts) == 4
    assert caught.value.status == 503
    assert caught.value.body_excerpt == "down for maintenance"
    assert "not retried: all 4 attempts made (retry.attempts)" in str(caught.value)


async def test_other_4xx_is_returned_at_once(fault_server: FaultServer) -> None:
    fault_server.script("/missing", Fault.status(404))
    async with client(fault_server.url) as c:
        response = await c.get("/missing", service=SERVICE)
    assert response.status == 404
    assert fault_server.hits("/missing") == 1


async def test_retried_statuses_are_configurable(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/a", Fault.status(503))
    fault_server.script("/b", Fault.status(500))
    async with client(fault_server.url, clock=manual_clock, statuses=[500]) as c:
        unavailable = await c.get("/a", service=SERVICE)
        recovered = await c.get("/b", service=SERVICE)
    assert unavailable.status == 503
    assert fault_server.hits("/a") == 1
    assert recovered.status == 200
    assert fault_server.hits("/b") == 2


async def test_failure_kinds_are_configurable(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/x", Fault.reset())
    async with client(fault_server.url, clock=manual_clock, retry_on=["status", "connect"]) as c:
        with pytest.raises(healkit.ConnectionLostError) as caught:
            await c.get("/x", service=SERVICE)
    assert fault_server.hits("/x") == 1
    assert "connection_lost failures are not retried (retry.retry_on)" in str(caught.value)


async def test_one_attempt_turns_retrying_off(fault_server: FaultServer) -> None:
    fault_server.script("/x", Fault.status(503))
    async with client(fault_server.url, attempts=1) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.status == 503  # not declared a failure: nothing could retry it
    assert fault_server.hits("/x") == 1


async def test_attempt_numbers_are_visible_to_other_plugins(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    seen: list[int] = []

    class Numbers:
        healkit_observer = True

        @healkit.hookimpl
        def healkit_pre_request(self, attempt: healkit.AttemptContext) -> None:
            seen.append(attempt.number)

    fault_server.script("/x", Fault.status(503), Fault.status(503))
    async with client(fault_server.url, Numbers(), clock=manual_clock) as c:
        await c.get("/x", service=SERVICE)
    assert seen == [1, 2, 3]


# -- safety: what may be sent again ---------------------------------------------------


async def test_post_that_may_have_arrived_is_sent_exactly_once(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/pay", Fault.reset_after_body())
    async with client(fault_server.url, clock=manual_clock) as c:
        with pytest.raises(healkit.ConnectionLostError) as caught:
            await c.post("/pay", service=SERVICE, data=b"charge 5")
    assert fault_server.hits("/pay") == 1
    assert fault_server.requests[0].body == b"charge 5"
    assert "POST is not idempotent and the request may have reached the server" in str(caught.value)
    assert manual_clock.sleeps == []


async def test_post_503_is_returned_as_a_response(fault_server: FaultServer) -> None:
    fault_server.script("/pay", Fault.status(503))
    async with client(fault_server.url) as c:
        response = await c.post("/pay", service=SERVICE, data=b"charge 5")
    assert response.status == 503
    assert fault_server.hits("/pay") == 1


async def test_post_with_idempotency_key_is_retried(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/pay", Fault.reset_after_body())
    async with client(fault_server.url, clock=manual_clock) as c:
        response = await c.post(
            "/pay", service=SERVICE, data=b"charge 5", headers={"Idempotency-Key": "k-42"}
        )
    assert response.status == 200
    assert [r.headers["Idempotency-Key"] for r in fault_server.requests] == ["k-42", "k-42"]


async def test_caller_may_declare_a_post_idempotent(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/pay", Fault.reset_after_body())
    async with client(fault_server.url, clock=manual_clock) as c:
        response = await c.post("/pay", service=SERVICE, data=b"x", idempotent=True)
    assert response.status == 200
    assert fault_server.hits("/pay") == 2


async def test_service_may_allow_retrying_non_idempotent_requests(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/pay", Fault.reset_after_body(), Fault.status(503))
    async with client(fault_server.url, clock=manual_clock, retry_non_idempotent=True) as c:
        response = await c.patch("/pay", service=SERVICE, data=b"x")
    assert response.status == 200
    assert fault_server.hits("/pay") == 3


async def test_caller_may_declare_a_get_not_idempotent(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/poll", Fault.reset_after_body())
    async with client(fault_server.url, clock=manual_clock) as c:
        with pytest.raises(healkit.ConnectionLostError, match="GET is not idempotent"):
            await c.get("/poll", service=SERVICE, idempotent=False)
    assert fault_server.hits("/poll") == 1


async def test_injected_idempotency_key_is_the_same_on_every_attempt(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/pay", Fault.reset_after_body(), Fault.reset_after_body())
    async with client(fault_server.url, clock=manual_clock, idempotency_key=True) as c:
        response = await c.post("/pay", service=SERVICE, json={"amount": 5})
        await c.post("/other", service=SERVICE, json={"amount": 6})
        await c.get("/read", service=SERVICE)
    assert response.status == 200
    keys = [r.headers.get("Idempotency-Key") for r in fault_server.requests]
    first = keys[0]
    assert first is not None
    assert len(first) == 32
    int(first, 16)  # hexadecimal
    assert keys[:3] == [first] * 3
    assert keys[3] not in {None, first}  # a new call, a new key
    assert keys[4] is None  # GET is idempotent by itself


async def test_injection_keeps_the_callers_key(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    async with client(fault_server.url, clock=manual_clock, idempotency_key=True) as c:
        await c.post("/pay", service=SERVICE, data=b"x", headers={"Idempotency-Key": "mine"})
    assert fault_server.requests[0].headers.getall("Idempotency-Key") == ["mine"]


async def test_refused_post_is_retried_because_it_never_left(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    down = refused_url()
    async with client([down, fault_server.url], clock=manual_clock) as c:
        response = await c.post("/pay", service=SERVICE, data=b"charge 5")
    assert response.status == 200
    assert fault_server.hits("/pay") == 1
    assert response.outcome is not None
    assert [a.endpoint for a in response.outcome.attempts] == [down, fault_server.url]
    assert [a.error for a in response.outcome.attempts] == ["ConnectError", None]


async def test_a_streamed_body_is_never_sent_twice(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"chunk"

    fault_server.script("/upload", Fault.reset_after_body())
    async with client(fault_server.url, clock=manual_clock) as c:
        with pytest.raises(healkit.ConnectionLostError, match="cannot be sent again"):
            await c.put("/upload", service=SERVICE, data=body())
    assert fault_server.hits("/upload") == 1


# -- where and when --------------------------------------------------------------------


async def test_retry_after_seconds_is_honoured(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/x", Fault.status(429, headers={"Retry-After": "2"}))
    async with client(fault_server.url, clock=manual_clock) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.status == 200
    assert manual_clock.sleeps == [2.0]


async def test_retry_after_date_is_honoured(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    wall = 1_700_000_000.0
    header = email.utils.formatdate(wall + 7, usegmt=True)
    fault_server.script("/x", Fault.status(503, headers={"Retry-After": header}))
    async with client(fault_server.url, clock=manual_clock, wall_clock=lambda: wall) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.status == 200
    assert manual_clock.sleeps == [7.0]


async def test_retry_after_beyond_the_maximum_ends_the_call(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/x", Fault.status(429, headers={"Retry-After": "120"}))
    async with client(fault_server.url, clock=manual_clock, max_retry_after=30.0) as c:
        with pytest.raises(healkit.HTTPStatusError) as caught:
            await c.get("/x", service=SERVICE)
    assert caught.value.retry_after == 120.0
    assert "Retry-After asks for 120s, more than retry.max_retry_after (30s)" in str(caught.value)
    assert fault_server.hits("/x") == 1
    assert manual_clock.sleeps == []


async def test_retry_after_past_the_deadline_ends_the_call(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/x", Fault.status(503, headers={"Retry-After": "5"}))
    plugins = (TimeoutPlugin(),)
    async with client(fault_server.url, *plugins, clock=manual_clock) as c:
        c.runtime.apply(
            {
                "services": {
                    SERVICE: {
                        "endpoints": [fault_server.url],
                        "timeout": {"attempt": 2.0, "deadline": 3.0},
                    }
                }
            }
        )
        with pytest.raises(healkit.HTTPStatusError) as caught:
            await c.get("/x", service=SERVICE)
    assert "could not start before the call's deadline (Retry-After 5.000s" in str(caught.value)
    assert manual_clock.sleeps == []


async def test_backoff_never_sleeps_past_the_deadline(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(503))
    config = {
        "services": {
            SERVICE: {
                "endpoints": [fault_server.url],
                "timeout": {"attempt": 1.0, "deadline": 1.5},
                # decorrelated with base == cap: every backoff is exactly 1 s
                "retry": {"jitter": "decorrelated", "base": 1.0, "cap": 1.0, "attempts": 5},
            }
        }
    }
    async with client(fault_server.url, TimeoutPlugin(), clock=manual_clock) as c:
        c.runtime.apply(config)
        with pytest.raises(healkit.HTTPStatusError) as caught:
            await c.get("/x", service=SERVICE)
    assert manual_clock.sleeps == [1.0]
    assert fault_server.hits("/x") == 2
    assert (
        "not retried: the next attempt could not start before the call's deadline"
        " (backoff 1.000s, 0.500s left)"
    ) in str(caught.value)


async def test_a_callers_deadline_counts_too(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(503))
    async with client(
        fault_server.url, clock=manual_clock, jitter="decorrelated", base=2.0, cap=2.0
    ) as c:
        with pytest.raises(healkit.HTTPStatusError, match="deadline"):
            await c.get("/x", service=SERVICE, deadline=1.0)
    assert fault_server.hits("/x") == 1


async def test_cancellation_during_backoff_ends_the_call_at_once(
    fault_server: FaultServer,
) -> None:
    clock = GateClock()
    fault_server.set_default(Fault.status(503))
    async with client(fault_server.url, clock=clock) as c:
        task = asyncio.create_task(c.get("/x", service=SERVICE))
        await clock.sleeping.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(clock.sleeps) == 1
    assert fault_server.hits("/x") == 1


async def test_cancellation_during_an_attempt_is_not_retried(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.script("/hang", Fault.blackhole())
    async with client(fault_server.url, clock=manual_clock) as c:
        task = asyncio.create_task(c.get("/hang", service=SERVICE))
        await fault_server.wait_for_hits(1, "/hang")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert fault_server.hits("/hang") == 1
    assert manual_clock.sleeps == []


# -- order with other plugins ----------------------------------------------------------


class EndpointBreaker:
    """Refuses the first attempt as an open breaker would (nothing is sent)."""

    healkit_name = "test-breaker"

    def __init__(self, endpoint: str | None, open_for: float) -> None:
        self.endpoint = endpoint
        self.open_for = open_for

    @healkit.hookimpl
    def healkit_pre_request(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> None:
        if attempt.number == 1:
            retry_at = call.clock.now() + self.open_for
            raise healkit.CircuitOpenError(call.service, self.endpoint, retry_at=retry_at)


async def test_breaker_refusal_moves_a_post_to_the_next_endpoint(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    down = refused_url()
    breaker = EndpointBreaker(down, open_for=60.0)
    async with client([down, fault_server.url], breaker, clock=manual_clock, base=0.01) as c:
        response = await c.post("/pay", service=SERVICE, data=b"x")
    assert response.status == 200
    assert response.outcome is not None
    assert [a.error for a in response.outcome.attempts] == ["CircuitOpenError", None]
    # The routing plugin moved the call to the other endpoint at once: no wait.
    assert sum(manual_clock.sleeps) <= 0.01


async def test_open_service_breaker_is_waited_for_within_max_circuit_wait(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    async with client(
        fault_server.url,
        EndpointBreaker(None, open_for=1.5),
        clock=manual_clock,
        max_circuit_wait=2.0,
    ) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.status == 200
    assert manual_clock.sleeps == [1.5]

    breaker = EndpointBreaker(None, open_for=60.0)
    async with client(
        fault_server.url, breaker, clock=manual_clock, cap=60.0, max_circuit_wait=5.0
    ) as c:
        with pytest.raises(healkit.CircuitOpenError, match=r"longer than retry\.max_circuit_wait"):
            await c.get("/x", service=SERVICE)


async def test_another_plugins_decision_wins(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    class Veto:
        @healkit.hookimpl
        def healkit_on_error(self) -> healkit.RetryDecision:
            return healkit.RetryDecision.stop("vetoed")

    fault_server.script("/x", Fault.status(503))
    async with client(fault_server.url, Veto(), clock=manual_clock) as c:
        with pytest.raises(healkit.HTTPStatusError, match="not retried: vetoed"):
            await c.get("/x", service=SERVICE)
    assert fault_server.hits("/x") == 1
