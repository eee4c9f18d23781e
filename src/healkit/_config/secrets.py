"""Secret settings: marked once in a section's settings type, redacted wherever they are shown.

A plugin marks a field of its settings secret in the field's type,
``key_pem: Annotated[str, SECRET] | None = None``; healkit reads the mark
back from the type. The settings' ``repr`` (:func:`secret_fields`) and the
command line (``healkit config get`` and the other commands that print
documents, :func:`redact_document`) use this one notion, so no list of
secret names is kept anywhere else.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import msgspec
import msgspec.inspect

from healkit._config.models import ConfigSection
from healkit._config.validate import join_path
from healkit._redact import REDACTED

__all__ = [
    "REDACTED",
    "SECRET",
    "SecretPath",
    "redact_document",
    "redacted_paths",
    "secret_fields",
    "secret_paths",
    "section_secrets",
]

_MARK: Final = "healkit_secret"
SECRET: Final = msgspec.Meta(extra={_MARK: True})
"""Marks a settings field secret: ``Annotated[str, SECRET]``.

Its value is shown as ``[REDACTED]`` by the settings' ``repr`` (with
:func:`secret_fields`) and by the ``healkit config`` commands, unless asked
for in clear (``--raw``); a document that holds ``[REDACTED]`` there is
refused by ``healkit config push``.
"""
_ANY: Final = "*"
"""In a :data:`SecretPath`, any item of a list or any value of a mapping."""

SecretPath = tuple[str, ...]
"""The keys from a section's settings to a secret value; ``"*"`` stands for any item."""


@functools.cache
def secret_paths(settings: type[msgspec.Struct]) -> tuple[SecretPath, ...]:
    """Return the paths of the secret values inside ``settings`` (a msgspec Struct type).

    Fields marked with :data:`SECRET`, also inside nested Structs, optional
    values, lists and mappings of them.
    """
    return tuple(_walk(msgspec.inspect.type_info(settings), (), frozenset()))


def secret_fields(settings: type[msgspec.Struct]) -> frozenset[str]:
    """Return the names of the fields of ``settings`` that are marked :data:`SECRET`."""
    return frozenset(path[0] for path in secret_paths(settings) if len(path) == 1)


def _walk(
    info: msgspec.inspect.Type, path: SecretPath, seen: frozenset[type[Any]]
) -> Iterator[SecretPath]:
    """Yield the secret paths under ``info``, reached at ``path``."""
    if isinstance(info, msgspec.inspect.Metadata) and (info.extra or {}).get(_MARK) is True:
        yield path
        return
    if isinstance(info, msgspec.inspect.StructType):
        if info.cls in seen:  # a recursive type: its paths are those of its first level
            return
        seen |= {info.cls}
    for inner, at in _parts(info, path):
        yield from _walk(inner, at, seen)


def _parts(
    info: msgspec.inspect.Type, path: SecretPath
) -> list[tuple[msgspec.inspect.Type, SecretPath]]:
    """Return the types inside ``info``, each with its path."""
    if isinstance(info, msgspec.inspect.Metadata):
        return [(info.type, path)]
    if isinstance(info, msgspec.inspect.StructType):
        return [(field.type, (*path, field.encode_name)) for field in info.fields]
    if isinstance(info, msgspec.inspect.UnionType):
        return [(member, path) for member in info.types]
    items: tuple[msgspec.inspect.Type, ...] = ()
    if isinstance(info, msgspec.inspect.DictType):
        items = (info.value_type,)
    elif isinstance(info, msgspec.inspect.CollectionType):
        items = (info.item_type,)
    elif isinstance(info, msgspec.inspect.TupleType):
        items = info.item_types
    return [(item, (*path, _ANY)) for item in items]


def section_secrets(sections: Sequence[ConfigSection[Any]]) -> dict[str, tuple[SecretPath, ...]]:
    """Return the secret paths of each section that has any, by section name."""
    found: dict[str, tuple[SecretPath, ...]] = {}
    for section in sections:
        settings: type[msgspec.Struct] = section.settings
        paths = secret_paths(settings)
        if paths:
            found[section.name] = paths
    return found


def redact_document(document: object, secrets: Mapping[str, Sequence[SecretPath]]) -> object:
    """Return a copy of a service's or the defaults' ``document``, secret values redacted.

    ``secrets`` is :func:`section_secrets`' result. A secret that is absent
    or ``null`` stays so (nothing is hidden there); any other value becomes
    :data:`REDACTED`. Whatever does not have the settings' shape is left as it is.
    """
    if not isinstance(document, Mapping):
        return document
    shown = dict(document)
    for section, paths in secrets.items():
        if section in shown:
            for path in paths:
                shown[section] = _redact_at(shown[section], path)
    return shown


def _redact_at(value: object, path: SecretPath) -> object:
    if not path:
        return value if value is None else REDACTED
    key, rest = path[0], path[1:]
    if isinstance(value, Mapping):
        if key == _ANY:
            return {k: _redact_at(v, rest) for k, v in value.items()}
        if key in value:
            return {**value, key: _redact_at(value[key], rest)}
    elif isinstance(value, list) and key == _ANY:
        return [_redact_at(item, rest) for item in value]
    return value


def redacted_paths(
    document: object, secrets: Mapping[str, Sequence[SecretPath]], path: str = "$"
) -> list[str]:
    """Return the paths (from ``path``) of the secrets of ``document`` that hold :data:`REDACTED`.

    Such a document was printed with its secrets hidden: written back, it
    would put the marker in place of each secret.
    """
    found: list[str] = []
    if isinstance(document, Mapping):
        for section, paths in secrets.items():
            for secret in paths:
                found += _marked(document.get(section), secret, join_path(path, section))
    return found


def _marked(value: object, path: SecretPath, where: str) -> list[str]:
    if not path:
        return [where] if value == REDACTED else []
    key, rest = path[0], path[1:]
    if isinstance(value, Mapping):
        items = value.items() if key == _ANY else [(key, value.get(key))]
        return [p for k, v in items for p in _marked(v, rest, join_path(where, str(k)))]
    if isinstance(value, list) and key == _ANY:
        return [p for i, v in enumerate(value) for p in _marked(v, rest, join_path(where, i))]
    return []
