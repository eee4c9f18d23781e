"""Removing secrets from what healkit logs, traces and puts in error messages.

Redacted: the headers ``Authorization``, ``Proxy-Authorization``, ``Cookie``,
``Set-Cookie`` and configured names; URL userinfo (``user:pass@``); the values
of query parameters that carry signatures, tokens or credentials (built-in
names below, plus configured ones). Names compare case-insensitively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final, final

import yarl

__all__ = ["REDACTED", "URL_REDACTED", "Redactor", "without_userinfo"]

REDACTED: Final = "[REDACTED]"
URL_REDACTED: Final = "REDACTED"
"""The replacement of secret query values (no characters that need percent-encoding)."""

SECRET_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})

SECRET_QUERY: Final = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "auth",
        "client_secret",
        "code",
        "credential",
        "key",
        "password",
        "passwd",
        "refresh_token",
        "secret",
        "sig",
        "signature",
        "token",
        "x-amz-credential",
        "x-amz-security-token",
        "x-amz-signature",
        "x-goog-credential",
        "x-goog-signature",
    }
)


_AUTHORITY_END: Final = re.compile(r"[/?#]")

URL_CACHE_SIZE: Final = 256
"""URL strings whose redacted form a :class:`Redactor` remembers."""


@final
class Redactor:
    """Redacts headers and URLs; built from the ``logging`` config section."""

    __slots__ = ("_headers", "_query", "_urls")

    def __init__(self, *, headers: Iterable[str] = (), query: Iterable[str] = ()) -> None:
        self._headers = SECRET_HEADERS | {h.lower() for h in headers}
        self._query = SECRET_QUERY | {q.lower() for q in query}
        # Redacted forms of the URL strings seen last (endpoints, mostly): every
        # failed attempt logs its endpoint, and parsing it again costs a microsecond.
        self._urls: dict[str, str] = {}

    def header_is_secret(self, name: str) -> bool:
        """Whether the header ``name`` is redacted."""
        return name.lower() in self._headers

    def headers(
        self, headers: Mapping[str, str], *, also: frozenset[str] = frozenset()
    ) -> dict[str, str]:
        """Return a copy of ``headers`` with secret values replaced.

        ``also``: more secret names, in lower case (a service's credential headers).
        """
        secret = self._headers | also if also else self._headers
        return {k: REDACTED if k.lower() in secret else v for k, v in headers.items()}

    def url(self, url: str | yarl.URL) -> str:
        """Return ``url`` without userinfo and with secret query values replaced."""
        if isinstance(url, str):
            known = self._urls.get(url)
            if known is None:
                if len(self._urls) >= URL_CACHE_SIZE:
                    self._urls.clear()
                known = self._urls[url] = self._redact_url(yarl.URL(url))
            return known
        return self._redact_url(url)

    def _redact_url(self, parsed: yarl.URL) -> str:
        if parsed.user is not None or parsed.password is not None:
            parsed = parsed.with_user(None)
        if parsed.query_string and any(k.lower() in self._query for k in parsed.query):
            parsed = parsed.with_query(
                [
                    (k, URL_REDACTED if k.lower() in self._query else v)
                    for k, v in parsed.query.items()
                ]
            )
        return str(parsed)


def without_userinfo(text: str) -> str:
    """Return the URL ``text`` without the userinfo (``user:pass@``) of its authority.

    Works on the text, so also on a URL that does not parse (the one an error
    message is about): the authority is what follows ``scheme://`` (or the
    start, without a scheme) up to the first ``/``, ``?`` or ``#``, and its
    userinfo all of it up to its last ``@``.
    """
    scheme_end = text.find("://")
    start = 0 if scheme_end < 0 else scheme_end + 3
    end = _AUTHORITY_END.search(text, start)
    at = text.rfind("@", start, len(text) if end is None else end.start())
    return text if at < 0 else text[:start] + text[at + 1 :]
