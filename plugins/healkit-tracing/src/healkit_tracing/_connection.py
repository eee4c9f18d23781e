"""Connection-level timings from aiohttp's ``TraceConfig`` (the equivalent of Go's httptrace).

healkit passes each attempt as the request's ``trace_request_ctx``, so every
callback finds the attempt, and the plugin's state of it, in
``trace_config_ctx.trace_request_ctx``. Requests that are not healkit attempts
(other requests of an adopted session), attempts of services whose
``tracing.connection_timings`` is off, and every request while neither spans
nor metrics can be recorded (no SDK), are ignored.

The callbacks run inside aiohttp's request: they never raise (an exception is
logged once as ``healkit.plugin_error`` and otherwise ignored), and they await
nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Final, TypeVar

import aiohttp

import healkit
from healkit_tracing import _names as n
from healkit_tracing._state import ATTEMPT

if TYPE_CHECKING:
    from healkit_tracing._plugin import TracingPlugin
    from healkit_tracing._providers import Sinks
    from healkit_tracing._state import AttemptSpan

__all__ = ["build_trace_config"]

_logger: Final = healkit.get_logger("healkit.tracing")

P = TypeVar("P")
Callback = Callable[[aiohttp.ClientSession, SimpleNamespace, P], Awaitable[None]]

_STARTED_DNS: Final = "healkit_tracing_dns"
_STARTED_CREATE: Final = "healkit_tracing_create"
_STARTED_QUEUE: Final = "healkit_tracing_queue"


def _state(sinks: Sinks, ctx: SimpleNamespace) -> AttemptSpan | None:
    """Return the plugin's state of the attempt this request is, if connection timings are on."""
    if sinks.watching:
        sinks.refresh()
    if not (sinks.spans or sinks.metrics):
        return None  # no SDK: no attempt has a state
    attempt = ctx.trace_request_ctx  # aiohttp always sets it (None unless healkit's request)
    if not isinstance(attempt, healkit.AttemptContext):
        return None
    state = attempt.stash.get(ATTEMPT)
    if state is None or state.ended or not state.policy.timings:
        return None
    return state


def build_trace_config(plugin: TracingPlugin, sinks: Sinks) -> aiohttp.TraceConfig:  # noqa: C901 - one closure per signal
    """Return a ``TraceConfig`` whose callbacks report to ``plugin`` (while ``sinks`` record)."""
    reported: list[bool] = []

    def guarded(callback: Callable[[SimpleNamespace, P], None]) -> Callback[P]:
        async def signal(_: aiohttp.ClientSession, ctx: SimpleNamespace, params: P) -> None:
            try:
                callback(ctx, params)
            except Exception as error:  # noqa: BLE001 - an observer never fails a request
                if not reported:
                    reported.append(True)
                    _logger.error(  # noqa: TRY400 - one line, as the core logs plugin errors
                        "healkit.plugin_error",
                        plugin="tracing",
                        hook="trace_config",
                        error=type(error).__name__,
                        reason=str(error),
                    )

        return signal

    def started(name: str) -> Callable[[SimpleNamespace, Any], None]:
        def mark(ctx: SimpleNamespace, _: object) -> None:
            setattr(ctx, name, time.perf_counter())

        return mark

    def elapsed(ctx: SimpleNamespace, name: str) -> float | None:
        began: float | None = getattr(ctx, name, None)
        return None if began is None else time.perf_counter() - began

    def dns_end(ctx: SimpleNamespace, params: aiohttp.TraceDnsResolveHostEndParams) -> None:
        state = _state(sinks, ctx)
        seconds = elapsed(ctx, _STARTED_DNS)
        if state is not None and seconds is not None:
            attributes = plugin.dns_attributes(state, params.host)
            plugin.connection_timing(
                state, n.EVENT_DNS, plugin.instruments.dns_duration, seconds, attributes
            )

    def create_end(ctx: SimpleNamespace, _: aiohttp.TraceConnectionCreateEndParams) -> None:
        state = _state(sinks, ctx)
        seconds = elapsed(ctx, _STARTED_CREATE)
        if state is not None:
            if seconds is not None:
                histogram = plugin.instruments.connect_duration
                plugin.connection_timing(state, n.EVENT_CONNECT, histogram, seconds)
            plugin.connection_acquired(state, reused=False)

    def queue_end(ctx: SimpleNamespace, _: aiohttp.TraceConnectionQueuedEndParams) -> None:
        state = _state(sinks, ctx)
        seconds = elapsed(ctx, _STARTED_QUEUE)
        if state is not None and seconds is not None:
            histogram = plugin.instruments.queue_duration
            plugin.connection_timing(state, n.EVENT_QUEUED, histogram, seconds)

    def reused(ctx: SimpleNamespace, _: aiohttp.TraceConnectionReuseconnParams) -> None:
        state = _state(sinks, ctx)
        if state is not None:
            plugin.connection_acquired(state, reused=True)

    config = aiohttp.TraceConfig()
    config.on_dns_resolvehost_start.append(guarded(started(_STARTED_DNS)))
    config.on_dns_resolvehost_end.append(guarded(dns_end))
    config.on_connection_create_start.append(guarded(started(_STARTED_CREATE)))
    config.on_connection_create_end.append(guarded(create_end))
    config.on_connection_queued_start.append(guarded(started(_STARTED_QUEUE)))
    config.on_connection_queued_end.append(guarded(queue_end))
    config.on_connection_reuseconn.append(guarded(reused))
    config.freeze()
    return config
