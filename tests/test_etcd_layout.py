"""The etcd package's classes meet through methods, never through each other's private members.

The gateway (``healkit/etcd/_gateway.py``) owns the session, the endpoints,
the token and decoding; the client, watch, lease keeper and source use it
through its methods. A private attribute read on anything but ``self`` or
``cls`` is a class reaching into another's state: this test finds it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import healkit.etcd

PACKAGE = Path(healkit.etcd.__file__).parent


def _foreign_private(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}:
            continue
        found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_private_member_is_reached_across_classes() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) >= 5  # the package is split by concept
    reached = {
        module.name: hits
        for module in modules
        if (hits := _foreign_private(ast.parse(module.read_text(), str(module))))
    }
    assert reached == {}
