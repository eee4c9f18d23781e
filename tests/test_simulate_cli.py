"""``healkit config simulate`` on the command line: --against, --fail-if, --json, scenario files."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from healkit._errors import ConfigError
from healkit._simulate import load_scenarios
from healkit.testing import EtcdServer
from tests.cli_support import cli, connect

CURRENT = """
[services.pay]
endpoints = ["https://pay.internal:8443"]
"""

# Five attempts and a budget that never runs dry: an outage is multiplied by five.
STORMY = """
[services.pay]
endpoints = ["https://pay.internal:8443"]

[services.pay.retry]
attempts = 5
budget_ratio = 1.0
budget_min_retries_per_second = 10000

[services.pay.breaker]
mode = "disabled"

[services.pay.routing]
eject_after = 0
"""

SCENARIOS = """
[scenarios.blip]
description = "one second of resets"
seed = 3
rate = 10.0

[[scenarios.blip.phases]]
name = "calm"
duration = 1.0

[[scenarios.blip.phases]]
name = "blip"
duration = 1.0
mark = "disruption"
primary.faults = [{kind = "reset"}]

[[scenarios.blip.phases]]
name = "after"
duration = 2.0
mark = "recovery"
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"current": CURRENT, "stormy": STORMY, "scenarios": SCENARIOS}
    for name, text in paths.items():
        (tmp_path / f"{name}.toml").write_text(text)
    return {name: tmp_path / f"{name}.toml" for name in paths}


def test_a_crossed_threshold_fails_the_run_and_names_the_figure(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    args = [
        "config",
        "simulate",
        str(files["stormy"]),
        "--against",
        str(files["current"]),
        "--scenario",
        "outage-recovery",
    ]
    strict = cli(capsys, *args, "--fail-if", "outage-recovery/outage:amplification>1.5")
    assert strict.status == 1
    assert "CROSSED" in strict.out
    assert re.search(r"pay outage-recovery: .*amplification>1\.5 \(observed 4\.\d+\)", strict.err)
    # Side by side: both columns and the change.
    assert re.search(r"amplification\s+\d+\.\d\d\s+\d+\.\d\d\s+\+\d+\.\d\d\n", strict.out)
    assert re.search(
        r"phase outage \[disruption\] at 3 s: 200 calls, .*amplification 4\.", strict.out
    )
    assert "note: times are simulated" in strict.out
    lenient = cli(capsys, *args, "--fail-if", "outage-recovery/outage:amplification>6")
    assert lenient.status == 0, lenient.err
    assert lenient.err == ""


def test_json_report_shape(capsys: pytest.CaptureFixture[str], files: dict[str, Path]) -> None:
    result = cli(
        capsys,
        "config",
        "simulate",
        str(files["stormy"]),
        "--against",
        str(files["current"]),
        "--scenario-file",
        str(files["scenarios"]),
        "--scenario",
        "blip",
        "--fail-if",
        "success_rate<99.9%",
        "--json",
    )
    assert result.status == 1  # the blip fails calls in both policies
    report = json.loads(result.out)
    assert set(report) == {"source", "against", "simulated", "services", "thresholds", "passed"}
    assert report["passed"] is False
    (service,) = report["services"]
    assert service["service"] == "pay"
    assert service["compared"] is True
    (scenario,) = service["scenarios"]
    assert scenario["scenario"] == "blip"
    assert scenario["seed"] == 3
    proposed = scenario["proposed"]
    assert set(proposed) == {
        "calls",
        "success_rate",
        "paths",
        "p50",
        "p99",
        "max",
        "upstream_attempts",
        "amplification",
        "probes",
        "breaker_transitions",
        "failover_time",
        "recovery_time",
        "phases",
    }
    assert proposed["calls"] == 40  # 10 calls a second for 4 seconds
    assert set(proposed["paths"]) == {"primary", "retry", "fallback", "degraded", "failed"}
    assert sum(proposed["paths"].values()) == proposed["calls"]
    assert [p["name"] for p in proposed["phases"]] == ["calm", "blip", "after"]
    assert scenario["change"]["amplification"] == pytest.approx(
        proposed["amplification"] - scenario["current"]["amplification"]
    )
    (verdict,) = report["thresholds"]
    assert verdict == {
        "threshold": "success_rate<99.9%",
        "service": "pay",
        "scenario": "blip",
        "observed": proposed["success_rate"],
        "crossed": True,
    }


def test_a_scenario_file_with_errors_names_each_path(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(
        SCENARIOS.replace("duration = 1.0\nmark", "duration = -1.0\nmark").replace(
            'kind = "reset"', 'kind = "explode"'
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_scenarios(broken)
    paths = {issue.path for issue in caught.value.issues}
    assert paths == {
        "$.scenarios.blip.phases[1].duration",
        "$.scenarios.blip.phases[1].primary.faults[0].kind",
    }
    result = cli(
        capsys, "config", "simulate", str(files["current"]), "--scenario-file", str(broken)
    )
    assert result.status == 1
    assert "$.scenarios.blip.phases[1].duration" in result.err
    assert result.out == ""


def test_the_documented_scenario_file_is_valid(tmp_path: Path) -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "simulate.md").read_text()
    blocks = re.findall(r"```toml\n(# scenarios\.toml\n.*?)```", page, re.DOTALL)
    assert len(blocks) == 1
    documented = tmp_path / "scenarios.toml"
    documented.write_text(blocks[0])
    (name,) = load_scenarios(documented)
    assert name == "gateway-flap"


def test_a_scenario_file_cannot_redefine_a_built_in_one(tmp_path: Path) -> None:
    clash = tmp_path / "clash.toml"
    clash.write_text(SCENARIOS.replace("blip", "healthy"))
    with pytest.raises(ConfigError) as caught:
        load_scenarios(clash)
    assert caught.value.path == "$.scenarios.healthy"


def test_a_fault_option_its_kind_does_not_use_is_refused(tmp_path: Path) -> None:
    odd = tmp_path / "odd.toml"
    odd.write_text(SCENARIOS.replace('kind = "reset"', 'kind = "reset", status = 503'))
    with pytest.raises(ConfigError) as caught:
        load_scenarios(odd)
    assert caught.value.path == "$.scenarios.blip.phases[1].primary.faults[0]"
    assert "sends no status" in caught.value.reason


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scenario", "helthy"], "did you mean 'healthy'"),
        (["--fail-if", "speed>3"], "unknown figure 'speed'"),
        (["--fail-if", "nowhere:p99>3"], "no scenario 'nowhere'"),
        (["--service", "payments"], "no service 'payments'"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], extra: list[str], message: str
) -> None:
    result = cli(capsys, "config", "simulate", str(files["current"]), *extra)
    assert result.status == 2
    assert message in result.err


def test_an_invalid_policy_is_refused_with_its_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(CURRENT + "[services.pay.retry]\nattempts = 50\n")
    result = cli(capsys, "config", "simulate", str(bad), "--scenario", "healthy")
    assert result.status == 1
    assert "$.services.pay.retry.attempts" in result.err


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    server = EtcdServer()
    asyncio.run(server.__aenter__())
    try:
        yield server
    finally:
        asyncio.run(server.__aexit__(None, None, None))


def test_against_etcd_compares_with_the_namespace(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], etcd: EtcdServer
) -> None:
    options = connect(etcd, "simulate")
    pushed = cli(capsys, "config", "push", str(files["current"]), *options)
    assert pushed.status == 0, pushed.err
    result = cli(
        capsys,
        "config",
        "simulate",
        str(files["stormy"]),
        "--against",
        "etcd",
        *options,
        "--scenario-file",
        str(files["scenarios"]),
        "--scenario",
        "blip",
        "--json",
    )
    assert result.status == 0, result.err
    report = json.loads(result.out)
    (service,) = report["services"]
    assert service["compared"] is True
    (scenario,) = service["scenarios"]
    # etcd holds the default retry policy: 3 attempts, where the proposal makes 5.
    assert scenario["current"]["upstream_attempts"] < scenario["proposed"]["upstream_attempts"]
