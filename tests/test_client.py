"""healkit.Client against a real loopback server with scripted faults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec
import pytest

import healkit
from healkit._client import VERIFIED_AIOHTTP, aiohttp_release
from healkit.testing import Fault, FaultServer, refused_url
from tests.conftest import service_config
from tests.plugins import FailOnStatus, RetryUpTo, StaticFallback

pytestmark = pytest.mark.anyio

MakeClient = Callable[..., healkit.Client]


def acquired(client: healkit.Client) -> int:
    """Connections currently handed out by the client's connector."""
    connector = client.session.connector
    assert isinstance(connector, aiohttp.TCPConnector)
    return len(connector._acquired)


async def test_get_by_service_name(fault_server: FaultServer, make_client: MakeClient) -> None:
    fault_server.script("/v1/items", Fault.json({"items": [1, 2]}))
    async with make_client(service_config(fault_server.url)) as client:
        response = await client.get("/v1/items", service="svc", params={"page": "2"})
    assert response.status == 200
    assert response.json() == {"items": [1, 2]}
    assert response.outcome is not None
    assert response.outcome.path == "primary"
    assert response.outcome.endpoint == fault_server.url
    assert response.outcome.service == "svc"
    assert fault_server.requests[0].query_string == "page=2"


async def test_json_decodes_into_a_type(fault_server: FaultServer, make_client: MakeClient) -> None:
    class Item(msgspec.Struct):
        id: int
        name: str

    fault_server.script("/item", Fault.json({"id": 7, "name": "x"}))
    async with make_client(service_config(fault_server.url)) as client:
        response = await client.get("/item", service="svc")
    assert response.json(Item) == Item(id=7, name="x")
    assert response.text() == '{"id": 7, "name": "x"}' or response.json(Item).id == 7


async def test_absolute_url_is_mapped_to_its_service(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    async with make_client(service_config(fault_server.url, name="inventory")) as client:
        response = await client.get(f"{fault_server.url}/stock")
    assert response.outcome is not None
    assert response.outcome.service == "inventory"


async def test_absolute_url_of_unknown_service_uses_defaults(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    async with make_client() as client:
        response = await client.get(f"{fault_server.url}/x")
    assert response.outcome is not None
    assert response.outcome.service == "127.0.0.1"


async def test_post_json_body_and_headers(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    async with make_client(service_config(fault_server.url)) as client:
        await client.post("/charges", service="svc", json={"amount": 5}, headers={"X-Trace": "t1"})
    request = fault_server.requests[0]
    assert request.method == "POST"
    assert msgspec.json.decode(request.body) == {"amount": 5}
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Trace"] == "t1"


@pytest.mark.parametrize(
    ("target", "kwargs", "message"),
    [
        ("/x", {}, "pass service="),
        ("/x", {"service": "nope"}, "no endpoints"),
        ("/x", {"service": "svc", "timeout": 3}, "timeout"),
        ("/x", {"service": "svc", "json": {}, "data": b"x"}, "not both"),
        ("/x", {"service": "svc", "deadline": -1}, "deadline"),
        ("http:///nohost", {}, "no host"),
        ("http://[::1/x", {}, "invalid URL"),
    ],
)
async def test_bad_requests_fail_clearly(
    fault_server: FaultServer,
    make_client: MakeClient,
    target: str,
    kwargs: dict[str, Any],
    message: str,
) -> None:
    async with make_client(service_config(fault_server.url)) as client:
        with pytest.raises(healkit.InvalidRequestError, match=message):
            await client.get(target, **kwargs)
    assert fault_server.hits() == 0


async def test_refused_connection_never_reached_the_server(make_client: MakeClient) -> None:
    url = refused_url()
    async with make_client(service_config(url)) as client:
        with pytest.raises(healkit.ConnectError) as caught:
            await client.get("/x", service="svc")
    assert caught.value.may_have_reached_server is False
    assert caught.value.attempts[0].endpoint == url


async def test_reset_may_have_reached_the_server(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    fault_server.script("/pay", Fault.reset_after_body())
    async with make_client(service_config(fault_server.url)) as client:
        with pytest.raises(healkit.ConnectionLostError) as caught:
            await client.post("/pay", service="svc", data=b"charge")
        assert acquired(client) == 0
    assert caught.value.may_have_reached_server is True
    assert fault_server.requests[0].body == b"charge"


async def test_truncated_body_is_a_failed_attempt_that_can_be_retried(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    fault_server.script(
        "/doc", Fault.truncated(body=b"part", declared_length=100), then=Fault.ok(body=b"whole")
    )
    async with make_client(service_config(fault_server.url), RetryUpTo(2)) as client:
        response = await client.get("/doc", service="svc")
        assert acquired(client) == 0
    assert response.body == b"whole"
    assert response.outcome is not None
    assert response.outcome.path == "retry"
    assert [a.error for a in response.outcome.attempts] == ["ProtocolError", None]


async def test_status_declared_failure_is_retried_then_returned(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    fault_server.script("/x", Fault.status(503), Fault.status(503))
    async with make_client(
        service_config(fault_server.url), RetryUpTo(3), FailOnStatus(503)
    ) as client:
        response = await client.get("/x", service="svc")
    assert response.status == 200
    assert fault_server.hits("/x") == 3
    assert response.outcome is not None
    assert [a.status for a in response.outcome.attempts] == [503, 503, 200]


async def test_a_503_that_no_plugin_judges_is_a_response(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    fault_server.script("/x", Fault.status(503, body=b"down"))
    async with make_client(service_config(fault_server.url)) as client:
        response = await client.get("/x", service="svc")
    assert response.status == 503
    with pytest.raises(healkit.HTTPStatusError) as caught:
        response.raise_for_status()
    assert caught.value.status == 503
    assert caught.value.body_excerpt == "down"
    assert len(caught.value.attempts) == 1


async def test_fallback_response_announces_itself(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    fault_server.script("/x", Fault.status(503))
    degraded = healkit.Response(
        200, body=b'{"degraded": true}', headers={"Content-Type": "application/json"}
    )
    plugins = (FailOnStatus(503), StaticFallback(degraded, path="degraded"))
    async with make_client(service_config(fault_server.url), *plugins) as client:
        response = await client.get("/x", service="svc")
    assert response.json() == {"degraded": True}
    assert response.headers[healkit.OUTCOME_HEADER] == "degraded"
    assert response.outcome is not None
    assert response.outcome.path == "degraded"
    assert response.outcome.attempts[0].status == 503


async def test_body_cap(fault_server: FaultServer, make_client: MakeClient) -> None:
    fault_server.script("/big", Fault.ok(body=b"x" * 2000))
    fault_server.script("/chunked", Fault.slow_body(chunks=4, delay=0.0, chunk=b"y" * 600))
    config = service_config(fault_server.url, max_body_bytes=1000)
    async with make_client(config) as client:
        with pytest.raises(healkit.BodyTooLargeError):
            await client.get("/big", service="svc")
        with pytest.raises(healkit.BodyTooLargeError):
            await client.get("/chunked", service="svc")
        assert acquired(client) == 0


async def test_streaming_reads_chunks_and_releases(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    fault_server.script("/stream", Fault.slow_body(chunks=3, delay=0.0, chunk=b"z" * 100))
    async with make_client(service_config(fault_server.url)) as client:
        async with client.stream("GET", "/stream", service="svc") as response:
            assert response.is_streaming
            assert acquired(client) == 1
            received = b"".join([chunk async for chunk in response.iter_chunks(64)])
        assert acquired(client) == 0
        async with client.stream("GET", "/stream", service="svc") as response:
            pass  # body never read: the connection is still released
        assert acquired(client) == 0
    assert received == b"z" * 300


async def test_streaming_failure_declared_on_head_is_released_and_retried(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    fault_server.script("/s", Fault.status(503, body=b"no" * 1000))
    async with make_client(
        service_config(fault_server.url), RetryUpTo(2), FailOnStatus(503)
    ) as client:
        async with client.stream("GET", "/s", service="svc") as response:
            assert await response.read() == b"ok"
        assert acquired(client) == 0


async def test_no_connection_leaks_across_failure_kinds(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    # One pooled connection: any response left unreleased would block the next request.
    fault_server.script(
        "/x",
        Fault.status(503),
        Fault.truncated(body=b"p", declared_length=10),
        Fault.reset(),
        Fault.ok(body=b"x" * 5000),
        then=Fault.ok(),
    )
    config = service_config(fault_server.url, max_body_bytes=1000, timeout={"connect": 2.0})
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    async with session, make_client(config, FailOnStatus(503), session=session) as client:
        failures = 0
        while fault_server.hits("/x") < 5:
            try:
                await client.get("/x", service="svc")
            except healkit.HealkitError:
                failures += 1
            assert acquired(client) == 0
        assert (await client.get("/x", service="svc")).status == 200
    assert failures >= 3


async def test_adopted_session_is_not_closed(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    async with aiohttp.ClientSession() as session:
        async with make_client(service_config(fault_server.url), session=session) as client:
            assert client.session is session
            await client.get("/x", service="svc")
        assert not session.closed


async def test_per_request_aiohttp_options_pass_through(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    fault_server.script("/from", Fault.status(302, headers={"Location": "/to"}))
    async with make_client(service_config(fault_server.url)) as client:
        response = await client.get("/from", service="svc", allow_redirects=False)
    assert response.status == 302


async def test_client_requires_entering(make_client: MakeClient) -> None:
    client = make_client()
    with pytest.raises(healkit.ClientClosedError, match="not open"):
        await client.get("http://127.0.0.1:1/")


async def test_owned_session_does_not_resend_behind_the_pipeline(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    # A pooled connection that breaks: aiohttp alone would resend the GET silently.
    fault_server.script("/x", Fault.ok(), Fault.reset(), then=Fault.ok())
    async with make_client(service_config(fault_server.url)) as client:
        await client.get("/x", service="svc")
        with pytest.raises(healkit.ConnectionLostError):
            await client.get("/x", service="svc")
    assert fault_server.hits("/x") == 2


async def test_streaming_body_errors_carry_the_attempts(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    fault_server.script("/s", Fault.slow_body(chunks=2, delay=1.0))
    config = service_config(fault_server.url, timeout={"read": 0.1})
    async with make_client(config) as client, client.stream("GET", "/s", service="svc") as response:
        with pytest.raises(healkit.ReadTimeout) as caught:
            await response.read()
    assert caught.value.limit == 0.1
    assert len(caught.value.attempts) == 1


async def test_error_messages_show_no_query_or_userinfo(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    fault_server.script("/big", Fault.ok(body=b"x" * 50))
    async with make_client(service_config(fault_server.url, max_body_bytes=10)) as client:
        with pytest.raises(healkit.BodyTooLargeError) as caught:
            await client.get("/big?token=secret-1", service="svc")
    assert "secret-1" not in str(caught.value)
    assert caught.value.attempts[0].status == 200


async def test_credentials_in_the_url_become_basic_auth(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    url = fault_server.url.replace("http://", "http://alice:s3cret@") + "/private?page=2"
    async with make_client() as client:
        response = await client.get(url)
    request = fault_server.requests[0]
    assert request.path == "/private"
    assert request.query_string == "page=2"
    assert request.headers["Authorization"] == aiohttp.encode_basic_auth("alice", "s3cret")
    assert "s3cret" not in response.url


async def test_adopted_session_does_not_resend_behind_the_pipeline(
    fault_server: FaultServer, make_client: MakeClient
) -> None:
    fault_server.script("/x", Fault.ok(), Fault.reset(), then=Fault.ok())
    config = service_config(fault_server.url)
    async with (
        aiohttp.ClientSession() as session,
        make_client(config, session=session) as client,
    ):
        await client.get("/x", service="svc")
        with pytest.raises(healkit.ConnectionLostError):
            await client.get("/x", service="svc")
    assert fault_server.hits("/x") == 2


class ConnectionTimings:
    """Contributes an aiohttp TraceConfig; records which attempt each request belonged to."""

    healkit_observer = True

    def __init__(self) -> None:
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_start.append(self._started)
        self.seen: list[tuple[int, str | None]] = []

    async def _started(
        self, session: object, context: Any, params: aiohttp.TraceRequestStartParams
    ) -> None:
        attempt = context.trace_request_ctx
        assert isinstance(attempt, healkit.AttemptContext)
        self.seen.append((attempt.number, attempt.endpoint))

    @healkit.hookimpl
    def healkit_trace_configs(self) -> list[aiohttp.TraceConfig]:
        return [self.trace]


async def test_plugins_trace_configs_see_each_attempt(fault_server: FaultServer) -> None:
    fault_server.script("/x", Fault.status(503), then=Fault.ok())
    timings = ConnectionTimings()
    config = {"services": {"svc": {"endpoints": [fault_server.url]}}}
    async with healkit.Client(
        config=config, plugins=[timings, RetryUpTo(2), FailOnStatus(503)], entry_points=False
    ) as client:
        assert (await client.get("/x", service="svc")).status == 200
        with pytest.raises(healkit.InvalidRequestError, match="trace_request_ctx"):
            await client.get("/x", service="svc", trace_request_ctx={})
    assert timings.seen == [(1, fault_server.url), (2, fault_server.url)]


async def test_the_installed_aiohttp_is_a_release_whose_private_resend_switch_was_read() -> None:
    # A new aiohttp release fails here first: read its ClientSession for
    # _retry_connection, then widen VERIFIED_AIOHTTP (healkit._client).
    assert VERIFIED_AIOHTTP[0] <= aiohttp_release(aiohttp.__version__) <= VERIFIED_AIOHTTP[1]
    async with aiohttp.ClientSession() as session:
        assert session._retry_connection is True


@pytest.mark.parametrize(
    ("version", "release"),
    [
        ("3.12.0", (3, 12)),
        ("3.14.5", (3, 14)),
        ("4.0.0a1", (4, 0)),
        ("3.15.0.dev0", (3, 15)),
        ("x", (0, 0)),
    ],
)
def test_aiohttp_release_reads_major_and_minor(version: str, release: tuple[int, int]) -> None:
    assert aiohttp_release(version) == release
