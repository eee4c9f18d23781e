"""What the demo plays: the scenes, as data, and the service's configuration.

A scene has two parts, kept apart on purpose:

- its :class:`~healkit._simulate.Phase`: what the upstreams do, written in the
  scenario model of ``healkit config simulate`` (one definition of "what an
  upstream does" for both commands): what the primary upstream answers, what
  the fallback upstream answers, what their health endpoints answer, and for
  how long. The demo scripts its two :class:`healkit.testing.FaultServer` with
  :meth:`Upstream.apply <healkit._simulate.Upstream.apply>`. Two scenes are
  the phases of built-in scenarios (``503-storm``, ``outage-recovery``), so
  the demo shows what ``healkit config simulate`` measures.
- the rest of :class:`Scene`: its name, what the demo shows while it plays,
  what the primary does instead when no plugin sets short time limits, and
  what the demo's operator does during it (a live policy change, through etcd
  with ``--etcd``; plugin settings in force for the scene only, such as
  hedging or an adaptive concurrency limit; a client certificate rotation).

The configuration of the demo's service is here too: the plugins found
installed get short settings fit for a demo that lasts seconds
(:data:`TIMEOUTS`, :data:`BREAKER`, :data:`RETRY`, :data:`ROUTING`); the others
keep their defaults. :data:`HEDGE` and :data:`LIMIT` are turned on by the
scenes that show them, when a plugin claims their section (hedging is off
otherwise: :data:`HEDGE_OFF`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, final

from msgspec.structs import replace

from healkit._simulate import BUILTIN_SCENARIOS, FaultSpec, Phase, Upstream

__all__ = [
    "BREAKER",
    "DEGRADED_TEMPLATE",
    "HEALTH_PATH",
    "HEDGE",
    "HEDGE_OFF",
    "LIMIT",
    "NOT_INSTALLED",
    "PATH",
    "RETRY",
    "ROUTING",
    "SCENES",
    "SEED",
    "SERVICE",
    "TIMEOUTS",
    "Scene",
    "check_scenes",
    "plugin_settings",
    "scene_ends",
    "scene_settings",
    "service_document",
]

SERVICE: Final = "demo"
"""The service name the demo's client calls."""
PATH: Final = "/api"
"""The upstream path every call requests."""
HEALTH_PATH: Final = "/health"
"""The path the health probes request on each upstream."""
SEED: Final = 17
"""The seed of the upstreams' random mixes (the default scenes cycle through their faults)."""

TIMEOUTS: Final[Mapping[str, float]] = {
    "connect": 0.5,
    "read": 0.8,
    "attempt": 1.0,
    "deadline": 2.0,
}
"""The ``timeout`` section used when the timeout plugin is installed.

``read`` < ``attempt`` so that a stalled response is a ``ReadTimeout`` and a
body that trickles in (each gap shorter than ``read``) an ``AttemptTimeout``.
"""
BREAKER: Final[Mapping[str, Any]] = {
    "window_size": 40,
    "open_duration": 0.5,
    "open_duration_max": 1.0,
}
"""The ``breaker`` section used when the breaker plugin is installed.

A short window and short open durations, so that a breaker tripped by the 503
storm is seen refusing calls, probing and closing within a demo of a few
seconds; the other settings are the plugin's defaults (it trips when half of
the window failed, or on 10 failures in a row).
"""
RETRY: Final[Mapping[str, Any]] = {
    "retry_on": ["connect", "connection_lost", "timeout", "status", "call_error"],
}
"""The ``retry`` section used when the retry and breaker plugins are both installed.

``circuit_open`` is left out: the demo's callers fail fast on an open breaker
instead of waiting for it to admit a probe (the retry plugin's default), so the
speed of a refusal shows.
"""
ROUTING: Final[Mapping[str, Any]] = {
    "eject_time": 1.0,
    "eject_time_max": 2.0,
    "eject_decay": 1.0,
    "probe": {
        "path": HEALTH_PATH,
        "interval": 0.2,
        "healthy_threshold": 3,
        "unhealthy_threshold": 2,
    },
}
"""The ``routing`` section (next to the fallback group) when the demo runs a fallback upstream.

Short ejections and probes every 0.2 s, so that failover and switch-back
happen within a scene of a few seconds: 3 failures in a row eject an upstream
for 1 s, 2 s if it fails again at once (an ejection is forgotten after 1 s
without one: each scene starts about afresh); 2 failed probes take it down, 3
good ones in a row bring it back (the hysteresis against flapping). Probes
that never failed end no ejection: in the 503 burst the health check stays up,
so the primary's ejections run their time and it is tried again once, not at
every probe."""
DEGRADED_TEMPLATE: Final[Mapping[str, Any]] = {
    "status": 503,
    "headers": {"Retry-After": "${retry_after}"},
    "json": {"error": "the service is degraded", "service": "${service}", "cause": "${error_type}"},
}
"""The degraded response the operator adds during the outage."""
HEDGE: Final[Mapping[str, Any]] = {"enabled": True, "delay": 0.05}
"""The ``hedge`` section during the hedged slow-tail scene, when a plugin claims it.

A fixed delay of 50 ms: six times the healthy answers' slowest (8 ms), a
tenth of the slow answers' 500 ms. A call still unanswered then gets a second
attempt, and the first answer wins; the plugin's budget (its defaults) bounds
the extra load.
"""
HEDGE_OFF: Final[Mapping[str, Any]] = {"enabled": False}
"""The ``hedge`` section outside the hedged scene, when a plugin claims it.

Hedging stays off whatever the plugin's defaults, so that the slow tail is
seen unhedged first, and the other scenes show what they show without it.
"""
LIMIT: Final[Mapping[str, Any]] = {"concurrency": 3, "adaptive": True}
"""The ``limit`` section during the overload scene, when the limit plugin is installed.

The adaptive concurrency limit starts from 3 attempts at once, below the
overloaded upstream's capacity (6), so that it measures the upstream unloaded
and then finds its capacity, growing while the latency stays within the
plugin's tolerance. The other settings are the plugin's defaults: no queue, so
an attempt beyond the limit is refused at once, and the degraded response
answers for it. (Started above the capacity, with the demo's callers keeping
the upstream's line full, the limit would never see the unloaded latency
within a scene of seconds: it measures it again every ``min_rtt_window``, 30 s.)
"""
NOT_INSTALLED: Final[Mapping[str, str]] = {
    "hedge": "hedging is not installed (no plugin claims the hedge section): no hedges",
    "limit": "healkit-limit is not installed: no concurrency limit, the upstream's line grows",
}
"""What a scene says when no installed plugin claims a section of its ``settings``."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Scene:
    """One scene of the demo: what the upstreams do, for how long, and what the demo adds.

    Attributes:
        name: a short name, shown live and used as a key of the summary.
        phase: what the upstreams do, in the scenario model of ``healkit config
            simulate``: ``primary`` is what the primary upstream answers (its
            health endpoint answers per ``probes``: ``same`` takes it down,
            ``ok`` keeps it up), ``fallback`` what the fallback upstream answers.
            Its ``duration`` is the scene's share of the run: the scenes share
            the run's duration in proportion to their phases' durations (those
            of :data:`SCENES` are seconds of the default 36 s run).
        description: one line shown while the scene plays.
        core_primary: what the primary answers instead when no plugin sets
            time limits (the core's built-in limits are long: a hang would
            stall callers for tens of seconds), or ``None`` to play
            ``phase.primary`` in both cases.
        core_description: the description when ``core_primary`` is played.
        policy: service sections the operator adds to the demo service's
            document when the scene starts (a live policy change, through
            etcd with ``--etcd``); they stay for the following scenes.
        settings: service sections in force only while the scene plays: the
            operator adds them when it starts and takes them out when it ends
            (live policy changes, as ``policy``). A section that no installed
            plugin claims is left out, and the scene says so
            (:data:`NOT_INSTALLED`): it plays without it.
        rotate_client_certificate: halfway through the scene, replace the
            client certificate files with the next certificate (A by B, then
            B by A...) in one atomic rename. Only with the tls plugin installed;
            without it the scene plays its faults over plain HTTP.

    """

    name: str
    phase: Phase
    description: str
    core_primary: Upstream | None = None
    core_description: str | None = None
    policy: Mapping[str, Any] | None = None
    settings: Mapping[str, Mapping[str, Any]] | None = None
    rotate_client_certificate: bool = False

    def __post_init__(self) -> None:
        """Reject a scene that cannot be played."""
        if not self.name:
            raise ValueError("a scene needs a name")
        if not (math.isfinite(self.phase.duration) and self.phase.duration > 0):
            raise ValueError(f"scene {self.name!r}: its phase's duration must be > 0 seconds")

    def primary(self, *, timeouts: bool) -> Upstream:
        """Return what the primary upstream does, with or without short time limits."""
        if timeouts or self.core_primary is None:
            return self.phase.primary
        return self.core_primary

    def describe(self, *, timeouts: bool) -> str:
        """Return the description that goes with the primary played."""
        if timeouts or self.core_primary is None:
            return self.description
        return self.core_description or self.description


def check_scenes(scenes: Sequence[Scene]) -> None:
    """Reject a table that cannot be played.

    Raises:
        ValueError: no scene.

    """
    if not scenes:
        raise ValueError("the scene table must have at least one scene")


def scene_ends(scenes: Sequence[Scene], duration: float) -> list[float]:
    """Return the second of a run of ``duration`` seconds at which each scene ends.

    The scenes share the run in proportion to their phases' durations; the
    last one ends at ``duration``.
    """
    total = sum(scene.phase.duration for scene in scenes)
    ends = [
        duration * end / total for end in itertools.accumulate(s.phase.duration for s in scenes)
    ]
    ends[-1] = duration
    return ends


def plugin_settings(
    sections: frozenset[str], tls: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """Return the plugin sections of the demo's service, for the plugins installed.

    Args:
        sections: the configuration sections of the installed plugins.
        tls: the ``tls`` section, when the demo made certificates.

    """
    settings: dict[str, dict[str, Any]] = {}
    if "timeout" in sections:
        settings["timeout"] = dict(TIMEOUTS)
    if "breaker" in sections:
        settings["breaker"] = dict(BREAKER)
        if "retry" in sections:
            settings["retry"] = dict(RETRY)
    if "hedge" in sections:
        settings["hedge"] = dict(HEDGE_OFF)
    if tls is not None:
        settings["tls"] = dict(tls)
    return settings


def scene_settings(scene: Scene, sections: frozenset[str]) -> dict[str, dict[str, Any]]:
    """Return the scene's own sections that an installed plugin claims (see ``Scene.settings``).

    Args:
        scene: the scene.
        sections: the configuration sections of the installed plugins.

    """
    return {
        name: dict(values) for name, values in (scene.settings or {}).items() if name in sections
    }


def service_document(
    upstream: str,
    fallback: str,
    settings: Mapping[str, Any],
    policy: Mapping[str, Any],
) -> dict[str, Any]:
    """Return the demo service's document: its endpoints, plugin settings and the operator's policy.

    Args:
        upstream: the primary upstream's URL.
        fallback: the fallback upstream's URL (empty: none).
        settings: the plugin sections (:func:`plugin_settings`).
        policy: the sections the operator added so far, and those of the
            scene playing (:func:`scene_settings`).

    """
    service: dict[str, Any] = {"endpoints": [upstream]}
    if fallback:
        service["routing"] = {"fallback_groups": [[fallback]], **ROUTING}
    return {**service, **settings, **policy}


_HEALTHY: Final = tuple(
    FaultSpec(latency=latency) for latency in (0.002, 0.004, 0.003, 0.008, 0.005)
)
_STALL: Final = FaultSpec(latency=1.5)
_TRICKLE: Final = FaultSpec(kind="slow_body", chunks=6, chunk_delay=0.25)
_SLOW: Final = FaultSpec(latency=0.505)
"""A healthy answer 500 ms late: the slow tail."""
_SATURATED: Final = Upstream(
    faults=(FaultSpec(latency=0.03),), order="cycle", capacity=6, queue=1000, probes="ok"
)
"""Serves 6 requests at once, 30 ms each (200 a second), and makes the others wait in line."""
_UNAVAILABLE: Final = FaultSpec(
    kind="status",
    status=503,
    body="upstream overloaded",
    headers={"Retry-After": "1"},
    latency=0.001,
)


def _cycle(*faults: FaultSpec) -> Upstream:
    """Return an upstream that answers ``faults`` in order, over and over; its health check 200."""
    return Upstream(faults=faults, order="cycle", probes="ok")


_HEALTHY_UPSTREAM: Final = _cycle(*_HEALTHY)
_STORM: Final = BUILTIN_SCENARIOS["503-storm"].phases[1]
"""Every answer a 503, health checks included (the built-in scenario ``503-storm``)."""
_OUTAGE: Final = BUILTIN_SCENARIOS["outage-recovery"].phases[1]
"""Every connection reset, health checks included (the built-in scenario ``outage-recovery``)."""

SCENES: Final[tuple[Scene, ...]] = (
    Scene(
        name="healthy",
        phase=Phase(name="healthy", duration=3.0, primary=_HEALTHY_UPSTREAM),
        description="the primary answers 200 in 2-8 ms",
    ),
    Scene(
        name="latency spikes",
        phase=Phase(
            name="latency-spikes",
            duration=3.6,
            primary=_cycle(*(_HEALTHY * 3)[:9], _STALL, *(_HEALTHY * 2)[:9], _TRICKLE),
        ),
        description="1 response in 10 stalls 1.5 s, 1 in 20 trickles its body over 1.5 s",
    ),
    Scene(
        name="503 burst",
        phase=Phase(
            name="503-burst",
            duration=2.4,
            primary=_cycle(*(_UNAVAILABLE,) * 3, *_HEALTHY, *_HEALTHY[:2]),
        ),
        description=(
            "3 responses in 10 are 503 Service Unavailable (Retry-After: 1), 3 in a row:"
            " the primary is ejected, tried again when that ends, and ejected for twice as long"
        ),
    ),
    Scene(
        name="503 storm",
        phase=replace(_STORM, name="503-storm", duration=3.6),
        description=(
            "the primary answers 503 to everything, its health check too: it is ejected,"
            " probed down, and traffic fails over to the fallback"
        ),
    ),
    Scene(
        name="healed",
        phase=Phase(name="healed", duration=3.0, primary=_HEALTHY_UPSTREAM),
        description="the primary answers again: good probes switch traffic back to it",
    ),
    Scene(
        name="outage",
        phase=replace(
            _OUTAGE,
            duration=3.6,
            primary=Upstream(faults=(FaultSpec(kind="hang"),), order="cycle"),
        ),
        core_primary=_OUTAGE.primary,
        description=(
            "the primary hangs: traffic fails over to the fallback;"
            " the operator adds a degraded response"
        ),
        core_description=(
            "the primary resets every connection (no timeout plugin: no hang): traffic"
            " fails over to the fallback; the operator adds a degraded response"
        ),
        policy={"degraded": {"template": DEGRADED_TEMPLATE}},
    ),
    Scene(
        name="total outage",
        phase=replace(_OUTAGE, name="total-outage", duration=3.0, fallback=_OUTAGE.primary),
        description="the primary and the fallback reset every connection: degraded responses",
    ),
    Scene(
        name="recovery",
        phase=Phase(name="recovery", duration=4.2, primary=_HEALTHY_UPSTREAM),
        description="both are healthy again: probes switch traffic back to the primary",
    ),
    Scene(
        name="slow tail",
        phase=Phase(name="slow-tail", duration=1.8, primary=_cycle(*(_HEALTHY * 4)[:19], _SLOW)),
        description="1 answer in 20 takes 500 ms longer: the p99 is the slow answers'",
    ),
    Scene(
        name="slow tail, hedged",
        phase=Phase(
            name="slow-tail-hedged", duration=1.8, primary=_cycle(*(_HEALTHY * 4)[:19], _SLOW)
        ),
        description=(
            "the same upstream; the operator turns hedging on: a call unanswered after 50 ms"
            " gets a second attempt, the first answer wins"
        ),
        settings={"hedge": HEDGE},
    ),
    Scene(
        name="overload",
        phase=Phase(name="overload", duration=3.0, primary=_SATURATED),
        description=(
            "the primary serves 6 at once (30 ms each) and queues the rest; the operator turns"
            " the adaptive concurrency limit on: it finds the capacity, and the degraded"
            " response answers the refused calls"
        ),
        settings={"limit": LIMIT, "degraded": {"template": DEGRADED_TEMPLATE}},
    ),
    Scene(
        name="certificate rotation",
        phase=Phase(name="certificate-rotation", duration=3.0, primary=_HEALTHY_UPSTREAM),
        description=(
            "halfway through, the client certificate files are replaced A -> B in one atomic"
            " rename: new connections present B, no call fails"
        ),
        rotate_client_certificate=True,
    ),
)
"""The default script, played in order; it is a valid scenario of ``healkit config simulate``."""
