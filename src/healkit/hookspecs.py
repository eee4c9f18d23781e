"""The hooks a healkit plugin may implement.

Implement them on a class (one instance per runtime, so state is per client)
decorated with :data:`healkit.hookimpl`, and register the class through the
``healkit`` entry-point group, or pass an instance to ``healkit.Client(plugins=[...])``.

Order: pluggy's. Implementations run newest-registered first, ``tryfirst``
ones before all others and ``trylast`` ones after. Entry-point plugins are
registered first, in the order of their names, then the plugins passed
explicitly, in the order given. Wrappers
(``wrapper=True`` / ``hookwrapper=True``) are refused on the per-call hooks and
the hooks between plugins, because those are compiled into plain function
calls for speed.

Besides its hook implementations, healkit reads two optional class
attributes of a plugin, described by the :class:`Plugin` protocol:
``healkit_name`` (its registered name) and ``healkit_observer`` (its role).
Both are read once, when the plugin is registered, and checked there.

Roles: a plugin is a *decision* plugin unless it sets the class attribute
``healkit_observer = True``. An unexpected exception in a decision plugin fails
the call with :class:`healkit.PluginError` naming the plugin; an observer's
exception never fails a call: it is logged once per plugin and counted.

Plugins meet through hooks, never through each other's attributes: the
routing plugin asks ``healkit_endpoint_available`` whether some plugin (a
breaker) refuses an endpoint, ``healkit_circuit_state`` for what a breaker
reports of it and ``healkit_tls_context`` for the TLS context of a service's
probes, so a third-party breaker or TLS plugin takes either side.

Per-call hooks are plain functions in the hot path: they decide, they do not
sleep or perform I/O. Only ``healkit_admit``, ``healkit_fallback`` and
``healkit_shutdown`` may return an awaitable, which healkit awaits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, final

import msgspec
import pluggy

if TYPE_CHECKING:
    import ssl

    import aiohttp

    from healkit._config.models import ConfigSection, HealkitConfig, ServicePolicy, Timeouts
    from healkit._context import AttemptContext, CallContext, Fallback, RetryDecision
    from healkit._errors import HealkitError
    from healkit._outcome import Outcome
    from healkit._response import Response
    from healkit._runtime import Runtime

__all__ = ["PROJECT", "CircuitState", "Plugin", "hookimpl", "hookspec"]

PROJECT = "healkit"

hookspec = pluggy.HookspecMarker(PROJECT)
"""Marker for healkit's hook specifications."""

hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marker for hook implementations: ``@healkit.hookimpl`` (``tryfirst=True``, ``trylast=True``)."""


class Plugin(Protocol):
    """The class attributes healkit reads of a plugin, besides its hooks; both optional.

    A plugin needs neither (it is then named after its class, and it is a
    decision plugin); declare the ones it sets as plain class attributes.
    healkit reads them once, when the plugin is registered: one that is not
    of its type is refused then with a :class:`healkit.PluginError`.

    Attributes:
        healkit_name: the name the plugin is registered under when none is
            given (an entry point's name wins): in ``healkit plugins``, error
            messages, ``block_plugins``.
        healkit_observer: ``True`` for an observer plugin (tracing, metrics,
            logging), whose exceptions never fail a call and whose results of
            the decision hooks are ignored.

    """

    healkit_name: ClassVar[str]
    healkit_observer: ClassVar[bool]


@final
class CircuitState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a circuit breaker reports of one endpoint (``healkit_circuit_state``).

    Attributes:
        state: the breaker's state, lower case: ``"closed"``, ``"open"``,
            ``"half_open"``, or a state of the plugin's own
            (``"forced_open"``...). Tracing records it as
            ``healkit.breaker.state``.
        retry_at: when the breaker may admit a call again, on the runtime's
            clock (``runtime.clock.now()``); ``None`` if it admits calls now,
            ``math.inf`` if never on its own.

    """

    state: str
    retry_at: float | None = None


# ---------------------------------------------------------------------------
# Configuration: called when a runtime is built and whenever config changes.
# ---------------------------------------------------------------------------


@hookspec
def healkit_config_sections() -> Sequence[ConfigSection[Any]]:  # type: ignore[empty-body]
    """Return the sections this plugin adds to each service document.

    Called once per runtime, when plugins are registered. Each section's
    settings type is a frozen msgspec Struct with safe defaults for every field;
    documents are validated against the union of all sections, and a key no
    section claims is an error.

    Result: all implementations are called; their sequences are concatenated.
    May not return an awaitable.
    """


@hookspec
def healkit_prepare(config: HealkitConfig, previous: HealkitConfig | None) -> None:
    """Derive what the plugin needs from a new snapshot, before it is installed.

    Called once per validated snapshot, before ``healkit_configure``, with the
    snapshot in force (``None`` the first time). For a document from a source
    it runs in a worker thread, off the event loop: put here the work that
    grows with the document (a look at every service), so that
    ``healkit_configure`` does work in proportion to what changed
    (:meth:`HealkitConfig.changes_since`). The snapshot is not in force yet and
    nothing else sees it: write only into it (``config.stash``, and the
    ``stash`` of its policies that ``previous`` does not also hold), never into
    the plugin's own state, which belongs to the event loop. An exception here
    is logged (``healkit.plugin_error``) and counted; the snapshot is still
    installed, so ``healkit_configure`` must cope with missing derived data.

    Result: all implementations are called; return values are ignored.
    May not return an awaitable.
    """


@hookspec
def healkit_configure(
    config: HealkitConfig, previous: HealkitConfig | None, runtime: Runtime
) -> None:
    """Take a new, validated configuration snapshot.

    Called after a document was accepted and before any call uses it, with the
    snapshot in force until now (``None`` the first time), and the runtime the
    plugin is registered in (keep it to ``runtime.emit`` events). Use it to
    rebuild per-service state, keeping what is still compatible (breaker windows
    whose key and window type are unchanged). Calls in flight keep the snapshot
    they started with. Do not raise: the document is already accepted; an
    exception here is logged (``healkit.plugin_error``) and counted.

    Result: all implementations are called; return values are ignored.
    May not return an awaitable.
    """


# ---------------------------------------------------------------------------
# Runtime lifecycle: background work owned by a client.
# ---------------------------------------------------------------------------


@hookspec
def healkit_startup(runtime: Runtime) -> None:
    """Start background work when a client (its runtime) starts.

    Start tasks with ``runtime.start_background(name, coroutine_function)``;
    the runtime cancels and awaits them when it stops, so none outlives the
    client, and runs each in a context of its own (none of the starter's
    context variables). Do not block.

    Result: all implementations are called; return values are ignored.
    May not return an awaitable (start a background task instead).
    """


@hookspec
def healkit_shutdown(runtime: Runtime) -> Awaitable[None] | None:
    """Release what the plugin holds when the runtime stops.

    Called after background tasks were cancelled. May return an awaitable,
    which is awaited (bounded by the runtime's shutdown timeout).

    Result: all implementations are called; return values are awaited if awaitable.
    """


@hookspec
def healkit_trace_configs() -> Sequence[aiohttp.TraceConfig]:  # type: ignore[empty-body]
    """Return aiohttp ``TraceConfig`` objects for the session a client creates.

    Called when a :class:`healkit.Client` opens the aiohttp session it owns
    (not for a session the application passes in, which has its trace configs
    already: a plugin should also expose its ``TraceConfig`` for that case).
    Each request's ``trace_request_ctx`` is the attempt's
    :class:`~healkit.AttemptContext`, so the callbacks find the attempt (and
    its stash) as ``params``' ``trace_config_ctx.trace_request_ctx``. For
    connection timings (DNS, connect, pool wait, reuse) in tracing and metrics.

    Result: all implementations are called; the trace configs are added in
    hook order. May not return an awaitable.
    """


@hookspec(firstresult=True)
def healkit_attempt_timeouts(policy: ServicePolicy) -> Timeouts | None:
    """Return the time limits of one attempt to ``policy``'s service.

    The executor gives every attempt of a call these limits
    (``attempt.timeouts``) before ``healkit_route`` and ``healkit_pre_request``
    run, which may still change them for one attempt; the requests healkit
    makes outside a call (the routing plugin's health probes) keep to them too.
    ``None``: no limits from this plugin. Without an answer, the core's limits
    apply (``connect`` 10 s, ``read`` 30 s, ``total`` 60 s). Called once per
    service and configuration snapshot, not per call.

    Result: stops at the first non-``None`` result (``firstresult``). May not
    return an awaitable.
    """


@hookspec(firstresult=True)
def healkit_call_deadline(policy: ServicePolicy) -> float | None:
    """Return the seconds within which a whole call to ``policy``'s service must end.

    Every attempt and every backoff sleep included, counted from the call's
    start; the executor applies it (with the caller's ``deadline=``, the
    earliest wins) before the first attempt, so per-call hooks already see it
    in ``call.deadline``. ``None``: no limit from this plugin. Without an
    answer, a call has no deadline but the caller's. Called once per service
    and configuration snapshot, not per call.

    Result: stops at the first non-``None`` result (``firstresult``). May not
    return an awaitable.
    """


@hookspec(firstresult=True)
def healkit_max_attempts(policy: ServicePolicy) -> int | None:
    """Return the most attempts a call to ``policy``'s service may make, the first included.

    A retry plugin answers with its setting, so that a caller's per-call
    ``attempts=`` can be checked against it before anything is sent (a value
    above it is a ``InvalidRequestError``). ``None``: no answer from this plugin.
    Without an answer a call makes one attempt, and ``attempts=`` may only be
    1. Called once per service and configuration snapshot, and only for calls
    that pass ``attempts=``.

    Result: stops at the first non-``None`` result (``firstresult``). May not
    return an awaitable.
    """


@hookspec
def healkit_idle(config: HealkitConfig) -> bool:  # type: ignore[empty-body]
    """Say whether the plugin has nothing to do per call under ``config``.

    Asked once per configuration snapshot, on the event loop, after
    ``healkit_configure``, and again when a plugin calls
    ``runtime.refresh_plan()``. ``True`` leaves all of the plugin's per-call
    hooks out of the call plan, so that a call does not pay for a plugin no
    service uses; anything else keeps them. Answer from what
    ``healkit_prepare`` derived (``config.stash``): the question is asked on
    the event loop. An exception keeps the plugin in the plan (and is logged
    and counted): when in doubt, a plugin runs.

    Result: all implementations are called; each answer is about its own
    plugin. May not return an awaitable.
    """


@hookspec
def healkit_idle_hooks(config: HealkitConfig) -> Sequence[str]:  # type: ignore[empty-body]
    """Name the per-call hooks of this plugin that have nothing to do under ``config``.

    Asked as ``healkit_idle`` is (once per snapshot, and on
    ``runtime.refresh_plan()``), for a plugin that ``healkit_idle`` did not
    leave out whole. The named hooks of this plugin leave the call plan; its
    others stay. A name that is not a per-call hook (a typo) is an error:
    logged and counted, and the plugin stays in the plan whole.

    Result: all implementations are called; each answer is about its own
    plugin. May not return an awaitable.
    """


# ---------------------------------------------------------------------------
# Between plugins: what one plugin asks of the others. Called by the routing
# plugin and by tracing; any plugin may implement and call them.
# ---------------------------------------------------------------------------


@hookspec
def healkit_endpoint_available(service: str, endpoint: str) -> bool | None:
    """Say whether an attempt to ``endpoint`` of ``service`` would be admitted now.

    Asked by the routing plugin for every endpoint it considers for an
    attempt (the hot path: answer from memory, in constant time). ``False``:
    this plugin would refuse such an attempt now (an open breaker), so routing
    sends it elsewhere; ``True`` or ``None``: no objection. Answer without side
    effects: the attempt may still go elsewhere (a half-open breaker takes no
    probe slot here). An exception, or an answer that is not a bool or
    ``None`` (``0``, ``"no"``), fails the call with a
    :class:`healkit.PluginError` naming the plugin.

    Result: all implementations are called until one answers ``False``; the
    endpoint is available unless one does. May not return an awaitable.
    """


@hookspec(firstresult=True)
def healkit_circuit_state(service: str, endpoint: str | None) -> CircuitState | None:
    """Report the state of the circuit breaker that guards ``endpoint`` of ``service``.

    ``endpoint`` is a base URL as in ``attempt.endpoint`` (``None``: the
    service as a whole, for a decorated function). For what others show of
    the endpoint: tracing's ``healkit.breaker.state`` attribute, the fleet
    health view, status. ``None``: this plugin guards no such endpoint. An
    exception, or an answer that is not a :class:`CircuitState`, is logged as
    ``healkit.plugin_error`` naming the plugin and the state shown as unknown;
    the fleet health view keeps the first 64 characters of ``state``.

    Result: stops at the first non-``None`` result (``firstresult``). May not
    return an awaitable.
    """


@hookspec(firstresult=True)
def healkit_tls_context(service: str) -> ssl.SSLContext | None:
    """Return the TLS context for connections healkit opens itself to ``service``'s endpoints.

    The routing plugin's health probes connect with it, so that a probe sees
    an endpoint as calls do (the same CA bundle, client certificate and
    verification). A TLS plugin answers with the context it gives the
    service's attempts (``attempt.ssl``). ``None``: no context from this
    plugin; without an answer aiohttp's default verification applies. An
    exception, or an answer that is not a client's :class:`ssl.SSLContext` (a
    ``PROTOCOL_TLS_SERVER`` one is a server's), is logged as
    ``healkit.plugin_error`` naming the plugin, and that probe is skipped
    (the endpoint's health stays as it was; the next round asks again).

    Result: stops at the first non-``None`` result (``firstresult``). May not
    return an awaitable.
    """


# ---------------------------------------------------------------------------
# Per call: the resilience pipeline. Hot path; compiled into a call plan.
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def healkit_route(call: CallContext, attempt: AttemptContext) -> str | None:
    """Choose the endpoint of an attempt, before it is prepared.

    Called before ``healkit_pre_request`` for every attempt of a call that may
    go to any endpoint of its service (``call.routable``: an HTTP call of
    :class:`healkit.Client` addressed by service name). ``attempt.endpoint``
    holds the default: the service's first endpoint, or the one a
    ``RetryDecision`` asked for. Return one of the service's endpoints, or
    ``None`` to keep it. The built-in ``routing`` plugin implements it
    (priority groups, balancing, ejection); a plugin registered after it
    answers first.

    Result: stops at the first non-``None`` result (``firstresult``). May not
    return an awaitable.
    """


@hookspec
def healkit_pre_request(call: CallContext, attempt: AttemptContext) -> HealkitError | None:
    """Prepare an attempt before it is sent.

    Called before every attempt, the first included. May set
    ``attempt.endpoint``, ``attempt.timeouts``, add ``attempt.headers`` (or
    call-wide ``call.headers``), shorten ``call.deadline``, or refuse the
    attempt by returning a :class:`healkit.HealkitError` (``CircuitOpenError``,
    ``BudgetExhaustedError``). Raising it refuses too; returning it is cheaper
    (nothing unwinds), which counts on a path every call of an outage takes.
    A refusal is handled like a failed attempt and goes to ``healkit_on_error``.

    Result: implementations are called in hook order until a decision plugin
    refuses; the implementations after it do not run for that attempt. Other
    return values are ignored. An observer plugin cannot refuse: its returned
    error is ignored, a raised one is its bug (logged and counted). May not
    return an awaitable.
    """


@hookspec
def healkit_admit(
    call: CallContext, attempt: AttemptContext
) -> HealkitError | Awaitable[HealkitError | None] | None:
    """Admit a prepared attempt under a load limit, waiting for room if need be.

    Called after ``healkit_pre_request`` admitted the attempt (its endpoint
    and timeouts are final), right before it is sent. Return ``None`` to admit
    it at once, a :class:`healkit.HealkitError` (usually an
    :class:`healkit.OverloadError`) to refuse it, or an awaitable that waits
    for room (a concurrency slot, a rate token) on the call's clock and
    resolves to ``None`` (admitted) or a refusal. The wait must end by the
    call's deadline. An attempt that waited starts when the wait ends
    (``attempt.started`` is set again). A refusal is handled like a failed
    attempt and goes to ``healkit_on_error``. A plugin that holds something
    for the attempt (a slot) releases it in ``healkit_post_response`` or
    ``healkit_on_error``, and in ``healkit_call_end`` and
    ``healkit_call_abandoned`` for an attempt a crash or a cancellation ended.

    Result: implementations are called in hook order, each awaited before
    the next, until a decision plugin refuses; the implementations after it
    do not run for that attempt. An observer plugin cannot refuse. May return
    an awaitable.
    """


@hookspec
def healkit_post_response(
    call: CallContext, attempt: AttemptContext, response: Response | None
) -> HealkitError | None:
    """Judge the result of an attempt that did not fail.

    Called after a response arrived (its head, for streaming calls; the whole
    body otherwise), or after a decorated function returned (``response`` is
    then ``None``). Record success and latency here: ``attempt.status`` and
    ``attempt.duration`` are set. Return an error (usually
    :class:`healkit.HTTPStatusError`) to declare the result a failure: the
    response is then released and the error goes to ``healkit_on_error``.

    Result: all implementations are called; the first non-``None`` result (in
    hook order) declares the failure. May not return an awaitable.
    """


@hookspec
def healkit_on_error(
    call: CallContext, attempt: AttemptContext, error: HealkitError
) -> RetryDecision | None:
    """React to a failed attempt.

    Called after every failed attempt: an exception from the transport, a
    refusal from ``healkit_pre_request``, or a result declared a failure by
    ``healkit_post_response``. Record the failure; propose another attempt with
    ``RetryDecision.again(delay, endpoint=...)`` or forbid one with
    ``RetryDecision.stop(reason)``. The pipeline sleeps the delay (never past
    the deadline) and makes the attempt.

    Result: all implementations are called; the first non-``None`` decision (in
    hook order) is carried out. May not return an awaitable.
    """


@hookspec(firstresult=True)
def healkit_fallback(
    call: CallContext, error: HealkitError
) -> Fallback | Awaitable[Fallback | None] | None:
    """Offer a substitute once the call has failed for good.

    Return a :class:`healkit.Fallback` wrapping a :class:`healkit.Response` (HTTP
    calls) or a value of the decorated function's return type. May return an
    awaitable (fetch from a fallback endpoint or a cache); healkit awaits it
    and, if it resolves to ``None``, asks the next implementation. Awaitables
    are awaited within the time the call has left before its deadline: one
    still pending when the deadline passes is cancelled, and the call raises
    its error.

    Result: stops at the first non-``None`` result (``firstresult``).
    """


@hookspec
def healkit_event(event: object) -> None:
    """Observe a notable event a plugin emitted with ``runtime.emit(event)``.

    Events are frozen, typed objects defined by the plugin that emits them (a
    breaker's state transition, a retry budget running dry) and documented
    with it; check their type with ``isinstance``. Tracing and metrics plugins
    subscribe here. Every implementation is called, in hook order; an exception
    is logged once per plugin and counted, never raised to the emitter.

    Result: all implementations are called; return values are ignored.
    May not return an awaitable.
    """


@hookspec(firstresult=True)
def healkit_hedge_delay(call: CallContext, attempt: AttemptContext) -> float | None:
    """Return how long to wait for an answer to ``attempt`` before sending a hedge.

    A hedge is another attempt of the same request, sent while the attempts
    before it are still in flight; the first attempt whose result no plugin
    declares a failure wins, and healkit cancels the others at once
    (``healkit_attempt_cancelled``). Asked for each attempt (the first one,
    a retry, a hedge) once routing and ``healkit_pre_request`` let it
    through, before ``healkit_admit`` and the send; ``attempt`` is the last
    of ``call.attempts``. A transport whose attempts cannot be in flight
    together (the aiohttp middleware's) is never asked. ``None``: no hedge after this attempt;
    if that is the answer for the first attempt, the call runs its attempts
    one after another, as without hedging. Otherwise a positive, finite
    number of seconds, counted from when ``attempt`` is launched; anything
    else is the plugin's error (:class:`healkit.PluginError`).

    Only requests that may be sent twice should get a delay: the plugin
    decides, as the retry plugin does for retries (``call.idempotent``,
    ``call.replayable``).

    Result: the first non-``None`` result of a decision plugin. May not
    return an awaitable.
    """


@hookspec
def healkit_hedge(call: CallContext, attempt: AttemptContext) -> bool | None:
    """Say whether the hedge due after ``attempt`` may be sent now.

    Asked when the delay from ``healkit_hedge_delay`` passed and no attempt
    of the call has answered, before the hedge is routed and admitted: the
    moment to spend a budget. ``False`` declines: nothing is sent, and the
    call sends no more hedges; it waits for the attempts in flight. Not
    asked (and no more hedges are sent) once the call made as many attempts
    as the caller allows (``attempts=``, ``call.attempt_limit``), the
    retries due counted (``call.retries_due``), or its deadline passed. A
    hedge starts from the call's limits (``attempt.timeouts``), as a retry
    does, not from what a plugin set on the attempt before it.

    Result: decision plugins are asked in hook order until one returns
    ``False``; ``True`` and ``None`` do not object. May not return an
    awaitable.
    """


@hookspec
def healkit_attempt_cancelled(call: CallContext, attempt: AttemptContext) -> None:
    """Release what ``attempt`` holds: healkit cancelled it, and it is not a failure.

    Called for each attempt still in flight when another attempt of the call
    answered first (a hedge race's losers), and for each attempt in flight
    when a call with concurrent attempts is abandoned (then before
    ``healkit_call_abandoned``). The attempt sent nothing back: it is not a
    failure of its endpoint, and no plugin should count it as one.
    ``attempt.duration`` is set; ``attempt.cancelled`` is ``True``. Called
    in the caller's task once the attempt's task has ended, so its
    connection is back with the pool (or closed) by then, even when the
    caller was cancelled meanwhile (then the call waits for its attempts to
    end before the cancellation goes on). A call whose
    attempts run one after another never gets this hook: a cancellation of
    the caller ends it with ``healkit_call_abandoned`` alone.

    Result: all implementations are called; return values are ignored. An
    exception raised here is logged and counted, never raised. May not return
    an awaitable.
    """


@hookspec
def healkit_call_abandoned(call: CallContext, exception: BaseException) -> None:
    """Observe a call that ended with neither a result nor a healkit error.

    Called once, instead of ``healkit_call_end``, when the call is cancelled
    (``asyncio.CancelledError``, its caller's timeout or task group) or ends in
    an exception healkit passes through unchanged (a decorated function's
    exception that is not one of its ``failures``). ``exception`` is that
    exception; it propagates after this hook. For tracing and metrics, to end
    what they opened for the call. An exception raised here is logged and
    counted, never raised.

    Result: all implementations are called; return values are ignored.
    May not return an awaitable.
    """


@hookspec
def healkit_call_end(call: CallContext, outcome: Outcome, error: HealkitError | None) -> None:
    """Observe the end of a call: its outcome, and the error if it failed.

    Called exactly once per call that ends in a result or a healkit error,
    after fallbacks, for logging, tracing and metrics (a call cancelled, or
    ending in an exception passed through, gets ``healkit_call_abandoned``
    instead). ``error`` is ``None`` when the call produced a result.

    Result: all implementations are called; return values are ignored.
    May not return an awaitable.
    """
