"""What the TLS plugin tells the world: rotations, rejections, expiry warnings, status.

Events are emitted to ``healkit_event`` subscribers (``runtime.emit``) and
logged; they carry public facts only (subjects, dates, fingerprints, file
paths), never PEM text, key bytes or passphrases.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, final

import msgspec

__all__ = ["TlsCertificateExpiring", "TlsMaterialRejected", "TlsRotated", "TlsStatus", "Trigger"]

Trigger = Literal["config", "watch", "handshake_failure", "reload"]
"""What made the plugin (re)load material: a new configuration document, the
file watcher, a certificate failure during a handshake, or :meth:`TlsPlugin.reload`."""


@final
class TlsRotated(msgspec.Struct, frozen=True, kw_only=True):
    """New material was checked and swapped in; new attempts use it.

    Attributes:
        services: the services that use this material (``"*"``: the defaults).
        trigger: what loaded it.
        generation: 1 for the first material, then one more per rotation.
        subject: the client certificate's subject (``None`` without one).
        not_after: when the client certificate expires.
        fingerprint: SHA-256 of the client certificate, in hexadecimal.
        previous_fingerprint: the fingerprint of the certificate it replaced.

    """

    services: tuple[str, ...]
    trigger: Trigger
    generation: int
    subject: str | None
    not_after: datetime | None
    fingerprint: str | None
    previous_fingerprint: str | None


@final
class TlsMaterialRejected(msgspec.Struct, frozen=True, kw_only=True):
    """Material failed a check and was not used.

    Attributes:
        services: the services that use this material.
        trigger: what loaded it.
        reason: what is wrong (never the material itself).
        kept_previous: whether a previous, valid context stays in use (else
            the services' attempts are refused with ``TLSError`` until valid
            material arrives).

    """

    services: tuple[str, ...]
    trigger: Trigger
    reason: str
    kept_previous: bool


@final
class TlsCertificateExpiring(msgspec.Struct, frozen=True, kw_only=True):
    """The client certificate in use expires within ``expiry_warning_days``.

    Emitted when the certificate enters the warning window and then at most
    once a day (each time ``days_left`` goes down), until it is rotated.

    Attributes:
        services: the services that use it.
        subject: its subject.
        not_after: when it expires (UTC).
        days_left: whole days left (0 on its last day; negative once expired).
        fingerprint: SHA-256 of the certificate, in hexadecimal.

    """

    services: tuple[str, ...]
    subject: str
    not_after: datetime
    days_left: int
    fingerprint: str


@final
class TlsStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The TLS material of one service as it is now (``TlsPlugin.status``).

    Attributes:
        service: the service (``"*"``: the defaults).
        active: whether a context is in use (``False``: attempts are refused).
        generation: how many times its material was loaded successfully.
        subject: the client certificate's subject, if any.
        not_after: when it expires.
        days_left: whole days left before it expires.
        expiring: whether it is inside the warning window.
        fingerprint: SHA-256 of the certificate in use.
        sources: where the material comes from (``cert_file=/path``, ``cert_pem=inline``).
        verify: whether the server's certificate and host name are verified.
        minimum_version: the lowest TLS version allowed.
        error: the last rejection's reason, if the latest material was rejected.

    """

    service: str
    active: bool
    generation: int
    subject: str | None
    not_after: datetime | None
    days_left: int | None
    expiring: bool
    fingerprint: str | None
    sources: tuple[str, ...]
    verify: bool
    minimum_version: str
    error: str | None
