"""The ``routing`` section, and what is compiled from it once per configuration snapshot.

:class:`RoutingSettings` is the section (its ``probe`` and ``fleet`` tables:
:class:`ProbeSettings`, :class:`FleetSettings`); :class:`RedirectRules` say where a
service's redirects may go; :class:`RoutingPlan` is a service's priority
groups, compiled on its first call; :class:`RoutingIndex` notes, off the event
loop, which services of a snapshot have a choice of endpoints, probes or fleet
health.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Sequence
from typing import Annotated, Final, Literal, final

import aiohttp
import msgspec
import yarl

from healkit._config.models import (
    ConfigSection,
    Endpoint,
    HeaderName,
    HealkitConfig,
    Seconds,
    ServicePolicy,
    Timeouts,
    normalize_endpoint,
)
from healkit._stash import StashKey

__all__ = [
    "CREDENTIAL_HEADERS",
    "INDEX",
    "PLAN",
    "SECTION",
    "FleetSettings",
    "ProbeSettings",
    "RedirectRules",
    "RoutingIndex",
    "RoutingPlan",
    "RoutingSettings",
    "origin_allowed",
    "origin_of",
    "redirect_rules",
    "routing_plan",
]

CREDENTIAL_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})
_ORIGIN_PATTERN: Final = re.compile(r"^(?i:https?)://(\*\.)?[A-Za-z0-9.\-]+(:\d{1,5})?$")

Origin = Annotated[str, msgspec.Meta(pattern=_ORIGIN_PATTERN.pattern)]
Fraction = Annotated[float, msgspec.Meta(gt=0, le=1)]
Status = Annotated[int, msgspec.Meta(ge=100, le=599)]
_SUCCESS: Final = range(200, 400)


@final
class ProbeSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``routing.probe`` table: how a service's endpoints are probed.

    Attributes:
        method: ``HEAD`` (nothing to read), ``GET`` or ``OPTIONS``.
        path: the path probed below each endpoint.
        expect: the statuses of a good probe; empty: any 2xx or 3xx.
        interval: seconds between two probes of an endpoint.
        timeout: seconds a probe may take (at most ``interval``); by default
            the service's attempt limit (the ``timeout`` plugin's ``attempt``),
            capped by ``interval``. A probe also keeps to the service's
            ``connect`` and ``read`` limits.
        healthy_threshold: good probes in a row that bring a down or ejected
            endpoint back.
        unhealthy_threshold: failed probes in a row that take an endpoint down.
        slow_start: seconds over which an endpoint that came back gets its
            share of traffic gradually (0: at once).

    """

    method: Literal["HEAD", "GET", "OPTIONS"] = "HEAD"
    path: Annotated[str, msgspec.Meta(pattern=r"^/[^\s#]*$", max_length=2048)] = "/"
    expect: tuple[Status, ...] = ()
    interval: Seconds = 5.0
    timeout: Seconds | None = None
    healthy_threshold: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2
    unhealthy_threshold: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    slow_start: Annotated[float, msgspec.Meta(ge=0, le=3600.0)] = 0.0

    def __post_init__(self) -> None:
        """Reject a timeout longer than the interval: a probe ends before the next starts."""
        if self.timeout is not None and self.timeout > self.interval:
            raise ValueError(
                f"timeout ({self.timeout}s) must not exceed interval ({self.interval}s)"
            )

    def limits(self, service: Timeouts) -> aiohttp.ClientTimeout:
        """Return a probe's limits: the service's attempt limits, within this table's."""
        total = min(service.total, self.interval if self.timeout is None else self.timeout)
        return aiohttp.ClientTimeout(
            total=total, connect=min(service.connect, total), sock_read=min(service.read, total)
        )

    def good(self, status: int) -> bool:
        """Whether a probe answered with ``status`` is good."""
        return status in self.expect if self.expect else status in _SUCCESS


@final
class FleetSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``routing.fleet`` table: sharing endpoint health with the other instances.

    Attributes:
        quorum: instances (this one included) that must report an endpoint out
            before this instance routes around it; 1 acts on any report.
        ttl: seconds of the lease under which this instance's reports live;
            a dead instance's reports disappear after it.

    """

    quorum: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    ttl: Annotated[int, msgspec.Meta(ge=2, le=3600)] = 10


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
            each ejection of the endpoint still remembered.
        eject_decay: seconds after which an ejection is forgotten: each such
            period that the endpoint goes without being ejected forgets one
            (its next ejection is half as long), so an endpoint that fails
            again and again stays out longer each time, and one that behaved
            long enough starts again from ``eject_time``.
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
    eject_decay: Seconds = 60.0
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

    @property
    def eject_doublings(self) -> int:
        """How many times the ejection time may double before it reaches ``eject_time_max``."""
        # An estimate from logarithms apart (the ratio of the two times may overflow
        # a float), made exact with ldexp (exact: a power of two times eject_time).
        doublings = max(math.ceil(math.log2(self.eject_time_max) - math.log2(self.eject_time)), 0)
        while doublings > 0 and math.ldexp(self.eject_time, doublings - 1) >= self.eject_time_max:
            doublings -= 1
        while math.ldexp(self.eject_time, doublings) < self.eject_time_max:
            doublings += 1
        return doublings

    def ejection_time(self, remembered: int) -> float:
        """Return the seconds of an ejection after ``remembered`` earlier ones (doubled, capped)."""
        doublings = min(remembered, self.eject_doublings)
        return min(math.ldexp(self.eject_time, doublings), self.eject_time_max)

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
        self._own = frozenset(origin_of(e) for e in endpoints)
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


def endpoint_groups(
    policy: ServicePolicy, settings: RoutingSettings
) -> tuple[tuple[str, ...], ...]:
    """Return the endpoint groups of a service: its ``endpoints``, then each fallback group.

    An empty group (a service without ``endpoints``) is left out.
    """
    groups = [tuple(policy.endpoints)]
    groups.extend(tuple(normalize_endpoint(e) for e in g) for g in settings.fallback_groups)
    return tuple(group for group in groups if group)


def serving_group(
    groups: Sequence[Sequence[str]], usable: Callable[[str], bool], *, skip: Collection[int] = ()
) -> tuple[int, list[str]] | None:
    """Return the first group (not in ``skip``) with a usable endpoint, and its usable endpoints.

    The router's choice of group, for an attempt and for ``healkit status``.
    ``None``: no group has one (the router then tries the primary group anyway).
    """
    for index, group in enumerate(groups):
        if index not in skip and (found := [e for e in group if usable(e)]):
            return index, found
    return None


class RoutingPlan:
    """A service's routing, compiled once per configuration snapshot."""

    __slots__ = ("group_of", "groups", "moves", "settings", "strangers", "withheld")

    def __init__(self, policy: ServicePolicy, settings: RoutingSettings) -> None:
        self.settings = settings
        self.groups = endpoint_groups(policy, settings)
        # The group of each endpoint (an endpoint listed twice belongs to the first).
        self.group_of: dict[str | None, int] = {}
        for index, group in enumerate(self.groups):
            for endpoint in group:
                self.group_of.setdefault(endpoint, index)
        # Whether a call that failed on a group moves on to the next one.
        self.moves = settings.retry_other_groups and len(self.groups) > 1
        first_origin = origin_of(self.groups[0][0]) if self.groups else None
        # The endpoints of another origin than the first: credentials stay away from them.
        self.strangers = frozenset(
            e for group in self.groups for e in group if origin_of(e) != first_origin
        )
        self.withheld = (
            frozenset()
            if settings.forward_credentials
            else CREDENTIAL_HEADERS | {h.lower() for h in settings.credential_headers}
        )

    @property
    def choices(self) -> int:
        return sum(len(group) for group in self.groups)


class RoutingIndex:
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
                # RoutingPlan.choices, without normalizing every endpoint.
                self.branching = len(policy.endpoints) + sum(map(len, settings.fallback_groups)) > 1
            if settings.probe is not None:
                probing.append(name)
            if settings.fleet is not None:
                self.fleets[name] = settings.fleet.ttl
        #: The services with probes, by name.
        self.probing: tuple[str, ...] = tuple(probing)


PLAN: Final = StashKey[RoutingPlan]("healkit.routing")
INDEX: Final = StashKey[RoutingIndex]("healkit.routing.index")
_REDIRECTS: Final = StashKey[RedirectRules]("healkit.routing.redirects")


def routing_plan(policy: ServicePolicy) -> RoutingPlan:
    """Return the routing plan of ``policy``, compiled on first use in its snapshot."""
    plan = policy.stash.get(PLAN)
    if plan is None:
        plan = policy.stash[PLAN] = RoutingPlan(policy, policy.section(SECTION))
    return plan


def origin_of(url: str) -> str:
    """Return the origin (scheme, host, port) of ``url``."""
    return str(yarl.URL(url).origin())
