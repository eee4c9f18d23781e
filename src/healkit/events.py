"""The events healkit's core emits to ``healkit_event``: typed, frozen, documented.

A plugin observes them in its ``healkit_event(event)`` implementation and
tells them apart with ``isinstance``; every field is typed, so nothing is read
with ``getattr`` and a default. Times are seconds; endpoints are base URLs as
configured (redact them with ``config.redactor.url`` before logging them).

Emitted by the routing plugin:

- :class:`EndpointEjected`: an endpoint failed ``routing.eject_after`` times
  in a row and gets no traffic for a while;
- :class:`EndpointDown` and :class:`EndpointReturned`: its health probes took
  it out of service, or brought it back.

Emitted by the core for every plugin that keeps state of unconfigured hosts:

- :class:`StateEvicted`: such state was dropped (idle, or over the cap).

Emitted by the etcd configuration source:

- :class:`EtcdSourceStatus`: the source's connection to etcd changed (also
  ``healkit.etcd.EtcdSourceStatus``).

Plugins document the events they emit themselves, with their other names (the
breaker plugin's ``healkit_breaker.BreakerTransition``, the TLS plugin's
``healkit_tls.TlsRotated``...).
"""

from __future__ import annotations

from typing import final

import msgspec

from healkit._bounded import EvictionReason, StateEvicted
from healkit.etcd import EtcdSourceStatus

__all__ = [
    "EndpointDown",
    "EndpointEjected",
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
        ejections: how many times it was ejected without recovering since.

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
