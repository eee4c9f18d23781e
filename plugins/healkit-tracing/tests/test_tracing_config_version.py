"""``healkit.config.version``: the version of the configuration in force, as a gauge."""

from __future__ import annotations

import pytest
from tracing_support import Telemetry, document

import healkit

pytestmark = pytest.mark.anyio


def version(telemetry: Telemetry) -> int | float:
    (point,) = telemetry.points("healkit.config.version")
    assert dict(point.attributes) == {}
    return point.value


async def test_the_gauge_follows_applied_documents_and_ignores_rejected_ones(
    telemetry: Telemetry,
) -> None:
    plugin = telemetry.plugin()
    async with healkit.Client(config=document(), plugins=[plugin], entry_points=False) as client:
        runtime = client.runtime
        assert version(telemetry) == runtime.version == 1
        runtime.apply(document(tracing={"propagate": False}))
        assert version(telemetry) == runtime.version == 2
        with pytest.raises(healkit.ConfigError):
            runtime.apply(document(tracing={"propagate": "no"}))
        assert version(telemetry) == runtime.version == 2
    assert telemetry.metrics()["healkit.config.version"].unit == "{version}"


async def test_off_with_the_metrics_of_defaults(telemetry: Telemetry) -> None:
    config = {"defaults": {"tracing": {"record_metrics": False}}}
    async with healkit.Client(config=config, plugins=[telemetry.plugin()], entry_points=False):
        pass
    assert telemetry.points("healkit.config.version") == []
