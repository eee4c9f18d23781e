"""Whether the plugin's tracer and meter can record anything, answered in nanoseconds.

Without an SDK the OpenTelemetry API is a no-op, but not a free one: a no-op
``start_span`` costs ~0.7 µs, and ``trace.get_tracer_provider()`` ~0.8 µs
while no provider is set (it looks the environment up each time). A healkit
call must cost next to nothing when the application installed no SDK, yet pick
up an SDK installed later with ``trace.set_tracer_provider`` or
``metrics.set_meter_provider``, as the API's global proxies do. So
:class:`Sinks` classifies each provider once, when the plugin is made:

* a provider given to the plugin, or the global one if it was already set:
  ``NoOpTracerProvider`` / ``NoOpMeterProvider`` never record; any other
  provider may (an SDK samples span by span, so spans are still asked
  ``is_recording()``);
* the global provider, not set yet: the API's proxy (for traces the public
  API says so: ``get_tracer_provider()`` returns a ``ProxyTracerProvider``
  until one is set). Whether one has been set since is then read, on every
  call, from the API module's globals (``_TRACER_PROVIDER``,
  ``_METER_PROVIDER``), exactly what the API's own proxies read to decide the
  same thing. A global provider can be set once only, so once it is seen set,
  nothing is read again.

Those globals are private to the API, and read only where they were verified:
the public getters cost two environment look-ups a call, and the metrics API
has no public way at all to tell its proxy from a provider that was set. With
an opentelemetry-api outside :data:`VERIFIED_API`, nothing private is read:
the proxies are treated as recording, every call then pays the API's no-op
cost, nothing breaks, and ``tests/test_tracing_providers.py`` fails to say the
range needs a look.
"""

from __future__ import annotations

import enum
import importlib.metadata
import re
from collections.abc import Callable
from typing import Final, final

from opentelemetry import metrics, trace
from opentelemetry.metrics import _internal as metrics_api

__all__ = [
    "API_VERSION",
    "READABLE",
    "VERIFIED_API",
    "Kind",
    "Sinks",
    "globals_unset",
    "meter_kind",
    "tracer_kind",
]

VERIFIED_API: Final = ((1, 30), (1, 46))
"""The opentelemetry-api versions ``[from, to)`` whose private globals :class:`Sinks` reads.

Checked in the API's source of every release from 1.30.0 to 1.45.2 (the same
three globals, set in the same place); the plugin's tests pass on 1.30.0,
1.31.0 and 1.45.2. Widen it only after reading the new release's
``opentelemetry/trace/__init__.py`` and ``opentelemetry/metrics/_internal/__init__.py``.
"""


def _api_version() -> tuple[int, int] | None:
    """Return the installed opentelemetry-api's (major, minor), ``None`` if unknown."""
    try:
        text = importlib.metadata.version("opentelemetry-api")
    except importlib.metadata.PackageNotFoundError:
        return None
    match = re.match(r"(\d+)\.(\d+)", text)
    return None if match is None else (int(match[1]), int(match[2]))


API_VERSION: Final = _api_version()
"""The installed opentelemetry-api's (major, minor), ``None`` if its metadata is missing."""

READABLE: Final = API_VERSION is not None and VERIFIED_API[0] <= API_VERSION < VERIFIED_API[1]
"""Whether :class:`Sinks` may read the API's private globals (see :data:`VERIFIED_API`)."""


class Kind(enum.Enum):
    """What a provider can do."""

    NEVER = "never"
    """A no-op provider: nothing is ever recorded."""
    MAY = "may"
    """A real provider (or one the plugin cannot see through): ask it."""
    UNSET = "unset"
    """The API's global proxy, no provider set yet: nothing is recorded until one is."""


def tracer_kind(provider: trace.TracerProvider | None) -> Kind:
    """Classify the tracer provider the plugin got (``None``: the global one)."""
    if provider is None:
        provider = trace.get_tracer_provider()  # loads OTEL_PYTHON_TRACER_PROVIDER if named
    if isinstance(provider, trace.NoOpTracerProvider):
        return Kind.NEVER
    if (
        READABLE
        and isinstance(provider, trace.ProxyTracerProvider)
        and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # none set yet
    ):
        return Kind.UNSET
    return Kind.MAY


def meter_kind(provider: metrics.MeterProvider | None) -> Kind:
    """Classify the meter provider the plugin got (``None``: the global one)."""
    if provider is None:
        provider = metrics.get_meter_provider()  # loads OTEL_PYTHON_METER_PROVIDER if named
    if isinstance(provider, metrics.NoOpMeterProvider):
        return Kind.NEVER
    if READABLE and provider is metrics_api._PROXY_METER_PROVIDER:  # noqa: SLF001 - no public way
        return Kind.MAY if metrics_api._METER_PROVIDER is not None else Kind.UNSET  # noqa: SLF001
    return Kind.MAY


@final
class Sinks:
    """Whether spans and metrics may be recorded now.

    The hot path reads it in one of two ways. While ``dormant``, nothing
    records until a global provider is set: :func:`globals_unset` says whether
    that is still so, and :meth:`refresh` takes the change up. Otherwise,
    ``refresh()`` if ``watching``, then ``spans`` and ``metrics``.

    Attributes:
        spans: the tracer may record (``False``: skip every span).
        metrics: the meter may record (``False``: skip every measurement).
        watching: a global provider is still unset; call :meth:`refresh`
            before reading ``spans`` and ``metrics``.
        dormant: both providers are the API's unset global proxies (no SDK
            yet): nothing records while :func:`globals_unset` is true.

    """

    __slots__ = (
        "_on_recording",
        "_watch_metrics",
        "_watch_spans",
        "dormant",
        "metrics",
        "spans",
        "watching",
    )

    def __init__(
        self, spans: Kind, metrics: Kind, on_recording: Callable[[], None] = lambda: None
    ) -> None:
        self._on_recording = on_recording
        self.spans = spans is Kind.MAY
        self.metrics = metrics is Kind.MAY
        self._watch_spans = spans is Kind.UNSET
        self._watch_metrics = metrics is Kind.UNSET
        self.watching = self._watch_spans or self._watch_metrics
        self.dormant = self._watch_spans and self._watch_metrics

    def __repr__(self) -> str:
        return f"<Sinks spans={self.spans} metrics={self.metrics} watching={self.watching}>"

    def refresh(self) -> None:
        """Take up a global provider set since the last look (a few attribute reads).

        Calls ``on_recording`` when spans or metrics may be recorded where
        nothing could be before.
        """
        silent = not (self.spans or self.metrics)
        if self._watch_spans and trace._TRACER_PROVIDER is not None:  # noqa: SLF001
            self._watch_spans = False
            self.spans = True
        if self._watch_metrics and metrics_api._METER_PROVIDER is not None:  # noqa: SLF001
            self._watch_metrics = False
            self.metrics = True
        self.watching = self._watch_spans or self._watch_metrics
        self.dormant = self._watch_spans and self._watch_metrics
        if silent and (self.spans or self.metrics):
            self._on_recording()


def globals_unset() -> bool:
    """Whether neither global provider has been set (only called while :class:`Sinks` is dormant).

    A :class:`Sinks` is dormant only if :data:`READABLE`: the reads are verified.
    """
    return trace._TRACER_PROVIDER is None and metrics_api._METER_PROVIDER is None  # noqa: SLF001
