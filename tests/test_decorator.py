"""@healkit.resilient on plain async functions."""

from __future__ import annotations

import inspect

import pytest

import healkit
from tests.plugins import RetryUpTo, StaticFallback

pytestmark = pytest.mark.anyio


def test_signature_and_metadata_are_kept() -> None:
    async def charge(amount: int, *, currency: str = "EUR") -> str:
        """Charge money."""
        return f"{amount} {currency}"

    wrapped = healkit.resilient(service="payments")(charge)
    assert inspect.signature(wrapped) == inspect.signature(charge)
    assert wrapped.__doc__ == "Charge money."
    assert wrapped.__name__ == "charge"


def test_sync_functions_and_non_exception_failures_are_refused() -> None:
    def sync() -> None:
        """Not async."""

    with pytest.raises(TypeError, match="async function"):
        healkit.resilient(service="s")(sync)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Exception subclasses"):
        healkit.resilient(service="s", failures=(BaseException,))  # type: ignore[arg-type]


async def test_arguments_pass_through_and_retries_repeat_them() -> None:
    seen: list[tuple[int, str]] = []
    runtime = healkit.Runtime(plugins=[RetryUpTo(3)], entry_points=False)

    @healkit.resilient(service="payments", failures=(KeyError,), runtime=runtime)
    async def charge(amount: int, *, currency: str) -> str:
        seen.append((amount, currency))
        if len(seen) < 3:
            raise KeyError("transient")
        return "charged"

    assert await charge(5, currency="EUR") == "charged"
    assert seen == [(5, "EUR")] * 3


async def test_runtime_comes_from_the_enclosing_client() -> None:
    fallback = StaticFallback("from client runtime")

    @healkit.resilient(service="payments")
    async def broken() -> str:
        raise ConnectionError

    async with healkit.Client(plugins=[fallback], entry_points=False):
        assert await broken() == "from client runtime"
    with pytest.raises(healkit.CallError):
        await broken()  # outside: the default runtime has no such fallback


async def test_non_idempotent_call_sites_say_so() -> None:
    flags: list[bool] = []

    class Peek:
        @healkit.hookimpl
        def healkit_pre_request(self, call: healkit.CallContext) -> None:
            flags.append(call.idempotent)

    runtime = healkit.Runtime(plugins=[Peek()], entry_points=False)

    @healkit.resilient(service="s", idempotent=False, runtime=runtime)
    async def send() -> None:
        return None

    await send()
    assert flags == [False]
