"""The ``healkit`` command itself: how it is started and what it says about itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

import healkit
from healkit._cli.entry import main


@pytest.mark.parametrize("command", [["-m", "healkit"], ["-m", "healkit._cli.entry"]])
def test_python_dash_m_runs_the_command_line(command: list[str]) -> None:
    ran = subprocess.run(  # noqa: S603 - this interpreter, our own module
        [sys.executable, *command, "--version"], capture_output=True, text=True, check=False
    )
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, f"healkit {healkit.__version__}\n", "")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"healkit {healkit.__version__}\n"
