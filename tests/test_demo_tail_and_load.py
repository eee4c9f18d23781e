"""``healkit demo``'s slow-tail and overload scenes: figures measured from the calls made.

The slow tail: an upstream where 1 answer in 20 takes 500 ms longer, played
without hedging, then with the ``hedge`` section on. Hedges sent and won are
counted from each call's attempt records, so any hedging plugin shows; here a
small real one (:class:`FixedDelayHedging`: a fixed delay for idempotent calls,
one hedge at most) stands in for healkit-hedge. Without a plugin that claims the
``hedge`` section, the scene says hedging is not installed and counts none.

The overload: an upstream that serves a few requests at once and queues the
rest (the fault server's queue), with the limit plugin's adaptive concurrency
limit on: the limit moves, and the attempts it refuses are answered by the
degraded response.

Real upstreams on loopback, the real client and plugins; the demo calls
``asyncio.run`` itself, so these are synchronous tests. No assertion depends on
timing beyond "something happened".
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from typing import Any, Final

import msgspec
import pytest

import healkit
from healkit._demo import scenes as _scenes
from healkit._demo.app import run_demo
from healkit._demo.scenes import SCENES, Scene
from healkit._simulate import FaultSpec, Phase, Upstream
from healkit.hookspecs import hookimpl
from tests.test_demo import installed_plugins

# -- a real hedging plugin, the smallest that claims the ``hedge`` section ----------------


class HedgeSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``hedge`` section, as healkit-hedge declares it (the fields the demo sets, and more).

    On by default here: the demo must turn hedging off outside its scene
    whatever the plugin's defaults are.
    """

    enabled: bool = True
    delay: float | None = None
    percentile: float = 95.0
    min_delay: float = 0.0
    max_hedges: int = 1
    budget_ratio: float = 0.1


HEDGE_SECTION: Final = healkit.ConfigSection("hedge", HedgeSettings, doc="hedging (test plugin)")


class FixedDelayHedging:
    """Hedge the first attempt of an idempotent, replayable call after the section's ``delay``."""

    healkit_name = "hedge"

    @hookimpl
    def healkit_config_sections(self) -> Sequence[healkit.ConfigSection[Any]]:
        return (HEDGE_SECTION,)

    @hookimpl
    def healkit_hedge_delay(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> float | None:
        settings = call.policy.section(HEDGE_SECTION)
        if not (settings.enabled and settings.delay and call.idempotent and call.replayable):
            return None
        return settings.delay if attempt.number == 1 else None


# -- the scenes, short ---------------------------------------------------------------------


def scene(name: str) -> Scene:
    return next(played for played in SCENES if played.name == name)


SLOW_TAIL = scene("slow tail").phase.primary
"""The default script's: 1 answer in 20 is 500 ms late."""

TAIL_SCENES = (
    Scene(
        name="slow tail",
        phase=Phase(name="slow-tail", duration=1, primary=SLOW_TAIL),
        description="slow",
    ),
    Scene(
        name="slow tail, hedged",
        phase=Phase(name="slow-tail-hedged", duration=1, primary=SLOW_TAIL),
        description="hedged",
        settings={"hedge": _scenes.HEDGE},
    ),
)


def run(scenes: Sequence[Scene], duration: float, **kwargs: Any) -> dict[str, Any]:
    out = io.StringIO()
    status = run_demo(
        duration=duration,
        concurrency=8,
        as_json=True,
        out=out,
        scenes=scenes,
        fallback=False,
        **kwargs,
    )
    assert status == 0
    summary: dict[str, Any] = json.loads(out.getvalue())
    assert summary["lost"] == 0
    return summary


def test_the_default_script_has_the_slow_tail_and_the_overload() -> None:
    hedged, overload = scene("slow tail, hedged"), scene("overload")
    assert scene("slow tail").phase.primary == hedged.phase.primary
    faults = hedged.phase.primary.faults
    slow = [spec for spec in faults if spec.latency >= 0.5]
    assert len(faults) == 20
    assert len(slow) == 1  # 5 %
    assert hedged.settings == {"hedge": _scenes.HEDGE}
    assert overload.settings is not None
    assert overload.settings["limit"] == _scenes.LIMIT
    upstream = overload.phase.primary
    assert upstream.capacity is not None
    assert upstream.queue > 0  # a line, not shedding
    assert _scenes.LIMIT["concurrency"] < upstream.capacity  # the limit finds it from below


def test_hedging_cuts_the_slow_tail_and_the_hedges_are_counted_from_the_calls() -> None:
    summary = run(TAIL_SCENES, 2.0, plugins=[FixedDelayHedging()])

    assert "hedge" in summary["plugins"]
    assert summary["settings"]["hedge"] == dict(_scenes.HEDGE_OFF)  # off outside its scene
    before, hedged = summary["by_scene"]["slow tail"], summary["by_scene"]["slow tail, hedged"]
    assert before["hedges"] == 0  # hedging is on for the hedged scene only
    assert hedged["hedges"] > 0
    assert 0 < hedged["hedges_won"] <= hedged["hedges"]
    assert summary["hedges"] == before["hedges"] + hedged["hedges"]
    # A hedge is not a retry: the retries are the attempts after a failure.
    assert hedged["retries"] == 0
    figures = summary["scene_figures"]["slow tail, hedged"]["hedging"]
    assert figures == {
        "installed": True,
        "before_scene": "slow tail",
        "p99_before_ms": before["p99_ms"],
        "p99_ms": hedged["p99_ms"],
        "hedges_sent": hedged["hedges"],
        "hedges_won": hedged["hedges_won"],
    }
    # The slow answers are 500 ms late: unhedged they are the p99; a hedge answers first.
    assert before["p99_ms"] >= 500
    assert hedged["p99_ms"] < before["p99_ms"]
    assert [change["origin"] for change in summary["config_changes"]] == [
        "python",
        "demo operator",
    ]


def test_without_a_hedging_plugin_the_scene_says_so_and_counts_no_hedge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEALKIT_BLOCK_PLUGINS", "hedge")  # as if healkit-hedge were not installed
    out = io.StringIO()

    status = run_demo(
        duration=1.0, concurrency=4, as_json=False, out=out, scenes=TAIL_SCENES, fallback=False
    )

    assert status == 0
    text = " ".join(out.getvalue().split())  # the summary table wraps long cells
    assert _scenes.NOT_INSTALLED["hedge"] in text
    assert "hedges sent" not in text
    summary = run(TAIL_SCENES, 1.0)
    assert "hedge" not in summary["settings"]
    assert summary["hedges"] == summary["hedges_won"] == 0
    figures = summary["scene_figures"]["slow tail, hedged"]["hedging"]
    assert (figures["installed"], figures["hedges_sent"]) == (False, 0)
    assert figures["p99_ms"] is not None  # the p99 is shown all the same
    # No plugin claims the section: it is never written, no configuration is rejected.
    assert [change["origin"] for change in summary["config_changes"]] == ["python"]


OVERLOAD_SCENES = (
    Scene(
        name="overload",
        phase=Phase(
            name="overload",
            duration=1,
            primary=Upstream(
                faults=(FaultSpec(latency=0.02),), order="cycle", capacity=3, queue=100
            ),
        ),
        description="3 at once, the rest queued",
        settings={
            "limit": {"concurrency": 1, "adaptive": True},
            "degraded": {"template": _scenes.DEGRADED_TEMPLATE},
        },
    ),
)


@pytest.mark.skipif("limit" not in installed_plugins(), reason="healkit-limit not installed")
def test_the_adaptive_limit_moves_and_refusals_are_answered_degraded() -> None:
    summary = run(OVERLOAD_SCENES, 1.5)

    assert summary["settings"].get("limit") is None  # on for the scene only, not run-wide
    overload = summary["scene_figures"]["overload"]["overload"]
    assert overload["installed"] is True
    assert overload["capacity"] == 3
    limit = overload["limit"]
    assert limit["samples"] > 0
    assert limit["max"] > 1  # it grew from 1, the limit it started from
    tally = summary["by_scene"]["overload"]
    assert overload["refused"] == tally["refused"] > 0
    assert overload["refused_degraded"] == tally["refused_degraded"] > 0
    assert tally["by_path"]["degraded"] >= overload["refused_degraded"]
    assert overload["goodput_per_s"] > 0
    assert overload["answered_p99_ms"] > 0
    assert summary["refused_degraded"] == overload["refused_degraded"]


def test_without_the_limit_plugin_the_overload_scene_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEALKIT_BLOCK_PLUGINS", "limit")

    summary = run(OVERLOAD_SCENES, 0.6)

    overload = summary["scene_figures"]["overload"]["overload"]
    assert overload["installed"] is False
    assert overload["refused"] == 0
    assert overload["limit"]["samples"] == 0
    assert overload["goodput_per_s"] > 0


class Terminal(io.StringIO):
    """Output that says it is a terminal: the demo draws its live view on it."""

    def isatty(self) -> bool:
        return True


@pytest.mark.skipif("limit" not in installed_plugins(), reason="healkit-limit not installed")
def test_the_default_scenes_play_live_with_their_figures() -> None:
    played = tuple(scene(name) for name in ("slow tail", "slow tail, hedged", "overload"))
    out = Terminal()

    status = run_demo(
        duration=3.3,
        concurrency=16,
        as_json=False,
        out=out,
        scenes=played,
        fallback=False,
        plugins=[FixedDelayHedging()],
    )

    assert status == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # rich's colors and cursor
    frames, summary = text.split("healkit demo: ", 1)
    # Live: each scene's row, while it plays.
    assert re.search(r"hedging +p99 [\d.]+ m?s \(before, in 'slow tail'", frames)
    assert re.search(r"overload +limit now \d+ \(upstream capacity 6\), in flight \d+", frames)
    # The summary: hedges were sent and won, the limit moved, refusals were answered.
    summary = " ".join(summary.split())
    hedges = re.search(r"slow tail, hedged: p99 .*?; ([\d,]+) hedges sent, ([\d,]+) won", summary)
    assert hedges is not None
    assert int(hedges[1].replace(",", "")) > 0
    limit = re.search(r"limit \d+ -> \d+ \(between \d+ and (\d+); upstream capacity 6\)", summary)
    assert limit is not None
    assert int(limit[1]) > _scenes.LIMIT["concurrency"]  # it grew from where it started
    refused = re.search(r"([\d,]+) refusals answered degraded", summary)
    assert refused is not None
    assert int(refused[1].replace(",", "")) > 0
