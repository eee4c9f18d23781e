"""A test server that cannot listen says so: a ListenError (an OSError), never an IndexError.

Out of file descriptors, asyncio's ``create_server`` skips the socket it cannot
create and listens on none; FaultServer and TcpProxy then read the port of a
socket that does not exist. The process runs out of descriptors for real, in a
child with a low ``RLIMIT_NOFILE``.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

from healkit.testing import ListenError

CHILD = textwrap.dedent(
    """
    import asyncio, errno, json, os, resource, sys

    from healkit.testing import FaultServer, ListenError, TcpProxy

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


    async def attempt(server):
        fillers = []
        try:
            while True:  # every descriptor left, taken
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        try:
            async with server:
                return {"listened": True}
        except Exception as exc:
            return {
                "type": type(exc).__name__,
                "listen_error": isinstance(exc, ListenError),
                "os_error": isinstance(exc, OSError),
                "errno": getattr(exc, "errno", None),
                "message": str(exc),
            }
        finally:
            for fd in fillers:
                os.close(fd)


    async def main():
        which = sys.argv[1]
        server = FaultServer() if which == "FaultServer" else TcpProxy("127.0.0.1", 9)
        print(json.dumps(await attempt(server)))


    asyncio.run(main())
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_NOFILE is POSIX")
@pytest.mark.parametrize("server", ["FaultServer", "TcpProxy"])
def test_a_server_out_of_file_descriptors_raises_a_listen_error(server: str) -> None:
    child = subprocess.run(  # noqa: S603 - this interpreter, this test's script
        [sys.executable, "-c", CHILD, server],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert result == {
        "type": "ListenError",
        "listen_error": True,
        "os_error": True,
        "errno": errno.EMFILE,
        "message": (
            f"[Errno {errno.EMFILE}] {server} could not listen on 127.0.0.1:"
            f" {os.strerror(errno.EMFILE)} (EMFILE)"
        ),
    }


def test_listen_error_is_an_os_error() -> None:
    assert issubclass(ListenError, OSError)
