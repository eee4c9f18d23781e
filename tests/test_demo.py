"""Tests of ``healkit demo`` (healkit._demo.app): real upstream, real client, real time.

The demo calls ``asyncio.run`` itself, so these are plain synchronous tests.
Durations are short; no assertion depends on timing beyond "something happened".
"""

import importlib.metadata
import io
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

import healkit
from healkit._cli import entry as _cli
from healkit._client import Client
from healkit._demo import pki as _pki
from healkit._demo import scenes as _scenes
from healkit._demo import telemetry as _telemetry
from healkit._demo import traffic as _traffic
from healkit._demo.app import run_demo
from healkit._demo.scenes import SCENES, Scene
from healkit._plugins import BUILTIN_PLUGINS
from healkit._simulate import FaultSpec, Phase, Upstream
from healkit.testing import EtcdServer, Fault, capture_events, refused_url

SCENE_NAMES = [scene.name for scene in SCENES]
OK = FaultSpec()
RESET = FaultSpec(kind="reset")


def phase(
    name: str, duration: float, *faults: FaultSpec, down: bool = False, fallback: FaultSpec = OK
) -> Phase:
    """A phase whose primary cycles ``faults``; ``down``: its health check fails too."""
    return Phase(
        name=name.replace(" ", "-"),
        duration=duration,
        primary=Upstream(faults=faults, order="cycle", probes="same" if down else "ok"),
        fallback=Upstream(faults=(fallback,)),
    )


# Scenes without stalls, for tests that need a run but not the whole script:
# every call ends within milliseconds, so the run ends on time.
QUICK = (
    Scene(name="ok", phase=phase("ok", 1, OK), description="fine"),
    Scene(name="resets", phase=phase("resets", 1, RESET), description="resets"),
)


def installed_plugins() -> set[str]:
    builtins = {plugin().healkit_name for plugin in BUILTIN_PLUGINS}  # type: ignore[attr-defined]
    return builtins | {ep.name for ep in importlib.metadata.entry_points(group="healkit")}


def check_summary(summary: dict[str, Any]) -> None:
    """The invariants every summary holds, whatever happened during the run."""
    assert summary["lost"] == 0
    assert summary["requests"] > 0
    assert summary["scenes"] == SCENE_NAMES
    responses = sum(summary["by_path"].values())
    errors = sum(summary["errors_by_type"].values())
    assert responses + errors == summary["requests"]
    assert (summary["responses"], summary["errors"]) == (responses, errors)
    assert sum(summary["statuses"].values()) == responses
    assert all(code.isdigit() for code in summary["statuses"])
    assert 0 < summary["p50_ms"] <= summary["p99_ms"]
    assert summary["duration_s"] > 0
    assert math.isclose(
        summary["requests_per_s"], summary["requests"] / summary["duration_s"], rel_tol=0.01
    )
    assert list(summary["by_scene"]) == SCENE_NAMES
    assert sum(s["requests"] for s in summary["by_scene"].values()) == summary["requests"]
    assert summary["interrupted"] is False
    assert summary["lost_examples"] == []
    assert summary["retries"] == sum(s["retries"] for s in summary["by_scene"].values())
    rejected = summary["rejected_by_breaker"]
    assert rejected == sum(s["rejected_by_breaker"] for s in summary["by_scene"].values())
    # A call refused by the breaker on its last attempt ends in CircuitOpenError.
    assert rejected >= summary["errors_by_type"].get("CircuitOpenError", 0)
    if "breaker" not in summary["settings"]:
        assert (rejected, summary["breaker_transitions"]) == (0, [])
    changes = summary["traffic_changes"]
    assert summary["failovers"] == sum(change["from"] == 0 for change in changes)
    assert summary["switch_backs"] == sum(change["to"] == 0 for change in changes)
    assert summary["degraded"] == summary["by_path"].get("degraded", 0)
    if summary["tls"] is not None:
        assert summary["tls"]["rejected_material"] == 0
        assert sum(summary["tls"]["presented"].values()) > 0
    assert summary["trace"] is None


def test_json_summary_of_a_run() -> None:
    out = io.StringIO()

    status = run_demo(duration=3, concurrency=4, as_json=True, out=out)

    assert status == 0
    text = out.getvalue()
    assert text.count("\n") == 1  # one JSON object, nothing live
    summary = json.loads(text)
    check_summary(summary)
    assert summary["concurrency"] == 4
    assert set(summary["plugins"]) == installed_plugins()
    assert summary["by_path"]["primary"] > 0
    assert summary["statuses"]["200"] > 0
    if "timeout" in installed_plugins():
        assert summary["timeouts"] == dict(_scenes.TIMEOUTS)
        assert summary["settings"]["timeout"] == dict(_scenes.TIMEOUTS)
        # Stalls end in typed timeouts (or are answered by the fallback).
        assert all(
            issubclass(getattr(healkit, name), healkit.HealkitError)
            for name in summary["errors_by_type"]
        )
    assert summary["fallback_upstream"] is not None
    assert summary["by_path"].get("fallback", 0) > 0  # the storm, at least, failed over
    # healkit's log events were captured: a failed call is logged in full the first
    # time its kind fails, then summarised (healkit.call_failures_summary).
    logged = summary["log_events"].get("healkit.call_failed", 0)
    assert logged <= summary["errors"]
    assert (logged > 0) == (summary["errors"] > 0)


HEALING_SCENES = (
    Scene(name="fine", phase=phase("fine", 0.15, OK), description="fine"),
    Scene(
        name="primary down",
        phase=phase("primary down", 0.2, FaultSpec(kind="status"), down=True),
        description="503, health check too",
        policy={"degraded": {"template": _scenes.DEGRADED_TEMPLATE}},
    ),
    Scene(name="healed", phase=phase("healed", 0.25, OK), description="fine again"),
    Scene(
        name="all down",
        phase=phase("all down", 0.15, RESET, down=True, fallback=RESET),
        description="both reset",
    ),
    Scene(name="recovery", phase=phase("recovery", 0.25, OK), description="fine again"),
)


def test_failover_switch_back_and_degraded_in_the_summary() -> None:
    out = io.StringIO()

    status = run_demo(duration=6, concurrency=4, as_json=True, out=out, scenes=HEALING_SCENES)

    assert status == 0
    summary = json.loads(out.getvalue())
    assert summary["lost"] == 0
    scenes = summary["by_scene"]
    # (A call counts in the scene it started in: those at a boundary may end otherwise.)
    assert scenes["fine"]["by_path"]["primary"] > 0
    assert scenes["primary down"]["by_path"].get("fallback", 0) > 0
    assert scenes["all down"]["by_path"].get("degraded", 0) > 0
    assert summary["degraded"] == summary["by_path"]["degraded"]
    assert summary["failovers"] >= 2  # the primary down, then everything down
    assert summary["switch_backs"] >= 2  # healed, then recovery
    first = summary["traffic_changes"][0]
    assert (first["scene"], first["from"], first["to"]) == ("primary down", 0, 1)
    assert None in {change["to"] for change in summary["traffic_changes"]}  # all down
    last = summary["traffic_changes"][-1]
    assert (last["scene"], last["to"]) == ("recovery", 0)  # the primary has the traffic back


def test_without_a_fallback_the_service_has_only_the_primary() -> None:
    out = io.StringIO()

    status = run_demo(
        duration=0.4, concurrency=2, as_json=True, out=out, scenes=QUICK, fallback=False
    )

    assert status == 0
    summary = json.loads(out.getvalue())
    assert summary["fallback_upstream"] is None
    assert "fallback" not in summary["by_path"]  # the resets end in errors
    assert summary["errors_by_type"]


def test_cli_demo_json(capsys: pytest.CaptureFixture[str]) -> None:
    status = _cli.main(["demo", "--duration", "2", "--concurrency", "3", "--json"])

    captured = capsys.readouterr()
    assert status == 0
    summary = json.loads(captured.out)
    check_summary(summary)
    assert summary["concurrency"] == 3
    assert captured.err == ""


def test_core_only_piped_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the timeout plugin the outage resets connections; a pipe gets plain lines."""
    monkeypatch.setenv("HEALKIT_BLOCK_PLUGINS", "timeout")
    out = io.StringIO()

    status = run_demo(duration=1.5, concurrency=4, as_json=False, out=out)

    assert status == 0
    text = out.getvalue()
    assert "\x1b[" not in text  # not a terminal: no colors, no animation
    lines = text.splitlines()
    for index, scene in enumerate(SCENES, start=1):
        assert sum(f"scene {index}/{len(SCENES)} {scene.name}: " in line for line in lines) == 1
    assert any(line.split()[:1] == ["total"] for line in lines)
    assert any("every call ended in a response or a typed healkit error" in line for line in lines)
    assert "timeout" not in next(line for line in lines if line.startswith("plugins"))


def test_the_logging_configuration_is_restored() -> None:
    top = logging.getLogger("healkit")
    before = (top.level, top.propagate, list(top.handlers))
    with capture_events() as seen:
        out = io.StringIO()
        run_demo(duration=0.4, concurrency=2, as_json=True, out=out, scenes=QUICK, fallback=False)

        assert json.loads(out.getvalue())["log_events"]["healkit.attempt_failed"] > 0
        assert seen == []  # the demo's own events went to the demo
        healkit.get_logger().info("healkit.after")
    assert [e["event"] for e in seen] == ["healkit.after"]
    assert (top.level, top.propagate, list(top.handlers)) == before


def test_an_unexpected_exception_is_a_lost_call(monkeypatch: pytest.MonkeyPatch) -> None:
    real_get = Client.get
    calls = 0

    async def flaky_get(self: Client, target: str, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls % 50 == 0:
            raise RuntimeError("not a healkit error")
        return await real_get(self, target, **kwargs)

    monkeypatch.setattr(Client, "get", flaky_get)
    out = io.StringIO()

    status = run_demo(
        duration=0.4, concurrency=2, as_json=True, out=out, scenes=QUICK, fallback=False
    )

    assert status == 1
    summary = json.loads(out.getvalue())
    assert summary["lost"] > 0
    responses = sum(summary["by_path"].values())
    errors = sum(summary["errors_by_type"].values())
    assert responses + errors + summary["lost"] == summary["requests"]
    assert summary["lost_examples"][0] == "RuntimeError: not a healkit error"


def test_scene_table() -> None:
    assert _scenes.scene_ends(SCENES, 30.0)[-1] == 30.0
    assert len(set(SCENE_NAMES)) == len(SCENE_NAMES)
    assert all(scene.description for scene in SCENES)
    outage = next(scene for scene in SCENES if scene.name == "outage")
    assert outage.primary(timeouts=True).mix(0) == outage.phase.primary.mix(0)
    assert [spec.fault() for spec in outage.primary(timeouts=True).faults] == [Fault.blackhole()]
    # Without a plugin that sets short limits, nothing may hang.
    assert [spec.fault() for spec in outage.primary(timeouts=False).faults] == [Fault.reset()]
    assert outage.describe(timeouts=False) != outage.describe(timeouts=True)
    healthy = SCENES[0]
    assert healthy.primary(timeouts=False) == healthy.primary(timeouts=True)
    assert healthy.describe(timeouts=False) == healthy.describe(timeouts=True)


@pytest.mark.parametrize("duration", [0.0, -1.0, math.inf, math.nan])
def test_invalid_scene(duration: float) -> None:
    with pytest.raises(ValueError, match="scene 'x'"):
        Scene(name="x", phase=phase("x", duration, OK), description="d")


def test_the_scenes_share_the_run_by_their_phases_durations() -> None:
    scenes = [Scene(name=n, phase=phase(n, d, OK), description=n) for n, d in [("a", 1), ("b", 3)]]
    assert _scenes.scene_ends(scenes, 2.0) == [0.5, 2.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"duration": 0.0},
        {"duration": math.inf},
        {"concurrency": 0},
        {"scenes": ()},
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {
        "duration": 1.0,
        "concurrency": 1,
        "as_json": True,
        "out": io.StringIO(),
    }
    with pytest.raises(ValueError, match="must"):
        run_demo(**(arguments | kwargs))


def test_custom_scene_table() -> None:
    scenes = (
        Scene(name="ok", phase=phase("ok", 1, OK), description="fine"),
        Scene(
            name="teapot",
            phase=phase("teapot", 1, FaultSpec(kind="status", status=418)),
            description="tea",
        ),
    )
    out = io.StringIO()

    status = run_demo(
        duration=0.6, concurrency=2, as_json=True, out=out, scenes=scenes, fallback=False
    )
    assert status == 0

    summary = json.loads(out.getvalue())
    assert summary["scenes"] == ["ok", "teapot"]
    assert summary["lost"] == 0
    # A call counts in the scene it started in; one in flight at the switch may see a 418.
    assert summary["by_scene"]["ok"]["statuses"]["200"] > 0
    assert summary["by_scene"]["teapot"]["statuses"]["418"] > 0


def test_percentile_is_exact_nearest_rank() -> None:
    values = sorted(float(n) for n in range(1, 101))
    assert _traffic.percentile(values, 0.5) == 50.0
    assert _traffic.percentile(values, 0.99) == 99.0
    assert _traffic.percentile([3.0], 0.99) == 3.0
    assert _traffic.percentile([], 0.5) is None


BREAKER_SCENES = (
    Scene(name="storm", phase=phase("storm", 0.4, FaultSpec(kind="status")), description="503s"),
    Scene(name="healed", phase=phase("healed", 0.6, OK), description="fine"),
)


@pytest.mark.skipif("breaker" not in installed_plugins(), reason="healkit-breaker not installed")
def test_a_503_storm_trips_the_breaker_and_a_probe_closes_it() -> None:
    out = io.StringIO()

    status = run_demo(
        duration=4, concurrency=8, as_json=True, out=out, scenes=BREAKER_SCENES, fallback=False
    )

    assert status == 0
    summary = json.loads(out.getvalue())
    assert summary["settings"]["breaker"] == dict(_scenes.BREAKER)
    moves = [(t["from"], t["to"]) for t in summary["breaker_transitions"]]
    assert moves[0] == ("closed", "open")
    assert moves[-1] == ("half_open", "closed")
    assert summary["breaker_transitions"][0]["scene"] == "storm"
    assert summary["breaker_transitions"][-1]["reason"] == "probes_succeeded"
    storm = summary["by_scene"]["storm"]
    # While open, calls are refused without reaching the upstream: most of the storm.
    assert storm["rejected_by_breaker"] > storm["statuses"].get("503", 0)
    assert storm["errors_by_type"]["CircuitOpenError"] > 0
    assert summary["by_scene"]["healed"]["statuses"]["200"] > 0
    if "retry" in installed_plugins():
        assert summary["settings"]["retry"] == dict(_scenes.RETRY)
        assert storm["retries"] > 0  # the 503s before the trip were retried


POLICY_SCENES = (
    Scene(name="ok", phase=phase("ok", 1, OK), description="fine"),
    Scene(
        name="down",
        phase=phase("down", 1, RESET),
        description="resets; the operator adds a degraded response",
        policy={"degraded": {"template": _scenes.DEGRADED_TEMPLATE}},
    ),
)


def test_the_operator_changes_the_policy_live_and_calls_see_it() -> None:
    out = io.StringIO()

    status = run_demo(
        duration=1.5, concurrency=4, as_json=True, out=out, scenes=POLICY_SCENES, fallback=False
    )

    assert status == 0
    summary = json.loads(out.getvalue())
    assert [c["origin"] for c in summary["config_changes"]] == ["python", "demo operator"]
    assert summary["by_scene"]["down"]["by_path"].get("degraded", 0) > 0
    assert summary["etcd"] is None


def test_with_etcd_the_policy_lives_in_etcd_and_changes_there() -> None:
    with start_blocking_portal() as portal:
        server = EtcdServer()
        portal.call(server.__aenter__)
        try:
            out = io.StringIO()
            status = run_demo(
                duration=1.5,
                concurrency=4,
                as_json=True,
                out=out,
                scenes=POLICY_SCENES,
                etcd=[server.url],
                fallback=False,
            )

            async def demo_keys() -> int:
                async with server.client() as etcd:
                    return len((await etcd.range("/healkit/", prefix=True)).kvs)

            left = portal.call(demo_keys)
        finally:
            portal.call(server.__aexit__, None, None, None)
    assert status == 0
    summary = json.loads(out.getvalue())
    assert summary["etcd"] == [server.url]
    first, change = summary["config_changes"]
    assert first["origin"].startswith(f"etcd {server.url}")
    assert "revision" in change["origin"]
    assert summary["by_scene"]["down"]["by_path"].get("degraded", 0) > 0
    assert left == 0  # the demo removed its key


def test_cli_demo_with_an_unreachable_etcd_fails_clearly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    address = refused_url()

    status = _cli.main(["demo", "--duration", "1", "--json", "--etcd", address])

    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert captured.err.startswith("healkit: no etcd endpoint could serve")


# -- the TLS scene ---------------------------------------------------------------------

TLS_SCENES = (
    Scene(name="before", phase=phase("before", 0.3, OK), description="A"),
    Scene(
        name="rotation",
        phase=phase("rotation", 0.4, OK),
        description="A -> B",
        rotate_client_certificate=True,
    ),
    Scene(name="after", phase=phase("after", 0.3, OK), description="B"),
)


@pytest.mark.skipif("tls" not in installed_plugins(), reason="healkit-tls not installed")
def test_the_client_certificate_is_rotated_mid_traffic_without_a_failure() -> None:
    out = io.StringIO()

    status = run_demo(
        duration=2, concurrency=4, as_json=True, out=out, scenes=TLS_SCENES, fallback=False
    )

    assert status == 0
    summary = json.loads(out.getvalue())
    tls = summary["tls"]
    a, b = (tls["certificates"][label] for label in ("A", "B"))
    assert (a, b) == ("CN=healkit demo client A", "CN=healkit demo client B")
    assert tls["ca"] == "CN=healkit demo CA"
    assert tls["rotations"] == 1
    (swap,) = tls["swaps"]
    assert (swap["scene"], swap["from"], swap["to"], swap["trigger"]) == ("rotation", a, b, "watch")
    assert swap["at_s"] <= swap["applied_at_s"]
    # Every call answered 200: none failed during the rotation, nor anywhere else.
    assert tls["failures_during_rotation"] == 0
    assert tls["calls_during_rotation"] == summary["by_scene"]["rotation"]["requests"] > 0
    assert summary["errors"] == 0
    assert set(summary["statuses"]) == {"200"}
    # The upstream saw A before the rotation; connections made after it present B only.
    by_scene = tls["presented_by_scene"]
    assert set(by_scene["before"]) == {a}
    assert set(by_scene["rotation"]) == {a, b}
    assert set(by_scene["after"]) == {b}
    assert tls["presented_after_rotation"][b] > 0
    assert sum(tls["presented"].values()) == summary["requests"]
    assert tls["rejected_material"] == 0
    # The service used HTTPS and the generated files, which are gone now.
    assert summary["settings"]["tls"]["reload_interval"] == _pki.TLS_RELOAD_INTERVAL
    assert not Path(summary["settings"]["tls"]["ca_file"]).exists()


def test_without_the_tls_plugin_the_demo_says_it_runs_plain_http(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEALKIT_BLOCK_PLUGINS", "tls")
    out = io.StringIO()

    status = run_demo(
        duration=0.6, concurrency=2, as_json=False, out=out, scenes=TLS_SCENES, fallback=False
    )

    assert status == 0
    text = out.getvalue()
    assert "healkit-tls is not installed: the upstream speaks plain HTTP" in text
    assert "scene 2/3 rotation: the upstream answers 200 (healkit-tls is not installed" in text
    summary_text = " ".join(text.split())  # the summary table wraps long cells
    assert "healkit-tls is not installed: plain HTTP, no certificate rotation" in summary_text
    assert "replaced A -> B" not in text

    json_out = io.StringIO()
    run_demo(
        duration=0.3, concurrency=2, as_json=True, out=json_out, scenes=TLS_SCENES, fallback=False
    )
    summary = json.loads(json_out.getvalue())
    assert summary["tls"] is None
    assert "tls" not in summary["settings"]


# -- --trace ---------------------------------------------------------------------------

TRACE_SCENES = (
    Scene(
        name="flaky",
        phase=phase("flaky", 1, FaultSpec(kind="status"), OK, OK, OK),
        description="1 response in 4 is a 503",
    ),
)
needs_tracing = pytest.mark.skipif(
    not {"tracing", "retry"} <= installed_plugins(), reason="healkit-tracing/retry not installed"
)


@needs_tracing
def test_trace_summary_counts_spans_and_shows_a_retried_call() -> None:
    out = io.StringIO()

    status = run_demo(
        duration=1.0,
        concurrency=4,
        as_json=True,
        out=out,
        scenes=TRACE_SCENES,
        trace=True,
        fallback=False,
    )

    assert status == 0
    summary = json.loads(out.getvalue())
    trace = summary["trace"]
    assert trace["calls"] == summary["requests"]
    rows = trace["by_name_path_error"]
    assert sum(row["count"] for row in rows) == trace["spans"]
    counts = {(row["name"], row["path"], row["error_type"]): row["count"] for row in rows}
    assert counts["GET", "primary", "-"] > 0
    assert counts["GET", "primary", "503"] > 0
    assert counts["GET", "retry", "-"] > 0
    # One span per attempt: as many as the calls' first attempts plus their retries.
    attempt_spans = sum(n for (name, _, _), n in counts.items() if name == "GET")
    assert attempt_spans == summary["requests"] + summary["retries"]
    # The sample: a call answered after a retry, its attempts sibling spans in one trace.
    sample = trace["sample_retried_call"]
    assert re.fullmatch(r"[0-9a-f]{32}", sample["trace_id"])
    assert sample["outcome"] == "retry"
    spans = sample["spans"]
    assert sample["attempts"] == len(spans) >= 2
    assert [span["attempt"] for span in spans] == list(range(1, len(spans) + 1))
    assert [span["resend_count"] for span in spans] == [None, *range(1, len(spans))]
    assert [span["path"] for span in spans] == ["primary"] + ["retry"] * (len(spans) - 1)
    assert (spans[0]["status_code"], spans[0]["error_type"]) == (503, "503")
    assert (spans[-1]["status_code"], spans[-1]["error_type"]) == (200, None)
    # Metrics: the duration histogram and healkit's counters.
    duration = trace["http_client_request_duration"]
    assert duration["requests"] == attempt_spans
    assert 0 < duration["p50_ms"] <= duration["p99_ms"] <= duration["max_ms"]
    assert trace["counters"]["healkit.attempts"] == attempt_spans
    assert trace["counters"]["healkit.retries"] == summary["retries"]


@needs_tracing
def test_trace_summary_in_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    status = _cli.main(["demo", "--duration", "0.5", "--concurrency", "2", "--trace"])

    captured = capsys.readouterr()
    assert status == 0
    assert re.search(r"trace: [\d,]+ spans in [\d,]+ calls", captured.out)
    assert "http.client.request.duration" in captured.out
    assert captured.err == ""


def test_cli_trace_without_the_tracing_plugin_fails_clearly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEALKIT_BLOCK_PLUGINS", "tracing")

    status = _cli.main(["demo", "--duration", "1", "--json", "--trace"])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("healkit: --trace")


def test_histogram_quantile_interpolates_within_a_bucket() -> None:
    bounds = (0.005, 0.01, 0.025)
    # 10 values in (0.005, 0.01], 10 in (0.01, 0.025]; smallest 0.006, largest 0.02.
    buckets = (0, 10, 10, 0)
    assert _telemetry.histogram_quantile(bounds, buckets, 0.5, 0.006, 0.02) == 0.01
    assert math.isclose(_telemetry.histogram_quantile(bounds, buckets, 0.25, 0.006, 0.02), 0.008)
    assert _telemetry.histogram_quantile(bounds, buckets, 1.0, 0.006, 0.02) == 0.02
    assert _telemetry.histogram_quantile(bounds, (0, 0, 0, 0), 0.5, math.inf, -math.inf) is None
