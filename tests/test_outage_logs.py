"""An outage must not flood the logs: repeated failures are logged once, then summarised."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import healkit
from healkit import _log
from healkit.testing import Fault, FaultServer, ManualClock, capture_events, refused_url
from healkit_breaker import BreakerPlugin

pytestmark = pytest.mark.anyio

INTERVAL = _log.SUMMARY_INTERVAL


def named(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == event]


def tripping_client(fault_server: FaultServer, clock: ManualClock) -> healkit.Client:
    """A client whose breaker opens on the first 503 and stays open for an hour."""
    fault_server.set_default(Fault.status(503))
    config = {
        "services": {
            "svc": {
                "endpoints": [fault_server.url],
                "breaker": {
                    "consecutive_failures": 1,
                    "open_duration": 3600.0,
                    "open_duration_max": 3600.0,
                },
            }
        }
    }
    return healkit.Client(config=config, plugins=[BreakerPlugin()], entry_points=False, clock=clock)


async def test_an_open_breaker_logs_once_then_one_exact_summary_per_interval(
    fault_server: FaultServer, manual_clock: ManualClock, logs: list[dict[str, Any]]
) -> None:
    refused = 0
    async with tripping_client(fault_server, manual_clock) as client:
        assert (await client.get("/x", service="svc")).status == 503  # trips the breaker
        opened = manual_clock.now()
        for _ in range(500):
            with pytest.raises(healkit.CircuitOpenError):
                await client.get("/x", service="svc")
            refused += 1
            manual_clock.advance(0.001)
        last_in_window = manual_clock.now() - 0.001
        # Once per endpoint: no attempt_failed line per refusal, one call_failed line.
        assert len(named(logs, "healkit.endpoint_refusing")) == 1
        assert named(logs, "healkit.attempt_failed") == []
        assert len(named(logs, "healkit.call_failed")) == 1
        assert named(logs, "healkit.refusals_summary") == []

        manual_clock.advance(INTERVAL)
        with pytest.raises(healkit.CircuitOpenError):
            await client.get("/x", service="svc")  # the interval passed: the summary is due
        refused += 1
        (summary,) = named(logs, "healkit.refusals_summary")
        assert summary == {
            "event": "healkit.refusals_summary",
            "log_level": "warning",
            "service": "svc",
            "endpoint": fault_server.url,
            "error": "CircuitOpenError",
            "count": 499,  # the first refusal was logged in full
            "first": pytest.approx(opened + 0.001),
            "last": pytest.approx(last_in_window),
        }
    # Closing the client logs what was still pending: no refusal goes uncounted.
    summaries = named(logs, "healkit.refusals_summary")
    assert [s["count"] for s in summaries] == [499, 1]
    assert 1 + sum(s["count"] for s in summaries) == refused
    calls = named(logs, "healkit.call_failures_summary")
    assert 1 + sum(s["count"] for s in calls) == refused
    assert fault_server.hits() == 1
    (refusing,) = named(logs, "healkit.endpoint_refusing")
    assert refusing["closes_in"] == pytest.approx(3600.0)
    assert refusing["endpoint"] == fault_server.url


async def test_identical_attempt_failures_are_summarised_and_other_kinds_logged(
    fault_server: FaultServer, manual_clock: ManualClock, logs: list[dict[str, Any]]
) -> None:
    fault_server.set_default(Fault.reset())
    down = refused_url()
    async with healkit.Client(entry_points=False, clock=manual_clock) as client:
        for _ in range(30):
            with pytest.raises(healkit.ConnectError):
                await client.get(f"{down}/a", service="down")
            with pytest.raises(healkit.ConnectionLostError):
                await client.get(f"{fault_server.url}/b", service="reset")
    failed = named(logs, "healkit.attempt_failed")
    assert sorted((e["service"], e["error"]) for e in failed) == [
        ("down", "ConnectError"),
        ("reset", "ConnectionLostError"),
    ]
    summaries = named(logs, "healkit.attempt_failures_summary")
    assert sorted((s["service"], s["error"], s["count"]) for s in summaries) == [
        ("down", "ConnectError", 29),
        ("reset", "ConnectionLostError", 29),
    ]
    assert len(named(logs, "healkit.call_failed")) == 2
    assert all(s["count"] == 29 for s in named(logs, "healkit.call_failures_summary"))


async def test_a_new_episode_after_a_quiet_interval_is_logged_in_full(
    manual_clock: ManualClock, logs: list[dict[str, Any]]
) -> None:
    down = refused_url()
    async with healkit.Client(entry_points=False, clock=manual_clock) as client:
        for _ in range(2):
            for _ in range(3):
                with pytest.raises(healkit.ConnectError):
                    await client.get(f"{down}/a", service="down")
            # A quiet interval: the summary is logged and the kind forgotten...
            manual_clock.advance(INTERVAL)
            client.runtime.repeats.flush(manual_clock.now(), everything=False)
            manual_clock.advance(INTERVAL)
            client.runtime.repeats.flush(manual_clock.now(), everything=False)
            assert len(client.runtime.repeats) == 0
    # ... so the next failure opens a new episode, logged in full.
    assert len(named(logs, "healkit.attempt_failed")) == 2
    assert [s["count"] for s in named(logs, "healkit.attempt_failures_summary")] == [2, 2]


def test_the_summariser_is_bounded_and_loses_no_count(logs: list[dict[str, Any]]) -> None:
    repeats = _log.Repeats(interval=INTERVAL, limit=4)
    now = 0.0
    for host in range(10):
        key: Any = ("attempt", "svc", f"http://h{host}.test", "ConnectError")
        assert not repeats.counted(key, now)
        repeats.opened(key, now, f"http://h{host}.test")
        for _ in range(host):
            assert repeats.counted(key, now)
        assert len(repeats) <= 4
    repeats.flush(now)
    counts = {s["endpoint"]: s["count"] for s in named(logs, "healkit.attempt_failures_summary")}
    # Hosts evicted to make room were summarised then; the rest on flush. h0 repeated never.
    assert counts == {f"http://h{host}.test": host for host in range(1, 10)}


async def test_a_logger_that_drops_warnings_is_spared_the_counting(
    manual_clock: ManualClock,
) -> None:
    with capture_events(logging.CRITICAL) as logs:
        async with healkit.Client(entry_points=False, clock=manual_clock) as client:
            for _ in range(3):
                with pytest.raises(healkit.ConnectError):
                    await client.get(f"{refused_url()}/a", service="down")
            assert len(client.runtime.repeats) == 0
    assert logs == []
