"""YAML documents: PyYAML's safe loader, composing within :class:`DocumentLimits`.

Imported only when a YAML document is read or written (PyYAML is the optional
extra ``yaml``): :func:`healkit._config.formats.require_yaml` says whether it
is installed, with a :class:`~healkit._errors.ConfigError` telling how to
install it when it is not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import yaml
from yaml import YAMLError
from yaml.composer import Composer
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode

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

__all__ = ["YAMLError", "dump_yaml", "load_yaml"]


def load_yaml(text: str, limits: DocumentLimits) -> object:
    """Decode one YAML document within ``limits``; PyYAML's errors propagate.

    The bounded loader counts nodes and depth while composing, before anything
    is constructed: an alias bomb never gets expanded. It refuses a key
    repeated in one mapping (PyYAML would keep its last value) once composed.
    """
    loader = _BoundedYamlLoader(text, limits)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def dump_yaml(document: object) -> str:
    """Write ``document`` as YAML (safe types only), keys in their order."""
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


class _Shape(NamedTuple):
    """What a composed YAML node expands to: its nodes, its height, its text."""

    nodes: int
    height: int
    text: int


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

    def __init__(self, limits: DocumentLimits) -> None:
        Composer.__init__(self)
        self._limits = limits
        self._depth = 0
        self._nodes = 0
        self._text = 0
        # The shape of each composed node, by id: the nodes stay alive in the
        # tree while it is composed.
        self._shapes: dict[int, _Shape] = {}
        # The first mapping composed that repeats a key, and the key.
        self._repeated: tuple[MappingNode, ScalarNode] | None = None

    def get_single_node(self) -> Node | None:
        """Compose the document (PyYAML's), and refuse it if a mapping repeats a key."""
        node = super().get_single_node()
        if self._repeated is not None and node is not None:
            mapping, key = self._repeated
            raise _DuplicateKeyError(join_path(_path_to(node, mapping), key.value), key.value)
        return node

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        """Compose one node (PyYAML's), then account for it."""
        limits = self._limits
        if self.check_event(AliasEvent):
            node = super().compose_node(parent, index)
            shape = None if node is None else self._shapes.get(id(node))
            if shape is None:
                raise _LimitExceededError("a YAML alias refers to a node that contains it")
            self._expand(shape)
            return node
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
        if isinstance(node, ScalarNode):
            self._text += len(node.value)  # within the document's size: no alias in it
            self._shapes[id(node)] = _Shape(1, 1, len(node.value))
            return node
        if isinstance(node, MappingNode):
            children = [child for pair in node.value for child in pair]
            if self._repeated is None:
                key = _repeated_key(node)
                self._repeated = None if key is None else (node, key)
        else:
            children = node.value
        shapes = [self._shapes[id(child)] for child in children]
        self._shapes[id(node)] = _Shape(
            1 + sum(shape.nodes for shape in shapes),
            1 + max((shape.height for shape in shapes), default=0),
            sum(shape.text for shape in shapes),
        )
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


def _path_to(root: Node, target: Node) -> str:
    """Return the path of ``target`` inside the composed document ``root``.

    Each node is visited once (aliases share nodes), so this is bounded by
    the document's nodes; it runs only for a document that is refused.
    """
    stack: list[tuple[Node, str]] = [(root, "$")]
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
    return "$"  # pragma: no cover - the mapping is in the document it was composed in


if yaml.__with_libyaml__:

    class _BoundedYamlLoader(_BoundedComposer, yaml.CSafeLoader):
        """PyYAML's safe loader on libyaml's C parser, composing with :class:`_BoundedComposer`.

        The composer comes first in the bases, so its ``get_single_node``
        replaces libyaml's own (which would compose without counting).
        """

        def __init__(self, text: str, limits: DocumentLimits) -> None:
            yaml.CSafeLoader.__init__(self, text)
            _BoundedComposer.__init__(self, limits)

else:  # pragma: no cover - PyYAML built without libyaml

    class _BoundedYamlLoader(_BoundedComposer, yaml.SafeLoader):  # type: ignore[no-redef]
        """PyYAML's pure-Python safe loader, composing with :class:`_BoundedComposer`."""

        def __init__(self, text: str, limits: DocumentLimits) -> None:
            yaml.SafeLoader.__init__(self, text)
            _BoundedComposer.__init__(self, limits)


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


_BoundedYamlLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)
