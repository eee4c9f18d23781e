"""Runtime lifecycle: plugin background work is owned by the client and never leaks."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

import healkit

pytestmark = pytest.mark.anyio


class Background:
    """Starts a ticking task on startup; records shutdown."""

    def __init__(self) -> None:
        self.ticks = 0
        self.ticked = asyncio.Event()
        self.cancelled = False
        self.shut_down = False

    @healkit.hookimpl
    def healkit_startup(self, runtime: healkit.Runtime) -> None:
        runtime.start_background("ticker", self.tick)

    async def tick(self) -> None:
        try:
            while True:
                self.ticks += 1
                self.ticked.set()
                await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    @healkit.hookimpl
    def healkit_shutdown(self) -> Any:
        async def close() -> None:
            self.shut_down = True

        return close()


async def test_background_tasks_live_exactly_as_long_as_the_client() -> None:
    plugin = Background()
    before = asyncio.all_tasks()
    async with healkit.Client(plugins=[plugin], entry_points=False) as client:
        await plugin.ticked.wait()
        assert len(client.runtime.background_tasks) == 1
    assert plugin.cancelled
    assert plugin.shut_down
    assert client.runtime.background_tasks == frozenset()
    assert asyncio.all_tasks() == before


async def test_background_tasks_need_a_started_runtime() -> None:
    runtime = healkit.Runtime(entry_points=False)

    async def nothing() -> None:
        return None

    with pytest.raises(healkit.PluginError, match="not started"):
        runtime.start_background("early", nothing)


async def test_a_crashing_background_task_is_logged(logs: list[dict[str, Any]]) -> None:
    class Crash:
        @healkit.hookimpl
        def healkit_startup(self, runtime: healkit.Runtime) -> None:
            runtime.start_background("crasher", self.crash)

        async def crash(self) -> None:
            raise RuntimeError("background bug")

    async with healkit.Client(plugins=[Crash()], entry_points=False) as client:
        await asyncio.wait(client.runtime.background_tasks)
    failed = [e for e in logs if e["event"] == "healkit.background_task_failed"]
    assert failed == [
        {
            "event": "healkit.background_task_failed",
            "task": "healkit: crasher",
            "error": "RuntimeError",
            "reason": "background bug",
            "log_level": "error",
        }
    ]


async def test_configure_is_called_with_previous_and_a_crash_is_reported(
    logs: list[dict[str, Any]],
) -> None:
    seen: list[tuple[int, bool]] = []

    class Watch:
        healkit_name = "watch"

        @healkit.hookimpl
        def healkit_configure(
            self, config: healkit.HealkitConfig, previous: healkit.HealkitConfig | None
        ) -> None:
            seen.append((len(config.services), previous is None))
            if len(config.services) == 2:
                raise ValueError("cannot take two")

    runtime = healkit.Runtime(plugins=[Watch()], entry_points=False)
    runtime.apply({"services": {"a": {"endpoints": ["http://a.test"]}}})
    runtime.apply(
        {"services": {"a": {"endpoints": ["http://a.test"]}, "b": {"endpoints": ["http://b.test"]}}}
    )
    assert seen == [(0, True), (1, False), (2, False)]
    assert len(runtime.config.services) == 2
    assert runtime.plugin_errors["watch"] == 1
    assert any(e["event"] == "healkit.plugin_error" and e["plugin"] == "watch" for e in logs)


async def test_an_adopted_closed_session_is_refused() -> None:
    session = aiohttp.ClientSession()
    await session.close()
    with pytest.raises(RuntimeError, match="closed"):
        async with healkit.Client(session=session, entry_points=False):
            pass


async def test_a_crashing_startup_fails_the_client_and_leaks_nothing() -> None:
    ticker = Background()

    class Broken:
        healkit_name = "broken-startup"

        @healkit.hookimpl(trylast=True)
        def healkit_startup(self) -> None:
            raise OSError("cannot open")

    before = asyncio.all_tasks()
    client = healkit.Client(plugins=[ticker, Broken()], entry_points=False)
    with pytest.raises(healkit.PluginError, match="broken-startup") as caught:
        await client.__aenter__()
    assert caught.value.hook == "healkit_startup"
    assert ticker.shut_down
    assert asyncio.all_tasks() == before


async def test_failing_shutdowns_are_logged_not_raised(logs: list[dict[str, Any]]) -> None:
    class BadShutdown:
        healkit_name = "bad-shutdown"

        @healkit.hookimpl
        def healkit_shutdown(self) -> Any:
            async def fail() -> None:
                raise RuntimeError("cannot close")

            return fail()

    async with healkit.Client(plugins=[BadShutdown()], entry_points=False) as client:
        pass
    assert client.runtime.plugin_errors["bad-shutdown"] == 1
    assert any(e.get("plugin") == "bad-shutdown" for e in logs)


def test_a_crashing_config_sections_hook_names_the_plugin() -> None:
    class Broken:
        healkit_name = "broken-sections"

        @healkit.hookimpl
        def healkit_config_sections(self) -> Any:
            raise ImportError("missing module")

    with pytest.raises(healkit.PluginError, match="broken-sections"):
        healkit.Runtime(plugins=[Broken()], entry_points=False)


async def test_a_started_runtime_is_shared_not_stopped_by_each_client() -> None:
    plugin = Background()
    async with healkit.Runtime(plugins=[plugin], entry_points=False) as runtime:
        async with healkit.Client(runtime=runtime):
            await plugin.ticked.wait()
        assert runtime.started
        assert not plugin.cancelled
        async with healkit.Client(runtime=runtime):
            pass
        assert len(runtime.background_tasks) == 1
    assert plugin.cancelled
    assert not runtime.started


def test_events_reach_every_subscriber_and_a_crash_is_contained(logs: list[dict[str, Any]]) -> None:
    received: list[object] = []

    class Subscriber:
        healkit_name = "subscriber"

        @healkit.hookimpl
        def healkit_event(self, event: object) -> None:
            received.append(event)

    class Broken:
        healkit_name = "broken-subscriber"

        @healkit.hookimpl(tryfirst=True)
        def healkit_event(self) -> None:
            raise RuntimeError("subscriber bug")

    kept: list[healkit.Runtime] = []

    class Emitter:
        @healkit.hookimpl
        def healkit_configure(self, runtime: healkit.Runtime) -> None:
            kept.append(runtime)

    runtime = healkit.Runtime(plugins=[Subscriber(), Broken(), Emitter()], entry_points=False)
    assert kept == [runtime]
    # The runtime's own first event: its configuration applied.
    assert received == [healkit.events.ConfigApplied(origin="python", version=1, services=0)]
    runtime.emit("first")
    runtime.emit("second")
    assert received[1:] == ["first", "second"]
    assert runtime.plugin_errors["broken-subscriber"] == 3
    assert [e["plugin"] for e in logs if e["event"] == "healkit.plugin_error"] == [
        "broken-subscriber"
    ]
