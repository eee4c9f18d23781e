"""Validate decoded configuration documents against msgspec Struct models.

``msgspec.convert`` stops at the first problem. A person fixing a configuration
file wants every problem at once, each with its place in the document, so
:func:`validate` walks the model (through :func:`msgspec.inspect.type_info`) and
the document side by side and collects one :class:`~healkit._errors.ConfigIssue`
per problem::

    $.services.payments.timeout: unknown key 'conect' (known keys: attempt, connect, ...)
    $.services.payments.timeout.read: must be > 0
    $.services.payments.endpoints[2]: expected a string, got int

Paths are JSONPath-like: ``$`` is the document, ``.name`` a key, ``[2]`` a list
item and ``["a key"]`` a key that is not a plain identifier.

Once every field of a Struct is valid, the Struct itself is built with
``msgspec.convert``, so that its ``__post_init__`` cross-field checks run; a
``ValueError`` or ``TypeError`` they raise becomes one issue at the Struct's path.
The same conversion is the safety net for any type this walker does not inspect
itself (dates, bytes, dataclasses...): msgspec's own message is then translated
and placed at the right path.

The walker is stricter than msgspec where msgspec would let a document mean two
things: a list must be an ordered sequence (a YAML ``!!set`` or a Python ``set``
is refused, since its order, and so a service's primary endpoint, could differ
between processes), and a ``pattern`` that ends with ``$`` must match up to the
end of the value (Python's ``$`` also matches before a final newline). A string
field may name a further check in its metadata, ``msgspec.Meta(extra={"check":
function})``: ``function(value)`` returns why the value is invalid, or ``None``,
and runs once the value has the right type and pattern.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Final, TypeVar, cast

import msgspec
import msgspec.inspect as mi

from healkit._errors import ConfigError, ConfigIssue

__all__ = ["check", "fingerprint", "join_path", "merge", "same_document", "validate"]

T = TypeVar("T")

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# msgspec ends a located message with " - at `$.some.path`" (or "`key` in `$`").
_MSGSPEC_LOCATION: Final = re.compile(r" - at `(?P<path>\$[^`]*)`$")
_MSGSPEC_KEY_LOCATION: Final = re.compile(r" - at `key` in `(?P<path>\$[^`]*)`$")
_GOT_REPR_LIMIT: Final = 40
# Integers wider than this are shown by their size (their digits would not fit
# in _GOT_REPR_LIMIT anyway, and beyond 4,300 digits Python refuses to write them).
_SHOWN_INT_BITS: Final = 128
# Ordered sequences only: a set has no order a document could rely on.
_ARRAY_LIKE: Final = (list, tuple)
_PLAIN_LEAVES: Final = frozenset({str, int, float, bool, type(None)})
_FINGERPRINT_VALUES: Final = 1_000_000
"""The most values :func:`fingerprint` visits in one document: four times what a
source's document may hold by default (``DocumentLimits.max_nodes``); a cycle,
which only a Python document can have, stops there. Beyond it a document has no
fingerprint: it is validated in full and kept as it is."""
CHECK: Final = "check"
"""The key of a further check in a field's ``msgspec.Meta(extra=...)``."""


def join_path(path: str, key: str | int) -> str:
    """Return the path of ``key`` (a mapping key or a list index) inside ``path``.

    ``join_path("$.services", "payments")`` is ``$.services.payments``,
    ``join_path("$.endpoints", 2)`` is ``$.endpoints[2]`` and a key that is not an
    identifier-like token is quoted: ``$.headers["X Custom"]``.
    """
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{msgspec.json.encode(key).decode()}]"


def validate(raw: object, model: type[T], *, path: str = "$") -> tuple[T | None, list[ConfigIssue]]:
    """Check ``raw`` (a decoded document) against ``model`` and report every problem.

    Args:
        raw: any Python value, usually a ``dict`` decoded from JSON, YAML or TOML.
        model: the type to build, usually a frozen msgspec ``Struct``.
        path: the path of ``raw`` inside a larger document (``$`` by default).

    Returns:
        ``(instance, [])`` when ``raw`` is valid, else ``(None, issues)`` with at
        least one issue. Invalid input never raises.

    """
    info = _type_info(cast("Hashable", model))  # a type: hashable, as lru_cache needs
    issues: list[ConfigIssue] = []
    try:
        if isinstance(info, mi.StructType) and not info.array_like:
            # The walker builds (and so checks) the Struct itself.
            value: object = _check_struct(raw, info, path, issues)
        else:
            _check(raw, info, path, issues)
            value = None if issues else _convert(raw, model, path, issues)
    except RecursionError:
        # Only a recursive model can be walked this deep; the data is junk anyway.
        return None, [ConfigIssue(path, "the document is nested too deeply")]
    return (None, issues) if issues else (cast("T", value), issues)


@functools.lru_cache(maxsize=256)
def _type_info(model: Hashable) -> mi.Type:
    """Return msgspec's description of ``model``, worked out once per model.

    ``msgspec.inspect.type_info`` evaluates every annotation of every nested
    type on each call: without this memo it was nine tenths of the time a
    runtime takes to apply a document (about 1.9 ms of 2.1 ms).
    """
    return mi.type_info(model)


def check(raw: object, model: type[T], *, origin: str = "", path: str = "$") -> T:
    """Return ``raw`` converted to ``model``, or raise a ConfigError listing every problem.

    Args:
        raw: the decoded document.
        model: the type to build, usually a frozen msgspec ``Struct``.
        origin: where the document came from, for the error message.
        path: the path of ``raw`` inside a larger document.

    Raises:
        ConfigError: ``raw`` is not a valid ``model``; ``error.issues`` has them all.

    """
    value, issues = validate(raw, model, path=path)
    if issues:
        raise ConfigError(issues, origin=origin)
    return cast("T", value)  # None only when the model itself admits None


def merge(base: Mapping[str, object], override: Mapping[str, object]) -> dict[str, object]:
    """Deep-merge two decoded documents; ``override`` wins.

    Mappings present on both sides are merged key by key; any other value in
    ``override`` (a scalar, a list, ``None``) replaces the value in ``base``:
    lists are replaced, never concatenated. Neither input is modified. Values that
    are not merged are shared with the inputs, not copied, so treat the result as
    read-only just like the inputs.
    """
    merged: dict[str, object] = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = merge(current, value)
        else:
            merged[key] = value
    return merged


def same_document(first: object, second: object) -> bool:
    """Whether two decoded documents are the same value, kind included.

    Python's ``==`` holds for values a validator tells apart (``True == 1``,
    ``2 == 2.0``, ``{1} == {True}``): a document that was valid must not make an
    invalid one look unchanged. Here every mapping key, item and leaf must also
    be of the same type.

    A value is the same as itself: the etcd source compares a namespace whose
    unchanged keys hold the very same objects, so they cost nothing to compare.
    """
    if first is second:
        return True
    if type(first) is not type(second):
        return False
    if isinstance(first, Mapping) and isinstance(second, Mapping):
        return _same_keys(first, second) and all(
            same_document(value, second[key]) for key, value in first.items()
        )
    if isinstance(first, list | tuple) and isinstance(second, list | tuple):
        return len(first) == len(second) and all(
            same_document(a, b) for a, b in zip(first, second, strict=True)
        )
    if isinstance(first, set | frozenset) and isinstance(second, set | frozenset):
        return _typed(first) == _typed(second)
    return bool(first == second)


def fingerprint(document: object) -> bytes | None:
    """Return bytes that are equal for two documents only if they are the same value.

    Only a plain document has one: ``dict`` (string keys), ``list``, ``str``,
    ``int``, ``float``, ``bool`` and ``None``, exactly these types, which is what
    JSON and TOML decode to. Anything else (a tuple, a set, a date, a subclass,
    an integer beyond 64 bits) returns ``None``, since its encoding could be
    that of another document (a set is written like a list). The encoding tells
    ``1``, ``True`` and ``1.0`` apart, and keys in another order make other
    bytes. The bytes are not tracked by the garbage collector, and, unlike a
    kept reference to the document, do not follow a caller who edits it in place.
    """
    pending = [document]
    visited = 0
    while pending:
        value = pending.pop()
        visited += 1
        kind = type(value)
        if visited > _FINGERPRINT_VALUES:
            return None
        if kind is dict:
            items = cast("dict[object, object]", value)
            if any(type(key) is not str for key in items):
                return None
            pending.extend(items.values())
        elif kind is list:
            pending.extend(cast("list[object]", value))
        elif kind not in _PLAIN_LEAVES:
            return None
    try:
        return msgspec.msgpack.encode(document)
    except (OverflowError, RecursionError, msgspec.EncodeError):
        return None


def _same_keys(first: Mapping[object, object], second: Mapping[object, object]) -> bool:
    return len(first) == len(second) and _typed(first) == _typed(second)


def _typed(items: Iterable[object]) -> set[tuple[type, object]]:
    """Pair each item with its type, so that ``1`` and ``True`` differ."""
    return {(type(item), item) for item in items}


# --- the walker -------------------------------------------------------------------


def _check(value: object, info: mi.Type, path: str, issues: list[ConfigIssue]) -> None:
    """Append to ``issues`` every problem of ``value`` against ``info``."""
    if isinstance(info, mi.Metadata):
        _check_metadata(value, info, path, issues)
    elif isinstance(info, mi.StructType):
        if info.array_like:
            return  # rare layout: left to msgspec.convert in the enclosing Struct
        _check_struct(value, info, path, issues)
    elif isinstance(info, mi.UnionType):
        _check_union(value, info, path, issues)
    elif isinstance(info, mi.CollectionType):
        _check_collection(value, info, path, issues)
    elif isinstance(info, mi.TupleType):
        _check_tuple(value, info, path, issues)
    elif isinstance(info, mi.DictType):
        _check_dict(value, info, path, issues)
    else:
        reason = _scalar_problem(value, info)
        if reason is not None:
            issues.append(ConfigIssue(path, reason))


def _check_struct(
    value: object, info: mi.StructType, path: str, issues: list[ConfigIssue]
) -> object | None:
    """Check a Struct's keys and fields; build it when they are all valid.

    Returns the built instance, or ``None`` when an issue was found.
    """
    if not isinstance(value, Mapping):
        issues.append(ConfigIssue(path, f"expected an object, got {_kind(value)}"))
        return None
    found = len(issues)
    fields = {field.encode_name: field for field in info.fields}
    known = sorted(fields)
    for key, item in value.items():
        if not isinstance(key, str):
            issues.append(ConfigIssue(path, f"invalid key {_show(key)}: keys must be strings"))
        elif key in fields:
            _check(item, fields[key].type, join_path(path, key), issues)
        elif info.tag_field is not None and key == info.tag_field:
            if item != info.tag:
                issues.append(ConfigIssue(join_path(path, key), _expected_one_of([info.tag], item)))
        elif info.forbid_unknown_fields:
            known_text = ", ".join(known) if known else "none"
            issues.append(ConfigIssue(path, f"unknown key {key!r} (known keys: {known_text})"))
    issues.extend(
        ConfigIssue(path, f"missing required key {name!r}")
        for name, field in fields.items()
        if field.required and name not in value
    )
    if len(issues) > found:
        return None
    built = _convert(value, info.cls, path, issues)
    return None if len(issues) > found else built


def _check_metadata(value: object, info: mi.Metadata, path: str, issues: list[ConfigIssue]) -> None:
    """Check the annotated type, then the field's own check (``extra={"check": ...}``)."""
    found = len(issues)
    _check(value, info.type, path, issues)
    function = (info.extra or {}).get(CHECK)
    if len(issues) == found and callable(function):
        reason = cast("Callable[[object], str | None]", function)(value)
        if reason is not None:
            issues.append(ConfigIssue(path, reason))


def _check_union(value: object, info: mi.UnionType, path: str, issues: list[ConfigIssue]) -> None:
    """Check ``value`` against the members of a union that can hold its kind."""
    candidates = [member for member in info.types if _kind_fits(value, member)]
    if not candidates:
        choices = " or ".join(_describe(member) for member in info.types)
        issues.append(ConfigIssue(path, f"expected {choices}, got {_kind(value)}"))
        return
    first_issues: list[ConfigIssue] | None = None
    for member in candidates:
        attempt: list[ConfigIssue] = []
        _check(value, member, path, attempt)
        if not attempt:
            return
        if first_issues is None:
            first_issues = attempt
    issues.extend(first_issues or ())


def _check_collection(
    value: object, info: mi.CollectionType, path: str, issues: list[ConfigIssue]
) -> None:
    """Check a list, tuple, set or frozenset and each of its items."""
    if not isinstance(value, _ARRAY_LIKE):
        issues.append(ConfigIssue(path, f"expected a list, got {_kind(value)}"))
        return
    bound = _length_bound(len(value), info.min_length, info.max_length, "item")
    if bound is not None:
        issues.append(ConfigIssue(path, f"must have {bound}"))
    for index, item in enumerate(value):
        _check(item, info.item_type, join_path(path, index), issues)


def _check_tuple(value: object, info: mi.TupleType, path: str, issues: list[ConfigIssue]) -> None:
    """Check a fixed-length tuple and each of its items."""
    if not isinstance(value, _ARRAY_LIKE):
        issues.append(ConfigIssue(path, f"expected a list, got {_kind(value)}"))
        return
    expected = len(info.item_types)
    if len(value) != expected:
        noun = "item" if expected == 1 else "items"
        issues.append(ConfigIssue(path, f"expected a list of {expected} {noun}, got {len(value)}"))
        return
    for index, (item, item_type) in enumerate(zip(value, info.item_types, strict=True)):
        _check(item, item_type, join_path(path, index), issues)


def _check_dict(value: object, info: mi.DictType, path: str, issues: list[ConfigIssue]) -> None:
    """Check a mapping: its size, each key and each value."""
    if not isinstance(value, Mapping):
        issues.append(ConfigIssue(path, f"expected an object, got {_kind(value)}"))
        return
    bound = _length_bound(len(value), info.min_length, info.max_length, "entry")
    if bound is not None:
        issues.append(ConfigIssue(path, f"must have {bound}"))
    for key, item in value.items():
        key_issues: list[ConfigIssue] = []
        _check(key, info.key_type, path, key_issues)
        issues.extend(
            ConfigIssue(path, f"invalid key {_show(key)}: {issue.reason}") for issue in key_issues
        )
        child = join_path(path, key) if isinstance(key, str) else f"{path}[{_show(key)}]"
        _check(item, info.value_type, child, issues)


# --- leaves -----------------------------------------------------------------------


def _scalar_problem(value: object, info: mi.Type) -> str | None:  # noqa: PLR0911
    """Return why ``value`` is not a valid ``info`` leaf, or ``None``.

    Types the walker does not know return ``None``: the conversion of the
    enclosing Struct checks them.
    """
    if isinstance(info, mi.BoolType):
        return None if isinstance(value, bool) else f"expected a boolean, got {_kind(value)}"
    if isinstance(info, mi.IntType):
        if not isinstance(value, int) or isinstance(value, bool):
            return f"expected an integer, got {_kind(value)}"
        return _number_problem(value, info)
    if isinstance(info, mi.FloatType):
        return _float_problem(value, info)
    if isinstance(info, mi.StrType):
        return _str_problem(value, info)
    if isinstance(info, mi.NoneType):
        return None if value is None else f"expected null, got {_kind(value)}"
    if isinstance(info, mi.LiteralType):
        return None if _is_one_of(value, info.values) else _expected_one_of(info.values, value)
    if isinstance(info, mi.EnumType):
        choices = [member.value for member in info.cls]
        return None if _is_one_of(value, choices) else _expected_one_of(choices, value)
    return None


def _float_problem(value: object, info: mi.FloatType) -> str | None:
    """Return why ``value`` is not a valid finite float for ``info``, or ``None``."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return f"expected a number, got {_kind(value)}"
    try:
        number = float(value)
    except OverflowError:
        return "number is too large"
    if not math.isfinite(number):
        return f"must be a finite number, got {number}"
    return _number_problem(number, info)


def _number_problem(number: float, info: mi.IntType | mi.FloatType) -> str | None:
    """Return the first bound ``number`` breaks, or ``None``."""
    if info.gt is not None and not number > info.gt:
        return f"must be > {_show_number(info.gt)}"
    if info.ge is not None and not number >= info.ge:
        return f"must be >= {_show_number(info.ge)}"
    if info.lt is not None and not number < info.lt:
        return f"must be < {_show_number(info.lt)}"
    if info.le is not None and not number <= info.le:
        return f"must be <= {_show_number(info.le)}"
    if (
        isinstance(info, mi.IntType)
        and isinstance(number, int)
        and info.multiple_of is not None
        and number % info.multiple_of
    ):
        return f"must be a multiple of {info.multiple_of}"
    return None  # a float's multiple_of is left to msgspec's own rounding rules


def _str_problem(value: object, info: mi.StrType) -> str | None:
    """Return why ``value`` is not a valid string for ``info``, or ``None``."""
    if not isinstance(value, str):
        return f"expected a string, got {_kind(value)}"
    bound = _length_bound(len(value), info.min_length, info.max_length, "character")
    if bound is not None:
        return f"must be {bound} long"
    if info.pattern is not None and not _matches(info.pattern, value):
        return f"must match the pattern {info.pattern!r}"
    return None


def _matches(pattern: str, value: str) -> bool:
    r"""``re.search``, except that a final ``$`` means the end of ``value``.

    Python's ``$`` also matches before a newline that ends the string: a
    service name ``"payments\n"`` would pass ``^[a-z]+$``.
    """
    found = re.search(pattern, value)
    if found is None:
        return False
    anchored = pattern.endswith("$") and not pattern.endswith("\\$")
    return not anchored or found.end() == len(value)


def _length_bound(
    length: int, min_length: int | None, max_length: int | None, noun: str
) -> str | None:
    """Return the length bound ``length`` breaks (``at least 1 item``), or ``None``."""
    if min_length is not None and length < min_length:
        return f"at least {min_length} {_plural(noun, min_length)}"
    if max_length is not None and length > max_length:
        return f"at most {max_length} {_plural(noun, max_length)}"
    return None


# --- msgspec's safety net ----------------------------------------------------------


def _convert(raw: object, model: type[T], path: str, issues: list[ConfigIssue]) -> T | None:
    """Build ``model`` from ``raw`` with msgspec; record its refusal as one issue."""
    try:
        return msgspec.convert(raw, model, strict=True)
    except msgspec.ValidationError as exc:
        issues.append(_translate(str(exc), path))
        return None


def _translate(message: str, path: str) -> ConfigIssue:
    """Turn a msgspec ValidationError message into an issue rebased on ``path``."""
    where = path
    for pattern in (_MSGSPEC_KEY_LOCATION, _MSGSPEC_LOCATION):
        located = pattern.search(message)
        if located is not None:
            where = path + located["path"][1:]
            message = message[: located.start()]
            break
    reason = message.replace("`", "").strip() or "invalid value"
    if len(reason) > 1 and reason[1].islower():
        reason = reason[0].lower() + reason[1:]
    return ConfigIssue(where, reason)


# --- wording ----------------------------------------------------------------------


def _kind_fits(value: object, info: mi.Type) -> bool:  # noqa: PLR0911
    """Whether ``value`` is of a kind that ``info`` may accept (union dispatch)."""
    info = _bare(info)
    if isinstance(info, mi.NoneType):
        return value is None
    if isinstance(info, mi.BoolType):
        return isinstance(value, bool)
    if isinstance(info, mi.IntType):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(info, mi.FloatType):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(info, mi.StrType):
        return isinstance(value, str)
    if isinstance(info, mi.LiteralType):
        return _is_one_of(value, info.values)
    if isinstance(info, mi.StructType):
        return isinstance(value, _ARRAY_LIKE if info.array_like else Mapping)
    if isinstance(info, mi.DictType):
        return isinstance(value, Mapping)
    if isinstance(info, mi.CollectionType | mi.TupleType):
        return isinstance(value, _ARRAY_LIKE)
    return value is not None


def _describe(info: mi.Type) -> str:  # noqa: PLR0911
    """Name what ``info`` expects, for "expected ..." reasons."""
    info = _bare(info)
    if isinstance(info, mi.NoneType):
        return "null"
    if isinstance(info, mi.BoolType):
        return "a boolean"
    if isinstance(info, mi.IntType):
        return "an integer"
    if isinstance(info, mi.FloatType):
        return "a number"
    if isinstance(info, mi.StrType):
        return "a string"
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(_show(choice) for choice in info.values)
    if isinstance(info, mi.StructType | mi.DictType):
        return "an object"
    if isinstance(info, mi.CollectionType | mi.TupleType):
        return "a list"
    name = type(info).__name__.removesuffix("Type").lower()
    return f"a {name} value"


def _bare(info: mi.Type) -> mi.Type:
    """Return the type inside an ``Annotated`` one that carries extra metadata."""
    return info.type if isinstance(info, mi.Metadata) else info


def _is_one_of(value: object, choices: Iterable[object]) -> bool:
    """Whether ``value`` equals a choice of the same kind (``True`` is not ``1``)."""
    return any(
        isinstance(value, type(choice))
        and isinstance(value, bool) == isinstance(choice, bool)
        and value == choice
        for choice in choices
    )


def _expected_one_of(choices: Iterable[object], value: object) -> str:
    """Reason for a value outside a fixed set of choices."""
    shown = [_show(choice) for choice in choices]
    expected = shown[0] if len(shown) == 1 else "one of " + ", ".join(shown)
    got = _show(value) if isinstance(value, str | int | float | None) else _kind(value)
    return f"expected {expected}, got {got}"


def _kind(value: object) -> str:
    """Name the kind of a decoded value: ``null``, ``bool``, ``int``, ``str``, ``list``..."""
    return "null" if value is None else type(value).__name__


def _show(value: object) -> str:
    """Return a short ``repr`` of a value, for a reason.

    An integer too long to show is described by its size: Python refuses to
    write an integer of more than ``sys.get_int_max_str_digits()`` digits, and
    a document (a YAML or TOML hexadecimal literal, a Python object) can hold one.
    """
    if isinstance(value, int) and value.bit_length() > _SHOWN_INT_BITS:
        return f"<an integer of {value.bit_length():,} bits>"
    text = repr(value)
    if len(text) > _GOT_REPR_LIMIT:
        text = text[: _GOT_REPR_LIMIT - 3] + "..."
    return text


def _show_number(number: float) -> str:
    """Write a bound without a useless ``.0``: ``3600``, ``0.5``."""
    if isinstance(number, float) and number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return str(number)


def _plural(noun: str, count: int) -> str:
    """``item``/``items``, ``entry``/``entries``."""
    if count == 1:
        return noun
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
