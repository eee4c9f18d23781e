"""What the demo observes: healkit's typed events, and with ``--trace`` the OpenTelemetry SDK.

:class:`Observer` is a plugin of the demo's runtime. Its ``healkit_event``
implementation receives the event objects the plugins emit and dispatches on
their type: the router's :class:`EndpointEjected`, :class:`EndpointDown` and
:class:`EndpointReturned` (traffic may move to another group: the observer
asks the router where it goes now), the breaker's ``BreakerTransition`` and
the tls plugin's ``TlsRotated`` and ``TlsMaterialRejected`` (when those
plugins are installed). Events of other types are counted by type and the
first of each is shown.

The runtime's :class:`ConfigApplied` and :class:`ConfigRejected` say which
configuration is in force and where it came from. healkit's log events are
routed to :meth:`Observer.on_log` only to keep them off the terminal while the
demo draws on it; they are counted by name for the summary.

:class:`LoadWatch` samples, every frame, the concurrency limit the limit
plugin applies to the demo's service (``LimitPlugin.status``: the plugin
instance the demo runs) and the primary upstream's line (the fault server's
``active`` and ``queued``).

:class:`Tracing` is ``--trace``: the tracing plugin with the OpenTelemetry SDK's
in-memory span exporter and metric reader.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, final

from healkit._demo import DemoError
from healkit._demo.scenes import SERVICE
from healkit._demo.traffic import one_line, to_ms
from healkit._routing.plugin import endpoint_status
from healkit.events import (
    ConfigApplied,
    ConfigRejected,
    EndpointDown,
    EndpointEjected,
    EndpointReturned,
)
from healkit.hookspecs import hookimpl

if TYPE_CHECKING:  # the plugin and SDK packages are imported only when a run needs them
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Tracer

    from healkit._demo import Say, Stopwatch
    from healkit._demo.pki import Pki
    from healkit._demo.traffic import Traffic
    from healkit._runtime import Runtime
    from healkit.testing import FaultServer
    from healkit_breaker import BreakerTransition
    from healkit_limit import LimitPlugin, LimitStatus
    from healkit_tls import TlsMaterialRejected, TlsRotated
    from healkit_tracing import TracingPlugin

__all__ = [
    "CALL_SPAN",
    "LimitTrace",
    "LoadWatch",
    "Observer",
    "TlsTally",
    "Tracing",
    "TrafficWatch",
    "histogram_quantile",
]

_OPENING: Final = frozenset({"open", "forced_open"})

CALL_SPAN: Final = "healkit demo call"
"""With ``trace``: the span each call of the demo runs in (the attempt spans are its children)."""
CALL_ATTEMPTS: Final = "healkit_demo.attempts"
CALL_OUTCOME: Final = "healkit_demo.outcome"
DURATION_METRIC: Final = "http.client.request.duration"


@final
@dataclass(slots=True)
class TrafficWatch:
    """Where the router sends the service's traffic, and each time that changed.

    ``group``: 0 (the primary), 1 (the fallback) or ``None`` (no endpoint usable:
    degraded responses). Leaving the primary is a failover, returning to it a
    switch-back.
    """

    group: int | None = 0
    failovers: int = 0
    switch_backs: int = 0
    changes: list[dict[str, Any]] = field(default_factory=list)

    def observe(self, group: int | None, at: float, scene: str) -> str | None:
        """Take the group traffic goes to now; return a line to show if it changed."""
        was, self.group = self.group, group
        if group == was:
            return None
        self.changes.append({"at_s": round(at, 3), "scene": scene, "from": was, "to": group})
        if was == 0:
            self.failovers += 1
        elif group == 0:
            self.switch_backs += 1
            return "switch-back: traffic returns to the primary"
        return (
            "failover: traffic goes to the fallback group"
            if group is not None
            else "no upstream healthy: degraded responses"
        )


@final
@dataclass(slots=True)
class TlsTally:
    """What the TLS scene did: the rotations, and the certificates the upstream saw."""

    scenes: int
    presented: Counter[str] = field(default_factory=Counter)
    by_scene: list[Counter[str]] = field(default_factory=list)
    after_rotation: Counter[str] = field(default_factory=Counter)
    swaps: list[dict[str, Any]] = field(default_factory=list)
    rotations: int = 0
    rejected: int = 0
    applied_at: float | None = None
    """``time.monotonic()`` when the plugin applied the last rotation."""
    harvested: int = 0
    """How many requests the upstream had received (``hits()``) at the last harvest."""

    def __post_init__(self) -> None:
        """One counter of presented certificates per scene."""
        self.by_scene = [Counter() for _ in range(self.scenes)]

    def harvest(self, server: FaultServer, pki: Pki, scene_starts: Sequence[float]) -> None:
        """Count the client certificates of the requests the upstream received since last time.

        A request counts in the scene during which it arrived, and as "after the
        rotation" if it arrived after the tls plugin applied the last rotation.
        The upstream may keep only its last requests (``max_recorded``): harvest
        before more than that many arrived, or the older ones are not counted.
        """
        received = server.hits()
        new, self.harvested = received - self.harvested, received
        recorded = server.requests
        for request in recorded[max(len(recorded) - new, 0) :]:
            subject = pki.subjects.get(label := pki.label(request.peer_certificate), label)
            self.presented[subject] += 1
            scene = max(bisect.bisect_right(scene_starts, request.arrived_at) - 1, 0)
            self.by_scene[scene][subject] += 1
            if self.applied_at is not None and request.arrived_at >= self.applied_at:
                self.after_rotation[subject] += 1


@final
@dataclass(slots=True)
class LimitTrace:
    """The concurrency limit and the upstream's line during one scene, as sampled every frame.

    The limit's fields stay ``None`` while the limit plugin reports no
    concurrency limit for the service (not installed, off, or no call yet).
    """

    samples: int = 0
    first: int | None = None
    low: int | None = None
    high: int | None = None
    last: int | None = None
    in_flight_max: int = 0
    upstream_queued_max: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Return the trace as JSON-ready values."""
        return {
            "samples": self.samples,
            "first": self.first,
            "min": self.low,
            "max": self.high,
            "last": self.last,
            "in_flight_max": self.in_flight_max,
            "upstream_queued_max": self.upstream_queued_max,
        }


@final
class LoadWatch:
    """The demo service's concurrency limit and the primary upstream's line, sampled.

    Args:
        limit: the limit plugin of the demo's runtime (``None``: not installed).
        scenes: how many scenes the run plays.

    """

    def __init__(self, limit: LimitPlugin | None, scenes: int) -> None:
        self.by_scene = [LimitTrace() for _ in range(scenes)]
        self.now: LimitStatus | None = None
        """The limit plugin's last report for the service (``None``: none)."""
        self.serving = 0
        """Requests the primary upstream was handling at the last sample (not those in line)."""
        self.queued = 0
        """Requests waiting in the primary upstream's line at the last sample."""
        self._limit = limit

    def sample(self, scene: int, server: FaultServer) -> None:
        """Read the limit and the upstream's line now; count them in scene ``scene``."""
        self.queued = server.queued
        self.serving = server.active - self.queued
        trace = self.by_scene[scene]
        trace.upstream_queued_max = max(trace.upstream_queued_max, self.queued)
        self.now = status = None if self._limit is None else self._limit.status(SERVICE)
        if status is None or status.limit is None:
            return
        limit = status.limit
        trace.samples += 1
        if trace.first is None:
            trace.first = limit
        trace.low = limit if trace.low is None else min(trace.low, limit)
        trace.high = limit if trace.high is None else max(trace.high, limit)
        trace.last = limit
        trace.in_flight_max = max(trace.in_flight_max, status.in_flight)


@final
class Observer:
    """The demo's plugin: it observes the typed events of healkit and its plugins.

    Args:
        scenes: the names of the scenes, in order.
        traffic: the load generator (which scene plays; calls in flight).
        say: shows a notable moment.
        stopwatch: when the run started.
        tls: the tally of the TLS scene, with the tls plugin installed.
        fallback: whether the service has a fallback group (then the
            observer follows where its traffic goes).

    """

    healkit_name = "demo"

    def __init__(  # noqa: PLR0913 - keyword-only parts of one run
        self,
        *,
        scenes: Sequence[str],
        traffic: Traffic,
        say: Say,
        stopwatch: Stopwatch,
        tls: TlsTally | None,
        fallback: bool,
    ) -> None:
        self._stopwatch = stopwatch
        self.watch = TrafficWatch()
        self.breaker_transitions: list[dict[str, Any]] = []
        self.config_changes: list[dict[str, Any]] = []
        self.log_events: Counter[str] = Counter()
        """healkit's log events by name (a set of names fixed by healkit: bounded)."""
        self.events: Counter[str] = Counter()
        """The typed events received, by class name (as many as there are event classes)."""
        self.tls = tls
        self._scenes = tuple(scenes)
        self._traffic = traffic
        self._say = say
        self._fallback = fallback
        self._runtime: Runtime | None = None
        self._dispatch: list[tuple[type[Any], Callable[[Any], None]]] = [
            (EndpointEjected, self._ejected),
            (EndpointDown, self._down),
            (EndpointReturned, self._returned),
            (ConfigApplied, self._config_applied),
            (ConfigRejected, self._config_rejected),
        ]
        # The plugins' packages are optional: their events exist only when they are installed.
        with contextlib.suppress(ImportError):
            from healkit_breaker import BreakerTransition  # noqa: PLC0415 - optional plugin

            self._dispatch.append((BreakerTransition, self._breaker_moved))
        with contextlib.suppress(ImportError):
            from healkit_tls import TlsMaterialRejected, TlsRotated  # noqa: PLC0415 - optional

            self._dispatch += [
                (TlsRotated, self._tls_rotated),
                (TlsMaterialRejected, self._tls_rejected),
            ]

    # -- hooks -----------------------------------------------------------------

    @hookimpl
    def healkit_configure(self, runtime: Runtime) -> None:
        """Keep the runtime the observer is registered in, to ask its router."""
        self._runtime = runtime

    @hookimpl
    def healkit_event(self, event: object) -> None:
        """Dispatch a typed event on its class."""
        self.events[type(event).__name__] += 1
        for kind, handle in self._dispatch:
            if isinstance(event, kind):
                handle(event)
                return
        if self.events[type(event).__name__] == 1:
            self._say(f"event {one_line(repr(event))}", "magenta")

    # -- what the events mean --------------------------------------------------

    def watch_traffic(self) -> None:
        """Ask the router where the service's traffic goes now; count a failover or switch-back.

        Called on every frame and on every router or breaker event (an
        ejection ending, or an open breaker's time passing, has no event: it
        shows on the next frame).
        """
        if not self._fallback or self._runtime is None:
            return
        usable = [s.group for s in endpoint_status(self._runtime, SERVICE) if s.usable]
        group = min(usable, default=None)
        change = self.watch.observe(group, self._stopwatch.elapsed(), self._scene())
        if change is not None:
            self._say(change, "bold green" if group == 0 else "bold yellow")

    def _scene(self) -> str:
        return self._scenes[self._traffic.scene] if self._scenes else ""

    def _ejected(self, event: EndpointEjected) -> None:
        self._say(
            f"routing: {event.endpoint} ejected for {event.seconds:g} s"
            f" after {event.failures} failures in a row",
            "yellow",
        )
        self.watch_traffic()

    def _down(self, event: EndpointDown) -> None:
        self._say(f"routing: {event.endpoint} down after {event.probes} failed probes", "yellow")
        self.watch_traffic()

    def _returned(self, event: EndpointReturned) -> None:
        self._say(f"routing: {event.endpoint} back after {event.probes} good probes", "green")
        self.watch_traffic()

    def _breaker_moved(self, event: BreakerTransition) -> None:
        """Record a breaker transition, and show it."""
        was, now = event.from_state.value, event.to_state.value
        self.breaker_transitions.append(
            {
                "at_s": round(self._stopwatch.elapsed(), 3),
                "scene": self._scene(),
                "endpoint": event.endpoint,
                "from": was,
                "to": now,
                "reason": event.reason,
                "failures": event.failures,
                "calls": event.calls,
            }
        )
        counts = f"; {event.failures} of {event.calls} failed" if event.calls else ""
        style = "bold yellow" if now in _OPENING else "green"
        self._say(f"breaker {was} -> {now} ({event.reason}{counts})", style)
        self.watch_traffic()

    def _tls_rotated(self, event: TlsRotated) -> None:
        """Record material the tls plugin swapped in: the first load, then rotations."""
        tls = self.tls
        if event.trigger == "config" or tls is None:
            self._say(f"tls: client certificate {event.subject} loaded ({event.trigger})", "blue")
            return
        tls.rotations += 1
        tls.applied_at = now = time.monotonic()
        tls.after_rotation.clear()  # counted again from the requests arriving from now
        pending = [swap for swap in tls.swaps if swap["applied_at_s"] is None]
        if pending:
            pending[0]["applied_at_s"] = round(now - self._stopwatch.started, 3)
            pending[0]["trigger"] = event.trigger
            # Attempts prepared before the swap may still arrive with the old certificate.
            pending[0]["calls_in_flight"] = self._traffic.in_flight
        self._say(
            f"tls: rotated to {event.subject} ({event.trigger}, generation {event.generation});"
            " new connections present it",
            "bold green",
        )

    def _tls_rejected(self, event: TlsMaterialRejected) -> None:
        if self.tls is not None:
            self.tls.rejected += 1
        kept = "the previous material stays in use" if event.kept_previous else "no material"
        self._say(f"tls: material rejected ({event.trigger}): {event.reason}; {kept}", "bold red")

    # -- healkit's log events ----------------------------------------------------

    def on_log(self, level: str, event: Mapping[str, Any]) -> None:
        """Count a log event of healkit's by name (the summary's ``log_events``).

        Args:
            level: the level name in lower case (unused).
            event: the event's fields.

        """
        del level
        self.log_events[str(event.get("event", "?"))] += 1

    def _config_applied(self, event: ConfigApplied) -> None:
        """Record a configuration the runtime applied (the first one, then the live changes)."""
        change = {
            "at_s": round(max(self._stopwatch.elapsed(), 0.0), 3),
            "version": event.version,
            "origin": event.origin,
        }
        self.config_changes.append(change)
        if len(self.config_changes) > 1:
            self._say(f"config applied: version {event.version} from {event.origin}", "blue")

    def _config_rejected(self, event: ConfigRejected) -> None:
        self._say(f"config rejected from {event.origin}: {list(event.issues)}", "bold red")


# -- tracing: the OpenTelemetry SDK, in memory -------------------------------------


@final
class Tracing:
    """``trace``: the OpenTelemetry SDK for one run, its spans and metrics kept in memory.

    The tracing plugin is given the SDK's providers (an explicitly passed plugin
    takes the place of the entry-point one). Each call runs in a span of the
    demo's own, :data:`CALL_SPAN`, so that the attempt spans of one call share a
    trace. Finished spans are drained from the exporter a few times a second and
    counted, so memory stays flat however long the demo runs; the spans of a
    call still running are kept until its call span ends, to keep one retried
    call whole as the sample.
    """

    def __init__(self) -> None:
        """Set the SDK up.

        Raises:
            DemoError: healkit-tracing or the OpenTelemetry SDK is not installed.

        """
        try:
            from healkit_tracing import TracingPlugin  # noqa: PLC0415 - a plugin, not the core
        except ImportError as error:
            raise DemoError(
                "--trace needs the tracing plugin: pip install 'healkit[tracing]'"
            ) from error
        try:
            from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415
            from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
                InMemorySpanExporter,
            )
        except ImportError as error:
            raise DemoError(
                "--trace needs the OpenTelemetry SDK: pip install opentelemetry-sdk"
            ) from error
        self.exporter: InMemorySpanExporter = InMemorySpanExporter()
        self.tracer_provider: TracerProvider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader: InMemoryMetricReader = InMemoryMetricReader()
        self.meter_provider: MeterProvider = MeterProvider(metric_readers=[self.reader])
        self.plugin: TracingPlugin = TracingPlugin(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )
        self.tracer: Tracer = self.tracer_provider.get_tracer("healkit.demo")
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.spans = 0
        self.calls = 0
        self._open: dict[int, list[ReadableSpan]] = {}
        self._sample: tuple[ReadableSpan, list[ReadableSpan]] | None = None
        self._metrics: dict[str, Any] | None = None

    @contextlib.contextmanager
    def call(self) -> Iterator[Callable[[int, str], None]]:
        """Run a call in a :data:`CALL_SPAN`; yield a function recording how it ended."""
        with self.tracer.start_as_current_span(CALL_SPAN) as span:

            def ended(attempts: int, outcome: str) -> None:
                span.set_attribute(CALL_ATTEMPTS, attempts)
                span.set_attribute(CALL_OUTCOME, outcome)

            yield ended

    def drain(self) -> None:
        """Count the spans finished since the last drain, and empty the exporter."""
        finished = self.exporter.get_finished_spans()
        if not finished:
            return
        self.exporter.clear()  # no await since the read: no span ended in between
        for span in finished:
            trace_id = span.context.trace_id if span.context is not None else 0
            if span.name == CALL_SPAN:
                self.calls += 1
                self._consider(span, self._open.pop(trace_id, []))
                continue
            attributes = span.attributes or {}
            path = str(attributes.get("healkit.path", "-"))
            self.counts[span.name, path, str(attributes.get("error.type", "-"))] += 1
            self.spans += 1
            if span.parent is not None:  # a call of the demo's: kept until its call ends
                self._open.setdefault(trace_id, []).append(span)

    def _consider(self, call: ReadableSpan, spans: list[ReadableSpan]) -> None:
        """Keep ``call`` as the sample if it was retried (preferring one a retry answered)."""
        attributes = call.attributes or {}
        attempts = attributes.get(CALL_ATTEMPTS, 0)
        if not isinstance(attempts, int) or attempts < 2:
            return
        if self._sample is not None:
            kept = (self._sample[0].attributes or {}).get(CALL_OUTCOME)
            if kept == "retry" or attributes.get(CALL_OUTCOME) != "retry":
                return
        self._sample = (call, spans)

    def close(self) -> None:
        """Drain the last spans, read the metrics, and shut the providers down."""
        self.drain()
        self._metrics = self._read_metrics()
        self.shutdown()

    def shutdown(self) -> None:
        """Shut the SDK's providers down."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()

    def _read_metrics(self) -> dict[str, Any]:
        from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415 - see __init__
            Histogram,
            Sum,
        )

        data = self.reader.get_metrics_data()
        bounds: Sequence[float] = ()
        buckets: list[int] = []
        count, low, high = 0, math.inf, -math.inf
        counters: Counter[str] = Counter()
        metrics = [
            metric
            for resource in (data.resource_metrics if data is not None else ())
            for scope in resource.scope_metrics
            for metric in scope.metrics
        ]
        for metric in metrics:
            if metric.name == DURATION_METRIC and isinstance(metric.data, Histogram):
                for point in metric.data.data_points:
                    bounds = point.explicit_bounds
                    buckets = [
                        a + b
                        for a, b in zip(
                            buckets or [0] * len(point.bucket_counts),
                            point.bucket_counts,
                            strict=True,
                        )
                    ]
                    count += point.count
                    low, high = min(low, point.min), max(high, point.max)
            elif isinstance(metric.data, Sum) and metric.name.startswith("healkit."):
                counters[metric.name] += int(sum(point.value for point in metric.data.data_points))
        duration: dict[str, Any] = {"requests": count}
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            value = histogram_quantile(bounds, buckets, q, low, high)
            duration[f"{name}_ms"] = to_ms(value)
        duration["min_ms"] = to_ms(low) if count else None
        duration["max_ms"] = to_ms(high) if count else None
        return {
            "http_client_request_duration": duration,
            "counters": dict(sorted(counters.items())),
        }

    def summary(self) -> dict[str, Any]:
        """Return the trace summary as JSON-ready values."""
        self.drain()
        metrics = self._metrics if self._metrics is not None else self._read_metrics()
        counted = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        return {
            "spans": self.spans,
            "calls": self.calls,
            "by_name_path_error": [
                {"name": name, "path": path, "error_type": error, "count": count}
                for (name, path, error), count in counted
            ],
            "sample_retried_call": self._sample_json(),
            **metrics,
        }

    def _sample_json(self) -> dict[str, Any] | None:
        if self._sample is None:
            return None
        call, spans = self._sample
        origin = call.start_time or 0
        attributes = call.attributes or {}

        def offset(nanoseconds: int | None) -> float:
            return round(((nanoseconds or origin) - origin) / 1e6, 3)

        listed = []
        for span in sorted(spans, key=lambda s: s.start_time or 0):
            values = span.attributes or {}
            listed.append(
                {
                    "name": span.name,
                    "attempt": values.get("healkit.attempt"),
                    "path": values.get("healkit.path"),
                    "resend_count": values.get("http.request.resend_count"),
                    "status_code": values.get("http.response.status_code"),
                    "error_type": values.get("error.type"),
                    "retry_delay_s": values.get("healkit.retry.delay"),
                    "start_ms": offset(span.start_time),
                    "duration_ms": round(offset(span.end_time) - offset(span.start_time), 3),
                }
            )
        trace_id = call.context.trace_id if call.context is not None else 0
        return {
            "trace_id": f"{trace_id:032x}",
            "outcome": attributes.get(CALL_OUTCOME),
            "attempts": attributes.get(CALL_ATTEMPTS),
            "duration_ms": offset(call.end_time),
            "spans": listed,
        }


def histogram_quantile(
    bounds: Sequence[float], buckets: Sequence[int], q: float, low: float, high: float
) -> float | None:
    """Estimate the ``q`` quantile from histogram buckets, as Prometheus does.

    Linear interpolation inside the bucket holding the rank; the first bucket
    starts at the smallest value recorded and the last one ends at the
    largest, and the estimate stays between them.
    """
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    cumulative = 0
    for index, count in enumerate(buckets):
        if count and cumulative + count >= rank:
            lower = max(bounds[index - 1] if index else low, low)
            upper = min(bounds[index] if index < len(bounds) else high, high)
            return lower + (upper - lower) * (rank - cumulative) / count
        cumulative += count
    return high
