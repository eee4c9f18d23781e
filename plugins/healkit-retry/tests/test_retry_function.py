"""The retry plugin on ``@healkit.resilient`` functions: no HTTP, same rules."""

from __future__ import annotations

import pytest
from retry_support import SERVICE, seeded

import healkit
from healkit.testing import ManualClock
from healkit_retry import RetryPlugin

pytestmark = pytest.mark.anyio


def runtime(clock: ManualClock, **retry: object) -> healkit.Runtime:
    return healkit.Runtime(
        config={"services": {SERVICE: {"retry": retry}}},
        plugins=[RetryPlugin(rng=seeded(3))],
        entry_points=False,
        clock=clock,
    )


async def test_failures_of_an_idempotent_function_are_retried(manual_clock: ManualClock) -> None:
    calls: list[int] = []

    @healkit.resilient(service=SERVICE, idempotent=True, runtime=runtime(manual_clock))
    async def fetch(n: int) -> int:
        calls.append(n)
        if len(calls) < 3:
            raise ConnectionResetError("peer reset")
        return n * 2

    assert await fetch(21) == 42
    assert calls == [21, 21, 21]
    assert len(manual_clock.sleeps) == 2


async def test_a_function_declared_not_idempotent_runs_once(manual_clock: ManualClock) -> None:
    calls = 0

    @healkit.resilient(service=SERVICE, idempotent=False, runtime=runtime(manual_clock))
    async def charge() -> None:
        nonlocal calls
        calls += 1
        raise TimeoutError("gateway slow")

    with pytest.raises(healkit.CallError) as caught:
        await charge()
    assert calls == 1
    assert "the function may have run and is not declared idempotent" in str(caught.value)


async def test_attempt_limit_applies_to_functions(manual_clock: ManualClock) -> None:
    calls = 0

    @healkit.resilient(service=SERVICE, idempotent=True, runtime=runtime(manual_clock, attempts=5))
    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise OSError("down")

    with pytest.raises(healkit.CallError, match=r"all 5 attempts made"):
        await flaky()
    assert calls == 5


async def test_exceptions_that_are_not_failures_pass_through(manual_clock: ManualClock) -> None:
    calls = 0

    @healkit.resilient(service=SERVICE, runtime=runtime(manual_clock))
    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        await broken()
    assert calls == 1


async def test_call_errors_can_be_left_alone(manual_clock: ManualClock) -> None:
    calls = 0

    @healkit.resilient(
        service=SERVICE, runtime=runtime(manual_clock, retry_on=["connect", "status"])
    )
    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise OSError("down")

    with pytest.raises(healkit.CallError, match=r"call_error failures are not retried"):
        await flaky()
    assert calls == 1
