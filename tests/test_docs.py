"""The documentation is tested like code.

* The ```python blocks of ``docs/quickstart.md`` and the README's are whole
  programs: each runs as printed, as a file, in a Python process of its own
  (starting its own upstream on loopback and ending with ``asyncio.run(main())``),
  and every line shown as ``# prints: LINE`` is a line of its output, in order.
* Every other ```python block of ``docs/*.md`` and ``docs/plugins/*.md`` runs,
  each in a fresh module. A block may define ``async def main()``; it is then
  awaited on the test's event loop. Blocks read the URL of a real aiohttp server
  on loopback from the variable ``UPSTREAM`` (see :func:`upstream` for its routes).
  Their ``# prints: LINE`` comments are checked the same way.
* The configuration reference (every table whose first column is ``Key``) names
  exactly the fields of the core and timeout-plugin models, with their defaults.
* Every hook of :mod:`healkit.hookspecs` has a heading and its exact signature
  in ``docs/writing-plugins.md``.
* The error tree of ``docs/concepts.md`` is the one drawn in ``healkit._errors``.
* TOML documents shown in the docs are valid healkit configuration (or, when
  their first line says ``(invalid)``, rejected); relative links inside docs/ resolve.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import subprocess
import sys
import tomllib
import types
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

import healkit
import healkit_breaker
import healkit_example_plugin
import healkit_hedge
import healkit_limit
import healkit_retry
import healkit_timeout
import healkit_tls
import healkit_tracing
from healkit import _errors, hookspecs
from healkit._cli.entry import main as cli_main
from healkit._config.models import CoreServiceSettings, LoggingSettings
from healkit._degraded import SECTION as DEGRADED_SECTION
from healkit._degraded import DegradedSettings
from healkit._routing.settings import SECTION as ROUTING_SECTION
from healkit._routing.settings import RoutingSettings
from healkit.testing import EtcdServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + sorted(DOCS.glob("plugins/*.md"))
EXAMPLE_PLUGIN_SOURCE = (
    DOCS / "examples/healkit-example-plugin/src/healkit_example_plugin/__init__.py"
)
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
SOURCE_MARKER = re.compile(r"^<!-- source: (?P<path>\S+) -->$")
OUTPUT_MARKER = re.compile(r"^<!-- output: healkit (?P<args>.+) -->$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the first line of code
    lang: str
    code: str
    source: str | None  # the file this block must reproduce, from a marker above it
    command: str | None  # the healkit command whose output this block shows, from a marker

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> Iterator[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        marker = SOURCE_MARKER.match(lines[index - 1]) if index else None
        output = OUTPUT_MARKER.match(lines[index - 1]) if index else None
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            pytest.fail(f"{page}:{index + 1}: unclosed code block")
        yield Block(
            page=page,
            line=index + 2,
            lang=opening["lang"],
            code="\n".join(lines[index + 1 : end]) + "\n",
            source=marker["path"] if marker else None,
            command=output["args"] if output else None,
        )
        index = end + 1


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
PROGRAM_PAGES = (DOCS / "quickstart.md", ROOT / "README.md")
"""Pages whose python blocks are whole programs, run as printed."""
PROGRAM_BLOCKS = [
    block for page in PROGRAM_PAGES for block in blocks(page) if block.lang == "python"
]
PYTHON_BLOCKS = [
    block for block in ALL_BLOCKS if block.lang == "python" and block.page not in PROGRAM_PAGES
]
TOML_BLOCKS = [block for block in ALL_BLOCKS if block.lang == "toml"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- the upstream service the examples call ----------------------------------------


def _upstream_app() -> web.Application:
    """The service behind ``UPSTREAM``.

    * ``GET /v1/items/{id}``: ``{"id": id, "name": "item <id>"}``
    * ``POST /v1/orders``: 201 and the JSON body back
    * ``GET /headers``: the request headers as a JSON object, names in lower case
    * ``GET /slow?seconds=S``: answers ``{}`` after S seconds (default 5)
    * ``* /status/{code}``: an empty response with that status
    * ``GET /flaky``: 503 on the first request, 200 ``{"ok": true}`` on the next, and so on
    * ``GET /export``: a 4 KiB body sent in four chunks
    """
    hits = {"flaky": 0}

    async def item(request: web.Request) -> web.Response:
        number = int(request.match_info["id"])
        return web.json_response({"id": number, "name": f"item {number}"})

    async def order(request: web.Request) -> web.Response:
        return web.json_response(await request.json(), status=201)

    async def headers(request: web.Request) -> web.Response:
        return web.json_response({name.lower(): value for name, value in request.headers.items()})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("seconds", "5")))
        return web.json_response({})

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    async def flaky(_: web.Request) -> web.Response:
        hits["flaky"] += 1
        if hits["flaky"] % 2:
            return web.Response(status=503, text="warming up")
        return web.json_response({"ok": True})

    async def export(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(4):
            await response.write(b"x" * 1024)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/items/{id:\\d+}", item)
    app.router.add_post("/v1/orders", order)
    app.router.add_get("/headers", headers)
    app.router.add_get("/slow", slow)
    app.router.add_route("*", "/status/{code:\\d{3}}", status)
    app.router.add_get("/flaky", flaky)
    app.router.add_get("/export", export)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    runner = web.AppRunner(
        _upstream_app(), handler_cancellation=True, shutdown_timeout=0.1, access_log=None
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


# --- every python example runs -------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.where for b in PYTHON_BLOCKS])
async def test_python_example_runs(
    block: Block, upstream: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "healkit_docs_example"
    module = types.ModuleType(name)
    module.__dict__["UPSTREAM"] = upstream
    # A real module, so that dataclasses and msgspec resolve the block's annotations.
    sys.modules[name] = module
    try:
        code = compile("\n" * (block.line - 1) + block.code, str(block.page), "exec")
        async with contextlib.AsyncExitStack() as stack:
            if "ETCD_URL" in block.code:  # the etcd page's examples get a real etcd
                etcd = await stack.enter_async_context(EtcdServer())
                module.__dict__["ETCD_URL"] = etcd.url
            exec(code, module.__dict__)  # noqa: S102 - running the documentation is the point
            main = module.__dict__.get("main")
            if inspect.iscoroutinefunction(main):
                await main()
    finally:
        del sys.modules[name]
    check_output(block, capsys.readouterr().out)


def test_examples_exist() -> None:
    pages = {block.page.name for block in [*PYTHON_BLOCKS, *PROGRAM_BLOCKS]}
    for page in ("quickstart.md", "concepts.md", "configuration.md", "writing-plugins.md"):
        assert page in pages, f"docs/{page} has no runnable example"
    assert "README.md" in pages, "the README's 'Use it' block is gone"


# --- the quickstart and the README run as printed --------------------------------------

PRINTS = re.compile(r"#\s*prints: (?P<line>.*)$")
PROGRAM_TIME_LIMIT = 120.0
"""Seconds a program may take before the test gives up on it (a bound, not a wait)."""


def expected_output(code: str) -> list[str]:
    """The lines a program shows as ``# prints: LINE`` comments, in order."""
    return [found["line"] for line in code.splitlines() if (found := PRINTS.search(line))]


@pytest.mark.parametrize("block", PROGRAM_BLOCKS, ids=[b.where for b in PROGRAM_BLOCKS])
def test_program_runs_as_printed(block: Block, tmp_path: Path) -> None:
    """Saved to a file and run with ``python``, the block prints what it says it prints."""
    assert "UPSTREAM" not in block.code, f"{block.where}: start an upstream of its own"
    assert block.code.rstrip().endswith("asyncio.run(main())"), (
        f"{block.where}: a program ends with asyncio.run(main())"
    )
    expected = expected_output(block.code)
    assert expected, f"{block.where}: show what the program prints (# prints: ...)"
    program = tmp_path / "example.py"
    program.write_text(block.code, encoding="utf-8")
    ran = subprocess.run(  # noqa: S603 - this interpreter, a file the test wrote
        [sys.executable, str(program)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=PROGRAM_TIME_LIMIT,
        check=False,
    )
    assert ran.returncode == 0, f"{block.where} failed:\n{ran.stderr}"
    check_output(block, ran.stdout)


def check_output(block: Block, stdout: str) -> None:
    """Every ``# prints: LINE`` of the block is a line of ``stdout``, in order."""
    output = iter(stdout.splitlines())
    for line in expected_output(block.code):  # healkit's log lines may come in between
        assert line in output, f"{block.where}: no line {line!r} in order in:\n{stdout}"


def test_expected_output_reads_prints_comments() -> None:
    code = "print(1)  # prints: 1\n# prints: x y\nprint(2)  # a remark\n"
    assert expected_output(code) == ["1", "x y"]


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.source], ids=lambda b: b.where)
def test_quoted_source_is_current(block: Block) -> None:
    """A block under ``<!-- source: PATH -->`` is that file, verbatim."""
    assert block.source is not None
    source = (ROOT / block.source).read_text(encoding="utf-8")
    assert block.code == source, f"{block.where}: update the copy of {block.source}"


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.command], ids=lambda b: b.where)
def test_sample_output_is_current(
    block: Block, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block under ``<!-- output: healkit ARGS -->`` is what that command prints."""
    assert block.command is not None
    monkeypatch.delenv("HEALKIT_BLOCK_PLUGINS", raising=False)
    assert cli_main(block.command.split()) == 0
    assert capsys.readouterr().out == block.code, f"{block.where}: update the sample output"


def test_the_example_plugin_is_quoted_in_the_guide() -> None:
    quoted = {b.source for b in ALL_BLOCKS if b.page.name == "writing-plugins.md"}
    assert str(EXAMPLE_PLUGIN_SOURCE.relative_to(ROOT)) in quoted


# --- the configuration reference matches the models ----------------------------------


@dataclass(frozen=True)
class Row:
    page: str
    key: str
    type: str
    default: str


def reference_rows(page: Path) -> list[Row]:
    """Rows of every table whose header starts with ``| Key |``."""
    rows: list[Row] = []
    columns: list[str] | None = None
    for line in page.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            columns = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if columns is None:
            columns = cells
            continue
        if columns[0] != "Key" or set(line) <= set("|-: "):
            continue
        values = dict(zip(columns, cells, strict=True))
        key = re.fullmatch(r"`([^`]+)`", values["Key"])
        assert key is not None, f"{page.name}: first cell must be a key in backticks: {line}"
        rows.append(Row(page.name, key[1], values["Type"], values["Default"]))
    return rows


MODELS: dict[str, type[msgspec.Struct]] = {
    "": CoreServiceSettings,
    "logging.": LoggingSettings,
    "state.": healkit.StateSettings,
    "degraded.": DegradedSettings,
    "routing.": RoutingSettings,
    "timeout.": healkit_timeout.TimeoutSettings,
    "retry.": healkit_retry.RetrySettings,
    "breaker.": healkit_breaker.BreakerSettings,
    "limit.": healkit_limit.LimitSettings,
    "hedge.": healkit_hedge.HedgeSettings,
    "tls.": healkit_tls.TlsSettings,
    "tracing.": healkit_tracing.TracingSettings,
}


def documented_keys() -> dict[str, Any]:
    """Every documented key and the default its model gives it."""
    keys: dict[str, Any] = {}
    for prefix, model in MODELS.items():
        for field in msgspec.structs.fields(model):
            if field.default is not msgspec.NODEFAULT:
                default = field.default
            else:
                assert field.default_factory is not msgspec.NODEFAULT
                default = field.default_factory()
            # as a document spells it: tuples are lists
            keys[prefix + field.encode_name] = msgspec.json.decode(msgspec.json.encode(default))
    return keys


def test_reference_names_every_key_with_its_default() -> None:
    """The reference names every core key; plugin keys each on their plugin's page."""
    expected = documented_keys()
    rows = reference_rows(DOCS / "configuration.md")
    core = {k for k in expected if not k.startswith(tuple(f"{p}." for p in PLUGIN_PAGES))}
    assert core <= {row.key for row in rows}
    for row in rows:
        _check_row(row, expected)


PLUGIN_PAGES = ("timeout", "retry", "breaker", "limit", "hedge", "tls", "tracing")
"""Plugins whose page documents every key of their section (docs/plugins/NAME.md)."""


@pytest.mark.parametrize("plugin", PLUGIN_PAGES)
def test_plugin_page_names_every_setting_with_its_default(plugin: str) -> None:
    expected = documented_keys()
    rows = reference_rows(DOCS / f"plugins/{plugin}.md")
    keys = sorted(k for k in expected if k.startswith(f"{plugin}."))
    assert sorted(row.key for row in rows) == keys
    for row in rows:
        _check_row(row, expected)


def test_no_reference_row_elsewhere_names_an_unknown_key() -> None:
    expected = documented_keys()
    for page in PAGES:
        for row in reference_rows(page):
            _check_row(row, expected)


def _check_row(row: Row, expected: dict[str, Any]) -> None:
    where = f"{row.page}: `{row.key}`"
    assert row.key in expected, f"{where} is not a configuration key"
    shown = re.fullmatch(r"`([^`]+)`.*", row.default)
    assert shown is not None, f"{where}: the default must start with a value in backticks"
    # TOML has no null: a setting whose default is "not set" is documented as `null`.
    value = None if shown[1] == "null" else tomllib.loads(f"value = {shown[1]}")["value"]
    assert value == expected[row.key], f"{where}: documented default {value!r}"
    assert type(value) is type(expected[row.key]), f"{where}: default {value!r} has the wrong type"
    kind = {
        float: "number",
        int: "integer",
        list: "list",
        bool: "boolean",
        str: "string",
        type(None): "null",
    }
    assert kind[type(expected[row.key])] in row.type, f"{where}: type {row.type!r}"


# --- every hook is documented ---------------------------------------------------------


def hook_specs() -> dict[str, Any]:
    specs = {
        name: function
        for name, function in vars(hookspecs).items()
        if name.startswith("healkit_") and hasattr(function, f"{hookspecs.PROJECT}_spec")
    }
    assert specs, "no hook specifications found"
    return specs


def signature(name: str, function: Any) -> str:
    """``name(arg: Type, ...) -> Result`` as written in the hook specification."""
    sig = inspect.signature(function)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_hook_is_documented(name: str) -> None:
    text = (DOCS / "writing-plugins.md").read_text(encoding="utf-8")
    heading = re.compile(rf"^#{{2,4}} `?{name}`?\s*$", re.MULTILINE)
    assert heading.search(text), f"writing-plugins.md has no heading for {name}"
    expected = signature(name, hook_specs()[name])
    assert f"`{expected}`" in text, f"writing-plugins.md lacks the signature {expected}"


def test_no_documented_hook_is_unknown() -> None:
    text = (DOCS / "writing-plugins.md").read_text(encoding="utf-8")
    headings = re.findall(r"^#{2,4} `?(healkit_\w+)`?\s*$", text, re.MULTILINE)
    assert sorted(headings) == sorted(hook_specs())


# --- the error tree ----------------------------------------------------------------------


def test_error_tree_is_the_one_in_the_code() -> None:
    docstring = _errors.__doc__
    assert docstring is not None
    tree = re.search(r"^ *HealkitError\n(?:^ *[│├└].*\n)+", docstring, re.MULTILINE)
    assert tree is not None
    expected = "\n".join(
        line.strip() if i == 0 else line[4:]
        for i, line in enumerate(tree[0].rstrip("\n").splitlines())
    )
    concepts = (DOCS / "concepts.md").read_text(encoding="utf-8")
    assert expected in concepts, "docs/concepts.md: copy the tree of healkit/_errors.py"
    for name in healkit.__all__:
        value = getattr(healkit, name)
        if isinstance(value, type) and issubclass(value, healkit.HealkitError):
            assert re.search(rf"(^|[─ ]){name}\b", expected, re.MULTILINE), (
                f"{name} missing from the tree"
            )


# --- configuration shown in the docs, and links ---------------------------------------------

SECTIONS = (
    DEGRADED_SECTION,
    ROUTING_SECTION,
    healkit_timeout.SECTION,
    healkit_retry.SECTION,
    healkit_breaker.SECTION,
    healkit_limit.SECTION,
    healkit_hedge.SECTION,
    healkit_tls.SECTION,
    healkit_tracing.SECTION,
    healkit_example_plugin.SECTION,
)


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=[b.where for b in TOML_BLOCKS])
def test_toml_example(block: Block) -> None:
    document = tomllib.loads(block.code)
    if not document.keys() <= {"defaults", "services", "logging", "state"}:
        return  # not a healkit document (a pyproject.toml)
    if "(invalid)" in block.code.splitlines()[0]:
        with pytest.raises(healkit.ConfigError):
            healkit.build_config(document, SECTIONS)
    else:
        healkit.build_config(document, SECTIONS)


def test_relative_links_resolve() -> None:
    for page in [*PAGES, *DOCS.glob("examples/*/README.md")]:
        text = page.read_text(encoding="utf-8")
        text = re.sub(r"`[^`]*`", "", without_code_blocks(text))  # and inline code
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:|#", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve()
            if not path.is_relative_to(DOCS):
                continue
            assert path.exists(), f"{page.relative_to(ROOT)}: broken link {target}"
            if anchor:
                assert anchor in anchors(path), f"{page.relative_to(ROOT)}: no anchor {target}"


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, dashes."""
    text = without_code_blocks(page.read_text(encoding="utf-8"))
    headings = re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
