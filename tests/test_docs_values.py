"""Every value the docs list for a closed set is the code's set, no more, no less.

Where a page enumerates the values of a ``Literal`` or an enum (the paths a
call takes, breaker states and transition reasons, the failure kinds of the
retry and breaker plugins, the etcd source's connection states, the string
choices of every configuration key), the test reads the list from the page and
compares it with the code, so that a value added, renamed or removed in one
place fails until the other follows.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import msgspec
import pytest

import healkit_breaker
import healkit_retry
from healkit._outcome import PathTaken
from healkit.events import Connection
from test_docs import DOCS, MODELS, PAGES, reference_rows

TICKED = re.compile(r"`([^`]+)`")


def values(text: str) -> set[str]:
    """The values in backticks in ``text``, without the quotes of a string literal."""
    return {value.strip('"') for value in TICKED.findall(text)}


def section(page: str, heading: str) -> str:
    """The text under ``heading`` of ``docs/page``, up to the next heading of its level or above.

    Lines inside fenced code blocks are never headings (a ``# comment`` of a TOML
    or Python example).
    """
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    headings: list[tuple[int, int, str]] = []  # line, level, title
    fenced = False
    for number, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (found := re.match(r"(#+) (.+)$", line)):
            headings.append((number, len(found[1]), found[2].strip()))
    matches = [(number, level) for number, level, title in headings if title == heading]
    assert matches, f"docs/{page} has no heading {heading!r}"
    start, level = matches[0]
    end = next(
        (number for number, deeper, _ in headings if number > start and deeper <= level),
        len(lines),
    )
    return "\n".join(lines[start + 1 : end])


def table(text: str) -> list[list[str]]:
    """The body rows of the tables in ``text``, as lists of cells (``\\|`` kept in its cell)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return [row for row in rows[1:] if row]  # without the header row


def row(text: str, first_cell: str) -> list[str]:
    """The table row of ``text`` whose first cell is ``first_cell``."""
    found = [cells for cells in table(text) if cells[0] == first_cell]
    assert len(found) == 1, f"no single row {first_cell!r}"
    return found[0]


def literal_values(annotation: Any) -> set[str]:
    """The strings of the ``Literal`` inside ``annotation`` (through tuples and unions)."""
    if get_origin(annotation) is Literal:
        return {str(arg) for arg in get_args(annotation)}
    found: set[str] = set()
    for arg in get_args(annotation):
        if arg is not Ellipsis:
            found |= literal_values(arg)
    return found


# --- the path a call takes -------------------------------------------------------------


def test_concepts_lists_every_path() -> None:
    text = section("concepts.md", "The path a call takes")
    listed = set(re.findall(r"^- `(\w+)`:", text, re.MULTILINE))
    assert listed == set(get_args(PathTaken))


def test_quickstart_lists_every_path() -> None:
    text = (DOCS / "quickstart.md").read_text(encoding="utf-8")
    sentence = re.search(r"`outcome\.path` is one of (.*?)\.\s*$", text, re.MULTILINE | re.DOTALL)
    assert sentence is not None
    paragraph = sentence[1].split("\n\n")[0]
    assert set(re.findall(r'`"(\w+)"`', paragraph)) == set(get_args(PathTaken))


def test_tracing_span_path_values_are_paths() -> None:
    cells = row(section("plugins/tracing.md", "A span per attempt"), "`healkit.path`")
    # an attempt starts on the primary path or a retry; substitutes are not attempts
    assert values(cells[2]) == {"primary", "retry"} < set(get_args(PathTaken))


# --- the breaker ------------------------------------------------------------------------

STATES = {state.value for state in healkit_breaker.State}


def test_breaker_events_list_every_state_and_reason() -> None:
    text = section("plugins/breaker.md", "Events")
    assert values(row(text, "`from_state`, `to_state`")[2]) == STATES
    assert values(row(text, "`reason`")[2]) == set(get_args(healkit_breaker.TransitionReason))


def test_tracing_lists_every_breaker_state() -> None:
    cells = row(section("plugins/tracing.md", "A span per attempt"), "`healkit.breaker.state`")
    assert values(cells[2]) == STATES


def test_breaker_failure_table_lists_every_error_kind() -> None:
    text = section("plugins/breaker.md", "What counts as a failure")
    kinds = {kind for cells in table(text) for kind in re.findall(r'`"(\w+)"`', cells[1])}
    assert kinds == set(get_args(healkit_breaker.ErrorKind))


# --- the retry plugin -------------------------------------------------------------------


def test_retry_table_lists_every_failure_kind() -> None:
    text = section("plugins/retry.md", "What is retried")
    kinds = [cells[0] for cells in table(text)]
    assert kinds == [f"`{kind}`" for kind in get_args(healkit_retry.FailureKind)]


# --- etcd -------------------------------------------------------------------------------


def test_etcd_status_lists_every_connection_state() -> None:
    cells = row(section("etcd.md", "While etcd is away"), "`connection`")
    assert values(cells[1]) == set(get_args(Connection))


# --- every string choice of the configuration reference --------------------------------


def _choice_rows() -> list[tuple[Path, str, str]]:
    return [
        (page, found.key, found.type)
        for page in PAGES
        for found in reference_rows(page)
        if found.type.startswith(("string:", "list of strings:"))
    ]


CHOICE_ROWS = _choice_rows()


def field_type(key: str) -> Any:
    prefix, _, name = key.rpartition(".")
    model = MODELS[f"{prefix}." if prefix else ""]
    hints = typing.get_type_hints(model, include_extras=True)
    for field in msgspec.structs.fields(model):
        if field.encode_name == name:
            return hints[field.name]
    pytest.fail(f"{key} is not a field of {model.__name__}")


@pytest.mark.parametrize(("page", "key", "kind"), CHOICE_ROWS, ids=[r[1] for r in CHOICE_ROWS])
def test_reference_lists_every_choice(page: Path, key: str, kind: str) -> None:
    """A ``string: "a", "b"`` type names exactly the values of the field's ``Literal``."""
    documented = set(re.findall(r'`"([^"`]+)"`', kind))
    expected = literal_values(field_type(key))
    assert expected, f"{page.name}: `{key}` is documented as a choice but is not a Literal"
    assert documented == expected, f"{page.name}: `{key}` lists {sorted(documented)}"


def test_choice_rows_exist() -> None:
    keys = {key for _, key, _ in CHOICE_ROWS}
    assert {"breaker.mode", "breaker.failure_errors", "routing.balance"} <= keys


def test_literal_values_unwraps_containers() -> None:
    assert literal_values(tuple[Literal["a", "b"], ...]) == {"a", "b"}
    assert literal_values(Literal["a"] | None) == {"a"}
    assert literal_values(types.NoneType) == set()
