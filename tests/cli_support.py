"""Running the ``healkit`` command line in a test's process."""

from __future__ import annotations

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
