"""A YAML document is decoded one service at a time, as a JSON one is.

PyYAML composes a whole document into nodes (about 50 objects per service,
with their marks) before it constructs any of it: a 10,000-service document
was half a million objects alive at once, which young collections moved to
the oldest generation, starting full collections (5 of them, 190 ms of loop
lag in a small process). healkit's loader constructs each service of the
top-level ``services`` mapping as soon as it is composed and keeps it as
msgpack bytes. These tests hold it to the whole loader: the same document,
or the same refusal with the same message, whatever the document.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from healkit import ConfigError, plain_document
from healkit._config.compact import Encoded
from healkit._config.formats import DocumentLimits, parse_compact, parse_document
from tests.test_apply_gc_sources import LIMITS  # the JSON decoder is held to the same


def outcome(parse: Callable[..., object], text: str, limits: DocumentLimits) -> object:
    try:
        return plain_document(parse(text, fmt="yaml", origin="test", limits=limits))
    except ConfigError as error:
        return str(error)


YAML_CASES = {
    "plain": "services:\n  a: {endpoints: ['http://a.test']}\n  b: {timeout: {attempt: 2.5}}\n",
    "anchor shared by two services": (
        "services:\n  a: &x {endpoints: ['http://a.test'], max_body_bytes: 7}\n  b: *x\n"
    ),
    "merge key inside a service": (
        "services:\n  a: &x {timeout: {attempt: 2}}\n  b: {<<: *x, max_body_bytes: 5}\n"
    ),
    "anchor defined above services": "base: &d {e: 1}\nservices:\n  a: *d\n  b: {<<: *d, f: 2}\n",
    "anchor in a service used below": "services:\n  a: {t: &t {x: 1}}\nlogging: {level: *t}\n",
    "merge key right under services": "services:\n  <<: {a: {x: 1}}\n  b: {y: 2}\n",
    "merge of a list under services": (
        "one: &o {a: {x: 1}}\ntwo: &t {a: {x: 2}, c: {}}\nservices:\n  <<: [*o, *t]\n  b: {}\n"
    ),
    "anchored services": "services: &s {a: {x: 1}}\nother: *s\n",
    "services explicitly a map": "services: !!map {a: {x: 1}}\n",
    "services a set": "services: !!set {a, b}\n",
    "services an omap": "services: !!omap [a: {x: 1}]\n",
    "a key that is a number": "services:\n  a: {}\n  1: {x: 1}\n",
    "a key that is a list": "services:\n  ? [a]\n  : {x: 1}\n",
    "a key that is null": "services:\n  ~: {x: 1}\n",
    "a quoted key": "services:\n  'a': {}\n  \"b\": {}\n",
    "a key written with !!str": "services:\n  !!str 1: {}\n",
    "a value key": "services:\n  =: {x: 1}\n",
    "repeated service": "services:\n  a: {x: 1}\n  b: {}\n  a: {y: 2}\n",
    "repeated key in a service": "services:\n  a: {x: 1, x: 2}\n",
    "repeated in defaults, then in a service": (
        "defaults: {m: 1, m: 2}\nservices:\n  a: {x: 1, x: 2}\n"
    ),
    "repeated in a service, then a service": "services:\n  a: {x: {y: 1, y: 2}}\n  a: {}\n",
    "repeated at the top, after services": "services: {a: {}}\nlogging: {}\nlogging: {}\n",
    "a service that cannot be constructed": "services:\n  a: !!python/object:os.system {}\n",
    "a long integer, then a syntax error": (
        "services:\n  a: {x: " + "9" * 5000 + "}\n  b: {y: [1, 2}\n"
    ),
    "a long integer, then a repeated key": (
        "services:\n  a: {x: " + "9" * 5000 + "}\n  b: {y: 1, y: 2}\n"
    ),
    "a bad part above, a bad service": "defaults: !!binary '@@@'\nservices:\n  a: !!binary '@@'\n",
    "a bad service, a bad part below": "services:\n  a: !!binary '@@'\nlogging: !!binary '@@@'\n",
    "the tag of a compact services mapping": (
        "services:\n  a: !<tag:healkit,2026:compact-services> {}\n"
    ),
    "that tag on services": "services: !<tag:healkit,2026:compact-services> {a: {}}\n",
    "undefined alias": "services:\n  a: *nowhere\n",
    "an alias to itself": "services:\n  a: &a [*a]\n",
    "alias bomb": (
        "services:\n  a: &a [x, x, x, x, x, x, x, x]\n  b: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
        "  c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n  d: [*c, *c, *c, *c, *c, *c, *c, *c]\n"
    ),
    "dates and binary": "services:\n  a: {t: 2001-12-14, b: !!binary aGk=}\n",
    "services null": "services: ~\n",
    "services a list": "services: [a, b]\n",
    "services a string": "services: a\n",
    "no services": "defaults: {x: 1}\n",
    "empty": "",
    "not a mapping": "- a\n- b\n",
    "two documents": "services: {a: {}}\n---\nservices: {b: {}}\n",
    "services twice at the top": "services: {a: {}}\nservices: {b: {}}\n",
    "services nested deeper": "x:\n  services:\n    a: {y: 1}\n",
    "a deep service": "services:\n  a: " + "[" * 70 + "]" * 70 + "\n",
    "many services": "services:\n" + "".join(f"  s{i}: {{e: [{i}]}}\n" for i in range(300)),
}


@pytest.mark.parametrize("limits", LIMITS)
@pytest.mark.parametrize("text", YAML_CASES.values(), ids=YAML_CASES.keys())
def test_a_yaml_document_decoded_compact_is_the_same_or_refused_the_same(
    text: str, limits: DocumentLimits
) -> None:
    assert outcome(parse_compact, text, limits) == outcome(parse_document, text, limits)


def test_the_services_of_a_yaml_document_are_kept_encoded() -> None:
    text = YAML_CASES["anchor shared by two services"]
    compact = parse_compact(text, fmt="yaml", origin="test")
    assert isinstance(compact, dict)
    services = compact["services"]
    assert all(isinstance(part, Encoded) for part in services.values())
    assert services["a"] == services["b"]  # an alias: the same value, encoded twice


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    services=st.dictionaries(st.text(max_size=6), trees, max_size=6),
    shared=trees,
    sharing=st.lists(st.booleans(), max_size=6),
    rest=st.dictionaries(st.sampled_from(["defaults", "logging", "x"]), trees, max_size=2),
)
def test_any_yaml_document_decoded_compact_is_the_one_decoded_whole(
    services: dict[str, Any], shared: Any, sharing: list[bool], rest: dict[str, Any]
) -> None:
    # The same object under several services and parts: PyYAML writes anchors
    # and aliases for it, across the services and into the parts around them.
    for name, share in zip(list(services), sharing, strict=False):
        if share:
            services[name] = {"own": services[name], "shared": shared}
    document = {**rest, "services": services, "after": shared}
    text = yaml.safe_dump(document, sort_keys=False)
    for limits in (DocumentLimits(), DocumentLimits(max_nodes=40, max_depth=6)):
        assert outcome(parse_compact, text, limits) == outcome(parse_document, text, limits)


def test_a_yaml_document_is_decoded_one_service_at_a_time() -> None:
    text = yaml.safe_dump(
        {
            "services": {
                f"s{i}": {"endpoints": [f"http://a{i}.test"], "timeout": {"attempt": 2.0}}
                for i in range(2_000)
            }
        }
    )

    def most_alive(parse: Callable[..., object]) -> int:
        """The most objects tracked at any collection during ``parse``, less those before."""
        peak = [0]

        def sample(phase: str, info: dict[str, int]) -> None:
            del info
            if phase == "start":  # each collection, young ones included, counts what is alive
                peak[0] = max(peak[0], len(gc.get_objects()))

        gc.collect()
        before = len(gc.get_objects())
        gc.callbacks.append(sample)
        try:
            parse(text, fmt="yaml", origin="test")
        finally:
            gc.callbacks.remove(sample)
        return max(peak[0], before) - before

    # Composed whole: about 50 objects per service alive at once, which the
    # young collections its own allocations start promote (the calls in flight too).
    assert most_alive(parse_document) > 50_000
    assert most_alive(parse_compact) < 1_000
