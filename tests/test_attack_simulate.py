"""``healkit config simulate`` against hostile input: thresholds, scenario files, etcd.

Every mistake is a clear message with exit status 1 or 2, never a traceback
and never a CI gate that passes because what it names does not exist.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from healkit.etcd import EtcdClient
from healkit.testing import EtcdServer
from tests.cli_support import cli, connect

POLICY = """
[services.pay]
endpoints = ["https://pay.internal:8443"]
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


@pytest.mark.parametrize(
    ("threshold", "message"),
    [
        # Before: a phase the scenario does not have was never checked, so a
        # typo made the gate pass with status 0.
        ("healthy/helthy:success_rate<1.1", "no phase 'helthy' in scenario 'healthy'"),
        ("outage-recovery/recovery:p99>0", "did you mean 'recovered'"),
        # Before: a number too large for a float became inf, a bound nothing crosses.
        ("p99>" + "9" * 400, "not a finite number"),
    ],
)
def test_a_threshold_on_something_that_does_not_exist_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], policy: Path, threshold: str, message: str
) -> None:
    result = cli(
        capsys,
        "config",
        "simulate",
        str(policy),
        "--scenario",
        "healthy",
        "--scenario",
        "outage-recovery",
        "--fail-if",
        threshold,
    )
    assert result.status == 2, result.out
    assert message in result.err
    assert "Traceback" not in result.err


def test_a_phase_threshold_on_a_scenario_file_phase_is_checked(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path
) -> None:
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(
        '{"scenarios": {"short": {"rate": 5, "phases": [{"name": "only", "duration": 1}]}}}'
    )
    result = cli(
        capsys,
        "config",
        "simulate",
        str(policy),
        "--scenario-file",
        str(scenarios),
        "--scenario",
        "short",
        "--fail-if",
        "short/only:calls>1",
    )
    assert result.status == 1, result.err
    assert "short/only:calls>1 (observed 5)" in result.err


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    server = EtcdServer()
    asyncio.run(server.__aenter__())
    try:
        yield server
    finally:
        asyncio.run(server.__aexit__(None, None, None))


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        (b"\xff\xfe not utf-8", "UTF-8"),
        (b'{"endpoints": ', "JSON"),
        (b'{"endpoints": ["https://pay.internal"], "retry": {"attempts": 500}}', "attempts"),
    ],
    ids=["not utf-8", "not json", "invalid"],
)
def test_against_etcd_with_an_invalid_stored_document_is_refused_with_its_key(
    capsys: pytest.CaptureFixture[str],
    policy: Path,
    etcd: EtcdServer,
    stored: bytes,
    message: str,
) -> None:
    namespace = f"hostile-{abs(hash(stored))}"
    options = connect(etcd, namespace)

    async def put() -> None:
        async with EtcdClient(etcd.url) as client:
            await client.put(f"/healkit/{namespace}/services/pay", stored)

    asyncio.run(put())
    result = cli(
        capsys,
        "config",
        "simulate",
        str(policy),
        "--against",
        "etcd",
        *options,
        "--scenario",
        "healthy",
    )
    assert result.status == 1, (result.out, result.err)
    assert message in result.err
    assert "Traceback" not in result.err


def test_a_policy_whose_probes_would_not_end_is_refused_before_running(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Before: probes every microsecond for a 1 s scenario were a billion probe
    # requests on loopback: the simulation ran for days (MAX_CALLS bounds calls only).
    policy = tmp_path / "probing.toml"
    policy.write_text(POLICY + '[services.pay.routing.probe]\npath = "/health"\ninterval = 1e-6\n')
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(
        '{"scenarios": {"blink": {"rate": 5, "phases": [{"name": "only", "duration": 1}]}}}'
    )
    result = cli(
        capsys,
        "config",
        "simulate",
        str(policy),
        "--scenario-file",
        str(scenarios),
        "--scenario",
        "blink",
    )
    assert result.status == 1, result.out
    assert "$.services.pay.routing.probe.interval" in result.err
    assert "1000000 probe requests" in result.err
    assert "Traceback" not in result.err


def test_a_phase_without_calls_does_not_cross_a_threshold_on_its_rates(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path
) -> None:
    # Before: a phase shorter than the time between two calls reported a
    # success rate of 0 (of no calls) and failed the gate on it.
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(
        '{"scenarios": {"blink": {"rate": 10, "phases": ['
        '{"name": "before", "duration": 1.02},'
        '{"name": "blip", "duration": 0.05, "primary": {"faults": [{"kind": "reset"}]}},'
        '{"name": "after", "duration": 1}]}}}'
    )
    result = cli(
        capsys,
        "config",
        "simulate",
        str(policy),
        "--scenario-file",
        str(scenarios),
        "--scenario",
        "blink",
        "--fail-if",
        "blink/blip:success_rate<0.5",
        "--fail-if",
        "blink/blip:calls<1",
    )
    assert result.status == 1, result.out
    assert "phase blip at 1.02 s: no call started in it" in result.out
    assert "CROSSED" in result.out
    assert "blink/blip:calls<1 (observed 0)" in result.err
    assert "success_rate" not in result.err


def test_a_disruption_phase_without_calls_has_no_failover_time(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path
) -> None:
    # Before: "failed over in 0 s" for a disruption no call went through.
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(
        '{"scenarios": {"blink": {"rate": 10, "phases": ['
        '{"name": "before", "duration": 1.02},'
        '{"name": "blip", "duration": 0.05, "mark": "disruption",'
        ' "primary": {"faults": [{"kind": "reset"}]}},'
        '{"name": "after", "duration": 1}]}}}'
    )
    result = cli(
        capsys,
        "config",
        "simulate",
        str(policy),
        "--scenario-file",
        str(scenarios),
        "--scenario",
        "blink",
        "--json",
    )
    assert result.status == 0, result.err
    (scenario,) = json.loads(result.out)["services"][0]["scenarios"]
    assert scenario["proposed"]["failover_time"] is None


def test_a_service_with_more_endpoints_than_a_simulation_serves_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Before: one loopback server per endpoint, however many: past the process's
    # open-file limit, FaultServer failed with a raw IndexError traceback.
    endpoints = ", ".join(f'"https://pay-{index}.internal"' for index in range(200))
    fallback = ", ".join(f'"https://dr-{index}.internal"' for index in range(100))
    policy = tmp_path / "wide.toml"
    policy.write_text(
        f"[services.pay]\nendpoints = [{endpoints}]\n"
        f"[services.pay.routing]\nfallback_groups = [[{fallback}]]\n"
    )
    result = cli(capsys, "config", "simulate", str(policy), "--scenario", "healthy")
    assert result.status == 1, result.out
    assert "$.services.pay.endpoints: 300 endpoints" in result.err
    assert "at most 256" in result.err
