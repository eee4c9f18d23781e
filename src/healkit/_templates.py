"""Degraded response templates: data with ``${name}`` placeholders, nothing else.

A template is the status, headers and body of a response built locally when a
service cannot answer. Placeholders are substituted from a fixed set of
variables (:data:`VARIABLES`) with :class:`string.Template`, which has no
attribute access, no indexing and no formatting language: a template cannot
reach anything but those values. A placeholder outside the set is a
configuration error, reported when the document is validated, not when the
service is down.

The body is either ``text`` (substituted as is) or ``json``: any JSON value
whose string leaves are substituted before the whole is encoded, so a value
can never break the JSON around it. Header values have control characters
removed after substitution, so no value can split a header.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Annotated, Any, Final, final

import msgspec

from healkit._config.models import HeaderName

__all__ = ["MAX_VARIABLE_LENGTH", "VARIABLES", "DegradedTemplate", "Rendered"]

VARIABLES: Final = frozenset({"service", "error_type", "timestamp", "retry_after", "request_id"})
"""The names a template may use: the service, the name of the error that made
the call fail (``ConnectError``...), the time (RFC 3339, UTC), the seconds
after which to retry (empty if unknown) and the request's ``X-Request-ID``
(empty if none)."""

MAX_VARIABLE_LENGTH: Final = 128
"""A value longer than this is cut: ``request_id`` comes from the caller's headers."""

_CONTROL: Final = dict.fromkeys(range(32)) | {127: None}
_MAX_BODY: Final = 64 * 1024

HeaderValue = Annotated[str, msgspec.Meta(max_length=1024)]


@final
class Rendered(msgspec.Struct, frozen=True, kw_only=True):
    """A template with its placeholders substituted: what the response is made of."""

    status: int
    headers: dict[str, str]
    body: bytes


@final
class DegradedTemplate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A degraded response: status, headers, and a ``text`` or ``json`` body.

    Attributes:
        status: the HTTP status of the degraded response (200 to 599).
        headers: response headers; values may use placeholders. A
            ``Content-Type`` is added when missing: ``application/json`` for a
            ``json`` body, ``text/plain; charset=utf-8`` otherwise.
        text: a text body (UTF-8), with placeholders.
        json: a JSON body: any JSON value; placeholders in its strings.

    """

    status: Annotated[int, msgspec.Meta(ge=200, le=599)] = 503
    headers: dict[HeaderName, HeaderValue] = msgspec.field(default_factory=dict)
    text: Annotated[str, msgspec.Meta(max_length=_MAX_BODY)] | None = None
    json: Any = None

    def __post_init__(self) -> None:
        """Reject a body of both kinds, and placeholders outside :data:`VARIABLES`."""
        if self.text is not None and self.json is not None:
            raise ValueError("give the body as text or as json, not both")
        if self.json is not None and len(msgspec.json.encode(self.json)) > _MAX_BODY:
            raise ValueError(f"the json body is longer than {_MAX_BODY} bytes")
        for where, pattern in self._patterns():
            template = string.Template(pattern)
            if not template.is_valid():
                raise ValueError(f"{where}: a '$' must start ${{name}} or be written $$")
            unknown = set(template.get_identifiers()) - VARIABLES
            if unknown:
                raise ValueError(
                    f"{where}: unknown placeholder(s) {', '.join(sorted(unknown))};"
                    f" known: {', '.join(sorted(VARIABLES))}"
                )

    def _patterns(self) -> list[tuple[str, str]]:
        found = [(f"headers.{name}", value) for name, value in self.headers.items()]
        if self.text is not None:
            found.append(("text", self.text))
        found.extend(("json", leaf) for leaf in _strings(self.json))
        return found

    def render(self, variables: Mapping[str, str]) -> Rendered:
        """Substitute ``variables`` (every name of :data:`VARIABLES`) and return the response.

        Raises:
            KeyError: a name of :data:`VARIABLES` is missing from ``variables``.

        """
        values = {name: _clean(variables[name]) for name in VARIABLES}
        headers = {
            name: string.Template(value).substitute(values).translate(_CONTROL)
            for name, value in self.headers.items()
        }
        if self.json is not None:
            body = msgspec.json.encode(_substitute(self.json, values))
            content_type = "application/json"
        else:
            body = string.Template(self.text or "").substitute(values).encode()
            content_type = "text/plain; charset=utf-8"
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = content_type
        return Rendered(status=self.status, headers=headers, body=body)


def _clean(value: str) -> str:
    return value[:MAX_VARIABLE_LENGTH]


def _strings(value: object) -> list[str]:
    """Every string in a JSON value (keys included), depth first."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in (*_strings(key), *_strings(item))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _substitute(value: object, values: Mapping[str, str]) -> object:
    if isinstance(value, str):
        return string.Template(value).substitute(values)
    if isinstance(value, dict):
        return {_substitute(key, values): _substitute(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, values) for item in value]
    return value
