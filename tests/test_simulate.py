"""``healkit config simulate``: each figure checked against what the policy implies.

Every run is real: loopback FaultServers per endpoint, a Runtime with the
installed plugins, a healkit.Client; only the clock is virtual (the event
loop jumps over idle waits), so the figures are exact and repeatable.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

import healkit_breaker
import healkit_retry
from healkit._routing.settings import ProbeSettings, RoutingSettings
from healkit._simulate import (
    BUILTIN_SCENARIOS,
    FaultSpec,
    Figures,
    Phase,
    Scenario,
    Upstream,
    figures,
    simulate_service,
)
from healkit._timer import TICK

RETRY = healkit_retry.RetrySettings()
BREAKER = healkit_breaker.BreakerSettings()
ROUTING = RoutingSettings()
PROBES = ProbeSettings()


def service(**sections: Any) -> dict[str, Any]:
    return {"services": {"pay": {"endpoints": ["https://pay.internal:8443"], **sections}}}


def run(document: dict[str, Any], scenario: str | Scenario) -> Figures:
    if isinstance(scenario, str):
        scenarios = {scenario: BUILTIN_SCENARIOS[scenario]}
    else:
        scenarios = {"custom": scenario}
    (result,) = simulate_service(document, "pay", scenarios)
    return figures(result)


def phase(report: Figures, name: str) -> Any:
    return next(entry for entry in report.phases if entry.name == name)


def budget_retries(counted: int) -> float:
    """The retries the default budget grants in one window where ``counted`` calls started."""
    return RETRY.budget_ratio * counted + RETRY.budget_min_retries_per_second * RETRY.budget_window


# Routing's ejection and the breaker would stop attempts by themselves: switched
# off where a test isolates the retry policy.
ISOLATED = {"breaker": {"mode": "disabled"}, "routing": {"eject_after": 0}}
NO_BUDGET = {"budget_ratio": 1.0, "budget_min_retries_per_second": 10000.0}


def test_five_attempts_without_a_budget_multiply_the_load_by_five_under_an_outage() -> None:
    report = run(service(retry={"attempts": 5, **NO_BUDGET}, **ISOLATED), "outage-recovery")
    outage = phase(report, "outage")
    # Every call of the outage fails on every attempt: 5 requests a call. Calls of its
    # last second still retry once the upstream is back, so slightly fewer arrive.
    assert 4.5 <= outage.amplification <= 5.0
    assert outage.success_rate < 0.1
    assert phase(report, "before").amplification == 1.0
    assert report.breaker_transitions == ()


def test_the_default_budget_caps_amplification_at_its_ratio_plus_its_minimum() -> None:
    report = run(service(retry={"attempts": 5}, **ISOLATED), "outage-recovery")
    outage = phase(report, "outage")
    # Within one budget window, retries may add budget_ratio of the calls counted
    # in it (the outage's and those of the phase before, both within the last 10 s)
    # plus budget_min_retries_per_second for each of its seconds.
    counted = outage.calls + phase(report, "before").calls
    assert outage.duration <= RETRY.budget_window
    bound = 1 + budget_retries(counted) / outage.calls
    assert 1.0 < outage.amplification <= bound + 1e-9
    # ...where five attempts without a budget would send five.
    assert outage.amplification < 2


def test_a_breaker_that_opens_sooner_sends_fewer_attempts_into_a_storm() -> None:
    def storm(consecutive: int) -> tuple[Figures, Any]:
        report = run(
            service(
                retry={"attempts": 1},
                breaker={"consecutive_failures": consecutive},
                routing={"eject_after": 0},
            ),
            "503-storm",
        )
        return report, phase(report, "storm")

    late_report, late = storm(BREAKER.consecutive_failures)
    soon_report, soon = storm(3)
    assert soon.calls == late.calls
    assert soon.amplification < late.amplification
    # The breaker lets `consecutive_failures` through, then one probe per open
    # duration (doubling after each failed probe) while the storm lasts.
    storm_seconds = next(
        p.duration for p in BUILTIN_SCENARIOS["503-storm"].phases if p.name == "storm"
    )
    probes = math.ceil(storm_seconds / BREAKER.open_duration)
    assert soon.amplification * soon.calls <= 3 + probes
    assert late.amplification * late.calls >= BREAKER.consecutive_failures
    assert soon_report.breaker_transitions[0].to_state == "open"
    assert soon_report.breaker_transitions[0].at < late_report.breaker_transitions[0].at


def test_a_shorter_timeout_lowers_p99_and_success_under_slow_answers() -> None:
    slow = max(spec.latency for spec in BUILTIN_SCENARIOS["slow"].phases[0].primary.faults)
    patient = run(service(retry={"attempts": 1}), "slow")
    hasty = run(service(retry={"attempts": 1}, timeout={"attempt": 1.0}), "slow")
    # 5% of answers are slow: above the 99th percentile's 1%.
    assert patient.p99 == pytest.approx(slow)
    assert patient.success_rate == 1.0
    # The attempt limit fires at most one timer tick late, and the slow calls fail.
    assert 1.0 <= hasty.p99 <= 1.0 + TICK
    assert hasty.max <= 1.0 + TICK
    assert hasty.p99 < patient.p99
    assert 0.9 < hasty.success_rate < patient.success_rate
    assert hasty.paths["failed"] == round((1 - hasty.success_rate) * hasty.calls)


def test_failover_and_recovery_times_follow_the_routing_policy() -> None:
    fallback = {"fallback_groups": [["https://pay-b.internal"]], "eject_time": 2.0}
    report = run(service(retry={"attempts": 2}, routing=fallback), "outage-recovery")
    # With a fallback group, the second attempt of a failed call goes there: every
    # call of the outage succeeds.
    assert phase(report, "outage").success_rate == 1.0
    assert report.failover_time == 0.0
    assert report.paths["fallback"] > 0
    # Without a probe, an ejected primary is tried again when its ejection ends
    # (eject_time, doubled on each failed return): calls come back to it.
    assert isinstance(report.recovery_time, float)
    assert phase(report, "recovered").success_rate == 1.0
    # One attempt and nowhere else to go: no call of the outage succeeds, and after
    # it the open breaker keeps calls away until its open duration has passed.
    alone = run(service(retry={"attempts": 1}, routing={"eject_after": 0}), "outage-recovery")
    assert phase(alone, "outage").success_rate == 0.0
    assert alone.failover_time == "never"
    assert isinstance(alone.recovery_time, float)
    assert 0.0 < alone.recovery_time <= BREAKER.open_duration_max


def test_under_overload_retries_add_load_but_no_success() -> None:
    overload = BUILTIN_SCENARIOS["overload"]
    upstream = overload.phases[0].primary
    assert upstream.capacity is not None
    offered = overload.rate * upstream.faults[0].latency  # calls in flight at once
    once = run(service(retry={"attempts": 1}, **ISOLATED), "overload")
    # 150 ms answers at 100 calls a second: 15 wanted at once, 10 served, 5 shed (503).
    assert once.amplification == 1.0
    assert once.success_rate == pytest.approx(upstream.capacity / offered, abs=0.01)
    retried = run(service(**ISOLATED), "overload")
    # Retrying the shed calls adds load, within the default budget.
    assert overload.duration <= RETRY.budget_window
    assert 1.0 < retried.amplification <= 1 + budget_retries(retried.calls) / retried.calls + 1e-9
    # ...and no success: the upstream serves capacity / latency calls a second, whoever asks.
    assert retried.success_rate <= upstream.capacity / offered + 0.01


def test_two_runs_of_a_scenario_give_the_same_figures() -> None:
    document = service(routing={"fallback_groups": [["https://pay-b.internal"]]})
    assert run(document, "mixed-faults") == run(document, "mixed-faults")


def test_a_custom_scenario_runs_its_phases_in_order() -> None:
    scenario = Scenario(
        seed=9,
        rate=10.0,
        phases=(
            Phase(name="ok", duration=2.0),
            Phase(
                name="limited",
                duration=2.0,
                primary=Upstream(
                    faults=(FaultSpec(kind="status", status=429, headers={"Retry-After": "1"}),)
                ),
            ),
        ),
    )
    report = run(service(retry={"attempts": 1}), scenario)
    assert [(p.name, p.start, p.calls) for p in report.phases] == [
        ("ok", 0.0, 20),
        ("limited", 2.0, 20),
    ]
    assert phase(report, "ok").success_rate == 1.0
    assert phase(report, "limited").success_rate == 0.0


def test_health_probes_run_on_simulated_time_and_bring_the_primary_back() -> None:
    storm = BUILTIN_SCENARIOS["503-storm"]
    groups = {"fallback_groups": [["https://pay-b.internal"]]}
    interval = 1.0
    probed = run(
        service(routing={**groups, "probe": {"path": "/health", "interval": interval}}),
        "503-storm",
    )
    # Every endpoint (the primary and its fallback) probed once per interval.
    assert probed.probes == pytest.approx(2 * storm.duration / interval, abs=2)
    # The storm fails the health checks too: traffic is on the fallback during it,
    # and `healthy_threshold` good probes in a row bring the primary back after.
    assert phase(probed, "storm").success_rate == 1.0
    assert isinstance(probed.recovery_time, float)
    assert probed.recovery_time <= interval * (PROBES.healthy_threshold + 1)
    # Without probes the primary stays ejected for routing.eject_time, longer
    # than the recovery phase: calls never come back to it.
    unprobed = run(service(routing=groups), "503-storm")
    assert unprobed.probes == 0
    assert phase(unprobed, "after").duration < ROUTING.eject_time
    assert unprobed.recovery_time == "never"
