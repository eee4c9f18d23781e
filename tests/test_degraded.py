"""The built-in degraded-response plugin, against real loopback servers."""

from __future__ import annotations

import json
from typing import Any

import pytest

import healkit
from healkit.testing import Fault, FaultServer, ManualClock, refused_url
from healkit_retry import RetryPlugin

pytestmark = pytest.mark.anyio

TEMPLATE = {
    "status": 503,
    "headers": {"Retry-After": "${retry_after}", "X-Request-ID": "${request_id}"},
    "json": {"service": "${service}", "error": "${error_type}", "at": "${timestamp}"},
}


def document(endpoint: str, **degraded: Any) -> dict[str, Any]:
    service = {"endpoints": [endpoint], "degraded": {"template": TEMPLATE} | degraded}
    return {"services": {"inventory": service}}


def client(config: dict[str, Any], clock: ManualClock) -> healkit.Client:
    return healkit.Client(config=config, plugins=[RetryPlugin()], entry_points=False, clock=clock)


def degraded_body(response: healkit.Response) -> dict[str, Any]:
    assert response.outcome is not None
    assert response.outcome.path == "degraded"
    assert response.headers[healkit.OUTCOME_HEADER] == "degraded"
    body: dict[str, Any] = json.loads(response.body)
    return body


async def test_a_503_is_answered_by_the_template_at_once_without_a_retry(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(503, headers={"Retry-After": "7"}))
    async with client(document(fault_server.url), manual_clock) as c:
        response = await c.get("/stock", service="inventory", headers={"X-Request-ID": "r-42"})
    assert fault_server.hits() == 1
    assert manual_clock.sleeps == []
    assert response.status == 503
    assert response.headers["Retry-After"] == "7"
    assert response.headers["X-Request-ID"] == "r-42"
    assert response.headers["Content-Type"] == "application/json"
    body = degraded_body(response)
    assert (body["service"], body["error"]) == ("inventory", "HTTPStatusError")
    assert body["at"].endswith("Z")


async def test_when_every_attempt_failed_the_template_answers(manual_clock: ManualClock) -> None:
    async with client(document(refused_url()), manual_clock) as c:
        response = await c.get("/stock", service="inventory")
    assert response.outcome is not None
    assert [a.error for a in response.outcome.attempts] == ["ConnectError"] * 3
    assert degraded_body(response)["error"] == "ConnectError"
    assert response.headers["Retry-After"] == ""  # nothing said when to retry


async def test_when_failed_off_raises_the_error_but_statuses_still_answer(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    async with client(document(refused_url(), when_failed=False), manual_clock) as c:
        with pytest.raises(healkit.ConnectError):
            await c.get("/stock", service="inventory")
    fault_server.set_default(Fault.status(504))
    async with client(document(fault_server.url, when_failed=False), manual_clock) as c:
        response = await c.get("/stock", service="inventory")
    assert degraded_body(response)["error"] == "HTTPStatusError"


async def test_forced_degraded_mode_sends_nothing_and_is_switched_live(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    async with client(document(fault_server.url, force=True), manual_clock) as c:
        for _ in range(3):
            response = await c.post("/orders", service="inventory", data=b"{}")
            assert degraded_body(response)["error"] == "DegradedModeError"
        assert fault_server.hits() == 0
        c.runtime.apply(document(fault_server.url), origin="operator")
        assert (await c.get("/stock", service="inventory")).status == 200
    assert fault_server.hits() == 1


async def test_without_a_template_nothing_changes(
    fault_server: FaultServer, manual_clock: ManualClock
) -> None:
    fault_server.set_default(Fault.status(503))
    config = {"services": {"inventory": {"endpoints": [fault_server.url]}}}
    async with client(config, manual_clock) as c:
        # The retry plugin's way: retried, then the typed error.
        with pytest.raises(healkit.HTTPStatusError):
            await c.get("/stock", service="inventory")
    assert fault_server.hits() == 3


async def test_a_decorated_function_in_forced_mode_gets_the_typed_error() -> None:
    config = {"services": {"reports": {"degraded": {"template": TEMPLATE, "force": True}}}}
    runtime = healkit.Runtime(config=config, entry_points=False)
    called = False

    @healkit.resilient(service="reports", runtime=runtime)
    async def build() -> str:
        nonlocal called
        called = True
        return "report"

    with pytest.raises(healkit.DegradedModeError) as caught:
        await build()
    assert not called
    assert caught.value.may_have_reached_server is False


async def test_the_plugin_can_be_blocked(fault_server: FaultServer) -> None:
    fault_server.set_default(Fault.status(503))
    config = {"services": {"inventory": {"endpoints": [fault_server.url]}}}
    async with healkit.Client(config=config, entry_points=False, block_plugins=["degraded"]) as c:
        response = await c.get("/stock", service="inventory")
        assert response.outcome is not None
        assert response.outcome.path == "primary"
        # Blocked, its section is unknown: a document using it is rejected.
        with pytest.raises(healkit.ConfigError, match="unknown key 'degraded'"):
            c.runtime.apply(document(fault_server.url), origin="operator")


@pytest.mark.parametrize(
    ("degraded", "path", "message"),
    [
        ({"force": True}, "$.services.inventory.degraded", "needs a template"),
        (
            {"template": {"text": "${secret}"}},
            "$.services.inventory.degraded.template",
            "unknown placeholder",
        ),
        ({"on_statuses": [200]}, "$.services.inventory.degraded.on_statuses[0]", ">= 400"),
    ],
)
def test_invalid_sections_are_rejected_with_their_path(
    degraded: dict[str, Any], path: str, message: str
) -> None:
    config = {"services": {"inventory": {"degraded": degraded}}}
    with pytest.raises(healkit.ConfigError) as caught:
        healkit.Runtime(config=config, entry_points=False)
    (issue,) = caught.value.issues
    assert issue.path == path
    assert message in issue.reason


def test_without_any_template_the_plugin_stays_out_of_the_call_plan() -> None:
    runtime = healkit.Runtime(config={"services": {"a": {}}}, entry_points=False)
    assert "degraded" in runtime._plan.idle
    assert not runtime._plan.has_pre_request
    runtime.apply({"defaults": {"degraded": {"template": TEMPLATE}}}, origin="operator")
    assert "degraded" not in runtime._plan.idle
    assert runtime._plan.has_pre_request
    runtime.apply({"services": {"a": {}}}, origin="operator")
    assert "degraded" in runtime._plan.idle
