"""Routing: endpoints in priority groups, balancing, passive ejection, failover.

A built-in plugin (``routing``), configured per service in the ``routing``
section. A service's endpoints form priority groups: its ``endpoints`` are the
primary group, ``routing.fallback_groups`` come after. Each attempt of a call
addressed by service name goes to a usable endpoint of the first group that
has one (round-robin, or the less busy of two picked at random), and a retry
prefers an endpoint other than the one that just failed.

An endpoint is unusable while it is *ejected* (``eject_after`` failures in a
row: ejected for ``eject_time``, doubling on each further ejection up to
``eject_time_max``; at most ``max_ejected_fraction`` of a group at once, and
always at least one endpoint) or while its circuit breaker refuses calls (the
``breaker`` plugin, when installed). A failure that provably never reached the
server (a refused connection, a breaker's refusal) moves the call to another
usable endpoint at once, without a backoff. When no endpoint is usable, the
primary group is tried anyway.

Once a call has failed on a group, its next attempt goes to the next group with
a usable endpoint (``routing.retry_other_groups``, on by default; Envoy's
``previous_priorities`` retry does the same): at once and without a backoff
when the router itself moves the call there, after the retry plugin's backoff
when that plugin retries. A call that failed on every group starts again from
the first usable one. A request that is not idempotent and may have reached
the server is never sent to another group on that account.

An answer from a fallback group is a ``fallback``: ``response.outcome.path``
and the ``Healkit-Outcome`` header say so, and ``response.outcome.endpoint``
which endpoint answered. Credentials (``Authorization``, ``Proxy-Authorization``,
``Cookie`` and ``routing.credential_headers``) are not sent to an endpoint of
another origin than the service's first endpoint unless
``routing.forward_credentials`` is true; when the session adds such
credentials to every request, the transport does not send the attempt there.

The same settings rule the redirects healkit follows (:func:`redirect_rules`):
a hop must go to one of the service's own origins or to ``allowed_origins``
(when set), and a hop to another origin never carries the credentials,
whatever ``forward_credentials`` says (the upstream, not the operator, chose it).
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, final

import aiohttp
import msgspec
import yarl

from healkit._config.models import (
    ConfigSection,
    Endpoint,
    HealkitConfig,
    Seconds,
    ServicePolicy,
    normalize_endpoint,
)
from healkit._context import AttemptContext, CallContext, RetryDecision
from healkit._errors import (
    CircuitOpenError,
    ConnectError,
    ConnectTimeout,
    DeadlineExceeded,
    HealkitError,
    HTTPStatusError,
    OverloadError,
    TimeoutExceeded,
    TransportError,
)
from healkit._log import get_logger
from healkit._routing.fleet import EndpointView, FleetHealth, FleetSettings, ServiceView
from healkit._routing.probes import ProbeSettings, probe
from healkit._stash import StashKey
from healkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from healkit._clock import Clock
    from healkit._response import Response
    from healkit._runtime import Runtime

__all__ = [
    "SECTION",
    "EndpointDown",
    "EndpointEjected",
    "EndpointReturned",
    "EndpointStatus",
    "RedirectRules",
    "Router",
    "RoutingSettings",
    "redirect_rules",
]

_logger: Final = get_logger("healkit.routing")

CREDENTIAL_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})
_ORIGIN_PATTERN: Final = re.compile(r"^(https?)://(\*\.)?[A-Za-z0-9.\-]+(:\d{1,5})?$")

Origin = Annotated[str, msgspec.Meta(pattern=_ORIGIN_PATTERN.pattern)]
Fraction = Annotated[float, msgspec.Meta(gt=0, le=1)]
HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}$")]


@final
class RoutingSettings(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False
):
    """The ``routing`` section of a service document.

    Attributes:
        fallback_groups: endpoint groups tried, in order, when no endpoint of
            the groups before is usable (the service's ``endpoints`` are the
            primary group).
        balance: within a group, ``round_robin`` or ``least_outstanding``
            (the less busy of two endpoints picked at random).
        eject_after: failures in a row that eject an endpoint (0: never).
        eject_time: seconds of a first ejection.
        eject_time_max: the cap of the ejection time, which doubles with
            each further ejection of the endpoint.
        max_ejected_fraction: the share of a group that may be ejected at once
            (at least one endpoint may always be).
        failover: move at once to another endpoint after a failure that never
            reached the server (refused connection, open breaker).
        retry_other_groups: once a call failed on a group (a 5xx answer, a
            connection error, a time limit), send its next attempt to the next
            group with a usable endpoint, at once, instead of the same group
            again; a 502, 503 or 504 answer counts as that failure even if no
            retry plugin declares it one. Only for a request that may be sent
            again: idempotent (method, ``Idempotency-Key``, declaration) and
            replayable, or one that never reached the server. No effect
            without ``fallback_groups``.
        allowed_origins: when not empty, every fallback endpoint must have one
            of these origins (``https://dr.example.com:8443``, or a host
            wildcard ``https://*.internal``).
        forward_credentials: send credentials to endpoints of another origin
            than the service's first endpoint too.
        credential_headers: more header names withheld from such endpoints.
        probe: active health probes of every endpoint of the service (``None``:
            none; health is then learnt from real traffic only).
        fleet: share endpoint health with the other instances through etcd
            (``None``: this instance keeps it to itself).

    """

    fallback_groups: tuple[tuple[Endpoint, ...], ...] = ()
    balance: Literal["round_robin", "least_outstanding"] = "round_robin"
    eject_after: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 3
    eject_time: Seconds = 30.0
    eject_time_max: Seconds = 300.0
    max_ejected_fraction: Fraction = 0.5
    failover: bool = True
    retry_other_groups: bool = True
    allowed_origins: tuple[Origin, ...] = ()
    forward_credentials: bool = False
    credential_headers: tuple[HeaderName, ...] = ()
    probe: ProbeSettings | None = None
    fleet: FleetSettings | None = None

    def __post_init__(self) -> None:
        """Check what one field alone cannot say."""
        if self.eject_time > self.eject_time_max:
            raise ValueError(
                f"eject_time ({self.eject_time}s) must not exceed"
                f" eject_time_max ({self.eject_time_max}s)"
            )
        seen: set[str] = set()
        for index, group in enumerate(self.fallback_groups):
            if not group:
                raise ValueError(f"fallback_groups[{index}] is empty")
            for endpoint in group:
                normalized = normalize_endpoint(endpoint)
                if normalized in seen:
                    raise ValueError(f"fallback endpoint {normalized} appears twice")
                seen.add(normalized)
                if self.allowed_origins and not origin_allowed(normalized, self.allowed_origins):
                    raise ValueError(f"fallback endpoint {normalized} is outside allowed_origins")

    def declared_endpoints(self) -> tuple[str, ...]:
        """Return the fallback endpoints: configured endpoints of the service too."""
        return tuple(endpoint for group in self.fallback_groups for endpoint in group)


SECTION: Final = ConfigSection(
    "routing", RoutingSettings, doc="endpoint groups, balancing, ejection and failover"
)
"""The ``routing`` section; read it with ``policy.section(SECTION)``."""


def origin_allowed(url: str, allowed: Sequence[str]) -> bool:
    """Whether ``url``'s scheme and host are allowed (``https://*.internal``: any subdomain).

    An entry with a port (``https://dr.example.com:8443``) allows that port only.
    """
    parsed = yarl.URL(url)
    for entry in allowed:
        pattern = yarl.URL(entry)
        if parsed.scheme != pattern.scheme:
            continue
        if pattern.explicit_port is not None and parsed.port != pattern.explicit_port:
            continue  # a port is checked only when the entry names one
        host, wanted = (parsed.host or "").lower(), (pattern.raw_host or "").lower()
        if wanted.startswith("*."):
            if host.endswith(wanted[1:]) and host != wanted[2:]:
                return True
        elif host == wanted:
            return True
    return False


@final
class EndpointEjected(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint was ejected (emitted to ``healkit_event`` and logged).

    Attributes:
        service: the service.
        endpoint: the endpoint ejected.
        failures: failures in a row that ejected it.
        seconds: for how long.
        ejections: how many times it was ejected without recovering since.

    """

    service: str
    endpoint: str
    failures: int
    seconds: float
    ejections: int


@final
class EndpointDown(msgspec.Struct, frozen=True, kw_only=True):
    """Probes failed ``probes`` times in a row: no traffic until they succeed again."""

    service: str
    endpoint: str
    probes: int


@final
class EndpointReturned(msgspec.Struct, frozen=True, kw_only=True):
    """Probes succeeded ``probes`` times in a row: the endpoint takes traffic again."""

    service: str
    endpoint: str
    probes: int


@final
class EndpointStatus(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint of a service as the router sees it now.

    Attributes:
        service: the service.
        endpoint: the endpoint.
        group: 0 for the primary group, 1 for the first fallback group, ...
        usable: whether an attempt may go there now.
        ejected_for: seconds of ejection left (0: not ejected).
        down: whether its probes take it for down.
        fleet_reports: instances (this one included) that report it out.
        consecutive_failures: failures since its last success.
        outstanding: attempts in flight there.

    """

    service: str
    endpoint: str
    group: int
    usable: bool
    ejected_for: float
    down: bool
    fleet_reports: int
    consecutive_failures: int
    outstanding: int


@final
class _Health:
    """What the router remembers of one endpoint of one service."""

    __slots__ = (
        "down",
        "ejected_until",
        "ejections",
        "failures",
        "outstanding",
        "probes_bad",
        "probes_good",
        "returned_at",
        "successes",
    )

    def __init__(self) -> None:
        self.failures = 0
        self.successes = 0
        self.ejections = 0
        self.ejected_until = -math.inf
        self.outstanding = 0
        self.down = False
        self.probes_good = 0
        self.probes_bad = 0
        self.returned_at = -math.inf


@final
class RedirectRules:
    """Where a service's redirects may go, and what a hop to another origin leaves out.

    Attributes:
        credentials: the header names (lower case) dropped on a hop to
            another origin: ``Authorization``, ``Proxy-Authorization``,
            ``Cookie`` and ``routing.credential_headers``.

    """

    __slots__ = ("_allowed", "_own", "credentials")

    def __init__(self, policy: ServicePolicy, settings: RoutingSettings) -> None:
        self._allowed = settings.allowed_origins
        endpoints = (*policy.endpoints, *settings.declared_endpoints())
        self._own = frozenset(_origin(e) for e in endpoints)
        self.credentials = CREDENTIAL_HEADERS | {h.lower() for h in settings.credential_headers}

    def allows(self, url: yarl.URL, start: yarl.URL) -> bool:
        """Whether a redirect of a request first sent to ``start`` may go to ``url``.

        Any origin may when ``allowed_origins`` is empty; otherwise the origin
        of ``start``, the service's own origins (its endpoints and fallback
        groups) and the allowed ones.
        """
        if not self._allowed:
            return True
        origin = url.origin()
        if origin == start.origin() or str(origin) in self._own:
            return True
        return origin_allowed(str(url), self._allowed)


def redirect_rules(policy: ServicePolicy) -> RedirectRules:
    """Return the redirect rules of ``policy`` (built once per configuration snapshot)."""
    rules = policy.stash.get(_REDIRECTS)
    if rules is None:
        try:
            settings = policy.section(SECTION)
        except KeyError:  # a runtime without the routing plugin: its defaults
            settings = SECTION.default()
        rules = policy.stash[_REDIRECTS] = RedirectRules(policy, settings)
    return rules


class _Plan:
    """A service's routing, compiled once per configuration snapshot."""

    __slots__ = ("group_of", "groups", "moves", "settings", "strangers", "withheld")

    def __init__(self, policy: ServicePolicy, settings: RoutingSettings) -> None:
        self.settings = settings
        groups = [tuple(policy.endpoints)]
        groups.extend(tuple(normalize_endpoint(e) for e in g) for g in settings.fallback_groups)
        self.groups = tuple(group for group in groups if group)
        # The group of each endpoint (an endpoint listed twice belongs to the first).
        self.group_of: dict[str | None, int] = {}
        for index, group in enumerate(self.groups):
            for endpoint in group:
                self.group_of.setdefault(endpoint, index)
        # Whether a call that failed on a group moves on to the next one.
        self.moves = settings.retry_other_groups and len(self.groups) > 1
        first_origin = _origin(self.groups[0][0]) if self.groups else None
        # The endpoints of another origin than the first: credentials stay away from them.
        self.strangers = frozenset(
            e for group in self.groups for e in group if _origin(e) != first_origin
        )
        self.withheld = (
            frozenset()
            if settings.forward_credentials
            else CREDENTIAL_HEADERS | {h.lower() for h in settings.credential_headers}
        )

    @property
    def choices(self) -> int:
        return sum(len(group) for group in self.groups)


class _Index:
    """What the services of a snapshot ask of the router, found by looking at each once.

    Built off the event loop (``healkit_prepare``) from the settings alone; the
    plans themselves are compiled on each service's first call.
    """

    __slots__ = ("branching", "fleets", "probing")

    def __init__(self, config: HealkitConfig | None) -> None:
        services = config.services if config is not None else {}
        #: Whether a service has a choice of endpoints (else the plugin is idle).
        self.branching = False
        #: The services sharing health (their record TTL), by name.
        self.fleets: dict[str, int] = {}
        probing: list[str] = []
        for name, policy in services.items():  # sorted by name, as build_config makes them
            settings = policy.section(SECTION)
            if not self.branching:
                # _Plan.choices, without normalizing every endpoint.
                self.branching = len(policy.endpoints) + sum(map(len, settings.fallback_groups)) > 1
            if settings.probe is not None:
                probing.append(name)
            if settings.fleet is not None:
                self.fleets[name] = settings.fleet.ttl
        #: The services with probes, by name.
        self.probing: tuple[str, ...] = tuple(probing)


_UNAVAILABLE: Final = frozenset({502, 503, 504})
"""Answers that say "this endpoint cannot serve now": another group may."""

_PLAN: Final = StashKey[_Plan]("healkit.routing")
_INDEX: Final = StashKey[_Index]("healkit.routing.index")
_ROUTED: Final = StashKey[_Health]("healkit.routing.attempt")
_REDIRECTS: Final = StashKey[RedirectRules]("healkit.routing.redirects")


@final
class Router:
    """The built-in ``routing`` plugin."""

    healkit_name = "routing"

    def __init__(
        self,
        *,
        draw: Callable[[Sequence[str]], str] | None = None,
        random_share: Callable[[], float] | None = None,
    ) -> None:
        self._health: dict[tuple[str, str], _Health] = {}
        self._index = _Index(None)
        self._turns: dict[tuple[str, int], int] = {}
        self._runtime: Runtime | None = None
        self._config: HealkitConfig | None = None
        self._draw = draw or random.choice
        self._share = random_share or random.random
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._probing: asyncio.Task[None] | None = None
        self._fleet = FleetHealth()
        self._breaker: Any = None
        self._sharing: asyncio.Task[None] | None = None
        self._wall_offset = 0.0  # Unix time minus the runtime clock, for the shared view

    def __repr__(self) -> str:
        return f"<Router {len(self._health)} endpoints>"

    # -- configuration --------------------------------------------------------------

    @hookimpl
    def healkit_config_sections(self) -> Sequence[ConfigSection[Any]]:
        """Contribute the ``routing`` section."""
        return (SECTION,)

    @hookimpl
    def healkit_prepare(self, config: HealkitConfig) -> None:
        """Note which services have a choice of endpoints, probes, fleet health (off the loop)."""
        config.stash[_INDEX] = _Index(config)

    @hookimpl
    def healkit_configure(self, config: HealkitConfig, runtime: Runtime) -> None:
        """Keep what is known of the endpoints still configured; forget the others.

        Only the health of services the new snapshot changed is looked at
        (:meth:`HealkitConfig.changes_since` the snapshot this plugin saw
        last); the plan of a service is compiled on its first call.
        """
        self._runtime = runtime
        before, self._config = self._config, config
        # Plugins change only through runtime.register, which configures again.
        breaker = runtime.plugin_manager.get_plugin("breaker")
        self._breaker = breaker if callable(getattr(breaker, "available", None)) else None
        index = config.stash.get(_INDEX)
        if index is None:  # healkit_prepare failed: look at every service now
            index = config.stash[_INDEX] = _Index(config)
        self._index = index
        self._forget_unrouted(config, before)
        self._wake.set()  # the probes follow the new configuration
        self._fleet.touch()
        if runtime.started:
            self._start_probes(runtime)
            self._start_sharing(runtime)

    def _forget_unrouted(self, config: HealkitConfig, before: HealkitConfig | None) -> None:
        """Forget the health of the endpoints the services ``config`` changed no longer route to.

        Looks at the fewer of the changed services and the endpoints with a
        health record; at every record when what changed is not known.
        """
        changes = config.changes_since(before)
        health = self._health
        if before is None or changes is None or changes.defaults:
            keys = list(health)  # the health of unconfigured services goes too
        elif len(changes.services) < len(health):
            keys = [
                (name, endpoint)
                for name in changes.services
                if (old := before.services.get(name)) is not None
                and (old_plan := old.stash.get(_PLAN)) is not None
                for endpoint in old_plan.group_of
                if endpoint is not None
            ]
        else:
            keys = [key for key in health if key[0] in changes.services]
        services = config.services
        for key in keys:
            policy = services.get(key[0])
            if policy is None or key[1] not in _plan(policy).group_of:
                health.pop(key, None)

    @hookimpl
    def healkit_startup(self, runtime: Runtime) -> None:
        """Start the health probes and the fleet health, if a service asks for them."""
        self._start_probes(runtime)
        self._start_sharing(runtime)

    def _start_sharing(self, runtime: Runtime) -> None:
        """Publish and follow fleet health through the etcd source, once it is asked for."""
        config = self._config
        if config is None or (self._sharing is not None and not self._sharing.done()):
            return
        fleets = self._index.fleets
        source = runtime.source
        listen, client = getattr(source, "listen", None), getattr(source, "client", None)
        root = getattr(source, "root", None)
        if not fleets or not callable(listen) or client is None or not isinstance(root, str):
            return  # no etcd source: health stays local
        ttl = min(fleets.values())
        fleet_health = self._fleet
        self._wall_offset = time.time() - runtime.clock.now()
        listen("health/", lambda events, _revision: fleet_health.heard(root, events))
        self._sharing = runtime.start_background(
            "routing fleet health",
            lambda: fleet_health.publish_forever(client, root, ttl, self._describe, runtime.clock),
        )

    def _start_probes(self, runtime: Runtime) -> None:
        """Run the probe task while some service has probes (it ends when none has)."""
        running = self._probing is not None and not self._probing.done()
        if not running and self._index.probing:
            self._probing = runtime.start_background(
                "routing probes", lambda: self._probe_forever(runtime.clock)
            )

    @hookimpl
    def healkit_shutdown(self) -> Awaitable[None] | None:
        """Close the probes' HTTP session."""
        session, self._session = self._session, None
        return None if session is None else session.close()

    @hookimpl
    def healkit_event(self) -> None:
        """Any event (an ejection, a breaker transition) may change the shared view."""
        self._fleet.touch()

    def healkit_idle(self, config: HealkitConfig) -> bool:
        """Whether no service has a choice of endpoints (then the plugin costs nothing)."""
        index = config.stash.get(_INDEX)  # None: healkit_prepare did not run or failed
        return not (index or _Index(config)).branching

    # -- the pipeline --------------------------------------------------------------

    @hookimpl
    def healkit_route(self, call: CallContext, attempt: AttemptContext) -> str | None:
        """Choose a usable endpoint: first group that has one; another one on a retry."""
        plan = _plan(call.policy)
        if plan.choices <= 1:
            return None
        chosen, group_index = self._choose(call, plan)
        health = self._of(call.service, chosen)
        health.outstanding += 1
        attempt.stash[_ROUTED] = health
        if group_index > 0:
            call.path = "fallback"
        elif call.path == "fallback":
            call.path = "retry"
        if plan.withheld and chosen in plan.strangers:
            attempt.withheld_headers = plan.withheld
        return chosen

    def _choose(self, call: CallContext, plan: _Plan) -> tuple[str, int]:
        """Return the endpoint of the current attempt, and its group."""
        service = call.service
        now = call.clock.now()
        previous: str | None = None
        unreached: frozenset[str | None] = frozenset()
        failed_on: frozenset[int] = frozenset()
        if len(call.attempts) > 1:  # a retry: look at the attempts before this one
            earlier = call.attempts[:-1]
            previous = earlier[-1].endpoint
            # Endpoints this call could not reach are out of its way from now on.
            unreached = frozenset(
                a.endpoint
                for a in earlier
                if a.error is not None and not a.error.may_have_reached_server
            )
            if plan.moves:
                failed_on = _failed_groups(call, plan, earlier)
        # First the groups this call has not failed on, then (all failed) every group.
        for skipped in (failed_on, frozenset()) if failed_on else (failed_on,):
            for index, group in enumerate(plan.groups):
                if index in skipped:
                    continue
                usable = [
                    e for e in group if e not in unreached and self._usable(service, plan, e, now)
                ]
                if len(usable) > 1 and previous in usable:
                    usable.remove(previous)  # a retry prefers another endpoint
                if usable:
                    return self._pick(service, plan, index, usable), index
        # Nothing usable anywhere: try the primary group all the same.
        return self._pick(service, plan, 0, list(plan.groups[0])), 0

    def _next_group(self, call: CallContext, plan: _Plan, failing: str | None) -> int | None:
        """Return the first group with a usable endpoint that ``call`` has not failed on.

        ``failing`` is the endpoint of the attempt failing now: its group counts
        as failed on, whether or not the attempt's error is recorded yet.
        """
        failed_on = _failed_groups(call, plan, call.attempts) | {plan.group_of.get(failing, 0)}
        now = call.clock.now()
        for index, group in enumerate(plan.groups):
            if index not in failed_on and any(
                self._usable(call.service, plan, e, now) for e in group
            ):
                return index
        return None

    def _pick(self, service: str, plan: _Plan, group: int, usable: list[str]) -> str:
        if len(usable) == 1:
            return usable[0]
        usable = self._warmed(service, plan, usable) or usable
        if plan.settings.balance == "least_outstanding":
            first, second = self._draw(usable), self._draw(usable)
            if self._of(service, second).outstanding < self._of(service, first).outstanding:
                return second
            return first
        turn = self._turns.get((service, group), 0)
        self._turns[(service, group)] = turn + 1
        return usable[turn % len(usable)]

    def _warmed(self, service: str, plan: _Plan, usable: list[str]) -> list[str]:
        """Leave out, by chance, endpoints still in their slow start."""
        probe = plan.settings.probe
        if probe is None or probe.slow_start <= 0:
            return usable
        now = self._now()
        kept = []
        for endpoint in usable:
            health = self._health.get((service, endpoint))
            warmth = 1.0 if health is None else (now - health.returned_at) / probe.slow_start
            if warmth >= 1.0 or self._share() < warmth:
                kept.append(endpoint)
        return kept

    def _usable(self, service: str, plan: _Plan, endpoint: str, now: float) -> bool:
        health = self._health.get((service, endpoint))
        if health is not None and (health.down or health.ejected_until > now):
            return False
        fleet = plan.settings.fleet
        if fleet is not None:
            # Not out here (or no longer: an ejection ran out): take back this
            # instance's report, and let the others' reports decide.
            self._fleet.report(service, endpoint, out=False)
            if self._fleet.others(service, endpoint) >= fleet.quorum:
                return False
        breaker = self._breaker
        return breaker is None or bool(breaker.available(service, endpoint))

    @hookimpl
    def healkit_post_response(
        self, call: CallContext, attempt: AttemptContext, response: Response | None
    ) -> HTTPStatusError | None:
        """Count a 5xx as a failure of the endpoint, anything else as a success.

        A 502, 503 or 504 is declared a failure when the call may move on to
        another group (``retry_other_groups``), so that ``healkit_on_error``
        sends it there.
        """
        health = _release(attempt)
        if health is None:
            return None
        if response is not None and response.status >= 500:
            self._failed(call, attempt, health)
            if response.status in _UNAVAILABLE and call.routable:
                return self._unavailable(call, attempt, response)
        else:
            health.failures = 0
            health.successes += 1
            settings = _plan(call.policy).settings
            if health.successes >= settings.eject_after:
                health.ejections = 0  # recovered: the next ejection is a first one again
            if settings.fleet is not None and attempt.endpoint is not None:
                self._fleet.report(call.service, attempt.endpoint, out=False)
        return None

    def _unavailable(
        self, call: CallContext, attempt: AttemptContext, response: Response
    ) -> HTTPStatusError | None:
        """Declare an unavailable answer a failure if another group may serve the call."""
        plan = _plan(call.policy)
        if (
            not plan.moves
            or not _resendable(call)
            or self._next_group(call, plan, attempt.endpoint) is None
        ):
            return None
        return HTTPStatusError(response.status, url=response.url)

    @hookimpl(tryfirst=True)
    def healkit_on_error(
        self, call: CallContext, attempt: AttemptContext, error: HealkitError
    ) -> RetryDecision | None:
        """Count the failure; move the call at once where it may succeed.

        A request that never reached the server moves to another usable
        endpoint (``failover``); one that may have reached it and may be sent
        again moves to the next group it has not failed on
        (``retry_other_groups``).
        """
        health = _release(attempt)
        # Released already if post_response judged a response (and counted it there); an
        # attempt whose body failed after its head arrived is counted here.
        if health is not None and _counts(call, attempt, error):
            self._failed(call, attempt, health)
        if not call.routable:
            return None
        plan = _plan(call.policy)
        if (
            plan.moves
            and error.may_have_reached_server
            and _moves_on(call, error)
            and (group := self._next_group(call, plan, attempt.endpoint)) is not None
        ):
            return RetryDecision.again(
                0.0, reason=f"fallback group {group} after a failure on {attempt.endpoint}"
            )
        if not _fails_over(error):
            return None
        if not plan.settings.failover or plan.choices <= 1:
            return None
        tried = {a.endpoint for a in call.attempts}
        now = call.clock.now()
        others = [
            e
            for group in plan.groups
            for e in group
            if e not in tried and self._usable(call.service, plan, e, now)
        ]
        if not others:
            return None
        return RetryDecision.again(0.0, reason=f"failover from {attempt.endpoint}")

    @hookimpl
    def healkit_call_abandoned(self, call: CallContext) -> None:
        """Release the endpoint of an attempt that will never end normally."""
        if call.attempts:
            _release(call.attempts[-1])

    def _failed(self, call: CallContext, attempt: AttemptContext, health: _Health) -> None:
        health.failures += 1
        health.successes = 0
        settings = _plan(call.policy).settings
        if settings.eject_after == 0 or health.failures < settings.eject_after:
            return
        endpoint = attempt.endpoint
        if endpoint is None or not self._may_eject(call, endpoint):
            return
        now = call.clock.now()
        seconds = min(settings.eject_time * 2.0**health.ejections, settings.eject_time_max)
        health.ejected_until = now + seconds
        health.ejections += 1
        if settings.fleet is not None:
            self._fleet.report(call.service, endpoint, out=True)
        failures, health.failures = health.failures, 0
        event = EndpointEjected(
            service=call.service,
            endpoint=endpoint,
            failures=failures,
            seconds=seconds,
            ejections=health.ejections,
        )
        _logger.warning(
            "healkit.endpoint_ejected",
            service=call.service,
            endpoint=call.config.redactor.url(endpoint),
            failures=failures,
            seconds=seconds,
            ejections=health.ejections,
        )
        if self._runtime is not None:
            self._runtime.emit(event)

    def _may_eject(self, call: CallContext, endpoint: str) -> bool:
        """Whether ejecting ``endpoint`` keeps its group within ``max_ejected_fraction``."""
        plan = _plan(call.policy)
        now = call.clock.now()
        for group in plan.groups:
            if endpoint in group:
                ejected = sum(
                    1
                    for e in group
                    if (h := self._health.get((call.service, e))) and h.ejected_until > now
                )
                allowed = max(1, math.floor(plan.settings.max_ejected_fraction * len(group)))
                return ejected < allowed
        return False

    def _of(self, service: str, endpoint: str) -> _Health:
        key = (service, endpoint)
        health = self._health.get(key)
        if health is None:
            health = self._health[key] = _Health()
        return health

    # -- active probes -----------------------------------------------------------------

    def _now(self) -> float:
        runtime = self._runtime
        return runtime.clock.now() if runtime is not None else 0.0

    def _probe_targets(self) -> list[tuple[str, str, ProbeSettings]]:
        config = self._config
        if config is None:
            return []
        targets: list[tuple[str, str, ProbeSettings]] = []
        for name in self._index.probing:
            plan = _plan(config.services[name])
            probe_settings = plan.settings.probe
            if probe_settings is not None:
                targets.extend(
                    (name, endpoint, probe_settings) for group in plan.groups for endpoint in group
                )
        return targets

    async def _probe_forever(self, clock: Clock) -> None:
        """Probe each endpoint of the services that ask for it, every ``interval`` of ``clock``."""
        due: dict[tuple[str, str], float] = {}
        while targets := self._probe_targets():
            now = clock.now()
            ready = [t for t in targets if due.get((t[0], t[1]), -math.inf) <= now]
            if ready:
                results = await asyncio.gather(*(self._probe(*target) for target in ready))
                finished = clock.now()
                for (service, endpoint, probe_settings), good in zip(ready, results, strict=True):
                    self._probed(service, endpoint, probe_settings, good=good)
                    due[(service, endpoint)] = finished + probe_settings.interval
            wait = min(due.get((t[0], t[1]), now) for t in targets) - clock.now()
            if wait > 0:
                self._wake.clear()
                await self._sleep_unless_woken(clock, wait)

    async def _sleep_unless_woken(self, clock: Clock, seconds: float) -> None:
        """Sleep ``seconds`` on ``clock``, or less if the configuration changes."""
        sleeper = asyncio.ensure_future(clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _probe(self, service: str, endpoint: str, settings: ProbeSettings) -> bool:
        """Probe with the service's TLS context and within its attempt limits."""
        runtime, config = self._runtime, self._config
        if runtime is None or config is None:
            raise RuntimeError("the router probes only once configured")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        context = getattr(runtime.plugin_manager.get_plugin("tls"), "context", None)
        tls = context(service) if callable(context) else None
        limits = settings.limits(runtime.attempt_timeouts(config.policy(service)))
        return await probe(self._session, endpoint, settings, limits, tls)

    def _probed(self, service: str, endpoint: str, settings: ProbeSettings, *, good: bool) -> None:
        """Count a probe; take the endpoint down, or bring it back, past the thresholds."""
        health = self._of(service, endpoint)
        now = self._now()
        if good:
            health.probes_bad = 0
            health.probes_good += 1
            unusable = health.down or health.ejected_until > now
            if unusable and health.probes_good >= settings.healthy_threshold:
                health.down = False
                health.ejected_until = -math.inf
                health.failures = 0
                health.returned_at = now
                self._fleet.report(service, endpoint, out=False)
                self._announce(
                    "healkit.endpoint_returned",
                    EndpointReturned(service=service, endpoint=endpoint, probes=health.probes_good),
                )
            return
        health.probes_good = 0
        health.probes_bad += 1
        if not health.down and health.probes_bad >= settings.unhealthy_threshold:
            health.down = True
            if self._config is not None and _plan(self._config.policy(service)).settings.fleet:
                self._fleet.report(service, endpoint, out=True)
            self._announce(
                "healkit.endpoint_down",
                EndpointDown(service=service, endpoint=endpoint, probes=health.probes_bad),
            )

    def _announce(self, name: str, event: EndpointDown | EndpointReturned) -> None:
        config = self._config
        endpoint = event.endpoint if config is None else config.redactor.url(event.endpoint)
        log = _logger.warning if isinstance(event, EndpointDown) else _logger.info
        log(name, service=event.service, endpoint=endpoint, probes=event.probes)
        if self._runtime is not None:
            self._runtime.emit(event)

    # -- the read API ----------------------------------------------------------------

    @property
    def fleet_instance(self) -> str:
        """The name of this instance in fleet health records (``instances/<name>``)."""
        return self._fleet.instance

    def status(self, service: str) -> tuple[EndpointStatus, ...]:
        """Return every endpoint of ``service``, group by group, as the router sees it now."""
        config = self._config
        if config is None or service not in config.services:
            return ()
        return self._statuses(service, _plan(config.policy(service)), self._now())

    def _statuses(self, service: str, plan: _Plan, moment: float) -> tuple[EndpointStatus, ...]:
        found = []
        for index, group in enumerate(plan.groups):
            for endpoint in group:
                health = self._health.get((service, endpoint)) or _Health()
                found.append(
                    EndpointStatus(
                        service=service,
                        endpoint=endpoint,
                        group=index,
                        usable=self._usable(service, plan, endpoint, moment),
                        ejected_for=max(health.ejected_until - moment, 0.0),
                        down=health.down,
                        fleet_reports=self._fleet.reporters(service, endpoint),
                        consecutive_failures=health.failures,
                        outstanding=health.outstanding,
                    )
                )
        return tuple(found)

    def _describe(self) -> tuple[dict[str, ServiceView], float | None]:
        """Return how this instance sees the services that share health, and when that changes.

        Times are Unix timestamps; the second value is in how many seconds an
        ejection ends or an open breaker may admit calls again, if ever.
        """
        config = self._config
        if config is None:
            return {}, None
        now = self._now()
        upcoming: list[float] = []
        view: dict[str, ServiceView] = {}
        for name in self._index.fleets:
            plan = _plan(config.services[name])
            seen = self._statuses(name, plan, now)
            traffic_group = min((e.group for e in seen if e.usable), default=None)
            traffic = tuple(e.endpoint for e in seen if e.usable and e.group == traffic_group)
            endpoints: list[EndpointView] = []
            for status in seen:
                health = self._health.get((name, status.endpoint))
                ejected_until = -math.inf if health is None else health.ejected_until
                breaker, retry_at = self._breaker_of(name, status.endpoint)
                upcoming.extend(t for t in (ejected_until, retry_at) if now < t < math.inf)
                endpoints.append(
                    EndpointView(
                        endpoint=status.endpoint,
                        group=status.group,
                        usable=status.usable,
                        down=status.down,
                        ejected_until=self._wall(ejected_until, now),
                        fleet_reports=status.fleet_reports,
                        breaker=breaker,
                        breaker_retry_at=self._wall(retry_at, now),
                    )
                )
            view[name] = ServiceView(
                endpoints=tuple(endpoints), traffic_group=traffic_group, traffic=traffic
            )
        return view, (min(upcoming) - now if upcoming else None)

    def _breaker_of(self, service: str, endpoint: str) -> tuple[str | None, float]:
        """Return the breaker plugin's state of the endpoint, and when it may admit calls again."""
        breaker = self._breaker
        if breaker is None:
            return None, -math.inf
        state = breaker.state(service, endpoint)
        status = breaker.status(service, endpoint)
        retry_at = getattr(status, "retry_at", None)
        return str(getattr(state, "value", state)), -math.inf if retry_at is None else retry_at

    def _wall(self, moment: float, now: float) -> float | None:
        """Return a future moment of the runtime clock in Unix time (``None``: past or never)."""
        if not now < moment < math.inf:
            return None
        return round(moment + self._wall_offset, 3)


def _plan(policy: ServicePolicy) -> _Plan:
    plan = policy.stash.get(_PLAN)
    if plan is None:
        plan = policy.stash[_PLAN] = _Plan(policy, policy.section(SECTION))
    return plan


def _release(attempt: AttemptContext) -> _Health | None:
    """Take the attempt's endpoint out of its outstanding count (once)."""
    stash = attempt.stash
    health = stash.get(_ROUTED)
    if health is not None:
        del stash[_ROUTED]
        health.outstanding -= 1
    return health


def _failed_groups(
    call: CallContext, plan: _Plan, attempts: Sequence[AttemptContext]
) -> frozenset[int]:
    """Return the groups ``attempts`` failed on in a way that moves the call on."""
    return frozenset(
        plan.group_of.get(a.endpoint, 0)
        for a in attempts
        if a.error is not None and _moves_on(call, a.error)
    )


def _moves_on(call: CallContext, error: HealkitError) -> bool:
    """Whether ``error`` says the endpoint failed and the request may go to another group."""
    if isinstance(error, HTTPStatusError):
        failed = error.status >= 500
    else:
        failed = isinstance(
            error, TransportError | CircuitOpenError | TimeoutExceeded
        ) and not isinstance(error, DeadlineExceeded)
    return failed and (not error.may_have_reached_server or _resendable(call))


def _resendable(call: CallContext) -> bool:
    """Whether the request may be sent again although it may have reached a server."""
    return call.idempotent and call.replayable


def _fails_over(error: HealkitError) -> bool:
    """Whether ``error`` never reached the server and another endpoint may take the call."""
    if isinstance(error, OverloadError):
        return error.endpoint is not None  # a per-service limit would refuse on every endpoint
    # A redirect's target refused: the first hop was answered, the request arrived.
    return (
        isinstance(error, ConnectError | ConnectTimeout | CircuitOpenError)
        and not error.may_have_reached_server
    )


def _counts(call: CallContext, attempt: AttemptContext, error: HealkitError) -> bool:
    """Whether ``error`` says the endpoint failed (not the caller, not another plugin)."""
    if isinstance(error, HTTPStatusError):
        return error.status >= 500
    if isinstance(error, DeadlineExceeded):
        return call.deadline > attempt.started  # the attempt was sent, and timed out
    # No connection, a broken one, or an answer that is not HTTP (ProtocolError).
    return isinstance(error, TransportError | TimeoutExceeded)


def _origin(url: str) -> str:
    return str(yarl.URL(url).origin())
