"""Run one service's policy through a scenario: the real pipeline, scripted upstreams.

For each endpoint of the service (its primary group and every fallback group)
a :class:`~healkit.testing.FaultServer` listens on loopback; the service's
document is rewritten to point there and applied to a real
:class:`~healkit.Runtime` with the installed plugins, and a real
:class:`~healkit.Client` makes the calls. Everything runs on a
:class:`~healkit._simulate._loop.VirtualTimeLoop`, so a scenario of minutes of
simulated time takes a fraction of a second, and the same seed gives the same
run: the fault draws, the retry plugin's jitter and the router's random
choices are all seeded from the scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, final

import yarl

from healkit._client import Client
from healkit._config.models import HealkitConfig, build_config
from healkit._config.validate import merge
from healkit._errors import ConfigError, ConfigIssue, HealkitError
from healkit._plugins import create_plugin_manager
from healkit._routing.plugin import Router
from healkit._routing.settings import SECTION as ROUTING
from healkit._routing.settings import endpoint_groups
from healkit._runtime import Runtime, config_sections
from healkit._simulate._loop import LoopClock, VirtualTimeLoop
from healkit._simulate._scenarios import Scenario, Upstream
from healkit.hookspecs import hookimpl
from healkit.testing._faults import FaultServer

if TYPE_CHECKING:
    from healkit_breaker import BreakerTransition

__all__ = [
    "MAX_ENDPOINTS",
    "MAX_PROBES",
    "CallRecord",
    "PhaseWindow",
    "Run",
    "Transition",
    "run_scenario",
    "simulate_service",
]

TRAFFIC_PATH: Final = "/simulate"
"""The path every simulated call requests (probes use the policy's probe path)."""

MAX_ENDPOINTS: Final = 256
"""The most endpoints (primary and fallback) a simulated service may have: one server each."""

MAX_PROBES: Final = 100_000
"""The most health-probe requests one scenario may make (endpoints x duration / interval).

Calls are bounded by the scenario (``MAX_CALLS``); probes by the policy: a
tiny ``routing.probe.interval`` would keep a simulation busy for days.
"""


@final
@dataclass(frozen=True, slots=True)
class CallRecord:
    """One simulated call, on the simulated clock (seconds from the scenario's start)."""

    start: float
    end: float
    path: str
    """``primary``, ``retry``, ``fallback``, ``degraded``, or ``failed`` (a healkit error)."""
    ok: bool
    """A real answer (not degraded) with a 2xx or 3xx status."""
    primary_group: bool
    """The call ended on one of the service's own endpoints."""


@final
@dataclass(frozen=True, slots=True)
class Transition:
    """A breaker changed state."""

    at: float
    endpoint: str
    """``primary[0]``, ``fallback[1][0]``, or ``service`` for a per-service breaker."""
    from_state: str
    to_state: str


@final
@dataclass(slots=True)
class PhaseWindow:
    """A phase as played: when it started, and what the upstreams received during it."""

    name: str
    start: float
    end: float
    mark: str | None
    upstream_attempts: int = 0
    """Requests on the traffic path that reached any endpoint during the phase."""
    probes: int = 0
    """Health-probe requests (any other path) during the phase."""


@final
@dataclass(slots=True)
class Run:
    """What happened in one scenario: every call, every phase, every breaker transition."""

    scenario: str
    calls: list[CallRecord] = field(default_factory=list)
    phases: list[PhaseWindow] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    upstream_attempts: int = 0
    """Requests on the traffic path that reached any endpoint, over the whole run."""
    probes: int = 0
    """Health-probe requests over the whole run."""


@final
class _Observer:
    """Records breaker transitions (a ``healkit_event`` observer)."""

    healkit_name = "simulate-observer"

    def __init__(
        self, labels: Mapping[str, str], origin: float, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._labels = labels
        self._origin = origin
        self._loop = loop
        self.transitions: list[Transition] = []
        self._transition_type = _breaker_transition_type()

    @hookimpl
    def healkit_event(self, event: object) -> None:
        """Keep each breaker transition, with the endpoint's label."""
        kind = self._transition_type
        if kind is None or not isinstance(event, kind):
            return
        endpoint = "service" if event.endpoint is None else self._label(event.endpoint)
        self.transitions.append(
            Transition(
                at=self._loop.time() - self._origin,
                endpoint=endpoint,
                from_state=event.from_state.value,
                to_state=event.to_state.value,
            )
        )

    def _label(self, endpoint: str) -> str:
        return self._labels.get(endpoint.rstrip("/"), endpoint)


def _breaker_transition_type() -> type[BreakerTransition] | None:
    """Return the breaker plugin's transition event class, if the plugin is installed."""
    if importlib.util.find_spec("healkit_breaker") is None:
        return None
    from healkit_breaker import BreakerTransition  # noqa: PLC0415 - an optional plugin

    return BreakerTransition


def _seeded_plugins(seed: int, block: Sequence[str]) -> list[object]:
    """Build the plugins whose random draws the scenario's seed fixes, seeded.

    A plugin passed to the runtime takes the place of the built-in or installed
    one of the same name, so these are the same plugins, only not random.
    """
    rng = random.Random(seed)  # noqa: S311 - a repeatable simulation, not a secret
    plugins: list[object] = []
    if "routing" not in block:
        plugins.append(Router(draw=rng.choice, random_share=rng.random))
    if "retry" not in block and importlib.util.find_spec("healkit_retry") is not None:
        from healkit_retry import RetryPlugin  # noqa: PLC0415 - an optional plugin

        plugins.append(RetryPlugin(rng=random.Random(rng.getrandbits(64))))  # noqa: S311
    return plugins


def service_policy(document: Mapping[str, Any], service: str, *, origin: str) -> dict[str, Any]:
    """Return ``service``'s document with the defaults merged in.

    Raises:
        ConfigError: the document has no such service, or the service no endpoints.

    """
    services = document.get("services")
    own = services.get(service) if isinstance(services, Mapping) else None
    if not isinstance(own, Mapping):
        raise ConfigError(
            [ConfigIssue(f"$.services.{service}", "no such service in the document")],
            origin=origin,
        )
    defaults = document.get("defaults")
    merged = merge(defaults if isinstance(defaults, Mapping) else {}, own)
    if not merged.get("endpoints"):
        raise ConfigError(
            [ConfigIssue(f"$.services.{service}.endpoints", "no endpoints to simulate")],
            origin=origin,
        )
    return merged


def simulate_service(
    document: Mapping[str, Any],
    service: str,
    scenarios: Mapping[str, Scenario],
    *,
    block: Sequence[str] = (),
    origin: str = "",
) -> list[Run]:
    """Validate the document, then run ``service``'s policy through each scenario.

    Each scenario runs in a fresh event loop on virtual time, with a fresh
    runtime (no breaker or budget state carried from one to the next).

    Raises:
        ConfigError: the document is invalid, or lacks the service or its endpoints,
            or has more than :data:`MAX_ENDPOINTS` endpoints, or its probes would send
            more than :data:`MAX_PROBES` requests in a scenario.
        PluginError: a plugin failed to load.

    """
    config = build_config(
        document, config_sections(create_plugin_manager(block=block)), origin=origin
    )
    policy = service_policy(document, service, origin=origin)
    _check_endpoints(policy, service, origin=origin)
    for name, scenario in scenarios.items():
        _check_probes(config, service, name, scenario, origin=origin)
    runs = []
    for name, scenario in scenarios.items():
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            runs.append(runner.run(run_scenario(policy, service, name, scenario, block=block)))
    return runs


def _endpoint_groups(policy: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Return the primary endpoints and the fallback groups of a (validated) service document."""
    routing = policy.get("routing") or {}
    groups = [list(group) for group in routing.get("fallback_groups") or ()]
    return list(policy["endpoints"]), groups


def _check_endpoints(policy: Mapping[str, Any], service: str, *, origin: str) -> None:
    """Refuse a service with more endpoints than a simulation starts servers for.

    Raises:
        ConfigError: on the service's ``endpoints``.

    """
    primary, groups = _endpoint_groups(policy)
    count = len(primary) + sum(len(group) for group in groups)
    if count > MAX_ENDPOINTS:
        reason = (
            f"{count} endpoints (with the fallback groups'); a simulation starts a server"
            f" for each, at most {MAX_ENDPOINTS}"
        )
        raise ConfigError([ConfigIssue(f"$.services.{service}.endpoints", reason)], origin=origin)


def _check_probes(
    config: HealkitConfig, service: str, name: str, scenario: Scenario, *, origin: str
) -> None:
    """Refuse a run whose health probes alone would send more than MAX_PROBES requests.

    Raises:
        ConfigError: on the service's ``routing.probe.interval``.

    """
    policy = config.services[service]
    try:
        settings = policy.section(ROUTING)
    except KeyError:  # the routing plugin is blocked: no probes
        return
    if settings.probe is None:
        return
    endpoints = sum(len(group) for group in endpoint_groups(policy, settings))
    probes = endpoints * scenario.duration / settings.probe.interval
    if probes > MAX_PROBES:
        reason = (
            f"probes of {endpoints} endpoints every {settings.probe.interval:g} s for the"
            f" {scenario.duration:g} s of scenario {name!r} are {probes:.0f} probe requests;"
            f" a simulation sends at most {MAX_PROBES}: raise the interval or shorten the scenario"
        )
        path = f"$.services.{service}.routing.probe.interval"
        raise ConfigError([ConfigIssue(path, reason)], origin=origin)


async def run_scenario(
    policy: Mapping[str, Any],
    service: str,
    name: str,
    scenario: Scenario,
    *,
    block: Sequence[str] = (),
) -> Run:
    """Play ``scenario`` against ``policy`` (a service document, defaults merged in)."""
    loop = asyncio.get_running_loop()
    primary, groups = _endpoint_groups(policy)
    routing = policy.get("routing") or {}
    probe = routing.get("probe") or {}
    probe_path: str | None = yarl.URL(str(probe.get("path", "/"))).path or "/"
    if probe_path == TRAFFIC_PATH:  # probes then get what calls get, and count as calls
        probe_path = None
    async with contextlib.AsyncExitStack() as stack:
        primaries = [await stack.enter_async_context(_server()) for _ in primary]
        fallbacks = [
            [await stack.enter_async_context(_server()) for _ in group] for group in groups
        ]
        labels = {server.url: f"primary[{i}]" for i, server in enumerate(primaries)}
        for g, group_servers in enumerate(fallbacks):
            labels.update(
                (server.url, f"fallback[{g}][{i}]") for i, server in enumerate(group_servers)
            )
        rewritten = dict(policy)
        rewritten["endpoints"] = [server.url for server in primaries]
        if "routing" in policy:
            rewritten["routing"] = {
                **routing,
                "fallback_groups": [[server.url for server in group] for group in fallbacks],
                "allowed_origins": [],  # the simulated upstreams are on loopback
                "fleet": None,  # no etcd in a simulation: health stays local
            }
        origin = loop.time()
        observer = _Observer(labels, origin, loop)
        runtime = Runtime(
            config={"services": {service: rewritten}},
            plugins=[*_seeded_plugins(scenario.seed, block), observer],
            block_plugins=block,
            clock=LoopClock(loop),
        )
        client = await stack.enter_async_context(Client(runtime=runtime))
        run = Run(scenario=name)
        everyone = [server for group in (primaries, *fallbacks) for server in group]
        traffic = asyncio.ensure_future(
            _traffic(client, service, scenario, origin, primaries, run.calls)
        )
        try:
            await _play(scenario, origin, primaries, fallbacks, everyone, probe_path, run)
            await traffic
        finally:
            traffic.cancel()
        run.upstream_attempts, run.probes = _counts(everyone, probe_path)
        run.transitions = observer.transitions
        return run


def _server() -> FaultServer:
    # Only hit counts are read: keep no request (their number grows with the run).
    return FaultServer(max_recorded=0)


async def _play(  # noqa: PLR0913, PLR0917 - the servers of each role, and where to record
    scenario: Scenario,
    origin: float,
    primaries: Sequence[FaultServer],
    fallbacks: Sequence[Sequence[FaultServer]],
    everyone: Sequence[FaultServer],
    probe_path: str | None,
    run: Run,
) -> None:
    """Switch the upstreams from phase to phase at the phases' start times."""
    loop = asyncio.get_running_loop()
    start = 0.0
    for index, phase in enumerate(scenario.phases):
        await asyncio.sleep(max(0.0, origin + start - loop.time()))
        seed = scenario.seed * 1000 + index
        _apply(phase.primary, primaries, seed, probe_path)
        _apply(phase.fallback, [s for group in fallbacks for s in group], seed + 500, probe_path)
        before = _counts(everyone, probe_path)
        window = PhaseWindow(phase.name, start, start + phase.duration, phase.mark)
        run.phases.append(window)
        start += phase.duration
        await asyncio.sleep(max(0.0, origin + start - loop.time()))
        after = _counts(everyone, probe_path)
        window.upstream_attempts = after[0] - before[0]
        window.probes = after[1] - before[1]


def _apply(
    upstream: Upstream, servers: Sequence[FaultServer], seed: int, probe_path: str | None
) -> None:
    for offset, server in enumerate(servers):
        upstream.apply(server, seed=seed * 100 + offset, probe_path=probe_path)


def _counts(everyone: Sequence[FaultServer], probe_path: str | None) -> tuple[int, int]:
    """Count the requests so far: on the traffic path, and on the probe path."""
    traffic = sum(server.hits(TRAFFIC_PATH) for server in everyone)
    probes = 0 if probe_path is None else sum(server.hits(probe_path) for server in everyone)
    return traffic, probes


async def _traffic(  # noqa: PLR0913, PLR0917 - what a caller needs to call and to record
    client: Client,
    service: str,
    scenario: Scenario,
    origin: float,
    primaries: Sequence[FaultServer],
    calls: list[CallRecord],
) -> None:
    """Start the scenario's calls at its rate, and wait for every one to end."""
    loop = asyncio.get_running_loop()
    own = {server.url for server in primaries}
    async with asyncio.TaskGroup() as group:
        for index in range(scenario.calls):
            await asyncio.sleep(max(0.0, origin + index / scenario.rate - loop.time()))
            group.create_task(_call(client, service, origin, own, calls))


async def _call(
    client: Client, service: str, origin: float, own: set[str], calls: list[CallRecord]
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        response = await client.get(TRAFFIC_PATH, service=service)
    except HealkitError as error:
        attempts = error.attempts
        last = attempts[-1].endpoint if attempts else None
        path, ok = "failed", False
    else:
        outcome = response.outcome
        last = outcome.endpoint
        path = outcome.path
        ok = path != "degraded" and response.status < 400  # 2xx and 3xx
    end = loop.time()
    on_primary = last is not None and last.rstrip("/") in own
    calls.append(CallRecord(start - origin, end - origin, path, ok, on_primary))
