"""Contexts and decisions take their facts by position; the executor's internals are private.

healkit's own call paths build one ``CallContext`` per call and one
``AttemptContext`` per attempt by position (keyword arguments to a class cost
CPython 3.11 a dictionary per call), through the public constructors: there is
no second, private constructor to keep in step with them.
"""

from __future__ import annotations

import math

import pytest
from multidict import CIMultiDict

import healkit
from healkit.testing import ManualClock


def test_a_call_context_takes_its_facts_by_position() -> None:
    config = healkit.Runtime(entry_points=False).config
    clock = ManualClock(start=5.0)
    headers = CIMultiDict({"A": "b"})
    call = healkit.CallContext(
        "svc",
        "http",
        "POST",
        "/x",
        config,
        config.defaults,
        clock,
        headers,
        True,  # noqa: FBT003 - idempotent, by position as healkit's call paths pass it
        False,  # noqa: FBT003 - replayable
        7.0,
        9.0,
        True,  # noqa: FBT003 - routable
    )
    assert (call.service, call.transport, call.method, call.target) == ("svc", "http", "POST", "/x")
    assert (call.config, call.policy, call.clock) == (config, config.defaults, clock)
    assert call.headers is headers
    assert (call.idempotent, call.replayable, call.routable) == (True, False, True)
    assert (call.started, call.deadline) == (7.0, 9.0)
    assert (call.attempt_limit, call.attempt_timeout, call.path, call.attempts) == (
        None,
        None,
        "primary",
        [],
    )


def test_a_call_context_defaults_what_is_not_given() -> None:
    config = healkit.Runtime(entry_points=False).config
    clock = ManualClock(start=5.0)
    call = healkit.CallContext(
        service="svc",
        transport="function",
        method="CALL",
        target="f",
        config=config,
        policy=config.defaults,
        clock=clock,
        attempt_limit=2,
        attempt_timeout=0.5,
    )
    assert call.headers_if_any() is None
    assert (call.idempotent, call.replayable, call.routable) == (False, True, False)
    assert (call.started, call.deadline) == (5.0, math.inf)  # started: the clock's now
    assert (call.attempt_limit, call.attempt_timeout) == (2, 0.5)


def test_an_attempt_context_takes_its_facts_by_position() -> None:
    limits = healkit.Timeouts(connect=1.0, read=2.0, total=3.0)
    attempt = healkit.AttemptContext(2, "http://a", 3.0, limits, 0.25)
    assert (attempt.number, attempt.endpoint, attempt.started) == (2, "http://a", 3.0)
    assert (attempt.timeouts, attempt.retry_delay) == (limits, 0.25)
    assert healkit.AttemptContext(1, None, 0.0).timeouts == healkit.Timeouts(
        connect=10.0, read=30.0, total=60.0
    )


def test_a_retry_decision_takes_its_facts_by_position() -> None:
    decision = healkit.RetryDecision(True, 0.5, "http://b", "why")  # noqa: FBT003
    assert (decision.retry, decision.delay, decision.endpoint, decision.reason) == (
        True,
        0.5,
        "http://b",
        "why",
    )
    stop = healkit.RetryDecision.stop("budget")
    assert (stop.retry, stop.delay, stop.endpoint, stop.reason) == (False, 0.0, None, "budget")


@pytest.mark.parametrize("delay", [-1.0, math.inf, math.nan])
def test_a_retry_decision_refuses_a_delay_that_is_not_finite_and_positive(delay: float) -> None:
    with pytest.raises(ValueError, match="retry delay must be finite and >= 0"):
        healkit.RetryDecision.again(delay)


def test_the_runtime_keeps_its_plan_and_timers_private() -> None:
    runtime = healkit.Runtime(entry_points=False)
    assert not hasattr(runtime, "plan")
    assert not hasattr(runtime, "timers")


def test_a_response_has_no_public_way_to_bind_an_outcome() -> None:
    assert not hasattr(healkit.Response, "bind_outcome")
    with pytest.raises(healkit.OutcomeUnavailableError):
        _ = healkit.Response(200).outcome


def test_a_response_takes_its_facts_by_position() -> None:
    response = healkit.Response(404, {"Content-Type": "text/plain"}, b"gone", "http://h/x", "Gone")
    assert (response.status, response.body, response.url, response.reason) == (
        404,
        b"gone",
        "http://h/x",
        "Gone",
    )
    assert response.headers["content-type"] == "text/plain"
