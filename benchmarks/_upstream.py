"""An upstream in a process of its own, for the scenarios whose client must not share its loop.

The scenario's file runs itself with ``--serve ...``: :func:`serve` runs its
aiohttp application on a free loopback port, prints the base URL and stops
when its standard input closes; :func:`upstream_process` starts that process
and yields the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

__all__ = ["serve", "upstream_process"]


def serve(app: web.Application) -> None:
    """Serve ``app`` on a free loopback port; print its URL; stop when stdin closes."""

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        port = runner.addresses[0][1]
        print(f"http://127.0.0.1:{port}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
        await runner.cleanup()

    asyncio.run(main())


@contextlib.contextmanager
def upstream_process(script: Path, *args: object) -> Iterator[str]:
    """Run ``script --serve *args`` with this interpreter; yield the URL it prints."""
    process = subprocess.Popen(  # noqa: S603 - a benchmark file, run with this interpreter
        [sys.executable, str(script), "--serve", *(str(a) for a in args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None  # noqa: S101 - set by Popen above
        yield process.stdout.readline().strip()
    finally:
        if process.stdin is not None:
            process.stdin.close()
        process.terminate()
        process.wait(timeout=5.0)
