"""Running the ``healkit`` command line in a test's process."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pytest

from healkit._cli.entry import main
from healkit.testing import EtcdServer


@dataclass
class Run:
    """What one run of the command line gave."""

    status: int
    out: str
    err: str


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """Run ``healkit ARGV`` in this process; argparse's exits become the status."""
    try:
        status = main(list(argv))
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return Run(status, captured.out, captured.err)


def connect(server: EtcdServer, namespace: str) -> list[str]:
    """The options that point the command line at ``server`` and ``namespace``."""
    return ["--endpoints", server.url, "--namespace", namespace]


def interruptible_child(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    """Start ``argv`` (text pipes for stdout, stderr) as a terminal would: Ctrl-C reaches it.

    A test run started in the background by a non-interactive shell (``pytest &``
    in a CI script, nohup) ignores SIGINT, and a child inherits an ignored
    signal: Python then installs no SIGINT handler, neither does ``asyncio.run``,
    and the SIGINT a test sends is lost while the child runs on. A *handled*
    signal is reset to its default in the child at exec, so SIGINT is handled
    here while the child starts.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(  # noqa: S603 - the tests' own commands
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(env), text=True
        )
    finally:
        signal.signal(signal.SIGINT, previous)
