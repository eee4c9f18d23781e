"""``healkit demo --duration`` and ``--concurrency`` have documented maxima: beyond, a usage error.

``--duration 1e300`` was accepted and ran until Ctrl-C; ``--concurrency``
started as many callers as asked.
"""

from __future__ import annotations

import io
from typing import Any

import pytest

from healkit._cli.args import EXIT_USAGE
from healkit._cli.entry import _parser
from healkit._demo import MAX_CONCURRENCY, MAX_DURATION
from healkit._demo.app import run_demo
from tests.cli_support import cli


@pytest.mark.parametrize(
    ("option", "value", "maximum"),
    [
        ("--duration", "1e300", "3600"),
        ("--duration", "3600.5", "3600"),
        ("--concurrency", "1001", "1000"),
        ("--concurrency", str(10**12), "1000"),
    ],
)
def test_beyond_the_maximum_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], option: str, value: str, maximum: str
) -> None:
    result = cli(capsys, "demo", option, value, "--json")
    assert result.status == EXIT_USAGE
    assert result.out == ""
    assert result.err == (
        f"healkit: argument {option}: must be <= {maximum}, got {value}"
        " (see 'healkit demo --help')\n"
    )


def test_the_maxima_are_accepted_and_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert (MAX_DURATION, MAX_CONCURRENCY) == (3600.0, 1000)  # as docs/cli.md says
    args = _parser().parse_args(["demo", "--duration", "3600", "--concurrency", "1000"])
    assert (args.duration, args.concurrency) == (MAX_DURATION, MAX_CONCURRENCY)
    shown = cli(capsys, "demo", "--help")
    assert shown.status == 0
    assert "at most 3600" in shown.out
    assert "at most 1000" in shown.out


@pytest.mark.parametrize(
    "kwargs", [{"duration": MAX_DURATION * 2}, {"concurrency": MAX_CONCURRENCY + 1}]
)
def test_run_demo_refuses_them_too(kwargs: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {
        "duration": 1.0,
        "concurrency": 1,
        "as_json": True,
        "out": io.StringIO(),
    }
    with pytest.raises(ValueError, match="<="):
        run_demo(**(arguments | kwargs))
