"""healkit's httpx transport: a real ``httpx.AsyncClient`` against real loopback servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import healkit
from healkit.httpx import OUTCOME_EXTENSION, ResilientTransport, outcome_of
from healkit.testing import Fault, FaultServer, refused_url
from healkit_retry import RetryPlugin
from healkit_timeout import TimeoutPlugin
from tests.plugins import FailOnStatus

pytestmark = pytest.mark.anyio


def transport(config: Any, *plugins: object, **options: Any) -> ResilientTransport:
    """A transport with the timeout and retry plugins and no entry points."""
    chosen = [TimeoutPlugin(), RetryPlugin(), *plugins]
    return ResilientTransport(config=config, plugins=chosen, entry_points=False, **options)


def config(url: str, **service: Any) -> dict[str, Any]:
    return {
        "defaults": {"retry": {"base": 0.001, "cap": 0.002}},
        "services": {"svc": {"endpoints": [url], **service}},
    }


@pytest.fixture
async def fallback_server() -> AsyncIterator[FaultServer]:
    async with FaultServer() as server:
        yield server


async def test_a_request_runs_through_the_pipeline(fault_server: FaultServer) -> None:
    fault_server.script("/v1/items", Fault.json({"items": [1]}))
    async with httpx.AsyncClient(
        transport=transport(config(fault_server.url)), base_url=fault_server.url
    ) as client:
        response = await client.get("/v1/items", params={"page": "2"})
    assert response.status_code == 200
    assert response.json() == {"items": [1]}
    outcome = outcome_of(response)
    assert (outcome.path, outcome.service, outcome.endpoint) == ("primary", "svc", fault_server.url)
    assert fault_server.requests[0].query_string == "page=2"


async def test_a_retried_request_says_so_and_the_server_saw_each_attempt(
    fault_server: FaultServer,
) -> None:
    fault_server.script("/flaky", Fault.status(503), then=Fault.json({"ok": True}))
    async with httpx.AsyncClient(transport=transport(config(fault_server.url))) as client:
        response = await client.get(f"{fault_server.url}/flaky")
    assert response.json() == {"ok": True}
    assert outcome_of(response).path == "retry"
    assert len(outcome_of(response).attempts) == 2
    assert fault_server.hits("/flaky") == 2


async def test_a_truncated_body_is_a_failed_attempt_and_retried(fault_server: FaultServer) -> None:
    fault_server.script("/body", Fault.truncated(), then=Fault.json({"whole": True}))
    async with httpx.AsyncClient(transport=transport(config(fault_server.url))) as client:
        response = await client.get(f"{fault_server.url}/body")
    assert response.json() == {"whole": True}
    assert fault_server.hits("/body") == 2


async def test_failures_are_healkit_errors_with_their_attempts() -> None:
    dead = refused_url()
    async with httpx.AsyncClient(transport=transport(config(dead))) as client:
        with pytest.raises(healkit.ConnectError) as caught:
            await client.get(f"{dead}/x")
    assert caught.value.may_have_reached_server is False
    assert len(caught.value.attempts) == 3  # the retry plugin's default


async def test_a_post_that_reached_the_server_is_not_resent(fault_server: FaultServer) -> None:
    fault_server.script("/charges", Fault.reset_after_body())
    async with httpx.AsyncClient(transport=transport(config(fault_server.url))) as client:
        with pytest.raises(healkit.TransportError) as caught:
            await client.post(f"{fault_server.url}/charges", json={"amount": 1})
    assert caught.value.may_have_reached_server is True
    assert fault_server.hits("/charges") == 1


async def test_an_idempotency_key_lets_a_post_be_retried(fault_server: FaultServer) -> None:
    fault_server.script("/charges", Fault.reset_after_body(), then=Fault.json({"id": 1}))
    async with httpx.AsyncClient(transport=transport(config(fault_server.url))) as client:
        response = await client.post(
            f"{fault_server.url}/charges", json={"amount": 1}, headers={"Idempotency-Key": "k1"}
        )
    assert response.json() == {"id": 1}
    bodies = {request.body for request in fault_server.requests}
    assert bodies == {b'{"amount":1}'}  # the same body, sent twice
    assert fault_server.hits("/charges") == 2


async def test_a_failed_primary_fails_over_to_the_fallback_group(
    fallback_server: FaultServer,
) -> None:
    fallback_server.script("/v1/items", Fault.json({"from": "fallback"}))
    dead = refused_url()
    document = config(dead, routing={"fallback_groups": [[fallback_server.url]]})
    async with httpx.AsyncClient(transport=transport(document), base_url=dead) as client:
        response = await client.get("/v1/items")
    assert response.json() == {"from": "fallback"}
    assert outcome_of(response).path == "fallback"
    assert response.headers["Healkit-Outcome"] == "fallback"


async def test_a_degraded_template_answers_when_everything_failed() -> None:
    dead = refused_url()
    template = {"status": 503, "json": {"degraded": True, "service": "${service}"}}
    document = config(dead, degraded={"template": template})
    async with httpx.AsyncClient(transport=transport(document), base_url=dead) as client:
        response = await client.get("/v1/items")
    assert response.status_code == 503
    assert response.json() == {"degraded": True, "service": "svc"}
    assert response.headers["Healkit-Outcome"] == "degraded"
    assert outcome_of(response).path == "degraded"


async def test_an_upstream_cannot_fake_the_outcome_header(fault_server: FaultServer) -> None:
    fault_server.script("/x", Fault.ok(headers={"Healkit-Outcome": "degraded"}))
    async with httpx.AsyncClient(transport=transport(config(fault_server.url))) as client:
        response = await client.get(f"{fault_server.url}/x")
    assert "Healkit-Outcome" not in response.headers
    assert outcome_of(response).path == "primary"


async def test_a_malformed_answer_is_a_protocol_error(fault_server: FaultServer) -> None:
    fault_server.script("/bad", Fault.garbage_status_line())
    document = config(fault_server.url, retry={"attempts": 1})
    async with httpx.AsyncClient(transport=transport(document)) as client:
        with pytest.raises(healkit.ProtocolError) as caught:
            await client.get(f"{fault_server.url}/bad")
    assert caught.value.may_have_reached_server is True


async def test_the_body_cap_applies(fault_server: FaultServer) -> None:
    fault_server.script("/big", Fault.ok(body=b"x" * 2048))
    document = config(fault_server.url, max_body_bytes=1024)
    async with httpx.AsyncClient(transport=transport(document)) as client:
        with pytest.raises(healkit.BodyTooLargeError):
            await client.get(f"{fault_server.url}/big")


async def test_the_policy_read_limit_applies(fault_server: FaultServer) -> None:
    fault_server.script("/hang", Fault.blackhole())
    document = config(
        fault_server.url, timeout={"read": 0.05, "attempt": 5.0}, retry={"attempts": 1}
    )
    async with httpx.AsyncClient(transport=transport(document)) as client:
        with pytest.raises(healkit.ReadTimeout) as caught:
            await client.get(f"{fault_server.url}/hang")
    assert caught.value.limit == 0.05


async def test_streaming_hands_over_the_body_as_it_arrives(fault_server: FaultServer) -> None:
    fault_server.script("/events", Fault.slow_body(4, 0.05, chunk=b"event..\n"))
    chunks: list[bytes] = []
    async with (
        httpx.AsyncClient(transport=transport(config(fault_server.url), stream=True)) as client,
        client.stream("GET", f"{fault_server.url}/events") as response,
    ):
        assert outcome_of(response).path == "primary"
        async for chunk in response.aiter_raw():
            if not chunks:  # the first chunk is here while the server still sends
                assert fault_server.active == 1
            chunks.append(chunk)
    assert b"".join(chunks) == b"event..\n" * 4


async def test_a_streaming_failure_is_closed_and_retried(fault_server: FaultServer) -> None:
    fault_server.script("/s", Fault.status(503), then=Fault.ok(body=b"fine"))
    async with (
        httpx.AsyncClient(
            transport=transport(config(fault_server.url), FailOnStatus(503), stream=True)
        ) as client,
        client.stream("GET", f"{fault_server.url}/s") as response,
    ):
        assert await response.aread() == b"fine"
    await fault_server.wait_for_idle()
    assert fault_server.active == 0


async def test_the_runtime_stops_with_the_client(fault_server: FaultServer) -> None:
    resilient = transport(config(fault_server.url))
    async with httpx.AsyncClient(transport=resilient) as client:
        await client.get(f"{fault_server.url}/x")
        assert resilient.runtime.started
    assert not resilient.runtime.started
    with pytest.raises(healkit.ClientClosedError, match="closed"):
        await resilient.handle_async_request(httpx.Request("GET", f"{fault_server.url}/x"))


async def test_outcome_of_a_response_from_elsewhere_is_a_lookup_error() -> None:
    with pytest.raises(LookupError):
        outcome_of(httpx.Response(200))
    assert OUTCOME_EXTENSION == "healkit.outcome"


async def test_an_sdk_that_takes_an_httpx_client(fault_server: FaultServer) -> None:
    """The shape of the OpenAI and Anthropic SDKs: they accept an ``httpx.AsyncClient``."""

    class PaymentsSDK:
        def __init__(self, *, base_url: str, http_client: httpx.AsyncClient) -> None:
            self._base = base_url
            self._http = http_client

        async def charge(self, amount: int) -> dict[str, Any]:
            response = await self._http.post(f"{self._base}/v1/charges", json={"amount": amount})
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

    fault_server.script("/v1/charges", Fault.status(503), then=Fault.json({"id": "ch_1"}))
    document = config(fault_server.url)
    http_client = httpx.AsyncClient(transport=transport(document))
    async with http_client:
        sdk = PaymentsSDK(base_url=fault_server.url, http_client=http_client)
        # A POST answered 503 never started work upstream; the retry plugin's
        # rules decide (a 503 is retried for any method only with a key).
        with pytest.raises(httpx.HTTPStatusError):
            await sdk.charge(5)
