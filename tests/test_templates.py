"""Degraded response templates: validation, and substitution that data cannot escape."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from healkit._templates import MAX_VARIABLE_LENGTH, VARIABLES, DegradedTemplate

VALUES = {
    "service": "payments",
    "error_type": "ConnectError",
    "timestamp": "2026-11-23T12:00:00Z",
    "retry_after": "5",
    "request_id": "r-1",
}


def template(**fields: Any) -> DegradedTemplate:
    return msgspec.convert(fields, DegradedTemplate)


def test_a_json_body_with_every_variable() -> None:
    t = template(
        status=503,
        headers={"Retry-After": "${retry_after}", "X-Degraded": "$service"},
        json={"error": "unavailable", "service": "${service}", "why": ["$error_type", 1, None]},
    )
    rendered = t.render(VALUES)
    assert rendered.status == 503
    assert rendered.headers == {
        "Retry-After": "5",
        "X-Degraded": "payments",
        "Content-Type": "application/json",
    }
    assert json.loads(rendered.body) == {
        "error": "unavailable",
        "service": "payments",
        "why": ["ConnectError", 1, None],
    }


def test_a_text_body_keeps_its_own_content_type_and_dollars() -> None:
    t = template(status=200, headers={"content-type": "text/csv"}, text="cost: $$5, ${service}")
    rendered = t.render(VALUES)
    assert rendered.body == b"cost: $5, payments"
    assert rendered.headers == {"content-type": "text/csv"}


def test_no_body_is_an_empty_text() -> None:
    rendered = template().render(VALUES)
    assert (rendered.status, rendered.body) == (503, b"")
    assert rendered.headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"text": "${password}"}, "unknown placeholder"),
        ({"json": {"a": "${service.__class__}"}}, r"\$"),
        ({"json": {"${os}": 1}}, "unknown placeholder"),
        ({"headers": {"X": "${env}"}}, "headers.X: unknown placeholder"),
        ({"text": "100$"}, r"\$\$"),
        ({"text": "a", "json": {}}, "not both"),
        ({"status": 99}, ">= 200"),
        ({"headers": {"Bad Header": "x"}}, "matching regex"),
        ({"html": "<p>"}, "unknown field"),
    ],
)
def test_invalid_templates_are_rejected(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        template(**fields)


text = st.text(max_size=300)


@given(values=st.fixed_dictionaries(dict.fromkeys(sorted(VARIABLES), text)))
def test_no_value_escapes_the_json_around_it_or_splits_a_header(values: dict[str, str]) -> None:
    t = template(
        headers={"X-Request-ID": "${request_id}", "X-Why": "$error_type at $timestamp"},
        json={"service": "${service}", "note": "retry after ${retry_after}s"},
    )
    rendered = t.render(values)
    body = json.loads(rendered.body)
    assert set(body) == {"service", "note"}
    assert body["service"] == values["service"][:MAX_VARIABLE_LENGTH]
    for value in rendered.headers.values():
        assert all(ord(c) >= 32 and ord(c) != 127 for c in value)
    # Single pass: a value that looks like a placeholder stays as it is.
    assert rendered.headers["X-Request-ID"] == (
        values["request_id"][:MAX_VARIABLE_LENGTH].translate(dict.fromkeys([*range(32), 127]))
    )


def test_a_value_that_looks_like_a_placeholder_is_not_substituted_again() -> None:
    rendered = template(text="${request_id}").render(VALUES | {"request_id": "${service}"})
    assert rendered.body == b"${service}"
