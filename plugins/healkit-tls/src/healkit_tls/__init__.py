"""healkit-tls: client TLS per service, rotated without restarts.

Configure per service (or under ``defaults``) in the ``tls`` section::

    [services.payments.tls]
    ca_file = "/etc/payments/ca.pem"        # trust this CA bundle for the server
    cert_file = "/etc/payments/client.pem"  # mutual TLS: the client certificate...
    key_file = "/etc/payments/client.key"   # ...and its key
    minimum_version = "1.2"

Material comes from files (re-read every ``reload_interval`` seconds and
compared by content hash) or inline PEM in the document (``ca_pem``,
``cert_pem``, ``key_pem``: from etcd, say). New material is checked (the key
belongs to the certificate, the certificate is valid now and chains to the CA
bundle), then swapped in: new attempts use the new context, requests in flight
finish on their connections, and pooled connections of the old context are not
reused. Rejected material is reported (:class:`TlsMaterialRejected`) and the
context in use stays. A certificate failure during a handshake makes the plugin
re-read the material at once and, if it changed, retry once.

Events (emitted to ``healkit_event`` and logged): :class:`TlsRotated`,
:class:`TlsMaterialRejected`, :class:`TlsCertificateExpiring`. Read API:
:meth:`TlsPlugin.status`, :meth:`TlsPlugin.snapshot`, :meth:`TlsPlugin.reload`.

Order: plain on ``healkit_pre_request`` (it only sets ``attempt.ssl``);
``tryfirst`` on ``healkit_on_error``, so that its one retry after a rotation is
the decision carried out rather than the retry plugin's backoff.
"""

from __future__ import annotations

from healkit_tls._events import (
    TlsCertificateExpiring,
    TlsMaterialRejected,
    TlsRotated,
    TlsStatus,
    Trigger,
)
from healkit_tls._material import CertificateInfo
from healkit_tls._plugin import ALLOW_INSECURE_ENV, TlsPlugin, certificate_problem
from healkit_tls._settings import SECTION, MinimumVersion, TlsSettings

__all__ = [
    "ALLOW_INSECURE_ENV",
    "SECTION",
    "CertificateInfo",
    "MinimumVersion",
    "TlsCertificateExpiring",
    "TlsMaterialRejected",
    "TlsPlugin",
    "TlsRotated",
    "TlsSettings",
    "TlsStatus",
    "Trigger",
    "certificate_problem",
]
