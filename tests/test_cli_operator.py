"""The CLI an operator expects (issue 13): ``--json`` on every command that prints data,
data on stdout and problems on stderr, ``config validate FILE|DIR``, a push that judges
its file before it asks etcd, checked ``--endpoints`` and ``--block``, help texts
everywhere, and close names for a mistyped service. Against a real etcd.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from healkit._cli.entry import _parser, main
from healkit._plugins import installed_plugin_names
from healkit.testing import EtcdServer, refused_url
from tests.cli_support import cli, connect, interruptible_child
from tests.test_cli_etcd import Lines

PAYMENTS = {"endpoints": ["https://payments.internal:8443"], "retry": {"attempts": 3}}
INVENTORY = {"endpoints": ["http://inventory.internal:8080"]}
DEFAULTS = {"timeout": {"attempt": 5.0}}
DOCUMENT = {"defaults": DEFAULTS, "services": {"payments": PAYMENTS, "inventory": INVENTORY}}
DEADLINE = 60.0  # a ceiling against a hang on a loaded machine, not a timing under test
INVALID = {"services": {"payments": {"endpoints": [1], "max_body_bytes": -1}}}


@pytest.fixture(scope="module")
def server() -> Iterator[EtcdServer]:
    etcd = EtcdServer()
    asyncio.run(etcd.__aenter__())
    try:
        yield etcd
    finally:
        asyncio.run(etcd.__aexit__(None, None, None))


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:100]


def write_json(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def pushed(
    capsys: pytest.CaptureFixture[str], server: EtcdServer, namespace: str, tmp_path: Path
) -> None:
    source = write_json(tmp_path / "shop.json", DOCUMENT)
    run = cli(capsys, "config", "push", str(source), *connect(server, namespace))
    assert run.status == 0, run.err


def put(server: EtcdServer, key: str, value: str) -> int:
    async def run() -> int:
        async with server.client() as client:
            return (await client.put(key, value)).revision

    return asyncio.run(run())


# -- help ----------------------------------------------------------------------------------


def _texts(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, str | None]]:
    """Yield each command's description and each argument's help text, with where it is."""
    yield path, parser.description
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _texts(sub, f"{path} {name}")
        else:
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action.help


def test_every_command_has_a_description_and_every_option_a_help_text() -> None:
    texts = dict(_texts(_parser(), "healkit"))
    assert "healkit config history --limit" in texts
    assert [where for where, text in texts.items() if not text] == []


# -- config validate -------------------------------------------------------------------------


def test_validate_json_prints_the_verdict_on_stdout_and_the_problems_on_stderr_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_json(tmp_path / "bad.json", INVALID)
    run = cli(capsys, "config", "validate", str(source), "--json")
    assert run.status == 1
    verdict = json.loads(run.out)
    assert verdict["source"] == str(source)
    assert verdict["valid"] is False
    assert verdict["services"] == []
    assert "routing" in verdict["sections"]
    assert {issue["path"] for issue in verdict["issues"]} == {
        "$.services.payments.endpoints[0]",
        "$.services.payments.max_body_bytes",
    }
    assert run.err.splitlines()[0] == f"healkit: {source}: invalid (2 problems):"
    assert "  $.services.payments.endpoints[0]: expected a string, got int" in run.err

    good = write_json(tmp_path / "good.json", DOCUMENT)
    run = cli(capsys, "config", "validate", str(good), "--json")
    assert (run.status, run.err) == (0, "")
    verdict = json.loads(run.out)
    assert verdict["valid"] is True
    assert verdict["services"] == ["inventory", "payments"]
    assert verdict["issues"] == []


def test_validate_takes_a_directory_named_as_for_push(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_json(tmp_path / "defaults.json", DEFAULTS)
    write_json(tmp_path / "payments.json", PAYMENTS)
    (tmp_path / "inventory.yaml").write_text(
        "endpoints: [http://inventory.internal:8080]\n", encoding="utf-8"
    )
    (tmp_path / "README.md").write_text("not a document\n", encoding="utf-8")
    run = cli(capsys, "config", "validate", str(tmp_path))
    assert (run.status, run.err) == (0, ""), run.err
    assert run.out.startswith(f"{tmp_path}: valid (2 services: inventory, payments;")

    write_json(tmp_path / "bad name.json", INVENTORY)
    write_json(tmp_path / "search.json", {"endpoints": [1]})
    run = cli(capsys, "config", "validate", str(tmp_path), "--json")
    assert run.status == 1
    issues = {(i["path"], i["reason"]) for i in json.loads(run.out)["issues"]}
    assert any("(file bad name.json)" in reason for _, reason in issues)
    assert "'bad name'" in run.err


def test_validate_of_a_directory_judges_the_documents_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_json(tmp_path / "search.json", {"endpoints": [1]})
    run = cli(capsys, "config", "validate", str(tmp_path))
    assert run.status == 1
    assert run.out == ""
    assert run.err == (
        f"healkit: {tmp_path}: $.services.search.endpoints[0]: expected a string, got int\n"
    )


# -- push and diff judge the file before etcd ------------------------------------------------


@pytest.mark.parametrize("command", ["push", "diff"])
def test_an_invalid_file_is_reported_even_when_etcd_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    source = write_json(tmp_path / "bad.json", INVALID)
    run = cli(capsys, "config", command, str(source), "--endpoints", refused_url())
    assert run.status == (1 if command == "push" else 2)
    assert run.out == ""
    assert "Etcd" not in run.err
    assert run.err.splitlines()[0] == f"healkit: {source}: invalid (2 problems):"
    assert "  $.services.payments.max_body_bytes: must be >= 0" in run.err


# -- --json everywhere ---------------------------------------------------------------------


def test_get_json_is_format_json_and_excludes_another_format(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pushed(capsys, server, namespace, tmp_path)
    as_json = cli(capsys, "config", "get", "--json", *connect(server, namespace))
    as_format = cli(capsys, "config", "get", "--format", "json", *connect(server, namespace))
    assert as_json.status == as_format.status == 0
    assert as_json.out == as_format.out
    assert json.loads(as_json.out) == DOCUMENT
    both = cli(capsys, "config", "get", "--json", "--format", "yaml", *connect(server, namespace))
    assert both.status == 2
    assert both.err.startswith("healkit: argument --format: not allowed with argument --json")


def test_diff_and_push_json_list_the_changes(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pushed(capsys, server, namespace, tmp_path)
    changed = {
        "defaults": DEFAULTS,
        "services": {"payments": {**PAYMENTS, "retry": {"attempts": 5}}},
    }
    source = write_json(tmp_path / "changed.json", changed)
    root = f"/healkit/{namespace}/"

    diff = cli(capsys, "config", "diff", str(source), "--json", *connect(server, namespace))
    assert diff.status == 1  # a difference, as diff(1)
    report = json.loads(diff.out)
    assert report["prefix"] == root
    assert [(c["key"], c["action"]) for c in report["changes"]] == [
        ("services/payments", "updated")
    ]
    assert json.loads(report["changes"][0]["new"])["retry"] == {"attempts": 5}
    assert json.loads(report["changes"][0]["old"])["retry"] == {"attempts": 3}
    assert report["kept"] == ["services/inventory"]
    assert diff.err == ""

    push = cli(capsys, "config", "push", str(source), "--json", *connect(server, namespace))
    assert push.status == 0
    result = json.loads(push.out)  # stdout holds one JSON document and nothing else
    assert result["changes"] == report["changes"]
    assert result["dry_run"] is False
    assert result["written_revision"] > result["revision"] == report["revision"]
    # What the push kept is a note on stderr, after the data.
    assert push.err == (
        f"healkit: {root}services/inventory is in etcd but not in the document:"
        " kept (--prune deletes it)\n"
    )


def test_history_json_lists_the_versions_with_their_documents(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"/healkit/{namespace}/services/payments"
    first = put(server, key, json.dumps(PAYMENTS))
    second = put(server, key, "not: [a document")
    third = put(server, key, json.dumps(INVENTORY))
    run = cli(capsys, "config", "history", "payments", "--json", *connect(server, namespace))
    assert (run.status, run.err) == (0, "")
    report = json.loads(run.out)
    assert report["key"] == key
    assert report["service"] == "payments"
    assert [(v["revision"], v["version"]) for v in report["versions"]] == [
        (third, 3),
        (second, 2),
        (first, 1),
    ]
    assert report["versions"][0]["document"] == INVENTORY
    assert report["versions"][1]["document"] is None
    assert report["versions"][1]["undecodable"]
    assert report["versions"][2] == {
        "revision": first,
        "version": 1,
        "document": PAYMENTS,
        "undecodable": None,
    }
    assert report["ends"] == {"reason": "created", "revision": first}


def test_history_limit_bounds_the_walk_back(
    server: EtcdServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"/healkit/{namespace}/services/payments"
    revisions = [put(server, key, json.dumps({"endpoints": [f"http://v{n}.test"]})) for n in "123"]
    args = ("config", "history", "payments", "--limit", "2", *connect(server, namespace))
    run = cli(capsys, *args, "--json")
    report = json.loads(run.out)
    assert [v["revision"] for v in report["versions"]] == revisions[:0:-1]
    assert report["ends"] == {"reason": "limit", "revision": None}
    text = cli(capsys, *args)
    assert text.out.splitlines()[-1] == ("history goes on: older versions not listed (--limit 2)")


def test_rollback_json_says_what_was_written(
    server: EtcdServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"/healkit/{namespace}/services/payments"
    first = put(server, key, json.dumps(PAYMENTS))
    put(server, key, json.dumps(INVENTORY))
    args = ("config", "rollback", "payments", "--to", str(first), "--json")
    dry = cli(capsys, *args, "--dry-run", *connect(server, namespace))
    assert dry.status == 0, dry.err
    planned = json.loads(dry.out)
    assert planned["changed"] is True
    assert planned["written_revision"] is None
    assert json.loads(planned["new"]) == PAYMENTS
    done = cli(capsys, *args, *connect(server, namespace))
    result = json.loads(done.out)
    assert result["from_revision"] == first
    assert result["written_revision"] > first
    again = json.loads(cli(capsys, *args, *connect(server, namespace)).out)
    assert again["changed"] is False


@pytest.mark.parametrize("as_json", [False, True])
def test_status_says_on_stderr_which_documents_are_invalid(
    server: EtcdServer,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    as_json: bool,
) -> None:
    pushed(capsys, server, namespace, tmp_path)
    root = f"/healkit/{namespace}/"
    put(server, root + "services/search", json.dumps({"endpoints": [1]}))
    run = cli(capsys, "status", *(["--json"] if as_json else []), *connect(server, namespace))
    assert run.status == 1
    assert run.err == f"healkit: {root}: invalid: services/search\n"
    if as_json:
        assert json.loads(run.out)["valid"] is False
    else:
        assert "services/search" in run.out


def strict_json(text: str) -> Any:
    """Parse ``text`` as JSON proper: ``NaN`` and ``Infinity`` are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_output_parses_whatever_etcd_holds(
    server: EtcdServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"/healkit/{namespace}/services/odd"
    put(server, key, "endpoints: [http://odd.test]\nweight: .nan\nlimit: .inf\nsince: 2024-01-01\n")
    for argv in (["config", "get", "odd", "--json"], ["config", "history", "odd", "--json"]):
        run = cli(capsys, *argv, *connect(server, namespace))
        assert run.status == 0, run.err
        document = strict_json(run.out)
        if argv[1] == "history":
            document = document["versions"][0]["document"]
        assert document == {
            "endpoints": ["http://odd.test"],
            "weight": None,
            "limit": None,
            "since": "2024-01-01",
        }


# -- close names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["config", "get", "paymnts"],
        ["config", "history", "paymnts"],
        ["config", "rollback", "paymnts", "--to", "1"],
    ],
)
def test_a_mistyped_service_suggests_the_close_names(
    server: EtcdServer,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    pushed(capsys, server, namespace, tmp_path)
    run = cli(capsys, *argv, *connect(server, namespace))
    assert run.status == 1
    assert run.out == ""
    assert run.err.endswith("; did you mean 'payments'?\n")
    assert run.err.count("\n") == 1


# -- checked option values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoints", "reason"),
    [
        ("127.0.0.1:2379", "expected http(s)://HOST:PORT"),
        ("http://etcd-0:2379/v3", "no path, query or fragment"),
        ("http://etcd-0:2379?x=1", "no path, query or fragment"),
        ("http://root:pw@etcd-0:2379", "no credentials in the URL"),
        ("http://etcd-0:2379,https://", "expected http(s)://HOST:PORT"),
        (" , ", "no etcd endpoint"),
    ],
)
def test_endpoints_must_be_http_urls_with_a_host_and_nothing_more(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    endpoints: str,
    reason: str,
) -> None:
    flag = cli(capsys, "status", "--endpoints", endpoints)
    assert flag.status == 2
    assert flag.out == ""
    assert flag.err.startswith("healkit: argument --endpoints: ")
    assert reason in flag.err
    assert flag.err.count("\n") == 1
    monkeypatch.setenv("HEALKIT_ETCD_ENDPOINTS", endpoints)
    env = cli(capsys, "status")
    assert env.status == 2
    assert env.err.startswith("healkit: $HEALKIT_ETCD_ENDPOINTS: ")
    assert reason in env.err
    demo = cli(capsys, "demo", "--etcd", endpoints)
    assert demo.status == 2
    assert demo.err.startswith("healkit: argument --etcd: ")


def test_block_names_an_installed_plugin_or_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    installed = installed_plugin_names()
    assert {"retry", "routing", "timeout"} <= set(installed)
    run = cli(capsys, "plugins", "--block", "retyr")
    assert run.status == 2
    assert run.out == ""
    assert run.err == (
        "healkit: argument --block: no installed plugin 'retyr'; did you mean 'retry'?"
        f" (installed: {', '.join(installed)}) (see 'healkit plugins --help')\n"
    )
    odd = cli(capsys, "config", "validate", "x.toml", "--block", "a b\nc")
    assert odd.status == 2
    assert "no installed plugin of that name" in odd.err
    assert odd.err.count("\n") == 1
    assert cli(capsys, "plugins", "--block", "retry").status == 0


# -- Ctrl-C ------------------------------------------------------------------------------------


def test_ctrl_c_in_a_command_without_etcd_is_one_line_and_status_130(tmp_path: Path) -> None:
    fifo = tmp_path / "stuck.toml"
    os.mkfifo(fifo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALKIT_")}
    child = interruptible_child(
        [sys.executable, "-m", "healkit", "config", "validate", str(fifo)], env
    )
    writers: list[int] = []
    # Opening a FIFO for writing returns once the reader has opened it: then the
    # command is inside its run, blocked reading the file.
    opener = threading.Thread(
        target=lambda: writers.append(os.open(fifo, os.O_WRONLY)), daemon=True
    )
    opener.start()
    opener.join(DEADLINE)
    try:
        assert writers, "the command never opened the file"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=DEADLINE)
    finally:
        for fd in writers:
            os.close(fd)
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert (child.returncode, out, err) == (130, "", "healkit: interrupted\n")


# -- config watch --json ------------------------------------------------------------------------


def test_watch_json_prints_one_object_a_line(
    server: EtcdServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = f"/healkit/{namespace}/"
    put(server, root + "services/payments", json.dumps(PAYMENTS))
    out = Lines()
    monkeypatch.setattr(sys, "stdout", out)
    statuses: list[int] = []
    argv = ["config", "watch", "--json", "--count", "2", "--timeout", str(DEADLINE)]
    thread = threading.Thread(
        target=lambda: statuses.append(main([*argv, *connect(server, namespace)]))
    )
    thread.start()
    try:
        out.wait_for('"event": "watching"')
        applied = put(server, root + "services/inventory", json.dumps(INVENTORY))
        out.wait_for(f'"revision": {applied}')
        rejected = put(server, root + "services/payments", '{"endpoints": ["ftp://bad"]}')
    finally:
        thread.join(DEADLINE)
    assert statuses == [0]
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert events[0] == {
        "event": "watching",
        "prefix": root,
        "revision": applied - 1,
        "valid": True,
        "issues": [],
    }
    assert events[1] == {
        "event": "applied",
        "changes": [{"key": "services/inventory", "action": "created"}],
        "revision": applied,
    }
    assert len(events) == 3
    assert events[2]["event"] == "rejected"
    assert events[2]["revision"] == rejected
    assert events[2]["key"] == root + "services/payments"
    assert events[2]["path"] == "$.services.payments.endpoints[0]"
