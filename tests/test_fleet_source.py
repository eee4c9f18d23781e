"""Fleet health starts only on an etcd source: any other source keeps health local."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import healkit
from healkit.etcd import EtcdClient, EtcdSource, WatchEvent
from healkit.testing import EtcdServer

pytestmark = pytest.mark.anyio

SERVICE = "inventory"
FLEET_TASK = "healkit: routing fleet health"


def document() -> dict[str, Any]:
    routing = {"eject_after": 1, "fleet": {"ttl": 5}}
    endpoints = ["http://127.0.0.1:9/", "http://127.0.0.2:9/"]
    return {"services": {SERVICE: {"endpoints": endpoints, "routing": routing}}}


def fleet_tasks(client: healkit.Client) -> list[str]:
    return [task.get_name() for task in client.runtime.background_tasks]


class LookalikeSource:
    """A source of another system that happens to have ``listen``, ``client`` and ``root``."""

    def __init__(self, client: object) -> None:
        self.client = client
        self.root = "/elsewhere/"
        self.listened: list[str] = []

    @property
    def origin(self) -> str:
        return "lookalike"

    async def load(self) -> object:
        return document()

    async def watch(self, sink: object) -> None:
        del sink

    def listen(
        self, prefix: str, listener: Callable[[Sequence[WatchEvent], int], None]
    ) -> Callable[[], None]:
        del listener
        self.listened.append(prefix)
        return lambda: None


async def test_a_source_that_only_looks_like_etcd_gives_no_fleet(
    etcd_server: EtcdServer, logs: list[dict[str, Any]]
) -> None:
    async with EtcdClient(etcd_server.url) as etcd:
        source = LookalikeSource(etcd)
        async with healkit.Client(config=source, entry_points=False) as client:
            assert FLEET_TASK not in fleet_tasks(client)
    assert source.listened == []
    assert [event for event in logs if event["log_level"] in {"warning", "error"}] == []


async def test_a_file_source_gives_no_fleet(tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    path = tmp_path / "healkit.json"
    path.write_text(json.dumps(document()))
    async with healkit.Client(config=path, entry_points=False) as client:
        assert FLEET_TASK not in fleet_tasks(client)
    assert [event for event in logs if event["log_level"] in {"warning", "error"}] == []


async def test_an_etcd_source_starts_the_fleet(etcd_server: EtcdServer) -> None:
    async with EtcdClient(etcd_server.url) as etcd:
        await etcd.put(
            f"/healkit/fleet/services/{SERVICE}",
            json.dumps(document()["services"][SERVICE]).encode(),
        )
        source = EtcdSource(etcd, namespace="fleet")
        async with healkit.Client(config=source, entry_points=False) as client:
            assert FLEET_TASK in fleet_tasks(client)
