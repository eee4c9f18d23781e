"""Deadline propagation: the remaining time sent upstream, and an inbound deadline read back.

Real loopback servers see the header; a manual clock makes the milliseconds exact.
"""

from __future__ import annotations

import math
from typing import Any

import aiohttp
import anyio
import httpx
import pytest
from aiohttp import web
from multidict import CIMultiDict

import healkit
from healkit.deadlines import INBOUND_DEADLINE, MAX_INBOUND_MS, deadline_from
from healkit.httpx import ResilientTransport
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_timeout import TimeoutPlugin
from tests.plugins import FailOnStatus, RetryUpTo

pytestmark = pytest.mark.anyio

HEADER = "X-Request-Deadline-Ms"


def document(url: str, **service: Any) -> dict[str, Any]:
    """One service with the deadline header on and a 10-second call deadline."""
    core = {"deadline_header": HEADER, "timeout": {"deadline": 10.0}, **service}
    return {"services": {"svc": {"endpoints": [url], **core}}}


def client(config: Any, clock: ManualClock, *plugins: object) -> healkit.Client:
    return healkit.Client(
        config=config, plugins=[*plugins, TimeoutPlugin()], entry_points=False, clock=clock
    )


def sent(server: FaultServer) -> list[str | None]:
    return [r.headers.get(HEADER) for r in server.requests]


# -- outbound: the header each attempt carries -------------------------------------


async def test_no_header_is_sent_by_default(fault_server: FaultServer) -> None:
    config = {"services": {"svc": {"endpoints": [fault_server.url]}}}
    async with client(config, ManualClock()) as c:
        await c.get("/a", service="svc", deadline=5.0)
    assert sent(fault_server) == [None]


async def test_each_attempt_carries_the_time_left_when_it_is_sent(
    fault_server: FaultServer,
) -> None:
    # Old code: no header at all. Attempt 2 starts 2 s (the backoff) later: 2000 ms less.
    fault_server.script("/a", Fault.status(503), then=Fault.ok())
    plugins = (RetryUpTo(2, delay=2.0), FailOnStatus(503))
    async with client(document(fault_server.url), ManualClock(), *plugins) as c:
        response = await c.get("/a", service="svc")
    assert response.status == 200
    assert sent(fault_server) == ["10000", "8000"]


async def test_the_call_deadline_and_a_cancel_scope_count_too(fault_server: FaultServer) -> None:
    clock = ManualClock()
    async with client(document(fault_server.url), clock) as c:
        await c.get("/a", service="svc", deadline=2.5)
        with anyio.fail_after(30):  # later than the policy's 10 s: the policy wins
            await c.get("/a", service="svc")
        with anyio.fail_after(3):  # sooner: the scope wins (less what ran since it began)
            await c.get("/a", service="svc")
    first, second, third = sent(fault_server)
    assert (first, second) == ("2500", "10000")
    assert third is not None
    assert 0 < int(third) <= 3000


async def test_the_value_is_rounded_down(fault_server: FaultServer) -> None:
    async with client(document(fault_server.url), ManualClock()) as c:
        await c.get("/a", service="svc", deadline=2.0005)
    assert sent(fault_server) == ["2000"]


async def test_the_header_replaces_a_callers_own_value(fault_server: FaultServer) -> None:
    async with client(document(fault_server.url), ManualClock()) as c:
        await c.get("/a", service="svc", deadline=1.0, headers={HEADER: "999999"})
    assert sent(fault_server) == ["1000"]


async def test_a_redirect_hop_repeats_the_value_of_its_attempt(fault_server: FaultServer) -> None:
    fault_server.script("/a", Fault.status(307, headers={"Location": "/b"}))
    async with client(document(fault_server.url), ManualClock()) as c:
        response = await c.get("/a", service="svc", deadline=3.0)
    assert response.status == 200
    assert [r.path for r in fault_server.requests] == ["/a", "/b"]
    assert sent(fault_server) == ["3000", "3000"]


async def test_a_fallback_endpoint_of_another_origin_gets_it_too(
    fault_server: FaultServer,
) -> None:
    # Not a credential: routing withholds Authorization from the other origin, not this.
    fault_server.set_default(Fault.status(503))
    async with FaultServer() as backup:
        config = document(fault_server.url, routing={"fallback_groups": [[backup.url]]})
        plugins = (RetryUpTo(2, delay=1.0), FailOnStatus(503))
        async with client(config, ManualClock(), *plugins) as c:
            response = await c.get("/a", service="svc", headers={"Authorization": "Bearer t"})
        assert response.status == 200
        assert sent(fault_server) == ["10000"]
        assert sent(backup) == ["10000"]  # failover is immediate: no backoff between
        assert "Authorization" not in backup.requests[0].headers


async def test_decorated_functions_get_no_header_but_keep_working() -> None:
    runtime = healkit.Runtime(
        config={"defaults": {"deadline_header": HEADER}}, plugins=[], entry_points=False
    )

    @healkit.resilient(service="fn", runtime=runtime)
    async def work() -> str:
        return "done"

    assert await work() == "done"


async def test_the_middleware_sends_the_header(fault_server: FaultServer) -> None:
    runtime = healkit.Runtime(
        config=document(fault_server.url),
        plugins=[RetryUpTo(2, delay=1.5), FailOnStatus(503), TimeoutPlugin()],
        entry_points=False,
        clock=ManualClock(),
    )
    fault_server.script("/m", Fault.status(503), then=Fault.ok())
    middleware = healkit.ResilienceMiddleware(runtime)
    async with (
        aiohttp.ClientSession(middlewares=[middleware]) as session,
        session.get(f"{fault_server.url}/m") as response,
    ):
        assert response.status == 200
    assert sent(fault_server) == ["10000", "8500"]


async def test_the_httpx_transport_sends_the_header(fault_server: FaultServer) -> None:
    fault_server.script("/h", Fault.status(503), then=Fault.ok())
    transport = ResilientTransport(
        config=document(fault_server.url),
        plugins=[RetryUpTo(2, delay=0.5), FailOnStatus(503), TimeoutPlugin()],
        entry_points=False,
        clock=ManualClock(),
    )
    async with httpx.AsyncClient(transport=transport) as http:
        response = await http.get(f"{fault_server.url}/h")
    assert response.status_code == 200
    assert sent(fault_server) == ["10000", "9500"]


@pytest.mark.parametrize(
    "name", ["X Deadline", "", "X-Deadline:", "Authorization", "content-length", "a" * 129]
)
def test_a_header_name_that_is_not_a_token_or_is_reserved_is_a_config_error(name: str) -> None:
    with pytest.raises(healkit.ConfigError, match="deadline_header"):
        healkit.build_config({"services": {"svc": {"deadline_header": name}}})


def test_a_header_name_is_accepted_under_defaults_and_per_service() -> None:
    config = healkit.build_config(
        {
            "defaults": {"deadline_header": "X-Budget"},
            "services": {"svc": {}, "own": {"deadline_header": HEADER}},
        }
    )
    assert config.policy("svc").deadline_header == "X-Budget"
    assert config.policy("own").deadline_header == HEADER


# -- inbound: deadline_from bounds the calls in its scope -------------------------


async def test_an_inbound_deadline_ends_a_call_that_would_wait_longer(
    fault_server: FaultServer,
) -> None:
    # Old code: healkit.deadlines did not exist; the call waited the policy's 10 s.
    fault_server.script("/slow", Fault.latency(30.0))
    clock = ManualClock()
    async with client(document(fault_server.url), clock) as c:
        with deadline_from({HEADER: "150"}, header=HEADER, clock=clock) as granted:
            assert granted == 0.15
            with pytest.raises(healkit.DeadlineExceeded) as caught:
                await c.get("/slow", service="svc")
    assert round(caught.value.limit or 0.0, 6) == 0.15  # deadline - start, up to an ulp
    assert fault_server.hits("/slow") == 1


async def test_the_inbound_deadline_is_passed_on_downstream(fault_server: FaultServer) -> None:
    clock = ManualClock()
    async with client(document(fault_server.url), clock) as c:
        with deadline_from(CIMultiDict({HEADER: "1500"}), header=HEADER, clock=clock):
            await c.get("/a", service="svc")
        await c.get("/a", service="svc")  # the scope has ended: the policy's 10 s again
    assert sent(fault_server) == ["1500", "10000"]


async def test_a_chain_of_services_passes_the_deadline_on(fault_server: FaultServer) -> None:
    # A real middle service: it reads the inbound header and calls the next hop.
    clock = ManualClock()
    async with client(document(fault_server.url), clock) as downstream:

        async def handle(request: web.Request) -> web.Response:
            with deadline_from(request.headers, header=HEADER, clock=clock):
                answer = await downstream.get("/leaf", service="svc")
            return web.Response(status=answer.status)

        app = web.Application()
        app.router.add_get("/mid", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            port = runner.addresses[0][1]
            async with client(document(f"http://127.0.0.1:{port}"), clock) as upstream:
                response = await upstream.get("/mid", service="svc", deadline=0.75)
        finally:
            await runner.cleanup()
    assert response.status == 200
    assert sent(fault_server) == ["750"]


async def test_scopes_nest_and_never_extend(fault_server: FaultServer) -> None:
    clock = ManualClock()
    async with client(document(fault_server.url), clock) as c:
        with deadline_from({HEADER: "1000"}, header=HEADER, clock=clock):
            with deadline_from({HEADER: "5000"}, header=HEADER, clock=clock):
                await c.get("/a", service="svc")
            with deadline_from({HEADER: "400"}, header=HEADER, clock=clock):
                await c.get("/a", service="svc")
    assert sent(fault_server) == ["1000", "400"]


async def test_a_zero_deadline_sends_nothing(fault_server: FaultServer) -> None:
    clock = ManualClock()
    async with client(document(fault_server.url), clock) as c:
        with (
            deadline_from({HEADER: "0"}, header=HEADER, clock=clock),
            pytest.raises(healkit.DeadlineExceeded),
        ):
            await c.get("/a", service="svc")
    assert fault_server.hits() == 0


async def test_the_inbound_deadline_bounds_decorated_functions() -> None:
    # Old code: nothing bounded the wait but the policy's 60 s deadline.
    runtime = healkit.Runtime(plugins=[TimeoutPlugin()], entry_points=False)
    never = anyio.Event()

    @healkit.resilient(service="fn", runtime=runtime)
    async def wait_forever() -> None:
        await never.wait()

    with (
        deadline_from({HEADER: "50"}, header=HEADER),
        pytest.raises(healkit.DeadlineExceeded) as caught,
    ):
        await wait_forever()
    assert caught.value.limit is not None
    assert caught.value.limit <= 0.05


# -- inbound: hostile values -----------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "-5",
        "+5",
        "1.5",
        "1e3",
        "10ms",
        "0x10",
        "abc",
        "١٢٣",  # Arabic-Indic digits: str.isdigit() says yes, the format says no
        "1" * 21,
        "100,",
        "100, x",
        ",".join(["1"] * 17),
    ],
)
def test_an_invalid_value_raises_a_typed_error(value: str) -> None:
    with (
        pytest.raises(healkit.DeadlineHeaderError) as caught,
        deadline_from({HEADER: value}, header=HEADER),
    ):
        pytest.fail("the block must not run")
    assert caught.value.header == HEADER
    assert len(caught.value.value) <= 64
    assert isinstance(caught.value, ValueError)


def test_an_invalid_value_can_be_ignored() -> None:
    with deadline_from({HEADER: "soon"}, header=HEADER, on_invalid="ignore") as granted:
        assert granted is None


def test_one_bad_line_among_good_ones_is_invalid() -> None:
    headers = CIMultiDict([(HEADER, "500"), (HEADER, "later")])
    with pytest.raises(healkit.DeadlineHeaderError), deadline_from(headers, header=HEADER):
        pytest.fail("the block must not run")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (CIMultiDict([(HEADER, "500"), (HEADER, "300")]), 0.3),
        ({HEADER: "500, 300"}, 0.3),
        ({HEADER.lower(): " 250\t"}, 0.25),
        ({HEADER: "00042"}, 0.042),
        ({HEADER: "99999999999999999999"}, MAX_INBOUND_MS / 1000),
        ({"Other": "5"}, None),
        ({}, None),
    ],
)
def test_the_smallest_value_wins_and_huge_ones_are_capped(
    headers: Any, expected: float | None
) -> None:
    with deadline_from(headers, header=HEADER) as granted:
        assert granted == expected


def test_an_absent_header_changes_nothing() -> None:
    with deadline_from({}, header=HEADER):
        assert INBOUND_DEADLINE.get() == math.inf


def test_the_module_surface_is_sorted_and_documented() -> None:
    assert healkit.deadlines.__all__ == sorted(healkit.deadlines.__all__)
    assert deadline_from.__doc__
    assert healkit.DeadlineHeaderError.__doc__
