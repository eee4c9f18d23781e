"""Red-team checks of deadline propagation: hostile and unusual inbound headers, collisions, tasks.

Real loopback servers see the outbound header; a manual clock makes the milliseconds exact.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import anyio
import pytest
from multidict import CIMultiDict, MultiDict

import healkit
from healkit.deadlines import MAX_INBOUND_MS, MAX_VALUES, deadline_from
from healkit.testing import FaultServer, ManualClock
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio

HEADER = "X-Request-Deadline-Ms"


def document(url: str) -> dict[str, Any]:
    """One service with the deadline header on and a 10-second call deadline."""
    core = {"deadline_header": HEADER, "timeout": {"deadline": 10.0}}
    return {"services": {"svc": {"endpoints": [url], **core}}}


def sent(server: FaultServer) -> list[list[str]]:
    """Every value of the header each request carried (one line expected)."""
    return [r.headers.getall(HEADER, []) for r in server.requests]


# -- inbound ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(MultiDict([(HEADER.lower(), "250")]), id="multidict"),
        pytest.param(
            MultiDict([(HEADER.upper(), "900"), ("x-request-deadline-ms", "250")]), id="two-cases"
        ),
        pytest.param(CIMultiDict([(HEADER.lower(), "250")]), id="cimultidict"),
        pytest.param({HEADER.upper(): "250"}, id="dict"),
    ],
)
def test_the_header_name_matches_without_regard_to_case_in_any_multidict(headers: Any) -> None:
    # Old code: a case-sensitive multidict (multidict.MultiDict) was asked with
    # getall(header): a differently cased line was not found, the deadline lost.
    with deadline_from(headers, header=HEADER) as granted:
        assert granted == 0.25


def test_values_are_counted_across_repeated_lines() -> None:
    at_cap = CIMultiDict([(HEADER, "7")] * MAX_VALUES)
    with deadline_from(at_cap, header=HEADER) as granted:
        assert granted == 0.007
    beyond = CIMultiDict([(HEADER, "7")] * (MAX_VALUES + 1))
    with pytest.raises(healkit.DeadlineHeaderError), deadline_from(beyond, header=HEADER):
        pytest.fail("the block must not run")


@pytest.mark.parametrize(
    "value", ["\u0665", "\uff15", "5\n", "5\r", "\u00a05", "5\u2009", "1_000", "0b1", "-0"]
)
def test_more_values_that_are_not_ascii_digits_are_invalid(value: str) -> None:
    with pytest.raises(healkit.DeadlineHeaderError), deadline_from({HEADER: value}, header=HEADER):
        pytest.fail("the block must not run")


def test_a_value_of_thousands_of_commas_is_refused_without_splitting_it_all() -> None:
    value = "1" + ",1" * 100_000
    with (
        pytest.raises(healkit.DeadlineHeaderError) as caught,
        deadline_from({HEADER: value}, header=HEADER),
    ):
        pytest.fail("the block must not run")
    assert len(caught.value.value) <= 64


async def test_concurrent_tasks_keep_their_own_inbound_deadline(fault_server: FaultServer) -> None:
    clock = ManualClock()
    both_in = anyio.Event()
    entered = 0

    async def handle(inbound: str) -> None:
        nonlocal entered
        with deadline_from({HEADER: inbound}, header=HEADER, clock=clock):
            entered += 1
            if entered == 2:
                both_in.set()
            await both_in.wait()  # both scopes are open at once
            await c.get(f"/{inbound}", service="svc")

    plugins = [TimeoutPlugin()]
    async with healkit.Client(
        config=document(fault_server.url), plugins=plugins, entry_points=False, clock=clock
    ) as c:
        await asyncio.gather(handle("100"), handle("5000"))
        await c.get("/outside", service="svc")  # the policy's 10 s, no scope left behind
    seen = {r.path: r.headers.get(HEADER) for r in fault_server.requests}
    assert seen == {"/100": "100", "/5000": "5000", "/outside": "10000"}


# -- outbound -------------------------------------------------------------------------


async def test_a_callers_header_of_another_case_is_replaced_not_doubled(
    fault_server: FaultServer,
) -> None:
    clock = ManualClock()
    async with healkit.Client(
        config=document(fault_server.url),
        plugins=[TimeoutPlugin()],
        entry_points=False,
        clock=clock,
    ) as c:
        await c.get("/a", service="svc", deadline=1.0, headers={HEADER.lower(): "999999"})
    runtime = healkit.Runtime(
        config=document(fault_server.url),
        plugins=[TimeoutPlugin()],
        entry_points=False,
        clock=clock,
    )
    middleware = healkit.ResilienceMiddleware(runtime)
    async with (
        aiohttp.ClientSession(middlewares=[middleware]) as session,
        session.get(f"{fault_server.url}/m", headers={HEADER.upper(): "999999"}) as response,
    ):
        assert response.status == 200
    assert sent(fault_server) == [["1000"], ["10000"]]


async def test_a_huge_deadline_is_sent_as_a_value_healkit_itself_accepts(
    fault_server: FaultServer,
) -> None:
    # Old code sent every digit: deadline=1e18 s went out as a 22-digit value,
    # which deadline_from on the next service refuses (DeadlineHeaderError: a 400).
    config = {"services": {"svc": {"endpoints": [fault_server.url], "deadline_header": HEADER}}}
    async with healkit.Client(
        config=config, plugins=[], entry_points=False, clock=ManualClock()
    ) as c:
        await c.get("/a", service="svc", deadline=1e18)
        with anyio.move_on_after(1e18):
            await c.get("/b", service="svc", deadline=1e18)
    assert sent(fault_server) == [[str(MAX_INBOUND_MS)], [str(MAX_INBOUND_MS)]]
    request = fault_server.requests[0]
    with deadline_from(request.headers, header=HEADER) as granted:
        assert granted == MAX_INBOUND_MS / 1000
