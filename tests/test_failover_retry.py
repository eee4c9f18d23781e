"""A call that failed on a group moves on to the next one (``routing.retry_other_groups``).

Real upstreams on loopback: a :class:`FaultServer` primary that misbehaves on
cue and a healthy :class:`FaultServer` as the fallback group. Backoff runs on
the manual clock (no real sleep); hangs end at a short real attempt limit.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

import healkit
from healkit.testing import Fault, FaultServer, ManualClock
from healkit_retry import RetryPlugin
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio

SERVICE = "inventory"
HANG_LIMIT = 0.5
"""Seconds of a hanging attempt (a real limit: the attempt timer runs on the event loop).

Long enough that a healthy answer on a loaded machine is never cut off by it.
"""

FAULTS = {
    "503": Fault.status(503),
    "reset": Fault.reset(),
    "hang": Fault.blackhole(),
    "truncated": Fault.truncated(body=b"part", declared_length=100),
}


def document(primary: str, backup: str, **routing: Any) -> dict[str, Any]:
    return {
        "services": {
            SERVICE: {
                "endpoints": [primary],
                "routing": {"fallback_groups": [[backup]], "eject_after": 0, **routing},
                "timeout": {"read": HANG_LIMIT, "attempt": HANG_LIMIT},
            }
        }
    }


def client(config: dict[str, Any], clock: ManualClock, *plugins: object) -> healkit.Client:
    return healkit.Client(
        config=config, plugins=[TimeoutPlugin(), *plugins], entry_points=False, clock=clock
    )


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[FaultServer, FaultServer]]:
    async with AsyncExitStack() as stack:
        primary = await stack.enter_async_context(FaultServer())
        backup = await stack.enter_async_context(FaultServer())
        yield primary, backup


@pytest.mark.parametrize("retrying", [True, False], ids=["retry plugin", "no retry plugin"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_after_a_failure_on_the_primary_the_call_goes_to_the_fallback_group(
    upstreams: tuple[FaultServer, FaultServer],
    manual_clock: ManualClock,
    fault: str,
    *,
    retrying: bool,
) -> None:
    primary, backup = upstreams
    primary.script("/x", FAULTS[fault])  # then healthy again: a retry there would succeed
    plugins = [RetryPlugin()] if retrying else []
    async with client(document(primary.url, backup.url), manual_clock, *plugins) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.status == 200
    assert response.outcome is not None
    assert response.outcome.path == "fallback"
    assert [a.endpoint for a in response.outcome.attempts] == [primary.url, backup.url]
    assert (primary.hits("/x"), backup.hits("/x")) == (1, 1)
    assert manual_clock.sleeps == []  # the move to the other group waits for no backoff


async def test_off_a_retry_stays_with_the_primary_group(
    upstreams: tuple[FaultServer, FaultServer], manual_clock: ManualClock
) -> None:
    primary, backup = upstreams
    primary.script("/x", Fault.status(503))
    config = document(primary.url, backup.url, retry_other_groups=False)
    async with client(config, manual_clock, RetryPlugin()) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.status == 200
    assert response.outcome is not None
    assert response.outcome.path == "retry"
    assert (primary.hits("/x"), backup.hits("/x")) == (2, 0)
    assert len(manual_clock.sleeps) == 1  # the retry plugin's backoff


async def test_off_without_a_retry_plugin_the_primary_answer_is_the_result(
    upstreams: tuple[FaultServer, FaultServer], manual_clock: ManualClock
) -> None:
    primary, backup = upstreams
    primary.script("/x", Fault.status(503))
    config = document(primary.url, backup.url, retry_other_groups=False)
    async with client(config, manual_clock) as c:
        response = await c.get("/x", service=SERVICE)
    assert (response.status, backup.hits("/x")) == (503, 0)


async def test_a_call_that_failed_on_every_group_starts_again_from_the_primary(
    upstreams: tuple[FaultServer, FaultServer], manual_clock: ManualClock
) -> None:
    primary, backup = upstreams
    primary.script("/x", Fault.status(503))
    backup.script("/x", Fault.status(503))
    async with client(document(primary.url, backup.url), manual_clock, RetryPlugin()) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.status == 200
    assert response.outcome is not None
    assert [a.endpoint for a in response.outcome.attempts] == [
        primary.url,
        backup.url,
        primary.url,
    ]
    assert response.outcome.path == "retry"


@pytest.mark.parametrize("retry_non_idempotent", [False, True])
@pytest.mark.parametrize("fault", ["503", "reset"])
async def test_a_post_that_may_have_reached_the_server_never_goes_to_the_fallback(
    upstreams: tuple[FaultServer, FaultServer],
    manual_clock: ManualClock,
    fault: str,
    *,
    retry_non_idempotent: bool,
) -> None:
    primary, backup = upstreams
    primary.script("/pay", FAULTS[fault], Fault.status(503))
    config = document(primary.url, backup.url)
    config["services"][SERVICE]["retry"] = {"retry_non_idempotent": retry_non_idempotent}
    async with client(config, manual_clock, RetryPlugin()) as c:
        try:
            outcome: object = (await c.post("/pay", service=SERVICE, data=b"{}")).status
        except healkit.HealkitError as error:
            outcome = type(error)
    assert backup.hits() == 0
    if retry_non_idempotent:  # retried as asked, but never in another group
        assert primary.hits("/pay") == 3
        assert outcome == 200
    else:
        assert primary.hits("/pay") == 1
        assert outcome == (503 if fault == "503" else healkit.ConnectionLostError)


async def test_a_post_with_an_idempotency_key_goes_to_the_fallback(
    upstreams: tuple[FaultServer, FaultServer], manual_clock: ManualClock
) -> None:
    primary, backup = upstreams
    primary.script("/pay", Fault.reset_after_body())
    async with client(document(primary.url, backup.url), manual_clock, RetryPlugin()) as c:
        response = await c.post(
            "/pay", service=SERVICE, data=b"{}", headers={"Idempotency-Key": "k1"}
        )
    assert response.status == 200
    assert (primary.hits("/pay"), backup.hits("/pay")) == (1, 1)
    assert backup.requests[0].headers["Idempotency-Key"] == "k1"


async def test_thirty_percent_chaos_without_ejection_fails_no_call(
    upstreams: tuple[FaultServer, FaultServer], manual_clock: ManualClock
) -> None:
    primary, backup = upstreams
    calls, concurrency = 400, 50
    rng = random.Random(20261207)
    kinds = list(FAULTS.values())
    script = [rng.choice(kinds) if rng.random() < 0.3 else Fault.ok() for _ in range(calls)]
    primary.script("/x", *script)
    faults = sum(1 for f in script if f != Fault.ok())
    gate = asyncio.Semaphore(concurrency)
    failed: list[BaseException] = []
    paths: list[str] = []

    async def one(c: healkit.Client) -> None:
        async with gate:
            try:
                response = await c.get("/x", service=SERVICE)
            except healkit.HealkitError as error:
                failed.append(error)
                return
            assert response.status == 200
            assert response.outcome is not None
            paths.append(response.outcome.path)

    async with client(document(primary.url, backup.url), manual_clock, RetryPlugin()) as c:
        await asyncio.gather(*(one(c) for _ in range(calls)))
    assert failed == []
    assert primary.hits("/x") == calls
    # Every fault went to the fallback (so did an answer slower than the attempt
    # limit, should the machine be that loaded), at once.
    assert backup.hits("/x") == paths.count("fallback") >= faults
    assert paths.count("primary") + paths.count("fallback") == calls
    assert manual_clock.sleeps == []


async def test_a_deadline_alone_leaves_a_hanging_primary_time_for_the_fallback(
    upstreams: tuple[FaultServer, FaultServer],
) -> None:
    # The default attempt limit is half the deadline: the hang ends in time for
    # the fallback group. Real time here: the deadline is what is under test.
    primary, backup = upstreams
    primary.script("/x", Fault.blackhole())
    config = document(primary.url, backup.url)
    config["services"][SERVICE]["timeout"] = {"deadline": 4 * HANG_LIMIT}
    async with healkit.Client(config=config, plugins=[TimeoutPlugin()], entry_points=False) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.status == 200
    assert response.outcome is not None
    assert [a.error for a in response.outcome.attempts] == ["AttemptTimeout", None]
    assert response.outcome.attempts[0].duration < 4 * HANG_LIMIT


@pytest.mark.parametrize("backup_answer", [200, 503])
async def test_a_degraded_status_tries_the_fallback_group_before_the_template(
    upstreams: tuple[FaultServer, FaultServer], manual_clock: ManualClock, backup_answer: int
) -> None:
    primary, backup = upstreams
    primary.script("/x", Fault.status(503))
    backup.script("/x", Fault.status(backup_answer))
    config = document(primary.url, backup.url)
    template = {"status": 503, "json": {"service": "${service}"}}
    config["services"][SERVICE]["degraded"] = {"template": template}
    async with client(config, manual_clock, RetryPlugin()) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.outcome is not None
    assert (primary.hits("/x"), backup.hits("/x")) == (1, 1)  # no retry besides the move
    if backup_answer == 200:
        assert (response.status, response.outcome.path) == (200, "fallback")
    else:
        assert response.outcome.path == "degraded"


async def test_without_a_retry_plugin_the_last_group_answer_is_the_result(
    upstreams: tuple[FaultServer, FaultServer], manual_clock: ManualClock
) -> None:
    primary, backup = upstreams
    primary.script("/x", Fault.status(503))
    backup.script("/x", Fault.status(503))
    async with client(document(primary.url, backup.url), manual_clock) as c:
        response = await c.get("/x", service=SERVICE)
    assert response.status == 503
    assert response.outcome is not None
    assert (response.outcome.path, response.outcome.endpoint) == ("fallback", backup.url)
    assert (primary.hits("/x"), backup.hits("/x")) == (1, 1)


def test_the_setting_must_be_a_boolean() -> None:
    config = document("http://127.0.0.1:1", "http://127.0.0.1:2", retry_other_groups="yes")
    with pytest.raises(healkit.ConfigError) as caught:
        healkit.Runtime(config=config, plugins=[TimeoutPlugin()], entry_points=False)
    (issue,) = caught.value.issues
    assert issue.path == f"$.services.{SERVICE}.routing.retry_other_groups"
