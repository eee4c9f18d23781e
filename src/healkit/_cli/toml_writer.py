"""TOML output of ``healkit config get --format toml``.

The standard library reads TOML (``tomllib``) but does not write it; the
documents healkit stores are plain data (mappings, lists, strings, numbers,
booleans), which this small writer covers: tables for mappings, arrays of
tables for lists of mappings, inline values for everything else.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from healkit._cli.args import CommandError

__all__ = ["toml_dumps"]

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


def toml_dumps(document: Mapping[str, Any]) -> str:
    """Write a decoded document as TOML (tables for mappings, inline arrays).

    Raises:
        CommandError: the document holds a null, which TOML cannot represent.

    """
    lines: list[str] = []
    _toml_table(document, [], lines, header=False)
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_table(
    table: Mapping[str, Any], path: list[str], lines: list[str], *, header: bool
) -> None:
    def is_table_array(value: object) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)

    scalars = [
        (k, v) for k, v in table.items() if not isinstance(v, dict) and not is_table_array(v)
    ]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    arrays = [(k, v) for k, v in table.items() if is_table_array(v)]
    if header and (scalars or not (tables or arrays)):
        lines += ["", f"[{_toml_dotted(path)}]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v, [*path, k])}" for k, v in scalars]
    for key, value in tables:
        _toml_table(value, [*path, key], lines, header=True)
    for key, items in arrays:
        for item in items:
            lines += ["", f"[[{_toml_dotted([*path, key])}]]"]
            _toml_table(item, [*path, key], lines, header=False)


def _toml_dotted(path: Sequence[str]) -> str:
    return ".".join(_toml_key(part) for part in path)


def _toml_key(key: object) -> str:
    text = str(key)
    return text if _BARE_KEY.fullmatch(text) else _toml_string(text)


def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: object, path: Sequence[str]) -> str:  # noqa: PLR0911 - one return per type
    if value is None:
        raise CommandError(f"TOML has no null: {'.'.join(path)} is null; use --format json")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v, path) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(
            f"{_toml_key(k)} = {_toml_value(v, [*path, k])}" for k, v in value.items()
        )
        return "{" + items + "}"
    return _toml_string(str(value))
