"""Configuration models: the document an operator writes, and the validated snapshot.

A document (from Python, a file or etcd) looks like this (TOML shown)::

    [defaults.timeout]          # plugin sections apply to every service...
    attempt = 5.0

    [services.payments]         # ...and each service may override them key by key
    endpoints = ["https://payments.internal:8443"]
    max_body_bytes = 1048576

    [services.payments.timeout]
    read = 2.0

    [logging]
    redact_headers = ["X-Api-Key"]

    [state]                     # bounds of the state of hosts nobody configured
    max_unconfigured = 4096

The core owns ``endpoints`` and ``max_body_bytes``; every other key of a service
is a section contributed by a plugin through ``healkit_config_sections``. Unknown
keys are errors that name the key and its path. A validated document becomes a
:class:`HealkitConfig`: immutable, with one resolved :class:`ServicePolicy` per
service, swapped whole when a new document is accepted.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final, Generic, Protocol, TypeVar, cast, final, runtime_checkable

import msgspec
import yarl

from healkit._bounded import StateSettings
from healkit._config_validate import join_path, merge, validate
from healkit._errors import ConfigError, ConfigIssue
from healkit._redact import Redactor
from healkit._stash import Stash

__all__ = [
    "ConfigSection",
    "CoreServiceSettings",
    "DeclaresEndpoints",
    "HealkitConfig",
    "LoggingSettings",
    "ServicePolicy",
    "Timeouts",
    "build_config",
    "normalize_endpoint",
]

S = TypeVar("S", bound=msgspec.Struct)

SERVICE_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
ENDPOINT_PATTERN: Final = r"^https?://[^/@\s?#]+(/[^\s?#]*)?$"
DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
MAX_SECONDS: Final = 24 * 3600.0

Seconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]
"""A duration in seconds: finite, positive, at most a day."""


@final
class Timeouts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The time limits of one attempt, in seconds.

    Attributes:
        connect: getting a connection, pool wait included.
        read: waiting for the first byte, and between two reads.
        total: the whole attempt, body included.

    """

    connect: Seconds
    read: Seconds
    total: Seconds


CORE_TIMEOUTS: Final = Timeouts(connect=10.0, read=30.0, total=60.0)
"""The limits the core applies when no plugin sets any: healkit never sends a
request without a finite timeout, with or without the timeout plugin."""


@final
class ConfigSection(Generic[S]):
    """A section of the per-service document, contributed by a plugin.

    A plugin returns its sections from ``healkit_config_sections`` and reads its
    settings back with ``policy.section(SECTION)``. The settings type must be a
    frozen msgspec Struct whose fields all have safe defaults, so a service that
    does not mention the section still gets a complete, safe policy.

    Attributes:
        name: the key of the section in a service document (``"timeout"``).
        settings: the Struct type of the section.
        doc: one line for ``healkit config`` output and the reference docs.

    """

    __slots__ = ("doc", "name", "settings")

    def __init__(self, name: str, settings: type[S], *, doc: str = "") -> None:
        if not name.isidentifier() or name in CORE_KEYS:
            raise ValueError(f"invalid config section name {name!r}")
        if not (isinstance(settings, type) and issubclass(settings, msgspec.Struct)):
            raise TypeError(f"section {name!r}: settings must be a msgspec Struct type")
        try:
            msgspec.convert({}, settings)
        except msgspec.ValidationError as error:
            raise TypeError(
                f"section {name!r}: every setting needs a safe default ({error})"
            ) from None
        self.name = name
        self.settings = settings
        self.doc = doc

    def __repr__(self) -> str:
        return f"ConfigSection({self.name!r}, {self.settings.__name__})"

    def default(self) -> S:
        """Return the section's settings with every default applied."""
        return msgspec.convert({}, self.settings)


class CoreServiceSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The keys of a service document owned by the core.

    Attributes:
        endpoints: base URLs of the service (``http`` or ``https``, no query);
            calls addressed by service name go to the first one; absolute URLs
            that start with one of them are mapped to this service.
        max_body_bytes: the largest response body healkit reads into memory.

    """

    endpoints: tuple[Annotated[str, msgspec.Meta(pattern=ENDPOINT_PATTERN)], ...] = ()
    max_body_bytes: Annotated[int, msgspec.Meta(ge=0, le=2**40)] = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        """Reject duplicate endpoints."""
        normalized = [normalize_endpoint(e) for e in self.endpoints]
        if len(set(normalized)) != len(normalized):
            raise ValueError("endpoints must not repeat")


CORE_KEYS: Final = frozenset(f for f in CoreServiceSettings.__struct_fields__)


@final
class LoggingSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What healkit redacts from logs, spans and error messages.

    Attributes:
        redact_headers: header names redacted in addition to the built-in
            ``Authorization``, ``Proxy-Authorization``, ``Cookie`` and ``Set-Cookie``.
        redact_query: query parameter names redacted in addition to the built-in
            signature, token and credential names.

    """

    redact_headers: tuple[Annotated[str, msgspec.Meta(min_length=1, max_length=256)], ...] = ()
    redact_query: tuple[Annotated[str, msgspec.Meta(min_length=1, max_length=256)], ...] = ()


@runtime_checkable
class DeclaresEndpoints(Protocol):
    """A plugin section that names more endpoints of its service (routing's fallback groups).

    Endpoints a section declares are *configured* endpoints, like the service's
    ``endpoints``: the state plugins keep for them is never evicted
    (:meth:`HealkitConfig.configured`).
    """

    def declared_endpoints(self) -> Iterable[str]:
        """Return the endpoints this section names (as written; healkit normalizes them)."""
        ...


class _Document(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    defaults: dict[str, Any] = msgspec.field(default_factory=dict)
    services: dict[Annotated[str, msgspec.Meta(pattern=SERVICE_NAME_PATTERN)], dict[str, Any]] = (
        msgspec.field(default_factory=dict)
    )
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)
    state: StateSettings = msgspec.field(default_factory=StateSettings)


@final
class ServicePolicy:
    """The resolved policy of one service: defaults merged with its document.

    Attributes:
        name: the service name (``"*"`` for the default policy).
        endpoints: the service's base URLs, normalized without a trailing slash.
        known_endpoints: ``endpoints`` and every endpoint a section of the
            policy declares (:class:`DeclaresEndpoints`), normalized.
        max_body_bytes: the response body cap.
        stash: plugin state derived from this policy (built once per
            configuration snapshot instead of once per call).
        call_limits: the attempt limits and the call deadline (seconds) the
            runtime's plugins give this service (``healkit_attempt_timeouts``,
            ``healkit_call_deadline``); ``None`` until the runtime first asks
            (``Runtime.call_limits``). The executor reads it once per call.

    """

    __slots__ = (
        "_sections",
        "call_limits",
        "endpoints",
        "known_endpoints",
        "max_body_bytes",
        "name",
        "stash",
    )

    def __init__(
        self,
        name: str,
        core: CoreServiceSettings,
        sections: Mapping[str, msgspec.Struct],
    ) -> None:
        self.name = name
        self.endpoints = tuple(normalize_endpoint(e) for e in core.endpoints)
        self.max_body_bytes = core.max_body_bytes
        self._sections = dict(sections)
        declared = (
            e
            for value in self._sections.values()
            if isinstance(value, DeclaresEndpoints)
            for e in value.declared_endpoints()
        )
        self.known_endpoints = frozenset(self.endpoints).union(
            normalize_endpoint(e) for e in declared
        )
        self.stash = Stash()
        self.call_limits: tuple[Timeouts, float] | None = None

    def __repr__(self) -> str:
        return f"ServicePolicy({self.name!r}, endpoints={self.endpoints!r})"

    def section(self, section: ConfigSection[S]) -> S:
        """Return this service's settings for a plugin's section."""
        return cast("S", self._sections[section.name])

    def as_document(self) -> dict[str, Any]:
        """Return the policy as a plain document (every default filled in)."""
        doc: dict[str, Any] = {
            "endpoints": list(self.endpoints),
            "max_body_bytes": self.max_body_bytes,
        }
        for name, value in sorted(self._sections.items()):
            doc[name] = msgspec.to_builtins(value)
        return doc


@final
class HealkitConfig:
    """A validated, immutable configuration snapshot.

    In-flight calls keep the snapshot they started with; a new document becomes
    a new snapshot that is swapped in whole.

    Attributes:
        defaults: the policy of services without a document of their own.
        services: the policy of each configured service.
        logging: redaction settings.
        state: the bounds of the state plugins keep for unconfigured services
            and endpoints.
        sections: the plugin sections this snapshot was validated against.
        redactor: redacts secrets from what healkit logs, per ``logging``.

    """

    __slots__ = (
        "_by_prefix",
        "defaults",
        "logging",
        "redactor",
        "sections",
        "services",
        "state",
    )

    def __init__(
        self,
        *,
        defaults: ServicePolicy,
        services: Mapping[str, ServicePolicy],
        logging: LoggingSettings,
        sections: tuple[ConfigSection[Any], ...],
        state: StateSettings | None = None,
    ) -> None:
        self.defaults = defaults
        self.services = dict(services)
        self.logging = logging
        self.state = StateSettings() if state is None else state
        self.sections = sections
        self.redactor = Redactor(headers=logging.redact_headers, query=logging.redact_query)
        prefixes = [(e, name) for name, p in self.services.items() for e in p.endpoints]
        # Longest prefix first, so https://gw/payments wins over https://gw.
        self._by_prefix = tuple(sorted(prefixes, key=lambda item: len(item[0]), reverse=True))

    def policy(self, service: str) -> ServicePolicy:
        """Return the policy of ``service``, or the defaults if it has none."""
        return self.services.get(service) or self.defaults

    def configured(self, service: str, endpoint: str | None = None) -> bool:
        """Whether ``service`` has a document and ``endpoint`` (if given) is one it names.

        State kept for a configured key lives as long as the configuration
        names it; state of any other key is bounded (``state`` settings).
        """
        policy = self.services.get(service)
        return policy is not None and (endpoint is None or endpoint in policy.known_endpoints)

    def service_for_url(self, url: str) -> str | None:
        """Return the service whose endpoint the absolute ``url`` starts with."""
        for prefix, name in self._by_prefix:
            if url_under(url, prefix):
                return name
        return None


def build_config(
    raw: object,
    sections: Iterable[ConfigSection[Any]] = (),
    *,
    origin: str = "python",
) -> HealkitConfig:
    """Validate a whole document and return the snapshot it describes.

    Args:
        raw: the decoded document (a mapping), as parsed from JSON, YAML or TOML.
        sections: the plugin sections known to this runtime.
        origin: where the document came from, for error messages.

    Raises:
        ConfigError: listing every problem found, each with its path.

    """
    section_list = tuple(sorted(sections, key=lambda s: s.name))
    document, issues = validate(raw, _Document)
    defaults_raw: Mapping[str, Any]
    services_raw: Mapping[str, Mapping[str, Any]]
    if document is not None:
        defaults_raw, services_raw = document.defaults, document.services
        logging, state = document.logging, document.state
    else:
        # Keep going with the parts that have the right shape, so that one
        # pass reports the problems of every service too.
        defaults_raw, services_raw = _salvage(raw)
        logging, state = LoggingSettings(), StateSettings()
    service_type = _service_type(section_list)

    if "endpoints" in defaults_raw:
        issues.append(
            ConfigIssue("$.defaults.endpoints", "endpoints belong to a service, not to defaults")
        )
        defaults_raw = {k: v for k, v in defaults_raw.items() if k != "endpoints"}
    defaults_struct, found = validate(defaults_raw, service_type, path="$.defaults")
    issues += found
    defaults_ok = not found
    defaults = _policy("*", defaults_struct, section_list) if defaults_struct is not None else None

    services: dict[str, ServicePolicy] = {}
    for name, doc in sorted(services_raw.items()):
        merged = merge(defaults_raw, doc) if defaults_ok else doc
        struct, found = validate(merged, service_type, path=join_path("$.services", name))
        issues += found
        if struct is not None:
            services[name] = _policy(name, struct, section_list)

    issues += _shared_endpoints(services)
    if issues or defaults is None:
        raise ConfigError(issues, origin=origin)
    return HealkitConfig(
        defaults=defaults,
        services=services,
        logging=logging,
        sections=section_list,
        state=state,
    )


def url_under(url: str, endpoint: str) -> bool:
    """Whether ``url`` is ``endpoint`` or below it (``/x`` is under ``/``, not ``/xy``)."""
    return url.startswith(endpoint) and (len(url) == len(endpoint) or url[len(endpoint)] in "/?#")


def _salvage(raw: object) -> tuple[Mapping[str, Any], Mapping[str, Mapping[str, Any]]]:
    """Return the defaults and the well-named services of an invalid document."""
    if not isinstance(raw, Mapping):
        return {}, {}
    defaults = raw.get("defaults")
    services = raw.get("services")
    return (
        defaults if isinstance(defaults, Mapping) else {},
        {
            name: doc
            for name, doc in (services.items() if isinstance(services, Mapping) else ())
            if isinstance(name, str)
            and re.match(SERVICE_NAME_PATTERN, name)
            and isinstance(doc, Mapping)
        },
    )


@functools.lru_cache(maxsize=64)
def _service_type(sections: tuple[ConfigSection[Any], ...]) -> type[CoreServiceSettings]:
    """Return the Struct of a service document with ``sections`` (one type per section set).

    Built once per set of sections, not per document: a new type would also
    make msgspec inspect its annotations anew on every document applied.
    """
    fields = [(s.name, s.settings, msgspec.field(default_factory=s.default)) for s in sections]
    return cast(
        "type[CoreServiceSettings]",
        msgspec.defstruct(
            "ServiceDocument",
            fields,
            bases=(CoreServiceSettings,),
            frozen=True,
            kw_only=True,
            forbid_unknown_fields=True,
        ),
    )


def _policy(
    name: str,
    struct: CoreServiceSettings,
    sections: tuple[ConfigSection[Any], ...],
) -> ServicePolicy:
    return ServicePolicy(name, struct, {s.name: getattr(struct, s.name) for s in sections})


def _shared_endpoints(services: Mapping[str, ServicePolicy]) -> list[ConfigIssue]:
    owner: dict[str, str] = {}
    issues: list[ConfigIssue] = []
    for name, policy in services.items():
        for endpoint in policy.endpoints:
            if endpoint in owner:
                issues.append(
                    ConfigIssue(
                        join_path(join_path("$.services", name), "endpoints"),
                        f"endpoint {endpoint} is also an endpoint of service {owner[endpoint]!r};"
                        " absolute URLs could not be mapped to one service",
                    )
                )
            else:
                owner[endpoint] = name
    return issues


def normalize_endpoint(endpoint: str) -> str:
    """Return ``endpoint`` as healkit keeps it: no trailing ``/``."""
    url = yarl.URL(endpoint)
    text = str(url.with_path(url.path.rstrip("/")))
    return text.rstrip("/")
