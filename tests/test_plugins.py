"""Plugin discovery through entry points, blocking, listing, the example plugin."""

from __future__ import annotations

import json
from typing import Any

import pytest

import healkit
from healkit._cli.entry import main
from healkit.testing import FaultServer
from healkit_example_plugin import REQUEST_ID, RequestIdPlugin
from tests.plugins import RetryUpTo

pytestmark = pytest.mark.anyio


def test_entry_point_plugins_are_discovered_with_their_distribution() -> None:
    pm = healkit.create_plugin_manager()
    infos = {info.name: info for info in healkit.describe_plugins(pm)}
    example = infos["request-id"]
    assert example.distribution == "healkit-example-plugin"
    assert example.version == "0.1.0"
    assert example.hooks == ("healkit_config_sections", "healkit_pre_request")
    assert example.source == "entry point"
    assert infos["timeout"].distribution == "healkit-timeout"


def test_plugins_are_instantiated_per_manager() -> None:
    first = healkit.create_plugin_manager().get_plugin("request-id")
    second = healkit.create_plugin_manager().get_plugin("request-id")
    assert isinstance(first, RequestIdPlugin)
    assert first is not second


def test_blocking_by_name_and_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {
        i.name
        for i in healkit.describe_plugins(healkit.create_plugin_manager(block=["request-id"]))
    }
    assert "request-id" not in names
    assert "timeout" in names
    monkeypatch.setenv("HEALKIT_BLOCK_PLUGINS", "timeout, request-id")
    names = {i.name for i in healkit.describe_plugins(healkit.create_plugin_manager())}
    assert not names & {"timeout", "request-id"}


def test_explicit_plugins_run_before_entry_point_plugins() -> None:
    retry = RetryUpTo(2)
    pm = healkit.create_plugin_manager(plugins=[retry])
    impls = list(reversed(pm.hook.healkit_on_error.get_hookimpls()))
    # Among the implementations without tryfirst/trylast, explicit plugins come first.
    plain = [impl.plugin_name for impl in impls if not (impl.tryfirst or impl.trylast)]
    assert plain[0] == "retry-up-to"
    infos = {i.name: i for i in healkit.describe_plugins(pm)}
    assert infos["retry-up-to"].source == "explicit"
    assert (infos["degraded"].source, infos["degraded"].distribution) == ("built-in", "healkit")


def test_a_plugin_name_cannot_be_registered_twice() -> None:
    with pytest.raises(healkit.PluginError, match="retry-up-to"):
        healkit.create_plugin_manager(plugins=[RetryUpTo(1), RetryUpTo(2)], entry_points=False)


def test_two_plugins_declaring_one_section_are_refused() -> None:
    class Again:
        @healkit.hookimpl
        def healkit_config_sections(self) -> Any:
            return (healkit.ConfigSection("timeout", healkit.LoggingSettings),)

    with pytest.raises(healkit.ConfigError, match="two plugins declare this section"):
        healkit.Runtime(plugins=[Again()])


async def test_the_example_plugin_end_to_end(fault_server: FaultServer) -> None:
    config = {
        "services": {"svc": {"endpoints": [fault_server.url], "request_id": {"header": "X-Req"}}}
    }
    fault_server.script("/x", healkit.testing.Fault.status(503), then=healkit.testing.Fault.ok())

    class Judge:
        @healkit.hookimpl
        def healkit_post_response(self, response: healkit.Response | None) -> Any:
            if response is not None and response.status == 503:
                return healkit.HTTPStatusError(503, url=response.url)
            return None

    seen: list[str] = []

    class Peek:
        @healkit.hookimpl(trylast=True)
        def healkit_call_end(self, call: healkit.CallContext) -> None:
            seen.append(call.stash[REQUEST_ID])

    async with healkit.Client(config=config, plugins=[RetryUpTo(2), Judge(), Peek()]) as client:
        await client.get("/x", service="svc")
    ids = [r.headers["X-Req"] for r in fault_server.requests]
    assert len(ids) == 2
    assert ids[0] == ids[1] == seen[0]


def test_cli_lists_plugins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    listed = {item["name"]: item for item in json.loads(capsys.readouterr().out)}
    assert listed["timeout"]["distribution"] == "healkit-timeout"
    assert "healkit_attempt_timeouts" in listed["timeout"]["hooks"]
    assert main(["plugins", "--block", "request-id"]) == 0
    text = capsys.readouterr().out
    assert "timeout: healkit-timeout 0.1.0" in text
    assert "request-id" not in text


def test_an_explicit_plugin_takes_the_place_of_the_entry_point_of_its_name() -> None:
    class RequestId:
        healkit_name = "request-id"

    mine = RequestId()
    pm = healkit.create_plugin_manager(plugins=[mine])
    assert pm.get_plugin("request-id") is mine
    infos = {i.name: i for i in healkit.describe_plugins(pm)}
    assert infos["request-id"].source == "explicit"
