"""Loopback port helpers for tests.

Both helpers ask the kernel for a free port by binding ``127.0.0.1:0`` and then
release it. Nothing reserves the port afterwards, so another process may take it
in the meantime: use them for addresses that should *not* answer (refused
connections), and prefer binding to port 0 directly for servers you start.
"""

import socket

__all__ = ["refused_url", "unused_tcp_port"]


def unused_tcp_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is found by binding a socket to ``127.0.0.1:0``, reading the port the
    kernel chose and closing the socket again.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def refused_url() -> str:
    """Return an ``http://127.0.0.1:PORT`` URL where nothing listens.

    A connection attempt to it is refused at once (the kernel answers with a
    reset), which is how a test simulates a service that is down. The URL has no
    trailing slash, so paths can be appended: ``refused_url() + "/health"``.
    """
    return f"http://127.0.0.1:{unused_tcp_port()}"
