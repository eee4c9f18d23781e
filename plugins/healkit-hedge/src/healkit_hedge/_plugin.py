"""The hedge plugin: when to send the same request again, and whether the budget allows it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, final

import msgspec

import healkit
from healkit.plugin import BudgetParams, RequestBudget

from ._estimator import LatencyEstimator
from ._settings import SECTION, HedgeSettings

__all__ = ["HedgeBudgetExhausted", "HedgePlugin", "HedgeStatus"]


@final
class HedgeBudgetExhausted(msgspec.Struct, frozen=True, kw_only=True):
    """Event: the hedge budget of a service declined a hedge.

    Emitted with ``runtime.emit`` (observe it in ``healkit_event``) when a
    hedge is declined for want of budget, at most once per ``budget_window``
    per service.

    Attributes:
        service: the service whose budget is spent.
        window_requests: calls counted in the current window.
        window_hedges: hedges sent in the current window.

    """

    service: str
    window_requests: int
    window_hedges: int


@final
class HedgeStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The hedging state of one service, as :meth:`HedgePlugin.status` sees it.

    Attributes:
        service: the service.
        delay: seconds; the hedge delay a call of the service gets now (the
            fixed ``delay`` or the percentile, never below ``min_delay``);
            ``None`` when hedging is off for it or the percentile is not
            known yet.
        estimate: seconds; the ``percentile`` of its recent latency (``None``
            until enough answers were timed).
        samples: the answers the estimate is made of.
        window_requests: calls counted in the budget's window.
        window_hedges: hedges sent in the budget's window.
        declined: hedges the budget declined since this state was created.

    """

    service: str
    delay: float | None
    estimate: float | None
    samples: int
    window_requests: int
    window_hedges: int
    declined: int


@final
class _Policy:
    """The hedge settings of one service policy, in the shape the hooks use.

    Built once per policy per configuration snapshot and kept in ``policy.stash``.
    """

    __slots__ = ("active", "fixed", "floor", "max_hedges", "params", "percentile")

    def __init__(self, settings: HedgeSettings) -> None:
        self.active = settings.active
        self.fixed = None if settings.delay is None else max(settings.delay, settings.min_delay)
        self.floor = settings.min_delay
        self.max_hedges = settings.max_hedges
        self.percentile = settings.percentile
        self.params = budget_params(settings)

    def delay(self, estimator: LatencyEstimator) -> float | None:
        """Return the delay a call gets now: fixed, or the estimate (``None``: not known yet)."""
        if self.fixed is not None:
            return self.fixed
        estimate = estimator.estimate
        return None if estimate is None else max(estimate, self.floor)


POLICY: Final = healkit.StashKey[_Policy]("healkit_hedge.policy")
"""The derived settings of a policy, kept in ``policy.stash``."""


def budget_params(settings: HedgeSettings) -> BudgetParams:
    """Return the parameters that make two hedge budgets interchangeable."""
    return (settings.budget_ratio, settings.budget_window, settings.budget_min_per_second)


@final
class _Service:
    """What the plugin keeps per service: its latency estimate and its hedge budget."""

    __slots__ = ("budget", "declined", "estimator")

    def __init__(self, settings: HedgeSettings) -> None:
        self.estimator = LatencyEstimator(settings.percentile)
        self.budget = _budget(budget_params(settings))
        self.declined = 0

    def apply(self, settings: HedgeSettings, now: float) -> None:
        """Take new settings: the samples stay, and so do the budget's counts at ``now``."""
        self.estimator.retarget(settings.percentile)
        params = budget_params(settings)
        if params != self.budget.params:
            budget = _budget(params)
            budget.carry(self.budget, now)
            self.budget = budget


def _budget(params: BudgetParams) -> RequestBudget:
    ratio, window, minimum = params
    return RequestBudget(ratio=ratio, window=window, minimum_per_second=minimum)


def _active(config: healkit.HealkitConfig) -> bool:
    """Whether a policy of ``config`` sends hedges."""
    policies = (config.defaults, *config.services.values())
    return any(policy.section(SECTION).active for policy in policies)


@final
class HedgePlugin:
    """Hedged requests: after a delay with no answer, the same request again, within a budget.

    One instance per runtime. The state of services with a document (their
    latency estimate, their hedge budget) lives as long as the configuration
    names them; that of the others within the ``state`` bounds. With no
    policy enabling hedging, the plugin leaves the call plan
    (``healkit_idle``) and costs nothing.
    """

    __slots__ = ("_active_key", "_config", "_runtime", "_services", "_strangers")

    healkit_name = "hedge"

    def __init__(self) -> None:
        self._services: dict[str, _Service] = {}
        bounds = healkit.StateSettings()
        self._strangers = healkit.BoundedMap[str, _Service](
            capacity=bounds.max_unconfigured,
            idle_expiry=bounds.idle_expiry,
            evicted=self._evicted,
        )
        self._config: healkit.HealkitConfig | None = None
        self._runtime: healkit.Runtime | None = None
        self._active_key = healkit.StashKey[bool]("healkit_hedge.active")

    def __repr__(self) -> str:
        return f"<HedgePlugin services={len(self._services) + len(self._strangers)}>"

    @property
    def unconfigured_services(self) -> healkit.BoundedMap[str, _Service]:
        """The state of services without a document (bounded by the ``state`` settings)."""
        return self._strangers

    def status(self) -> list[HedgeStatus]:
        """Return the hedging state of every service the plugin keeps state for."""
        config = self._config
        states = [*self._services.items(), *self._strangers.items()]
        statuses = []
        for service, state in states:
            derived = None
            if config is not None:
                policy = config.policy(service)
                derived = policy.stash.get(POLICY) or _derive(policy)
            delay = derived.delay(state.estimator) if derived and derived.active else None
            statuses.append(
                HedgeStatus(
                    service=service,
                    delay=delay,
                    estimate=state.estimator.estimate,
                    samples=state.estimator.samples,
                    window_requests=state.budget.requests,
                    window_hedges=state.budget.spent,
                    declined=state.declined,
                )
            )
        return statuses

    # -- configuration -----------------------------------------------------------------

    @healkit.hookimpl
    def healkit_config_sections(self) -> Sequence[healkit.ConfigSection[Any]]:
        """Contribute the ``hedge`` section."""
        return (SECTION,)

    @healkit.hookimpl
    def healkit_prepare(self, config: healkit.HealkitConfig) -> None:
        """Note whether any policy sends hedges (off the event loop)."""
        config.stash[self._active_key] = _active(config)

    @healkit.hookimpl
    def healkit_idle(self, config: healkit.HealkitConfig) -> bool:
        """Whether no policy sends hedges (then the hooks stay out of the plan)."""
        active = config.stash.get(self._active_key)  # None: healkit_prepare failed
        return not (_active(config) if active is None else active)

    @healkit.hookimpl
    def healkit_configure(self, config: healkit.HealkitConfig, runtime: healkit.Runtime) -> None:
        """Carry each service's state over to ``config``.

        A service whose policy still hedges keeps its latency samples (the
        estimate follows the new ``percentile``) and its budget's counts (a
        budget with new ``budget_*`` settings takes over the old one's window,
        so a reload never grants the reserve afresh). A service whose policy
        no longer hedges loses its state.

        Only the services the new snapshot changed are looked at
        (:meth:`healkit.HealkitConfig.changes_since`), every one when the
        defaults changed: a reload costs the event loop what it changed.
        """
        self._runtime = runtime
        before, self._config = self._config, config
        changes = config.changes_since(before)
        now = runtime.clock.now()
        services, strangers = self._services, self._strangers
        if changes is None or changes.defaults:
            touched = [*services.items(), *strangers.items()]
            services.clear()
        else:
            names = changes.services
            changed = names if len(names) < len(services) else [n for n in services if n in names]
            touched = [(name, services.pop(name)) for name in changed if name in services]
            touched.extend((s, state) for s, state in strangers.items() if s in names)
        for service, state in touched:
            settings = config.policy(service).section(SECTION)
            if not settings.active:
                strangers.pop(service)
                continue
            state.apply(settings, now)
            if config.configured(service):
                strangers.pop(service)
                services[service] = state
            elif service not in strangers:
                strangers.put(service, state, now)
        strangers.resize(config.state.max_unconfigured, config.state.idle_expiry, now)

    # -- per call --------------------------------------------------------------------------

    @healkit.hookimpl
    def healkit_hedge_delay(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> float | None:
        """Give the hedge delay for a call that may be sent twice and has hedges left.

        Hedges left: fewer than ``max_hedges`` sent, and the hedge's number
        within the call's ``attempt_limit`` (the caller's ``attempts=``). The
        first attempt of every call of a hedging service counts as a request
        of its budget.
        """
        derived = call.policy.stash.get(POLICY) or _derive(call.policy)
        if not derived.active:
            return None
        state = self._services.get(call.service) or self._state(call, call.started)
        if attempt.number == 1:
            state.budget.record_request(call.started)
        if not (call.replayable and call.idempotent):
            return None  # a request that may not be sent twice is never hedged
        limit = call.attempt_limit  # the caller's attempts=, the test mode's attempts
        if limit is not None and attempt.number >= limit:
            return None  # the hedge would be one attempt more than the caller allows
        hedges = attempt.hedge + sum(1 for a in call.attempts if a.hedge and a is not attempt)
        if hedges >= derived.max_hedges:
            return None
        return derived.delay(state.estimator)

    @healkit.hookimpl
    def healkit_hedge(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> bool | None:
        """Spend the budget on the hedge due after ``attempt``, or decline it.

        A call of a service this plugin does not hedge (another plugin gave
        its delay) is none of its business: no answer.
        """
        del attempt
        derived = call.policy.stash.get(POLICY) or _derive(call.policy)
        if not derived.active:
            return None
        now = call.clock.now()
        state = self._services.get(call.service) or self._state(call, now)
        budget = state.budget
        if budget.try_spend(now):
            return True
        state.declined += 1
        runtime = self._runtime
        if runtime is not None and budget.should_report(now):
            runtime.emit(
                HedgeBudgetExhausted(
                    service=call.service,
                    window_requests=budget.requests,
                    window_hedges=budget.spent,
                )
            )
        return False

    @healkit.hookimpl
    def healkit_post_response(
        self,
        call: healkit.CallContext,
        attempt: healkit.AttemptContext,
        response: healkit.Response | None,
    ) -> None:
        """Time the answer: the latency estimate follows answered attempts."""
        del response
        self._sample(call, attempt)

    @healkit.hookimpl
    def healkit_attempt_cancelled(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> None:
        """Count a cancelled attempt's time so far: its latency was at least that.

        Without it the estimate would lose the slow answers that hedges cut
        short, fall, and hedge ever sooner.
        """
        self._sample(call, attempt)

    def _sample(self, call: healkit.CallContext, attempt: healkit.AttemptContext) -> None:
        derived = call.policy.stash.get(POLICY) or _derive(call.policy)
        duration = attempt.duration
        if not derived.active or duration is None:
            return
        state = self._services.get(call.service) or self._state(call, call.clock.now())
        state.estimator.record(duration)

    # -- helpers -------------------------------------------------------------------------

    def _state(self, call: healkit.CallContext, now: float) -> _Service:
        """Return the state of ``call.service`` when it is not a configured one's yet."""
        service = call.service
        state = self._strangers.get(service, now)
        if state is not None:
            return state
        # A call that started under an older snapshot must not revive old settings.
        config = self._config or call.config
        state = _Service(config.policy(service).section(SECTION))
        if config.configured(service):
            self._services[service] = state
        else:
            self._strangers.put(service, state, now)
        return state

    def _evicted(self, service: str, state: _Service, reason: healkit.EvictionReason) -> None:
        del state
        if self._runtime is not None:
            self._runtime.emit(
                healkit.StateEvicted(owner="hedge", service=service, endpoint=None, reason=reason)
            )


def _derive(policy: healkit.ServicePolicy) -> _Policy:
    derived = policy.stash[POLICY] = _Policy(policy.section(SECTION))
    return derived
