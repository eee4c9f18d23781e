"""The scenario model: what it accepts, what it refuses, and that the demo's upstreams fit it."""

from __future__ import annotations

import pytest

from healkit._config.validate import check
from healkit._errors import ConfigError
from healkit._simulate import BUILTIN_SCENARIOS, FaultSpec, Phase, Scenario, Upstream
from healkit._simulate._scenarios import MAX_CALLS
from healkit.testing import Fault, FaultMix


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


def test_the_demo_upstream_behaviours_are_phases() -> None:
    """Each fault of ``healkit demo``'s scenes, written as data (see the demo's SCENES)."""
    overloaded = FaultSpec(
        kind="status",
        status=503,
        body="upstream overloaded",
        headers={"Retry-After": "1"},
        latency=0.001,
    )
    failing = FaultSpec(kind="status", status=503, body="upstream failing", latency=0.001)
    demo = [
        (FaultSpec(latency=0.002), Fault.ok(latency=0.002)),
        (FaultSpec(latency=1.5), Fault.latency(1.5)),
        (
            FaultSpec(kind="slow_body", chunks=6, chunk_delay=0.25),
            Fault.slow_body(6, 0.25, chunk=b"x" * 256),
        ),
        (
            overloaded,
            Fault.status(
                503, body=b"upstream overloaded", headers={"Retry-After": "1"}, latency=0.001
            ),
        ),
        (failing, Fault.status(503, body=b"upstream failing", latency=0.001)),
        (FaultSpec(kind="hang"), Fault.blackhole()),
        (FaultSpec(kind="reset"), Fault.reset()),
    ]
    for spec, fault in demo:
        assert spec.fault() == fault
    # A scene cycles its faults in order; `down` is `probes = "same"`, and the
    # fallback upstream is the phase's `fallback`.
    storm = Phase(
        name="storm",
        duration=3.6,  # the scene's fraction of the run
        primary=Upstream(
            faults=(failing,),
            order="cycle",
            probes="same",
        ),
        fallback=Upstream(order="cycle"),
    )
    assert storm.primary.mix(seed=0) == FaultMix.cycle(
        Fault.status(503, body=b"upstream failing", latency=0.001)
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
