"""Names of the span attributes, span events and instruments the plugin writes.

The HTTP ones are OpenTelemetry's semantic conventions (HTTP client spans and
metrics, stable since semantic conventions 1.23); healkit's own are under
``healkit.``. The plugin depends on the OpenTelemetry API only, so the names
are spelled here rather than taken from ``opentelemetry-semantic-conventions``.
"""

from __future__ import annotations

from typing import Final

# -- OpenTelemetry semantic conventions -------------------------------------------------

HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_REQUEST_METHOD_ORIGINAL: Final = "http.request.method_original"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
HTTP_REQUEST_RESEND_COUNT: Final = "http.request.resend_count"
URL_FULL: Final = "url.full"
URL_SCHEME: Final = "url.scheme"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
CODE_FUNCTION_NAME: Final = "code.function.name"
DNS_QUESTION_NAME: Final = "dns.question.name"

OTHER: Final = "_OTHER"
"""The semantic conventions' value for a method (or an error) outside the known set."""

KNOWN_METHODS: Final = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)

# -- healkit ---------------------------------------------------------------------------

UNCONFIGURED: Final = "(unconfigured)"
"""A metric's ``healkit.service``, ``healkit.endpoint`` or ``server.address`` when the
configuration does not name it: one series for every such host, not one each."""

SERVICE: Final = "healkit.service"
ENDPOINT: Final = "healkit.endpoint"
TRANSPORT: Final = "healkit.transport"
ATTEMPT: Final = "healkit.attempt"
ATTEMPTS: Final = "healkit.attempts"
PATH: Final = "healkit.path"
RETRY_DELAY: Final = "healkit.retry.delay"
BREAKER_STATE: Final = "healkit.breaker.state"
BREAKER_FROM_STATE: Final = "healkit.breaker.from_state"
BREAKER_TO_STATE: Final = "healkit.breaker.to_state"
BREAKER_REASON: Final = "healkit.breaker.reason"
STATE_OWNER: Final = "healkit.state.owner"
STATE_REASON: Final = "healkit.state.reason"
ABANDONED: Final = "healkit.abandoned"
HEDGE: Final = "healkit.hedge"
HEDGE_CANCELLED: Final = "healkit.hedge.cancelled"
HEDGE_WON: Final = "healkit.hedge.won"
CAUSE: Final = "healkit.cause"
CONNECTION_REUSED: Final = "healkit.connection.reused"
DURATION: Final = "healkit.duration"

EVENT_DNS: Final = "healkit.dns_lookup"
EVENT_CONNECT: Final = "healkit.connection_created"
EVENT_QUEUED: Final = "healkit.connection_queued"

# -- instruments -----------------------------------------------------------------------

DURATION_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
"""The explicit bucket boundaries the HTTP semantic conventions advise for durations (s)."""

METRIC_REQUEST_DURATION: Final = "http.client.request.duration"
METRIC_CALL_DURATION: Final = "healkit.call.duration"
METRIC_ATTEMPTS: Final = "healkit.attempts"
METRIC_RETRIES: Final = "healkit.retries"
METRIC_HEDGES: Final = "healkit.hedges"
METRIC_FALLBACKS: Final = "healkit.fallbacks"
METRIC_DEGRADED: Final = "healkit.degraded"
METRIC_BREAKER_TRANSITIONS: Final = "healkit.breaker.transitions"
METRIC_BREAKER_STATE: Final = "healkit.breaker.state"
METRIC_BREAKER_REFUSALS: Final = "healkit.breaker.refusals"
METRIC_STATE_EVICTIONS: Final = "healkit.state.evictions"
METRIC_ETCD_CONNECTED: Final = "healkit.etcd.connected"
METRIC_ETCD_OUTAGES: Final = "healkit.etcd.outages"
METRIC_CONFIG_VERSION: Final = "healkit.config.version"
METRIC_DNS_DURATION: Final = "dns.lookup.duration"
METRIC_CONNECT_DURATION: Final = "healkit.connection.create.duration"
METRIC_QUEUE_DURATION: Final = "healkit.connection.queue.duration"
METRIC_CONNECTIONS: Final = "healkit.connection.acquired"

FALLBACK_SPAN: Final = "healkit.fallback"
DEGRADED_SPAN: Final = "healkit.degraded"
