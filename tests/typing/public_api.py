"""Typing test of the public API, checked by ``mypy --strict`` (``nox -s typecheck``).

Not run, only type-checked. Each ``# type: ignore[code]`` marks a line that
mypy must reject: with ``warn_unused_ignores`` (part of ``--strict``), an ignore
that is not needed any more, because healkit's types stopped catching the
mistake, fails the check.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

import healkit
from healkit.testing import is_testing, set_testing


async def client_calls(client: healkit.Client) -> None:
    """Options are typed on every way of making a request."""
    response = await client.get("/v1/items/1", service="inventory", attempts=2, deadline=3)
    assert_type(response, healkit.Response)
    await client.post(
        "/v1/orders",
        service="orders",
        json={"sku": "a-1"},
        idempotent=True,
        attempt_timeout=1.5,
        ssl=False,
        proxy="http://proxy.test:3128",
    )
    await client.request(
        "PATCH", "/v1/orders/1", service="orders", attempts=1, cookies=[("session", "s1")]
    )
    async with client.stream("GET", "/export", service="inventory", attempts=1) as streamed:
        assert_type(streamed, healkit.Response)

    await client.get("/v1/items/1", servce="inventory")  # type: ignore[call-arg]
    await client.delete("/v1/items/1", service="inventory", attempts="2")  # type: ignore[arg-type]
    await client.request("GET", "/v1/items/1", attempt_timeout="1")  # type: ignore[arg-type]
    await client.request("GET", "/v1/items/1", retries=2)  # type: ignore[call-arg]


def options_for_a_wrapper() -> healkit.RequestOptions:
    """``RequestOptions`` is the type of what the shortcut methods accept."""
    typed: healkit.RequestOptions = {"service": "inventory", "attempts": 1}
    wrong: healkit.RequestOptions = {"servce": "inventory"}  # type: ignore[typeddict-unknown-key]
    del wrong
    return typed


@healkit.resilient(service="mailer", failures=(OSError,), idempotent=False)
async def send_mail(to: str, *, urgent: bool = False) -> int:
    """The decorator keeps the signature."""
    del to, urgent
    return 1


def decorated() -> None:
    """A decorated function is typed as the function it wraps."""
    sending = send_mail("ops@example.test", urgent=True)
    _ = assert_type(sending, Coroutine[Any, Any, int])  # the value is the coroutine itself
    sending.close()
    wrong = send_mail(42)  # type: ignore[arg-type]
    wrong.close()


def test_mode() -> None:
    """The test mode's API."""
    with set_testing(True, attempts=1):
        assert_type(is_testing(), bool)
    set_testing(True, attempts="1")  # type: ignore[arg-type]
