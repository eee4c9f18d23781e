"""TLS material: read it, check it, and build an ``ssl.SSLContext`` from it.

Pure functions, no plugin state. Every failure is a :class:`MaterialError`
whose reason names the part that is wrong and never contains PEM text, key
bytes or a passphrase (only public facts: subjects, dates, fingerprints).

Python's ``ssl`` module loads a certificate and its key only from a file. The
material that was read and checked is therefore handed to it through an
anonymous in-memory file (``memfd_create``: nothing reaches a disk) or, where
that does not exist, a private temporary file removed at once. Either way the
context is built from exactly the bytes that were checked, never from a file
re-read afterwards (which could have changed between the two reads).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import ssl
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, final

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

__all__ = [
    "Built",
    "CertificateInfo",
    "Loaded",
    "MaterialError",
    "build",
    "check_inline",
    "read",
]

MAX_CHAIN_DEPTH: Final = 10
MAX_FILE_BYTES: Final = 1024 * 1024
_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_PRIVATE_KEY_BLOCK: Final = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")


class MaterialError(Exception):
    """TLS material that cannot be used, and why (never with the material itself).

    Attributes:
        reason: what is wrong, naming the part (``cert_file``, ``key_pem``...).
        valid_from: for a certificate that is not valid yet, when it becomes
            valid (the same material may be tried again then).

    """

    def __init__(self, reason: str, *, valid_from: datetime | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.valid_from = valid_from


@final
class Loaded:
    """The bytes of one service's material, as read, and their digest.

    Attributes:
        ca: the CA bundle (PEM), if configured.
        cert: the client certificate chain (PEM), if configured.
        key: the private key (PEM), if configured.
        digest: SHA-256 over the three, to tell whether anything changed.

    """

    __slots__ = ("ca", "cert", "digest", "key")

    def __init__(self, ca: bytes | None, cert: bytes | None, key: bytes | None) -> None:
        self.ca = ca
        self.cert = cert
        self.key = key
        digest = hashlib.sha256()
        for part in (ca, cert, key):
            if part is None:
                digest.update(b"-")
            else:
                digest.update(len(part).to_bytes(8, "big"))
                digest.update(part)
        self.digest = digest.digest()

    def __repr__(self) -> str:  # never the bytes
        return f"<Loaded {self.digest.hex()[:12]}>"


@final
class CertificateInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Public facts about a client certificate (safe to log and to show).

    Attributes:
        subject: the subject, as an RFC 4514 string.
        issuer: the issuer, as an RFC 4514 string.
        serial: the serial number, in hexadecimal.
        not_before: start of validity (UTC).
        not_after: end of validity (UTC).
        fingerprint: SHA-256 of the certificate (DER), in hexadecimal.

    """

    subject: str
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    fingerprint: str


@final
class Built:
    """A checked context, and the client certificate it presents (if any)."""

    __slots__ = ("certificate", "context")

    def __init__(self, context: ssl.SSLContext, certificate: CertificateInfo | None) -> None:
        self.context = context
        self.certificate = certificate


def read(  # noqa: PLR0913 - one path or inline PEM per part, all keyword-only
    *,
    ca_file: str | None,
    ca_pem: str | None,
    cert_file: str | None,
    cert_pem: str | None,
    key_file: str | None,
    key_pem: str | None,
) -> Loaded:
    """Read the material from its files and the document.

    Raises:
        MaterialError: a file cannot be read, or is larger than 1 MiB.

    """
    return Loaded(
        _part("ca_file", ca_file, ca_pem),
        _part("cert_file", cert_file, cert_pem),
        _part("key_file", key_file, key_pem),
    )


def _part(name: str, path: str | None, inline: str | None) -> bytes | None:
    if path is None:
        return None if inline is None else inline.encode("utf-8")
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise MaterialError(
            f"cannot read {name} {path}: {error.strerror or type(error).__name__}"
        ) from None
    if len(data) > MAX_FILE_BYTES:
        raise MaterialError(f"{name} {path} is larger than {MAX_FILE_BYTES} bytes")
    return data


def build(  # noqa: PLR0913 - the settings a context is made of, all keyword-only
    loaded: Loaded,
    *,
    minimum_version: str,
    verify: bool,
    check_client_chain: bool,
    password: bytes | None,
    now: datetime,
) -> Built:
    """Check ``loaded`` and build the client context it describes.

    Checks: the CA bundle and the certificate chain parse; the key parses (with
    ``password``) and belongs to the certificate; the certificate is valid at
    ``now``; with a CA bundle and ``check_client_chain``, the certificate
    chains to one of its CAs, each link valid at ``now``.

    Raises:
        MaterialError: the material fails a check, or OpenSSL refuses it.

    """
    roots = _certificates("ca", loaded.ca) if loaded.ca is not None else None
    certificate: CertificateInfo | None = None
    if loaded.cert is not None:
        chain = _certificates("client certificate", loaded.cert)
        leaf = chain[0]
        if loaded.key is None:
            raise MaterialError("a client certificate needs its key")
        key = _private_key(loaded.key, password)
        _check_pair(leaf, key)
        _check_valid("client certificate", leaf, now)
        if roots is not None and check_client_chain:
            _check_chain(leaf, chain[1:], roots, now)
        certificate = describe(leaf)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = _VERSIONS[minimum_version]
    try:
        if verify:
            context.check_hostname = True
            context.verify_mode = ssl.CERT_REQUIRED
            if loaded.ca is not None:
                context.load_verify_locations(cadata=loaded.ca.decode("ascii", "replace"))
            else:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if loaded.cert is not None and loaded.key is not None:
            _load_chain(context, loaded.cert, loaded.key, password)
    except ssl.SSLError as error:
        raise MaterialError(f"OpenSSL refused the material: {error.reason or error}") from None
    return Built(context, certificate)


def check_inline(*, ca: str | None, cert: str | None, key: str | None, encrypted: bool) -> None:
    """Check what can be checked of inline PEM without a clock or files.

    Raises:
        MaterialError: a part does not parse, or the key does not match the certificate.

    """
    if ca is not None:
        _certificates("ca_pem", ca.encode("utf-8"))
    leaf = _certificates("cert_pem", cert.encode("utf-8"))[0] if cert is not None else None
    if key is None:
        return
    data = key.encode("utf-8")
    if encrypted:
        if not _PRIVATE_KEY_BLOCK.search(data):
            raise MaterialError("key_pem: no PEM private key found")
        return
    private = _private_key(data, None, name="key_pem")
    if leaf is not None:
        _check_pair(leaf, private)


def describe(certificate: x509.Certificate) -> CertificateInfo:
    """Return the public facts of ``certificate``."""
    return CertificateInfo(
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        serial=format(certificate.serial_number, "x"),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
    )


def utc_now() -> datetime:
    """Return the wall-clock time in UTC (certificates are dated in wall-clock time)."""
    return datetime.now(UTC)


# -- checks ---------------------------------------------------------------------------


def _certificates(name: str, data: bytes) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise MaterialError(f"{name}: no valid PEM certificate found") from None
    if not found:  # pragma: no cover - cryptography raises instead
        raise MaterialError(f"{name}: no PEM certificate found")
    return found


def _private_key(data: bytes, password: bytes | None, *, name: str = "key") -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password)
    except TypeError:
        if password is None:
            raise MaterialError(
                f"{name}: the key is encrypted; name the variable holding its passphrase"
                " in key_password_env"
            ) from None
        raise MaterialError(
            f"{name}: a passphrase was given but the key is not encrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        wrong = " (or the passphrase is wrong)" if password is not None else ""
        raise MaterialError(f"{name}: not a usable PEM private key{wrong}") from None


def _spki(key: object) -> bytes:
    public_bytes: Callable[..., bytes] = key.public_bytes  # type: ignore[attr-defined]
    return public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_pair(leaf: x509.Certificate, key: PrivateKeyTypes) -> None:
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise MaterialError(
            "the private key does not belong to the client certificate"
            f" ({leaf.subject.rfc4514_string()})"
        )


def _check_valid(name: str, certificate: x509.Certificate, now: datetime) -> None:
    subject = certificate.subject.rfc4514_string()
    if now < certificate.not_valid_before_utc:
        raise MaterialError(
            f"{name} {subject} is not valid before {certificate.not_valid_before_utc.isoformat()}",
            valid_from=certificate.not_valid_before_utc,
        )
    if now > certificate.not_valid_after_utc:
        raise MaterialError(
            f"{name} {subject} expired on {certificate.not_valid_after_utc.isoformat()}"
        )


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _check_chain(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    roots: list[x509.Certificate],
    now: datetime,
) -> None:
    """Walk from ``leaf`` through ``intermediates`` to one of ``roots`` by signatures."""
    if leaf in roots:
        return  # a pinned self-signed client certificate
    current = leaf
    pool = list(intermediates)
    for _ in range(MAX_CHAIN_DEPTH):
        for root in roots:
            if _issued_by(current, root):
                _check_valid("CA certificate", root, now)
                return
        for candidate in pool:
            if _issued_by(current, candidate):
                _check_valid("intermediate certificate", candidate, now)
                pool.remove(candidate)
                current = candidate
                break
        else:
            raise MaterialError(
                "the client certificate does not chain to the CA bundle"
                f" (no CA for issuer {current.issuer.rfc4514_string()}); add the issuing"
                " CA or set check_client_chain = false if the server trusts another CA"
            )
    raise MaterialError(f"the client certificate chain is longer than {MAX_CHAIN_DEPTH}")


# -- loading into OpenSSL ---------------------------------------------------------------


def _no_prompt() -> bytes:
    # Without a password callback OpenSSL would prompt on the terminal.
    raise MaterialError("the key is encrypted and no passphrase was given")


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes, password: bytes | None) -> None:
    with _private_file(cert.rstrip(b"\n") + b"\n" + key) as path:
        context.load_cert_chain(path, password=password if password is not None else _no_prompt)


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    """Yield the path of a file holding ``data``, readable by this process only."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("healkit-tls", os.MFD_CLOEXEC)
        try:
            _write_all(fd, data)
            path = f"/proc/self/fd/{fd}"
            if Path(path).exists():
                yield path
                return
        finally:
            os.close(fd)
    with tempfile.TemporaryDirectory(prefix="healkit-tls-") as directory:  # mode 0700
        path = str(Path(directory) / "material.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        yield path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
