"""Three incidents of the configuration plane, against a real etcd and the real CLI.

- secrets in what ``healkit config ...`` prints, and a redacted document pushed back;
- ``http://`` to an etcd that serves TLS only;
- a tampered or hostile snapshot file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import healkit
from healkit import ConfigError, EtcdUnavailableError
from healkit.etcd import EtcdClient, EtcdSource
from healkit.testing import EtcdServer
from healkit.testing._ports import refused_url
from tests.cli_support import cli

DEADLINE = 30.0  # a ceiling against a hang on a loaded machine, not a timing under test
ROOT = "/healkit/test/"
SNAPSHOT_MAX_BYTES = 256 * 1024 * 1024  # as docs/etcd.md says


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("healkit: "), err
    return lines[0]


@pytest.fixture(scope="module")
def tls_etcd() -> Iterator[EtcdServer]:
    server = EtcdServer(tls=True)
    anyio.run(server.__aenter__)
    try:
        yield server
    finally:
        anyio.run(server.__aexit__, None, None, None)


# -- http:// to an etcd that serves TLS only ------------------------------------------------


def test_http_to_a_tls_etcd_says_it_may_expect_tls_in_one_line(
    tls_etcd: EtcdServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = tls_etcd.url.replace("https://", "http://")
    for argv in (["status"], ["config", "get"]):
        run = cli(capsys, *argv, "--endpoints", url, "--connect-timeout", "2")
        assert run.status != 0
        line = one_line(run.err)
        assert "Server disconnected" not in line
        assert "closed the connection without answering" in line
        assert "use https://" in line


def test_http_to_a_tls_etcd_is_an_unavailable_error_that_says_why(tls_etcd: EtcdServer) -> None:
    url = tls_etcd.url.replace("https://", "http://")

    async def read() -> None:
        async with EtcdClient(url, connect_timeout=2.0) as client:
            await client.range_all(ROOT, prefix=True)

    with pytest.raises(EtcdUnavailableError) as raised:
        asyncio.run(read())
    assert "expect TLS? then use https://" in str(raised.value)
    assert raised.value.failures[0][0] == url
    assert "Server disconnected" not in str(raised.value)


# -- the snapshot file ----------------------------------------------------------------------


def service(endpoint: str, **more: object) -> str:
    return json.dumps({"endpoints": [endpoint], **more})


def snapshot_text(documents: str, *, root: str = f'"{ROOT}"', revision: str = "7") -> str:
    """A snapshot file's text, written by hand: ``documents`` is the JSON of its object."""
    return (
        f'{{"version":2,"root":{root},"cluster_id":1,"revision":{revision},'
        f'"documents":{documents}}}'
    )


@contextlib.asynccontextmanager
async def started_from(
    snapshot: Path, **options: Any
) -> AsyncIterator[tuple[healkit.Runtime, EtcdSource]]:
    """Start a runtime of namespace ``test`` from ``snapshot``: its etcd refuses connections."""
    async with EtcdClient(refused_url(), timeout=1.0, connect_timeout=0.5) as client:
        source = EtcdSource(client, namespace="test", snapshot_path=snapshot, **options)
        runtime = healkit.Runtime(config=source, entry_points=False)
        with anyio.fail_after(DEADLINE):
            await runtime.__aenter__()
        try:
            yield runtime, source
        finally:
            await runtime.__aexit__(None, None, None)


def refusal(snapshot: Path) -> ConfigError:
    """Start from ``snapshot``, which must be refused; return the error."""

    async def start() -> None:
        async with started_from(snapshot):
            pass

    with pytest.raises(ConfigError) as raised:
        anyio.run(start)
    assert raised.value.origin == str(snapshot)
    return raised.value


def test_a_snapshot_repeating_a_document_key_is_refused_naming_it(tmp_path: Path) -> None:
    snapshot = tmp_path / "snap.json"
    a, evil = json.dumps(service("http://a.test")), json.dumps(service("http://evil.test"))
    snapshot.write_text(snapshot_text(f'{{"services/a":{a},"services/a":{evil}}}'))
    error = refusal(snapshot)
    assert error.issues[0].path == '$.documents["services/a"]'
    assert "repeats the key 'services/a'" in error.issues[0].reason


@pytest.mark.parametrize("key", ["root", "revision"])
def test_a_snapshot_repeating_a_field_is_refused_naming_it(tmp_path: Path, key: str) -> None:
    snapshot = tmp_path / "snap.json"
    a = json.dumps(service("http://a.test"))
    text = snapshot_text(f'{{"services/a":{a}}}')
    first = {"root": '"root":"/healkit/other/",', "revision": '"revision":99,'}[key]
    snapshot.write_text(text.replace('"version":2,', '"version":2,' + first))
    error = refusal(snapshot)
    assert error.issues[0].path == f"$.{key}"
    assert f"repeats the key {key!r}" in error.issues[0].reason


def test_a_snapshot_linked_to_dev_zero_is_refused_unread(tmp_path: Path) -> None:
    snapshot = tmp_path / "snap.json"
    snapshot.symlink_to("/dev/zero")
    assert "not a regular file" in refusal(snapshot).issues[0].reason


def test_a_snapshot_that_is_a_fifo_is_refused_without_waiting_for_a_writer(
    tmp_path: Path,
) -> None:
    snapshot = tmp_path / "snap.json"
    os.mkfifo(snapshot)
    try:
        assert "not a regular file" in refusal(snapshot).issues[0].reason
    finally:
        # Should a reader be blocked in open() (the old code), a writer frees it.
        with contextlib.suppress(OSError):
            os.close(os.open(snapshot, os.O_WRONLY | os.O_NONBLOCK))


def test_a_snapshot_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    snapshot = tmp_path / "snap.json"
    with snapshot.open("wb") as file:
        file.truncate(SNAPSHOT_MAX_BYTES + 1)  # sparse: nothing written to the disk
    reason = refusal(snapshot).issues[0].reason
    assert f"over {SNAPSHOT_MAX_BYTES:,}" in reason


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("truncated", snapshot_text('{"services/a":"{}"}')[:-9]),
        ("NaN revision", snapshot_text('{"services/a":"{}"}', revision="NaN")),
        ("1e999 revision", snapshot_text('{"services/a":"{}"}', revision="1e999")),
        ("not an object", "[]"),
        ("a document that is not text", snapshot_text('{"services/a":{"endpoints":[]}}')),
    ],
)
def test_a_snapshot_that_is_not_a_snapshot_is_refused(tmp_path: Path, name: str, text: str) -> None:
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(text)
    assert "cannot read the etcd snapshot" in refusal(snapshot).issues[0].reason, name


def test_a_snapshot_with_invalid_documents_starts_with_the_valid_ones_only(
    tmp_path: Path,
) -> None:
    snapshot = tmp_path / "snap.json"
    documents = {
        "services/good": service("http://good.test"),
        "services/scheme": service("ftp://bad.test"),
        "services/infinite": service("http://inf.test", max_body_bytes=1e999),
        "services/nan": '{"endpoints": ["http://nan.test"], "max_body_bytes": NaN}',
        "services/large": service("http://large.test", padding="x" * 2000),
    }
    snapshot.write_text(snapshot_text(json.dumps(documents)))

    async def start() -> None:
        limits = healkit.DocumentLimits(max_bytes=1000)
        async with started_from(snapshot, limits=limits) as (runtime, source):
            assert set(runtime.config.services) == {"good"}
            assert source.status.from_snapshot is True
            assert set(source.status.rejected) == {
                "services/scheme",
                "services/infinite",
                "services/nan",
                "services/large",
            }

    anyio.run(start)
