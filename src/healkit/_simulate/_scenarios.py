"""Scenarios: what simulated upstreams do, phase by phase, as data.

A scenario is a sequence of phases played on the simulated clock. In each
phase the service's primary endpoints and its fallback endpoints each answer
with a mix of faults (drawn at random from the scenario's seed, or cycled in
order), optionally with a capacity beyond which requests wait in a line or
are shed. Scenario
files (TOML, YAML or JSON) hold a ``scenarios`` table of them by name::

    [scenarios.flaky-gateway]
    description = "the gateway resets 1 connection in 10 for 20 seconds"
    seed = 7
    rate = 20.0

    [[scenarios.flaky-gateway.phases]]
    name = "flaky"
    duration = 20.0
    primary.faults = [{kind = "ok", weight = 9}, {kind = "reset", weight = 1}]

``docs/simulate.md`` is the reference of every key. The built-in scenarios
(:data:`BUILTIN_SCENARIOS`) are written in the same model, and so is the
upstream side of ``healkit demo``'s scenes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Final, Literal

import msgspec

from healkit._config.formats import load_file
from healkit._config.validate import check
from healkit._errors import ConfigError, ConfigIssue
from healkit.testing._faults import Fault, FaultMix, FaultServer

__all__ = [
    "BUILTIN_SCENARIOS",
    "MAX_CALLS",
    "FaultSpec",
    "Phase",
    "Scenario",
    "Upstream",
    "load_scenarios",
]

MAX_CALLS: Final = 20_000
"""The most calls one scenario may make (``rate`` times the phases' durations)."""

_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
ScenarioName = Annotated[str, msgspec.Meta(pattern=_NAME_PATTERN)]
"""A scenario or phase name: letters, digits, ``_`` and ``-``, at most 64 characters."""

Seconds = Annotated[float, msgspec.Meta(ge=0, le=3600)]
FaultKindName = Literal[
    "ok", "status", "reset", "reset_after_body", "hang", "truncated", "slow_body"
]
_HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")]
_HeaderValue = Annotated[str, msgspec.Meta(pattern=r"^[\t\x20-\x7e]{0,1024}$")]
_HAS_STATUS: Final = frozenset({"ok", "status", "truncated", "slow_body"})
_MAX_HEADERS: Final = 32
_MAX_BODY: Final = 65_536
_SLOW_CHUNK: Final = "x" * 256


class FaultSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One way an upstream answers a request, with its weight in a random mix.

    Attributes:
        kind: ``ok`` (a response), ``status`` (a response with ``status``,
            503 unless given), ``reset`` (the connection is reset before the
            request is read), ``reset_after_body`` (reset once it is read),
            ``hang`` (no answer, ever), ``truncated`` (a body shorter than its
            ``Content-Length``), ``slow_body`` (``chunks`` chunks, ``chunk_delay``
            apart).
        status: the status of ``ok``, ``status``, ``truncated``, ``slow_body``.
        latency: seconds (simulated) before the upstream acts.
        headers: response headers (``{"Retry-After" = "1"}``).
        body: the response body, as text (UTF-8); for ``slow_body``, one chunk.
        weight: the relative weight in a random mix (ignored by a cycle).
        chunks: for ``slow_body``.
        chunk_delay: for ``slow_body``, seconds between two chunks.

    """

    kind: FaultKindName = "ok"
    status: Annotated[int, msgspec.Meta(ge=100, le=599)] | None = None
    latency: Seconds = 0.0
    headers: dict[_HeaderName, _HeaderValue] = msgspec.field(default_factory=dict)
    body: Annotated[str, msgspec.Meta(max_length=_MAX_BODY)] | None = None
    weight: Annotated[float, msgspec.Meta(ge=0, le=1_000_000)] = 1.0
    chunks: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 4
    chunk_delay: Seconds = 0.5

    def __post_init__(self) -> None:
        """Refuse options the kind does not use, and too many headers."""
        if self.status is not None and self.kind not in _HAS_STATUS:
            raise ValueError(f"a {self.kind!r} fault sends no status: remove 'status'")
        if self.headers and self.kind not in _HAS_STATUS:
            raise ValueError(f"a {self.kind!r} fault sends no headers: remove 'headers'")
        if self.kind == "hang" and self.latency:
            raise ValueError("a 'hang' fault never answers: remove 'latency'")
        if self.body is not None and self.kind not in _HAS_STATUS:
            raise ValueError(f"a {self.kind!r} fault sends no body: remove 'body'")
        if self.kind == "slow_body" and self.body == "":
            raise ValueError("a slow_body fault needs a non-empty body (one chunk)")
        if len(self.headers) > _MAX_HEADERS:
            raise ValueError(f"at most {_MAX_HEADERS} headers")

    def fault(self) -> Fault:  # noqa: PLR0911 - one return per kind
        """Return the :class:`~healkit.testing.Fault` the fault server applies."""
        headers = self.headers or None
        latency = self.latency
        body = None if self.body is None else self.body.encode()
        match self.kind:
            case "ok":
                return Fault.ok(
                    status=self.status or 200,
                    body=b"ok" if body is None else body,
                    headers=headers,
                    latency=latency,
                )
            case "status":
                return Fault.status(
                    self.status or 503, body=body or b"", headers=headers, latency=latency
                )
            case "reset":
                return Fault.reset(latency=latency)
            case "reset_after_body":
                return Fault.reset_after_body(latency=latency)
            case "hang":
                return Fault.blackhole()
            case "truncated":
                return Fault.truncated(
                    status=self.status or 200,
                    body=b"partial" if body is None else body,
                    headers=headers,
                    latency=latency,
                )
            case "slow_body":
                return Fault.slow_body(
                    self.chunks,
                    self.chunk_delay,
                    chunk=body or _SLOW_CHUNK.encode(),
                    status=self.status or 200,
                    headers=headers,
                    latency=latency,
                )


_HEALTHY_FAULTS: Final = (FaultSpec(),)


class Upstream(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a group of endpoints (the primary ones, or the fallback ones) does in a phase.

    Attributes:
        faults: the ways it answers, at least one.
        order: ``random``: each request's answer is drawn by weight from the
            scenario's seed; ``cycle``: the faults in order, over and over.
        capacity: the most requests one endpoint handles at once; the
            others wait in its line (``queue``) or are answered ``503`` at
            once (``None``: no limit).
        queue: how many requests beyond ``capacity`` wait for a slot, first
            in, first out (their latency grows with the line, as at a
            saturated server); the others are answered ``503`` at once.
            Needs ``capacity``.
        probes: what the health-probe path answers: ``same`` as the other
            requests, or ``ok`` (the endpoint looks healthy to probes).

    """

    faults: Annotated[tuple[FaultSpec, ...], msgspec.Meta(min_length=1, max_length=64)] = (
        _HEALTHY_FAULTS
    )
    order: Literal["random", "cycle"] = "random"
    capacity: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    queue: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0
    probes: Literal["same", "ok"] = "same"

    def __post_init__(self) -> None:
        """Refuse a random mix whose weights are all 0, and a queue without a capacity."""
        if self.order == "random" and not any(spec.weight > 0 for spec in self.faults):
            raise ValueError("a random mix needs a fault with a weight above 0")
        if self.queue and self.capacity is None:
            raise ValueError("a queue needs a capacity: the requests it waits for")

    def mix(self, seed: int) -> FaultMix:
        """Return the fault server's mix for these faults, seeded with ``seed``."""
        faults = tuple(spec.fault() for spec in self.faults)
        if self.order == "cycle":
            return FaultMix.cycle(*faults)
        weights = [spec.weight for spec in self.faults]
        return FaultMix.random(list(zip(faults, weights, strict=True)), seed=seed)

    def apply(self, server: FaultServer, *, seed: int, probe_path: str | None) -> None:
        """Make ``server`` behave like this upstream from now on.

        ``probe_path`` is the path health probes request (``None``: none of its own).
        """
        server.set_default(self.mix(seed))
        server.set_capacity(self.capacity, queue=self.queue)
        if probe_path is None:
            return
        if self.probes == "ok":
            server.script(probe_path, then=Fault.ok())
        else:
            server.script(probe_path, then=self.faults[0].fault())


_HEALTHY: Final = Upstream()


class Phase(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A stretch of simulated time during which the upstreams behave one way.

    Attributes:
        name: shown in the report.
        duration: simulated seconds.
        primary: what the service's own endpoints do.
        fallback: what the endpoints of its fallback groups do (healthy unless given).
        mark: ``disruption``: the report gives the time to fail over (until
            calls succeed again) from this phase's start; ``recovery``: the time
            to recover (until calls go to the primary endpoints again).

    """

    name: ScenarioName
    duration: Annotated[float, msgspec.Meta(gt=0, le=3600)]
    primary: Upstream = _HEALTHY
    fallback: Upstream = _HEALTHY
    mark: Literal["disruption", "recovery"] | None = None


class Scenario(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A scripted run: calls at a steady rate while the upstreams go through phases.

    Attributes:
        description: one line for the report.
        seed: the seed of every random draw (faults, jitter, balancing), so
            two runs of the same scenario and policy give the same figures.
        rate: calls started per simulated second, evenly spaced.
        phases: played in order, at least one.

    """

    phases: Annotated[tuple[Phase, ...], msgspec.Meta(min_length=1, max_length=32)]
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] = 0
    rate: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 20.0

    def __post_init__(self) -> None:
        """Refuse repeated phase names and runs of more than MAX_CALLS calls."""
        names = [phase.name for phase in self.phases]
        if len(set(names)) != len(names):
            raise ValueError("phase names must differ")
        if self.calls > MAX_CALLS:
            raise ValueError(
                f"{self.calls} calls (rate x duration); at most {MAX_CALLS}: lower rate or duration"
            )

    @property
    def duration(self) -> float:
        """The simulated seconds of all phases."""
        return sum(phase.duration for phase in self.phases)

    @property
    def calls(self) -> int:
        """How many calls the scenario makes."""
        return max(1, round(self.duration * self.rate))


class _ScenarioFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    scenarios: Annotated[dict[ScenarioName, Scenario], msgspec.Meta(min_length=1, max_length=64)]


def load_scenarios(path: str | os.PathLike[str]) -> dict[str, Scenario]:
    """Read a scenario file (TOML, YAML or JSON), validated as a whole.

    Raises:
        ConfigError: the file cannot be read or decoded, or is invalid; every
            problem has its path (``$.scenarios.storm.phases[1].duration``).

    """
    origin = os.fspath(path)
    document = load_file(path)
    parsed = check(document, _ScenarioFile, origin=origin)
    clashes = sorted(set(parsed.scenarios) & set(BUILTIN_SCENARIOS))
    if clashes:
        raise ConfigError(
            [
                ConfigIssue(f"$.scenarios.{name}", "a built-in scenario has this name")
                for name in clashes
            ],
            origin=origin,
        )
    return dict(parsed.scenarios)


# -- built-in scenarios --------------------------------------------------------------------

_FAST: Final = (
    FaultSpec(latency=0.005, weight=2),
    FaultSpec(latency=0.010, weight=2),
    FaultSpec(latency=0.020, weight=1),
)
_FAST_UPSTREAM: Final = Upstream(faults=_FAST)
_SLOW_LATENCY: Final = 2.0


def _with(weight_ok: float, *faults: FaultSpec) -> Upstream:
    """Fast answers with total weight ``weight_ok``, plus ``faults``."""
    scaled = tuple(
        FaultSpec(latency=spec.latency, weight=spec.weight * weight_ok / 5) for spec in _FAST
    )
    return Upstream(faults=(*scaled, *faults))


BUILTIN_SCENARIOS: Final[Mapping[str, Scenario]] = {
    "healthy": Scenario(
        description="every answer is a 200 within 5-20 ms",
        seed=1,
        phases=(Phase(name="healthy", duration=10.0, primary=_FAST_UPSTREAM),),
    ),
    "slow": Scenario(
        description=f"5% of answers take {_SLOW_LATENCY:g} s",
        seed=2,
        phases=(
            Phase(
                name="slow",
                duration=20.0,
                primary=_with(95, FaultSpec(latency=_SLOW_LATENCY, weight=5)),
            ),
        ),
    ),
    "mixed-faults": Scenario(
        description="30% faults: 503s, connection resets, hangs and truncated bodies",
        seed=3,
        phases=(
            Phase(
                name="faulty",
                duration=15.0,
                primary=_with(
                    70,
                    FaultSpec(kind="status", status=503, weight=7.5),
                    FaultSpec(kind="reset", weight=7.5),
                    FaultSpec(kind="hang", weight=7.5),
                    FaultSpec(kind="truncated", weight=7.5),
                ),
            ),
        ),
    ),
    "503-storm": Scenario(
        description="every answer is a 503 for 8 s, health checks included, then healthy",
        seed=4,
        phases=(
            Phase(name="before", duration=3.0, primary=_FAST_UPSTREAM),
            Phase(
                name="storm",
                duration=8.0,
                primary=Upstream(faults=(FaultSpec(kind="status", status=503, latency=0.002),)),
                mark="disruption",
            ),
            Phase(name="after", duration=6.0, primary=_FAST_UPSTREAM, mark="recovery"),
        ),
    ),
    "outage-recovery": Scenario(
        description="the primary resets every connection for 10 s, then recovers",
        seed=5,
        phases=(
            Phase(name="before", duration=3.0, primary=_FAST_UPSTREAM),
            Phase(
                name="outage",
                duration=10.0,
                primary=Upstream(faults=(FaultSpec(kind="reset"),)),
                mark="disruption",
            ),
            Phase(name="recovered", duration=10.0, primary=_FAST_UPSTREAM, mark="recovery"),
        ),
    ),
    "rate-limited": Scenario(
        description="half of the answers are 429 with Retry-After: 1",
        seed=6,
        phases=(
            Phase(
                name="limited",
                duration=10.0,
                primary=_with(
                    50,
                    FaultSpec(kind="status", status=429, headers={"Retry-After": "1"}, weight=50),
                ),
            ),
        ),
    ),
    "overload": Scenario(
        description="each endpoint serves at most 10 calls at once (150 ms each); 15 are offered",
        seed=7,
        rate=100.0,
        phases=(
            Phase(
                name="overloaded",
                duration=5.0,
                primary=Upstream(faults=(FaultSpec(latency=0.15),), capacity=10),
            ),
        ),
    ),
}
"""The scenarios every run has, by name; each has a fixed seed."""
