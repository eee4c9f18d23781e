"""The demo's certificates: a CA, a server certificate, client certificates A and B.

Made with ``cryptography`` (it comes with healkit-tls, not with the core: it is
imported only when the tls plugin is installed and the demo makes them) in a
temporary directory that the demo removes at the end.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path
from typing import Any, Final, final

__all__ = ["CLIENT_CERTIFICATES", "TLS_RELOAD_INTERVAL", "Pki"]

TLS_RELOAD_INTERVAL: Final = 0.1
"""Seconds between two reads of the client certificate files by the tls plugin.

Its default is 10 s; in a demo of seconds the rotation must be picked up at once.
"""
CERTIFICATE_LIFETIME: Final = dt.timedelta(days=1)
"""How long the demo's certificates are valid (they are deleted at the end anyway)."""
CA_SUBJECT: Final = "healkit demo CA"
CLIENT_CERTIFICATES: Final = ("A", "B")
"""The client certificates made for the demo, in the order a rotation installs them."""


@final
class Pki:
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
