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

The core owns ``endpoints``, ``max_body_bytes``, ``follow_redirects``,
``max_redirects`` and ``deadline_header``; every other key of a service
is a section contributed by a plugin through ``healkit_config_sections``. Unknown
keys are errors that name the key and its path. A validated document becomes a
:class:`HealkitConfig`: immutable, with one resolved :class:`ServicePolicy` per
service, swapped whole when a new document is accepted.

The models are ``gc=False`` Structs: frozen, built from plain values, they
cannot be part of a reference cycle, so the garbage collector does not track
them, and a document of 10,000 services does not make every full collection
of the process (which stops the event loop) longer by 10,000 objects.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import enum
import functools
import ipaddress
import itertools
import re
import threading
import uuid
from collections.abc import Collection, Iterable, Mapping
from typing import (
    Annotated,
    Any,
    ClassVar,
    Final,
    Generic,
    NamedTuple,
    Protocol,
    TypeVar,
    cast,
    final,
    runtime_checkable,
)

import msgspec
import yarl

from healkit._bounded import StateSettings
from healkit._config.compact import Encoded
from healkit._config.validate import CHECK, fingerprint, join_path, merge, validate
from healkit._errors import ConfigError, ConfigIssue
from healkit._redact import Redactor
from healkit._stash import Stash

__all__ = [
    "ConfigChanges",
    "ConfigSection",
    "CoreServiceSettings",
    "DeclaresEndpoints",
    "HealkitConfig",
    "LoggingSettings",
    "ServicePolicy",
    "Timeouts",
    "build_config",
    "endpoint_problem",
    "is_http_url",
    "name_problem",
    "normalize_endpoint",
    "service_name_issues",
    "url_problem",
]

S = TypeVar("S", bound=msgspec.Struct)

SERVICE_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
ENDPOINT_PATTERN: Final = r"^(?i:https?)://[^/@\s?#]+(/[^\s?#]*)?$"
"""A base URL; its scheme in any case (RFC 3986): :func:`normalize_endpoint` writes it lower."""
_HTTP_SCHEME: Final = re.compile(r"https?://", re.IGNORECASE)
# A host name as DNS and IDNA allow it (RFC 1035/1123, RFC 5890): dot-separated
# ASCII labels of 1 to 63 characters (after IDNA encoding), 253 in all. "_" is
# kept: container and service-discovery names use it.
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
# A last label that makes a host "end in a number" (WHATWG URL): decimal, or 0x hex.
_NUMERIC_LABEL: Final = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")
MAX_HOST_LENGTH: Final = 253
MAX_LABEL_LENGTH: Final = 63
DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
DEFAULT_MAX_REDIRECTS: Final = 10
MAX_REDIRECTS: Final = 50
"""The most ``max_redirects`` a service or a request may ask for."""
MAX_SECONDS: Final = 24 * 3600.0

Seconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]
"""A duration in seconds: finite, positive, at most a day."""

HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}$")]
"""An HTTP header name: an RFC 9110 token of 1 to 128 characters."""

RESERVED_HEADERS: Final = frozenset(
    {
        "authorization",
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "cookie",
        "expect",
        "host",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Header names healkit will not overwrite with a value of its own (``deadline_header``)."""


def url_problem(url: yarl.URL) -> str | None:
    """Return why an absolute ``url`` cannot be called (its host or its port), or ``None``.

    The host must be an IP address (without an IPv6 zone ID) or a host name
    that IDNA and RFC 3986 accept: no empty label (``a..b``), no label over 63
    characters, no percent-encoded or control characters, 253 characters at
    most, not ending in a number (``256.1.1.1``, ``127.1``, ``0x7f.1``: a URL
    parser reads those as IPv4 addresses). An explicit port is 1 to 65535.
    The configuration (each endpoint) and the client (each absolute URL called)
    both ask this function, so one rule decides.
    """
    try:
        host = url.raw_host
        port = url.explicit_port
        url.host  # noqa: B018 - decodes an IDNA host ("xn--..."): it must decode
    except ValueError as error:  # UnicodeError (an IDNA failure) included
        return f"invalid host: {error}"
    if not host:
        return "no host"
    if port is not None and not 0 < port < 2**16:
        return f"invalid port {port}: must be 1 to 65535"
    return _host_problem(host)


def endpoint_problem(endpoint: object) -> str | None:
    """Return why ``endpoint`` (an ``http(s)://`` base URL) is not usable, or ``None``."""
    if not isinstance(endpoint, str):
        return f"expected a string, got {type(endpoint).__name__}"
    try:
        url = yarl.URL(endpoint)
    except ValueError as error:
        return f"invalid URL: {error}"
    return url_problem(url)


@functools.lru_cache(maxsize=4096)
def _host_problem(host: str) -> str | None:
    """Return why ``host`` cannot be called, or ``None``.

    Asked for the host of every absolute URL called: a pure function of the
    host, its answer is cached (a bounded cache, so a stream of new hosts
    costs what it did, and no more memory).
    """
    shown = msgspec.json.encode(host).decode()
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        # aiohttp resolves "fe80::1%25eth0" (RFC 6874) as a name, and an
        # interface is one machine's: an endpoint shared by a fleet cannot name it.
        zoned = isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None
        return f"invalid host {shown}: an IPv6 zone ID is not supported" if zoned else None
    name = host.removesuffix(".")
    if len(name) > MAX_HOST_LENGTH:
        return f"invalid host: longer than {MAX_HOST_LENGTH} characters"
    problem = _label_problem(name)
    if problem is None and _NUMERIC_LABEL.fullmatch(name.rsplit(".", 1)[-1]):
        # A URL parser (WHATWG) reads such a host as an IPv4 address, and the
        # resolver maps its legacy forms ("127.1", "0x7f.1", "2130706433")
        # onto one: it is no host name, and not a canonical address.
        problem = "ends in a number but is not an IPv4 address"
    return None if problem is None else f"invalid host {shown}: {problem}"


def _label_problem(name: str) -> str | None:
    """Return why a label of the host ``name`` is not a DNS label, or ``None``."""
    for label in name.split("."):
        if not _HOST_LABEL.fullmatch(label):
            if not label:
                return "empty label"
            if len(label) > MAX_LABEL_LENGTH:
                return f"a label is longer than {MAX_LABEL_LENGTH} characters"
            return "letters, digits, '-' and '_' only in each label"
    return None


Endpoint = Annotated[str, msgspec.Meta(pattern=ENDPOINT_PATTERN, extra={CHECK: endpoint_problem})]
"""A base URL: ``http(s)://host[:port][/path]``, with a host that can be called."""

Name = Annotated[str, msgspec.Meta(pattern=SERVICE_NAME_PATTERN)]
"""A service, namespace or channel name: a letter or digit, then letters, digits,
``_``, ``.``, ``-``; 128 characters at most (nothing else: no ``/``, no newline)."""


def name_problem(name: object) -> str | None:
    """Return why ``name`` is not a valid service, namespace or channel name, or ``None``."""
    _, issues = validate(name, Name)
    return issues[0].reason if issues else None


def service_name_issues(names: Iterable[object], *, path: str = "$.services") -> list[ConfigIssue]:
    """Return one issue per invalid service name, worded as :func:`build_config` words it.

    ``healkit config push`` checks the names of the documents it would write
    (mapping keys of a file, file names of a directory) with this, so that a
    name is refused, not written under another spelling (``on`` read by YAML
    as ``True``) or left out.
    """
    _, issues = validate(dict.fromkeys(names), dict[Name, None], path=path)
    return issues


@final
class Timeouts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
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

    __slots__ = ("_default", "_shared", "doc", "name", "settings")

    def __init__(self, name: str, settings: type[S], *, doc: str = "") -> None:
        if not name.isidentifier() or name in CORE_KEYS:
            raise ValueError(f"invalid config section name {name!r}")
        if not (isinstance(settings, type) and issubclass(settings, msgspec.Struct)):
            raise TypeError(f"section {name!r}: settings must be a msgspec Struct type")
        if not settings.__struct_config__.frozen:
            # Its defaults are one object, shared by every service that does not
            # mention the section: no service may change another's.
            raise TypeError(f"section {name!r}: settings must be a frozen msgspec Struct")
        try:
            default = msgspec.convert({}, settings)
        except msgspec.ValidationError as error:
            raise TypeError(
                f"section {name!r}: every setting needs a safe default ({error})"
            ) from None
        self.name = name
        self.settings = settings
        self.doc = doc
        self._default = default
        self._shared = _unchanging(default)

    def __repr__(self) -> str:
        return f"ConfigSection({self.name!r}, {self.settings.__name__})"

    def default(self) -> S:
        """Return the section's settings with every default applied.

        The same object on every call: each service that does not mention the
        section holds it, so a document of many services makes one, not one
        per service. Unless the defaults hold a container that changes in
        place (a ``list``, a ``dict``: a frozen Struct may): then a new object
        on each call, or a change through one service's settings would be
        every service's, in every runtime.
        """
        if self._shared:
            return self._default
        return msgspec.convert({}, self.settings)


class CoreServiceSettings(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False
):
    """The keys of a service document owned by the core.

    Attributes:
        endpoints: base URLs of the service (``http`` or ``https``, no query);
            calls addressed by service name go to the first one; absolute URLs
            that start with one of them are mapped to this service.
        max_body_bytes: the largest response body healkit reads into memory;
            also the largest streamed request body the httpx transport keeps
            to send again (a longer one is sent once).
        follow_redirects: follow 301, 302, 303, 307 and 308 answers, hop by
            hop under healkit's rules; ``False`` returns them as the response.
        max_redirects: the most redirects one attempt follows; one more is a
            ``TooManyRedirects`` error.
        deadline_header: the header in which every HTTP attempt tells the
            upstream the milliseconds the call has left (see
            :mod:`healkit.deadlines`); ``None`` sends none.

    """

    endpoints: tuple[Endpoint, ...] = ()
    max_body_bytes: Annotated[int, msgspec.Meta(ge=0, le=2**40)] = DEFAULT_MAX_BODY_BYTES
    follow_redirects: bool = True
    max_redirects: Annotated[int, msgspec.Meta(ge=0, le=MAX_REDIRECTS)] = DEFAULT_MAX_REDIRECTS
    deadline_header: HeaderName | None = None

    section_names: ClassVar[frozenset[str]] = frozenset()
    """The plugin sections of this document type (one type per set of sections)."""

    def __post_init__(self) -> None:
        """Normalize the endpoints; reject duplicates, and a deadline header replacing another."""
        normalized = tuple(normalize_endpoint(e) for e in self.endpoints)
        if len(set(normalized)) != len(normalized):
            raise ValueError("endpoints must not repeat")
        msgspec.structs.force_setattr(self, "endpoints", normalized)
        if self.deadline_header is not None and self.deadline_header.lower() in RESERVED_HEADERS:
            raise ValueError(
                f"deadline_header must not be {self.deadline_header!r}:"
                " healkit does not replace that header"
            )


CORE_KEYS: Final = frozenset(f for f in CoreServiceSettings.__struct_fields__)

FIRST_PARTY_SECTIONS: Final = {
    "timeout": ("healkit-timeout", "timeout"),
    "retry": ("healkit-retry", "retry"),
    "breaker": ("healkit-breaker", "breaker"),
    "tls": ("healkit-tls", "tls"),
    "tracing": ("healkit-tracing", "tracing"),
}
"""The sections of healkit's own plugins: distribution, and the extra that installs it."""


@final
class LoggingSettings(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False
):
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
    # A mapping, or its Encoded (healkit._config.compact): each is checked on
    # its own, so that the service documents are not copied (nor decoded) at once.
    defaults: Any = msgspec.field(default_factory=dict)
    services: dict[Name, Any] = msgspec.field(default_factory=dict)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)
    state: StateSettings = msgspec.field(default_factory=StateSettings)


_STASH_LOCK: Final = threading.Lock()
"""Makes a policy's stash once, whichever threads ask for it first."""


@final
class ServicePolicy(msgspec.Struct, eq=False):
    """The resolved policy of one service: defaults merged with its document.

    A policy holds nothing the garbage collector needs to visit until a
    plugin keeps state in it (its ``stash``, its call limits, its set of
    known endpoints): a document of 10,000 services adds 10,000 policies that
    no collection walks, nor counts towards the next full one, until they are
    called. Policies compare (and hash) by identity. A policy is not a
    document: serialize :meth:`as_document` (msgspec, given the policy itself,
    would encode its internal fields, or fail on its stash once it has one).

    Attributes:
        name: the service name (``"*"`` for the default policy).
        endpoints: the service's base URLs, normalized without a trailing slash.
        known_endpoints: ``endpoints`` and every endpoint a section of the
            policy declares (:class:`DeclaresEndpoints`), normalized.
        max_body_bytes: the response body cap.
        follow_redirects: whether healkit follows redirects for this service.
        max_redirects: the most redirects one attempt follows.
        deadline_header: the header that carries the call's remaining
            milliseconds to the upstream (``None``: not sent).
        stash: plugin state derived from this policy (built once per
            configuration snapshot instead of once per call).
        call_limits: the attempt limits and the call deadline (seconds) the
            runtime's plugins give this service (``healkit_attempt_timeouts``,
            ``healkit_call_deadline``); ``None`` until the runtime first asks
            (``Runtime.call_limits``). The executor reads it once per call.

    """

    name: str
    _resolved: CoreServiceSettings
    # Copied from _resolved by __post_init__ (whatever is given): the call path
    # reads them as plain attributes.
    max_body_bytes: int = 0
    follow_redirects: bool = True
    max_redirects: int = 0
    deadline_header: str | None = None
    call_limits: tuple[Timeouts, float] | None = None
    _known: frozenset[str] | None = None
    _stash: Stash | None = None

    def __post_init__(self) -> None:
        """Copy the core's settings of the validated service document ``_resolved``."""
        core = self._resolved
        self.max_body_bytes = core.max_body_bytes
        self.follow_redirects = core.follow_redirects
        self.max_redirects = core.max_redirects
        self.deadline_header = core.deadline_header

    def __repr__(self) -> str:
        return f"ServicePolicy({self.name!r}, endpoints={self.endpoints!r})"

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The service's base URLs, normalized without a trailing slash."""
        return self._resolved.endpoints

    @property
    def known_endpoints(self) -> frozenset[str]:
        """``endpoints`` and every endpoint a section of the policy declares, normalized.

        Worked out on first use, like :attr:`stash`: a set is one more object
        per service for the garbage collector, and most services of a large
        document are never asked. Threads that ask at once get equal sets.
        """
        known = self._known
        if known is None:
            core = self._resolved
            declared = (
                e
                for value in (getattr(core, section) for section in core.section_names)
                if isinstance(value, DeclaresEndpoints)
                for e in value.declared_endpoints()
            )
            known = self._known = frozenset(self.endpoints).union(
                normalize_endpoint(e) for e in declared
            )
        return known

    @property
    def stash(self) -> Stash:
        """Plugin state derived from this policy; made on first use.

        Most services of a large document are never called: they get no stash,
        one object fewer for the garbage collector to visit per service. A
        kept policy is shared by two snapshots, so the loop (a call) and a
        worker thread (``healkit_prepare``) may ask at once: a lock makes sure
        they get the same stash.
        """
        stash = self._stash
        if stash is None:
            with _STASH_LOCK:
                stash = self._stash
                if stash is None:
                    stash = self._stash = Stash()
        return stash

    def same_as(self, core: CoreServiceSettings) -> bool:
        """Whether this policy was resolved from settings equal to ``core`` (so it can be kept)."""
        return type(core) is type(self._resolved) and core == self._resolved

    def section(self, section: ConfigSection[S]) -> S:
        """Return this service's settings for a plugin's section."""
        if section.name not in self._resolved.section_names:
            raise KeyError(section.name)
        return cast("S", getattr(self._resolved, section.name))

    def as_document(self) -> dict[str, Any]:
        """Return the policy as a plain document (every default filled in)."""
        doc: dict[str, Any] = {
            "endpoints": list(self.endpoints),
            "max_body_bytes": self.max_body_bytes,
            "follow_redirects": self.follow_redirects,
            "max_redirects": self.max_redirects,
        }
        for name in sorted(self._resolved.section_names):
            doc[name] = msgspec.to_builtins(getattr(self._resolved, name))
        return doc


_SERIALS: Final = itertools.count(1)
"""Numbers the snapshots of this process, so a diff says which snapshot it is against."""


@final
class ConfigChanges:
    """What a snapshot changed against the snapshot it was built from.

    :func:`build_config` given a ``previous`` snapshot keeps the
    :class:`ServicePolicy` object of every service whose resolved settings are
    equal in both (and so everything plugins derived and keep in its
    ``stash``). A plugin's ``healkit_configure`` asks
    :meth:`HealkitConfig.changes_since` for this, to do work in proportion to
    what changed instead of to the size of the document.

    Attributes:
        since: the serial number of the snapshot this one was compared with.
        services: names of the services added, removed or changed (a policy
            object that is not the previous one).
        defaults: whether the default policy changed (then every service
            without a document of its own changed too).
        state: whether the ``state`` settings changed.

    """

    __slots__ = ("defaults", "services", "since", "state")

    def __init__(
        self, *, since: int, services: frozenset[str], defaults: bool, state: bool
    ) -> None:
        self.since = since
        self.services = services
        self.defaults = defaults
        self.state = state

    def __repr__(self) -> str:
        return (
            f"ConfigChanges(services={len(self.services)}, defaults={self.defaults},"
            f" state={self.state})"
        )


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
        serial: a number unique to this snapshot in the process.
        stash: what plugins derive from the whole snapshot (``healkit_prepare``).

    """

    __slots__ = (
        "_by_prefix",
        "_changes",
        "_defaults_print",
        "_longest_prefix",
        "_prints",
        "defaults",
        "logging",
        "redactor",
        "sections",
        "serial",
        "services",
        "stash",
        "state",
    )

    def __init__(  # noqa: PLR0913 - keyword-only parts of one snapshot
        self,
        *,
        defaults: ServicePolicy,
        services: Mapping[str, ServicePolicy],
        logging: LoggingSettings,
        sections: tuple[ConfigSection[Any], ...],
        state: StateSettings | None = None,
        changes: ConfigChanges | None = None,
    ) -> None:
        self.serial = next(_SERIALS)
        self._changes = changes
        self.stash = Stash()
        self.defaults = defaults
        self.services = dict(services)
        self.logging = logging
        self.state = StateSettings() if state is None else state
        self.sections = sections
        self.redactor = Redactor(headers=logging.redact_headers, query=logging.redact_query)
        # Each endpoint names one service (build_config refuses a shared one).
        self._by_prefix = {e: name for name, p in self.services.items() for e in p.endpoints}
        self._longest_prefix = max(map(len, self._by_prefix), default=0)
        # What build_config validated, as fingerprints (bytes), so that the next
        # document validates only the services whose own document changed.
        self._defaults_print: bytes | None = None
        self._prints: dict[str, bytes] = {}

    def changes_since(self, previous: HealkitConfig | None) -> ConfigChanges | None:
        """Return what changed since ``previous``, or ``None`` if that is not known.

        Known when this snapshot was built from ``previous``
        (``build_config(..., previous=previous)``, which is how the runtime
        builds every document a source or :meth:`Runtime.apply` gives it); a
        plugin that gets ``None`` looks at every service.
        """
        changes = self._changes
        if previous is None or changes is None or changes.since != previous.serial:
            return None
        return changes

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
        """Return the service whose endpoint the absolute ``url`` starts with.

        The longest such endpoint wins (``https://gw/payments`` over
        ``https://gw``). An endpoint is a prefix of ``url`` that ends where
        ``url`` does or before a ``/``, ``?`` or ``#`` (:func:`url_under`):
        those prefixes, no longer than the longest endpoint, are looked up
        from the longest, a few dictionary look-ups whatever the number of
        services.
        """
        by_prefix = self._by_prefix
        if len(url) <= self._longest_prefix and (name := by_prefix.get(url)) is not None:
            return name
        end = min(len(url), self._longest_prefix + 1)
        while (
            end := max(url.rfind("/", 0, end), url.rfind("?", 0, end), url.rfind("#", 0, end))
        ) > 0:
            if (name := by_prefix.get(url[:end])) is not None:
                return name
        return None


def build_config(
    raw: object,
    sections: Iterable[ConfigSection[Any]] = (),
    *,
    origin: str = "python",
    previous: HealkitConfig | None = None,
) -> HealkitConfig:
    """Validate a whole document and return the snapshot it describes.

    Args:
        raw: the decoded document (a mapping), as parsed from JSON, YAML or TOML.
        sections: the plugin sections known to this runtime.
        origin: where the document came from, for error messages.
        previous: the snapshot in force, if any: the policy of each service
            whose resolved settings did not change is kept (the same object),
            and the snapshot records what changed (:class:`ConfigChanges`).
            Give it only when the plugins are those ``previous`` was
            configured with: what they derived for a kept policy stays.
            A service whose document and defaults are the same as in
            ``previous`` (same plain values: :func:`fingerprint`) is not
            validated again: its policy is kept as it is.

    Raises:
        ConfigError: listing every problem found, each with its path.

    """
    section_list = tuple(sorted(sections, key=lambda s: s.name))
    document, issues = validate(raw, _Document)
    defaults_part: object
    services_raw: Mapping[str, object]
    if document is not None:
        defaults_part, services_raw = document.defaults, document.services
        logging, state = document.logging, document.state
    else:
        # Keep going with the parts that have the right shape, so that one
        # pass reports the problems of every service too.
        defaults_part, services_raw = _salvage(raw)
        logging, state = LoggingSettings(), StateSettings()
    service_type = _service_type(section_list)

    defaults_print = _print(defaults_part)
    known_sections = frozenset(section.name for section in section_list)
    defaults_raw = _defaults_document(defaults_part, known_sections, issues)
    defaults_struct, found = validate(defaults_raw, service_type, path="$.defaults")
    inherit = _Defaults.of(defaults_raw, defaults_struct)
    issues += found
    kept = previous.services if previous is not None else {}
    kept_prints = (
        previous._prints  # noqa: SLF001 - the same module's snapshot
        if previous is not None
        and defaults_print is not None
        and previous._defaults_print == defaults_print  # noqa: SLF001
        and previous.sections == section_list
        else {}
    )
    defaults = (
        _policy("*", defaults_struct, previous and previous.defaults)
        if defaults_struct is not None
        else None
    )

    services: dict[str, ServicePolicy] = {}
    prints: dict[str, bytes] = {}
    for name, part in sorted(services_raw.items()):
        service_print = _print(part)
        if service_print is not None:
            prints[name] = service_print
            if kept_prints.get(name) == service_print:
                services[name] = kept[name]  # validated before, from the same values
                continue
        path = join_path("$.services", name)
        # Decoded just in time: one service's tree at a time, dropped once validated.
        doc = _opened(part, path, issues)
        if doc is None:
            continue
        doc = _without_missing_plugins(doc, path, known_sections, issues)
        struct, found = inherit.validate(doc, service_type, path)
        issues += found
        if struct is not None:
            services[name] = _policy(name, struct, kept.get(name))

    issues += _shared_endpoints(services, services_raw)
    if issues or defaults is None:
        raise ConfigError(issues, origin=origin)
    changes = None
    if previous is not None:
        changed = {name for name, policy in services.items() if kept.get(name) is not policy}
        changes = ConfigChanges(
            since=previous.serial,
            services=frozenset(changed.union(kept.keys() - services.keys())),
            defaults=defaults is not previous.defaults,
            state=state != previous.state,
        )
    config = HealkitConfig(
        defaults=defaults,
        services=services,
        logging=logging,
        sections=section_list,
        state=state,
        changes=changes,
    )
    config._defaults_print = defaults_print  # noqa: SLF001 - the same module's snapshot
    config._prints = prints  # noqa: SLF001
    return config


class _Defaults(NamedTuple):
    """The defaults that each service document is merged into."""

    raw: Mapping[str, Any]
    struct: CoreServiceSettings | None
    """The defaults validated; ``None`` when invalid (reported, and not merged)."""
    shared: frozenset[str]
    """The sections a service not writing them holds as the defaults' own object."""

    @classmethod
    def of(cls, raw: Mapping[str, Any], struct: CoreServiceSettings | None) -> _Defaults:
        """Return the defaults ``raw``, validated as ``struct``.

        A section is shared when none of its values changes in place (a
        ``list`` or a ``dict`` inside a frozen Struct would): one service
        changing it would change it for all.
        """
        shared = frozenset(
            name
            for name in (struct.section_names if struct is not None else ())
            if name in raw and _unchanging(getattr(struct, name))
        )
        return cls(raw, struct, shared)

    def validate(
        self, doc: Mapping[str, Any], service_type: type[CoreServiceSettings], path: str
    ) -> tuple[CoreServiceSettings | None, list[ConfigIssue]]:
        """Validate a service's ``doc`` merged into these defaults; report its issues.

        A section the service does not mention, among the shared ones, is the
        defaults' section as it is: it is not validated again, and every such
        service holds the defaults' one settings object instead of an equal
        copy of its own (10,000 services, one object per section, not 10,000
        for the garbage collector to count).
        """
        defaults = self.struct
        if defaults is None:
            return validate(doc, service_type, path=path)
        inherited = [key for key in self.raw if key not in doc and key in self.shared]
        base = {k: v for k, v in self.raw.items() if k not in inherited} if inherited else self.raw
        struct, found = validate(merge(base, doc), service_type, path=path)
        if struct is not None:
            for key in inherited:
                msgspec.structs.force_setattr(struct, key, getattr(defaults, key))
        return struct, found


def _defaults_document(
    part: object, known: Collection[str], issues: list[ConfigIssue]
) -> Mapping[str, Any]:
    """Return the ``defaults`` to validate and merge into each service; report what cannot be."""
    doc = _opened(part, "$.defaults", issues) or {}
    if "endpoints" in doc:
        issues.append(
            ConfigIssue("$.defaults.endpoints", "endpoints belong to a service, not to defaults")
        )
        doc = {k: v for k, v in doc.items() if k != "endpoints"}
    return _without_missing_plugins(doc, "$.defaults", known, issues)


def _without_missing_plugins(
    doc: Mapping[str, Any], path: str, known: Collection[str], issues: list[ConfigIssue]
) -> Mapping[str, Any]:
    """Report each section of a first-party plugin that is not installed; drop it.

    The generic "unknown key" would list the known keys; this says what to install.
    """
    missing = [key for key in doc if key in FIRST_PARTY_SECTIONS and key not in known]
    for key in missing:
        distribution, extra = FIRST_PARTY_SECTIONS[key]
        issues.append(
            ConfigIssue(
                path,
                f"section {key!r} belongs to the {distribution} plugin, which is not "
                f"installed (or is blocked): pip install 'healkit[{extra}]'",
            )
        )
    return {k: v for k, v in doc.items() if k not in missing} if missing else doc


def is_http_url(text: str) -> bool:
    """Whether ``text`` starts with the scheme ``http`` or ``https``, in any case.

    RFC 3986 (section 3.1): schemes are case-insensitive, so ``HTTP://h/x`` is
    ``http://h/x``. The one rule of what is an absolute URL, not a path, for
    every target healkit is given.
    """
    # The usual spelling first: one startswith; a path ("/api", every call by
    # service name) never reaches the regular expression.
    if text.startswith(("http://", "https://")):
        return True
    return text[:1] in ("h", "H") and _HTTP_SCHEME.match(text) is not None


def url_under(url: str, endpoint: str) -> bool:
    """Whether ``url`` is ``endpoint`` or below it (``/x`` is under ``/``, not ``/xy``)."""
    return url.startswith(endpoint) and (len(url) == len(endpoint) or url[len(endpoint)] in "/?#")


def _print(part: object) -> bytes | None:
    """Return the fingerprint of a part of a document (its bytes when it is :class:`Encoded`)."""
    return part.data if isinstance(part, Encoded) else fingerprint(part)


def _opened(part: object, path: str, issues: list[ConfigIssue]) -> Mapping[str, Any] | None:
    """Return a part of a document as a mapping (decoded if :class:`Encoded`), else report it."""
    doc = part.decode() if isinstance(part, Encoded) else part
    if isinstance(doc, Mapping):
        return cast("Mapping[str, Any]", doc)
    issues += validate(doc, dict[str, Any], path=path)[1]
    return None


def _salvage(raw: object) -> tuple[object, Mapping[str, object]]:
    """Return the defaults and the well-named services of an invalid document."""
    if not isinstance(raw, Mapping):
        return {}, {}
    services = raw.get("services")
    return (
        raw.get("defaults", {}),  # not a mapping: reported where it is opened
        {
            name: doc
            for name, doc in (services.items() if isinstance(services, Mapping) else ())
            if name_problem(name) is None
        },
    )


_UNCHANGING: Final = (
    str,
    bytes,
    int,
    float,
    complex,
    type(None),
    decimal.Decimal,
    uuid.UUID,
    dt.date,
    dt.time,
    dt.timedelta,
    enum.Enum,
)


def _unchanging(value: object) -> bool:
    """Whether ``value`` cannot change in place, whatever is inside it.

    Scalars, tuples, frozensets and frozen Structs of them cannot; a list, a
    dict, a set or any other object may (a frozen Struct may hold them).
    """
    if isinstance(value, _UNCHANGING):
        return True
    if isinstance(value, tuple | frozenset):
        return all(_unchanging(item) for item in value)
    if isinstance(value, msgspec.Struct) and value.__struct_config__.frozen:
        return all(_unchanging(getattr(value, name)) for name in value.__struct_fields__)
    return False


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
            gc=False,
            namespace={"section_names": frozenset(s.name for s in sections)},
        ),
    )


def _policy(
    name: str,
    struct: CoreServiceSettings,
    previous: ServicePolicy | None,
) -> ServicePolicy:
    """Return the policy of ``struct``: ``previous`` itself if resolved from equal settings."""
    if previous is not None and previous.same_as(struct):
        return previous
    return ServicePolicy(name, struct)


def _shared_endpoints(
    services: Mapping[str, ServicePolicy], order: Iterable[str]
) -> list[ConfigIssue]:
    """Report each service that names an endpoint of a service before it in ``order``.

    ``order`` is the document's own (its mapping's order; the etcd source
    gives its keys in the order they were created): the service named first
    keeps the endpoint, whichever name sorts first, so that an instance that
    starts judges as the instances that applied the writes one by one. A
    service refused so claims none of its endpoints: as for an instance that
    refused it when it was written, a service after it may name them.
    """
    owner: dict[str, str] = {}
    issues: list[ConfigIssue] = []
    for name in order:
        policy = services.get(name)
        if policy is None:
            continue
        taken = [endpoint for endpoint in policy.endpoints if endpoint in owner]
        issues.extend(
            ConfigIssue(
                join_path(join_path("$.services", name), "endpoints"),
                f"endpoint {endpoint} is also an endpoint of service {owner[endpoint]!r};"
                " absolute URLs could not be mapped to one service",
            )
            for endpoint in taken
        )
        if not taken:
            owner.update(dict.fromkeys(policy.endpoints, name))
    return issues


def normalize_endpoint(endpoint: str) -> str:
    """Return ``endpoint`` as healkit keeps it: as yarl writes it, no trailing ``/``.

    The path is kept as written (``%2F`` stays ``%2F``: decoded, it would
    name another resource), and a second URL is made only when a trailing
    ``/`` must go: configuration applies this to every endpoint of a document.
    """
    url = yarl.URL(endpoint)
    path = url.raw_path
    if len(path) > 1 and path.endswith("/"):
        url = url.with_path(path.rstrip("/"), encoded=True)
    return str(url).rstrip("/")
