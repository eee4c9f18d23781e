"""``healkit config push`` and ``healkit validate`` judge a document the same way (real etcd).

Every service name becomes an etcd key: a name that ``build_config`` refuses
is refused by the push too, one refusal per name, never written under another
spelling (YAML's ``on`` is ``True``) nor left out with "nothing to push".
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from healkit.testing import EtcdServer
from tests.cli_support import Run, cli


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


def stored(server: EtcdServer, namespace: str) -> list[str]:
    async def read() -> list[str]:
        async with server.client() as client:
            result = await client.range_all(f"/healkit/{namespace}/", prefix=True)
            return [kv.key.decode() for kv in result.kvs]

    return asyncio.run(read())


def issue_lines(text: str) -> set[str]:
    """The ``$...: reason`` parts of either command's output (one issue a line)."""
    found = set()
    for line in text.splitlines():
        start = 0 if line.strip().startswith("$") else line.find(": $") + 2
        if start > 1 or line.strip().startswith("$"):
            found.add(line[start:].strip())
    return found


def push(capsys: pytest.CaptureFixture[str], server: EtcdServer, namespace: str, path: Path) -> Run:
    return cli(
        capsys, "config", "push", str(path), "--endpoints", server.url, "--namespace", namespace
    )


YAML_KEYS = """\
services:
  on:
    endpoints: [http://on.test]
  ~:
    endpoints: [http://none.test]
  payments:
    endpoints: [http://payments.test]
"""


def test_yaml_keys_that_are_not_strings_are_refused_by_push_and_validate_alike(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "shop.yaml"
    source.write_text(YAML_KEYS, encoding="utf-8")
    validated = cli(capsys, "config", "validate", str(source))
    pushed = push(capsys, server, namespace, source)
    assert validated.status == pushed.status == 1
    expected = {
        "$.services: invalid key True: expected a string, got bool",
        "$.services: invalid key None: expected a string, got null",
    }
    assert issue_lines(validated.err) == expected
    assert issue_lines(pushed.err) == expected
    assert stored(server, namespace) == []  # not services/True, services/None


@pytest.mark.parametrize("name", ["a/b", "..", "../x", "svc\n", "svc\r\n", ""])
def test_a_service_name_etcd_could_not_hold_as_is_is_refused(
    server: EtcdServer,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    source = tmp_path / "shop.json"
    good = {"endpoints": ["http://good.test"]}
    bad = {"endpoints": ["http://bad.test"]}
    source.write_text(json.dumps({"services": {"good": good, name: bad}}), encoding="utf-8")
    validated = cli(capsys, "config", "validate", str(source))
    pushed = push(capsys, server, namespace, source)
    assert validated.status == pushed.status == 1, pushed
    assert "nothing to push" not in pushed.out
    [line] = issue_lines(pushed.err)
    assert line.startswith("$.services: invalid key ")
    assert issue_lines(validated.err) == {line}
    assert stored(server, namespace) == []


def test_each_bad_name_gets_its_own_refusal(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "shop.json"
    source.write_text(
        '{"services": {"a/b": {}, "..": {}, "c\\n": {}, "ok": {"endpoints": ["http://ok.test"]}}}',
        encoding="utf-8",
    )
    pushed = push(capsys, server, namespace, source)
    assert pushed.status == 1
    assert len(issue_lines(pushed.err)) == 3
    assert issue_lines(pushed.err) == issue_lines(
        cli(capsys, "config", "validate", str(source)).err
    )


def test_a_file_name_that_is_not_a_service_name_is_refused(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "good.json").write_text('{"endpoints": ["http://good.test"]}', encoding="utf-8")
    (tmp_path / "bad name.json").write_text('{"endpoints": ["http://bad.test"]}', encoding="utf-8")
    (tmp_path / "nl\n.json").write_text('{"endpoints": ["http://nl.test"]}', encoding="utf-8")
    pushed = push(capsys, server, namespace, tmp_path)
    assert pushed.status == 1
    lines = issue_lines(pushed.err)
    assert len(lines) == 2
    assert any("'bad name'" in line and "(file bad name.json)" in line for line in lines)
    assert any("'nl\\n'" in line for line in lines)
    assert stored(server, namespace) == []


def test_an_endpoint_host_is_refused_at_its_path_by_both(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "shop.json"
    source.write_text(
        '{"services": {"svc": {"endpoints": ["http://a.test", "http://a..b"]}}}', encoding="utf-8"
    )
    expected = {'$.services.svc.endpoints[1]: invalid host "a..b": empty label'}
    assert issue_lines(cli(capsys, "config", "validate", str(source)).err) == expected
    assert issue_lines(push(capsys, server, namespace, source).err) == expected


def test_a_namespace_ending_in_a_newline_is_a_usage_error(
    server: EtcdServer, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "config", "get", "--endpoints", server.url, "--namespace", "shop\n")
    assert run.status == 2
    assert "invalid namespace 'shop\\n'" in run.err


@pytest.mark.parametrize("command", ["get", "history", "rollback"])
@pytest.mark.parametrize("name", ["svc\n", "a/b", "../defaults"])
def test_a_service_argument_is_held_to_the_same_rule(
    server: EtcdServer, capsys: pytest.CaptureFixture[str], command: str, name: str
) -> None:
    extra = ["--to", "1"] if command == "rollback" else []
    run = cli(capsys, "config", command, name, *extra, "--endpoints", server.url)
    assert run.status == 2
    assert f"invalid service name {name!r}" in run.err


def test_a_stored_value_that_is_not_utf8_is_judged_as_instances_judge_it(
    server: EtcdServer, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def put_raw() -> None:
        async with server.client() as client:
            await client.put(
                f"/healkit/{namespace}/services/x", b'{"endpoints": ["http://x.test/\xff"]}'
            )

    asyncio.run(put_raw())
    source = tmp_path / "y.json"
    source.write_text('{"services": {"y": {"endpoints": ["http://y.test"]}}}', encoding="utf-8")
    pushed = push(capsys, server, namespace, source)
    assert pushed.status == 1
    [line] = issue_lines(pushed.err)
    assert line.startswith("$.services.x: the document is not valid UTF-8")
    assert line.endswith("(in etcd, not in the pushed document)")
    status = cli(capsys, "status", "--endpoints", server.url, "--namespace", namespace)
    assert status.status == 1
    assert "not valid UTF-8" in status.out + status.err
