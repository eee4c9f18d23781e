"""``@healkit.resilient`` repeats a function only when its author says it is safe.

A decorated function may have side effects (a charge, an e-mail): by default
(``idempotent=False``) a failure that may have run it is not retried, as a POST
is not. ``idempotent=True`` opts in.
"""

from __future__ import annotations

import pytest

import healkit
from healkit.testing import ManualClock
from healkit_retry import RetryPlugin

pytestmark = pytest.mark.anyio

SERVICE = "mailer"


def runtime(clock: ManualClock) -> healkit.Runtime:
    return healkit.Runtime(
        config={"services": {SERVICE: {"retry": {"attempts": 3}}}},
        plugins=[RetryPlugin()],
        entry_points=False,
        clock=clock,
    )


async def test_a_failing_function_runs_once_by_default(manual_clock: ManualClock) -> None:
    sent: list[str] = []

    @healkit.resilient(service=SERVICE, runtime=runtime(manual_clock))
    async def send_mail(to: str) -> None:
        sent.append(to)
        raise ConnectionResetError("the relay hung up after the message")

    with pytest.raises(healkit.CallError) as caught:
        await send_mail("ops@example.test")
    assert sent == ["ops@example.test"]
    assert "not declared idempotent" in str(caught.value)
    assert manual_clock.sleeps == []


async def test_a_function_declared_idempotent_is_retried(manual_clock: ManualClock) -> None:
    calls = 0

    @healkit.resilient(service=SERVICE, idempotent=True, runtime=runtime(manual_clock))
    async def read_quota() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionResetError("peer reset")
        return 10

    assert await read_quota() == 10
    assert calls == 3
