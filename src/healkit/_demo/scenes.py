"""What the demo plays: the scenes, as data, and the service's configuration.

A scene has two parts, kept apart on purpose:

- :class:`Upstreams`: what the fault servers answer (the primary upstream's
  faults, cycled request by request; whether its health endpoint fails too;
  what the fallback upstream answers). This part knows nothing of the demo: it
  is a fault scenario that scripts two :class:`healkit.testing.FaultServer`.
- the rest of :class:`Scene`: its name and share of the run, what the demo
  shows while it plays, and what the demo's operator does during it (a live
  policy change, through etcd with ``--etcd``; a client certificate rotation).

The configuration of the demo's service is here too: the plugins found
installed get short settings fit for a demo that lasts seconds
(:data:`TIMEOUTS`, :data:`BREAKER`, :data:`RETRY`, :data:`ROUTING`); the others
keep their defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, final

from healkit.testing import Fault, FaultServer

__all__ = [
    "BREAKER",
    "DEGRADED_TEMPLATE",
    "HEALTH_PATH",
    "PATH",
    "RETRY",
    "ROUTING",
    "SCENES",
    "SCRIPT_LENGTH",
    "SERVICE",
    "TIMEOUTS",
    "Scene",
    "Upstreams",
    "check_scenes",
    "plugin_settings",
    "service_document",
]

SERVICE: Final = "demo"
"""The service name the demo's client calls."""
PATH: Final = "/api"
"""The upstream path every call requests."""
HEALTH_PATH: Final = "/health"
"""The path the health probes request on each upstream."""
SCRIPT_LENGTH: Final = 4096
"""Faults scripted at a time; the script is renewed when half of it is used."""
FRACTION_TOLERANCE: Final = 1e-6

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
    "probe": {
        "path": HEALTH_PATH,
        "interval": 0.2,
        "healthy_threshold": 3,
        "unhealthy_threshold": 2,
    },
}
"""The ``routing`` section (next to the fallback group) when the demo runs a fallback upstream.

Short ejections and probes every 0.2 s, so that failover and switch-back
happen within a scene of a few seconds: 2 failed probes take an upstream down,
3 good ones in a row bring it back (the hysteresis against flapping)."""
DEGRADED_TEMPLATE: Final[Mapping[str, Any]] = {
    "status": 503,
    "headers": {"Retry-After": "${retry_after}"},
    "json": {"error": "the service is degraded", "service": "${service}", "cause": "${error_type}"},
}
"""The degraded response the operator adds during the outage."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Upstreams:
    """What the upstreams answer during a scene: the fault part, without the demo's.

    Attributes:
        faults: what the primary answers on the demo's path, cycled request by request.
        core_faults: what it answers instead when no plugin sets time limits
            (the core's built-in limits are long: a hang would stall callers for
            tens of seconds), or ``None`` to use ``faults`` in both cases.
        down: the primary's other paths, its health endpoint included, answer
            with the first fault too (so that health probes take it down);
            otherwise they answer 200.
        fallback: what the fallback upstream answers (every path, its health
            endpoint included); ``None`` when there is no fallback upstream.

    """

    faults: tuple[Fault, ...]
    core_faults: tuple[Fault, ...] | None = None
    down: bool = False
    fallback: Fault | None = None

    def __post_init__(self) -> None:
        """Reject upstreams that cannot be played."""
        if not self.faults or self.core_faults == ():
            raise ValueError("the primary upstream needs at least one fault")

    def play(self, *, timeouts: bool) -> tuple[Fault, ...]:
        """Return the primary's faults, with or without short time limits."""
        if timeouts or self.core_faults is None:
            return self.faults
        return self.core_faults

    def script(self, primary: FaultServer, fallback: FaultServer | None, *, timeouts: bool) -> None:
        """Script the servers from the start of the cycle.

        The servers record every request; they are reset first, which keeps
        their memory bounded however long they play.
        """
        faults = self.play(timeouts=timeouts)
        repeat = max(1, SCRIPT_LENGTH // len(faults))
        primary.reset()
        primary.script(PATH, *(faults * repeat), then=faults[0])
        primary.set_default(faults[0] if self.down else Fault.ok())
        if fallback is not None and self.fallback is not None:
            fallback.reset()
            fallback.set_default(self.fallback)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Scene:
    """One phase of the demo: what the upstreams do, for how long, and what the demo adds.

    Attributes:
        name: a short name, shown live and used as a key of the summary.
        fraction: the share of the demo's duration; a table's fractions sum to 1.
        upstreams: what the fault servers answer.
        description: one line shown while the scene plays.
        core_description: the description when ``upstreams.core_faults`` are played.
        policy: service sections the operator adds to the demo service's
            document when the scene starts (a live policy change, through
            etcd with ``--etcd``); they stay for the following scenes.
        rotate_client_certificate: halfway through the scene, replace the
            client certificate files with the next certificate (A by B, then
            B by A...) in one atomic rename. Only with the tls plugin installed;
            without it the scene plays its faults over plain HTTP.

    """

    name: str
    fraction: float
    upstreams: Upstreams
    description: str
    core_description: str | None = None
    policy: Mapping[str, Any] | None = None
    rotate_client_certificate: bool = False

    def __post_init__(self) -> None:
        """Reject a scene that cannot be played."""
        if not self.name:
            raise ValueError("a scene needs a name")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"scene {self.name!r}: fraction must be in (0, 1]")

    def describe(self, *, timeouts: bool) -> str:
        """Return the description that goes with the faults played."""
        if timeouts or self.upstreams.core_faults is None:
            return self.description
        return self.core_description or self.description


def check_scenes(scenes: Sequence[Scene]) -> None:
    """Reject a table that cannot be played.

    Raises:
        ValueError: no scene, fractions that do not sum to 1, or a fallback
            upstream given in some scenes only.

    """
    if not scenes or not math.isclose(
        sum(s.fraction for s in scenes), 1.0, abs_tol=FRACTION_TOLERANCE
    ):
        raise ValueError("the scenes' fractions must sum to 1")
    if len({scene.upstreams.fallback is None for scene in scenes}) > 1:
        raise ValueError("give the fallback upstream's faults in every scene or in none")


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
    if tls is not None:
        settings["tls"] = dict(tls)
    return settings


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
        policy: the sections the operator added so far.

    """
    service: dict[str, Any] = {"endpoints": [upstream]}
    if fallback:
        service["routing"] = {"fallback_groups": [[fallback]], **ROUTING}
    return {**service, **settings, **policy}


_HEALTHY: Final = (
    Fault.ok(latency=0.002),
    Fault.ok(latency=0.004),
    Fault.ok(latency=0.003),
    Fault.ok(latency=0.008),
    Fault.ok(latency=0.005),
)
_STALL: Final = Fault.latency(1.5)
_TRICKLE: Final = Fault.slow_body(6, 0.25, chunk=b"x" * 256)
_UNAVAILABLE: Final = Fault.status(
    503, body=b"upstream overloaded", headers={"Retry-After": "1"}, latency=0.001
)
_FAILING: Final = Fault.status(503, body=b"upstream failing", latency=0.001)
_OK: Final = Fault.ok()
_RESETS: Final = Fault.reset()

SCENES: Final[tuple[Scene, ...]] = (
    Scene(
        name="healthy",
        fraction=0.12,
        upstreams=Upstreams(faults=_HEALTHY, fallback=_OK),
        description="the primary answers 200 in 2-8 ms",
    ),
    Scene(
        name="latency spikes",
        fraction=0.12,
        upstreams=Upstreams(
            faults=(*(_HEALTHY * 3)[:9], _STALL, *(_HEALTHY * 2)[:9], _TRICKLE), fallback=_OK
        ),
        description="1 response in 10 stalls 1.5 s, 1 in 20 trickles its body over 1.5 s",
    ),
    Scene(
        name="503 burst",
        fraction=0.08,
        upstreams=Upstreams(faults=(*(_UNAVAILABLE,) * 3, *_HEALTHY, *_HEALTHY[:2]), fallback=_OK),
        description="3 responses in 10 are 503 Service Unavailable (Retry-After: 1)",
    ),
    Scene(
        name="503 storm",
        fraction=0.12,
        upstreams=Upstreams(faults=(_FAILING,), down=True, fallback=_OK),
        description=(
            "the primary answers 503 to everything, its health check too: it is ejected,"
            " probed down, and traffic fails over to the fallback"
        ),
    ),
    Scene(
        name="healed",
        fraction=0.10,
        upstreams=Upstreams(faults=_HEALTHY, fallback=_OK),
        description="the primary answers again: good probes switch traffic back to it",
    ),
    Scene(
        name="outage",
        fraction=0.12,
        upstreams=Upstreams(
            faults=(Fault.blackhole(),), core_faults=(_RESETS,), down=True, fallback=_OK
        ),
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
        fraction=0.10,
        upstreams=Upstreams(faults=(_RESETS,), down=True, fallback=_RESETS),
        description="the primary and the fallback reset every connection: degraded responses",
    ),
    Scene(
        name="recovery",
        fraction=0.14,
        upstreams=Upstreams(faults=_HEALTHY, fallback=_OK),
        description="both are healthy again: probes switch traffic back to the primary",
    ),
    Scene(
        name="certificate rotation",
        fraction=0.10,
        upstreams=Upstreams(faults=_HEALTHY, fallback=_OK),
        description=(
            "halfway through, the client certificate files are replaced A -> B in one atomic"
            " rename: new connections present B, no call fails"
        ),
        rotate_client_certificate=True,
    ),
)
"""The default script, played in order."""
