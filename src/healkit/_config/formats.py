"""Decode configuration documents (JSON, YAML, TOML) into plain Python values.

Every failure, whatever the decoder, becomes a :class:`~healkit._errors.ConfigError`
at path ``$`` with a one-line reason that carries the line and column when the
decoder knows them; no decoder exception escapes. The result is only *decoded*:
checking it against a model is :func:`healkit._config.validate.validate`'s job.

Format notes:

- Text is UTF-8 (a leading byte order mark is tolerated); anything else is refused.
- YAML needs PyYAML, the extra ``yaml`` (``pip install 'healkit[yaml]'``); without
  it a YAML document is a ConfigError saying so. It is loaded with PyYAML's
  safe loader (see :mod:`healkit._config.yaml_format`): tags that
  would construct Python objects (``!!python/object``, ``!!python/name``...) are
  refused. YAML 1.1 rules apply (``on``/``off``/``yes``/``no`` are booleans),
  anchors, aliases and ``<<`` merge keys work (a key written in a mapping
  overrides the one it merges). A stream of several documents is refused.
- A key repeated in one mapping is refused in every format, with the path of
  the repeated key: a document that says ``"attempts": 1`` and ``"attempts": 5``
  means two things (JSON and YAML decoders would keep the last; TOML refuses
  it itself, with the line and column).
- The top level must be a mapping (a JSON object, a YAML mapping, a TOML table).

Limits (:class:`DocumentLimits`): a configuration document comes from a file or
from etcd, and whoever can write there must not be able to stall or exhaust the
process that reads it. Its size is checked before anything is decoded (a file is
never read past the limit); YAML is composed node by node with the expansion of
each alias counted, so a "billion laughs" document is refused long before any
value is built; and every format is refused past a nesting depth and a number of
nodes (each mapping key, each value, each container counts one), and an
integer of more digits than Python reads from decimal text (4,300) is refused
in any base (a YAML base-60 ``1:2:3`` costs quadratic time to build). The decoding
is CPU work of up to a second for a document at the limits: the sources run it
in a worker thread, never on the event loop.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Final, Literal, NoReturn, TypeAlias, final

import msgspec

from healkit._config.compact import compacted, encoded
from healkit._config.validate import join_path
from healkit._errors import ConfigError, ConfigIssue

__all__ = [
    "DEFAULT_LIMITS",
    "DocumentFormat",
    "DocumentLimits",
    "format_for_path",
    "load_file",
    "parse_compact",
    "parse_document",
    "read_file",
]

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
_BOM: Final = "\ufeff"
_MIB: Final = 1024 * 1024
# A JSON number too large for a float (1e999) decodes to an infinity, as YAML's
# .inf does, so that validation names its path instead of msgspec's pathless
# "Number out of range".
_JSON_DECODER: Final = msgspec.json.Decoder(float_hook=float)
# A JSON object whose values are left undecoded (checked for syntax only).
_JSON_OUTLINE: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
# A key of a JSON object ends with a quote, maybe blanks, and a colon.
_JSON_KEY_END: Final = b'":'
_JSON_BLANKS: Final = b" \t\n\r"
_SERVICE_DEPTH: Final = 3
"""How deep a service's document lies: the document, ``services``, the service."""
# Python refuses to read a decimal integer of more digits than this: the
# conversion is quadratic (CVE-2020-10735). Other spellings escape that limit
# (YAML 1.1's base 60, ``1:2:3``, costs quadratic time too; TOML's and YAML's
# hexadecimal, octal and binary do not, but build integers as large), so every
# integer of a document is held to it, whatever its base.
MAX_INT_DIGITS: Final = sys.int_info.default_max_str_digits
_MAX_INT_BITS: Final = math.ceil(MAX_INT_DIGITS * math.log2(10))


@final
class DocumentLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What one configuration document may cost to decode; beyond, it is refused.

    Limits are set locally (on :class:`~healkit.FileSource` or
    :class:`~healkit.etcd.EtcdSource`), never by a document: a document cannot
    raise its own limits.

    Attributes:
        max_bytes: the size of the document in bytes (UTF-8), checked before it
            is decoded, and of the text its YAML aliases may expand to. 1 MiB
            by default: a real document is a few KiB (one
            etcd key per service) to a few hundred KiB (a file with thousands of
            services), and etcd itself refuses values above 1.5 MiB by default.
        max_depth: how deeply values may nest (the top-level mapping is level
            1). 64 by default; the deepest path of healkit's own schema is
            under 10 levels.
        max_nodes: how many values the decoded document may hold, counting
            each mapping key, each value and each container, after YAML
            aliases are expanded. 250,000 by default: more than any document
            within ``max_bytes`` needs (a 1 MiB document of real configuration
            holds about 100,000), and it keeps alias expansion, validation and
            every later walk of the document bounded.

    """

    max_bytes: int = _MIB
    max_depth: int = 64
    max_nodes: int = 250_000

    def __post_init__(self) -> None:
        """Refuse limits that are not positive integers."""
        for name in ("max_bytes", "max_depth", "max_nodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


DEFAULT_LIMITS: Final = DocumentLimits()
"""The limits of a source that is given none."""


class _LimitExceededError(Exception):
    """A document goes beyond its :class:`DocumentLimits`; the message says how."""


class _DuplicateKeyError(Exception):
    """A key appears twice in one mapping of a document."""

    def __init__(self, path: str, key: str) -> None:
        super().__init__(path, key)
        self.path = path
        self.key = key

    def issue(self) -> ConfigIssue:
        """Return the issue that reports it."""
        return ConfigIssue(
            self.path,
            f"duplicate key {self.key!r}: it appears more than once in the same mapping,"
            " and only one of its values can be meant",
        )


def parse_document(
    text: str | bytes,
    *,
    fmt: DocumentFormat,
    origin: str,
    limits: DocumentLimits = DEFAULT_LIMITS,
) -> object:
    """Decode one configuration document within ``limits``.

    This is CPU work proportional to the document (up to about a second at the
    default limits): call it off the event loop.

    Args:
        text: the document, as text or as UTF-8 bytes.
        fmt: its format.
        origin: where it came from (a file path, an etcd key), for error messages.
        limits: what the document may cost; it is refused beyond.

    Returns:
        The decoded document: a ``dict`` with ``str`` keys for well-formed input
        (YAML may also produce non-string keys; validation reports them).

    Raises:
        ConfigError: the document is larger, deeper or holds more nodes than
            ``limits`` allow, the bytes are not UTF-8, the syntax is invalid,
            or the top level is not a mapping.

    """
    return _parse(text, fmt=fmt, origin=origin, limits=limits, compact=False)


def _parse(
    text: str | bytes, *, fmt: DocumentFormat, origin: str, limits: DocumentLimits, compact: bool
) -> object:
    """Do :func:`parse_document`'s work; see :func:`_decode` for ``compact``."""
    text = _text(text, origin, limits)
    name = _FORMAT_NAMES[fmt]
    decode_errors: tuple[type[Exception], ...] = (
        msgspec.MsgspecError,
        tomllib.TOMLDecodeError,
        ValueError,
        TypeError,
    )
    if fmt == "yaml":
        require_yaml(origin)
        from healkit._config.yaml_format import YAMLError  # noqa: PLC0415 - PyYAML: only for YAML

        decode_errors = (*decode_errors, YAMLError)
    try:
        document = _decode(text, fmt, limits, compact=compact)
    except _LimitExceededError as exc:
        _fail(str(exc), origin)
    except _DuplicateKeyError as exc:
        raise ConfigError([exc.issue()], origin=origin) from None
    except decode_errors as exc:
        _fail(f"invalid {name}: {_describe_error(exc, text, fmt)}", origin)
    except RecursionError:
        _fail(_too_deep(limits), origin)
    if not isinstance(document, dict):
        got = "null" if document is None else type(document).__name__
        _fail(f"the document must be an object/table at the top level, got {got}", origin)
    return document


def parse_compact(
    text: str | bytes,
    *,
    fmt: DocumentFormat,
    origin: str,
    limits: DocumentLimits = DEFAULT_LIMITS,
) -> object:
    """Decode one configuration document within ``limits``, into its compact form.

    The result is :func:`parse_document`'s, :func:`~healkit._config.compact.compacted`.
    A JSON or YAML document's services are decoded one at a time, each encoded
    and its tree dropped before the next: a large document never exists as one
    tree (which the garbage collector would promote, and then walk, while it is
    decoded). Any document this cannot take so (JSON: not an object with
    ``services`` an object, beyond ``limits``, invalid, a key that may be
    repeated; YAML: see :func:`~healkit._config.yaml_format.load_yaml`) is
    decoded whole, which gives the same result or the same error. A TOML
    document is decoded whole.

    Raises:
        ConfigError: as :func:`parse_document`.

    """
    if fmt == "json":
        compact = _json_compact(text, origin, limits)
        if compact is not None:
            return compact
    return compacted(_parse(text, fmt=fmt, origin=origin, limits=limits, compact=fmt == "yaml"))


def _json_compact(text: str | bytes, origin: str, limits: DocumentLimits) -> object | None:
    """Decode a JSON document service by service, or ``None`` to decode it whole."""
    if limits.max_depth < _SERVICE_DEPTH:
        return None
    try:
        data = _text(text, origin, limits).encode("utf-8")
        outline = _JSON_OUTLINE.decode(data)
        part = outline.get("services")
        services = None if part is None else _JSON_OUTLINE.decode(part)
        if services is None:
            return None
        keys = len(outline) + len(services)
        tally = _Tally(nodes=2 + keys)  # the two mappings and their keys
        document: dict[str, object] = {}
        for key, value in outline.items():
            if key != "services":
                decoded = _JSON_DECODER.decode(value)
                _check_shape(decoded, limits, tally, depth=2)
                document[key] = decoded
        compact: dict[str, object] = {}
        for name, value in services.items():
            decoded = _JSON_DECODER.decode(value)
            _check_shape(decoded, limits, tally, depth=_SERVICE_DEPTH)
            compact[name] = encoded(decoded)
    except (ConfigError, _LimitExceededError, msgspec.MsgspecError, RecursionError):
        return None  # decoded whole, which says why
    if tally.nodes > limits.max_nodes or _may_repeat_keys(data, keys + tally.keys):
        return None
    document["services"] = compact
    return compacted(document)  # the defaults, and copies of the other parts


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


YAML_MISSING: Final = (
    "YAML support is not installed: install it with pip install 'healkit[yaml]'"
    " (or use a .json or .toml document)"
)
"""The reason of the ConfigError raised when a YAML document is met without PyYAML."""


def require_yaml(origin: str) -> None:
    """Make sure YAML can be read and written: PyYAML is the optional extra ``yaml``.

    Raises:
        ConfigError: PyYAML is not installed (the reason says how to install
            it); ``origin`` names what needed YAML.

    """
    try:
        import yaml  # noqa: F401, PLC0415 - imported once, only when YAML is used
    except ImportError:
        _fail(YAML_MISSING, origin)


def read_file(path: str | os.PathLike[str], *, limits: DocumentLimits = DEFAULT_LIMITS) -> bytes:
    """Read a configuration file's bytes, never more than ``limits.max_bytes`` (+1 to tell).

    Raises:
        ConfigError: the file cannot be read (the reason names the OS error) or
            is larger than ``limits.max_bytes``; ``origin`` is the path.

    """
    origin = os.fspath(path)
    try:
        with Path(path).open("rb") as file:
            data = file.read(limits.max_bytes + 1)
            if len(data) > limits.max_bytes:
                _fail(_too_large(max(os.fstat(file.fileno()).st_size, len(data)), limits), origin)
    except OSError as exc:
        code = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
        detail = exc.strerror or type(exc).__name__
        _fail(f"cannot read the file: {detail}" + (f" ({code})" if code else ""), origin)
    return data


def load_file(path: str | os.PathLike[str], *, limits: DocumentLimits = DEFAULT_LIMITS) -> object:
    """Read and decode a configuration file, choosing the format from its suffix.

    Like :func:`parse_document`, this is CPU work: call it off the event loop.

    Raises:
        ConfigError: unsupported suffix, unreadable file (the reason names the OS
            error), a document beyond ``limits``, or an invalid document;
            ``origin`` is the path.

    """
    fmt = format_for_path(path)
    data = read_file(path, limits=limits)
    return parse_document(data, fmt=fmt, origin=os.fspath(path), limits=limits)


def _text(text: str | bytes, origin: str, limits: DocumentLimits) -> str:
    """Return the document's text, once its size (UTF-8 bytes) is within ``limits``.

    Raises:
        ConfigError: it is larger than ``limits.max_bytes``, or not UTF-8.

    """
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        _fail(_too_large(size, limits), origin)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            _fail(f"the document is not valid UTF-8: {exc.reason} at byte {exc.start}", origin)
    return text.removeprefix(_BOM)


def _decode(text: str, fmt: DocumentFormat, limits: DocumentLimits, *, compact: bool) -> object:
    """Run the decoder of ``fmt`` within ``limits``; decoder exceptions propagate.

    With ``compact``, a YAML document's services may come :class:`Encoded`
    (see :func:`~healkit._config.yaml_format.load_yaml`).
    """
    if fmt == "yaml":
        from healkit._config.yaml_format import load_yaml  # noqa: PLC0415 - PyYAML: only for YAML

        return load_yaml(text, limits, compact=compact)
    if fmt == "toml":  # tomllib refuses a repeated key itself
        document: object = tomllib.loads(text)
        _check_shape(document, limits, _Tally())
        return document
    data = text.encode("utf-8")
    document = _JSON_DECODER.decode(data)
    tally = _Tally()
    _check_shape(document, limits, tally)
    if _may_repeat_keys(data, tally.keys):
        _refuse_repeated_keys(text)
    return document


@final
class _Tally:
    """What :func:`_check_shape` counted: nodes (keys included) and mapping keys."""

    __slots__ = ("keys", "nodes")

    def __init__(self, *, nodes: int = 0) -> None:
        self.nodes = nodes
        self.keys = 0


def _check_shape(
    document: object, limits: DocumentLimits, tally: _Tally, *, depth: int = 1
) -> None:
    """Refuse a decoded document that nests deeper or holds more nodes than ``limits``.

    ``document`` may be a part of a larger one, at ``depth``, after what
    ``tally`` counted already; its nodes and keys are added to ``tally``.
    Iterative, and it stops at the first excess: its cost is bounded by the limits.
    """
    nodes = tally.nodes
    keys = 0
    stack: list[tuple[object, int]] = [(document, depth)]
    while stack:
        value, depth = stack.pop()
        if depth > limits.max_depth:
            raise _LimitExceededError(_too_deep(limits))
        nodes += 1
        if isinstance(value, dict):
            nodes += len(value)
            keys += len(value)
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
            raise _LimitExceededError(_too_long_int())
        if nodes > limits.max_nodes:
            raise _LimitExceededError(_too_many(limits))
    tally.nodes = nodes
    tally.keys += keys


def _may_repeat_keys(data: bytes, keys: int) -> bool:
    """Whether the valid JSON ``data``, decoded to ``keys`` mapping keys, may repeat one.

    msgspec keeps the last value of a repeated key. Every key written in
    ``data`` ends with a quote and a colon once blanks are taken out (taking
    them out never loses such an end), so when there are no more such ends
    than keys decoded, no key was dropped. Otherwise a key may be repeated (or
    a string value holds ``":``). About 1.2 ms for 820 KiB.
    """
    return data.translate(None, _JSON_BLANKS).count(_JSON_KEY_END) > keys


def _refuse_repeated_keys(text: str) -> None:
    """Raise :class:`_DuplicateKeyError` for the first repeated key of the valid JSON ``text``.

    The rare path (:func:`_may_repeat_keys` said so): the standard library's
    decoder keeps every key of every object, in order, and the objects are
    walked from the top, each in the order of the text. The size of ``text``
    bounds this work. The values a repeated key hid were not checked against
    the limits: what the standard library cannot read of them (an integer too
    long, nesting too deep) raises its own error, which ``parse_document``
    reports; otherwise the repeated key is.
    """
    document = json.loads(text, object_pairs_hook=_Pairs)
    stack: list[tuple[str, object]] = [("$", document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _Pairs):
            seen: set[str] = set()
            for key, _ in value:
                if key in seen:
                    raise _DuplicateKeyError(join_path(path, key), key)
                seen.add(key)
            stack.extend((join_path(path, key), item) for key, item in reversed(value))
        elif isinstance(value, list):
            stack.extend(
                (join_path(path, index), item) for index, item in reversed(list(enumerate(value)))
            )


class _Pairs(list[tuple[str, object]]):
    """A JSON object as the standard library decodes it with every key kept, in order."""


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
        from healkit._config.yaml_format import describe_yaml_error  # noqa: PLC0415 - PyYAML: only for YAML

        return describe_yaml_error(exc)
    return message


def _size(size: int) -> str:
    """Write a size in bytes, KiB or MiB (binary units: the limits are round there)."""
    if size < 1024:
        return f"{size} bytes"
    if size < _MIB:
        return f"{size / 1024:.1f} KiB".replace(".0 ", " ")
    return f"{size / _MIB:.1f} MiB".replace(".0 ", " ")


def _too_large(size: int, limits: DocumentLimits) -> str:
    shown, limit = _size(size), _size(limits.max_bytes)
    if shown == limit:  # just over: only the exact numbers tell them apart
        shown, limit = f"{size:,} bytes", f"{limits.max_bytes:,} bytes"
    return f"the document is {shown}, over the limit of {limit} (max_bytes)"


def _too_deep(limits: DocumentLimits) -> str:
    return f"the document nests deeper than {limits.max_depth} levels (max_depth)"


def _too_long_int() -> str:
    return f"an integer has more than {MAX_INT_DIGITS:,} digits"


def _too_many(limits: DocumentLimits) -> str:
    return f"the document holds more than {limits.max_nodes:,} nodes (max_nodes)"


def _line_column(text: str, byte_offset: int) -> tuple[int, int]:
    """1-based line and column of a UTF-8 byte offset into ``text``."""
    before = text.encode("utf-8")[:byte_offset].decode("utf-8", errors="replace")
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    return line, column


def _fail(reason: str, origin: str) -> NoReturn:
    """Raise the ConfigError of a document-level problem."""
    raise ConfigError([ConfigIssue("$", reason)], origin=origin)
