"""same_document: the "unchanged" test of the etcd source tells apart what Python finds equal."""

from __future__ import annotations

import copy

import pytest

from healkit._config.validate import same_document


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"connect": True}, {"connect": 1}),
        ({"attempts": 2}, {"attempts": 2.0}),
        ({"failover": True}, {"failover": 1}),
        ({"a": [1, 2]}, {"a": [1, 2.0]}),
        ({"a": [1]}, {"a": (1,)}),
        ({"a": {1}}, {"a": {True}}),
        ({1: "x"}, {True: "x"}),
        ({"a": None}, {}),
        ({"a": {"b": 0}}, {"a": {"b": False}}),
    ],
)
def test_values_python_finds_equal_are_different_documents(first: object, second: object) -> None:
    assert not same_document(first, second)
    assert not same_document(second, first)


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"services": {"a": {"endpoints": ["http://a.test"], "routing": {"eject_time": 1.5}}}},
        {"a": [1, [2, {"b": None}]], "c": "text", "d": False},
    ],
)
def test_a_document_is_the_same_as_its_copy(document: object) -> None:
    assert same_document(document, copy.deepcopy(document))
