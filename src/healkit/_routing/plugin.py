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
always at least one endpoint) or while a plugin says it would refuse an attempt
there (``healkit_endpoint_available``: the ``breaker`` plugin, when installed,
or any other circuit breaker). A failure that provably never reached the
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
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import aiohttp

from healkit._config.models import ConfigSection, HealkitConfig
from healkit._context import AttemptContext, CallContext, RetryDecision
from healkit._errors import (
    HealkitError,
    HTTPStatusError,
    PluginError,
)
from healkit._log import get_logger, plugin_failed
from healkit._plan import CompiledHook, compile_hook
from healkit._routing.fleet import EndpointView, FleetHealth, ServiceView
from healkit._routing.health import (
    EndpointStatus,
    Health,
    counts_against,
    failed_groups,
    fails_over,
    moves_on,
    resendable,
)
from healkit._routing.probes import ProbeSettings, probe
from healkit._routing.settings import (
    INDEX,
    PLAN,
    SECTION,
    RoutingIndex,
    RoutingPlan,
    routing_plan,
    serving_group,
)
from healkit._stash import StashKey
from healkit.etcd import EtcdSource
from healkit.events import EndpointDown, EndpointEjected, EndpointReturned
from healkit.hookspecs import CircuitState, hookimpl

if TYPE_CHECKING:
    from healkit._clock import Clock
    from healkit._response import Response
    from healkit._runtime import Runtime

__all__ = ["Router", "endpoint_status"]

_logger: Final = get_logger("healkit.routing")
_STATE_LONGEST: Final = 64  # the longest breaker state a fleet record (EndpointView) holds
_T = TypeVar("_T")

_UNAVAILABLE: Final = frozenset({502, 503, 504})
"""Answers that say "this endpoint cannot serve now": another group may."""

_ROUTED: Final = StashKey[Health]("healkit.routing.attempt")


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
        self._health: dict[tuple[str, str], Health] = {}
        self._index = RoutingIndex(None)
        self._turns: dict[tuple[str, int], int] = {}
        self._runtime: Runtime | None = None
        self._config: HealkitConfig | None = None
        self._draw = draw or random.choice
        self._share = random_share or random.random
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._probing: asyncio.Task[None] | None = None
        self._fleet = FleetHealth()
        # The hooks routing asks of the other plugins, compiled when configured.
        self._gates: CompiledHook | None = None  # healkit_endpoint_available (None: nobody)
        self._circuits: CompiledHook | None = None  # healkit_circuit_state
        self._tls: CompiledHook | None = None  # healkit_tls_context
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
        config.stash[INDEX] = RoutingIndex(config)

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
        pm = runtime.plugin_manager
        gates = compile_hook(pm, "healkit_endpoint_available")
        self._gates = gates if gates.functions else None
        self._circuits = compile_hook(pm, "healkit_circuit_state")
        self._tls = compile_hook(pm, "healkit_tls_context")
        index = config.stash.get(INDEX)
        if index is None:  # healkit_prepare failed: look at every service now
            index = config.stash[INDEX] = RoutingIndex(config)
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
                and (old_plan := old.stash.get(PLAN)) is not None
                for endpoint in old_plan.group_of
                if endpoint is not None
            ]
        else:
            keys = [key for key in health if key[0] in changes.services]
        services = config.services
        for key in keys:
            policy = services.get(key[0])
            if policy is None or key[1] not in routing_plan(policy).group_of:
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
        if not fleets or not isinstance(source, EtcdSource):
            return  # no etcd source: health stays local
        client, root = source.client, source.root
        ttl = min(fleets.values())
        fleet_health = self._fleet
        self._wall_offset = time.time() - runtime.clock.now()
        source.listen("health/", lambda events, _revision: fleet_health.heard(root, events))
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

    @hookimpl
    def healkit_idle(self, config: HealkitConfig) -> bool:
        """Whether no service has a choice of endpoints (then the plugin costs nothing)."""
        index = config.stash.get(INDEX)  # None: healkit_prepare did not run or failed
        return not (index or RoutingIndex(config)).branching

    # -- the pipeline --------------------------------------------------------------

    @hookimpl
    def healkit_route(self, call: CallContext, attempt: AttemptContext) -> str | None:
        """Choose a usable endpoint: first group that has one; another one on a retry."""
        plan = routing_plan(call.policy)
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

    def _choose(self, call: CallContext, plan: RoutingPlan) -> tuple[str, int]:
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
                failed_on = failed_groups(call, plan, earlier)
        # First the groups this call has not failed on, then (all failed) every group.

        def usable(endpoint: str) -> bool:
            return endpoint not in unreached and self._usable(service, plan, endpoint, now)

        for skipped in (failed_on, frozenset()) if failed_on else (failed_on,):
            served = serving_group(plan.groups, usable, skip=skipped)
            if served is not None:
                index, endpoints = served
                if len(endpoints) > 1 and previous in endpoints:
                    endpoints.remove(previous)  # a retry prefers another endpoint
                return self._pick(service, plan, index, endpoints), index
        # Nothing usable anywhere: try the primary group all the same.
        return self._pick(service, plan, 0, list(plan.groups[0])), 0

    def _next_group(self, call: CallContext, plan: RoutingPlan, failing: str | None) -> int | None:
        """Return the first group with a usable endpoint that ``call`` has not failed on.

        ``failing`` is the endpoint of the attempt failing now: its group counts
        as failed on, whether or not the attempt's error is recorded yet.
        """
        failed_on = failed_groups(call, plan, call.attempts) | {plan.group_of.get(failing, 0)}
        now = call.clock.now()
        served = serving_group(
            plan.groups, lambda e: self._usable(call.service, plan, e, now), skip=failed_on
        )
        return None if served is None else served[0]

    def _pick(self, service: str, plan: RoutingPlan, group: int, usable: list[str]) -> str:
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

    def _warmed(self, service: str, plan: RoutingPlan, usable: list[str]) -> list[str]:
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

    def _usable(self, service: str, plan: RoutingPlan, endpoint: str, now: float) -> bool:
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
        gates = self._gates
        return gates is None or _admitted(gates, service, endpoint)

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
            settings = routing_plan(call.policy).settings
            if health.successes >= settings.eject_after:
                health.ejections = 0  # recovered: the next ejection is a first one again
            if settings.fleet is not None and attempt.endpoint is not None:
                self._fleet.report(call.service, attempt.endpoint, out=False)
        return None

    def _unavailable(
        self, call: CallContext, attempt: AttemptContext, response: Response
    ) -> HTTPStatusError | None:
        """Declare an unavailable answer a failure if another group may serve the call."""
        plan = routing_plan(call.policy)
        if (
            not plan.moves
            or not resendable(call)
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
        if health is not None and counts_against(call, attempt, error):
            self._failed(call, attempt, health)
        if not call.routable:
            return None
        plan = routing_plan(call.policy)
        if (
            plan.moves
            and error.may_have_reached_server
            and moves_on(call, error)
            and (group := self._next_group(call, plan, attempt.endpoint)) is not None
        ):
            return RetryDecision.again(
                0.0, reason=f"fallback group {group} after a failure on {attempt.endpoint}"
            )
        if not fails_over(error):
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

    def _failed(self, call: CallContext, attempt: AttemptContext, health: Health) -> None:
        health.failures += 1
        health.successes = 0
        settings = routing_plan(call.policy).settings
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
        plan = routing_plan(call.policy)
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

    def _of(self, service: str, endpoint: str) -> Health:
        key = (service, endpoint)
        health = self._health.get(key)
        if health is None:
            health = self._health[key] = Health()
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
            plan = routing_plan(config.services[name])
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
                    if good is not None:
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

    async def _probe(self, service: str, endpoint: str, settings: ProbeSettings) -> bool | None:
        """Probe with the service's TLS context and within its attempt limits.

        ``None``: not probed, the TLS plugin failed (logged as ``healkit.plugin_error``).
        """
        runtime, config = self._runtime, self._config
        if runtime is None or config is None:
            raise RuntimeError("the router probes only once configured")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        try:
            tls = (
                None
                if self._tls is None
                else _first(self._tls, ssl.SSLContext, service, refuse=_server_side)
            )
        except PluginError as error:
            # Without the context the probe would not see the endpoint as calls do:
            # skip this one, keep probing (the task ending would stop every probe).
            self._plugin_failed(error)
            return None
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
            if (
                self._config is not None
                and routing_plan(self._config.policy(service)).settings.fleet
            ):
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
        return self._statuses(service, routing_plan(config.policy(service)), self._now())

    def _statuses(
        self, service: str, plan: RoutingPlan, moment: float
    ) -> tuple[EndpointStatus, ...]:
        found = []
        for index, group in enumerate(plan.groups):
            for endpoint in group:
                health = self._health.get((service, endpoint)) or Health()
                found.append(
                    EndpointStatus(
                        service=service,
                        endpoint=endpoint,
                        group=index,
                        usable=self._seen_usable(service, plan, endpoint, moment),
                        ejected_for=max(health.ejected_until - moment, 0.0),
                        down=health.down,
                        fleet_reports=self._fleet.reporters(service, endpoint),
                        consecutive_failures=health.failures,
                        outstanding=health.outstanding,
                    )
                )
        return tuple(found)

    def _seen_usable(self, service: str, plan: RoutingPlan, endpoint: str, now: float) -> bool:
        """Whether a call could use ``endpoint`` now, for the read API and the fleet view.

        A plugin failing to answer ``healkit_endpoint_available`` is logged and
        the endpoint shown unusable (a call there would fail), rather than
        failing the whole view.
        """
        try:
            return self._usable(service, plan, endpoint, now)
        except PluginError as error:
            self._plugin_failed(error)
            return False

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
            plan = routing_plan(config.services[name])
            seen = self._statuses(name, plan, now)
            served = serving_group(plan.groups, {e.endpoint for e in seen if e.usable}.__contains__)
            traffic_group, traffic = (None, ()) if served is None else (served[0], tuple(served[1]))
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
        """Return the endpoint's circuit state, and when it may admit calls again.

        Asks ``healkit_circuit_state``: any breaker plugin may answer. A plugin
        that fails is logged and the state left unknown (``None``), so that the
        fleet view is still published; a state is cut to what a record holds.
        """
        circuits = self._circuits
        try:
            found = None if circuits is None else _first(circuits, CircuitState, service, endpoint)
        except PluginError as error:
            self._plugin_failed(error)
            return None, -math.inf
        if found is None:
            return None, -math.inf
        retry_at = -math.inf if found.retry_at is None else found.retry_at
        return found.state[:_STATE_LONGEST], retry_at

    def _plugin_failed(self, error: PluginError) -> None:
        """Log a plugin's failure in a hook routing asks outside a call, and count it."""
        plugin_failed(error.plugin, error.hook, error)
        if self._runtime is not None:
            self._runtime.plugin_errors[error.plugin] += 1

    def _wall(self, moment: float, now: float) -> float | None:
        """Return a future moment of the runtime clock in Unix time (``None``: past or never)."""
        if not now < moment < math.inf:
            return None
        return round(moment + self._wall_offset, 3)


def _admitted(gates: CompiledHook, service: str, endpoint: str) -> bool:
    """Whether no decision plugin says it would refuse an attempt to ``endpoint`` now."""
    for index, gate in gates.indexed:
        try:
            answer = gate(service, endpoint)
        except Exception as exc:
            raise PluginError(gates.plugins[index], gates.name, exc) from exc
        if gates.observers[index] or answer is None or answer is True:
            continue
        if answer is not False:  # 0 or "no" must not pass for "no objection"
            wrong = TypeError(f"returned {type(answer).__name__}, not a bool or None")
            raise PluginError(gates.plugins[index], gates.name, wrong)
        return False
    return True


def _first(
    hook: CompiledHook,
    kind: type[_T],
    *args: object,
    refuse: Callable[[_T], str | None] | None = None,
) -> _T | None:
    """Return the first answer of a decision plugin to a ``firstresult`` ``hook``.

    ``refuse`` says what is wrong with an answer of the right type (``None``: nothing).

    Raises:
        PluginError: an implementation raised, answered with another type than
            ``kind``, or with an answer ``refuse`` finds wrong.

    """
    for index, function in hook.indexed:
        try:
            answer = function(*args)
        except Exception as exc:
            raise PluginError(hook.plugins[index], hook.name, exc) from exc
        if answer is None or hook.observers[index]:
            continue
        if not isinstance(answer, kind):
            wrong = TypeError(f"returned {type(answer).__name__}, not a {kind.__name__}")
            raise PluginError(hook.plugins[index], hook.name, wrong)
        if refuse is not None and (reason := refuse(answer)) is not None:
            raise PluginError(hook.plugins[index], hook.name, ValueError(reason))
        return answer
    return None


def _server_side(context: ssl.SSLContext) -> str | None:
    """Refuse a server's TLS context where a client's is needed (every connection would fail)."""
    if context.protocol == ssl.PROTOCOL_TLS_SERVER:
        return "returned a server-side SSLContext (PROTOCOL_TLS_SERVER), not a client's"
    return None


def _release(attempt: AttemptContext) -> Health | None:
    """Take the attempt's endpoint out of its outstanding count (once)."""
    stash = attempt.stash
    health = stash.get(_ROUTED)
    if health is not None:
        del stash[_ROUTED]
        health.outstanding -= 1
    return health


def endpoint_status(runtime: Runtime, service: str) -> tuple[EndpointStatus, ...]:
    """Return every endpoint of ``service``, group by group, as the routing plugin sees it now.

    Empty when the service is not configured, or when the built-in routing
    plugin is blocked or replaced in ``runtime``.
    """
    router = runtime.plugin_manager.get_plugin("routing")
    return router.status(service) if isinstance(router, Router) else ()
