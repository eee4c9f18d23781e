"""YAML documents: PyYAML's safe loader, composing within :class:`DocumentLimits`.

Imported only when a YAML document is read or written (PyYAML is the optional
extra ``yaml``): :func:`healkit._config.formats.require_yaml` says whether it
is installed, with a :class:`~healkit._errors.ConfigError` telling how to
install it when it is not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, NamedTuple, cast

import yaml
from yaml import YAMLError
from yaml.composer import Composer
from yaml.constructor import ConstructorError
from yaml.error import Mark, MarkedYAMLError
from yaml.events import AliasEvent, MappingEndEvent
from yaml.nodes import MappingNode, Node, ScalarNode

from healkit._config.compact import encoded
from healkit._config.formats import (
    _MAX_INT_BITS,
    MAX_INT_DIGITS,
    DocumentLimits,
    _DuplicateKeyError,
    _LimitExceededError,
    _size,
    _too_deep,
    _too_long_int,
    _too_many,
)
from healkit._config.validate import join_path

__all__ = ["YAMLError", "describe_yaml_error", "dump_yaml", "load_yaml"]


def load_yaml(text: str, limits: DocumentLimits, *, compact: bool = False) -> object:
    """Decode one YAML document within ``limits``; PyYAML's errors propagate.

    The bounded loader counts nodes and depth while composing, before anything
    is constructed: an alias bomb never gets expanded. It refuses a key
    repeated in one mapping (PyYAML would keep its last value) once composed.

    With ``compact``, each service of the top-level ``services`` mapping is
    constructed as soon as it is composed, and kept :class:`Encoded` (its
    msgpack bytes): the nodes of one service are alive at a time, not a
    composed tree of the whole document (about 50 objects per service, with
    their marks, which the garbage collector would promote while the rest is
    composed, and walk). A ``services`` mapping that is anchored, tagged, or
    has a key that is not a plain string (a merge key ``<<``), or a document
    with a service that cannot be constructed, is decoded again whole, as
    without ``compact``: the same document, or the same error.
    """
    if compact:
        try:
            return _load(text, limits, compact=True)
        except _NotStreamableError:
            pass
    return _load(text, limits, compact=False)


def _load(text: str, limits: DocumentLimits, *, compact: bool) -> object:
    loader = _BoundedYamlLoader(text, limits, compact=compact)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def describe_yaml_error(exc: Exception) -> str:
    """Say in one line what decoding a YAML document raised, and where; never quote the document.

    PyYAML's pure-Python parser writes the document's line under each mark of
    its errors (a secret written on that line with it); libyaml's parser does
    not. Both are described from the error's parts, the same way.
    """
    if not isinstance(exc, MarkedYAMLError):
        lines = (line.strip() for line in str(exc).splitlines())
        return ": ".join(line for line in lines if line) or type(exc).__name__
    context_mark, problem_mark = exc.context_mark, exc.problem_mark
    if exc.problem is not None and _same_place(context_mark, problem_mark):
        context_mark = None  # PyYAML's own rule: one mark for both
    parts: list[str] = []
    for text, mark in ((exc.context, context_mark), (exc.problem, problem_mark)):
        where = None if mark is None else f"at line {mark.line + 1}, column {mark.column + 1}"
        part = " ".join(filter(None, (text, where)))
        if part:
            parts.append(part)
    if exc.note:
        parts.append(exc.note)
    return ": ".join(parts) or type(exc).__name__


def _same_place(mark: Mark | None, other: Mark | None) -> bool:
    """Whether two marks point at the same place."""
    if mark is None or other is None:
        return False
    return (mark.name, mark.line, mark.column) == (other.name, other.line, other.column)


def dump_yaml(document: object) -> str:
    """Write ``document`` as YAML (safe types only), keys in their order."""
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


class _Shape(NamedTuple):
    """What a composed YAML node expands to: its nodes, its height, its text."""

    nodes: int
    height: int
    text: int

    def beside(self, sibling: _Shape) -> _Shape:
        """Return the shape of these nodes and ``sibling``'s, side by side."""
        return _Shape(
            self.nodes + sibling.nodes, max(self.height, sibling.height), self.text + sibling.text
        )

    def holder(self) -> _Shape:
        """Return the shape of one collection node holding these."""
        return _Shape(self.nodes + 1, self.height + 1, self.text)


_SHAPE: Final = "healkit_shape"
"""The attribute of a composed node that holds its :class:`_Shape` (none while composing it)."""

_STR_TAG: Final = "tag:yaml.org,2002:str"
_MAP_TAG: Final = "tag:yaml.org,2002:map"
_COMPACT_TAG: Final = "tag:healkit,2026:compact-services"
"""The tag of the node standing for a ``services`` mapping constructed as it was composed."""


def _shape_of(node: Node) -> _Shape | None:
    """Return the shape of a node composed in full, or ``None`` (not yet, or not this loader's)."""
    shape: _Shape | None = vars(node).get(_SHAPE)
    return shape


def _note_shape(node: Node, shape: _Shape) -> None:
    # On the node itself: it lives as long as the node, whatever is dropped.
    vars(node)[_SHAPE] = shape


def _combined(shapes: Iterable[_Shape]) -> _Shape:
    """Return the shape of a collection node whose children have ``shapes``."""
    inside = _Shape(0, 0, 0)
    for shape in shapes:
        inside = inside.beside(shape)
    return inside.holder()


class _NotStreamableError(Exception):
    """The ``services`` mapping cannot be constructed service by service: compose it whole."""


class _CompactServices(MappingNode):
    """Stands for the ``services`` mapping, its services constructed and :class:`Encoded`."""

    def __init__(self, start_mark: Mark | None) -> None:
        super().__init__(_COMPACT_TAG, [], start_mark, start_mark)
        self.services: dict[object, object] = {}


class _BoundedComposer(Composer):
    """PyYAML's composer, counting what the document expands to as it composes it.

    Each node composed counts one; an alias counts every node of what it refers
    to (aliases inside it included), its depth adds to the depth where it
    stands, and the text of its scalars adds to the document's text (aliases
    may not expand a document to more text than ``max_bytes``: one long string
    referred to by thousands of aliases is a bomb too). All are known when the
    alias is met, from the node it refers to, so the checks cost nothing more
    than composing the document itself.
    """

    check_event: Callable[..., bool]  # the parser's, a base class of the loader
    get_event: Callable[[], Any]  # the parser's
    resolve: Callable[..., str]  # the resolver's, a base class too

    construct_document: Callable[[Node], object]  # the constructor's, a base class too

    def __init__(self, limits: DocumentLimits, *, compact: bool) -> None:
        Composer.__init__(self)
        self._limits = limits
        self._depth = 0
        self._nodes = 0
        self._text = 0
        self._compact = compact
        # Whether the node about to be composed is the top level's "services".
        self._services_next = False
        # The first mapping composed that repeats a key, and the key; or, when
        # that mapping was in a service constructed (and dropped) already, its path.
        self._repeated: tuple[MappingNode, ScalarNode] | None = None
        self._repeated_at: tuple[str, str] | None = None

    def get_single_node(self) -> Node | None:
        """Compose the document (PyYAML's), and refuse it if a mapping repeats a key."""
        node = super().get_single_node()
        if self._repeated_at is not None:
            raise _DuplicateKeyError(*self._repeated_at)
        if self._repeated is not None and node is not None:
            mapping, key = self._repeated
            raise _DuplicateKeyError(join_path(_path_to(node, mapping), key.value), key.value)
        return node

    def compose_mapping_node(self, anchor: Any) -> MappingNode:  # noqa: ANN401 - a name or None; types-PyYAML says a dict
        """Compose a mapping (PyYAML's); the top level's ``services`` service by service."""
        services_next, self._services_next = self._services_next, False
        if not services_next or anchor is not None:
            return super().compose_mapping_node(anchor)
        start = self.get_event()
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.resolve(MappingNode, None, start.implicit)
        if tag != _MAP_TAG:
            raise _NotStreamableError
        node = _CompactServices(start.start_mark)
        inside = _Shape(0, 0, 0)
        names: set[str] = set()
        repeated: str | None = None
        while not self.check_event(MappingEndEvent):
            key = self.compose_node(node, None)
            if not (isinstance(key, ScalarNode) and key.tag == _STR_TAG):
                raise _NotStreamableError  # a merge key, a key that is not a string
            if key.value in names and repeated is None:
                repeated = key.value
            names.add(key.value)
            value = self._compose_service(node, key)
            inside = inside.beside(cast("_Shape", _shape_of(key)))
            inside = inside.beside(cast("_Shape", _shape_of(value)))
        self.get_event()
        if repeated is not None and self._repeated is None and self._repeated_at is None:
            self._repeated_at = (join_path("$.services", repeated), repeated)
        _note_shape(node, inside.holder())
        return node

    def _compose_service(self, services: _CompactServices, key: ScalarNode) -> Node:
        """Compose the service named ``key``; construct it, keep it encoded, drop its nodes."""
        before = self._repeated
        value = self.compose_node(services, key)
        if value is None:  # pragma: no cover - PyYAML composes a node from every event
            raise _NotStreamableError
        path = join_path("$.services", key.value)
        if self._repeated is not before and self._repeated_at is None:
            # A mapping of this service repeats a key: say where, before the nodes go.
            mapping, again = cast("tuple[MappingNode, ScalarNode]", self._repeated)
            self._repeated_at = (
                join_path(_path_to(value, mapping, path), again.value),
                again.value,
            )
        try:
            services.services[key.value] = encoded(self.construct_document(value))
        except Exception as exc:
            # Which error the whole document raises first depends on the order
            # PyYAML constructs it in (breadth first, merge keys flattened as
            # they are reached, parts around services included): only
            # constructing it whole says which, and with which message.
            raise _NotStreamableError from exc
        return value

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:  # noqa: ANN401 - None, an int or a key Node; types-PyYAML says int
        """Compose one node (PyYAML's), then account for it."""
        limits = self._limits
        if self.check_event(AliasEvent):
            self._services_next = False
            node = super().compose_node(parent, index)
            shape = None if node is None else _shape_of(node)
            if shape is None:
                raise _LimitExceededError("a YAML alias refers to a node that contains it")
            self._expand(shape)
            return node
        self._services_next = (
            self._compact
            and self._depth == 1
            and isinstance(parent, MappingNode)
            and isinstance(index, ScalarNode)
            and index.tag == _STR_TAG
            and index.value == "services"
        )
        self._depth += 1
        if self._depth > limits.max_depth:
            raise _LimitExceededError(_too_deep(limits))
        self._nodes += 1
        if self._nodes > limits.max_nodes:
            raise _LimitExceededError(_too_many(limits))
        node = super().compose_node(parent, index)
        self._depth -= 1
        if node is None:  # pragma: no cover - PyYAML composes a node from every event
            return None
        if isinstance(node, _CompactServices):
            return node  # its shape is noted
        if isinstance(node, ScalarNode):
            self._text += len(node.value)  # within the document's size: no alias in it
            _note_shape(node, _Shape(1, 1, len(node.value)))
            return node
        if isinstance(node, MappingNode):
            children = [child for pair in node.value for child in pair]
            if self._repeated is None:
                key = _repeated_key(node)
                self._repeated = None if key is None else (node, key)
        else:
            children = node.value
        _note_shape(node, _combined(cast("_Shape", _shape_of(child)) for child in children))
        return node

    def _expand(self, shape: _Shape) -> None:
        """Account for an alias to a node of ``shape``, at the current depth."""
        limits = self._limits
        if self._nodes + shape.nodes > limits.max_nodes:
            raise _LimitExceededError(
                f"YAML aliases expand beyond {limits.max_nodes:,} nodes (max_nodes)"
            )
        if self._text + shape.text > limits.max_bytes:
            raise _LimitExceededError(
                f"YAML aliases expand beyond {_size(limits.max_bytes)} of text (max_bytes)"
            )
        if self._depth + shape.height > limits.max_depth:
            raise _LimitExceededError(_too_deep(limits))
        self._nodes += shape.nodes
        self._text += shape.text


def _repeated_key(mapping: MappingNode) -> ScalarNode | None:
    """Return the first scalar key ``mapping`` holds twice, or ``None``.

    Two scalar keys are the same key when their resolved tag and text are:
    exact for strings (``a`` and ``"a"`` are one key), the only keys healkit's
    documents accept.
    """
    seen: set[tuple[str, str]] = set()
    for key, _ in mapping.value:
        if isinstance(key, ScalarNode):
            identity = (key.tag, key.value)
            if identity in seen:
                return key
            seen.add(identity)
    return None


def _path_to(root: Node, target: Node, root_path: str = "$") -> str:
    """Return the path of ``target`` inside the composed document ``root`` (at ``root_path``).

    Each node is visited once (aliases share nodes), so this is bounded by
    the document's nodes; it runs only for a document that is refused.
    """
    stack: list[tuple[Node, str]] = [(root, root_path)]
    visited: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if id(node) in visited or isinstance(node, ScalarNode):
            continue
        visited.add(id(node))
        children: list[tuple[Node, str]] = []
        if isinstance(node, MappingNode):
            for key, value in node.value:
                scalar = isinstance(key, ScalarNode)
                children.append((key, f"{path}[?]"))
                children.append((value, join_path(path, key.value) if scalar else f"{path}[?]"))
        else:
            children.extend((item, join_path(path, index)) for index, item in enumerate(node.value))
        stack.extend(reversed(children))  # in the document's order: the first path found
    return root_path  # pragma: no cover - the mapping is in the document it was composed in


if yaml.__with_libyaml__:

    class _BoundedYamlLoader(_BoundedComposer, yaml.CSafeLoader):
        """PyYAML's safe loader on libyaml's C parser, composing with :class:`_BoundedComposer`.

        The composer comes first in the bases, so its ``get_single_node``
        replaces libyaml's own (which would compose without counting).
        """

        def __init__(self, text: str, limits: DocumentLimits, *, compact: bool) -> None:
            yaml.CSafeLoader.__init__(self, text)
            _BoundedComposer.__init__(self, limits, compact=compact)

else:  # pragma: no cover - PyYAML built without libyaml

    class _BoundedYamlLoader(_BoundedComposer, yaml.SafeLoader):  # type: ignore[no-redef]
        """PyYAML's pure-Python safe loader, composing with :class:`_BoundedComposer`."""

        def __init__(self, text: str, limits: DocumentLimits, *, compact: bool) -> None:
            yaml.SafeLoader.__init__(self, text)
            _BoundedComposer.__init__(self, limits, compact=compact)


def _bounded_int(loader: _BoundedYamlLoader, node: ScalarNode) -> int:
    """Construct a YAML integer (PyYAML's rules) of at most ``MAX_INT_DIGITS`` characters.

    PyYAML builds a base-60 integer (``1:2:3``) by repeated multiplication, in
    time quadratic in its length: the length is checked first.
    """
    if len(node.value) > MAX_INT_DIGITS:
        raise _LimitExceededError(_too_long_int())
    value: int = loader.construct_yaml_int(node)
    if value.bit_length() > _MAX_INT_BITS:  # a shorter hexadecimal one
        raise _LimitExceededError(_too_long_int())
    return value


def _compact_services(_: _BoundedYamlLoader, node: Node) -> object:
    """Construct the ``services`` mapping composed service by service: it is built already."""
    if not isinstance(node, _CompactServices):  # the tag written in a document
        raise ConstructorError(None, None, f"unknown tag {node.tag!r}", node.start_mark)
    return node.services


_Construct = Callable[[_BoundedYamlLoader, ScalarNode], object]


def _refusing_malformed(construct: _Construct, tag: str, *, quoting: bool) -> _Construct:
    """Return ``construct`` refusing a malformed scalar with a ``ConstructorError``.

    PyYAML's scalar constructors trust the text to match their tag's implicit
    pattern; a tag written explicitly breaks that (``!!bool x`` raises a
    ``KeyError``, ``!!int ''`` an ``IndexError``, ``!!timestamp x`` an
    ``AttributeError``). With ``quoting``, the constructor's ``ValueError``
    quotes the text (``int()``'s and ``float()``'s: a secret written under the
    wrong tag) and is refused the same way: the refusal names the tag and
    where the scalar is, never its text.
    """
    refused: tuple[type[Exception], ...] = (KeyError, IndexError, AttributeError)
    if quoting:
        refused = (*refused, ValueError)

    def construct_or_refuse(loader: _BoundedYamlLoader, node: ScalarNode) -> object:
        try:
            return construct(loader, node)
        except refused:
            problem = f"this is not a valid {tag} (its text is not shown)"
            raise ConstructorError(None, None, problem, node.start_mark) from None

    return construct_or_refuse


for _tag, _construct, _quoting in (
    ("bool", _BoundedYamlLoader.construct_yaml_bool, False),
    ("float", _BoundedYamlLoader.construct_yaml_float, True),
    ("int", _bounded_int, True),
    ("timestamp", _BoundedYamlLoader.construct_yaml_timestamp, False),
):
    _BoundedYamlLoader.add_constructor(
        f"tag:yaml.org,2002:{_tag}", _refusing_malformed(_construct, f"!!{_tag}", quoting=_quoting)
    )
_BoundedYamlLoader.add_constructor(_COMPACT_TAG, _compact_services)
