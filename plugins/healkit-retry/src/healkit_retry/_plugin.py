"""The retry plugin: which failures to retry, when, where, and how often."""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final, final

import healkit

from ._backoff import decorrelated_jitter, full_jitter, parse_retry_after
from ._budget import BudgetParams, RetryBudget, RetryBudgetExhausted
from ._settings import SECTION, FailureKind, RetrySettings

__all__ = ["IDEMPOTENCY_HEADER", "RetryPlugin"]

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
EXCERPT_BYTES: Final = 200


@final
class _Policy:
    """The retry settings of one service policy, in the shape the hooks use.

    Built once per policy per configuration snapshot and kept in
    ``policy.stash``, so that a call pays a dictionary look-up, not a rebuild.
    """

    __slots__ = (
        "attempts",
        "base",
        "cap",
        "circuit_wait",
        "circuit_wait_text",
        "decorrelated",
        "inject_key",
        "kinds",
        "max_retry_after",
        "non_idempotent",
        "statuses",
    )

    def __init__(self, settings: RetrySettings) -> None:
        self.attempts = settings.attempts
        self.base = settings.base
        self.cap = settings.cap
        self.circuit_wait = settings.max_circuit_wait
        # Formatted once, not per refusal.
        self.circuit_wait_text = f"retry.max_circuit_wait ({settings.max_circuit_wait:g}s)"
        self.decorrelated = settings.jitter == "decorrelated"
        self.kinds: frozenset[FailureKind] = frozenset(settings.retry_on)
        # Statuses are declared failures only if a retry of them is possible at all.
        retrying = settings.attempts > 1 and "status" in self.kinds
        self.statuses = frozenset(settings.statuses if retrying else ())
        self.non_idempotent = settings.retry_non_idempotent
        self.inject_key = settings.idempotency_key
        self.max_retry_after = settings.max_retry_after


POLICY: Final = healkit.StashKey[_Policy]("healkit_retry.policy")
"""The derived settings of a policy, kept in ``policy.stash``."""


def budget_params(settings: RetrySettings) -> BudgetParams:
    """Return the parameters that make two budgets interchangeable."""
    return (settings.budget_ratio, settings.budget_window, settings.budget_min_retries_per_second)


@final
class RetryPlugin:
    """Retries failed attempts: safely, with backoff, within the deadline and the budget.

    One instance per runtime; the retry budgets of its services live in it:
    those of services with a document as long as the configuration names
    them, the others within the ``state`` bounds (least recently used first
    out, dropped after ``state.idle_expiry`` unused).

    Args:
        rng: the random generator of the backoff jitter (pass a seeded
            ``random.Random`` for reproducible delays).
        wall_clock: seconds since the epoch, to turn a ``Retry-After`` date into
            a delay (inject a fixed one in tests).

    """

    __slots__ = (
        "_budgets",
        "_config",
        "_draw",
        "_injecting",
        "_injecting_key",
        "_runtime",
        "_strangers",
        "_wall_clock",
    )

    healkit_name = "retry"

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        # Jitter only spreads clients apart; it needs no cryptographic quality.
        self._draw = (rng or random.Random()).random  # noqa: S311
        self._wall_clock = wall_clock
        # The budgets of configured services, and of the others (bounded).
        self._budgets: dict[str, RetryBudget] = {}
        bounds = healkit.StateSettings()
        self._strangers = healkit.BoundedMap[str, RetryBudget](
            capacity=bounds.max_unconfigured,
            idle_expiry=bounds.idle_expiry,
            evicted=self._evicted,
        )
        self._config: healkit.HealkitConfig | None = None
        self._runtime: healkit.Runtime | None = None
        # Whether any policy adds Idempotency-Key headers (None: not configured yet).
        self._injecting: bool | None = None
        self._injecting_key = healkit.StashKey[bool]("healkit_retry.injecting")

    def __repr__(self) -> str:
        return f"<RetryPlugin budgets={len(self._budgets) + len(self._strangers)}>"

    @property
    def unconfigured_budgets(self) -> healkit.BoundedMap[str, RetryBudget]:
        """The budgets of services without a document (bounded by the ``state`` settings)."""
        return self._strangers

    # -- configuration -----------------------------------------------------------

    @healkit.hookimpl
    def healkit_config_sections(self) -> Sequence[healkit.ConfigSection[Any]]:
        """Contribute the ``retry`` section."""
        return (SECTION,)

    @healkit.hookimpl
    def healkit_prepare(self, config: healkit.HealkitConfig) -> None:
        """Note whether a policy adds Idempotency-Key headers (off the event loop)."""
        config.stash[self._injecting_key] = _injecting(config)

    @healkit.hookimpl
    def healkit_configure(
        self,
        config: healkit.HealkitConfig,
        previous: healkit.HealkitConfig | None,
        runtime: healkit.Runtime,
    ) -> None:
        """Keep the runtime; keep each budget whose settings did not change.

        Only the services the new snapshot changed are looked at
        (:meth:`healkit.HealkitConfig.changes_since`).

        A service's budget survives a new configuration; when its ``budget_*``
        settings changed, a budget with the new settings takes over its window
        (the requests and retries counted so far). A service that gains a document
        keeps its budget for as long as the document names it; one that loses
        it has its budget bounded with the other unconfigured ones.
        """
        del previous  # changes are judged against the snapshot this plugin saw last
        self._runtime = runtime
        before, self._config = self._config, config
        changes = config.changes_since(before)
        now = runtime.clock.now()
        injecting = config.stash.get(self._injecting_key)
        self._injecting = _injecting(config) if injecting is None else injecting
        budgets = self._budgets
        strangers = self._strangers
        if changes is None or changes.defaults:
            touched = [*budgets.items(), *strangers.items()]
            budgets.clear()
        else:
            # Only the budgets of changed services need a look: the fewer of the
            # changed services and the budgets are gone through.
            names = changes.services
            changed = names if len(names) < len(budgets) else [n for n in budgets if n in names]
            touched = [(name, budgets.pop(name)) for name in changed if name in budgets]
            touched.extend((s, budget) for s, budget in strangers.items() if s in names)
        for service, kept in touched:
            budget = kept
            params = budget_params(config.policy(service).section(SECTION))
            if params != kept.params:
                # New settings take effect on the traffic already counted: a fresh,
                # empty budget would grant its whole reserve again at once.
                budget = RetryBudget(params)
                budget.carry(kept, now)
                strangers.pop(service)
            if config.configured(service):
                strangers.pop(service)
                budgets[service] = budget
            elif service not in strangers:  # an unconfigured service's budget keeps its place
                strangers.put(service, budget, now)
        strangers.resize(config.state.max_unconfigured, config.state.idle_expiry, now)

    @healkit.hookimpl
    def healkit_max_attempts(self, policy: healkit.ServicePolicy) -> int:
        """Answer ``retry.attempts``: a caller's ``attempts=`` may not exceed it."""
        return policy.section(SECTION).attempts

    # -- per call --------------------------------------------------------------------

    @healkit.hookimpl(tryfirst=True)
    def healkit_pre_request(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> None:
        """Count the call for the budget (first attempt); add an Idempotency-Key if configured."""
        if attempt.number == 1:
            budget = self._budgets.get(call.service) or self._budget(call, call.started)
            budget.record_request(call.started)  # the clock read when the call began
        if (
            self._injecting is not False
            and call.transport == "http"
            and call.method not in IDEMPOTENT_METHODS
        ):
            self._add_idempotency_key(call)

    @healkit.hookimpl(tryfirst=True)
    def healkit_post_response(
        self,
        call: healkit.CallContext,
        attempt: healkit.AttemptContext,
        response: healkit.Response | None,
    ) -> healkit.HealkitError | None:
        """Declare a retryable status a failure, with the ``Retry-After`` it carries."""
        del attempt
        if response is None or response.status < 400:  # every retryable status is >= 400
            return None
        derived = call.policy.stash.get(POLICY) or self._derive(call.policy)
        status = response.status
        if (
            status not in derived.statuses
            or not _may_retry(call, derived)
            or call.attempt_limit == 1
        ):
            # Not retryable anyway: the caller gets the response as it came.
            return None
        excerpt = b"" if response.is_streaming else response.body[:EXCERPT_BYTES]
        error = healkit.HTTPStatusError(
            status, url=response.url, body_excerpt=excerpt.decode("utf-8", "replace")
        )
        if status in RETRY_AFTER_STATUSES and (header := response.headers.get("Retry-After")):
            error.retry_after = parse_retry_after(header, wall_now=self._wall_clock())
        return error

    @healkit.hookimpl(trylast=True)
    def healkit_on_error(
        self,
        call: healkit.CallContext,
        attempt: healkit.AttemptContext,
        error: healkit.HealkitError,
    ) -> healkit.RetryDecision:
        """Propose the next attempt, or stop and say why."""
        derived = call.policy.stash.get(POLICY) or self._derive(call.policy)
        refusal = _refusal(call, error, derived)
        if refusal is not None:
            return healkit.RetryDecision.stop(refusal)

        now = call.clock.now()
        delay, why = self._delay(attempt, error, derived, now)
        if why is not None:
            return healkit.RetryDecision.stop(why)

        # What call.remaining() measures (the call's deadline and the caller's
        # scope deadline), compared as the executor compares it, so that a delay
        # accepted here is never refused there by a rounding difference.
        limit = min(call.deadline, call.scope_deadline)
        if now + delay >= limit:
            remaining = limit - now
            wait = "Retry-After" if _retry_after(error) is not None else "backoff"
            return healkit.RetryDecision.stop(
                f"the next attempt could not start before the call's deadline"
                f" ({wait} {delay:.3f}s, {max(remaining, 0.0):.3f}s left)"
            )

        budget = self._budgets.get(call.service) or self._budget(call, now)
        if not budget.try_spend(now):
            self._report_exhausted(call.service, budget, now)
            ratio, window, minimum = budget.params
            return healkit.RetryDecision.stop(
                f"retry budget exhausted: {budget.retries} retries for {budget.requests}"
                f" requests in the last {window:g}s (retry.budget_ratio = {ratio:g},"
                f" at least {minimum:g} retries/s)"
            )
        return healkit.RetryDecision.again(
            delay,
            reason=(
                f"attempt {len(call.attempts) + call.retries_due + 1}"
                f" of {call.attempt_limit or derived.attempts}"
            ),
        )

    # -- helpers -----------------------------------------------------------------------

    def _delay(
        self,
        attempt: healkit.AttemptContext,
        error: healkit.HealkitError,
        derived: _Policy,
        now: float,
    ) -> tuple[float, str | None]:
        """Return the wait before the next attempt, or a reason not to make it."""
        # _retry_after(error), inlined: this runs for every refused call too.
        retry_after = error.retry_after if isinstance(error, healkit.HTTPStatusError) else None
        if retry_after is not None:
            if not retry_after <= derived.max_retry_after:  # NaN included
                return 0.0, (
                    f"Retry-After asks for {retry_after:g}s, more than"
                    f" retry.max_retry_after ({derived.max_retry_after:g}s)"
                )
            return max(retry_after, 0.0), None
        closed_in = 0.0
        if isinstance(error, healkit.CircuitOpenError):
            # No other endpoint took the call (the routing plugin would have moved
            # it at once): the next attempt would wait until this breaker may
            # probe. Longer than max_circuit_wait (0 by default), the call ends
            # now: its fallback or its error serves the caller sooner.
            closed_in = error.retry_at - now
            if closed_in > derived.circuit_wait:
                if math.isinf(closed_in):
                    return 0.0, "the circuit is held open until an operator closes it"
                return 0.0, (
                    f"the circuit stays open for {closed_in:.3g}s more,"
                    f" longer than {derived.circuit_wait_text}"
                )
        draw = self._draw()
        if derived.decorrelated:
            delay = decorrelated_jitter(
                attempt.retry_delay, base=derived.base, cap=derived.cap, draw=draw
            )
        else:
            delay = full_jitter(attempt.number, base=derived.base, cap=derived.cap, draw=draw)
        return max(delay, closed_in), None

    def _add_idempotency_key(self, call: healkit.CallContext) -> None:
        """Give a non-idempotent HTTP call a key, once: it stays for every attempt."""
        derived = call.policy.stash.get(POLICY) or self._derive(call.policy)
        if derived.inject_key and IDEMPOTENCY_HEADER not in call.headers:
            call.headers[IDEMPOTENCY_HEADER] = uuid.uuid4().hex
            call.idempotent = True  # as the core judges a request carrying the header

    def _derive(self, policy: healkit.ServicePolicy) -> _Policy:
        derived = policy.stash[POLICY] = _Policy(policy.section(SECTION))
        return derived

    def _budget(self, call: healkit.CallContext, now: float) -> RetryBudget:
        """Return the budget of ``call.service`` when it is not a configured one's yet.

        The budget of a service without a document, from the bounded map, or
        a new budget with the settings in force now. O(1) however many exist.
        """
        service = call.service
        budget = self._strangers.get(service, now)
        if budget is not None:
            return budget
        # A call that started under an older snapshot must not revive old settings.
        config = self._config or call.config
        budget = RetryBudget(budget_params(config.policy(service).section(SECTION)))
        if config.configured(service):
            self._budgets[service] = budget
        else:
            self._strangers.put(service, budget, now)
        return budget

    def _evicted(self, service: str, budget: RetryBudget, reason: healkit.EvictionReason) -> None:
        del budget
        if self._runtime is not None:
            self._runtime.emit(
                healkit.StateEvicted(owner="retry", service=service, endpoint=None, reason=reason)
            )

    def _report_exhausted(self, service: str, budget: RetryBudget, now: float) -> None:
        if self._runtime is not None and budget.should_report(now):
            self._runtime.emit(
                RetryBudgetExhausted(
                    service=service,
                    window_requests=budget.requests,
                    window_retries=budget.retries,
                )
            )


def _injecting(config: healkit.HealkitConfig) -> bool:
    """Whether a policy of ``config`` adds Idempotency-Key headers."""
    policies = (config.defaults, *config.services.values())
    return any(policy.section(SECTION).idempotency_key for policy in policies)


def _may_retry(call: healkit.CallContext, derived: _Policy) -> bool:
    """Whether a call whose request may have reached the server may be repeated."""
    return call.replayable and (call.idempotent or derived.non_idempotent)


def _kind(error: healkit.HealkitError) -> FailureKind | None:
    """Classify an attempt's error as ``retry.retry_on`` names it (``None``: never retried)."""
    cls = type(error)
    try:
        return _KINDS[cls]
    except KeyError:
        kind = _KINDS[cls] = _classify(error)
        return kind


def _classify(error: healkit.HealkitError) -> FailureKind | None:
    """Classify by the error's class alone (what :func:`_kind` remembers per class)."""
    if isinstance(error, healkit.HTTPStatusError):
        kind: FailureKind | None = "status"
    elif isinstance(error, healkit.ConnectError | healkit.ConnectTimeout):
        kind = "connect"
    elif isinstance(error, healkit.DeadlineExceeded):
        kind = None
    elif isinstance(error, healkit.TimeoutExceeded):
        kind = "timeout"
    elif isinstance(error, healkit.ProtocolError):
        kind = "protocol"
    elif isinstance(error, healkit.TransportError):
        kind = "connection_lost"
    elif isinstance(error, healkit.CircuitOpenError):
        kind = "circuit_open"
    elif isinstance(error, healkit.CallError):
        kind = "call_error"
    else:
        kind = None
    return kind


_KINDS: Final[dict[type[healkit.HealkitError], FailureKind | None]] = {}
"""The kind of each error class met so far: the classification depends on the class only."""


def _refusal(  # noqa: C901, PLR0911 - one early return per rule reads best
    call: healkit.CallContext,
    error: healkit.HealkitError,
    derived: _Policy,
) -> str | None:
    """Return why ``error`` must not be retried by the rules, or ``None`` if it may be."""
    if derived.attempts == 1:
        return "retries are off (retry.attempts = 1)"
    kind = _kind(error)
    if kind is None:
        if isinstance(error, healkit.DeadlineExceeded):
            return "the call's deadline passed"
        return f"{type(error).__name__} is not a retryable failure"
    if kind not in derived.kinds:
        return f"{kind} failures are not retried (retry.retry_on)"
    if isinstance(error, healkit.HTTPStatusError) and error.status not in derived.statuses:
        return f"HTTP {error.status} is not a retryable status (retry.statuses)"
    if not call.replayable:
        return "the request body is a stream that cannot be sent again"
    if error.may_have_reached_server and not (call.idempotent or derived.non_idempotent):
        if call.transport == "function":
            return "the function may have run and is not declared idempotent"
        return (
            f"{call.method} is not idempotent and the request may have reached the server"
            f" (send an {IDEMPOTENCY_HEADER} header or declare the request idempotent)"
        )
    # The attempts made and the retries granted beside attempts in flight (a race's):
    # the retry would be the next attempt. One after another, this is attempt.number.
    made = len(call.attempts) + call.retries_due
    if made >= derived.attempts:
        return f"all {derived.attempts} attempts made (retry.attempts)"
    if call.attempt_limit is not None and made >= call.attempt_limit:
        return f"all {call.attempt_limit} attempts made (the call's attempt_limit)"
    return None


def _retry_after(error: healkit.HealkitError) -> float | None:
    return error.retry_after if isinstance(error, healkit.HTTPStatusError) else None
