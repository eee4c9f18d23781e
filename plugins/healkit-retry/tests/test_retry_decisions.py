"""Single decisions of ``healkit_on_error``, driven directly (no network, no event loop)."""

from __future__ import annotations

import math

import pytest
from retry_support import build, call_context, seeded

import healkit
from healkit.testing import ManualClock
from healkit_retry import RetryPlugin

ENDPOINTS = ("http://a.test", "http://b.test", "http://c.test")


def decide(
    error: healkit.HealkitError,
    *,
    number: int = 1,
    endpoint: str = ENDPOINTS[0],
    method: str = "GET",
    **retry: object,
) -> healkit.RetryDecision:
    clock = ManualClock()
    call = call_context(build(list(ENDPOINTS), **retry), clock, method=method)
    plugin = RetryPlugin(rng=seeded(1))
    decision = None
    for n in range(1, number + 1):
        attempt = healkit.AttemptContext(n, endpoint, started=clock.now())
        call.attempts.append(attempt)
        plugin.healkit_pre_request(call, attempt)
        decision = plugin.healkit_on_error(call, attempt, error)
    assert decision is not None
    return decision


def status_error(status: int, retry_after: float | None = None) -> healkit.HTTPStatusError:
    error = healkit.HTTPStatusError(status, url="http://a.test/x")
    error.retry_after = retry_after
    return error


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (healkit.BodyTooLargeError(10, url="http://a.test/x"), "BodyTooLargeError is not a"),
        (healkit.DeadlineExceeded("late", limit=1.0), "the call's deadline passed"),
        (healkit.InvalidRequestError("bad URL"), "InvalidRequestError is not a retryable failure"),
        (status_error(500), "HTTP 500 is not a retryable status (retry.statuses)"),
    ],
)
def test_errors_that_are_never_retried(error: healkit.HealkitError, reason: str) -> None:
    decision = decide(error)
    assert not decision.retry
    assert reason in decision.reason


def test_one_attempt_means_no_retry_whatever_the_error() -> None:
    decision = decide(healkit.ConnectError("refused"), attempts=1)
    assert decision.reason == "retries are off (retry.attempts = 1)"


def test_a_retry_after_set_by_another_plugin_is_sanitized() -> None:
    assert decide(status_error(503, retry_after=-3.0)).delay == 0.0
    refused = decide(status_error(503, retry_after=math.nan))
    assert not refused.retry
    assert "Retry-After asks for nans" in refused.reason


def test_a_retry_after_of_zero_retries_at_once() -> None:
    decision = decide(status_error(429, retry_after=0.0))
    assert decision.retry
    assert decision.delay == 0.0
