"""The plugin's instruments, created once per plugin instance from its meter."""

from __future__ import annotations

from typing import final

from opentelemetry import metrics

from healkit_tracing import _names as n

__all__ = ["Instruments"]


@final
class Instruments:
    """Every instrument the plugin records to (see ``docs/plugins/tracing.md``)."""

    __slots__ = (
        "attempts",
        "breaker_refusals",
        "breaker_state",
        "breaker_transitions",
        "call_duration",
        "config_version",
        "connect_duration",
        "connections",
        "degraded",
        "dns_duration",
        "etcd_connected",
        "etcd_outages",
        "fallbacks",
        "hedges",
        "queue_duration",
        "request_duration",
        "retries",
        "state_evictions",
    )

    def __init__(self, meter: metrics.Meter) -> None:
        buckets = n.DURATION_BUCKETS
        self.request_duration = meter.create_histogram(
            n.METRIC_REQUEST_DURATION,
            unit="s",
            description="Duration of HTTP client requests (one per healkit attempt).",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self.call_duration = meter.create_histogram(
            n.METRIC_CALL_DURATION,
            unit="s",
            description="Duration of healkit calls, every attempt, backoff and fallback included.",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self.attempts = meter.create_counter(
            n.METRIC_ATTEMPTS, unit="{attempt}", description="Attempts made by healkit calls."
        )
        self.retries = meter.create_counter(
            n.METRIC_RETRIES,
            unit="{retry}",
            description="Attempts after the first of a call, made after a failure (not hedges).",
        )
        self.hedges = meter.create_counter(
            n.METRIC_HEDGES,
            unit="{hedge}",
            description="Hedges sent: attempts made while an earlier one was still in flight.",
        )
        self.fallbacks = meter.create_counter(
            n.METRIC_FALLBACKS, unit="{call}", description="Calls answered by a fallback."
        )
        self.degraded = meter.create_counter(
            n.METRIC_DEGRADED, unit="{call}", description="Calls answered by a degraded response."
        )
        self.breaker_transitions = meter.create_counter(
            n.METRIC_BREAKER_TRANSITIONS,
            unit="{transition}",
            description="Circuit breaker state transitions.",
        )
        self.breaker_refusals = meter.create_counter(
            n.METRIC_BREAKER_REFUSALS,
            unit="{attempt}",
            description="Attempts refused by an open circuit breaker (nothing was sent).",
        )
        self.breaker_state = meter.create_gauge(
            n.METRIC_BREAKER_STATE,
            unit="1",
            description="1 for the state a circuit breaker is in, 0 for a state it left.",
        )
        self.config_version = meter.create_gauge(
            n.METRIC_CONFIG_VERSION,
            unit="{version}",
            description="The version of the configuration in force (1 for the first applied).",
        )
        self.state_evictions = meter.create_counter(
            n.METRIC_STATE_EVICTIONS,
            unit="{entry}",
            description="Per-service or per-endpoint state of unconfigured keys evicted.",
        )
        self.etcd_connected = meter.create_gauge(
            n.METRIC_ETCD_CONNECTED,
            unit="1",
            description="1 while the etcd configuration source is connected, 0 while unreachable.",
        )
        self.etcd_outages = meter.create_counter(
            n.METRIC_ETCD_OUTAGES,
            unit="{outage}",
            description="Times the etcd configuration source lost etcd.",
        )
        self.dns_duration = meter.create_histogram(
            n.METRIC_DNS_DURATION,
            unit="s",
            description="Duration of DNS lookups made by aiohttp for healkit calls.",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self.connect_duration = meter.create_histogram(
            n.METRIC_CONNECT_DURATION,
            unit="s",
            description="Time to set up a new connection (DNS, TCP and TLS included).",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self.queue_duration = meter.create_histogram(
            n.METRIC_QUEUE_DURATION,
            unit="s",
            description="Time an attempt waited for a connection of the session's pool.",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self.connections = meter.create_counter(
            n.METRIC_CONNECTIONS,
            unit="{connection}",
            description="Connections acquired for attempts, new or reused from the pool.",
        )
