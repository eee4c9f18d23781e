"""The TLS plugin: per-service client contexts, checked rotation, expiry warnings."""

from __future__ import annotations

import asyncio
import math
import os
import ssl
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, final

import aiohttp
import anyio
import msgspec

import healkit
from healkit_tls._events import (
    TlsCertificateExpiring,
    TlsMaterialRejected,
    TlsRotated,
    TlsStatus,
    Trigger,
)
from healkit_tls._material import CertificateInfo, MaterialError, build, read, utc_now
from healkit_tls._settings import SECTION, TlsSettings

__all__ = ["ALLOW_INSECURE_ENV", "TlsPlugin", "certificate_problem"]

ALLOW_INSECURE_ENV: Final = "HEALKIT_TLS_ALLOW_INSECURE"
"""Set to ``1`` (or ``true``, ``yes``, ``on``) to let documents set ``verify = false``."""

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_DAY: Final = timedelta(days=1)
_CERTIFICATE_REASONS: Final = ("CERTIFICATE", "UNKNOWN_CA", "CERT_")
_RETRY_REASON: Final = "TLS material changed after a certificate failure"

_logger: Final = healkit.get_logger("healkit.tls")


@final
class _Material:
    """The live material of one distinct ``tls`` section, shared by the services using it.

    ``context`` is replaced by one assignment when new material passed its
    checks: attempts read it when they start, so a swap is atomic for them.
    """

    __slots__ = (
        "certificate",
        "context",
        "digest",
        "error",
        "generation",
        "next_check",
        "rejected",
        "services",
        "settings",
        "valid_from",
        "warned",
    )

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self.context: ssl.SSLContext | None = None
        self.certificate: CertificateInfo | None = None
        self.digest: bytes | None = None  # of the material in use
        self.rejected: bytes | None = None  # of the last material rejected
        self.valid_from: datetime | None = None  # when the rejected one becomes valid
        self.error: str | None = None
        self.generation = 0
        self.services: tuple[str, ...] = ()
        self.warned: int | None = None  # days_left of the last expiry warning
        self.next_check = -math.inf  # event-loop time of the next watch

    def __repr__(self) -> str:
        return f"<TLS material of {', '.join(self.services)} generation {self.generation}>"


@final
class _Slot:
    """What one service policy of one configuration snapshot uses.

    Attributes:
        material: the material its section describes (``None``: no TLS settings).
        previous: the context the service used before this snapshot, kept
            while ``material`` has none (its first load was rejected).

    """

    __slots__ = ("material", "previous")

    def __init__(self, material: _Material | None, previous: ssl.SSLContext | None) -> None:
        self.material = material
        self.previous = previous

    def context(self) -> ssl.SSLContext | None:
        material = self.material
        if material is None:
            return None
        return material.context or self.previous


_NO_TLS: Final = _Slot(None, None)


@final
class TlsPlugin:
    """Client TLS for every service, configured by the ``tls`` section.

    Args:
        allow_insecure: whether documents may turn verification off
            (``verify = false``). ``None`` (the default, and what the entry
            point uses) reads the ``HEALKIT_TLS_ALLOW_INSECURE`` environment
            variable. A document is not trusted to decide this: it may come
            from etcd, written by anyone with write access there.
        wall_clock: returns the current UTC time, for certificate validity and
            expiry (inject one in tests).

    One instance per runtime. Besides the hooks it offers :meth:`status`,
    :meth:`snapshot` and :meth:`reload`.

    """

    __slots__ = (
        "_active_key",
        "_config",
        "_materials",
        "_refused_key",
        "_reloaded_key",
        "_runtime",
        "_slot_key",
        "_slots",
        "_users",
        "_wake",
        "_wall_clock",
        "allow_insecure",
    )

    healkit_name = "tls"

    def __init__(
        self,
        *,
        allow_insecure: bool | None = None,
        wall_clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if allow_insecure is None:
            allow_insecure = os.environ.get(ALLOW_INSECURE_ENV, "").strip().lower() in _TRUE
        self.allow_insecure = allow_insecure
        self._wall_clock = wall_clock
        self._slot_key = healkit.StashKey[_Slot]("healkit_tls.slot")
        self._active_key = healkit.StashKey[frozenset[str]]("healkit_tls.active")
        self._reloaded_key = healkit.StashKey[bool]("healkit_tls.reloaded")
        self._refused_key = healkit.StashKey[bool]("healkit_tls.refused")
        self._materials: dict[TlsSettings, _Material] = {}
        # The slots of the services with TLS material ("*": the defaults), and the
        # services each material is used by, kept up to date per change.
        self._slots: dict[str, _Slot] = {}
        self._users: dict[_Material, set[str]] = {}
        self._config: healkit.HealkitConfig | None = None
        self._runtime: healkit.Runtime | None = None
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        return f"<TlsPlugin {len(self._materials)} materials>"

    # -- configuration -----------------------------------------------------------------

    @healkit.hookimpl
    def healkit_idle(self, config: healkit.HealkitConfig) -> bool:
        """Whether no service asks for TLS settings (then the hooks stay out of the plan)."""
        active = config.stash.get(self._active_key)  # None: healkit_prepare failed
        return not (_active(config) if active is None else active)

    @healkit.hookimpl
    def healkit_prepare(self, config: healkit.HealkitConfig) -> None:
        """Note the services with TLS settings ("*": the defaults), off the event loop."""
        config.stash[self._active_key] = _active(config)

    @healkit.hookimpl
    def healkit_config_sections(self) -> Sequence[healkit.ConfigSection[Any]]:
        """Contribute the ``tls`` section."""
        return (SECTION,)

    @healkit.hookimpl
    def healkit_configure(self, config: healkit.HealkitConfig, runtime: healkit.Runtime) -> None:
        """Give every service policy of the snapshot its material.

        Material whose section is unchanged is kept as it is (with its context
        and its watch); new sections are loaded now. A service whose new
        material is rejected keeps the context it had. Only the services with
        TLS settings that the snapshot changed are looked at
        (:meth:`healkit.HealkitConfig.changes_since`).
        """
        self._runtime = runtime
        before, self._config = self._config, config
        changes = config.changes_since(before)
        active = config.stash.get(self._active_key)
        if active is None:  # healkit_prepare failed
            active = config.stash[self._active_key] = _active(config)
        # A policy without TLS settings gets its (empty) slot on its first call;
        # only the services with TLS settings, now or before, are looked at here.
        slots = self._slots
        names: set[str]
        if changes is None:
            names = set(active).union(slots)
            old_slots, self._slots = slots, {}
            old_materials, self._materials = self._materials, {}
            self._users = {}
        else:
            changed = changes.services | ({"*"} if changes.defaults else set())
            names = {n for n in active if n in changed} | {n for n in slots if n in changed}
            old_slots = {name: slots.pop(name) for name in names if name in slots}
            old_materials = self._materials
        affected: set[_Material] = set()
        fresh: list[_Material] = []
        for name in sorted(names):
            old = old_slots.get(name)
            if old is not None and old.material is not None:
                self._users.get(old.material, set()).discard(name)
                affected.add(old.material)
            policy = config.defaults if name == "*" else config.services.get(name)
            if policy is None or name not in active:
                continue
            slot = self._slot(policy, old, old_materials, fresh)
            if slot.material is not None:
                self._slots[name] = slot
                self._users.setdefault(slot.material, set()).add(name)
                affected.add(slot.material)
        for material in affected:
            users = self._users.get(material)
            material.services = tuple(sorted(users or ()))  # "*" (the defaults) first
            if not users:
                self._users.pop(material, None)
                self._materials.pop(material.settings, None)
        for material in fresh:
            self._refresh(material, "config")
        self._wake.set()

    def _slot(
        self,
        policy: healkit.ServicePolicy,
        old: _Slot | None,
        old_materials: dict[TlsSettings, _Material],
        fresh: list[_Material],
    ) -> _Slot:
        """Give ``policy`` (with TLS settings) its slot: its material, new if its settings are."""
        settings = self._permitted(policy.name, policy.section(SECTION))
        material = self._materials.get(settings) or old_materials.get(settings)
        if material is None:
            material = _Material(settings)
            fresh.append(material)
        self._materials[settings] = material
        slot = _Slot(material, old.context() if old is not None else None)
        policy.stash[self._slot_key] = slot
        return slot

    def _permitted(self, service: str, settings: TlsSettings) -> TlsSettings:
        """Return ``settings``, with verification back on unless turning it off is permitted."""
        if settings.verify or self.allow_insecure:
            return settings
        reason = (
            "verify = false is not permitted in this process (TlsPlugin(allow_insecure=True)"
            f" or {ALLOW_INSECURE_ENV}=1 permits it); verification stays on"
        )
        _logger.error(
            "healkit.tls_insecure_refused", services=(service,), trigger="config", reason=reason
        )
        self._emit(
            TlsMaterialRejected(
                services=(service,), trigger="config", reason=reason, kept_previous=True
            )
        )
        return msgspec.structs.replace(settings, verify=True)

    # -- lifecycle -------------------------------------------------------------------------

    @healkit.hookimpl
    def healkit_startup(self, runtime: healkit.Runtime) -> None:
        """Start watching the material files and the certificates' expiry."""
        self._runtime = runtime
        self._wake = asyncio.Event()
        runtime.start_background("tls-watch", self._watch)

    async def _watch(self) -> None:
        """Re-read due material (files compared by content hash) and check expiry."""
        while True:
            self._wake.clear()
            now = anyio.current_time()
            for material in list(self._materials.values()):
                if material.next_check <= now:
                    material.next_check = now + material.settings.reload_interval
                    if material.settings.files or material.valid_from is not None:
                        self._refresh(material, "watch")
                    self._check_expiry(material)
            due = min((m.next_check for m in self._materials.values()), default=math.inf)
            with anyio.move_on_after(max(due - anyio.current_time(), 0.0)):
                await self._wake.wait()

    # -- the pipeline ------------------------------------------------------------------------

    @healkit.hookimpl
    def healkit_pre_request(
        self, call: healkit.CallContext, attempt: healkit.AttemptContext
    ) -> None:
        """Give the attempt the service's current context (new connections use it).

        Refuses the attempt with ``TLSError`` when the service has TLS settings
        but no valid material was ever loaded for them.
        """
        slot = call.policy.stash.get(self._slot_key) or self._late_slot(call.policy)
        material = slot.material
        if material is None:
            return
        context = material.context or slot.previous
        if context is None:
            attempt.stash[self._refused_key] = True
            raise healkit.TLSError(
                f"no valid TLS material for service {call.service!r}:"
                f" {material.error or 'not loaded yet'}"
            )
        attempt.ssl = context

    @healkit.hookimpl(tryfirst=True)
    def healkit_on_error(
        self,
        call: healkit.CallContext,
        attempt: healkit.AttemptContext,
        error: healkit.HealkitError,
    ) -> healkit.RetryDecision | None:
        """After a certificate failure, re-read the material; retry once if it changed.

        The re-read is synchronous (hooks must not await): a few small local
        files, read and hashed in microseconds. The retry is made at once
        (``RetryDecision.again(0)``), at most once per call.
        """
        if not isinstance(error, healkit.TransportError):
            return None
        if attempt.stash.get(self._refused_key):
            return healkit.RetryDecision.stop("no valid TLS material")
        used = attempt.ssl
        slot = call.policy.stash.get(self._slot_key)
        if used is None or slot is None or slot.material is None:
            return None
        if call.stash.get(self._reloaded_key) or not certificate_problem(error):
            return None
        call.stash[self._reloaded_key] = True
        material = slot.material
        if material.context is used and material.settings.files:
            self._refresh(material, "handshake_failure")
        current = slot.context()
        if current is None or current is used:
            return None
        _logger.info(
            "healkit.tls_retry",
            service=call.service,
            attempt=attempt.number,
            generation=material.generation,
        )
        return healkit.RetryDecision.again(0.0, reason=_RETRY_REASON)

    # -- loading -------------------------------------------------------------------------------

    def _refresh(self, material: _Material, trigger: Trigger) -> bool:
        """Read ``material`` again; check and swap it in if it changed. Return whether it did."""
        settings = material.settings
        try:
            loaded = read(
                ca_file=settings.ca_file,
                ca_pem=settings.ca_pem,
                cert_file=settings.cert_file,
                cert_pem=settings.cert_pem,
                key_file=settings.key_file,
                key_pem=settings.key_pem,
            )
        except MaterialError as error:
            self._reject(material, trigger, error.reason)
            return False
        now = self._wall_clock()
        if loaded.digest == material.digest:
            return False
        if loaded.digest == material.rejected and (
            material.valid_from is None or now < material.valid_from
        ):
            return False
        try:
            built = build(
                loaded,
                minimum_version=settings.minimum_version,
                verify=settings.verify,
                check_client_chain=settings.check_client_chain,
                password=self._password(settings),
                now=now,
            )
        except MaterialError as error:
            material.rejected = loaded.digest
            material.valid_from = error.valid_from
            self._reject(material, trigger, error.reason, force=True)
            return False
        previous = material.certificate
        material.context = built.context
        material.certificate = built.certificate
        material.digest = loaded.digest
        material.rejected = material.valid_from = material.error = None
        material.generation += 1
        material.warned = None
        certificate = built.certificate
        event = TlsRotated(
            services=material.services,
            trigger=trigger,
            generation=material.generation,
            subject=certificate.subject if certificate else None,
            not_after=certificate.not_after if certificate else None,
            fingerprint=certificate.fingerprint if certificate else None,
            previous_fingerprint=previous.fingerprint if previous else None,
        )
        _logger.info(
            "healkit.tls_rotated",
            services=event.services,
            trigger=trigger,
            generation=event.generation,
            subject=event.subject,
            not_after=event.not_after.isoformat() if event.not_after else None,
            fingerprint=event.fingerprint,
            previous_fingerprint=event.previous_fingerprint,
        )
        self._emit(event)
        self._check_expiry(material)
        return True

    def _password(self, settings: TlsSettings) -> bytes | None:
        name = settings.key_password_env
        if name is None:
            return None
        value = os.environ.get(name)
        if value is None:
            raise MaterialError(f"key_password_env: the environment variable {name} is not set")
        return value.encode("utf-8")

    def _reject(
        self, material: _Material, trigger: Trigger, reason: str, *, force: bool = False
    ) -> None:
        """Report rejected material, once per distinct reason unless ``force``."""
        if not force and reason == material.error:
            return
        material.error = reason
        kept = material.context is not None or any(
            slot.previous is not None for slot in self._slots.values() if slot.material is material
        )
        _logger.error(
            "healkit.tls_material_rejected",
            services=material.services,
            trigger=trigger,
            reason=reason,
            kept_previous=kept,
        )
        self._emit(
            TlsMaterialRejected(
                services=material.services, trigger=trigger, reason=reason, kept_previous=kept
            )
        )

    def _check_expiry(self, material: _Material) -> None:
        certificate = material.certificate
        window = material.settings.expiry_warning_days
        if certificate is None or window == 0:
            return
        left = certificate.not_after - self._wall_clock()
        if left > timedelta(days=window):
            return
        days = math.floor(left / _DAY)
        if material.warned == days:
            return
        material.warned = days
        event = TlsCertificateExpiring(
            services=material.services,
            subject=certificate.subject,
            not_after=certificate.not_after,
            days_left=days,
            fingerprint=certificate.fingerprint,
        )
        _logger.warning(
            "healkit.tls_certificate_expiring",
            services=event.services,
            subject=event.subject,
            not_after=event.not_after.isoformat(),
            days_left=days,
            fingerprint=event.fingerprint,
        )
        self._emit(event)

    def _emit(self, event: object) -> None:
        if self._runtime is not None:
            self._runtime.emit(event)

    def _late_slot(self, policy: healkit.ServicePolicy) -> _Slot:
        """Return the slot of a policy ``healkit_configure`` did not see (and remember it)."""
        settings = policy.section(SECTION)
        material = None
        if settings.active:
            material = self._materials.get(self._permitted(policy.name, settings))
        slot = _Slot(material, None) if material is not None else _NO_TLS
        policy.stash[self._slot_key] = slot
        return slot

    @healkit.hookimpl
    def healkit_tls_context(self, service: str) -> ssl.SSLContext | None:
        """Give connections healkit opens itself (routing's probes) the service's context."""
        return self.context(service)

    # -- the read API ----------------------------------------------------------------------------

    def reload(self) -> tuple[TlsStatus, ...]:
        """Re-read every material now (an operator's "rotate now"); return the statuses.

        Changed material is checked and swapped in as by the watcher; rejected
        material is reported and the context in use stays.
        """
        for material in list(self._materials.values()):
            self._refresh(material, "reload")
        return self.snapshot()

    def context(self, service: str) -> ssl.SSLContext | None:
        """Return the TLS context attempts of ``service`` use now (``None``: aiohttp's default).

        For code that connects to a service's endpoints outside a call; other
        plugins get it through the ``healkit_tls_context`` hook.
        """
        config = self._config
        if config is None:
            return None
        slot = self._slots.get(config.policy(service).name)
        return None if slot is None else slot.context()

    def status(self, service: str) -> TlsStatus | None:
        """Return the TLS status of ``service``, or ``None`` if it has no TLS settings."""
        config = self._config
        if config is None:
            return None
        policy = config.policy(service)
        slot = self._slots.get(policy.name)
        if slot is None or slot.material is None:
            return None
        return self._status(service, slot)

    def snapshot(self) -> tuple[TlsStatus, ...]:
        """Return the status of every policy with TLS settings, sorted by service."""
        return tuple(
            self._status(name, slot)
            for name, slot in sorted(self._slots.items())
            if slot.material is not None
        )

    def _status(self, service: str, slot: _Slot) -> TlsStatus:
        material = slot.material
        assert material is not None  # noqa: S101 - callers check
        settings = material.settings
        certificate = material.certificate
        days: int | None = None
        expiring = False
        if certificate is not None:
            left = certificate.not_after - self._wall_clock()
            days = math.floor(left / _DAY)
            window = settings.expiry_warning_days
            expiring = window > 0 and left <= timedelta(days=window)
        sources = tuple(
            f"{name}={path}" if path is not None else f"{name[:-5]}_pem=inline"
            for name, path, inline in (
                ("ca_file", settings.ca_file, settings.ca_pem),
                ("cert_file", settings.cert_file, settings.cert_pem),
                ("key_file", settings.key_file, settings.key_pem),
            )
            if path is not None or inline is not None
        )
        return TlsStatus(
            service=service,
            active=slot.context() is not None,
            generation=material.generation,
            subject=certificate.subject if certificate else None,
            not_after=certificate.not_after if certificate else None,
            days_left=days,
            expiring=expiring,
            fingerprint=certificate.fingerprint if certificate else None,
            sources=sources,
            verify=settings.verify,
            minimum_version=settings.minimum_version,
            error=material.error,
        )


def _active(config: healkit.HealkitConfig) -> frozenset[str]:
    """Return the names of the policies of ``config`` with TLS settings ("*": the defaults)."""
    policies = (config.defaults, *config.services.values())
    return frozenset(policy.name for policy in policies if policy.section(SECTION).active)


def certificate_problem(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a certificate failure of a TLS handshake.

    True for a failed verification of the server's certificate (untrusted,
    expired, wrong host name) and for the server's alerts about the client's
    certificate (required, bad, unknown CA, expired...), which TLS 1.3 may
    deliver only after the handshake looked complete.
    """
    seen: set[int] = set()
    stack: list[BaseException] = [error]
    while stack:
        exc = stack.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLCertVerificationError):
            return True
        if isinstance(exc, ssl.SSLError):
            text = f"{exc.reason or ''} {exc}".upper()
            if any(marker in text for marker in _CERTIFICATE_REASONS):
                return True
        linked: list[BaseException | None] = [exc.__cause__, exc.__context__]
        if isinstance(exc, aiohttp.ClientConnectorError):
            linked.append(exc.os_error)
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            linked.append(exc.certificate_error)
        stack.extend(found for found in linked if found is not None)
    return False
