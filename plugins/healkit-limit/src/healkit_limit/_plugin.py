"""The limit plugin: healkit hooks around the limiter, the throttle and the token bucket."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Sequence
from typing import Any, Final, final

import msgspec

import healkit
from healkit.etcd import EtcdSource
from healkit_limit._adaptive import GradientLimit
from healkit_limit._fleet import FleetCount
from healkit_limit._limiter import Limiter
from healkit_limit._rate import TokenBucket
from healkit_limit._settings import SECTION, LimitSettings
from healkit_limit._throttle import Throttle

__all__ = ["LimitPlugin", "LimitStatus"]

_logger: Final = healkit.get_logger("healkit.limit")

Key = tuple[str, str | None]
"""(service, endpoint); the endpoint is ``None`` for per-service limits."""


@final
class LimitStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The state of the limits of one service (or endpoint), as :meth:`LimitPlugin.status` sees it.

    Attributes:
        service: the service.
        endpoint: the endpoint (``None`` for per-service limits).
        limit: attempts admitted at once (``None``: no concurrency limit).
        in_flight: attempts holding a slot.
        queued: attempts waiting for one.
        min_rtt: the adaptive limit's unloaded latency, in seconds (``None``
            if the limit is not adaptive or nothing ended yet).
        throttle_probability: the probability that adaptive throttling
            refuses an attempt now (0 without throttling).
        requests: requests in the throttle's window.
        accepts: accepts in the throttle's window.
        tokens: tokens in the rate limit's bucket (``None`` without a rate limit).
        rate: the rate this instance applies, in attempts a second (``None``
            without a rate limit): with ``rate_scope = "fleet"``, its share.
        burst: the most tokens its bucket holds (``None`` without a rate limit).
        instances: the live instances a fleet-wide rate is shared by (``None``
            with ``rate_scope = "instance"``).

    """

    service: str
    endpoint: str | None
    limit: int | None
    in_flight: int
    queued: int
    min_rtt: float | None
    throttle_probability: float
    requests: int
    accepts: int
    tokens: float | None
    rate: float | None
    burst: float | None
    instances: int | None


@final
class _Limits:
    """The limits of one key: whichever of the three its settings turn on."""

    __slots__ = ("bucket", "limiter", "settings", "throttle")

    def __init__(self, settings: LimitSettings, now: float, instances: int) -> None:
        self.limiter: Limiter | None = None
        self.throttle: Throttle | None = None
        self.bucket: TokenBucket | None = None
        self.settings = settings
        self.apply(settings, now, instances)

    def apply(self, settings: LimitSettings, now: float, instances: int) -> None:
        """Take ``settings``, keeping what they still ask for.

        Slots in use, the learned adaptive limit, the throttle's counts (if
        its window is unchanged) and the tokens carry over. A fleet-wide rate
        is shared by ``instances``.
        """
        self.settings = settings
        self._apply_concurrency(settings, now)
        throttle = self.throttle
        if not settings.throttle:
            self.throttle = None
        elif throttle is None or throttle.window != settings.throttle_window:
            self.throttle = Throttle(settings.throttle_k, settings.throttle_window, now)
        else:
            throttle.k = settings.throttle_k
        self.apply_rate(now, instances)

    def apply_rate(self, now: float, instances: int) -> None:
        """Set the bucket from the settings; a fleet-wide rate is shared by ``instances``."""
        settings, bucket = self.settings, self.bucket
        if settings.rate is None:
            self.bucket = None
            return
        rate, size = settings.bucket(instances)
        if bucket is None:  # a share of the fleet's bucket starts empty: see TokenBucket
            self.bucket = TokenBucket(rate, size, now, empty=settings.rate_scope == "fleet")
        else:
            bucket.reconfigure(rate, size, now)

    def _apply_concurrency(self, settings: LimitSettings, now: float) -> None:
        limiter = self.limiter
        if settings.concurrency is None:
            self.drop()
            return
        adaptive = None
        if settings.adaptive:
            adaptive = limiter.adaptive if limiter is not None else None
            if adaptive is None:
                adaptive = GradientLimit(settings, now)
            else:
                adaptive.reconfigure(settings)
        if limiter is None:
            self.limiter = Limiter(settings.concurrency, settings.queue, adaptive)
        else:
            limiter.reconfigure(settings.concurrency, settings.queue, adaptive)

    def drop(self) -> None:
        """Turn the concurrency limit off: its waiters go at once.

        Attempts holding a slot (and the waiters let go) give it back to the
        old limiter when they end.
        """
        if self.limiter is not None:
            self.limiter.open()
            self.limiter = None

    @property
    def busy(self) -> bool:
        """Whether attempts hold or wait for a slot (their state is not dropped)."""
        return self.limiter is not None and self.limiter.busy


@final
class _Policy:
    """A service policy's limit settings, compiled once per configuration snapshot."""

    __slots__ = ("fleet", "off", "per_endpoint", "rejects", "settings", "smooth")

    def __init__(self, settings: LimitSettings) -> None:
        self.settings = settings
        self.off = not settings.active
        self.fleet = settings.rate is not None and settings.rate_scope == "fleet"
        self.per_endpoint = settings.scope == "endpoint"
        self.smooth = settings.rate_mode == "smooth"
        self.rejects = frozenset(settings.reject_statuses)


@final
class _Held:
    """What an admitted attempt holds: its slot (if any) and the throttle that counted it."""

    __slots__ = ("limiter", "rejects", "throttle")

    def __init__(
        self, limiter: Limiter | None, throttle: Throttle | None, rejects: frozenset[int]
    ) -> None:
        self.limiter = limiter
        self.throttle = throttle
        self.rejects = rejects


def _spare(limits: _Limits, now: float) -> bool:
    """Whether an unconfigured key's limits are kept beyond the bounds: attempts use them."""
    del now
    return limits.busy


def _active(config: healkit.HealkitConfig) -> bool:
    policies = (config.defaults, *config.services.values())
    return any(policy.section(SECTION).active for policy in policies)


def _fleet_wide(config: healkit.HealkitConfig) -> bool:
    policies = (config.defaults, *config.services.values())
    return any(policy.section(SECTION).rate_scope == "fleet" for policy in policies)


@final
class LimitPlugin:
    """Concurrency limits, adaptive throttling and rate limits, configured by the ``limit`` section.

    One instance per runtime (the entry point makes one per plugin manager).
    The limits of configured services and endpoints live as long as the
    configuration names them and keep their state (slots in use, the learned
    adaptive limit, throttle counts, tokens) across compatible configuration
    changes. The limits of other keys (hosts called by absolute URL, services
    without a document, under ``defaults``) are kept within the ``state``
    bounds; limits with attempts in flight or queued are evicted last. With no
    limit configured anywhere the plugin leaves the call plan
    (``healkit_idle``) and costs nothing.

    Args:
        rng: the random source of adaptive throttling (a seeded
            ``random.Random`` makes refusals reproducible in tests).

    """

    __slots__ = (
        "_active_key",
        "_compiled",
        "_config",
        "_fleet",
        "_fleet_key",
        "_held_key",
        "_policy_key",
        "_random",
        "_registry",
        "_runtime",
        "_strangers",
    )

    healkit_name = "limit"

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._policy_key = healkit.StashKey[_Policy]("healkit_limit.policy")
        self._held_key = healkit.StashKey[_Held]("healkit_limit.held")
        self._active_key = healkit.StashKey[bool]("healkit_limit.active")
        self._fleet_key = healkit.StashKey[bool]("healkit_limit.fleet")
        self._fleet = FleetCount(self._rebalance)
        # Not for security: a refusal probability (S311 is about secrets).
        self._random = rng if rng is not None else random.Random()  # noqa: S311
        self._registry: dict[Key, _Limits] = {}
        bounds = healkit.StateSettings()
        self._strangers = healkit.BoundedMap[Key, _Limits](
            capacity=bounds.max_unconfigured,
            idle_expiry=bounds.idle_expiry,
            spare=_spare,
            evicted=self._evicted,
        )
        self._compiled: dict[healkit.ServicePolicy, _Policy] = {}
        self._config: healkit.HealkitConfig | None = None
        self._runtime: healkit.Runtime | None = None

    def __repr__(self) -> str:
        return f"<LimitPlugin {len(self._registry) + len(self._strangers)} limits>"

    @property
    def unconfigured_limits(self) -> healkit.BoundedMap[Key, _Limits]:
        """The limits of unconfigured services and endpoints (bounded by ``state``)."""
        return self._strangers

    # -- configuration ---------------------------------------------------------------

    @healkit.hookimpl
    def healkit_config_sections(self) -> Sequence[healkit.ConfigSection[Any]]:
        """Contribute the ``limit`` section."""
        return (SECTION,)

    @healkit.hookimpl
    def healkit_prepare(self, config: healkit.HealkitConfig) -> None:
        """Note whether any policy turns a limit on, off the event loop."""
        config.stash[self._active_key] = _active(config)
        config.stash[self._fleet_key] = _fleet_wide(config)

    @healkit.hookimpl
    def healkit_idle(self, config: healkit.HealkitConfig) -> bool:
        """Whether no policy turns a limit on (then the hooks stay out of the plan)."""
        active = config.stash.get(self._active_key)  # None: healkit_prepare failed
        return not (_active(config) if active is None else active)

    @healkit.hookimpl
    def healkit_configure(self, config: healkit.HealkitConfig, runtime: healkit.Runtime) -> None:
        """Carry the limits over to a new snapshot, keeping what the new settings still ask for.

        A key whose policy still turns a limit on keeps its state, with the
        new settings; one whose limits are all off, or whose service is no
        longer per-endpoint, is dropped (attempts holding a slot give it back
        to the limiter they took it from).
        """
        self._runtime = runtime
        self._config = config
        self._compiled.clear()
        if self._fleet_wide(config):
            self._count_fleet(runtime)
        now = runtime.clock.now()
        instances = self._fleet.size
        strangers, registry = self._strangers, self._registry
        every = [*registry.items(), *strangers.items()]
        registry.clear()
        for key, limits in every:
            service, endpoint = key
            policy = self._policy(config.policy(service))
            if policy.off or (endpoint is not None and not policy.per_endpoint):
                strangers.pop(key)
                limits.drop()
                continue
            limits.apply(policy.settings, now, instances)
            if config.configured(service, endpoint):
                strangers.pop(key)
                registry[key] = limits
            elif key not in strangers:
                strangers.put(key, limits, now)
        strangers.resize(config.state.max_unconfigured, config.state.idle_expiry, now)

    def _fleet_wide(self, config: healkit.HealkitConfig) -> bool:
        """Whether a policy of ``config`` has a fleet-wide rate (noted by ``healkit_prepare``)."""
        fleet_wide = config.stash.get(self._fleet_key)  # None: healkit_prepare failed
        return _fleet_wide(config) if fleet_wide is None else fleet_wide

    def _count_fleet(self, runtime: healkit.Runtime) -> None:
        """Count the live instances through the runtime's etcd source, or say why it cannot."""
        source = runtime.source
        if isinstance(source, EtcdSource):
            self._fleet.follow(source)
        elif not self._fleet.following:
            _logger.error(
                "healkit.limit_fleet_unavailable",
                reason="the configuration is not read from etcd",
                effect="fleet-wide rate limits refuse every attempt",
            )

    def _rebalance(self, instances: int) -> None:
        """Give every fleet-wide bucket its new share: the fleet's size changed."""
        now = self._now()
        for _, limits in (*self._registry.items(), *self._strangers.items()):
            if limits.settings.rate_scope == "fleet":
                limits.apply_rate(now, instances)
        _logger.info("healkit.limit_fleet_rebalanced", instances=instances)

    @healkit.hookimpl
    def healkit_startup(self, runtime: healkit.Runtime) -> None:
        """Count the fleet again if a fleet-wide rate asks for it (a runtime started anew)."""
        config = self._config
        if config is not None and self._fleet_wide(config):
            self._count_fleet(runtime)

    @healkit.hookimpl
    def healkit_shutdown(self) -> None:
        """Stop counting the fleet: a runtime started again counts anew."""
        self._fleet.stop()

    def _policy(self, policy: healkit.ServicePolicy) -> _Policy:
        compiled = policy.stash.get(self._policy_key)
        if compiled is None:
            compiled = policy.stash[self._policy_key] = _Policy(policy.section(SECTION))
        config = self._config
        if config is not None and config.policy(policy.name) is policy:
            self._compiled[policy] = compiled
        return compiled

    def _limits(
        self, config: healkit.HealkitConfig, policy: _Policy, key: Key, now: float
    ) -> _Limits:
        limits = self._strangers.get(key, now)
        if limits is None:
            limits = _Limits(policy.settings, now, self._fleet.size)
            if config.configured(*key):
                self._registry[key] = limits
            else:
                self._strangers.put(key, limits, now)
        return limits

    def _evicted(self, key: Key, limits: _Limits, reason: healkit.EvictionReason) -> None:
        del limits
        if self._runtime is not None:
            event = healkit.StateEvicted(
                owner="limit", service=key[0], endpoint=key[1], reason=reason
            )
            self._runtime.emit(event)

    # -- the pipeline --------------------------------------------------------------------

    @healkit.hookimpl(trylast=True)
    def healkit_admit(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> healkit.OverloadError | Awaitable[healkit.OverloadError | None] | None:
        """Admit the attempt, refuse it, or return the wait for its token or slot.

        In order: adaptive throttling may refuse it (``ThrottledError``); a
        full queue refuses it (``ConcurrencyLimitError``); the rate limit takes
        a token or refuses (``RateLimitedError``; in ``smooth`` mode it may
        reserve a later token instead); the concurrency limit gives it a free
        slot, or it waits in the queue (the returned awaitable).
        """
        policy = self._compiled.get(call.policy) or self._policy(call.policy)
        if policy.off:
            return None
        now = call.clock.now()
        key = (call.service, attempt.endpoint if policy.per_endpoint else None)
        limits = self._registry.get(key) or self._limits(call.config, policy, key, now)
        throttle = limits.throttle
        if throttle is not None and (refusal := self._throttled(throttle, key, now)) is not None:
            return refusal
        limiter = limits.limiter
        if limiter is not None and limiter.queue_full and not limiter.has_room:
            return _queue_full(key, limiter)
        wait = 0.0
        bucket = limits.bucket
        if bucket is not None:
            reserved = (
                _reserve(bucket, policy, call, key, now)
                if not policy.fleet or self._fleet.seen
                else self._first_count(call, attempt, policy, key)
            )
            if not isinstance(reserved, float):
                return reserved
            wait = reserved
        if wait == 0.0 and (limiter is None or limiter.try_acquire()):
            self._hold(attempt, policy, limiter, throttle, now)
            return None
        return self._wait(
            call, attempt, policy, key, limiter=limiter, throttle=throttle, wait=wait, started=now
        )

    def _first_count(
        self,
        call: healkit.CallContext,
        attempt: healkit.AttemptContext,
        policy: _Policy,
        key: Key,
    ) -> healkit.RateLimitedError | Awaitable[healkit.OverloadError | None]:
        """Admit a fleet-wide rate's attempt once the fleet's size is known, or refuse it.

        Before the first fleet health record arrives (this instance's own is
        written as it starts), the attempt waits for it, at most ``max_wait``
        and never past the deadline; with nothing to count from (no etcd
        source), it is refused at once. A guess of one instance would let
        every instance send the fleet's whole rate.
        """
        if not self._fleet.following:
            return _fleet_unknown(key)
        allowed = min(policy.settings.max_wait, call.deadline - call.clock.now())
        return self._admit_counted(call, attempt, key, allowed)

    async def _admit_counted(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext, key: Key, allowed: float
    ) -> healkit.OverloadError | None:
        """Wait for the fleet's size, then admit the attempt as if it came now."""
        if allowed <= 0 or not await self._fleet.wait_seen(call.clock, allowed):
            return _fleet_unknown(key)
        admitted = self.healkit_admit(call, attempt)
        return await admitted if isinstance(admitted, Awaitable) else admitted

    def _throttled(self, throttle: Throttle, key: Key, now: float) -> healkit.ThrottledError | None:
        """Refuse with the throttle's probability (unless a probe is due)."""
        probability = throttle.probability(now)
        if probability <= 0 or throttle.probe_due(now) or self._random.random() >= probability:
            return None
        throttle.refused(now)
        return healkit.ThrottledError(
            f"{_where(key)} throttled: the upstream rejects too many calls"
            f" ({throttle.requests} requests, {throttle.accepts} accepted in"
            f" {throttle.window:g}s; refusing {probability:.0%})",
            service=key[0],
            endpoint=key[1],
        )

    async def _wait(  # noqa: PLR0913 - the admission's state, handed over whole
        self,
        call: healkit.CallContext,
        attempt: healkit.AttemptContext,
        policy: _Policy,
        key: Key,
        *,
        limiter: Limiter | None,
        throttle: Throttle | None,
        wait: float,
        started: float,
    ) -> healkit.OverloadError | None:
        """Wait for the reserved token (holding no slot), then for a slot; admit or refuse."""
        clock = call.clock
        if wait > 0:
            await clock.sleep(wait)
        if limiter is not None and not limiter.try_acquire():
            if limiter.queue_full:
                return _queue_full(key, limiter)
            allowed = min(policy.settings.max_wait, call.deadline - started)
            left = allowed - (clock.now() - started)
            if left <= 0 or not await limiter.wait(clock, left):
                return healkit.ConcurrencyLimitError(
                    f"{_where(key)} overloaded: no slot of {limiter.limit} came free"
                    f" within {allowed:g}s",
                    service=key[0],
                    endpoint=key[1],
                )
        self._hold(attempt, policy, limiter, throttle, clock.now())
        return None

    def _hold(
        self,
        attempt: healkit.AttemptContext,
        policy: _Policy,
        limiter: Limiter | None,
        throttle: Throttle | None,
        now: float,
    ) -> None:
        """Note what the admitted attempt holds, for its end to give back and count.

        Kept on the attempt, not the call: a hedged call has several attempts
        in flight, each holding its own slot.
        """
        if throttle is not None:
            throttle.request(now)
        attempt.stash[self._held_key] = _Held(limiter, throttle, policy.rejects)

    @healkit.hookimpl(tryfirst=True)
    def healkit_post_response(
        self,
        call: healkit.CallContext,
        attempt: healkit.AttemptContext,
        response: healkit.Response | None,
    ) -> None:
        """Give the slot back; count the answer (a rejection: a status in ``reject_statuses``)."""
        del call
        held = self._taken(attempt)
        if held is None:
            return
        rejected = response is not None and response.status in held.rejects
        duration = attempt.duration or 0.0
        _ended(held, attempt.started + duration, duration, accepted=not rejected)

    @healkit.hookimpl(tryfirst=True)
    def healkit_on_error(
        self,
        call: healkit.CallContext,
        attempt: healkit.AttemptContext,
        error: healkit.HealkitError,
    ) -> None:
        """Give the slot back; count the failure: only an answer is an accept, never decide.

        A rejection status, a timeout or a transport error is not an accept
        for throttling; a timeout or a rejection status is a drop for the
        adaptive limit. Another answer (a status the caller declared a
        failure, a decorated function's counted exception) is an accept.
        """
        held = self._taken(attempt)
        if held is None:
            return
        now = call.clock.now()
        if isinstance(error, healkit.HTTPStatusError):
            accepted = error.status not in held.rejects
        else:
            accepted = isinstance(error, healkit.CallError)
        dropped = not accepted and (
            isinstance(error, healkit.HTTPStatusError | healkit.TimeoutExceeded)
        )
        _ended(held, now, now - attempt.started, accepted=accepted, dropped=dropped)

    @healkit.hookimpl
    def healkit_attempt_cancelled(self, attempt: healkit.AttemptContext) -> None:
        """Give back the slot of a hedge race's loser: no answer, so nothing is counted."""
        self._release(attempt)

    @healkit.hookimpl
    def healkit_call_abandoned(self, call: healkit.CallContext) -> None:
        """Give back the slot of an attempt that was cancelled with its call."""
        for attempt in call.attempts:
            self._release(attempt)

    def _taken(self, attempt: healkit.AttemptContext) -> _Held | None:
        """Take what ``attempt`` holds off it (``None``: nothing, or given back already)."""
        stash = attempt.stash
        held = stash.get(self._held_key)
        if held is not None:
            del stash[self._held_key]
        return held

    def _release(self, attempt: healkit.AttemptContext) -> None:
        """Give back the slot ``attempt`` holds, if any, counting nothing."""
        held = self._taken(attempt)
        if held is not None and held.limiter is not None:
            held.limiter.release()

    # -- the read API --------------------------------------------------------------------

    def status(self, service: str, endpoint: str | None = None) -> LimitStatus | None:
        """Return the state of the limits of ``service`` (or its ``endpoint``).

        ``endpoint`` is ignored for a service whose ``scope`` is ``"service"``.
        ``None`` when no call created them yet, or no limit is on.
        """
        config = self._config
        if config is None:
            return None
        policy = self._policy(config.policy(service))
        key = (service, endpoint if policy.per_endpoint else None)
        now = self._now()
        limits = self._registry.get(key) or self._strangers.get(key, now)
        if limits is None:
            return None
        limiter, throttle, bucket = limits.limiter, limits.throttle, limits.bucket
        adaptive = limiter.adaptive if limiter is not None else None
        return LimitStatus(
            service=service,
            endpoint=key[1],
            limit=None if limiter is None else limiter.limit,
            in_flight=0 if limiter is None else limiter.in_flight,
            queued=0 if limiter is None else limiter.queued,
            min_rtt=None if adaptive is None else adaptive.min_rtt,
            throttle_probability=0.0 if throttle is None else throttle.probability(now),
            requests=0 if throttle is None else throttle.requests,
            accepts=0 if throttle is None else throttle.accepts,
            tokens=None if bucket is None else bucket.tokens,
            rate=None if bucket is None else bucket.rate,
            burst=None if bucket is None else bucket.size,
            instances=self._fleet.size if limits.settings.rate_scope == "fleet" else None,
        )

    def _now(self) -> float:
        runtime = self._runtime
        return runtime.clock.now() if runtime is not None else healkit.MonotonicClock().now()


def _ended(
    held: _Held, now: float, duration: float, *, accepted: bool, dropped: bool | None = None
) -> None:
    """Count an admitted attempt's end and give its slot back."""
    throttle = held.throttle
    if throttle is not None:
        if accepted:
            throttle.accept(now)
        else:
            throttle.reject()
    limiter = held.limiter
    if limiter is None:
        return
    adaptive = limiter.adaptive
    if adaptive is not None:
        drop = not accepted if dropped is None else dropped
        adaptive.sample(duration, now, in_flight=limiter.in_flight, dropped=drop)
    limiter.release()


def _reserve(
    bucket: TokenBucket, policy: _Policy, call: healkit.CallContext, key: Key, now: float
) -> float | healkit.RateLimitedError:
    """Take a token: the seconds until it is due, or the refusal if it is out of reach."""
    allowed = min(policy.settings.max_wait, call.deadline - now) if policy.smooth else 0.0
    reserved = bucket.reserve(now, allowed)
    if reserved is not None:
        return reserved
    return healkit.RateLimitedError(
        f"{_where(key)} rate limited: {bucket.rate:g} calls/s",
        service=key[0],
        endpoint=key[1],
        retry_after=bucket.wait_for_token(now),
    )


def _fleet_unknown(key: Key) -> healkit.RateLimitedError:
    return healkit.RateLimitedError(
        f"{_where(key)} rate limited: its rate is the fleet's (rate_scope = fleet) and the"
        " fleet's size is unknown: no fleet health record under instances/ in etcd"
        " (the configuration must come from etcd and a service must set routing.fleet)",
        service=key[0],
        endpoint=key[1],
    )


def _where(key: Key) -> str:
    service, endpoint = key
    return f"{service} ({endpoint})" if endpoint else service


def _queue_full(key: Key, limiter: Limiter) -> healkit.ConcurrencyLimitError:
    return healkit.ConcurrencyLimitError(
        f"{_where(key)} overloaded: {limiter.in_flight} in flight (limit {limiter.limit})"
        f" and {limiter.queued} waiting (queue {limiter.queue})",
        service=key[0],
        endpoint=key[1],
    )
