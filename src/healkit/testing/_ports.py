"""Loopback port helpers for tests.

Both helpers ask the kernel for a free port by binding ``127.0.0.1:0`` and then
release it. Nothing reserves the port afterwards, so another process may take it
in the meantime: use them for addresses that should *not* answer (refused
connections), and prefer binding to port 0 directly for servers you start.
"""

import errno
import socket

__all__ = ["ListenError", "listening_socket", "refused_url", "unused_tcp_port"]


class ListenError(OSError):
    """A test server (:class:`FaultServer`, :class:`TcpProxy`) could not listen.

    Its ``errno`` and ``strerror`` are the operating system's (``EMFILE`` when
    the process is out of file descriptors, ``EADDRNOTAVAIL`` without a
    loopback interface); the message says what could not listen and why.
    """


def listening_socket(what: str) -> socket.socket:
    """Return a TCP socket bound to a free port of ``127.0.0.1``, for a server to listen on.

    Args:
        what: the server that will listen, for the error message.

    Raises:
        ListenError: the socket cannot be created or bound.

    """
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise _listen_error(what, exc) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
    except OSError as exc:
        sock.close()
        raise _listen_error(what, exc) from exc
    return sock


def _listen_error(what: str, exc: OSError) -> ListenError:
    name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    why = exc.strerror or str(exc) or type(exc).__name__
    return ListenError(
        exc.errno, f"{what} could not listen on 127.0.0.1: {why}" + (f" ({name})" if name else "")
    )


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
