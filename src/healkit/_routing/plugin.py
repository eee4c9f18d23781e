"""Routing: endpoints in priority groups, balancing, passive ejection, failover.

A built-in plugin (``routing``), configured per service in the ``routing``
section. A service's endpoints form priority groups: its ``endpoints`` are the
primary group, ``routing.fallback_groups`` come after. Each attempt of a call
addressed by service name goes to a usable endpoint of the first group that
has one (round-robin, or the less busy of two picked at random), and a retry
prefers an endpoint other than the one that just failed.

An endpoint is unusable while it is *ejected* (``eject_after`` failures in a
row: ejected for ``eject_time``, doubling with each earlier ejection still
remembered up to ``eject_time_max``, one forgotten per ``eject_decay`` seconds
without an ejection; at most ``max_ejected_fraction`` of a group at once, and
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

import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, final

from healkit._config.models import ConfigSection, HealkitConfig
from healkit._context import AttemptContext, CallContext, RetryDecision
from healkit._errors import (
    HealkitError,
    HTTPStatusError,
    PluginError,
)
from healkit._log import get_logger
from healkit._plan import CompiledHook, compile_hook
from healkit._routing.asking import admitted, count_failure
from healkit._routing.fleet import FleetHealth, FleetView
from healkit._routing.health import (
    EndpointStatus,
    Health,
    counts_against,
    failed_groups,
    fails_over,
    moves_on,
    resendable,
)
from healkit._routing.probes import Prober, count_probe
from healkit._routing.settings import (
    INDEX,
    PLAN,
    SECTION,
    ProbeSettings,
    RoutingIndex,
    RoutingPlan,
    routing_plan,
    serving_group,
)
from healkit._stash import StashKey
from healkit.events import EndpointDown, EndpointEjected, EndpointProbed, EndpointReturned
from healkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from healkit._response import Response
    from healkit._runtime import Runtime

__all__ = ["Router", "endpoint_status"]

_logger: Final = get_logger("healkit.routing")

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
        # Round-robin turns of each configured service, one per group.
        self._turns: dict[str, list[int]] = {}
        self._runtime: Runtime | None = None
        self._config: HealkitConfig | None = None
        self._draw = draw or random.choice
        self._share = random_share or random.random
        self._fleet = FleetHealth()
        # healkit_endpoint_available, compiled when configured (None: nobody implements it).
        self._gates: CompiledHook | None = None
        self._prober = Prober(self._probed)
        self._view = FleetView(self._fleet, self._health, self._statuses)

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
        index = config.stash.get(INDEX)
        if index is None:  # healkit_prepare failed: look at every service now
            index = config.stash[INDEX] = RoutingIndex(config)
        self._index = index
        self._refresh_health(config, before, runtime.clock.now())
        self._prober.configure(
            config, index.probing, runtime, compile_hook(pm, "healkit_tls_context")
        )
        self._view.configure(
            config, index.fleets, runtime, compile_hook(pm, "healkit_circuit_state")
        )
        self._fleet.touch()
        if runtime.started:
            self._prober.start(runtime)
            self._view.start(runtime)

    def _refresh_health(
        self, config: HealkitConfig, before: HealkitConfig | None, now: float
    ) -> None:
        """Bring the health of the services ``config`` changed under their new settings.

        The endpoints they no longer route to are forgotten; an ejection of
        the others ends within the new ``eject_time_max`` from ``now``, and at
        once if ejection is now off (``eject_after = 0``): an operator who
        shortens ejections mid-incident means the current ones too.
        Looks at the fewer of the changed services and the endpoints with a
        health record; at every record when what changed is not known. The
        round-robin turns of the changed services start again.
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
            plan = None if policy is None else routing_plan(policy)
            if plan is None or key[1] not in plan.group_of:
                health.pop(key, None)
            elif (record := health.get(key)) is not None:
                settings = plan.settings
                longest = 0.0 if settings.eject_after == 0 else settings.eject_time_max
                record.ejected_until = min(record.ejected_until, now + longest)
        # A changed service's round robin starts again (its groups may have changed);
        # a service no longer configured leaves nothing behind.
        turns = self._turns
        if before is None or changes is None or changes.defaults:
            turns.clear()
        else:
            for name in changes.services:
                turns.pop(name, None)

    @hookimpl
    def healkit_startup(self, runtime: Runtime) -> None:
        """Start the health probes and the fleet health, if a service asks for them."""
        self._prober.start(runtime)
        self._view.start(runtime)

    @hookimpl
    def healkit_shutdown(self) -> Awaitable[None] | None:
        """Close the probes' HTTP session."""
        return self._prober.close()

    @hookimpl
    def healkit_event(self, event: object) -> None:
        """Any event (an ejection, a breaker transition) may change the shared view.

        One probe's result alone does not: one that changes the endpoint's
        verdict comes with its ``EndpointDown`` or ``EndpointReturned``.
        """
        if not isinstance(event, EndpointProbed):
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
        avoided: set[str | None] = set()
        unreached: frozenset[str | None] = frozenset()
        failed_on: frozenset[int] = frozenset()
        if len(call.attempts) > 1:  # a retry or a hedge: look at the attempts before this one
            earlier = call.attempts[:-1]
            # A retry prefers another endpoint than the last one; a hedge, another
            # than every one with an attempt of this call still in flight.
            avoided = {a.endpoint for a in earlier if a.in_flight}
            avoided.add(earlier[-1].endpoint)
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
                others = [e for e in endpoints if e not in avoided]
                if others:
                    endpoints = others
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
        turns = self._turns.get(service)
        if turns is None or len(turns) <= group:  # or a call of an older snapshot's groups
            turns = self._turns[service] = [0] * max(len(plan.groups), group + 1)
        turn = turns[group]
        turns[group] = turn + 1
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
        return gates is None or admitted(gates, service, endpoint)

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
            if (
                routing_plan(call.policy).settings.fleet is not None
                and attempt.endpoint is not None
            ):
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
    def healkit_attempt_cancelled(self, attempt: AttemptContext) -> None:
        """Release the endpoint of a hedge race's loser: no answer, so no failure counted."""
        _release(attempt)

    @hookimpl
    def healkit_call_abandoned(self, call: CallContext) -> None:
        """Release the endpoint of an attempt that will never end normally."""
        if call.attempts:
            _release(call.attempts[-1])

    def _failed(self, call: CallContext, attempt: AttemptContext, health: Health) -> None:
        now = call.clock.now()
        # Failures coming back during an ejection (of calls sent before it, or sent
        # there because nothing else was usable) say nothing new: neither a new
        # ejection nor one failure in a row towards the next.
        if health.ejected_until > now:
            return
        health.failures += 1
        settings = routing_plan(call.policy).settings
        if settings.eject_after == 0 or health.failures < settings.eject_after:
            return
        endpoint = attempt.endpoint
        if endpoint is None or not self._may_eject(call, endpoint):
            return
        failures = health.failures
        seconds = health.eject(settings, now)
        if settings.fleet is not None:
            self._fleet.report(call.service, endpoint, out=True)
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

    def _probed(self, service: str, endpoint: str, settings: ProbeSettings, good: bool) -> None:
        """Take a probe's result: announce it, and an endpoint that went down or came back."""
        change = count_probe(
            self._of(service, endpoint), (service, endpoint, settings), good=good, now=self._now()
        )
        if change is not None:
            if isinstance(change, EndpointReturned):
                self._fleet.report(service, endpoint, out=False)
            elif (
                self._config is not None
                and routing_plan(self._config.policy(service)).settings.fleet
            ):
                self._fleet.report(service, endpoint, out=True)
            self._announce(change)
        if self._runtime is not None:
            self._runtime.emit(EndpointProbed(service=service, endpoint=endpoint, good=good))

    def _announce(self, event: EndpointDown | EndpointReturned) -> None:
        config = self._config
        endpoint = event.endpoint if config is None else config.redactor.url(event.endpoint)
        if isinstance(event, EndpointDown):
            log, name = _logger.warning, "healkit.endpoint_down"
        else:
            log, name = _logger.info, "healkit.endpoint_returned"
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
            count_failure(self._runtime, error)
            return False


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
