"""healkit's test mode for applications' own tests (``healkit.testing.set_testing``).

A real upstream on loopback answers 503 with ``Retry-After: 5`` before it
recovers; the client runs on the real monotonic clock, wrapped so that every
sleep the pipeline asks for is recorded (and returns at once, so that a failure
of the test mode shows as recorded sleeps, not as a slow test).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Final

import pytest

import healkit
from healkit.testing import Fault, FaultServer, is_testing, set_testing
from healkit_retry import RetryPlugin
from healkit_timeout import TimeoutPlugin

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.anyio

SERVICE: Final = "ledger"
BUSY: Final = Fault.status(503, headers={"Retry-After": "5"})


class RecordingClock:
    """The real monotonic time; ``sleep`` records what it was asked and returns."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


@pytest.fixture(autouse=True)
def _test_mode_off_around_each_test() -> Iterator[None]:
    """Leave the process as each test found it, whatever the test did."""
    with set_testing(False):
        yield


def client(server: FaultServer, clock: RecordingClock, **retry: Any) -> healkit.Client:
    config = {
        "services": {
            SERVICE: {
                "endpoints": [server.url],
                "retry": {"attempts": 3, "base": 5.0, "cap": 5.0, **retry},
            }
        }
    }
    return healkit.Client(
        config=config, plugins=[TimeoutPlugin(), RetryPlugin()], entry_points=False, clock=clock
    )


@pytest.mark.usefixtures("healkit_testing")
async def test_the_fixture_makes_retries_happen_without_their_backoff(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/balance", BUSY, BUSY)
    clock = RecordingClock()
    async with client(fault_server, clock) as c:
        response = await c.get("/balance", service=SERVICE)
    assert response.status == 200
    assert fault_server.hits("/balance") == 3
    assert clock.sleeps == []  # decided as in production, carried out at once


async def test_without_the_test_mode_the_backoff_is_slept(fault_server: FaultServer) -> None:
    fault_server.script("/balance", BUSY, BUSY)
    clock = RecordingClock()
    async with client(fault_server, clock) as c:
        response = await c.get("/balance", service=SERVICE)
    assert response.status == 200
    assert clock.sleeps == [5.0, 5.0]


async def test_one_attempt_in_test_mode_returns_the_first_answer(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/balance", BUSY, BUSY)
    clock = RecordingClock()
    set_testing(True, attempts=1)
    async with client(fault_server, clock) as c:
        response = await c.get("/balance", service=SERVICE)
    # As with retry.attempts = 1: nothing retries, so the 503 is the answer.
    assert response.status == 503
    assert fault_server.hits("/balance") == 1
    assert clock.sleeps == []


async def test_test_mode_attempts_end_a_failing_call_early(fault_server: FaultServer) -> None:
    fault_server.script("/balance", Fault.reset(), Fault.reset(), Fault.reset())
    clock = RecordingClock()
    with set_testing(True, attempts=2):
        async with client(fault_server, clock) as c:
            with pytest.raises(healkit.ConnectionLostError) as caught:
                await c.get("/balance", service=SERVICE)
    assert fault_server.hits("/balance") == 2
    assert len(caught.value.attempts) == 2
    assert "all 2 attempts made" in str(caught.value)
    assert clock.sleeps == []


async def test_a_lower_per_call_attempts_wins_over_the_test_mode(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/balance", BUSY, BUSY)
    with set_testing(True, attempts=3):
        async with client(fault_server, RecordingClock()) as c:
            response = await c.get("/balance", service=SERVICE, attempts=1)
    assert response.status == 503
    assert fault_server.hits("/balance") == 1


async def test_a_decorated_function_is_retried_without_backoff() -> None:
    calls = 0
    clock = RecordingClock()
    runtime = healkit.Runtime(
        config={"services": {SERVICE: {"retry": {"base": 5.0, "cap": 5.0}}}},
        plugins=[TimeoutPlugin(), RetryPlugin()],
        entry_points=False,
        clock=clock,
    )

    @healkit.resilient(service=SERVICE, idempotent=True, runtime=runtime)
    async def read_balance() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionResetError("peer reset")
        return 7

    with set_testing(True):
        assert await read_balance() == 7
    assert calls == 3
    assert clock.sleeps == []


def test_set_testing_restores_the_previous_setting_as_a_context_manager() -> None:
    assert not is_testing()
    with set_testing(True, attempts=2):
        assert is_testing()
        with set_testing(False):
            assert not is_testing()
        assert is_testing()
    assert not is_testing()


@pytest.mark.parametrize("attempts", [0, -1, True, 1.5, "2"])
def test_set_testing_refuses_a_wrong_attempts(attempts: Any) -> None:
    with pytest.raises(ValueError, match="attempts must be an int of at least 1"):
        set_testing(True, attempts=attempts)
    assert not is_testing()


def test_attempts_need_the_test_mode_on() -> None:
    with pytest.raises(ValueError, match="only with the test mode on"):
        set_testing(False, attempts=1)


def test_the_fixture_turns_the_mode_on(healkit_testing: None) -> None:
    del healkit_testing
    assert is_testing()
    set_testing(True, attempts=1)  # undone by the fixture: see the next test


def test_the_fixture_restores_the_mode_after_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from healkit.testing import is_testing, set_testing

        def test_inside(healkit_testing):
            assert is_testing()
            set_testing(True, attempts=1)

        def test_after():
            assert not is_testing()
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
