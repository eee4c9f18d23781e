"""Ctrl-C stops ``healkit config watch`` with status 130, however the tests were started.

The hang once seen in ``test_watch_ends_with_status_130_on_ctrl_c``: a test
run started in the background by a non-interactive shell (a CI script's
``pytest &``, nohup) has SIGINT ignored, its children inherit that, so the
child's Python and ``asyncio.run`` install no handler and the watch never
hears the SIGINT the test sends. So each test runs as from a terminal, and
again with SIGINT ignored in the test process, as such a run has it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from healkit.testing import EtcdServer
from tests.cli_support import interruptible_child
from tests.test_cli_etcd import DEADLINE, namespace, root, server

__all__ = ["namespace", "server"]  # the fixtures of test_cli_etcd: one etcd for the module


@contextlib.contextmanager
def sigint_disposition(handler: signal.Handlers | Callable[..., object]) -> Iterator[None]:
    """Give SIGINT ``handler`` in this process for the block (``SIG_IGN``: as a background job)."""
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(
    "test_run",
    [signal.default_int_handler, signal.SIG_IGN],
    ids=["in-a-terminal", "in-the-background"],
)
def test_watch_ends_with_status_130_on_ctrl_c(
    server: EtcdServer, namespace: str, test_run: signal.Handlers | Callable[..., object]
) -> None:
    command = [sys.executable, "-m", "healkit._cli.entry", "config", "watch"]
    env = {**os.environ, "HEALKIT_ETCD_ENDPOINTS": server.url, "HEALKIT_NAMESPACE": namespace}
    with sigint_disposition(test_run), interruptible_child(command, env) as process:
        assert process.stdout is not None
        assert process.stdout.readline().startswith(f"watching {root(namespace)}")
        process.send_signal(signal.SIGINT)
        try:
            # A failure bound, not a pause: communicate returns as soon as the child exits.
            _, err = process.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()  # never leave the block waiting for a hung child
            process.communicate()
            raise
    assert process.returncode == 130
    assert err == "healkit: interrupted\n"
