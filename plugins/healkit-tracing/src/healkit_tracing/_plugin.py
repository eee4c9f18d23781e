"""The tracing plugin: one CLIENT span per attempt, metrics, trace context propagation.

Lifecycle of an attempt's span:

* started in ``healkit_pre_request`` (``trylast``: after every other plugin
  chose the endpoint, the headers and the timeouts, so the span describes the
  attempt as sent and the injected ``traceparent`` is not overwritten);
* an attempt refused by an earlier ``healkit_pre_request`` (an open breaker, a
  spent budget) never reaches this plugin's ``healkit_pre_request``: its span
  is made in ``healkit_on_error``, with the attempt's start time;
* a failed attempt's span ends in ``healkit_on_error``; the span of the
  attempt that ends the call ends in ``healkit_call_end`` (the pipeline calls
  it right after ``healkit_post_response`` found no failure, with nothing
  awaited in between, and also when a decision plugin crashed);
* the span of an attempt the call was abandoned in (the caller was cancelled,
  or a decorated function raised an exception that is not a failure of the
  call and passes through) ends in ``healkit_call_abandoned``, which the
  pipeline calls at once, in the caller's task, before the exception leaves.

Without an SDK (the API's no-op or not yet set global providers) none of this
happens. The plugin then leaves its recording hooks (``healkit_on_error``,
``healkit_call_end``, ``healkit_call_abandoned``) out of the call plan
(``healkit_idle_hooks``), so that a call does not even build the
:class:`healkit.Outcome` that ``healkit_call_end`` receives; its
``healkit_pre_request`` reads two flags
(:class:`~healkit_tracing._providers.Sinks`) and passes an incoming trace
context on to HTTP attempts. When a global provider is set later, the first
look at the flags that sees it asks the runtime for the whole plan again
(``runtime.refresh_plan()``); calls that started before go on without spans.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, final

import aiohttp
import yarl
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import INVALID_SPAN, SpanKind, Status, StatusCode

import healkit
from healkit.etcd import EtcdSourceStatus
from healkit.events import CircuitTransition
from healkit.hookspecs import CircuitState
from healkit_tracing import _names as n
from healkit_tracing._connection import build_trace_config
from healkit_tracing._logging import ATTEMPT_SPAN
from healkit_tracing._metrics import Instruments
from healkit_tracing._providers import Sinks, globals_unset, meter_kind, tracer_kind
from healkit_tracing._settings import SECTION
from healkit_tracing._state import ATTEMPT, POLICY, AttemptSpan, Policy, policy_of

if TYPE_CHECKING:
    import pluggy
    from opentelemetry.util.types import AttributeValue

__all__ = ["TracingPlugin"]

INSTRUMENTATION_NAME: Final = "healkit_tracing"
VERSION: Final = "0.1.0"

_SUBSTITUTES: Final = frozenset({"fallback", "degraded"})
_RECORDING_HOOKS: Final = (
    "healkit_on_error",
    "healkit_call_end",
    "healkit_call_abandoned",
    "healkit_attempt_cancelled",
)
"""The hooks that only end spans and record metrics: nothing to do while nothing records."""


@functools.lru_cache(maxsize=256)
def server_of(endpoint: str) -> tuple[str, int, str]:
    """Return (``server.address``, ``server.port``, ``url.scheme``) of an endpoint URL."""
    url = yarl.URL(endpoint)
    return url.host or "", url.port or 0, url.scheme


def service_label(config: healkit.HealkitConfig, service: str) -> str:
    """Return a metric's ``healkit.service``: the service if it has a document.

    A service without one may be named after the host of an absolute URL: as
    a metric attribute it would make a time series per host.
    """
    return service if config.configured(service) else n.UNCONFIGURED


def endpoint_label(config: healkit.HealkitConfig, service: str, endpoint: str | None) -> str:
    """Return a metric's ``healkit.endpoint``: redacted if configured, empty if none."""
    if endpoint is None:
        return ""
    if config.configured(service, endpoint):
        return config.redactor.url(endpoint)
    return n.UNCONFIGURED


def server_labels(
    config: healkit.HealkitConfig, service: str, endpoint: str | None
) -> dict[str, AttributeValue]:
    """Return a metric's ``server.address``, ``server.port`` and ``healkit.service``.

    The host and port of an endpoint the configuration names for the service;
    for any other (a host called by absolute URL) ``server.address`` is
    :data:`~healkit_tracing._names.UNCONFIGURED` and there is no port.
    """
    if endpoint is not None and config.configured(service, endpoint):
        host, port, _ = server_of(endpoint)
        return {n.SERVER_ADDRESS: host, n.SERVER_PORT: port, n.SERVICE: service}
    return {n.SERVER_ADDRESS: n.UNCONFIGURED, n.SERVICE: service_label(config, service)}


def _join(endpoint: str, target: str) -> str:
    """Return the URL an HTTP attempt requests: the endpoint, then the target (as the core does)."""
    if not target:
        return endpoint
    if target[0] in "?#/":
        return endpoint + target
    return f"{endpoint}/{target}"


def error_type(error: healkit.HealkitError | None, status: int | None) -> str | None:
    """Return the ``error.type`` of an attempt: the status of an HTTP error, else the error's class.

    A response with a status of 400 or more is an error for a client span
    (semantic conventions), even when no plugin declared it a failure.
    """
    if isinstance(error, healkit.HTTPStatusError):
        return str(error.status)
    if error is not None:
        return type(error).__name__
    if status is not None and status >= 400:
        return str(status)
    return None


@final
class TracingPlugin:
    """OpenTelemetry spans, metrics and trace context for healkit calls.

    Args:
        tracer_provider: where spans go; the global one by default (a no-op
            until the application installs the SDK).
        meter_provider: where metrics go; the global one by default.

    One instance per runtime (the entry point makes one per plugin manager).
    Besides the hooks it offers :attr:`trace_config`, the aiohttp
    ``TraceConfig`` to add to a session the application passes to
    ``healkit.Client(session=...)``.

    """

    __slots__ = (
        "_circuits",
        "_config",
        "_enabled_key",
        "_instruments",
        "_lean",
        "_lean_until",
        "_runtime",
        "_sinks",
        "_trace_config",
        "_tracer",
    )

    healkit_name = "tracing"
    healkit_observer = True
    """An observer: an exception here never fails a call."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(
            INSTRUMENTATION_NAME, VERSION, tracer_provider=tracer_provider
        )
        meter = metrics.get_meter(INSTRUMENTATION_NAME, VERSION, meter_provider=meter_provider)
        self._instruments = Instruments(meter)
        self._sinks = Sinks(
            tracer_kind(tracer_provider), meter_kind(meter_provider), self._recording_started
        )
        self._trace_config = build_trace_config(self, self._sinks)
        # healkit_circuit_state, when a plugin implements it (a breaker).
        self._circuits: pluggy.HookCaller | None = None
        self._config: healkit.HealkitConfig | None = None
        self._enabled_key = healkit.StashKey[bool]("healkit_tracing.enabled")
        self._runtime: healkit.Runtime | None = None
        # Whether the plan in force leaves the recording hooks out (healkit_idle_hooks),
        # and the start time before which calls ran under such a plan.
        self._lean = False
        self._lean_until = -math.inf

    def __repr__(self) -> str:
        return f"<TracingPlugin breaker={'yes' if self._circuits is not None else 'no'}>"

    @property
    def trace_config(self) -> aiohttp.TraceConfig:
        """The aiohttp ``TraceConfig`` of this plugin (connection timings).

        A :class:`healkit.Client` that opens its own session adds it by itself
        (``healkit_trace_configs``); add it to a session you pass in yourself:
        ``aiohttp.ClientSession(trace_configs=[plugin.trace_config])``.
        """
        return self._trace_config

    @property
    def instruments(self) -> Instruments:
        """The metric instruments (for the connection timings of :attr:`trace_config`)."""
        return self._instruments

    # -- configuration -----------------------------------------------------------------

    @healkit.hookimpl
    def healkit_idle(self, config: healkit.HealkitConfig) -> bool:
        """Whether ``tracing.enabled`` is off for every service: then no per-call hook runs."""
        enabled = config.stash.get(self._enabled_key)  # None: healkit_prepare failed
        return not (_enabled(config) if enabled is None else enabled)

    @healkit.hookimpl
    def healkit_prepare(self, config: healkit.HealkitConfig) -> None:
        """Note whether tracing is enabled for some service (off the event loop)."""
        config.stash[self._enabled_key] = _enabled(config)

    @healkit.hookimpl
    def healkit_idle_hooks(self, config: healkit.HealkitConfig) -> Sequence[str]:
        """Name the recording hooks while nothing can record (no SDK): the plan leaves them out."""
        del config  # what matters is whether a provider records, not the settings
        sinks = self._sinks
        self._lean = not (sinks.spans or sinks.metrics)
        return _RECORDING_HOOKS if self._lean else ()

    def _recording_started(self) -> None:
        """Put the recording hooks back in the plan: a global provider was set since.

        Calls that started under the lean plan have no ``healkit_on_error`` or
        ``healkit_call_end`` to end a span in: they get none (see ``_lean_until``).
        """
        runtime = self._runtime
        if self._lean and runtime is not None:
            self._lean_until = runtime.clock.now()
            runtime.refresh_plan()

    @healkit.hookimpl
    def healkit_config_sections(self) -> Sequence[healkit.ConfigSection[Any]]:
        """Contribute the ``tracing`` section."""
        return (SECTION,)

    @healkit.hookimpl
    def healkit_configure(self, config: healkit.HealkitConfig, runtime: healkit.Runtime) -> None:
        """Keep the snapshot; find the breaker plugin, if one is registered; record the version.

        Each policy's settings are compiled on its first call (``policy_of``),
        not here: a large document costs the event loop nothing up front.
        """
        self._config = config
        self._runtime = runtime
        circuits = runtime.plugin_manager.hook.healkit_circuit_state
        self._circuits = circuits if circuits.get_hookimpls() else None
        sinks = self._sinks
        if sinks.watching:
            sinks.refresh()
        if sinks.metrics and policy_of(config.defaults).metrics:
            # The version belongs to no service: the defaults' record_metrics decides.
            self._instruments.config_version.set(runtime.version)

    @healkit.hookimpl
    def healkit_trace_configs(self) -> Sequence[aiohttp.TraceConfig]:
        """Add :attr:`trace_config` to the session a client opens (unless nothing can record)."""
        sinks = self._sinks
        if not (sinks.spans or sinks.metrics or sinks.watching):
            return ()  # no-op providers given: connection timings would go nowhere
        return (self._trace_config,)

    # -- the pipeline --------------------------------------------------------------------

    @healkit.hookimpl(trylast=True)
    def healkit_pre_request(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> None:
        """Start the attempt's span; inject its context into the attempt's headers."""
        sinks = self._sinks
        if sinks.dormant:
            if globals_unset():  # every call's cost without an SDK
                if call.transport == "http" and otel_context.get_current():
                    self._without_span(call, attempt)  # an incoming trace context to pass on
                return
            sinks.refresh()
        elif sinks.watching:
            sinks.refresh()
        if call.started < self._lean_until:
            # Started under the lean plan: nothing would end a span or record it.
            if call.transport == "http" and otel_context.get_current():
                self._pass_on(call, attempt)
            return
        if not sinks.spans:
            # No tracer: metrics, or an incoming trace context to pass on, or nothing.
            if sinks.metrics or (call.transport == "http" and otel_context.get_current()):
                self._without_span(call, attempt)
            return
        self._start(call, attempt)

    def _start(self, call: healkit.CallContext, attempt: healkit.AttemptContext) -> None:
        """Start the attempt's span (a tracer may record); propagate its context."""
        policy = call.policy.stash.get(POLICY) or policy_of(call.policy)
        if not policy.enabled:
            return
        span = self._tracer.start_span(_span_name(call), kind=SpanKind.CLIENT)
        metered = self._sinks.metrics and policy.metrics
        state = AttemptSpan(call, attempt, span, policy, sent=True, metrics=metered)
        attempt.stash[ATTEMPT] = state
        context = span.get_span_context()
        if not context.is_valid:
            return  # a no-op tracer and no incoming trace: nothing to propagate or log
        if policy.propagate and call.transport == "http":
            propagate.inject(attempt.headers, context=trace.set_span_in_context(span))
        state.token = ATTEMPT_SPAN.set(state)
        if span.is_recording():
            span.set_attributes(self._attributes(call, attempt))

    def _without_span(self, call: healkit.CallContext, attempt: healkit.AttemptContext) -> None:
        """Prepare an attempt while no tracer can record: pass the trace context on; meter."""
        policy = self._pass_on(call, attempt)
        if policy is not None and self._sinks.metrics and policy.metrics:
            state = AttemptSpan(call, attempt, INVALID_SPAN, policy, sent=True, metrics=True)
            attempt.stash[ATTEMPT] = state

    def _pass_on(self, call: healkit.CallContext, attempt: healkit.AttemptContext) -> Policy | None:
        """Pass the caller's trace context on to an HTTP attempt; return the policy if enabled."""
        policy = call.policy.stash.get(POLICY) or policy_of(call.policy)
        if not policy.enabled:
            return None
        if (
            policy.propagate
            and call.transport == "http"
            and trace.get_current_span().get_span_context().is_valid
        ):
            # As the API's no-op tracer would: the caller's context goes on unchanged.
            propagate.inject(attempt.headers)
        return policy

    @healkit.hookimpl
    def healkit_on_error(
        self,
        call: healkit.CallContext,
        attempt: healkit.AttemptContext,
        error: healkit.HealkitError,
    ) -> None:
        """End the failed attempt's span (made now if a plugin refused the attempt)."""
        sinks = self._sinks
        if sinks.dormant:
            if globals_unset():
                return  # no SDK
            sinks.refresh()
        elif sinks.watching:
            sinks.refresh()
        if not (sinks.spans or sinks.metrics):
            return
        state = attempt.stash.get(ATTEMPT)
        if state is None:
            # Refused before this plugin's pre_request ran (which makes a state
            # whenever there is something to record).
            policy = call.policy.stash.get(POLICY) or policy_of(call.policy)
            if not policy.enabled or not (sinks.spans or policy.metrics):
                return
            state = self._refused(call, attempt, policy)
        if not state.ended:
            self._finish(state, error_type(error, attempt.status))

    @healkit.hookimpl
    def healkit_attempt_cancelled(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> None:
        """End the span of a hedge race's loser: cancelled, not an error."""
        sinks = self._sinks
        if sinks.watching:
            sinks.refresh()
        if not (sinks.spans or sinks.metrics):
            return
        del call
        state = attempt.stash.get(ATTEMPT)
        if state is not None and not state.ended:
            self._finish(state, None, cancelled=True)

    @healkit.hookimpl
    def healkit_call_end(
        self,
        call: healkit.CallContext,
        outcome: healkit.Outcome,
        error: healkit.HealkitError | None,
    ) -> None:
        """End the last attempt's span if open; show a fallback; record the call's duration."""
        sinks = self._sinks
        if sinks.dormant:
            if globals_unset():
                return  # no SDK
            sinks.refresh()
        elif sinks.watching:
            sinks.refresh()
        if not (sinks.spans or sinks.metrics):
            return
        policy = call.policy.stash.get(POLICY) or policy_of(call.policy)
        if not policy.enabled:
            return
        state = self._end_last(call, outcome, error, policy) if call.attempts else None
        if outcome.path in _SUBSTITUTES:
            self._substitute(call, outcome, state, policy)
        failure = None if error is None else type(error).__name__
        self._record_call(call, policy, outcome.duration, failure)

    def _end_last(
        self,
        call: healkit.CallContext,
        outcome: healkit.Outcome,
        error: healkit.HealkitError | None,
        policy: Policy,
    ) -> AttemptSpan | None:
        """End the span of the call's last attempt, or of the one that answered, if open."""
        # With hedging, the attempt that answered is not always the last one.
        winner = outcome.winner
        last = call.attempts[-1 if winner is None else winner - 1]
        state = last.stash.get(ATTEMPT)
        if state is None and error is not None and (self._sinks.spans or policy.metrics):
            # A decision plugin crashed before this plugin's pre_request ran.
            state = self._refused(call, last, policy)
        if state is None or state.ended:
            return state
        if winner is not None and state.span.is_recording() and _raced(call):
            state.span.set_attribute(n.HEDGE_WON, True)  # noqa: FBT003 - an attribute value
        self._finish(state, error_type(error, last.status))
        return state

    @healkit.hookimpl
    def healkit_call_abandoned(self, call: healkit.CallContext, exception: BaseException) -> None:
        """End the span of the attempt the call was abandoned in; record the call's duration."""
        sinks = self._sinks
        if sinks.watching:
            sinks.refresh()
        if not (sinks.spans or sinks.metrics):
            return
        policy = call.policy.stash.get(POLICY) or policy_of(call.policy)
        if not policy.enabled:
            return
        failure = type(exception).__name__  # CancelledError, or the exception passed through
        if call.attempts:
            state = call.attempts[-1].stash.get(ATTEMPT)
            if state is not None and not state.ended:
                self._finish(state, failure, abandoned=True)
        self._record_call(call, policy, max(call.clock.now() - call.started, 0.0), failure)

    @healkit.hookimpl
    def healkit_event(self, event: object) -> None:
        """Count circuit breaker transitions, etcd outages and state evictions; keep gauges."""
        sinks = self._sinks
        if sinks.watching:
            sinks.refresh()
        if not sinks.metrics:
            return
        if isinstance(event, EtcdSourceStatus):
            connected = event.connection == "connected"
            self._instruments.etcd_connected.set(1 if connected else 0)
            if event.connection == "unreachable":
                self._instruments.etcd_outages.add(1)
            return
        if isinstance(event, healkit.StateEvicted):
            # By owner and reason only: one series per evicted host would be the
            # unbounded growth the eviction prevents.
            self._instruments.state_evictions.add(
                1, {n.STATE_OWNER: event.owner, n.STATE_REASON: event.reason}
            )
            return
        if isinstance(event, CircuitTransition):
            self._breaker_transition(event)

    def _breaker_transition(self, event: CircuitTransition) -> None:
        """Count a circuit breaker transition (any breaker's); keep the state gauge."""
        service = event.service
        config = self._config
        if config is None:  # not configured yet: nothing is named
            where: dict[str, AttributeValue] = {
                n.SERVICE: n.UNCONFIGURED,
                n.ENDPOINT: "" if event.endpoint is None else n.UNCONFIGURED,
            }
        else:
            policy = policy_of(config.policy(service))
            if not (policy.enabled and policy.metrics):
                return
            where = {
                n.SERVICE: service_label(config, service),
                n.ENDPOINT: endpoint_label(config, service, event.endpoint),
            }
        # str(): a plain str of a breaker's str enum states (OpenTelemetry wants plain values).
        left, entered = str(event.from_state), str(event.to_state)
        self._instruments.breaker_transitions.add(
            1,
            {
                **where,
                n.BREAKER_FROM_STATE: left,
                n.BREAKER_TO_STATE: entered,
                n.BREAKER_REASON: str(event.reason),
            },
        )
        if left != entered:
            self._instruments.breaker_state.set(0, {**where, n.BREAKER_STATE: left})
        self._instruments.breaker_state.set(1, {**where, n.BREAKER_STATE: entered})

    # -- spans -----------------------------------------------------------------------------

    def _attributes(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> dict[str, AttributeValue]:
        """Return the attributes an attempt's span starts with."""
        number = attempt.number
        attributes: dict[str, AttributeValue] = {
            n.SERVICE: call.service,
            n.TRANSPORT: call.transport,
            n.ATTEMPT: number,
            n.PATH: call.path,
        }
        if attempt.hedge:
            attributes[n.HEDGE] = True
        elif number > 1:
            attributes[n.RETRY_DELAY] = attempt.retry_delay
        if call.transport == "http":
            method = call.method
            if method in n.KNOWN_METHODS:
                attributes[n.HTTP_REQUEST_METHOD] = method
            else:
                attributes[n.HTTP_REQUEST_METHOD] = n.OTHER
                attributes[n.HTTP_REQUEST_METHOD_ORIGINAL] = method
            if number > 1:
                attributes[n.HTTP_REQUEST_RESEND_COUNT] = number - 1
            endpoint = attempt.endpoint
            if endpoint:
                redactor = call.config.redactor
                attributes[n.URL_FULL] = redactor.url(_join(endpoint, call.target))
                attributes[n.ENDPOINT] = redactor.url(endpoint)
                host, port, scheme = server_of(endpoint)
                attributes[n.SERVER_ADDRESS] = host
                attributes[n.SERVER_PORT] = port
                attributes[n.URL_SCHEME] = scheme
        else:
            attributes[n.CODE_FUNCTION_NAME] = call.target
        circuit = self._circuit(call, attempt)
        if circuit is not None:
            attributes[n.BREAKER_STATE] = circuit
        return attributes

    def _circuit(self, call: healkit.CallContext, attempt: healkit.AttemptContext) -> str | None:
        """Return what a breaker reports of the attempt's endpoint, if one does."""
        circuits = self._circuits
        if circuits is None:
            return None
        try:
            circuit = circuits(service=call.service, endpoint=attempt.endpoint)
        except Exception:  # noqa: BLE001 - a reading for a span must not lose the span
            return None
        return circuit.state if isinstance(circuit, CircuitState) else None

    def _refused(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext, policy: Policy
    ) -> AttemptSpan:
        """Make the state (and span) of an attempt refused before this plugin's pre_request ran."""
        sinks = self._sinks
        span: trace.Span = INVALID_SPAN
        if sinks.spans:
            elapsed = max(call.clock.now() - attempt.started, 0.0)
            started = time.time_ns() - int(elapsed * 1e9)
            span = self._tracer.start_span(
                _span_name(call), kind=SpanKind.CLIENT, start_time=started
            )
        metered = sinks.metrics and policy.metrics
        state = AttemptSpan(call, attempt, span, policy, sent=False, metrics=metered)
        attempt.stash[ATTEMPT] = state
        if span.is_recording():
            span.set_attributes(self._attributes(call, attempt))
        return state

    def _finish(
        self,
        state: AttemptSpan,
        failure: str | None,
        *,
        abandoned: bool = False,
        cancelled: bool = False,
    ) -> None:
        """End an attempt's span and record its metrics."""
        state.ended = True
        state.end_ns = time.time_ns()
        span = state.span
        if span.is_recording():
            status = state.attempt.status
            if status is not None:
                span.set_attribute(n.HTTP_RESPONSE_STATUS_CODE, status)
            if abandoned:
                span.set_attribute(n.ABANDONED, True)  # noqa: FBT003 - an attribute value
            if cancelled:
                span.set_attribute(n.HEDGE_CANCELLED, True)  # noqa: FBT003 - an attribute value
            if failure is not None:
                span.set_attribute(n.ERROR_TYPE, failure)
                span.set_status(Status(StatusCode.ERROR, failure))
            span.end(end_time=state.end_ns)
        if state.metrics:
            self._record_attempt(state, failure, cancelled=cancelled)
        token = state.token
        if token is not None:
            state.token = None
            # Attempts one after another end in the caller's task, in the context
            # pre_request set the span in; a raced attempt set it in its own
            # task's context, gone with the task (ValueError: another context's).
            with contextlib.suppress(ValueError):
                ATTEMPT_SPAN.reset(token)

    def _substitute(
        self,
        call: healkit.CallContext,
        outcome: healkit.Outcome,
        last: AttemptSpan | None,
        policy: Policy,
    ) -> None:
        """Show a fallback or degraded answer: a span of its own, and a counter."""
        path = outcome.path
        sinks = self._sinks
        if sinks.spans:
            self._substitute_span(call, outcome, last)
        if not (sinks.metrics and policy.metrics):
            return
        counter = self._instruments.fallbacks if path == "fallback" else self._instruments.degraded
        service = service_label(call.config, call.service)
        counter.add(1, {n.SERVICE: service, n.TRANSPORT: call.transport})

    def _substitute_span(
        self, call: healkit.CallContext, outcome: healkit.Outcome, last: AttemptSpan | None
    ) -> None:
        """Make the ``healkit.fallback`` or ``healkit.degraded`` span, after the last attempt's."""
        path = outcome.path
        if last is not None and last.end_ns:
            started = last.end_ns
        else:
            started = time.time_ns() - int(max(outcome.duration, 0.0) * 1e9)
        name = n.FALLBACK_SPAN if path == "fallback" else n.DEGRADED_SPAN
        span = self._tracer.start_span(name, kind=SpanKind.INTERNAL, start_time=started)
        if span.is_recording():
            attributes: dict[str, AttributeValue] = {
                n.SERVICE: call.service,
                n.TRANSPORT: call.transport,
                n.PATH: path,
                n.ATTEMPTS: len(call.attempts),
            }
            if outcome.endpoint:
                attributes[n.ENDPOINT] = call.config.redactor.url(outcome.endpoint)
            if call.attempts:
                attempt = call.attempts[-1]
                cause = error_type(attempt.error, attempt.status)
                if cause is not None:
                    attributes[n.CAUSE] = cause
            span.set_attributes(attributes)
            span.end()

    # -- metrics ---------------------------------------------------------------------------

    def _record_call(
        self, call: healkit.CallContext, policy: Policy, duration: float, failure: str | None
    ) -> None:
        """Record ``healkit.call.duration`` (if metrics may be recorded for the service)."""
        if not (self._sinks.metrics and policy.metrics):
            return
        attributes: dict[str, AttributeValue] = {
            n.SERVICE: service_label(call.config, call.service),
            n.TRANSPORT: call.transport,
            n.PATH: call.path,
        }
        if failure is not None:
            attributes[n.ERROR_TYPE] = failure
        self._instruments.call_duration.record(duration, attributes)

    def _record_attempt(
        self, state: AttemptSpan, failure: str | None, *, cancelled: bool = False
    ) -> None:
        call = state.call
        attempt = state.attempt
        instruments = self._instruments
        self._count_attempt(call, attempt, failure, cancelled=cancelled)
        if cancelled:
            return  # cut short: its duration is no request's latency
        endpoint = attempt.endpoint
        config, service = call.config, call.service
        if isinstance(attempt.error, healkit.CircuitOpenError):
            where = endpoint_label(config, service, endpoint or None)
            instruments.breaker_refusals.add(
                1, {n.SERVICE: service_label(config, service), n.ENDPOINT: where}
            )
        if not state.sent or endpoint is None or call.transport != "http":
            return
        duration = attempt.duration
        if duration is None:
            duration = call.clock.now() - attempt.started
        method = call.method
        attributes: dict[str, AttributeValue] = {
            n.HTTP_REQUEST_METHOD: method if method in n.KNOWN_METHODS else n.OTHER,
            n.URL_SCHEME: server_of(endpoint)[2],
            **server_labels(config, service, endpoint),
        }
        if attempt.status is not None:
            attributes[n.HTTP_RESPONSE_STATUS_CODE] = attempt.status
        if failure is not None:
            attributes[n.ERROR_TYPE] = failure
        instruments.request_duration.record(duration, attributes)

    def _count_attempt(
        self,
        call: healkit.CallContext,
        attempt: healkit.AttemptContext,
        failure: str | None,
        *,
        cancelled: bool,
    ) -> None:
        """Count the attempt, and the retry or hedge it was."""
        instruments = self._instruments
        counted: dict[str, AttributeValue] = {
            n.SERVICE: service_label(call.config, call.service),
            n.TRANSPORT: call.transport,
        }
        if attempt.hedge:
            instruments.hedges.add(1, counted)
        elif attempt.number > 1:
            instruments.retries.add(1, counted)
        if failure is not None:
            counted = {**counted, n.ERROR_TYPE: failure}
        elif cancelled:
            counted = {**counted, n.HEDGE_CANCELLED: True}
        instruments.attempts.add(1, counted)

    def connection_timing(
        self,
        state: AttemptSpan,
        event: str,
        histogram: Any,  # noqa: ANN401 - an API Histogram (its class is private to the API)
        seconds: float,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        """Record a connection-level timing of an attempt (from the ``TraceConfig``)."""
        span = state.span
        if span.is_recording():
            span.add_event(event, {n.DURATION: seconds})
        if state.metrics:
            histogram.record(seconds, attributes or self.server_attributes(state))

    def connection_acquired(self, state: AttemptSpan, *, reused: bool) -> None:
        """Count a connection the attempt got, new or from the pool."""
        span = state.span
        if span.is_recording():
            span.set_attribute(n.CONNECTION_REUSED, reused)
        if state.metrics:
            attributes = {**self.server_attributes(state), n.CONNECTION_REUSED: reused}
            self._instruments.connections.add(1, attributes)

    @staticmethod
    def server_attributes(state: AttemptSpan) -> dict[str, AttributeValue]:
        """``server.address``, ``server.port``, ``healkit.service`` of an attempt's metrics."""
        call = state.call
        return server_labels(call.config, call.service, state.attempt.endpoint or None)

    @staticmethod
    def dns_attributes(state: AttemptSpan, host: str) -> dict[str, AttributeValue]:
        """``dns.question.name`` of a lookup: the host of a configured endpoint, or none named."""
        call, endpoint = state.call, state.attempt.endpoint
        if (
            endpoint
            and call.config.configured(call.service, endpoint)
            and server_of(endpoint)[0] == host
        ):
            return {n.DNS_QUESTION_NAME: host}
        # Another host (an unconfigured endpoint's, a redirect's): one series for them all.
        return {n.DNS_QUESTION_NAME: n.UNCONFIGURED}


def _enabled(config: healkit.HealkitConfig) -> bool:
    """Whether ``tracing.enabled`` is on for a policy of ``config``."""
    policies = (config.defaults, *config.services.values())
    return any(policy.section(SECTION).enabled for policy in policies)


def _raced(call: healkit.CallContext) -> bool:
    """Whether ``call`` sent a hedge (its attempts ran concurrently)."""
    return any(attempt.hedge for attempt in call.attempts)


def _span_name(call: healkit.CallContext) -> str:
    """Return the span name: ``{method}`` (``HTTP`` if unknown), or the function's name."""
    if call.transport == "http":
        return call.method if call.method in n.KNOWN_METHODS else "HTTP"
    return call.target
