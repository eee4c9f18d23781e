"""healkit: make outbound asyncio calls survive failures.

A resilience pipeline of pluggy hooks (``pre_request``, ``post_response``,
``on_error``, ``fallback``) around aiohttp requests and decorated async call
sites, with plugins for timeouts, retries, circuit breakers and more, all
configured live. Start with :class:`Client` or :func:`resilient`; the public
names are exactly those in ``__all__``. Plugin authors find what they code
against in :mod:`healkit.plugin` (and :mod:`healkit.hookspecs`), the events
healkit emits in :mod:`healkit.events`.
"""

import warnings as _warnings
from importlib.metadata import version as _version
from typing import TYPE_CHECKING as _TYPE_CHECKING

from healkit._bounded import BoundedMap, EvictionReason, StateEvicted, StateSettings
from healkit._client import AiohttpOptions, Client, RequestOptions
from healkit._clock import Clock, MonotonicClock
from healkit._config.compact import plain_document
from healkit._config.formats import DocumentLimits
from healkit._config.models import (
    ConfigChanges,
    ConfigSection,
    DeclaresEndpoints,
    HealkitConfig,
    LoggingSettings,
    ServicePolicy,
    Timeouts,
    build_config,
)
from healkit._config.sources import ConfigSink, ConfigSource, FileSource, InMemorySource
from healkit._context import AttemptContext, CallContext, Fallback, RetryDecision
from healkit._decorator import resilient
from healkit._degraded import DegradedSettings
from healkit._errors import (
    AttemptTimeout,
    BodyTooLargeError,
    BudgetExhaustedError,
    CallError,
    CircuitOpenError,
    ClientClosedError,
    ConcurrencyLimitError,
    ConfigError,
    ConfigIssue,
    ConnectError,
    ConnectionLostError,
    ConnectTimeout,
    DeadlineExceeded,
    DeadlineHeaderError,
    DegradedModeError,
    DNSError,
    EtcdAuthError,
    EtcdCompactedError,
    EtcdError,
    EtcdProtocolError,
    EtcdRequestError,
    EtcdUnavailableError,
    HealkitError,
    HTTPStatusError,
    InvalidRequestError,
    LimitError,
    OutcomeUnavailableError,
    OverloadError,
    PluginError,
    ProtocolError,
    RateLimitedError,
    ReadTimeout,
    RedirectRefusedError,
    ThrottledError,
    TimeoutExceeded,
    TLSError,
    TooManyRedirects,
    TransportError,
)
from healkit._log import EventLogger, get_logger
from healkit._middleware import ResilienceMiddleware
from healkit._outcome import AttemptRecord, Outcome, PathTaken, RedirectRecord
from healkit._plugins import PluginInfo, create_plugin_manager, describe_plugins
from healkit._response import OUTCOME_HEADER, Response
from healkit._routing.health import EndpointStatus
from healkit._routing.plugin import endpoint_status
from healkit._runtime import Runtime, current_runtime, default_runtime
from healkit._stash import Stash, StashKey
from healkit._templates import DegradedTemplate
from healkit.hookspecs import hookimpl

__version__ = _version("healkit")

__all__ = [
    "OUTCOME_HEADER",
    "AiohttpOptions",
    "AttemptContext",
    "AttemptRecord",
    "AttemptTimeout",
    "BodyTooLargeError",
    "BoundedMap",
    "BudgetExhaustedError",
    "CallContext",
    "CallError",
    "CircuitOpenError",
    "Client",
    "ClientClosedError",
    "Clock",
    "ConcurrencyLimitError",
    "ConfigChanges",
    "ConfigError",
    "ConfigIssue",
    "ConfigSection",
    "ConfigSink",
    "ConfigSource",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLostError",
    "DNSError",
    "DeadlineExceeded",
    "DeadlineHeaderError",
    "DeclaresEndpoints",
    "DegradedModeError",
    "DegradedSettings",
    "DegradedTemplate",
    "DocumentLimits",
    "EndpointStatus",
    "EtcdAuthError",
    "EtcdCompactedError",
    "EtcdError",
    "EtcdProtocolError",
    "EtcdRequestError",
    "EtcdUnavailableError",
    "EventLogger",
    "EvictionReason",
    "Fallback",
    "FileSource",
    "HTTPStatusError",
    "HealkitConfig",
    "HealkitError",
    "InMemorySource",
    "InvalidRequestError",
    "LimitError",
    "LoggingSettings",
    "MonotonicClock",
    "Outcome",
    "OutcomeUnavailableError",
    "OverloadError",
    "PathTaken",
    "PluginError",
    "PluginInfo",
    "ProtocolError",
    "RateLimitedError",
    "ReadTimeout",
    "RedirectRecord",
    "RedirectRefusedError",
    "RequestOptions",
    "ResilienceMiddleware",
    "Response",
    "RetryDecision",
    "Runtime",
    "ServicePolicy",
    "Stash",
    "StashKey",
    "StateEvicted",
    "StateSettings",
    "TLSError",
    "ThrottledError",
    "TimeoutExceeded",
    "Timeouts",
    "TooManyRedirects",
    "TransportError",
    "__version__",
    "build_config",
    "create_plugin_manager",
    "current_runtime",
    "default_runtime",
    "describe_plugins",
    "endpoint_status",
    "get_logger",
    "hookimpl",
    "plain_document",
    "resilient",
]

_RENAMED = {
    "RequestError": "InvalidRequestError",
    "EtcdCompacted": "EtcdCompactedError",
    "EtcdUnavailable": "EtcdUnavailableError",
}
"""Names of 0.1.0 development builds, kept for a while with a DeprecationWarning."""

if _TYPE_CHECKING:  # the former names are still classes to a type checker (``except`` them)
    RequestError = InvalidRequestError
    EtcdCompacted = EtcdCompactedError
    EtcdUnavailable = EtcdUnavailableError


def __getattr__(name: str) -> object:
    """Return an error class under its former name, with a :class:`DeprecationWarning`."""
    if (current := _RENAMED.get(name)) is None:
        raise AttributeError(f"module 'healkit' has no attribute {name!r}")
    _warnings.warn(
        f"healkit.{name} is renamed healkit.{current}"
        + (" (httpx's RequestError is healkit.TransportError)" if name == "RequestError" else ""),
        DeprecationWarning,
        stacklevel=2,
    )
    return globals()[current]
