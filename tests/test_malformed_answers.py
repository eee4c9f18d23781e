"""Answers that are not valid HTTP are transport failures (ProtocolError), not statuses.

aiohttp reports an unparsable response head as ``ClientResponseError(status=400)``:
a status the upstream never sent. healkit maps it, and a body that breaks its
framing, to :class:`healkit.ProtocolError`, which routing, the breaker and the
retry plugin treat as a failure of the endpoint that may have reached the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
from aiohttp.http_exceptions import HttpProcessingError

import healkit
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_breaker import BreakerPlugin, State
from healkit_retry import RetryPlugin
from tests.conftest import service_config

pytestmark = pytest.mark.anyio

MakeClient = Callable[..., healkit.Client]
SERVICE = "inventory"

MALFORMED = {
    "garbage status line": Fault.garbage_status_line(),
    "200 KB header block": Fault.oversized_headers(200 * 1024),
    "bad chunking": Fault.bad_chunking(),
    "body shorter than Content-Length": Fault.truncated(body=b"part", declared_length=100),
    "body longer than Content-Length": Fault.malformed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello"
    ),
    "body not gzip as declared": Fault.malformed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Encoding: gzip\r\n\r\nhello"
    ),
}
# One answer whose head is rejected, one whose body is (after the head arrived).
HEAD_AND_BODY = {k: MALFORMED[k] for k in ("garbage status line", "body not gzip as declared")}


def acquired(client: healkit.Client) -> int:
    """Connections currently handed out by the client's connector."""
    connector = client.session.connector
    assert isinstance(connector, aiohttp.TCPConnector)
    return len(connector._acquired)


def routed(primary: str, backup: str, **service: Any) -> dict[str, Any]:
    """One service: ``primary`` alone in its group, ``backup`` the fallback group."""
    routing = {"fallback_groups": [[backup]], "eject_after": 3, "eject_time": 30.0}
    return {"services": {SERVICE: {"endpoints": [primary], "routing": routing, **service}}}


@pytest.fixture
async def two_servers() -> AsyncIterator[tuple[FaultServer, FaultServer]]:
    async with AsyncExitStack() as stack:
        primary = await stack.enter_async_context(FaultServer())
        backup = await stack.enter_async_context(FaultServer())
        yield primary, backup


@pytest.mark.parametrize("fault", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_answer_is_a_protocol_error_not_a_status(
    fault_server: FaultServer, make_client: MakeClient, fault: Fault
) -> None:
    fault_server.set_default(fault)
    async with make_client(service_config(fault_server.url)) as client:
        with pytest.raises(healkit.ProtocolError) as caught:
            await client.get("/x", service="svc")
        assert acquired(client) == 0
    error = caught.value
    assert isinstance(error, healkit.TransportError)
    assert error.may_have_reached_server is True
    # aiohttp's error, or for a rejected head the parser's error behind it: aiohttp's
    # ClientResponseError quotes the URL as sent (tests/test_no_secret_leaks.py).
    assert isinstance(error.__cause__, aiohttp.ClientError | HttpProcessingError)
    assert str(error).startswith(f"malformed response from {fault_server.url}/x: ")
    assert [a.error for a in error.attempts] == ["ProtocolError"]
    assert fault_server.hits("/x") == 1


async def test_the_message_does_not_quote_the_answer(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    secret = b"s3cret-" + b"a" * 10_000
    fault_server.set_default(
        Fault.malformed(b"HTTP/1.1 200 OK\r\nSet-Cookie: " + secret + b"\r\n\r\n")
    )
    async with make_client(service_config(fault_server.url)) as client:
        with pytest.raises(healkit.ProtocolError) as caught:
            await client.get("/x", service="svc")
    assert "s3cret" not in str(caught.value)
    assert len(caught.value.message) < 400


async def test_a_malformed_streamed_body_is_a_protocol_error(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    fault_server.set_default(Fault.truncated(body=b"part", declared_length=100))
    async with make_client(service_config(fault_server.url)) as client:
        async with client.stream("GET", "/x", service="svc") as response:
            with pytest.raises(healkit.ProtocolError) as caught:
                await response.read()
        assert acquired(client) == 0
    assert len(caught.value.attempts) == 1


async def test_a_status_the_upstream_sent_stays_an_http_status_error(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    # aiohttp's own raise_for_status gives a ClientResponseError with no parser
    # error behind it: a real 400.
    fault_server.set_default(Fault.status(400))
    async with make_client(service_config(fault_server.url)) as client:
        with pytest.raises(healkit.HTTPStatusError) as caught:
            await client.get("/x", service="svc", raise_for_status=True)
    assert caught.value.status == 400


@pytest.mark.parametrize("fault", HEAD_AND_BODY.values(), ids=HEAD_AND_BODY.keys())
async def test_malformed_answers_eject_the_endpoint_and_traffic_fails_over(
    two_servers: tuple[FaultServer, FaultServer],
    manual_clock: ManualClock,
    make_client: MakeClient,
    fault: Fault,
) -> None:
    primary, backup = two_servers
    primary.set_default(fault)
    config = routed(primary.url, backup.url)
    # Ejection alone: a call that fails is not moved to the fallback group at once.
    config["services"][SERVICE]["routing"]["retry_other_groups"] = False
    async with make_client(config, clock=manual_clock) as client:
        router = client.runtime.plugin_manager.get_plugin("routing")
        counted = []
        for _ in range(3):
            with pytest.raises(healkit.ProtocolError):
                await client.get("/x", service=SERVICE)
            status = {s.endpoint: s for s in router.status(SERVICE)}
            counted.append((status[primary.url].consecutive_failures, status[primary.url].usable))
        answers = [await client.get("/x", service=SERVICE) for _ in range(5)]
    # The third failure in a row ejects it (an ejection starts a new count).
    assert counted == [(1, True), (2, True), (0, False)]
    assert status[primary.url].ejected_for == pytest.approx(30.0)
    assert primary.hits() == 3
    assert backup.hits() == 5
    assert {(a.status, a.outcome.path) for a in answers if a.outcome} == {(200, "fallback")}


@pytest.mark.parametrize("fault", HEAD_AND_BODY.values(), ids=HEAD_AND_BODY.keys())
async def test_a_malformed_answer_moves_the_call_to_the_fallback_group(
    two_servers: tuple[FaultServer, FaultServer],
    manual_clock: ManualClock,
    make_client: MakeClient,
    fault: Fault,
) -> None:
    primary, backup = two_servers
    primary.set_default(fault)
    async with make_client(routed(primary.url, backup.url), clock=manual_clock) as client:
        answer = await client.get("/x", service=SERVICE)
    assert (answer.status, answer.outcome is not None and answer.outcome.path) == (200, "fallback")
    assert (primary.hits(), backup.hits()) == (1, 1)


@pytest.mark.parametrize("fault", HEAD_AND_BODY.values(), ids=HEAD_AND_BODY.keys())
async def test_the_breaker_counts_malformed_answers_as_failures(
    fault_server: FaultServer, manual_clock: ManualClock, make_client: MakeClient, fault: Fault
) -> None:
    fault_server.set_default(fault)
    breaker = BreakerPlugin()
    config = service_config(
        fault_server.url, breaker={"consecutive_failures": 3, "open_duration": 60.0}
    )
    async with make_client(config, breaker, clock=manual_clock) as client:
        for _ in range(3):
            with pytest.raises(healkit.ProtocolError):
                await client.get("/x", service="svc")
        status = breaker.status("svc", fault_server.url)
        with pytest.raises(healkit.CircuitOpenError):
            await client.get("/x", service="svc")
    assert status is not None
    assert (status.failures, status.consecutive_failures) == (3, 3)
    assert fault_server.hits() == 3


async def test_a_half_open_probe_whose_body_is_malformed_opens_the_breaker_again(
    fault_server: FaultServer, manual_clock: ManualClock, make_client: MakeClient
) -> None:
    fault_server.script(
        "/x", Fault.garbage_status_line(), HEAD_AND_BODY["body not gzip as declared"]
    )
    breaker = BreakerPlugin()
    config = service_config(
        fault_server.url, breaker={"consecutive_failures": 1, "open_duration": 5.0}
    )
    async with make_client(config, breaker, clock=manual_clock) as client:
        with pytest.raises(healkit.ProtocolError):
            await client.get("/x", service="svc")
        assert breaker.state("svc", fault_server.url) is State.OPEN
        manual_clock.advance(5.0)
        assert breaker.state("svc", fault_server.url) is State.HALF_OPEN
        with pytest.raises(healkit.ProtocolError):  # the probe: a 200 head, a broken body
            await client.get("/x", service="svc")
        assert breaker.state("svc", fault_server.url) is State.OPEN
    assert fault_server.hits("/x") == 2


async def test_a_get_is_retried_after_a_malformed_answer(
    fault_server: FaultServer, manual_clock: ManualClock, make_client: MakeClient
) -> None:
    fault_server.script("/x", Fault.garbage_status_line(), Fault.bad_chunking())
    config = service_config(fault_server.url, retry={"attempts": 3})
    async with make_client(config, RetryPlugin(), clock=manual_clock) as client:
        response = await client.get("/x", service="svc")
    assert response.status == 200
    assert response.outcome is not None
    assert [a.error for a in response.outcome.attempts] == ["ProtocolError", "ProtocolError", None]
    assert fault_server.hits("/x") == 3


async def test_a_post_is_not_retried_after_a_malformed_answer(
    fault_server: FaultServer, manual_clock: ManualClock, make_client: MakeClient
) -> None:
    fault_server.script("/x", Fault.garbage_status_line())
    config = service_config(fault_server.url, retry={"attempts": 3})
    async with make_client(config, RetryPlugin(), clock=manual_clock) as client:
        with pytest.raises(healkit.ProtocolError) as caught:
            await client.post("/x", service="svc", data=b"charge")
    assert "POST is not idempotent and the request may have reached the server" in str(caught.value)
    assert fault_server.requests[0].body == b"charge"
    assert fault_server.hits("/x") == 1


async def test_protocol_failures_can_be_left_out_of_retries(
    fault_server: FaultServer, manual_clock: ManualClock, make_client: MakeClient
) -> None:
    fault_server.script("/x", Fault.garbage_status_line())
    retry = {"attempts": 3, "retry_on": ["connect", "connection_lost", "timeout", "status"]}
    config = service_config(fault_server.url, retry=retry)
    async with make_client(config, RetryPlugin(), clock=manual_clock) as client:
        with pytest.raises(healkit.ProtocolError, match=r"protocol failures are not retried"):
            await client.get("/x", service="svc")
    assert fault_server.hits("/x") == 1


async def test_the_middleware_maps_malformed_answers_too(fault_server: FaultServer) -> None:
    fault_server.set_default(Fault.garbage_status_line())
    runtime = healkit.Runtime(entry_points=False)
    async with aiohttp.ClientSession(
        middlewares=[healkit.ResilienceMiddleware(runtime)]
    ) as session:
        with pytest.raises(healkit.ProtocolError) as caught:
            await session.get(f"{fault_server.url}/x")
    assert caught.value.may_have_reached_server is True


# -- the fault server's malformed answers ---------------------------------------------


@pytest.mark.parametrize(
    ("fault", "raised"),
    [
        (Fault.garbage_status_line(), aiohttp.ClientResponseError),
        (Fault.oversized_headers(), aiohttp.ClientResponseError),
        (Fault.bad_chunking(), aiohttp.ClientResponseError),
        (Fault.malformed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhalf"), aiohttp.ClientError),
    ],
    ids=["garbage status line", "oversized headers", "bad chunking", "raw bytes"],
)
async def test_the_fault_server_sends_malformed_answers_as_given(
    fault_server: FaultServer, fault: Fault, raised: type[Exception]
) -> None:
    fault_server.set_default(fault)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(raised):
            async with session.get(f"{fault_server.url}/x") as response:
                await response.read()
    (request,) = fault_server.requests
    assert request.fault is fault


def test_malformed_faults_are_checked_and_shown() -> None:
    with pytest.raises(ValueError, match="needs the bytes"):
        Fault.malformed(b"")
    with pytest.raises(ValueError, match="at least 1 byte"):
        Fault.oversized_headers(0)
    assert repr(Fault.garbage_status_line()) == r"Fault(kind=MALFORMED, body=b'GARBAGE\r\n\r\n')"
    assert repr(Fault.oversized_headers(10)).endswith("body=<60 bytes>)")
