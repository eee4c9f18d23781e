"""Ctrl-C stops ``healkit config watch`` with status 130, however the tests were started.

The hang once seen in ``test_watch_ends_with_status_130_on_ctrl_c``: a test
run started in the background by a non-interactive shell (a CI script's
``pytest &``, nohup) has SIGINT ignored, its children inherit that, so the
child's Python and ``asyncio.run`` install no handler and the watch never
hears the SIGINT the test sends. These tests ignore SIGINT in the test
process on purpose, as such a run does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

from healkit.testing import EtcdServer
from tests.cli_support import interruptible_child
from tests.test_cli_etcd import DEADLINE, root, server

__all__ = ["server"]  # the module-scoped etcd fixture, shared with test_cli_etcd


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT in this process, as a background job of a script does."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_watch_ends_with_status_130_on_sigint_when_the_test_run_ignores_sigint(
    server: EtcdServer,
) -> None:
    namespace = "interrupt-ignored"
    command = [sys.executable, "-m", "healkit", "config", "watch"]
    env = {**os.environ, "HEALKIT_ETCD_ENDPOINTS": server.url, "HEALKIT_NAMESPACE": namespace}
    with sigint_ignored(), interruptible_child(command, env) as process:
        assert process.stdout is not None
        assert process.stdout.readline().startswith(f"watching {root(namespace)}")
        process.send_signal(signal.SIGINT)
        try:
            # A failure bound, not a pause: communicate returns as soon as the child exits.
            _, err = process.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    assert process.returncode == 130
    assert err == "healkit: interrupted\n"
