"""Tests of the complete-error validator and of configuration document parsing."""

from __future__ import annotations

import copy
import datetime as dt
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import hypothesis.strategies as st
import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from msgspec import Meta, Struct

from healkit._config.formats import DocumentFormat, format_for_path, load_file, parse_document
from healkit._config.validate import check, join_path, merge, validate
from healkit._errors import ConfigError, ConfigIssue

FAST = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --- test models ------------------------------------------------------------------

Seconds = Annotated[float, Meta(gt=0, le=3600)]
Endpoint = Annotated[str, Meta(pattern=r"^https?://[a-z0-9.-]+(:[0-9]{1,5})?$")]
DEFAULT_READ = 10.0
DEFAULT_ATTEMPT = 30.0


class Timeouts(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    connect: Seconds = 5.0
    read: Seconds = DEFAULT_READ
    attempt: Seconds = DEFAULT_ATTEMPT
    deadline: Seconds | None = None

    def __post_init__(self) -> None:
        if self.read > self.attempt:
            raise ValueError("read must not exceed attempt")


class Retry(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    attempts: Annotated[int, Meta(ge=1, le=10)] = 3
    methods: frozenset[Literal["GET", "HEAD", "PUT", "DELETE"]] = frozenset({"GET", "HEAD"})
    statuses: tuple[Annotated[int, Meta(ge=100, lt=600)], ...] = (502, 503, 504)


class Service(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    endpoints: list[Endpoint]
    timeout: Timeouts = Timeouts()
    retry: Retry | None = None
    mode: Literal["primary", "standby"] = "primary"
    enabled: bool = True
    tags: dict[str, Annotated[str, Meta(min_length=1, max_length=8)]] = {}
    routes: dict[str, Timeouts] = {}
    weight: int | str = 1


class Root(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    services: dict[str, Service] = {}
    default_timeout: Timeouts = Timeouts()


class Renamed(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="camel"):
    max_body_bytes: Annotated[int, Meta(ge=0)] = 0


class Opaque(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    when: dt.date | None = None
    step: Annotated[float, Meta(multiple_of=0.5)] = 1.0


class Wrapper(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    inner: list[Opaque] = []


class TypeChecked(Struct, frozen=True, kw_only=True):
    size: int = 0

    def __post_init__(self) -> None:
        if self.size == 13:
            raise TypeError("size 13 is unlucky")


def payments(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {"endpoints": ["https://pay.internal:8443"]}
    doc.update(changes)
    return {"services": {"payments": doc}}


def issues_of(raw: object, model: type[Any] = Root) -> list[tuple[str, str]]:
    value, issues = validate(raw, model)
    assert (value is None) == bool(issues)
    return [(issue.path, issue.reason) for issue in issues]


# --- reasons and paths -------------------------------------------------------------

P = "$.services.payments"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            payments(timeout={"conect": 1}),
            [
                (
                    f"{P}.timeout",
                    "unknown key 'conect' (known keys: attempt, connect, deadline, read)",
                )
            ],
            id="unknown-key",
        ),
        pytest.param(
            payments(timeout={"read": "2s"}),
            [(f"{P}.timeout.read", "expected a number, got str")],
            id="number-got-str",
        ),
        pytest.param(
            payments(timeout={"read": True}),
            [(f"{P}.timeout.read", "expected a number, got bool")],
            id="bool-is-not-a-number",
        ),
        pytest.param(
            payments(timeout={"connect": 0}),
            [(f"{P}.timeout.connect", "must be > 0")],
            id="gt",
        ),
        pytest.param(
            payments(timeout={"attempt": 3600.5}),
            [(f"{P}.timeout.attempt", "must be <= 3600")],
            id="le",
        ),
        pytest.param(
            payments(timeout={"connect": math.nan}),
            [(f"{P}.timeout.connect", "must be a finite number, got nan")],
            id="nan",
        ),
        pytest.param(
            payments(timeout={"deadline": -math.inf}),
            [(f"{P}.timeout.deadline", "must be a finite number, got -inf")],
            id="inf-in-optional",
        ),
        pytest.param(
            payments(timeout={"connect": 10**400}),
            [(f"{P}.timeout.connect", "number is too large")],
            id="huge-int-for-float",
        ),
        pytest.param(
            payments(timeout={"deadline": "soon"}),
            [(f"{P}.timeout.deadline", "expected a number or null, got str")],
            id="optional-wrong-kind",
        ),
        pytest.param(
            {"services": {"payments": {}}},
            [(P, "missing required key 'endpoints'")],
            id="missing-required",
        ),
        pytest.param(
            payments(mode="active"),
            [(f"{P}.mode", "expected one of 'primary', 'standby', got 'active'")],
            id="literal",
        ),
        pytest.param(
            payments(mode=1),
            [(f"{P}.mode", "expected one of 'primary', 'standby', got 1")],
            id="literal-wrong-kind",
        ),
        pytest.param(
            payments(timeout=[1, 2]),
            [(f"{P}.timeout", "expected an object, got list")],
            id="object-got-list",
        ),
        pytest.param(
            payments(endpoints="https://pay"),
            [(f"{P}.endpoints", "expected a list, got str")],
            id="list-got-str",
        ),
        pytest.param(
            payments(endpoints=["https://a", 7, "ftp://b"]),
            [
                (f"{P}.endpoints[1]", "expected a string, got int"),
                (
                    f"{P}.endpoints[2]",
                    "must match the pattern '^https?://[a-z0-9.-]+(:[0-9]{1,5})?$'",
                ),
            ],
            id="list-items",
        ),
        pytest.param(
            payments(enabled="yes"),
            [(f"{P}.enabled", "expected a boolean, got str")],
            id="bool",
        ),
        pytest.param(
            payments(enabled=None),
            [(f"{P}.enabled", "expected a boolean, got null")],
            id="null",
        ),
        pytest.param(
            payments(tags={"team": "", "owner": "much-too-long"}),
            [
                (f"{P}.tags.team", "must be at least 1 character long"),
                (f"{P}.tags.owner", "must be at most 8 characters long"),
            ],
            id="string-length",
        ),
        pytest.param(
            payments(routes={"GET /users/{id}": {"read": 0}}),
            [(f'{P}.routes["GET /users/{{id}}"].read', "must be > 0")],
            id="bracket-key",
        ),
        pytest.param(
            payments(routes={"x": {"read": 60}}),
            [(f"{P}.routes.x", "read must not exceed attempt")],
            id="post-init",
        ),
        pytest.param(
            payments(routes={1: {}}),
            [(f"{P}.routes", "invalid key 1: expected a string, got int")],
            id="non-string-dict-key",
        ),
        pytest.param(
            payments(timeout={None: 1}),
            [(f"{P}.timeout", "invalid key None: keys must be strings")],
            id="non-string-struct-key",
        ),
        pytest.param(
            payments(retry={"attempts": 0, "methods": ["GET", "POST"], "statuses": [600]}),
            [
                (f"{P}.retry.attempts", "must be >= 1"),
                (
                    f"{P}.retry.methods[1]",
                    "expected one of 'DELETE', 'GET', 'HEAD', 'PUT', got 'POST'",
                ),
                (f"{P}.retry.statuses[0]", "must be < 600"),
            ],
            id="nested-optional-struct",
        ),
        pytest.param(
            payments(weight=1.5),
            [(f"{P}.weight", "expected an integer or a string, got float")],
            id="union",
        ),
        pytest.param(
            payments(retry={"attempts": 2.0}),
            [(f"{P}.retry.attempts", "expected an integer, got float")],
            id="float-for-int",
        ),
        pytest.param(
            {"services": []},
            [("$.services", "expected an object, got list")],
            id="dict-got-list",
        ),
        pytest.param(None, [("$", "expected an object, got null")], id="top-null"),
        pytest.param(b"{}", [("$", "expected an object, got bytes")], id="top-bytes"),
        pytest.param(
            {"services": {"a b": {"endpoints": [b"https://x"]}}},
            [('$.services["a b"].endpoints[0]', "expected a string, got bytes")],
            id="bytes-for-str",
        ),
    ],
)
def test_reasons_and_paths(raw: object, expected: list[tuple[str, str]]) -> None:
    assert issues_of(raw) == expected


def test_three_unrelated_errors_give_exactly_three_issues() -> None:
    raw = {
        "services": {
            "payments": {"endpoints": ["https://pay"], "timeout": {"read": -1}},
            "search": {"endpoints": ["https://search"], "mode": "hot"},
        },
        "default_timeout": {"deadline": "never"},
    }
    assert issues_of(raw) == [
        ("$.services.payments.timeout.read", "must be > 0"),
        ("$.services.search.mode", "expected one of 'primary', 'standby', got 'hot'"),
        ("$.default_timeout.deadline", "expected a number or null, got str"),
    ]


def test_every_problem_of_one_document_is_reported() -> None:
    raw = {
        "services": {
            "payments": {
                "endpoints": ["https://pay", "gopher://x"],
                "timeout": {"conect": 1, "read": "x", "attempt": 0},
                "routes": {"a": {"read": 100}, "b": {"read": 200}},
                "colour": "blue",
            },
            "search": {"timeout": None},
        },
        "extra": 1,
    }
    assert issues_of(raw) == [
        (
            "$.services.payments.endpoints[1]",
            "must match the pattern '^https?://[a-z0-9.-]+(:[0-9]{1,5})?$'",
        ),
        (
            "$.services.payments.timeout",
            "unknown key 'conect' (known keys: attempt, connect, deadline, read)",
        ),
        ("$.services.payments.timeout.read", "expected a number, got str"),
        ("$.services.payments.timeout.attempt", "must be > 0"),
        ("$.services.payments.routes.a", "read must not exceed attempt"),
        ("$.services.payments.routes.b", "read must not exceed attempt"),
        (
            "$.services.payments",
            (
                "unknown key 'colour' (known keys: enabled, endpoints, mode, retry, routes, tags, "
                "timeout, weight)"
            ),
        ),
        ("$.services.search.timeout", "expected an object, got null"),
        ("$.services.search", "missing required key 'endpoints'"),
        ("$", "unknown key 'extra' (known keys: default_timeout, services)"),
    ]


def test_post_init_runs_only_when_fields_are_valid() -> None:
    # read > attempt, but attempt is also out of range: only the field is reported.
    assert issues_of(payments(timeout={"read": 100, "attempt": 5000})) == [
        ("$.services.payments.timeout.attempt", "must be <= 3600"),
    ]


def test_post_init_type_error_is_an_issue() -> None:
    assert issues_of({"size": 13}, TypeChecked) == [("$", "size 13 is unlucky")]


def test_unknown_keys_are_ignored_when_the_model_allows_them() -> None:
    value, issues = validate({"size": 1, "other": 2}, TypeChecked)
    assert issues == []
    assert value == TypeChecked(size=1)


def test_renamed_fields_use_the_document_name() -> None:
    assert issues_of({"maxBodyBytes": -1}, Renamed) == [("$.maxBodyBytes", "must be >= 0")]
    assert issues_of({"max_body_bytes": 1}, Renamed) == [
        ("$", "unknown key 'max_body_bytes' (known keys: maxBodyBytes)"),
    ]


def test_types_left_to_msgspec_are_translated_and_rebased() -> None:
    assert issues_of({"inner": [{}, {"when": "yesterday"}]}, Wrapper) == [
        ("$.inner[1].when", "invalid RFC3339 encoded date"),
    ]
    assert issues_of({"inner": [{"step": 0.7}]}, Wrapper) == [
        ("$.inner[0].step", "expected float that's a multiple of 0.5"),
    ]
    value, issues = validate({"inner": [{"when": "2024-02-29", "step": 2}]}, Wrapper)
    assert issues == []
    assert value == Wrapper(inner=[Opaque(when=dt.date(2024, 2, 29), step=2.0)])


class Node(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str = ""
    children: list[Node] = []


def test_recursive_models_and_deep_documents() -> None:
    assert issues_of({"children": [{"children": [{"name": 1}]}]}, Node) == [
        ("$.children[0].children[0].name", "expected a string, got int"),
    ]
    deep: dict[str, object] = {}
    for _ in range(10_000):
        deep = {"children": [deep]}
    assert issues_of(deep, Node) == [("$", "the document is nested too deeply")]


def test_path_argument_prefixes_every_issue() -> None:
    value, issues = validate({"read": 0}, Timeouts, path="$.services.payments.timeout")
    assert value is None
    assert issues == [ConfigIssue("$.services.payments.timeout.read", "must be > 0")]


def test_models_that_are_not_structs() -> None:
    value, issues = validate({"a": {"read": 1}}, dict[str, Timeouts])
    assert issues == []
    assert value == {"a": Timeouts(read=1.0)}
    assert validate([1, "x"], list[int]) == (
        None,
        [ConfigIssue("$[1]", "expected an integer, got str")],
    )
    assert validate([], list[int]) == ([], [])


def test_valid_document_with_defaults_and_conversions() -> None:
    raw = payments(
        retry={"methods": ["PUT", "PUT"], "statuses": [500]},
        timeout={"read": 1, "attempt": 2},
        weight="heavy",
    )
    value, issues = validate(raw, Root)
    assert issues == []
    assert value == msgspec.convert(raw, Root)
    assert value is not None
    service = value.services["payments"]
    assert service.retry == Retry(methods=frozenset({"PUT"}), statuses=(500,))
    assert service.timeout == Timeouts(read=1.0, attempt=2.0)
    assert isinstance(service.timeout.read, float)


@pytest.mark.parametrize(
    ("path", "key", "expected"),
    [
        ("$", "services", "$.services"),
        ("$.services", "pay-ments_2", "$.services.pay-ments_2"),
        ("$.endpoints", 2, "$.endpoints[2]"),
        ("$.routes", "GET /x", '$.routes["GET /x"]'),
        ("$.routes", "2fa", '$.routes["2fa"]'),
        ("$.routes", "", '$.routes[""]'),
        ("$.routes", 'a"b', '$.routes["a\\"b"]'),
    ],
)
def test_join_path(path: str, key: str | int, expected: str) -> None:
    assert join_path(path, key) == expected


# --- check ------------------------------------------------------------------------


def test_check_returns_the_instance() -> None:
    assert check({"read": 2}, Timeouts) == Timeouts(read=2.0)


def test_check_raises_with_every_issue_and_the_origin() -> None:
    with pytest.raises(ConfigError) as caught:
        check({"read": 0, "connect": "x"}, Timeouts, origin="/etc/healkit.toml")
    error = caught.value
    assert error.origin == "/etc/healkit.toml"
    assert error.issues == (
        ConfigIssue("$.read", "must be > 0"),
        ConfigIssue("$.connect", "expected a number, got str"),
    )
    assert "2 problems" in str(error)


# --- merge ------------------------------------------------------------------------


def test_merge_is_deep_and_lists_replace() -> None:
    base: dict[str, object] = {
        "timeout": {"read": 1, "attempt": 5},
        "endpoints": ["https://a", "https://b"],
        "retry": {"attempts": 3},
        "mode": "primary",
    }
    override: dict[str, object] = {
        "timeout": {"read": 2},
        "endpoints": ["https://c"],
        "retry": None,
        "extra": {"x": 1},
    }
    before = (copy.deepcopy(base), copy.deepcopy(override))
    assert merge(base, override) == {
        "timeout": {"read": 2, "attempt": 5},
        "endpoints": ["https://c"],
        "retry": None,
        "mode": "primary",
        "extra": {"x": 1},
    }
    assert (base, override) == before


def test_merge_replaces_a_mapping_with_a_scalar_and_back() -> None:
    assert merge({"a": {"b": 1}}, {"a": 2}) == {"a": 2}
    assert merge({"a": 2}, {"a": {"b": 1}}) == {"a": {"b": 1}}


JSON_KEYS = st.sampled_from(["a", "b", "c"])
DOCS = st.recursive(
    st.integers() | st.text(max_size=3) | st.none(),
    lambda inner: st.dictionaries(JSON_KEYS, inner, max_size=3),
    max_leaves=10,
).filter(lambda value: isinstance(value, dict))


def _naive_merge(base: object, override: object) -> object:
    if isinstance(base, dict) and isinstance(override, dict):
        keys = list(base) + [key for key in override if key not in base]
        return {
            key: _naive_merge(base.get(key), override[key]) if key in override else base[key]
            for key in keys
        }
    return override


@FAST
@given(DOCS, DOCS)
def test_merge_properties(base: dict[str, object], override: dict[str, object]) -> None:
    before = (copy.deepcopy(base), copy.deepcopy(override))
    merged = merge(base, override)
    assert (base, override) == before
    assert merged == _naive_merge(base, override)
    assert merge(merged, override) == merged
    assert merge(base, {}) == base
    assert merge({}, override) == override


# --- properties of validate ---------------------------------------------------------

FIELD_NAMES = sorted(
    {
        field.encode_name
        for model in (Root, Service, Timeouts, Retry)
        for field in msgspec.structs.fields(model)
    }
)
ANY_KEY = (
    st.sampled_from(FIELD_NAMES)
    | st.text(max_size=5)
    | st.integers()
    | st.none()
    | st.booleans()
    | st.floats()
)
JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**320)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["GET", "primary", "https://x.io", "https://a:1"])
    | st.binary(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_KEY, inner, max_size=5),
    max_leaves=30,
)


def _has_non_finite(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_non_finite(item) for item in value)
    if isinstance(value, dict):
        return any(_has_non_finite(item) for item in value.values())
    return False


@FAST
@given(raw=JSONISH, model=st.sampled_from([Root, Service, Timeouts, Retry, dict[str, Timeouts]]))
def test_validate_never_raises_and_agrees_with_msgspec(raw: object, model: type[Any]) -> None:
    value, issues = validate(raw, model)
    try:
        expected = msgspec.convert(raw, model, strict=True)
    except msgspec.ValidationError:
        assert value is None
        assert issues, "msgspec refused a document that validate accepted"
        return
    if issues:
        # The only documents validate refuses on top of msgspec: non-finite floats.
        assert value is None
        assert _has_non_finite(raw)
    else:
        assert value == expected


def _valid_values(  # noqa: C901, PLR0911
    info: mi.Type, fixups: Mapping[type, Callable[[dict[str, Any]], dict[str, Any]]]
) -> st.SearchStrategy[Any]:
    """Generate valid document values for a (test) model, from its msgspec type info."""
    if isinstance(info, mi.StructType):
        required = {f.encode_name: _valid_values(f.type, fixups) for f in info.fields if f.required}
        optional = {
            f.encode_name: _valid_values(f.type, fixups) for f in info.fields if not f.required
        }
        docs = st.fixed_dictionaries(required, optional=optional)
        fix = fixups.get(info.cls)
        return docs.map(fix) if fix is not None else docs
    if isinstance(info, mi.UnionType):
        return st.one_of([_valid_values(member, fixups) for member in info.types])
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.IntType):
        low = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else None)
        high = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else None)
        return st.integers(low, high)
    if isinstance(info, mi.FloatType):
        floats = st.floats(
            min_value=info.gt if info.gt is not None else info.ge,
            max_value=info.lt if info.lt is not None else info.le,
            exclude_min=info.gt is not None,
            exclude_max=info.lt is not None,
            allow_nan=False,
            allow_infinity=False,
        )
        return floats | st.integers(1, 3600)
    if isinstance(info, mi.StrType):
        if info.pattern is not None:
            return st.from_regex(info.pattern, fullmatch=True)  # "$" ends the value
        return st.text(min_size=info.min_length or 0, max_size=info.max_length)
    if isinstance(info, mi.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, mi.CollectionType):
        return st.lists(_valid_values(info.item_type, fixups), max_size=3)
    if isinstance(info, mi.DictType):
        return st.dictionaries(
            _valid_values(info.key_type, fixups), _valid_values(info.value_type, fixups), max_size=3
        )
    raise NotImplementedError(info)


def _fix_timeouts(doc: dict[str, Any]) -> dict[str, Any]:
    read = doc.get("read", DEFAULT_READ)
    attempt = doc.get("attempt", DEFAULT_ATTEMPT)
    if read <= attempt:
        return doc
    return {**doc, "read": attempt} if "read" in doc else {**doc, "attempt": read}


VALID_ROOTS = _valid_values(mi.type_info(Root), {Timeouts: _fix_timeouts})


@FAST
@given(VALID_ROOTS)
def test_valid_documents_give_the_same_instance_as_msgspec(raw: dict[str, Any]) -> None:
    value, issues = validate(raw, Root)
    assert issues == []
    assert value == msgspec.convert(raw, Root, strict=True)


# --- document parsing ---------------------------------------------------------------

EXPECTED_DOC = {"services": {"payments": {"endpoints": ["https://pay"], "timeout": {"read": 2.5}}}}


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        (
            "json",
            '{"services": {"payments": {"endpoints": ["https://pay"], "timeout": {"read": 2.5}}}}',
        ),
        (
            "yaml",
            "services:\n  payments:\n    endpoints: [https://pay]\n    timeout:\n      read: 2.5\n",
        ),
        (
            "toml",
            (
                '[services.payments]\nendpoints = ["https://pay"]\n\n'
                "[services.payments.timeout]\nread = 2.5\n"
            ),
        ),
    ],
)
def test_parse_valid_documents(fmt: Literal["json", "yaml", "toml"], text: str) -> None:
    assert parse_document(text, fmt=fmt, origin="x") == EXPECTED_DOC
    assert parse_document(text.encode(), fmt=fmt, origin="x") == EXPECTED_DOC
    assert parse_document(b"\xef\xbb\xbf" + text.encode(), fmt=fmt, origin="x") == EXPECTED_DOC


def _parse_error(text: str | bytes, fmt: Literal["json", "yaml", "toml"]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_document(text, fmt=fmt, origin="conf/app." + fmt)
    error = caught.value
    assert error.origin == "conf/app." + fmt
    assert len(error.issues) == 1
    assert error.path == "$"
    assert "\n" not in error.reason
    return error


@pytest.mark.parametrize(
    ("fmt", "text", "reason"),
    [
        ("json", '{"a": 1,}', "invalid JSON: trailing comma in object at line 1, column 9"),
        ("json", '{"a":\n  @}', "invalid JSON: invalid character at line 2, column 3"),
        ("json", '{"a": 1', "invalid JSON: input data was truncated"),
        ("json", "[" * 100_000, "the document nests deeper than 64 levels (max_depth)"),
        (
            "yaml",
            "a: b: c",
            "invalid YAML: mapping values are not allowed in this context at line 1, column 5",
        ),
        (
            "yaml",
            "a: [1, 2",
            (
                "invalid YAML: while parsing a flow sequence at line 1, column 4: "
                "did not find expected ',' or ']' at line 2, column 1"
            ),
        ),
        ("yaml", "a: 2001-02-30", "invalid YAML: day is out of range for month"),
        (
            "yaml",
            "a: 1\n---\nb: 2\n",
            (
                "invalid YAML: expected a single document in the stream at line 1, column 1: "
                "but found another document at line 2, column 1"
            ),
        ),
        (
            "yaml",
            "a: *nowhere",
            "invalid YAML: found undefined alias 'nowhere' at line 1, column 4",
        ),
        ("toml", "a = ", "invalid TOML: Invalid value (at end of document)"),
        ("toml", "a = 1\na = 2", "invalid TOML: Cannot overwrite a value (at end of document)"),
        ("toml", "a = [1,,]", "invalid TOML: Invalid value (at line 1, column 8)"),
        ("json", "[1, 2]", "the document must be an object/table at the top level, got list"),
        ("json", "null", "the document must be an object/table at the top level, got null"),
        ("yaml", "", "the document must be an object/table at the top level, got null"),
        ("yaml", "- a\n- b\n", "the document must be an object/table at the top level, got list"),
        ("yaml", "just text", "the document must be an object/table at the top level, got str"),
    ],
)
def test_parse_broken_documents(
    fmt: Literal["json", "yaml", "toml"], text: str, reason: str
) -> None:
    assert _parse_error(text, fmt).reason.lower() == reason.lower()


@pytest.mark.parametrize("fmt", ["json", "yaml", "toml"])
def test_parse_refuses_non_utf8(fmt: Literal["json", "yaml", "toml"]) -> None:
    error = _parse_error(b'{"a": "caf\xe9"}', fmt)
    assert error.reason == "the document is not valid UTF-8: invalid continuation byte at byte 10"


@pytest.mark.parametrize(
    "text",
    [
        "a: !!python/object:os.system {}",
        "!!python/object/apply:os.system ['echo pwned']",
        "a: !!python/name:os.system",
        "a: !custom 3",
    ],
)
def test_yaml_refuses_python_tags(text: str) -> None:
    error = _parse_error(text, "yaml")
    assert error.reason.startswith("invalid YAML: could not determine a constructor for the tag")


@pytest.mark.parametrize(
    ("text", "fmt"), [("a: 1\nb: 2\na: 3\n", "yaml"), ('{"a": 1, "b": 2, "a": 3}', "json")]
)
def test_duplicate_keys_are_refused(text: str, fmt: DocumentFormat) -> None:
    # More cases, and every reader: tests/test_duplicate_keys.py.
    with pytest.raises(ConfigError) as caught:
        parse_document(text, fmt=fmt, origin="x")
    assert [issue.path for issue in caught.value.issues] == ["$.a"]


def test_yaml_anchors_and_merge_keys() -> None:
    text = "base: &base {read: 1, attempt: 2}\nother:\n  <<: *base\n  read: 0.5\n"
    assert parse_document(text, fmt="yaml", origin="x") == {
        "base": {"read": 1, "attempt": 2},
        "other": {"read": 0.5, "attempt": 2},
    }


def test_yaml_non_string_keys_are_left_to_validation() -> None:
    doc = parse_document("1: a\nnull: b\n", fmt="yaml", origin="x")
    assert doc == {1: "a", None: "b"}
    assert issues_of(doc, Timeouts) == [
        ("$", "invalid key 1: keys must be strings"),
        ("$", "invalid key None: keys must be strings"),
    ]


@FAST
@given(
    text=st.text(max_size=40) | st.binary(max_size=40),
    fmt=st.sampled_from(["json", "yaml", "toml"]),
)
def test_parse_document_only_raises_config_error(
    text: str | bytes, fmt: Literal["json", "yaml", "toml"]
) -> None:
    try:
        outcome: object = parse_document(text, fmt=fmt, origin="fuzz")
    except ConfigError as error:
        outcome = error
    if isinstance(outcome, ConfigError):
        assert outcome.issues
    else:
        assert isinstance(outcome, dict)


# --- files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("app.json", "json"),
        ("app.yaml", "yaml"),
        ("app.yml", "yaml"),
        ("app.toml", "toml"),
        ("/etc/healkit/APP.YML", "yaml"),
        (Path("conf.d/app.Toml"), "toml"),
    ],
)
def test_format_for_path(name: str | Path, fmt: str) -> None:
    assert format_for_path(name) == fmt


@pytest.mark.parametrize(
    ("name", "what"),
    [("app.ini", "suffix '.ini'"), ("app", "no suffix"), ("app.json.bak", "suffix '.bak'")],
)
def test_format_for_path_refuses_other_suffixes(name: str, what: str) -> None:
    with pytest.raises(ConfigError) as caught:
        format_for_path(name)
    assert caught.value.path == "$"
    assert (
        caught.value.reason
        == f"unsupported file type ({what}): use one of .json, .toml, .yaml, .yml"
    )
    assert caught.value.origin == name


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "healkit.yaml"
    path.write_text(
        "services:\n  payments:\n    endpoints: [https://pay]\n    timeout: {read: 2.5}\n"
    )
    assert load_file(path) == EXPECTED_DOC
    assert load_file(str(path)) == EXPECTED_DOC


def test_load_file_names_the_os_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load_file(missing)
    assert caught.value.reason == "cannot read the file: No such file or directory (ENOENT)"
    assert caught.value.origin == str(missing)
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"cannot read the file: Is a directory \(EISDIR\)"):
        load_file(folder)


def test_load_file_reports_syntax_errors_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(b'{"services": }')
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    assert caught.value.origin == str(path)
    assert caught.value.reason == "invalid JSON: invalid character at line 1, column 14"
