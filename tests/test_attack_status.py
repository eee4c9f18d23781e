"""``healkit status`` with hostile fleet records in etcd.

Anything that can write under ``instances/`` or ``health/`` writes what the
operator's terminal shows at 3 a.m.: control characters are shown escaped,
never sent to the terminal, and the text stays bounded however many
instances and reports there are (``--json`` keeps them all).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import anyio
import pytest

from healkit.testing import EtcdServer
from tests.cli_support import Run, cli, connect

pytestmark = pytest.mark.anyio

NAMESPACE = "status-hostile"
ROOT = f"/healkit/{NAMESPACE}/"
PRIMARY = "https://pay.internal:8443"
ESCAPE = "\x1b]0;owned\x07\x1b[2J"  # set the terminal's title, then clear the screen
MANY = 400


def view(instance: str, endpoint: str = PRIMARY, breaker: str = "closed") -> dict[str, Any]:
    entry = {
        "endpoint": endpoint,
        "group": 0,
        "usable": True,
        "down": False,
        "ejected_until": None,
        "fleet_reports": 0,
        "breaker": breaker,
        "breaker_retry_at": None,
    }
    service = {"endpoints": [entry], "traffic_group": 0, "traffic": [endpoint]}
    return {"instance": instance, "updated": 1e9, "services": {"pay": service}}


async def status(server: EtcdServer, capsys: pytest.CaptureFixture[str], *extra: str) -> Run:
    return await anyio.to_thread.run_sync(
        lambda: cli(capsys, "status", *extra, *connect(server, NAMESPACE))
    )


async def test_hostile_fleet_records_are_shown_escaped_and_bounded(
    etcd_server: EtcdServer, capsys: pytest.CaptureFixture[str]
) -> None:
    service = {"endpoints": [PRIMARY], "routing": {"fleet": {"quorum": 1000}}}
    records: dict[str, str | bytes] = {ROOT + "services/pay": json.dumps(service)}
    for index in range(MANY):
        records[f"{ROOT}instances/host-{index:04}"] = json.dumps(view(f"host-{index:04}"))
        reporter = f"{ROOT}health/pay/{quote(PRIMARY, safe='')}/reporter-{index:04}"
        records[reporter] = "out"
    hostile = view(f"evil{ESCAPE}", endpoint=f"{PRIMARY}{ESCAPE}", breaker=ESCAPE)
    records[ROOT + "instances/evil"] = json.dumps(hostile)
    records[f"{ROOT}health/pay/{quote(PRIMARY, safe='')}/evil{ESCAPE}"] = "out"
    records[f"{ROOT}instances/garbage{ESCAPE}"] = b"\xff{not json" + b"x" * 100_000
    records[ROOT + "instances/wrong-types"] = json.dumps({"instance": 7, "services": []})
    async with etcd_server.client() as etcd:
        limit = asyncio.Semaphore(16)

        async def put(key: str, value: str | bytes) -> None:
            async with limit:
                await etcd.put(key, value)

        await asyncio.gather(*(put(key, value) for key, value in records.items()))

    text = await status(etcd_server, capsys)
    assert text.status == 0, text.err
    # Before: the escape sequences went to the terminal as they were.
    assert "\x1b" not in text.out
    assert "\x07" not in text.out
    assert "evil\\x1b]0;owned\\x07" in text.out
    # Before: one line per instance and a line naming all 401 reporters.
    assert len(text.out.splitlines()) < 100
    assert max(len(line) for line in text.out.splitlines()) < 2000
    assert f"and {MANY + 1 - 10} more" in text.out
    assert "more instances (--json lists them all)" in text.out
    assert "instance record instances/garbage\\x1b]0;owned\\x07" in text.out
    assert "instance record instances/wrong-types unreadable" in text.out

    whole = await status(etcd_server, capsys, "--json")
    assert whole.status == 0, whole.err
    report = json.loads(whole.out)
    assert len(report["fleet"]["pay"]["instances"]) == MANY + 1
    assert len(report["fleet"]["pay"]["endpoints"][0]["reported_out_by"]) == MANY + 1
