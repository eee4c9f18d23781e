"""The events healkit's core emits to ``healkit_event``: typed, frozen, documented.

A plugin observes them in its ``healkit_event(event)`` implementation and
tells them apart with ``isinstance``; every field is typed, so nothing is read
with ``getattr`` and a default. Times are seconds; endpoints are base URLs as
configured (redact them with ``config.redactor.url`` before logging them).

Emitted by the routing plugin:

- :class:`EndpointEjected`: an endpoint failed ``routing.eject_after`` times
  in a row and gets no traffic for a while;
- :class:`EndpointDown` and :class:`EndpointReturned`: its health probes took
  it out of service, or brought it back;
- :class:`EndpointProbed`: one health probe of it ended, with its result.

Emitted by circuit breakers (a subclass of each breaker plugin's own):

- :class:`CircuitTransition`: a breaker changed state. The breaker plugin's
  ``healkit_breaker.BreakerTransition`` is one; a third-party breaker emits
  this class or a subclass, and observers (the tracing plugin's metrics) count
  every breaker's transitions alike.

Emitted by the core for every plugin that keeps state of unconfigured hosts:

- :class:`StateEvicted`: such state was dropped (idle, or over the cap).

Emitted by every runtime:

- :class:`ConfigApplied`: a configuration was applied (at start, then each
  live change), with where it came from;
- :class:`ConfigRejected`: a document was rejected; the configuration in
  force stays.

Emitted by the etcd configuration source:

- :class:`EtcdSourceStatus`: the source's connection to etcd changed (also
  ``healkit.etcd.EtcdSourceStatus``).

Plugins document the events they emit themselves, with their other names (the
breaker plugin's ``healkit_breaker.BreakerTransition``, the TLS plugin's
``healkit_tls.TlsRotated``...).
"""

from __future__ import annotations

from typing import Literal, final

import msgspec

from healkit._bounded import EvictionReason, StateEvicted

__all__ = [
    "CircuitTransition",
    "ConfigApplied",
    "ConfigRejected",
    "Connection",
    "EndpointDown",
    "EndpointEjected",
    "EndpointProbed",
    "EndpointReturned",
    "EtcdSourceStatus",
    "EvictionReason",
    "StateEvicted",
]


@final
class EndpointEjected(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An endpoint was ejected (emitted to ``healkit_event`` and logged).

    Attributes:
        service: the service.
        endpoint: the endpoint ejected.
        failures: failures in a row that ejected it.
        seconds: for how long.
        ejections: its ejections still remembered, this one included: each
            earlier one doubled this one's ``seconds`` (up to
            ``routing.eject_time_max``, beyond which the count stops growing);
            one is forgotten per ``routing.eject_decay`` seconds without one.

    """

    service: str
    endpoint: str
    failures: int
    seconds: float
    ejections: int


@final
class EndpointDown(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An endpoint's probes failed ``probes`` times in a row: no traffic until they succeed again.

    Attributes:
        service: the service.
        endpoint: the endpoint taken down.
        probes: failed probes in a row (the probe's ``unhealthy_threshold``).

    """

    service: str
    endpoint: str
    probes: int


@final
class EndpointProbed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One health probe of an endpoint ended, and its result was counted.

    Emitted after the :class:`EndpointDown` or :class:`EndpointReturned` the
    result caused, if any. A probe that was not sent (the TLS plugin failed to
    give a context) emits nothing.

    Attributes:
        service: the service.
        endpoint: the endpoint probed.
        good: whether it answered as the probe expects (status, within time).

    """

    service: str
    endpoint: str
    good: bool


@final
class EndpointReturned(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An endpoint's probes succeeded ``probes`` times in a row: it takes traffic again.

    Attributes:
        service: the service.
        endpoint: the endpoint back in service.
        probes: good probes in a row (the probe's ``healthy_threshold``).

    """

    service: str
    endpoint: str
    probes: int


class CircuitTransition(msgspec.Struct, frozen=True, kw_only=True):
    """A circuit breaker changed state; a breaker plugin may emit a subclass with more fields.

    Attributes:
        service: the service of the breaker.
        endpoint: the endpoint it guards; ``None`` for a breaker of the whole
            service (or of a decorated function).
        from_state: the state it left, lower case (``"closed"``, ``"open"``,
            ``"half_open"``, or a state of the plugin's own); a subclass may
            use a ``str`` enum.
        to_state: the state it entered, spelled the same way.
        reason: why, in the plugin's words (``"failure_rate"``...).
        at: when, on the runtime's clock (``runtime.clock.now()``).

    """

    service: str
    endpoint: str | None
    from_state: str
    to_state: str
    reason: str
    at: float


Connection = Literal["connecting", "connected", "unreachable"]
"""How an etcd source is connected (:attr:`EtcdSourceStatus.connection`)."""


@final
class EtcdSourceStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What the source knows of etcd right now (for ``healkit status`` and tests).

    Attributes:
        connection: ``connecting`` (before the first read), ``connected`` (the
            watch is open) or ``unreachable`` (the last good configuration
            serves meanwhile).
        applied_revision: the etcd revision the configuration in force reflects
            (0 before the first read, or when started from a snapshot file
            that had none).
        from_snapshot: whether the configuration in force was read from the
            snapshot file, not from etcd, since the source started.
        last_error: why etcd was last unreachable (``None`` if it never was).
        rejected: the keys whose latest document was rejected, by key, with the
            revision of that document.

    """

    connection: Connection
    applied_revision: int
    from_snapshot: bool
    last_error: str | None
    rejected: dict[str, int]


@final
class ConfigApplied(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A runtime applied a configuration (also logged as ``healkit.config_applied``).

    Attributes:
        origin: where the document came from (``python``, a file's path, an
            etcd source's endpoints and prefix...).
        version: the runtime's configuration version after it (1 for the first).
        services: how many services it configures.

    """

    origin: str
    version: int
    services: int


@final
class ConfigRejected(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A runtime rejected a document; the configuration in force stays.

    Also logged as ``healkit.config_rejected``.

    Attributes:
        origin: where the document came from.
        issues: each problem as ``path: reason`` (``$.services.api.timeout``...).

    """

    origin: str
    issues: tuple[str, ...]
