"""The scenario model: what it accepts and what it refuses (the demo's scenes: test_demo_scenes)."""

from __future__ import annotations

import pytest

from healkit._config.validate import check
from healkit._errors import ConfigError
from healkit._simulate import BUILTIN_SCENARIOS, FaultSpec, Scenario, Upstream
from healkit._simulate._scenarios import MAX_CALLS
from healkit.testing import Fault


def test_every_fault_kind_builds_the_fault_server_fault() -> None:
    assert FaultSpec().fault() == Fault.ok()
    assert FaultSpec(kind="status").fault() == Fault.status(503)
    assert FaultSpec(kind="reset", latency=0.5).fault() == Fault.reset(latency=0.5)
    assert FaultSpec(kind="reset_after_body").fault() == Fault.reset_after_body()
    assert FaultSpec(kind="hang").fault() == Fault.blackhole()
    assert FaultSpec(kind="truncated", status=206).fault() == Fault.truncated(status=206)
    assert FaultSpec(kind="slow_body", chunks=3, chunk_delay=0.1).fault() == Fault.slow_body(
        3, 0.1, chunk=b"x" * 256
    )


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        ({"kind": "hang", "latency": 1.0}, "$.faults[0]", "never answers"),
        ({"kind": "reset", "body": "x"}, "$.faults[0]", "sends no body"),
        ({"kind": "reset", "headers": {"A": "b"}}, "$.faults[0]", "sends no headers"),
        ({"headers": {"bad name": "x"}}, "$.faults[0].headers", "must match"),
        ({"weight": -1}, "$.faults[0].weight", ">= 0"),
        ({"latency": 7200}, "$.faults[0].latency", "<= 3600"),
    ],
)
def test_an_invalid_fault_is_refused_with_its_path(
    spec: dict[str, object], path: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        check({"faults": [spec]}, Upstream)
    assert caught.value.path.startswith(path)
    assert reason in caught.value.reason


def test_a_scenario_is_bounded() -> None:
    phase = {"name": "long", "duration": 3600}
    with pytest.raises(ConfigError) as caught:
        check({"rate": 1000, "phases": [phase]}, Scenario)
    assert f"at most {MAX_CALLS}" in caught.value.reason
    with pytest.raises(ConfigError, match="phase names must differ"):
        check({"phases": [phase, phase]}, Scenario)
    with pytest.raises(ConfigError, match="weight above 0"):
        check({"faults": [{"weight": 0}]}, Upstream)


def test_built_in_scenarios_have_distinct_seeds_and_fit_the_bound() -> None:
    seeds = [scenario.seed for scenario in BUILTIN_SCENARIOS.values()]
    assert len(set(seeds)) == len(seeds)
    assert all(scenario.calls <= MAX_CALLS for scenario in BUILTIN_SCENARIOS.values())
