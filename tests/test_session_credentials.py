"""Credentials an adopted aiohttp session adds to every request stay with their origin.

aiohttp merges a session's default headers, its ``auth`` and the cookies given
to it (which have no domain) into every request, and cannot leave them out of
one. healkit withholds credentials from a fallback endpoint of another origin,
so it refuses to send there with such a session, unless
``routing.forward_credentials`` says they may go. Real loopback servers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

import healkit
from healkit.testing import Fault, FaultServer
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio

SERVICE = "api"


@pytest.fixture
async def servers() -> AsyncIterator[list[FaultServer]]:
    async with AsyncExitStack() as stack:
        primary, backup = [await stack.enter_async_context(FaultServer()) for _ in range(2)]
        primary.set_default(Fault.status(503))
        yield [primary, backup]


def with_fallback(primary: str, backup: str, **routing: Any) -> dict[str, Any]:
    routing = {"fallback_groups": [[backup]], **routing}
    return {"services": {SERVICE: {"endpoints": [primary], "routing": routing}}}


def client(config: dict[str, Any], session: aiohttp.ClientSession) -> healkit.Client:
    return healkit.Client(
        config=config, session=session, plugins=[TimeoutPlugin()], entry_points=False
    )


async def test_session_cookies_are_not_sent_to_a_fallback_of_another_origin(
    servers: list[FaultServer],
) -> None:
    # Old code: the fallback answered, and received "Cookie: session=abc".
    primary, backup = servers
    async with (
        aiohttp.ClientSession(cookies={"session": "abc"}) as session,
        client(with_fallback(primary.url, backup.url), session) as c,
    ):
        with pytest.raises(healkit.InvalidRequestError, match="cookies without a domain") as caught:
            await c.get("/b", service=SERVICE)
    assert "routing.forward_credentials" in str(caught.value)
    assert backup.hits() == 0


async def test_forward_credentials_lets_the_session_credentials_go_to_the_fallback(
    servers: list[FaultServer],
) -> None:
    primary, backup = servers
    config = with_fallback(primary.url, backup.url, forward_credentials=True)
    async with (
        aiohttp.ClientSession(
            headers={"Authorization": "Bearer s3cret"}, cookies={"session": "abc"}
        ) as session,
        client(config, session) as c,
    ):
        response = await c.get("/b", service=SERVICE)
    assert response.outcome.path == "fallback"
    received = backup.requests[0].headers
    assert (received["Authorization"], received["Cookie"]) == ("Bearer s3cret", "session=abc")


async def test_a_session_without_credentials_fails_over_and_call_cookies_stay_behind(
    servers: list[FaultServer],
) -> None:
    # Old code: the call's cookies= went to the fallback of another origin.
    primary, backup = servers
    async with (
        aiohttp.ClientSession(headers={"Accept": "text/plain"}) as session,
        client(with_fallback(primary.url, backup.url), session) as c,
    ):
        response = await c.get("/b", service=SERVICE, cookies={"call": "xyz"})
    assert response.outcome.path == "fallback"
    assert primary.requests[0].headers["Cookie"] == "call=xyz"
    assert "Cookie" not in backup.requests[0].headers
