"""The CLI in an incident: one clear line for every usage, connection and TLS error,
a --timeout that holds against a hung etcd, and ``config get`` that shows what it can.

Commands that need a server running on the test's loop (a fault server, a hung
proxy) run as a subprocess; the others run in this process.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trustme

from healkit._cli.get import UNDECODABLE
from healkit.testing import EtcdServer, Fault, FaultServer, TcpProxy
from tests.cli_support import Run, cli

DEADLINE = 60.0  # a ceiling against a hang on a loaded machine, not a timing under test


async def cli_process(*argv: str) -> Run:
    """Run ``healkit ARGV`` in a child process (the test's loop keeps serving)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALKIT_")}
    with anyio.fail_after(DEADLINE):
        done = await anyio.run_process(
            [sys.executable, "-m", "healkit._cli.entry", *argv], check=False, env=env
        )
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("healkit: "), err
    return lines[0]


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    server = EtcdServer()
    anyio.run(server.__aenter__)
    try:
        yield server
    finally:
        anyio.run(server.__aexit__, None, None, None)


# -- usage errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "required: COMMAND"),
        (["config"], "required: ACTION"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["config", "get", "--format", "xml", "--endpoints", "http://x"], "--format"),
        (["config", "rollback", "svc", "--endpoints", "http://x"], "--to"),
        (["config", "watch", "--timeout", "0", "--endpoints", "http://x"], "--timeout"),
        (["status"], "--endpoints or $HEALKIT_ETCD_ENDPOINTS"),
        (["status", "--endpoints", "ftp://x"], "invalid etcd endpoint 'ftp://x'"),
        (["status", "--endpoints", "http://x", "--namespace", "a/b"], "invalid namespace"),
        (["demo", "--duration", "-1"], "--duration"),
    ],
)
def test_a_usage_error_is_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    says: str,
) -> None:
    monkeypatch.delenv("HEALKIT_ETCD_ENDPOINTS", raising=False)
    run = cli(capsys, *argv)
    assert run.status == 2
    assert says in one_line(run.err)
    assert "usage:" not in run.err


def test_a_missing_ca_file_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    run = cli(capsys, "status", "--endpoints", "https://127.0.0.1:1", "--ca-file", str(missing))
    assert run.status == 2
    line = one_line(run.err)
    assert str(missing) in line
    assert "No such file" in line


# -- connection and TLS errors --------------------------------------------------------------


def test_https_to_a_plain_http_etcd_says_so(
    etcd: EtcdServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = etcd.url.replace("http://", "https://")
    run = cli(capsys, "status", "--endpoints", url, "--connect-timeout", "2")
    assert run.status == 1
    line = one_line(run.err)
    assert "plain HTTP" in line
    assert "ssl:default" not in line
    assert "[None]" not in line


def test_an_untrusted_certificate_is_said_without_python_reprs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server = EtcdServer(tls=True)
    anyio.run(server.__aenter__)
    try:
        other_ca = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other_ca))
        run = cli(capsys, "config", "get", "--endpoints", server.url, "--ca-file", str(other_ca))
    finally:
        anyio.run(server.__aexit__, None, None, None)
    assert run.status == 1
    line = one_line(run.err)
    assert "certificate" in line
    assert "not trusted" in line
    assert "SSLContext" not in line
    assert "object at 0x" not in line


@pytest.mark.anyio
@pytest.mark.parametrize("answer", [{}, {"kvs": []}, {"status": "ok", "items": [1, 2]}])
async def test_a_server_that_is_not_etcd_fails_get_and_status(
    fault_server: FaultServer, answer: object
) -> None:
    fault_server.set_default(Fault.json(answer))
    for argv in (["config", "get"], ["status"]):
        run = await cli_process(*argv, "--endpoints", fault_server.url)
        assert run.status == 1, run
        assert run.out == ""
        line = one_line(run.err)
        assert "EtcdProtocolError" in line
        assert "is it an etcd v3 JSON gateway" in line


@pytest.mark.anyio
async def test_watch_timeout_holds_against_a_hung_etcd() -> None:
    async with EtcdServer() as server, TcpProxy("127.0.0.1", server.port) as proxy:
        proxy.blackhole()  # connections are accepted, nothing ever answers
        run = await cli_process(
            "config", "watch", "--timeout", "1", "--request-timeout", "20",
            "--endpoints", proxy.url,
        )  # fmt: skip
    assert run.status == 1
    assert "did not answer within --timeout 1 s" in one_line(run.err)


# -- config get -----------------------------------------------------------------------------


def test_get_shows_the_keys_it_can_and_marks_the_undecodable_one(
    etcd: EtcdServer, capsys: pytest.CaptureFixture[str]
) -> None:
    async def seed() -> None:
        async with etcd.client() as client:
            await client.put("/healkit/shop/services/a", '{"endpoints": ["http://a.test"]}')
            await client.put("/healkit/shop/services/b", '{"endpoints": [broken')

    anyio.run(seed)
    run = cli(capsys, "config", "get", "--endpoints", etcd.url, "--namespace", "shop")
    assert run.status == 1
    shown = json.loads(run.out)
    assert shown["services"]["a"] == {"endpoints": ["http://a.test"]}
    assert set(shown["services"]["b"]) == {UNDECODABLE}
    line = one_line(run.err)
    assert "/healkit/shop/services/b cannot be decoded" in line
