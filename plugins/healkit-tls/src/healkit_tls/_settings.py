"""The ``tls`` section of a service document, and its static validation.

Only what a document says on its own is checked here (which keys go together,
that inline PEM parses, that an inline key matches an inline certificate).
Whatever depends on the time or on files (expiry, file contents, the chain
against the CA bundle) is checked when the material is loaded, so that one
certificate expiring never makes every later document invalid.

No check echoes PEM text: reasons name the key, never its value.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal, final

import msgspec

import healkit
from healkit.plugin import SECRET, secret_fields
from healkit_tls._material import MaterialError, check_inline

__all__ = ["SECTION", "MinimumVersion", "TlsSettings"]

MinimumVersion = Literal["1.2", "1.3"]
"""The lowest TLS version a connection may use."""

MAX_PEM_CHARS: Final = 1024 * 1024
MAX_PATH_CHARS: Final = 4096
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REDACTED: Final = "[REDACTED]"

Pem = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PEM_CHARS)]
FilePath = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PATH_CHARS)]


@final
class TlsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``tls`` section of a service document.

    Every field has a safe default; ``docs/plugins/tls.md`` gives the reason
    for each. A service whose section is all defaults is left alone: its
    connections use aiohttp's default context (the system's CAs, hostname
    verification, TLS 1.2 or later).

    Attributes:
        ca_file: absolute path of a PEM bundle of the CAs trusted for the
            server's certificate (instead of the system's).
        ca_pem: the same bundle inline (from etcd, say).
        cert_file: absolute path of the client certificate (PEM, leaf first,
            then intermediates), for mutual TLS.
        cert_pem: the same inline.
        key_file: absolute path of the client certificate's private key (PEM).
        key_pem: the same inline.
        key_password_env: the name of an environment variable holding the
            key's passphrase (never the passphrase itself).
        minimum_version: ``"1.2"`` or ``"1.3"``.
        verify: verify the server's certificate and host name. ``false`` is
            refused unless the process permits it locally.
        check_client_chain: when a CA bundle is given, require the client
            certificate to chain to it.
        expiry_warning_days: warn this many days before the client
            certificate expires (0: never).
        reload_interval: seconds between two reads of the material files.

    """

    ca_file: FilePath | None = None
    ca_pem: Pem | None = None
    cert_file: FilePath | None = None
    cert_pem: Pem | None = None
    key_file: FilePath | None = None
    key_pem: Annotated[Pem, SECRET] | None = None
    key_password_env: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    minimum_version: MinimumVersion = "1.2"
    verify: bool = True
    check_client_chain: bool = True
    expiry_warning_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 14
    reload_interval: Annotated[float, msgspec.Meta(gt=0, le=24 * 3600.0)] = 10.0

    def __post_init__(self) -> None:
        """Check what one field alone cannot say (without echoing any PEM)."""
        for name in ("ca", "cert", "key"):
            if getattr(self, f"{name}_file") is not None and getattr(self, f"{name}_pem"):
                raise ValueError(f"give {name}_file or {name}_pem, not both")
            path = getattr(self, f"{name}_file")
            if path is not None and not path.startswith("/"):
                raise ValueError(
                    f"{name}_file must be an absolute path: a document may be applied by"
                    " processes with different working directories"
                )
        if self.has_cert != self.has_key:
            raise ValueError("a client certificate needs its key, and a key its certificate")
        if self.key_password_env is not None:
            if not self.has_key:
                raise ValueError("key_password_env is set but no key is configured")
            if not _ENV_NAME.fullmatch(self.key_password_env):
                raise ValueError("key_password_env must be an environment variable name")
        try:
            check_inline(
                ca=self.ca_pem,
                cert=self.cert_pem,
                key=self.key_pem,
                encrypted=self.key_password_env is not None,
            )
        except MaterialError as error:
            raise ValueError(error.reason) from None

    def __repr__(self) -> str:
        """Show the fields as msgspec does, an inline key as ``[REDACTED]``."""
        shown = ", ".join(f"{name}={value!r}" for name, value in self.__rich_repr__())
        return f"{type(self).__name__}({shown})"

    def __rich_repr__(self) -> list[tuple[str, object]]:
        """Return each field's ``(name, value)``, an inline key redacted (rich's pretty-print).

        msgspec's own ``repr`` (and ``__rich_repr__``) shows every field, the
        private key's PEM included: a test's assertion message, a debugger or
        a pretty-printed policy would show the key.
        """
        secret = secret_fields(type(self))
        return [
            (name, _REDACTED if name in secret and value is not None else value)
            for name, value in ((name, getattr(self, name)) for name in self.__struct_fields__)
        ]

    @property
    def has_cert(self) -> bool:
        """Whether a client certificate is configured (file or inline)."""
        return self.cert_file is not None or self.cert_pem is not None

    @property
    def has_key(self) -> bool:
        """Whether a private key is configured (file or inline)."""
        return self.key_file is not None or self.key_pem is not None

    @property
    def active(self) -> bool:
        """Whether the section asks for anything beyond aiohttp's default context."""
        return (
            self.ca_file is not None
            or self.ca_pem is not None
            or self.has_cert
            or self.minimum_version != "1.2"
            or not self.verify
        )

    @property
    def files(self) -> tuple[str, ...]:
        """The material files, to watch."""
        return tuple(p for p in (self.ca_file, self.cert_file, self.key_file) if p is not None)


SECTION: Final = healkit.ConfigSection(
    "tls", TlsSettings, doc="client TLS: CA bundle, client certificate, minimum version"
)
"""The ``tls`` section; read it with ``policy.section(SECTION)``."""
