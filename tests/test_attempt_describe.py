"""AttemptRecord.describe(): the one line each attempt gets in error messages and logs."""

from __future__ import annotations

import pytest

import healkit
from tests.plugins import RetryUpTo

pytestmark = pytest.mark.anyio


class Outcomes:
    """An observer keeping the outcome of every call."""

    healkit_name = "outcomes"
    healkit_observer = True

    def __init__(self) -> None:
        self.seen: list[healkit.Outcome] = []

    @healkit.hookimpl
    def healkit_call_end(self, outcome: healkit.Outcome) -> None:
        self.seen.append(outcome)


async def test_a_decorated_function_attempt_says_it_returned() -> None:
    outcomes = Outcomes()
    runtime = healkit.Runtime(plugins=[RetryUpTo(2), outcomes], entry_points=False)
    calls = 0

    @healkit.resilient(service="ledger", failures=(KeyError,), runtime=runtime)
    async def post_entry() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("not yet")
        return "posted"

    assert await post_entry() == "posted"
    failed, returned = (record.describe() for record in outcomes.seen[0].attempts)
    assert failed.startswith("#1 call CallError in ")
    assert returned.startswith("#2 call returned in ")
    assert "HTTP" not in failed + returned


def test_an_http_attempt_says_its_status_or_that_no_answer_came_yet() -> None:
    answered = healkit.AttemptRecord(
        number=1, endpoint="http://a.example", started=0.0, duration=0.0012, status=200
    )
    assert answered.describe() == "#1 http://a.example HTTP 200 in 1.2ms"
    failed = healkit.AttemptRecord(
        number=2,
        endpoint="http://a.example",
        started=0.0,
        duration=0.002,
        status=503,
        error="HTTPStatusError",
    )
    assert failed.describe() == "#2 http://a.example HTTPStatusError (HTTP 503) in 2.0ms"
    in_flight = healkit.AttemptRecord(
        number=3, endpoint="http://a.example", started=0.0, duration=0.0
    )
    assert in_flight.describe() == "#3 http://a.example no answer yet"
