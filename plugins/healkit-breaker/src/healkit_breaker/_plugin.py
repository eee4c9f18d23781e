"""The breaker plugin: healkit hooks around the pure state machine of ``_state``."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, final

import healkit
from healkit.hookspecs import CircuitState
from healkit_breaker._events import BreakerStatus, BreakerTransition, State
from healkit_breaker._settings import SECTION, BreakerSettings, ErrorKind
from healkit_breaker._state import Breaker, Probe, initial_state

__all__ = ["BreakerPlugin"]

_logger: Final = healkit.get_logger("healkit.breaker")

Key = tuple[str, str | None]
"""(service, endpoint); the endpoint is ``None`` for a per-service breaker."""

_ERROR_KINDS: Final[Mapping[ErrorKind, type[healkit.HealkitError]]] = {
    "connect": healkit.ConnectError,
    "connection_lost": healkit.ConnectionLostError,
    "protocol": healkit.ProtocolError,
    "timeout": healkit.TimeoutExceeded,
    "call_error": healkit.CallError,
}
_OPENING: Final = frozenset({State.OPEN, State.FORCED_OPEN})
_CIRCUITS: Final = {
    state: CircuitState(
        state=state.value, retry_at=math.inf if state is State.FORCED_OPEN else None
    )
    for state in State
}
"""The report of a breaker that admits calls, or was never used, by state (nothing to allocate)."""


@final
class _Policy:
    """A service policy's breaker settings, compiled once per configuration snapshot."""

    __slots__ = ("disabled", "failure_errors", "per_endpoint", "registry", "settings")

    def __init__(self, settings: BreakerSettings, registry: dict[Key, Breaker]) -> None:
        self.settings = settings
        self.disabled = settings.mode == "disabled"
        self.per_endpoint = settings.scope == "endpoint"
        self.failure_errors = tuple(_ERROR_KINDS[kind] for kind in settings.failure_errors)
        # The breakers of the snapshot this policy belongs to: calls that started
        # under an older snapshot keep using that snapshot's map.
        self.registry = registry

    def key(self, service: str, endpoint: str | None) -> Key:
        return (service, endpoint if self.per_endpoint else None)


def _counts(
    call: healkit.CallContext,
    attempt: healkit.AttemptContext,
    error: healkit.HealkitError,
    policy: _Policy,
    breaker: Breaker,
) -> bool:
    """Whether ``error`` counts as a failure of the endpoint."""
    if isinstance(error, healkit.HTTPStatusError):
        return error.status in breaker.failure_statuses
    if isinstance(error, healkit.DeadlineExceeded) and call.deadline <= attempt.started:
        return False  # the attempt was never sent
    return isinstance(error, policy.failure_errors)


def _refusing(breaker: Breaker, now: float) -> bool:
    """Whether an unconfigured key's breaker is spared: dropping it would let calls through."""
    del now
    return not breaker.admits


def _attempt_limit(call: healkit.CallContext, attempt: healkit.AttemptContext) -> float:
    """Return the time by which the pipeline ends ``attempt``, whatever happens."""
    started = attempt.started
    return started + min(attempt.timeouts.total, call.deadline - started)


@final
class BreakerPlugin:
    """Circuit breakers for every service, configured by the ``breaker`` section.

    One instance per runtime (the entry point makes one per plugin manager);
    the breakers of configured services and endpoints live as long as the
    configuration names them and survive compatible configuration changes. The
    breakers of other keys (hosts called by absolute URL, services without a
    document) are kept within the ``state`` bounds: dropped after
    ``state.idle_expiry`` unused, least recently used first out beyond
    ``state.max_unconfigured``, a breaker that refuses calls last. Other
    plugins ask it through hooks: ``healkit_endpoint_available`` (routing
    avoids an endpoint whose breaker refuses) and ``healkit_circuit_state``
    (tracing, fleet health). Its read API (:meth:`state`, :meth:`available`,
    :meth:`status`, :meth:`snapshot`) is for applications and tests.
    """

    __slots__ = (
        "_compiled",
        "_config",
        "_policy_key",
        "_probe_key",
        "_registry",
        "_runtime",
        "_strangers",
    )

    healkit_name = "breaker"

    def __init__(self) -> None:
        # Keys of this instance: two runtimes sharing a snapshot never mix states.
        self._policy_key = healkit.StashKey[_Policy]("healkit_breaker.policy")
        self._probe_key = healkit.StashKey[Probe]("healkit_breaker.probe")
        self._registry: dict[Key, Breaker] = {}
        bounds = healkit.StateSettings()
        self._strangers = healkit.BoundedMap[Key, Breaker](
            capacity=bounds.max_unconfigured,
            idle_expiry=bounds.idle_expiry,
            spare=_refusing,
            evicted=self._evicted,
        )
        # The compiled policies of the snapshot in force, by policy object: what
        # policy.stash holds too, found with one dict look-up instead of a
        # method call by the two hooks every attempt runs (measured: ~50 ns a
        # look-up against ~120-170 ns for Stash.get).
        self._compiled: dict[healkit.ServicePolicy, _Policy] = {}
        self._config: healkit.HealkitConfig | None = None
        self._runtime: healkit.Runtime | None = None

    def __repr__(self) -> str:
        return f"<BreakerPlugin {len(self._registry) + len(self._strangers)} breakers>"

    @property
    def unconfigured_breakers(self) -> healkit.BoundedMap[Key, Breaker]:
        """The breakers of unconfigured services and endpoints (bounded by ``state``)."""
        return self._strangers

    # -- configuration ---------------------------------------------------------------

    @healkit.hookimpl
    def healkit_config_sections(self) -> Sequence[healkit.ConfigSection[Any]]:
        """Contribute the ``breaker`` section."""
        return (SECTION,)

    @healkit.hookimpl
    def healkit_configure(self, config: healkit.HealkitConfig, runtime: healkit.Runtime) -> None:
        """Carry the breakers over to a new snapshot, keeping what is compatible.

        A breaker whose key still exists (its service is still per-endpoint, or
        it has no endpoint) and whose window kind is unchanged keeps its state
        and window and takes the new settings; one whose window kind changed is
        replaced by a fresh one; one whose key is gone is dropped. Replaced and
        dropped breakers emit a ``"reset"`` transition if their state changes.
        A key that the new configuration names keeps its breaker for as long
        as it does; the breakers of other keys are bounded by ``state``.
        """
        self._runtime = runtime
        now = runtime.clock.now()
        before, self._config = self._config, config
        strangers, registry = self._strangers, self._registry
        touched = self._touched(config, before)
        for key, breaker in touched:
            service, endpoint = key
            policy = self._policy(config.policy(service))
            settings = policy.settings
            if endpoint is not None and not policy.per_endpoint:
                strangers.pop(key)
                breaker.retire(now)
                continue
            kept = breaker
            if settings.window != breaker.window_kind:
                kept = Breaker(service, endpoint, settings, self._notify, now=now, since=now)
                breaker.retire(now, kept.state)
                strangers.pop(key)
            else:
                breaker.reconfigure(settings, now)
            if config.configured(service, endpoint):
                strangers.pop(key)
                registry[key] = kept
            elif key not in strangers:  # an unconfigured key's breaker keeps its place
                strangers.put(key, kept, now)
        strangers.resize(config.state.max_unconfigured, config.state.idle_expiry, now)

    def _touched(
        self, config: healkit.HealkitConfig, before: healkit.HealkitConfig | None
    ) -> list[tuple[Key, Breaker]]:
        """Take out of the registry the breakers whose policy ``config`` may have changed.

        Only the breakers of changed services (and, if the defaults changed, of
        unconfigured ones) need a look; the others keep their policy. Without
        a known change set, every breaker does.
        """
        strangers, registry = self._strangers, self._registry
        changes = config.changes_since(before)
        if before is None or changes is None:
            self._compiled.clear()
            touched = [*registry.items(), *strangers.items()]
            registry.clear()
            return touched
        # The fewer of the changed services and the breakers are gone through.
        names = changes.services
        compiled = self._compiled
        if len(names) < len(compiled):
            for name in names:
                if (old := before.services.get(name)) is not None:
                    compiled.pop(old, None)
        else:
            self._compiled = {p: c for p, c in compiled.items() if config.policy(p.name) is p}
        if changes.defaults:
            self._compiled.pop(before.defaults, None)
        if len(names) < len(registry):
            keys = [
                (name, endpoint)
                for name in names
                if (old := before.services.get(name)) is not None
                for endpoint in (None, *old.known_endpoints)
            ]
        else:
            keys = [key for key in registry if key[0] in names]
        touched = [(key, registry.pop(key)) for key in keys if key in registry]
        touched.extend(
            (key, breaker)
            for key, breaker in strangers.items()
            if changes.defaults or key[0] in names
        )
        return touched

    def _policy(self, policy: healkit.ServicePolicy) -> _Policy:
        """Return the compiled ``policy``, compiled on its first call in its snapshot.

        The breakers' registry is the plugin's own, one for every snapshot, so
        a policy kept from one snapshot to the next keeps its compiled form.
        """
        compiled = policy.stash.get(self._policy_key)
        if compiled is None:
            compiled = policy.stash[self._policy_key] = _Policy(
                policy.section(SECTION), self._registry
            )
        config = self._config
        if config is not None and config.policy(policy.name) is policy:
            self._compiled[policy] = compiled  # not the policy of an older snapshot
        return compiled

    def _breaker(
        self, config: healkit.HealkitConfig, policy: _Policy, key: Key, now: float
    ) -> Breaker:
        """Return the breaker of a key not in ``policy.registry``: bounded, or new."""
        breaker = self._strangers.get(key, now)
        if breaker is None:
            breaker = Breaker(key[0], key[1], policy.settings, self._notify, now=now)
            if config.configured(*key):
                policy.registry[key] = breaker
            else:
                self._strangers.put(key, breaker, now)
        return breaker

    def _evicted(self, key: Key, breaker: Breaker, reason: healkit.EvictionReason) -> None:
        del breaker
        if self._runtime is not None:
            event = healkit.StateEvicted(
                owner="breaker", service=key[0], endpoint=key[1], reason=reason
            )
            self._runtime.emit(event)

    def _notify(self, event: BreakerTransition) -> None:
        """Log a transition and hand it to the ``healkit_event`` subscribers."""
        config = self._config
        endpoint = event.endpoint
        if endpoint is not None and config is not None:
            endpoint = config.redactor.url(endpoint)
        log = _logger.warning if event.to_state in _OPENING else _logger.info
        log(
            "healkit.breaker_transition",
            service=event.service,
            endpoint=endpoint,
            from_state=event.from_state.value,
            to_state=event.to_state.value,
            reason=event.reason,
            failures=event.failures,
            calls=event.calls,
            slow_calls=event.slow_calls,
            at=event.at,
        )
        if self._runtime is not None:
            self._runtime.emit(event)

    # -- the pipeline --------------------------------------------------------------------

    @healkit.hookimpl(tryfirst=True)
    def healkit_pre_request(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> healkit.CircuitOpenError | None:
        """Admit the attempt, or refuse it with ``CircuitOpenError`` before anything is done.

        The refusal is returned, not raised: nothing unwinds. A closed breaker
        keeps nothing per attempt; a half-open one gives the attempt a probe
        slot, kept in ``attempt.stash``.
        """
        policy = self._compiled.get(call.policy) or self._policy(call.policy)
        if policy.disabled:
            return None
        key = (call.service, attempt.endpoint if policy.per_endpoint else None)  # policy.key()
        breaker = policy.registry.get(key) or self._breaker(
            call.config, policy, key, call.clock.now()
        )
        if breaker.admits:
            return None
        now = call.clock.now()
        # An open breaker refuses without a probe slot to offer: no limit to build.
        probe = (
            None
            if breaker.refuses(now)
            else breaker.try_probe(now, functools.partial(_attempt_limit, call, attempt))
        )
        if probe is None:
            return healkit.CircuitOpenError(call.service, key[1], retry_at=breaker.retry_at(now))
        attempt.stash[self._probe_key] = probe
        return None

    @healkit.hookimpl
    def healkit_post_response(
        self,
        call: healkit.CallContext,
        attempt: healkit.AttemptContext,
        response: healkit.Response | None,
    ) -> None:
        """Count the attempt: a failure if its status is one of ``failure_statuses``.

        The breaker only observes: it never declares a response a failure (the
        retry plugin, or the caller, decides what a response means).
        """
        # self._judging(), inlined, with the compiled policy looked up in
        # self._compiled first: this is the hot path of every successful call.
        policy = self._compiled.get(call.policy) or call.policy.stash.get(self._policy_key)
        if policy is None or policy.disabled:
            return
        key = (call.service, attempt.endpoint if policy.per_endpoint else None)
        breaker = policy.registry.get(key) or self._strangers.get(key, attempt.started)
        if breaker is None:
            return
        # The pipeline set attempt.duration when the response arrived: no clock read.
        duration = attempt.duration or 0.0
        now = attempt.started + duration
        failure = response is not None and response.status in breaker.failure_statuses
        slow = duration > breaker.slow_threshold
        if breaker.admits:
            breaker.record(attempt.started, now, failure, slow)
        else:
            self._probe_ended(attempt, now, failure, slow, counts=True)

    @healkit.hookimpl
    def healkit_on_error(
        self,
        call: healkit.CallContext,
        attempt: healkit.AttemptContext,
        error: healkit.HealkitError,
    ) -> None:
        """Count a failed attempt if its error is one of ``failure_errors``; never decide.

        An attempt whose response was judged by ``healkit_post_response`` was
        counted there, even if a plugin then declared it a failure (an
        ``HTTPStatusError``); one whose body failed after the head arrived (a
        ``ProtocolError``, a timeout) is counted here.
        Errors that say nothing about the endpoint (this breaker's own refusal,
        another plugin's, a deadline that passed before the attempt started, a
        body over the cap, a status not in ``failure_statuses``) count nothing
        and free the attempt's probe slot, if it holds one.
        """
        if isinstance(error, healkit.CircuitOpenError) or (
            attempt.status is not None and isinstance(error, healkit.HTTPStatusError)
        ):
            # This breaker refused the attempt, or a response was judged in
            # post_response already (a plugin then declared it a failure). A body
            # that failed after the head arrived (a ProtocolError, a timeout) was
            # never judged: it is counted here.
            return
        found = self._judging(call, attempt)
        if found is None:
            return
        policy, breaker = found
        now = call.clock.now()
        counts = _counts(call, attempt, error, policy, breaker)
        slow = now - attempt.started > breaker.slow_threshold
        if breaker.admits:
            if counts:
                breaker.record(attempt.started, now, True, slow)  # noqa: FBT003 - a failure
        else:
            self._probe_ended(attempt, now, True, slow, counts=counts)  # noqa: FBT003 - a failure

    @healkit.hookimpl
    def healkit_attempt_cancelled(self, attempt: healkit.AttemptContext) -> None:
        """Free the probe slot of a hedge race's loser, if it holds one; count nothing.

        A cancelled attempt got no answer: it says nothing about its endpoint.
        """
        self._probe_ended(attempt, 0.0, False, False, counts=False)  # noqa: FBT003 - not counted

    def _judging(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> tuple[_Policy, Breaker] | None:
        """Return the compiled policy and the breaker that admitted ``attempt``, if any."""
        policy = call.policy.stash.get(self._policy_key)
        if policy is None or policy.disabled:
            return None
        # None if a later plugin re-routed the attempt to an endpoint never seen
        # (not supported: re-route before this plugin, or with a RetryDecision).
        key = policy.key(call.service, attempt.endpoint)
        breaker = policy.registry.get(key) or self._strangers.get(key, attempt.started)
        return None if breaker is None else (policy, breaker)

    def _probe_ended(
        self,
        attempt: healkit.AttemptContext,
        now: float,
        failure: bool,
        slow: bool,
        *,
        counts: bool,
    ) -> None:
        """Report the end of an attempt that may hold a probe slot (of whichever breaker)."""
        stash = attempt.stash
        probe = stash.get(self._probe_key)
        if probe is None:
            return
        del stash[self._probe_key]
        if counts:
            probe.breaker.record_probe(probe, now, failure, slow)
        else:
            probe.breaker.release_probe(probe)

    # -- the hooks other plugins ask (routing, tracing) ------------------------------------

    @healkit.hookimpl
    def healkit_endpoint_available(self, service: str, endpoint: str) -> bool:
        """Answer :meth:`available`: routing sends no attempt where this breaker would refuse it."""
        return self.available(service, endpoint)

    @healkit.hookimpl
    def healkit_circuit_state(self, service: str, endpoint: str | None) -> CircuitState:
        """Report the state of the breaker guarding ``endpoint``, and when it may admit calls."""
        breaker, settings = self._find(service, endpoint)
        if breaker is None:
            return _CIRCUITS[initial_state(settings.mode)]
        now = self._now()
        state = breaker.current(now)
        if breaker.admits:
            return _CIRCUITS[state]
        status = breaker.status(now)
        return CircuitState(state=status.state.value, retry_at=status.retry_at)

    # -- the read API ---------------------------------------------------------------------

    def state(self, service: str, endpoint: str | None = None) -> State:
        """Return the state of the breaker that guards ``endpoint`` of ``service``.

        ``endpoint`` is a base URL as in ``attempt.endpoint``; it is ignored for
        a service whose ``scope`` is ``"service"``. A breaker never used yet is
        reported in the state its ``mode`` gives it (``CLOSED`` normally). An
        open breaker whose open duration has passed is moved to ``HALF_OPEN``
        (and the transition emitted), so that a router sees it may send a probe.
        """
        breaker, settings = self._find(service, endpoint)
        if breaker is None:
            return initial_state(settings.mode)
        return breaker.current(self._now())

    def available(self, service: str, endpoint: str | None = None) -> bool:
        """Whether a call to ``endpoint`` of ``service`` would be admitted now.

        True when closed, forced closed or disabled, and when half-open with a
        free probe slot. It takes no slot: a router that sends a call there may
        still see it refused by a concurrent caller.
        """
        breaker, settings = self._find(service, endpoint)
        if breaker is None:
            return settings.mode != "force_open"
        return breaker.available(self._now())

    def status(self, service: str, endpoint: str | None = None) -> BreakerStatus | None:
        """Return the status of that breaker, or ``None`` if no call created it yet."""
        breaker, _ = self._find(service, endpoint)
        return None if breaker is None else breaker.status(self._now())

    def snapshot(self) -> tuple[BreakerStatus, ...]:
        """Return the status of every breaker, sorted by service and endpoint."""
        now = self._now()
        every = [*self._registry.items(), *self._strangers.items()]
        ordered = sorted(every, key=lambda item: (item[0][0], item[0][1] or ""))
        return tuple(breaker.status(now) for _, breaker in ordered)

    def _find(self, service: str, endpoint: str | None) -> tuple[Breaker | None, BreakerSettings]:
        config = self._config
        if config is None:
            return None, BreakerSettings()
        policy = self._policy(config.policy(service))
        key = policy.key(service, endpoint)
        breaker = self._registry.get(key) or self._strangers.get(key, self._now())
        return breaker, policy.settings

    def _now(self) -> float:
        runtime = self._runtime
        return runtime.clock.now() if runtime is not None else healkit.MonotonicClock().now()
