"""Decode configuration documents (JSON, YAML, TOML) into plain Python values.

Every failure, whatever the decoder, becomes a :class:`~healkit._errors.ConfigError`
at path ``$`` with a one-line reason that carries the line and column when the
decoder knows them; no decoder exception escapes. The result is only *decoded*:
checking it against a model is :func:`healkit._config_validate.validate`'s job.

Format notes:

- Text is UTF-8 (a leading byte order mark is tolerated); anything else is refused.
- YAML is loaded with PyYAML's safe loader (through ``msgspec.yaml``): tags that
  would construct Python objects (``!!python/object``, ``!!python/name``...) are
  refused. YAML 1.1 rules apply (``on``/``off``/``yes``/``no`` are booleans),
  anchors, aliases and ``<<`` merge keys work, and a key repeated in one mapping
  silently keeps its **last** value (PyYAML's behaviour). A stream of several
  documents is refused.
- JSON also keeps the last value of a repeated key. TOML refuses repeated keys.
- The top level must be a mapping (a JSON object, a YAML mapping, a TOML table).
"""

from __future__ import annotations

import errno
import os
import re
import tomllib
from pathlib import Path
from typing import Final, Literal, NoReturn, TypeAlias

import msgspec
import msgspec.yaml

from healkit._errors import ConfigError, ConfigIssue

__all__ = ["DocumentFormat", "format_for_path", "load_file", "parse_document"]

DocumentFormat: TypeAlias = Literal["json", "yaml", "toml"]

_SUFFIXES: Final[dict[str, DocumentFormat]] = {
    ".json": "json",
    ".toml": "toml",
    ".yaml": "yaml",
    ".yml": "yaml",
}
_FORMAT_NAMES: Final[dict[DocumentFormat, str]] = {"json": "JSON", "yaml": "YAML", "toml": "TOML"}
_JSON_BYTE: Final = re.compile(r" \(byte (\d+)\)$")
_MSGSPEC_LOCATION: Final = re.compile(r" - at `[^`]*`$")
_YAML_MARK: Final = re.compile(r'^\s*in "[^"]*", line (\d+), column (\d+)\s*$')
_BOM: Final = "\ufeff"
# A JSON number too large for a float (1e999) decodes to an infinity, as YAML's
# .inf does, so that validation names its path instead of msgspec's pathless
# "Number out of range".
_JSON_DECODER: Final = msgspec.json.Decoder(float_hook=float)


def parse_document(text: str | bytes, *, fmt: DocumentFormat, origin: str) -> object:
    """Decode one configuration document.

    Args:
        text: the document, as text or as UTF-8 bytes.
        fmt: its format.
        origin: where it came from (a file path, an etcd key), for error messages.

    Returns:
        The decoded document: a ``dict`` with ``str`` keys for well-formed input
        (YAML may also produce non-string keys; validation reports them).

    Raises:
        ConfigError: the bytes are not UTF-8, the syntax is invalid, or the top
            level is not a mapping.

    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            _fail(f"the document is not valid UTF-8: {exc.reason} at byte {exc.start}", origin)
    text = text.removeprefix(_BOM)
    name = _FORMAT_NAMES[fmt]
    try:
        document = _decode(text, fmt)
    except (msgspec.MsgspecError, tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
        _fail(f"invalid {name}: {_describe_error(exc, text, fmt)}", origin)
    except RecursionError:
        _fail(f"invalid {name}: the document is nested too deeply", origin)
    if not isinstance(document, dict):
        got = "null" if document is None else type(document).__name__
        _fail(f"the document must be an object/table at the top level, got {got}", origin)
    return document


def format_for_path(path: str | os.PathLike[str]) -> DocumentFormat:
    """Return the format of a configuration file from its suffix (case-insensitive).

    Raises:
        ConfigError: the suffix is not ``.json``, ``.yaml``, ``.yml`` or ``.toml``.

    """
    suffix = Path(path).suffix.lower()
    fmt = _SUFFIXES.get(suffix)
    if fmt is None:
        supported = ", ".join(sorted(_SUFFIXES))
        what = f"suffix {suffix!r}" if suffix else "no suffix"
        _fail(f"unsupported file type ({what}): use one of {supported}", os.fspath(path))
    return fmt


def load_file(path: str | os.PathLike[str]) -> object:
    """Read and decode a configuration file, choosing the format from its suffix.

    Raises:
        ConfigError: unsupported suffix, unreadable file (the reason names the OS
            error), or an invalid document; ``origin`` is the path.

    """
    origin = os.fspath(path)
    fmt = format_for_path(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        code = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
        detail = exc.strerror or type(exc).__name__
        _fail(f"cannot read the file: {detail}" + (f" ({code})" if code else ""), origin)
    return parse_document(data, fmt=fmt, origin=origin)


def _decode(text: str, fmt: DocumentFormat) -> object:
    """Run the decoder of ``fmt``; decoder exceptions propagate."""
    if fmt == "json":
        return _JSON_DECODER.decode(text.encode("utf-8"))
    if fmt == "yaml":
        return msgspec.yaml.decode(text)
    return tomllib.loads(text)


def _describe_error(exc: Exception, text: str, fmt: DocumentFormat) -> str:
    """One line saying what the decoder found wrong, and where."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, UnicodeError):
        return "the text cannot be encoded as UTF-8"
    if fmt == "json":
        message = _MSGSPEC_LOCATION.sub("", message)
        located = _JSON_BYTE.search(message)
        if located is not None:
            line, column = _line_column(text, int(located[1]))
            message = f"{message[: located.start()]} at line {line}, column {column}"
        return message.removeprefix("JSON is malformed: ")
    if fmt == "yaml":
        parts: list[str] = []
        for raw_line in message.splitlines():
            mark = _YAML_MARK.match(raw_line)
            if mark is not None and parts:
                parts[-1] += f" at line {mark[1]}, column {mark[2]}"
            elif raw_line.strip():
                parts.append(raw_line.strip())
        return ": ".join(parts) or message
    return message


def _line_column(text: str, byte_offset: int) -> tuple[int, int]:
    """1-based line and column of a UTF-8 byte offset into ``text``."""
    before = text.encode("utf-8")[:byte_offset].decode("utf-8", errors="replace")
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    return line, column


def _fail(reason: str, origin: str) -> NoReturn:
    """Raise the ConfigError of a document-level problem."""
    raise ConfigError([ConfigIssue("$", reason)], origin=origin)
