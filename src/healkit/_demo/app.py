"""``healkit demo``: live traffic through healkit while a local upstream misbehaves.

Nothing to set up: the demo starts two :class:`healkit.testing.FaultServer`
on loopback, a primary and a fallback, configures a :class:`healkit.Client`
(with every installed plugin) for them as service ``demo`` (the fallback as its
fallback group, with health probes: :data:`ROUTING`), and runs ``concurrency``
callers that each loop on ``await client.get("/api", service="demo")`` until
the time is up. Meanwhile the upstreams play a script of :data:`SCENES`:
healthy, latency spikes, 503 bursts, a 503 storm (failover to the fallback),
healed (probes switch traffic back), an outage, a total outage (degraded
responses), recovery. The terminal shows the traffic live with rich, where it
goes now included; the end is a summary (a table, or one JSON object with
``--json``) that counts failovers, switch-backs and degraded responses.

The plugins found installed get short settings fit for a demo that lasts
seconds (:data:`TIMEOUTS`, :data:`BREAKER`, :data:`RETRY`); the others keep
their defaults. During the outage the operator changes the policy live (a
degraded response is added). By default the policy is a document in Python,
changed with ``runtime.apply``; with ``etcd`` endpoints it lives in etcd
(namespace :data:`ETCD_NAMESPACE`, removed at the end) and the change is one
etcd write that the client applies through its watch.

Every call ends as a response (counted by ``response.outcome.path`` and status)
or as a :class:`healkit.HealkitError` (counted by type). Anything else is
*lost*, which is a bug in healkit: the demo shows it and exits with status 1.
At the end the demo stops issuing calls and awaits those in flight, so no call
is cut short. Ctrl-C ends it early the same way (exit status 130); a second
Ctrl-C cancels the calls still in flight (reported as ``cancelled``).

With the tls plugin (healkit-tls) installed, the upstream speaks HTTPS and
requires a client certificate: the demo makes a CA, a server certificate and two
client certificates (A and B) with ``cryptography`` in a temporary directory
(removed at the end) and gives the service a ``tls`` section pointing at the
files. In the scene "certificate rotation" the client certificate files are
replaced, A by B, in one atomic rename, while the callers keep calling; the
upstream records which certificate each request's connection presented, and the
summary shows the rotation, the certificates presented and the failures during
the rotation (none). Without the plugin the upstream is plain HTTP, and the demo
says so.

With ``trace`` (``healkit demo --trace``; needs healkit-tracing and the
OpenTelemetry SDK), the tracing plugin gets SDK providers with an in-memory span
exporter and metric reader, each call runs in a span of the demo's own, and the
end adds a trace summary: spans counted by name, path and ``error.type``, the
attempt spans of one retried call, and the ``http.client.request.duration``
percentiles from the metrics.

Scenes are a table: a later scene (a fallback upstream, a switch-back) is one
more :class:`Scene` row, and :func:`run_demo` accepts another table.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import ipaddress
import json
import math
import ssl
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO, final

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from healkit._cli.entry_logs import routed_logs
from healkit._client import Client
from healkit._errors import CircuitOpenError, HealkitError, OutcomeUnavailableError
from healkit._outcome import AttemptRecord
from healkit._plugins import create_plugin_manager, describe_plugins
from healkit._runtime import Runtime, config_sections
from healkit.etcd._client import EtcdClient
from healkit.etcd._source import DEFAULT_PREFIX, EtcdSource
from healkit.testing import Fault, FaultServer

if TYPE_CHECKING:  # the plugin and SDK packages are imported only when a run needs them
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Tracer

    from healkit_tracing import TracingPlugin

__all__ = ["SCENES", "DemoError", "Scene", "run_demo"]

SERVICE: Final = "demo"
"""The service name the demo's client calls."""
PATH: Final = "/api"
"""The upstream path every call requests."""
TIMEOUTS: Final[Mapping[str, float]] = {
    "connect": 0.5,
    "read": 0.8,
    "attempt": 1.0,
    "deadline": 2.0,
}
"""The ``timeout`` section used when the timeout plugin is installed.

``read`` < ``attempt`` so that a stalled response is a ``ReadTimeout`` and a
body that trickles in (each gap shorter than ``read``) an ``AttemptTimeout``.
"""
BREAKER: Final[Mapping[str, Any]] = {
    "window_size": 40,
    "open_duration": 0.5,
    "open_duration_max": 1.0,
}
"""The ``breaker`` section used when the breaker plugin is installed.

A short window and short open durations, so that a breaker tripped by the 503
storm is seen refusing calls, probing and closing within a demo of a few
seconds; the other settings are the plugin's defaults (it trips when half of
the window failed, or on 10 failures in a row).
"""
RETRY: Final[Mapping[str, Any]] = {
    "retry_on": ["connect", "connection_lost", "timeout", "status", "call_error"],
}
"""The ``retry`` section used when the retry and breaker plugins are both installed.

``circuit_open`` is left out: the demo's callers fail fast on an open breaker
instead of waiting for it to admit a probe (the retry plugin's default), so the
speed of a refusal shows.
"""
HEALTH_PATH: Final = "/health"
"""The path the health probes request on each upstream."""
ROUTING: Final[Mapping[str, Any]] = {
    "eject_time": 1.0,
    "eject_time_max": 2.0,
    "probe": {
        "path": HEALTH_PATH,
        "interval": 0.2,
        "healthy_threshold": 3,
        "unhealthy_threshold": 2,
    },
}
"""The ``routing`` section (next to the fallback group) when the demo runs a fallback upstream.

Short ejections and probes every 0.2 s, so that failover and switch-back
happen within a scene of a few seconds: 2 failed probes take an upstream down,
3 good ones in a row bring it back (the hysteresis against flapping)."""
ROUTING_LOG_EVENTS: Final = frozenset(
    {"healkit.endpoint_ejected", "healkit.endpoint_down", "healkit.endpoint_returned"}
)
"""The router's log events: each may move the traffic to another group."""
ERROR_PAUSE: Final = 0.01
"""Seconds a caller pauses after an error or a degraded response before its
next call, as a client loop would: a refusal by an open breaker (answered by
the degraded template or not) takes microseconds, and callers that never wait
would keep the event loop from everything else."""
BREAKER_LOG_EVENT: Final = "healkit.breaker_transition"
"""The event the breaker plugin logs for each transition."""
CONFIG_LOG_EVENT: Final = "healkit.config_applied"
ETCD_NAMESPACE: Final = "healkit-demo"
"""The etcd namespace of ``healkit demo --etcd``; its key is deleted at the end."""
ETCD_KEY: Final = f"{DEFAULT_PREFIX}{ETCD_NAMESPACE}/services/{SERVICE}"

EXIT_OK: Final = 0
EXIT_LOST: Final = 1
EXIT_INTERRUPTED: Final = 130

TLS_RELOAD_INTERVAL: Final = 0.1
"""Seconds between two reads of the client certificate files by the tls plugin.

Its default is 10 s; in a demo of seconds the rotation must be picked up at once.
"""
CERTIFICATE_LIFETIME: Final = dt.timedelta(days=1)
"""How long the demo's certificates are valid (they are deleted at the end anyway)."""
CA_SUBJECT: Final = "healkit demo CA"
CLIENT_CERTIFICATES: Final = ("A", "B")
"""The client certificates made for the demo, in the order a rotation installs them."""
TLS_ROTATED_EVENT: Final = "healkit.tls_rotated"
TLS_REJECTED_EVENT: Final = "healkit.tls_material_rejected"

CALL_SPAN: Final = "healkit demo call"
"""With ``trace``: the span each call of the demo runs in (the attempt spans are its children)."""
CALL_ATTEMPTS: Final = "healkit_demo.attempts"
CALL_OUTCOME: Final = "healkit_demo.outcome"
DURATION_METRIC: Final = "http.client.request.duration"

REFRESH_PER_SECOND: Final = 4
WINDOW: Final = 1.0
"""Seconds of recent traffic behind the live rates and percentiles."""
LIVE_EVENTS: Final = 8
LABEL_WIDTH: Final = 22
NUMBER_WIDTH: Final = 9
MAX_EVENTS: Final = 200
SCRIPT_LENGTH: Final = 4096
"""Faults scripted at a time; the script is renewed when half of it is used."""
LOST_EXAMPLES: Final = 5
QUIET_LOG_EVENTS: Final = frozenset(
    {
        "healkit.attempt_failed",
        "healkit.call_failed",
        "healkit.retry_scheduled",
        "healkit.fallback_used",
        "healkit.degraded_used",
    }
)
"""Per-call log events: counted, not shown. Other healkit log events are notable."""
FRACTION_TOLERANCE: Final = 1e-6


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Scene:
    """One phase of the demo: what the upstream does, and for how long.

    Attributes:
        name: a short name, shown live and used as a key of the summary.
        fraction: the share of the demo's duration; a table's fractions sum to 1.
        faults: what the upstream answers, cycled request by request.
        description: one line shown while the scene plays.
        core_faults: what to answer instead when no plugin sets time limits
            (the core's built-in limits are long: a hang would stall callers for
            tens of seconds), or ``None`` to use ``faults`` in both cases.
        core_description: the description that goes with ``core_faults``.
        policy: service sections the operator adds to the demo service's
            document when the scene starts (a live policy change, through
            etcd with ``--etcd``); they stay for the following scenes.
        rotate_client_certificate: halfway through the scene, replace the
            client certificate files with the next certificate (A by B, then
            B by A...) in one atomic rename. Only with the tls plugin installed;
            without it the scene plays its faults over plain HTTP.
        down: the upstream's health endpoint fails too (the scene's first
            fault), so that health probes take it down; otherwise it answers 200.
        fallback: what the fallback upstream answers (every path, its health
            endpoint included) during the scene. A table gives it in every
            scene (the demo then runs a fallback upstream, the service's
            fallback group) or in none (a single upstream).

    """

    name: str
    fraction: float
    faults: tuple[Fault, ...]
    description: str
    core_faults: tuple[Fault, ...] | None = None
    core_description: str | None = None
    policy: Mapping[str, Any] | None = None
    rotate_client_certificate: bool = False
    down: bool = False
    fallback: Fault | None = None

    def __post_init__(self) -> None:
        """Reject a scene that cannot be played."""
        if not self.name:
            raise ValueError("a scene needs a name")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"scene {self.name!r}: fraction must be in (0, 1]")
        if not self.faults or self.core_faults == ():
            raise ValueError(f"scene {self.name!r}: needs at least one fault")

    def play(self, *, timeouts: bool) -> tuple[tuple[Fault, ...], str]:
        """Return the faults and the description, with or without short time limits."""
        if timeouts or self.core_faults is None:
            return self.faults, self.description
        return self.core_faults, self.core_description or self.description


_HEALTHY: Final = (
    Fault.ok(latency=0.002),
    Fault.ok(latency=0.004),
    Fault.ok(latency=0.003),
    Fault.ok(latency=0.008),
    Fault.ok(latency=0.005),
)
_STALL: Final = Fault.latency(1.5)
_TRICKLE: Final = Fault.slow_body(6, 0.25, chunk=b"x" * 256)
_UNAVAILABLE: Final = Fault.status(
    503, body=b"upstream overloaded", headers={"Retry-After": "1"}, latency=0.001
)
_FAILING: Final = Fault.status(503, body=b"upstream failing", latency=0.001)
_OK: Final = Fault.ok()

DEGRADED_TEMPLATE: Final[Mapping[str, Any]] = {
    "status": 503,
    "headers": {"Retry-After": "${retry_after}"},
    "json": {"error": "the service is degraded", "service": "${service}", "cause": "${error_type}"},
}
"""The degraded response the operator adds during the outage."""

_RESETS: Final = Fault.reset()

SCENES: Final[tuple[Scene, ...]] = (
    Scene(
        name="healthy",
        fraction=0.12,
        faults=_HEALTHY,
        description="the primary answers 200 in 2-8 ms",
        fallback=_OK,
    ),
    Scene(
        name="latency spikes",
        fraction=0.12,
        faults=(*(_HEALTHY * 3)[:9], _STALL, *(_HEALTHY * 2)[:9], _TRICKLE),
        description="1 response in 10 stalls 1.5 s, 1 in 20 trickles its body over 1.5 s",
        fallback=_OK,
    ),
    Scene(
        name="503 burst",
        fraction=0.08,
        faults=(*(_UNAVAILABLE,) * 3, *_HEALTHY, *_HEALTHY[:2]),
        description="3 responses in 10 are 503 Service Unavailable (Retry-After: 1)",
        fallback=_OK,
    ),
    Scene(
        name="503 storm",
        fraction=0.12,
        faults=(_FAILING,),
        description=(
            "the primary answers 503 to everything, its health check too: it is ejected,"
            " probed down, and traffic fails over to the fallback"
        ),
        down=True,
        fallback=_OK,
    ),
    Scene(
        name="healed",
        fraction=0.10,
        faults=_HEALTHY,
        description="the primary answers again: good probes switch traffic back to it",
        fallback=_OK,
    ),
    Scene(
        name="outage",
        fraction=0.12,
        faults=(Fault.blackhole(),),
        description=(
            "the primary hangs: traffic fails over to the fallback;"
            " the operator adds a degraded response"
        ),
        core_faults=(_RESETS,),
        core_description=(
            "the primary resets every connection (no timeout plugin: no hang): traffic"
            " fails over to the fallback; the operator adds a degraded response"
        ),
        policy={"degraded": {"template": DEGRADED_TEMPLATE}},
        down=True,
        fallback=_OK,
    ),
    Scene(
        name="total outage",
        fraction=0.10,
        faults=(_RESETS,),
        description="the primary and the fallback reset every connection: degraded responses",
        down=True,
        fallback=_RESETS,
    ),
    Scene(
        name="recovery",
        fraction=0.14,
        faults=_HEALTHY,
        description="both are healthy again: probes switch traffic back to the primary",
        fallback=_OK,
    ),
    Scene(
        name="certificate rotation",
        fraction=0.10,
        faults=_HEALTHY,
        description=(
            "halfway through, the client certificate files are replaced A -> B in one atomic"
            " rename: new connections present B, no call fails"
        ),
        rotate_client_certificate=True,
        fallback=_OK,
    ),
)
"""The default script, played in order."""


class DemoError(Exception):
    """The demo cannot run as asked: an option needs a package that is missing or blocked."""


def run_demo(  # noqa: PLR0913 - keyword-only options of the command
    *,
    duration: float,
    concurrency: int,
    as_json: bool,
    out: TextIO,
    scenes: Sequence[Scene] = SCENES,
    etcd: Sequence[str] = (),
    trace: bool = False,
) -> int:
    """Run the demo and return the exit status (the ``healkit demo`` command).

    Args:
        duration: seconds to run; the scenes share it by their fractions.
        concurrency: how many callers loop concurrently.
        as_json: show nothing live; write only the summary, as one JSON object.
        out: where to write. A terminal gets the live view; anything else a
            line per scene change and the summary table.
        scenes: the script (by default :data:`SCENES`).
        etcd: etcd endpoints: keep the demo's policy in etcd, and change it
            there (empty: the embedded default, no etcd).
        trace: trace the run with the OpenTelemetry SDK (in memory) and add a
            trace summary at the end (needs healkit-tracing and the SDK).

    Returns:
        0, or 1 if any call was lost (ended other than in a response or a
        HealkitError), or 130 if interrupted with Ctrl-C.

    Raises:
        DemoError: ``trace`` without healkit-tracing or the OpenTelemetry SDK
            (or with the tracing plugin blocked); nothing was run.
        PluginError: an installed plugin failed to load.
        ValueError: an invalid duration, concurrency or scene table.

    """
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be a finite number of seconds > 0, got {duration!r}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if not scenes or not math.isclose(
        sum(s.fraction for s in scenes), 1.0, abs_tol=FRACTION_TOLERANCE
    ):
        raise ValueError("the scenes' fractions must sum to 1")
    if len({scene.fallback is None for scene in scenes}) > 1:
        raise ValueError("give the fallback upstream's faults in every scene or in none")
    demo = _Demo(
        duration=duration, concurrency=concurrency, as_json=as_json, out=out, etcd=tuple(etcd)
    )
    demo.prepare(tuple(scenes), trace=trace)
    try:
        with routed_logs(demo.on_log):
            asyncio.run(demo.run())
    except KeyboardInterrupt:  # a second Ctrl-C: asyncio.run cancelled the calls in flight
        demo.interrupted = True
    demo.report()
    if demo.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_LOST if demo.total.lost else EXIT_OK


# -- bookkeeping -----------------------------------------------------------------


@final
@dataclass(slots=True)
class _Tally:
    """Counts and latencies of a set of calls (all of them, or one scene's)."""

    requests: int = 0
    lost: int = 0
    retries: int = 0
    rejected_by_breaker: int = 0
    by_path: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    _sorted: list[float] = field(default_factory=list)
    _pending: list[float] = field(default_factory=list)

    def add(self, latency: float, attempts: Sequence[AttemptRecord]) -> None:
        """Count one finished call and its attempts (its outcome is counted by the caller)."""
        self.requests += 1
        self._pending.append(latency)
        if attempts:
            self.retries += len(attempts) - 1
            self.rejected_by_breaker += sum(
                attempt.error == CircuitOpenError.__name__ for attempt in attempts
            )

    def latencies(self) -> list[float]:
        """Every latency recorded, sorted (kept sorted between calls: cheap to repeat)."""
        if self._pending:
            self._sorted.extend(self._pending)
            self._pending.clear()
            self._sorted.sort()  # timsort merges the sorted run with the new tail
        return self._sorted

    def as_dict(self) -> dict[str, Any]:
        """Return the tally as JSON-ready values."""
        ordered = self.latencies()
        return {
            "requests": self.requests,
            "lost": self.lost,
            "retries": self.retries,
            "rejected_by_breaker": self.rejected_by_breaker,
            "by_path": dict(sorted(self.by_path.items())),
            "errors_by_type": dict(sorted(self.errors.items())),
            "statuses": dict(sorted(self.statuses.items())),
            "p50_ms": _ms(_percentile(ordered, 0.50)),
            "p99_ms": _ms(_percentile(ordered, 0.99)),
        }


@final
@dataclass(slots=True)
class _TrafficWatch:
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
@dataclass(frozen=True, slots=True)
class _Recent:
    """One finished call, for the rates and percentiles of the last second."""

    ended: float
    latency: float
    label: str
    status: str | None


@final
@dataclass(frozen=True, slots=True)
class _Event:
    """A notable moment: a scene change, the first error of a type, a log event."""

    at: float
    text: str
    style: str = ""


def _percentile(ordered: Sequence[float], q: float) -> float | None:
    """Return the nearest-rank ``q`` percentile of sorted values (``None`` if empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(round(q * len(ordered), 9)))  # round: 0.07 * 100 is 7.000000000000001
    return ordered[rank - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 1000 else f"{seconds:.2f} s"


def _failures(tally: _Tally) -> int:
    """Count the calls of a tally that did not end in a 2xx response."""
    other = sum(n for code, n in tally.statuses.items() if not code.startswith("2"))
    return tally.lost + sum(tally.errors.values()) + other


# -- TLS: certificates made on the fly, and what the upstream saw -------------------


@final
class _Pki:
    """The demo's certificates, made with ``cryptography`` in ``directory``.

    A CA; a server certificate for ``127.0.0.1`` signed by it; client
    certificates A and B signed by it. The client material is laid out as a
    Kubernetes Secret volume is: ``client/current`` is a symlink to a directory
    holding ``cert.pem`` and ``key.pem``, and :meth:`install` writes a new
    directory and swaps the link with one ``rename(2)``, so that the plugin's
    watcher reads either the old certificate and key or the new ones, never a
    mix.
    """

    def __init__(self, directory: Path) -> None:
        """Make the CA and the certificates, and install client certificate A."""
        # Imported here: cryptography comes with healkit-tls, not with the core.
        from cryptography import x509  # noqa: PLC0415
        from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

        self.directory = directory
        now = dt.datetime.now(dt.UTC)
        pem = serialization.Encoding.PEM

        def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
            return key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )

        def name(common_name: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = name(CA_SUBJECT)
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())

        def issue(
            subject: x509.Name,
            key: ec.EllipticCurvePrivateKey,
            *,
            ca: bool = False,
            usage: x509.ObjectIdentifier | None = None,
            ip: str | None = None,
        ) -> x509.Certificate:
            builder = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + CERTIFICATE_LIFETIME)
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
            )
            if ca:
                builder = builder.add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=True,
                        crl_sign=True,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
            else:
                builder = builder.add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                    critical=False,
                )
            if usage is not None:
                builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            if ip is not None:
                address = x509.IPAddress(ipaddress.ip_address(ip))
                builder = builder.add_extension(
                    x509.SubjectAlternativeName([address]), critical=False
                )
            return builder.sign(ca_key, hashes.SHA256())

        ca_cert = issue(ca_name, ca_key, ca=True)
        self.ca_subject = ca_cert.subject.rfc4514_string()
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(ca_cert.public_bytes(pem))
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = issue(
            name("127.0.0.1"), server_key, usage=ExtendedKeyUsageOID.SERVER_AUTH, ip="127.0.0.1"
        )
        self.server_cert_file = directory / "server.pem"
        self.server_key_file = directory / "server.key"
        self.server_cert_file.write_bytes(server_cert.public_bytes(pem))
        self.server_key_file.write_bytes(key_pem(server_key))
        self.clients: dict[str, tuple[bytes, bytes]] = {}
        """Client name -> (certificate PEM, key PEM)."""
        self.subjects: dict[str, str] = {}
        """Client name -> its certificate's subject (RFC 4514, as the tls plugin logs it)."""
        self._by_der: dict[bytes, str] = {}
        for label in CLIENT_CERTIFICATES:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = issue(
                name(f"healkit demo client {label}"),
                key,
                usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            )
            self.clients[label] = (cert.public_bytes(pem), key_pem(key))
            self.subjects[label] = cert.subject.rfc4514_string()
            self._by_der[cert.public_bytes(serialization.Encoding.DER)] = label
        self.client_dir = directory / "client"
        self.client_dir.mkdir()
        self.current = self.client_dir / "current"
        self.installed = ""
        self._generation = 0
        self.install(CLIENT_CERTIFICATES[0])

    def install(self, label: str) -> None:
        """Make client certificate ``label`` the current one, in one atomic rename."""
        cert, key = self.clients[label]
        self._generation += 1
        generation = self.client_dir / f"gen-{self._generation}"
        generation.mkdir()
        (generation / "key.pem").write_bytes(key)
        (generation / "cert.pem").write_bytes(cert)
        link = self.client_dir / "current.new"
        link.symlink_to(generation.name)
        link.replace(self.current)  # rename(2): the watcher sees the old pair or the new one
        self.installed = label

    def rotate(self) -> tuple[str, str]:
        """Install the next client certificate; return the labels (was, now)."""
        was = self.installed
        index = CLIENT_CERTIFICATES.index(was)
        self.install(CLIENT_CERTIFICATES[(index + 1) % len(CLIENT_CERTIFICATES)])
        return was, self.installed

    def label(self, der: bytes | None) -> str:
        """Name the client certificate a connection presented (``none``, or ``unknown``)."""
        if der is None:
            return "none"
        return self._by_der.get(der, "unknown")

    def section(self) -> dict[str, Any]:
        """Return the demo service's ``tls`` section: the CA, the client material, a fast watch."""
        return {
            "ca_file": str(self.ca_file),
            "cert_file": str(self.current / "cert.pem"),
            "key_file": str(self.current / "key.pem"),
            "reload_interval": TLS_RELOAD_INTERVAL,
            "expiry_warning_days": 0,  # the certificates live a day: no warning noise
        }

    def server_context(self) -> ssl.SSLContext:
        """Return the upstream's context: its certificate, client certificates required."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert_file, self.server_key_file)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=self.ca_file)
        return context


@final
@dataclass(slots=True)
class _TlsTally:
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

    def __post_init__(self) -> None:
        """One counter of presented certificates per scene."""
        self.by_scene = [Counter() for _ in range(self.scenes)]


# -- tracing: the OpenTelemetry SDK, in memory -------------------------------------


@final
class _Telemetry:
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
            value = _histogram_quantile(bounds, buckets, q, low, high)
            duration[f"{name}_ms"] = _ms(value)
        duration["min_ms"] = _ms(low) if count else None
        duration["max_ms"] = _ms(high) if count else None
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


def _histogram_quantile(
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


# -- the demo --------------------------------------------------------------------


@final
class _Demo:
    """State and tasks of one run: the upstream, the callers, the view."""

    def __init__(
        self,
        *,
        duration: float,
        concurrency: int,
        as_json: bool,
        out: TextIO,
        etcd: tuple[str, ...],
    ) -> None:
        self.duration = duration
        self.etcd_endpoints = etcd
        self.etcd: EtcdClient | None = None
        self.runtime: Runtime | None = None
        self.policy: dict[str, Any] = {}
        self.config_changes: list[dict[str, Any]] = []
        self.concurrency = concurrency
        self.as_json = as_json
        self.out = out
        self.console = Console(file=out, highlight=False)
        self.live_view = not as_json and self.console.is_terminal
        self.total = _Tally()
        self.scenes: tuple[Scene, ...] = ()
        self.by_scene: list[_Tally] = []
        self.scene_index = 0
        self.descriptions: list[str] = []
        self.recent: deque[_Recent] = deque()
        self.events: list[_Event] = []
        self.log_events: Counter[str] = Counter()
        self.lost_examples: list[str] = []
        self.plugins: list[str] = []
        self.sections: frozenset[str] = frozenset()
        self.breaker_transitions: list[dict[str, Any]] = []
        self.upstream = ""
        self.fallback_upstream = ""
        self._fallback: FaultServer | None = None
        self.traffic = _TrafficWatch()
        self.interrupted = False
        self.in_flight = 0
        self.started = time.monotonic()
        self.elapsed = 0.0
        self._stopping = False
        self._live: Live | None = None
        self.pki: _Pki | None = None
        self.tls: _TlsTally | None = None
        self.telemetry: _Telemetry | None = None
        self._scene_starts: list[float] = []
        self._rotations: deque[float] = deque()
        """When (``time.monotonic()``) the client certificate is to be rotated, in order."""
        self._harvested = 0
        """How many of the upstream's recorded requests were counted since its last reset."""

    # -- the run ---------------------------------------------------------------

    def prepare(self, scenes: tuple[Scene, ...], *, trace: bool) -> None:
        """Find the installed plugins and set up what the options need, before the run.

        Raises:
            DemoError: ``trace`` cannot be honoured (see :func:`run_demo`).

        """
        self.scenes = scenes
        self.by_scene = [_Tally() for _ in scenes]
        if trace:
            self.telemetry = _Telemetry()
        sections = config_sections(create_plugin_manager())
        self.sections = frozenset(section.name for section in sections)
        if self.telemetry is not None and "tracing" not in self.sections:
            self.telemetry.shutdown()
            raise DemoError("--trace: the tracing plugin is blocked (HEALKIT_BLOCK_PLUGINS)")
        if self.tls_installed:
            self.tls = _TlsTally(len(scenes))
        self.descriptions = [self._describe(scene) for scene in scenes]

    def _describe(self, scene: Scene) -> str:
        description = scene.play(timeouts=self.timeouts)[1]
        if scene.rotate_client_certificate and not self.tls_installed:
            return (
                "the upstream answers 200 (healkit-tls is not installed: plain HTTP,"
                " no client certificate to rotate)"
            )
        return description

    async def run(self) -> None:
        """Start the upstream and the client, play the scenes, await every call."""
        with contextlib.ExitStack() as files:
            context = None
            if self.tls_installed:
                directory = files.enter_context(tempfile.TemporaryDirectory(prefix="healkit-demo-"))
                self.pki = _Pki(Path(directory))
                context = self.pki.server_context()
            try:
                await self._serve(context)
            finally:
                if self.telemetry is not None:
                    self.telemetry.close()

    @property
    def has_fallback(self) -> bool:
        """Whether the scenes give a fallback upstream (the service's fallback group)."""
        return any(scene.fallback is not None for scene in self.scenes)

    async def _serve(self, context: ssl.SSLContext | None) -> None:
        async with FaultServer(ssl_context=context) as server, contextlib.AsyncExitStack() as stack:
            self.upstream = server.url
            if self.has_fallback:
                self._fallback = await stack.enter_async_context(FaultServer(ssl_context=context))
                self.fallback_upstream = self._fallback.url
            if self.pki is None:
                self._event("healkit-tls is not installed: the upstream speaks plain HTTP")
            else:
                self._event(
                    "upstream over HTTPS, client certificate required; certificates made in"
                    f" {self.pki.directory} (removed at the end)"
                )
            # A plugin passed explicitly takes the place of the entry-point one of its name.
            plugins = [] if self.telemetry is None else [self.telemetry.plugin]
            if self.etcd_endpoints:
                self.etcd = await stack.enter_async_context(EtcdClient(self.etcd_endpoints))
                await self.etcd.put(ETCD_KEY, self._service_json())
                stack.push_async_callback(self.etcd.delete, ETCD_KEY)
                source = EtcdSource(self.etcd, namespace=ETCD_NAMESPACE)
                # Every installed plugin: the demo blocks none.
                runtime = Runtime(config=source, plugins=plugins)
            else:
                runtime = Runtime(config={"services": {SERVICE: self._service()}}, plugins=plugins)
            self.runtime = runtime
            self.plugins = [info.name for info in describe_plugins(runtime.plugin_manager)]
            async with Client(runtime=runtime) as client:
                with self._live_view():
                    await self._play(server, client)

    @property
    def timeouts(self) -> bool:
        """Whether a plugin (the timeout plugin) takes the demo's short time limits."""
        return "timeout" in self.sections

    @property
    def tls_installed(self) -> bool:
        """Whether the tls plugin is installed (and not blocked): then the upstream is HTTPS."""
        return "tls" in self.sections

    def _settings(self) -> dict[str, dict[str, Any]]:
        """Return the plugin sections of the demo's service, for the plugins installed."""
        settings: dict[str, dict[str, Any]] = {}
        if self.timeouts:
            settings["timeout"] = dict(TIMEOUTS)
        if "breaker" in self.sections:
            settings["breaker"] = dict(BREAKER)
            if "retry" in self.sections:
                settings["retry"] = dict(RETRY)
        if self.pki is not None:
            settings["tls"] = self.pki.section()
        return settings

    def _service(self) -> dict[str, Any]:
        """Return the demo service's document: its endpoints, plugin settings and policy."""
        service: dict[str, Any] = {"endpoints": [self.upstream]}
        if self.fallback_upstream:
            service["routing"] = {"fallback_groups": [[self.fallback_upstream]], **ROUTING}
        return {**service, **self._settings(), **self.policy}

    def _service_json(self) -> bytes:
        return json.dumps(self._service()).encode()

    async def _change_policy(self, scene: Scene) -> None:
        """Add the scene's sections to the demo service's document, live."""
        if not scene.policy:
            return
        self.policy.update(scene.policy)
        sections = ", ".join(sorted(scene.policy))
        if self.etcd is not None:
            result = await self.etcd.put(ETCD_KEY, self._service_json())
            self._event(
                f"operator: {sections} written to etcd ({ETCD_KEY}, revision {result.revision})",
                "bold blue",
            )
        elif self.runtime is not None:
            self._event(f"operator: {sections} added with runtime.apply", "bold blue")
            self.runtime.apply({"services": {SERVICE: self._service()}}, origin="demo operator")

    async def _play(self, server: FaultServer, client: Client) -> None:
        self.started = time.monotonic()
        boundaries = self._boundaries()
        self._scene_starts = [self.started, *(self.started + b for b in boundaries[:-1])]
        if self.pki is not None:
            # Halfway through each rotation scene.
            self._rotations.extend(
                start + scene.fraction * self.duration / 2
                for start, scene in zip(self._scene_starts, self.scenes, strict=True)
                if scene.rotate_client_certificate
            )
        self._start_scene(server, 0)
        callers = [
            asyncio.create_task(self._caller(client), name=f"healkit-demo caller {n}")
            for n in range(self.concurrency)
        ]
        try:
            await self._direct(server)
        except asyncio.CancelledError:
            self._interrupt()
        finally:
            self._stopping = True
        # Stop issuing calls, but let every call in flight end as it will.
        everyone = asyncio.gather(*callers)
        # Cancelled by asyncio.run after a second Ctrl-C: nobody awaits it any more.
        everyone.add_done_callback(_retrieve)
        while not everyone.done():
            try:
                await asyncio.shield(everyone)
            except asyncio.CancelledError:
                self._interrupt()
        self.elapsed = time.monotonic() - self.started
        self._harvest(server)
        self._refresh()

    def _boundaries(self) -> list[float]:
        """Seconds from the start at which each scene ends."""
        return list(_cumulative([scene.fraction * self.duration for scene in self.scenes]))

    def _interrupt(self) -> None:
        """Take the cancellation of Ctrl-C as the end of the demo, or re-raise it.

        On Ctrl-C, ``asyncio.run`` cancels the main task once (a second Ctrl-C
        raises KeyboardInterrupt instead): the demo then ends as at its
        deadline. Any other cancellation propagates.
        """
        task = asyncio.current_task()
        if self.interrupted or task is None or task.uncancel() > 0:
            raise asyncio.CancelledError
        self.interrupted = True
        self._event("interrupted: awaiting the calls in flight (Ctrl-C again to cancel them)")

    async def _direct(self, server: FaultServer) -> None:
        """Switch scenes on schedule and refresh the view, until the end."""
        boundaries = self._boundaries()
        end = self.started + self.duration
        tick = 1 / REFRESH_PER_SECOND
        next_tick = self.started + tick
        while (now := time.monotonic()) < end:
            index = self.scene_index
            while index + 1 < len(self.scenes) and now >= self.started + boundaries[index]:
                index += 1
            if index != self.scene_index:
                for following in range(self.scene_index + 1, index + 1):
                    self._start_scene(server, following)
                    await self._change_policy(self.scenes[following])
            elif server.hits(PATH) >= SCRIPT_LENGTH // 2:
                self._script(server, index)
            next_rotation = self._rotate_when_due(server, now)
            if now >= next_tick:
                self._frame()
                next_tick += tick
                if next_tick <= now:  # fell behind: skip the missed frames
                    next_tick = now + tick
            wake = min(next_tick, end, next_rotation)
            if index + 1 < len(self.scenes):
                wake = min(wake, self.started + boundaries[index])
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
        self._stopping = True

    def _rotate_when_due(self, server: FaultServer, now: float) -> float:
        """Rotate the client certificate if its time came; return when the next one is due."""
        if self._rotations and now >= self._rotations[0]:
            self._rotations.popleft()
            self._rotate(server)
        return self._rotations[0] if self._rotations else math.inf

    def _frame(self) -> None:
        """Count spans (with ``trace``), see where traffic goes now, refresh the view."""
        if self.telemetry is not None:
            self.telemetry.drain()
        self._watch_traffic()
        self._refresh()

    def _watch_traffic(self) -> None:
        """Ask the router where the service's traffic goes now; count a failover or switch-back.

        Called on every frame and on every router or breaker event (an
        ejection ending, or an open breaker's time passing, shows on the next frame).
        """
        runtime = self.runtime
        router = None if runtime is None else runtime.plugin_manager.get_plugin("routing")
        status = getattr(router, "status", None)
        if not self.fallback_upstream or not callable(status):
            return
        groups = [(endpoint.group, endpoint.usable) for endpoint in status(SERVICE)]
        group = min((g for g, usable in groups if usable), default=None)
        change = self.traffic.observe(group, time.monotonic() - self.started, self._scene_name())
        if change is not None:
            self._event(change, "bold green" if group == 0 else "bold yellow")

    def _scene_name(self) -> str:
        return self.scenes[self.scene_index].name if self.scenes else ""

    def _start_scene(self, server: FaultServer, index: int) -> None:
        self.scene_index = index
        self._script(server, index)
        scene = self.scenes[index]
        self._event(
            f"scene {index + 1}/{len(self.scenes)} {scene.name}: {self.descriptions[index]}",
            "bold cyan",
        )

    def _script(self, server: FaultServer, index: int) -> None:
        """Script the scene's faults on the upstream, from the start of its cycle.

        The server records every request; resetting it first keeps its memory
        bounded however long the demo runs.
        """
        scene = self.scenes[index]
        faults, _ = scene.play(timeouts=self.timeouts)
        repeat = max(1, SCRIPT_LENGTH // len(faults))
        self._harvest(server)
        server.reset()
        self._harvested = 0
        server.script(PATH, *(faults * repeat), then=faults[0])
        # Every other path, the health endpoint included: down with the scene, or 200.
        server.set_default(faults[0] if scene.down else _OK)
        if self._fallback is not None and scene.fallback is not None:
            self._fallback.reset()
            self._fallback.set_default(scene.fallback)

    def _rotate(self, server: FaultServer) -> None:
        """Replace the client certificate files with the next certificate (A -> B)."""
        if self.pki is None or self.tls is None:
            return
        self._harvest(server)
        was, now = self.pki.rotate()
        self.tls.swaps.append(
            {
                "at_s": round(time.monotonic() - self.started, 3),
                "scene": self.scenes[self.scene_index].name,
                "from": self.pki.subjects[was],
                "to": self.pki.subjects[now],
                "applied_at_s": None,
                "trigger": None,
                "calls_in_flight": None,
            }
        )
        self._event(
            f"operator: client certificate files replaced {was} -> {now} (one atomic rename)",
            "bold blue",
        )

    def _harvest(self, server: FaultServer) -> None:
        """Count the client certificates of the requests the upstream recorded since last time.

        A request counts in the scene during which it arrived, and as "after the
        rotation" if it arrived after the tls plugin applied the last rotation.
        """
        tls, pki = self.tls, self.pki
        if tls is None or pki is None:
            return
        recorded = server.requests[self._harvested :]
        self._harvested += len(recorded)
        for request in recorded:
            subject = pki.subjects.get(label := pki.label(request.peer_certificate), label)
            tls.presented[subject] += 1
            scene = max(bisect.bisect_right(self._scene_starts, request.arrived_at) - 1, 0)
            tls.by_scene[scene][subject] += 1
            if tls.applied_at is not None and request.arrived_at >= tls.applied_at:
                tls.after_rotation[subject] += 1

    async def _caller(self, client: Client) -> None:
        """Call the upstream in a loop until the end; count how every call ended."""
        end = self.started + self.duration
        while not self._stopping and time.monotonic() < end:
            scene = self.by_scene[self.scene_index]
            started = time.monotonic()
            self.in_flight += 1  # stays counted only if cancelled (a second Ctrl-C)
            if self.telemetry is None:
                status, attempts, label = await self._call(client, scene)
            else:
                with self.telemetry.call() as mark:
                    status, attempts, label = await self._call(client, scene)
                    mark(len(attempts), label)
            self.in_flight -= 1
            ended = time.monotonic()
            latency = ended - started
            for tally in (self.total, scene):
                tally.add(latency, attempts)
            if self.live_view:
                self.recent.append(_Recent(ended, latency, label, status))
            if status is None or label == "degraded":
                await asyncio.sleep(ERROR_PAUSE)

    async def _call(
        self, client: Client, scene: _Tally
    ) -> tuple[str | None, Sequence[AttemptRecord], str]:
        """Make one call; count how it ended; return its status, attempts and label."""
        try:
            response = await client.get(PATH, service=SERVICE)
        except HealkitError as error:
            label = self._count_error(scene, type(error).__name__, error.message)
            return None, error.attempts, label
        except Exception as error:  # noqa: BLE001 - a lost call is what the demo exists to catch
            return None, (), self._count_lost(scene, f"{type(error).__name__}: {error}")
        try:
            outcome = response.outcome
        except OutcomeUnavailableError:
            return None, (), self._count_lost(scene, f"response without an outcome: {response!r}")
        status = str(response.status)
        label = self._count_response(scene, outcome.path, status)
        return status, outcome.attempts, label

    def _count_response(self, scene: _Tally, path: str, status: str) -> str:
        if status not in self.total.statuses and not status.startswith("2"):
            self._event(f"first HTTP {status} (a response, path {path})", "yellow")
        if path not in self.total.by_path and path != "primary":
            self._event(f"first response by path {path}", "green")
        for tally in (self.total, scene):
            tally.by_path[path] += 1
            tally.statuses[status] += 1
        return path

    def _count_error(self, scene: _Tally, name: str, message: str) -> str:
        if name not in self.total.errors:
            self._event(f"first {name}: {_one_line(message)}", "red")
        for tally in (self.total, scene):
            tally.errors[name] += 1
        return f"error: {name}"

    def _count_lost(self, scene: _Tally, description: str) -> str:
        for tally in (self.total, scene):
            tally.lost += 1
        if len(self.lost_examples) < LOST_EXAMPLES:
            self.lost_examples.append(description)
            self._event(f"LOST CALL: {_one_line(description)}", "bold red reverse")
        return "lost"

    # -- logs and events -------------------------------------------------------

    def on_log(self, method: str, event: Mapping[str, Any]) -> None:
        """Take an event of healkit's: count it; keep the notable ones."""
        name = str(event.get("event", "?"))
        self.log_events[name] += 1
        if name in QUIET_LOG_EVENTS:
            return
        if name == BREAKER_LOG_EVENT:
            self._breaker_moved(event)
            self._watch_traffic()
            return
        if name in ROUTING_LOG_EVENTS:
            self._watch_traffic()
        if name == CONFIG_LOG_EVENT:
            self._config_applied(event)
            return
        if name == TLS_ROTATED_EVENT:
            self._tls_rotated(event)
            return
        if name == TLS_REJECTED_EVENT and self.tls is not None:
            self.tls.rejected += 1
        details = " ".join(
            f"{key}={value}" for key, value in event.items() if key not in {"event", "timestamp"}
        )
        self._event(f"log {method}: {name} {details}".rstrip(), "magenta")

    def _config_applied(self, event: Mapping[str, Any]) -> None:
        """Record a configuration the runtime applied (the first one, then the live changes)."""
        change = {
            "at_s": round(max(time.monotonic() - self.started, 0.0), 3),
            "version": event.get("version"),
            "origin": str(event.get("origin")),
        }
        self.config_changes.append(change)
        if len(self.config_changes) > 1:
            self._event(
                f"config applied: version {change['version']} from {change['origin']}", "blue"
            )

    def _tls_rotated(self, event: Mapping[str, Any]) -> None:
        """Record material the tls plugin swapped in: the first load, then rotations."""
        subject, trigger = event.get("subject"), event.get("trigger")
        if trigger == "config" or self.tls is None:
            self._event(f"tls: client certificate {subject} loaded ({trigger})", "blue")
            return
        self.tls.rotations += 1
        self.tls.applied_at = now = time.monotonic()
        self.tls.after_rotation.clear()  # counted again from the requests arriving from now
        pending = [swap for swap in self.tls.swaps if swap["applied_at_s"] is None]
        if pending:
            pending[0]["applied_at_s"] = round(now - self.started, 3)
            pending[0]["trigger"] = trigger
            # Attempts prepared before the swap may still arrive with the old certificate.
            pending[0]["calls_in_flight"] = self.in_flight
        self._event(
            f"tls: rotated to {subject} ({trigger}, generation {event.get('generation')});"
            " new connections present it",
            "bold green",
        )

    def _breaker_moved(self, event: Mapping[str, Any]) -> None:
        """Record a breaker transition, and show it as an event."""
        was, now, reason = event.get("from_state"), event.get("to_state"), event.get("reason")
        failures, calls = event.get("failures"), event.get("calls")
        self.breaker_transitions.append(
            {
                "at_s": round(time.monotonic() - self.started, 3),
                "scene": self.scenes[self.scene_index].name,
                "from": was,
                "to": now,
                "reason": reason,
                "failures": failures,
                "calls": calls,
            }
        )
        style = "bold yellow" if now in {"open", "forced_open"} else "green"
        counts = f"; {failures} of {calls} failed" if calls else ""
        self._event(f"breaker {was} -> {now} ({reason}{counts})", style)

    def _event(self, text: str, style: str = "") -> None:
        if len(self.events) >= MAX_EVENTS:
            return
        event = _Event(time.monotonic() - self.started, text, style)
        self.events.append(event)
        if not self.as_json and not self.live_view:
            self.console.print(Text(f"[{event.at:6.2f}s] {text}", style=style), soft_wrap=True)

    # -- the live view ---------------------------------------------------------

    @contextlib.contextmanager
    def _live_view(self) -> Iterator[None]:
        if not self.live_view:
            yield
            return
        with Live(
            self._render(),
            console=self.console,
            auto_refresh=False,  # refreshed from the event loop: no thread reads the counters
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            self._live = live
            try:
                yield
            finally:
                self._live = None

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render(), refresh=True)

    def _window(self) -> tuple[list[_Recent], float]:
        """Return the calls that ended in the last WINDOW seconds, and the span covered."""
        now = time.monotonic()
        while self.recent and self.recent[0].ended < now - WINDOW:
            self.recent.popleft()
        span = min(WINDOW, now - self.started) or WINDOW
        return list(self.recent), span

    def _render(self) -> RenderableType:
        elapsed = self.elapsed or min(time.monotonic() - self.started, self.duration)
        recent, span = self._window()
        body = Table.grid(padding=(0, 4))
        body.add_row(self._traffic(recent, span, elapsed), self._outcomes(recent))
        events = Table.grid(padding=(0, 1))
        events.add_column(justify="right", style="dim")
        events.add_column()
        for event in self.events[-LIVE_EVENTS:]:
            events.add_row(f"{event.at:6.2f}s", Text(event.text, style=event.style))
        return Panel(
            Group(
                self._head(elapsed),
                body,
                Panel(events, title="events", title_align="left", box=box.ROUNDED),
            ),
            title="[bold]healkit demo",
            subtitle="Ctrl-C ends early",
        )

    def _head(self, elapsed: float) -> RenderableType:
        head = Table.grid(padding=(0, 2))
        head.add_column(style="bold")
        head.add_column()
        if self.scenes:
            scene = self.scenes[self.scene_index]
            head.add_row(
                "scene",
                Text.assemble(
                    (f"{self.scene_index + 1}/{len(self.scenes)} {scene.name}", "bold cyan"),
                    "  ",
                    self.descriptions[self.scene_index],
                ),
            )
        progress = Table.grid(padding=(0, 1))
        progress.add_row(
            ProgressBar(total=self.duration, completed=elapsed, width=30),
            f"{elapsed:5.1f} s / {self.duration:g} s",
        )
        head.add_row("time", progress)
        head.add_row("upstream", f"{self.upstream}{PATH}  (service {SERVICE!r})")
        if self.fallback_upstream:
            head.add_row("fallback", f"{self.fallback_upstream}{PATH}  (fallback group)")
            head.add_row("traffic now", self._traffic_now())
        head.add_row("plugins", ", ".join(self.plugins) or "none (core only)")
        return head

    def _traffic_now(self) -> Text:
        group = self.traffic.group
        if group == 0:
            return Text(f"primary {self.upstream}", style="green")
        if group is None:
            return Text("no upstream healthy: degraded responses", style="bold red")
        return Text(f"fallback {self.fallback_upstream}", style="yellow")

    def _traffic(self, recent: Sequence[_Recent], span: float, elapsed: float) -> Table:
        latencies = sorted(call.latency for call in recent)
        overall = self.total.latencies()
        table = _counter_table("traffic", LABEL_WIDTH - 10)
        table.add_row(
            "requests/s",
            f"{len(recent) / span:,.0f}",
            f"{self.total.requests / max(elapsed, 1e-9):,.0f}",
        )
        table.add_row("calls", f"{len(recent):,}", f"{self.total.requests:,}")
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            table.add_row(
                f"latency {name}",
                _fmt_ms(_percentile(latencies, q)),
                _fmt_ms(_percentile(overall, q)),
            )
        lost = Text(str(self.total.lost), style="bold red" if self.total.lost else "green")
        table.add_row("lost", "", lost)
        return table

    def _outcomes(self, recent: Sequence[_Recent]) -> Table:
        table = _counter_table("outcomes", LABEL_WIDTH)
        labels = Counter(call.label for call in recent)
        statuses = Counter(call.status for call in recent)
        for path, count in sorted(self.total.by_path.items()):
            table.add_row(Text(f"path {path}", style="green"), f"{labels[path]:,}", f"{count:,}")
        for name, count in sorted(self.total.errors.items()):
            label = f"error: {name}"
            table.add_row(Text(label, style="red"), f"{labels[label]:,}", f"{count:,}")
        if self.total.lost:
            table.add_row(
                Text("LOST", style="bold red"), f"{labels['lost']:,}", f"{self.total.lost:,}"
            )
        for code, count in sorted(self.total.statuses.items()):
            style = "green" if code.startswith("2") else "yellow"
            table.add_row(Text(f"HTTP {code}", style=style), f"{statuses[code]:,}", f"{count:,}")
        return table

    # -- the end ---------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Return the summary of the run as JSON-ready values."""
        total = self.total.as_dict()
        duration = self.elapsed or time.monotonic() - self.started
        responses = sum(self.total.by_path.values())
        errors = sum(self.total.errors.values())
        return {
            "requests": total["requests"],
            "lost": total["lost"],
            "responses": responses,
            "errors": errors,
            "by_path": total["by_path"],
            "errors_by_type": total["errors_by_type"],
            "statuses": total["statuses"],
            "p50_ms": total["p50_ms"],
            "p99_ms": total["p99_ms"],
            "retries": total["retries"],
            "rejected_by_breaker": total["rejected_by_breaker"],
            "breaker_transitions": self.breaker_transitions,
            "failovers": self.traffic.failovers,
            "switch_backs": self.traffic.switch_backs,
            "degraded": total["by_path"].get("degraded", 0),
            "traffic_changes": self.traffic.changes,
            "upstream": self.upstream,
            "fallback_upstream": self.fallback_upstream or None,
            "config_changes": self.config_changes,
            "etcd": list(self.etcd_endpoints) or None,
            "duration_s": round(duration, 3),
            "requests_per_s": round(self.total.requests / duration, 1) if duration else 0.0,
            "concurrency": self.concurrency,
            "scenes": [scene.name for scene in self.scenes],
            "by_scene": {
                scene.name: tally.as_dict()
                for scene, tally in zip(self.scenes, self.by_scene, strict=True)
            },
            "plugins": self.plugins,
            "timeouts": dict(TIMEOUTS) if self.timeouts else None,
            "settings": self._settings(),
            "log_events": dict(sorted(self.log_events.items())),
            "lost_examples": self.lost_examples,
            "interrupted": self.interrupted,
            "cancelled": self.in_flight,
            "tls": self._tls_summary(),
            "trace": None if self.telemetry is None else self.telemetry.summary(),
        }

    def _tls_summary(self) -> dict[str, Any] | None:
        """Return what the TLS scene did, or ``None`` without the tls plugin."""
        tls, pki = self.tls, self.pki
        if tls is None or pki is None:
            return None
        rotating = [
            tally
            for scene, tally in zip(self.scenes, self.by_scene, strict=True)
            if scene.rotate_client_certificate
        ]
        return {
            "ca": pki.ca_subject,
            "certificates": {label: pki.subjects[label] for label in CLIENT_CERTIFICATES},
            "reload_interval_s": TLS_RELOAD_INTERVAL,
            "rotations": tls.rotations,
            "swaps": tls.swaps,
            "presented": dict(sorted(tls.presented.items())),
            "presented_by_scene": {
                scene.name: dict(sorted(counts.items()))
                for scene, counts in zip(self.scenes, tls.by_scene, strict=True)
            },
            "presented_after_rotation": (
                dict(sorted(tls.after_rotation.items())) if tls.rotations else None
            ),
            "calls_during_rotation": sum(tally.requests for tally in rotating),
            "failures_during_rotation": sum(_failures(tally) for tally in rotating),
            "rejected_material": tls.rejected,
        }

    def report(self) -> None:
        """Write the summary: one JSON object, or a table."""
        summary = self.summary()
        if self.as_json:
            self.out.write(json.dumps(summary) + "\n")
            self.out.flush()
            return
        self.console.print(self._summary_table(summary))

    def _summary_table(self, summary: Mapping[str, Any]) -> RenderableType:
        scenes = Table(
            title=f"healkit demo: {summary['duration_s']:.1f} s, {self.concurrency} callers",
            box=box.SIMPLE_HEAVY,
            padding=(0, 1),
            pad_edge=False,
        )
        for name in ("scene", "calls", "2xx", "non-2xx", "errors", "lost", "p50", "p99"):
            scenes.add_column(name, justify="left" if name == "scene" else "right", no_wrap=True)
        rows = [*zip(self.scenes, self.by_scene, strict=True), (None, self.total)]
        for scene, tally in rows:
            ordered = tally.latencies()
            good = sum(n for code, n in tally.statuses.items() if code.startswith("2"))
            other = sum(tally.statuses.values()) - good
            scenes.add_row(
                Text(scene.name if scene else "total", style="" if scene else "bold"),
                f"{tally.requests:,}",
                f"{good:,}",
                f"{other:,}",
                Text(f"{sum(tally.errors.values()):,}", style="red" if tally.errors else ""),
                Text(str(tally.lost), style="bold red" if tally.lost else "green"),
                _fmt_ms(_percentile(ordered, 0.5)),
                _fmt_ms(_percentile(ordered, 0.99)),
                end_section=scene is self.scenes[-1],
            )

        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="bold")
        facts.add_column()
        facts.add_row("requests/s", f"{summary['requests_per_s']:,}")
        facts.add_row("paths", _counts(summary["by_path"]))
        facts.add_row("errors", _counts(summary["errors_by_type"]))
        facts.add_row("statuses", _counts(summary["statuses"]))
        facts.add_row("retries", f"{summary['retries']:,}")
        if self.fallback_upstream:
            facts.add_row(
                "traffic",
                f"{summary['failovers']} failovers, {summary['switch_backs']} switch-backs,"
                f" {summary['degraded']:,} degraded responses",
            )
        if "breaker" in self.sections:
            moves = Counter(f"{m['from']} -> {m['to']}" for m in self.breaker_transitions)
            facts.add_row("breaker", _counts(dict(moves)))
            facts.add_row("refused by breaker", f"{summary['rejected_by_breaker']:,} attempts")
        facts.add_row("plugins", ", ".join(self.plugins) or "none (core only)")
        facts.add_row("tls", self._tls_facts(summary["tls"]))
        lost = summary["lost"]
        verdict = (
            Text(f"{lost} calls lost: {'; '.join(self.lost_examples)}", style="bold red")
            if lost
            else Text("every call ended in a response or a typed healkit error", style="green")
        )
        facts.add_row("lost", verdict)
        if self.interrupted:
            note = "interrupted with Ctrl-C"
            if self.in_flight:
                note += f"; {self.in_flight} calls in flight were cancelled (not counted)"
            facts.add_row("note", Text(note, style="yellow"))
        if summary["trace"] is not None:
            return Group(scenes, facts, _trace_table(summary["trace"]))
        return Group(scenes, facts)

    def _tls_facts(self, tls: Mapping[str, Any] | None) -> Text:
        if tls is None:
            return Text("healkit-tls is not installed: plain HTTP, no certificate rotation")
        names = {subject: label for label, subject in tls["certificates"].items()}

        def presented(counts: Mapping[str, int]) -> str:
            return _counts({names.get(subject, subject): n for subject, n in counts.items()})

        parts = [f"mutual TLS; presented {presented(tls['presented'])}"]
        for swap in tls["swaps"]:
            applied = (
                f"applied at {swap['applied_at_s']:.2f} s ({swap['trigger']})"
                if swap["applied_at_s"] is not None
                else "not applied before the end"
            )
            moved = f"{names[swap['from']]} -> {names[swap['to']]}"
            parts.append(f"rotated {moved}: files replaced at {swap['at_s']:.2f} s, {applied}")
        if tls["presented_after_rotation"] is not None:
            in_flight = tls["swaps"][-1]["calls_in_flight"] if tls["swaps"] else None
            note = f" ({in_flight} calls were in flight at the swap)" if in_flight else ""
            parts.append(
                f"requests arriving after it: {presented(tls['presented_after_rotation'])}{note}"
            )
        failures = tls["failures_during_rotation"]
        if tls["swaps"]:
            parts.append(
                f"{failures} of {tls['calls_during_rotation']:,} calls failed during the rotation"
            )
        style = "red" if failures or tls["rejected_material"] else "green"
        return Text("; ".join(parts), style=style)


def _trace_table(trace: Mapping[str, Any]) -> RenderableType:
    """Render the trace summary: spans by name/path/error, a retried call, the durations."""
    spans = Table(
        title=f"trace: {trace['spans']:,} spans in {trace['calls']:,} calls",
        box=box.SIMPLE_HEAVY,
        padding=(0, 1),
        pad_edge=False,
    )
    for name in ("span", "healkit.path", "error.type", "count"):
        spans.add_column(name, justify="right" if name == "count" else "left", no_wrap=True)
    for row in trace["by_name_path_error"]:
        spans.add_row(row["name"], row["path"], row["error_type"], f"{row['count']:,}")
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    sample = trace["sample_retried_call"]
    if sample is None:
        facts.add_row("retried call", "none in this run")
    else:
        lines = [
            (
                f"trace {sample['trace_id']}: {sample['attempts']} attempts,"
                f" ended {sample['outcome']} after {sample['duration_ms']:.1f} ms"
            )
        ]
        for span in sample["spans"]:
            details = [f"path {span['path']}"]
            if span["attempt"] is not None:
                details.insert(0, f"attempt {span['attempt']}")
            if span["resend_count"] is not None:
                details.append(f"resend_count {span['resend_count']}")
            if span["status_code"] is not None:
                details.append(f"status {span['status_code']}")
            if span["error_type"] is not None:
                details.append(f"error.type {span['error_type']}")
            lines.append(
                f"  +{span['start_ms']:.1f} ms  {span['name']}  {', '.join(details)}"
                f"  ({span['duration_ms']:.1f} ms)"
            )
        facts.add_row("retried call", "\n".join(lines))
    duration = trace["http_client_request_duration"]
    facts.add_row(
        DURATION_METRIC,
        f"p50 {_fmt_ms(_seconds(duration['p50_ms']))}, p99 {_fmt_ms(_seconds(duration['p99_ms']))}"
        f" over {duration['requests']:,} requests (estimated from the histogram's buckets)",
    )
    facts.add_row("counters", _counts(trace["counters"]))
    return Group(spans, facts)


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _counter_table(title: str, label_width: int) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title=title, title_style="bold")
    table.add_column("", min_width=label_width, no_wrap=True)
    table.add_column("last 1 s", justify="right", min_width=NUMBER_WIDTH)
    table.add_column("overall", justify="right", min_width=NUMBER_WIDTH)
    return table


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {value:,}" for key, value in counts.items()) or "none"


def _cumulative(values: Sequence[float]) -> Iterator[float]:
    running = 0.0
    for value in values:
        running += value
        yield running


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
