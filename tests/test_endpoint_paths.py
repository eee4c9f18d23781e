"""An endpoint's path is kept as written: ``%2F`` in it stays ``%2F``.

Decoded, ``/files/a%2Fb`` is ``/files/a/b``: another resource on most servers.
Normalizing an endpoint only drops a trailing ``/`` (and what yarl writes
alike for every URL: the host in lower case, a default port left out).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

import healkit

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def recording_server(paths: list[str]) -> AsyncIterator[str]:
    async def record(request: web.Request) -> web.Response:
        paths.append(request.raw_path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


async def test_a_call_by_service_name_goes_to_the_endpoint_path_as_written() -> None:
    paths: list[str] = []
    async with recording_server(paths) as url:
        document = {"services": {"files": {"endpoints": [f"{url}/files/a%2Fb/"]}}}
        async with healkit.Runtime(config=document, entry_points=False) as runtime:
            assert runtime.config.services["files"].endpoints == (f"{url}/files/a%2Fb",)
            async with healkit.Client(runtime=runtime) as client:
                response = await client.get("/c", service="files")
    assert response.status == 200
    assert paths == ["/files/a%2Fb/c"]  # was /files/a/b/c


@pytest.mark.parametrize(
    ("written", "kept"),
    [
        ("http://A.test/", "http://a.test"),
        ("http://a.test:80/x//", "http://a.test/x"),
        ("https://a.test:443/", "https://a.test"),
        ("http://a.test/x%2Fy/", "http://a.test/x%2Fy"),
        ("http://a.test/%7e/", "http://a.test/~"),
        ("http://bücher.example/p/", "http://xn--bcher-kva.example/p"),
    ],
)
def test_an_endpoint_is_kept_as_yarl_writes_it_without_a_trailing_slash(
    written: str, kept: str
) -> None:
    config = healkit.build_config({"services": {"s": {"endpoints": [written]}}})
    assert config.services["s"].endpoints == (kept,)
    assert config.service_for_url(kept + "/x") == "s"


async def test_an_absolute_url_with_the_host_in_capitals_belongs_to_its_service() -> None:
    paths: list[str] = []
    async with recording_server(paths) as url:
        port = url.rsplit(":", 1)[1]
        document = {"services": {"files": {"endpoints": [f"http://localhost:{port}/files"]}}}
        async with (
            healkit.Runtime(config=document, entry_points=False) as runtime,
            healkit.Client(runtime=runtime) as client,
        ):
            response = await client.get(f"http://LOCALHOST:{port}/files/c")
    assert response.status == 200
    assert response.outcome.service == "files"  # was "localhost": the defaults' policy
    assert paths == ["/files/c"]
