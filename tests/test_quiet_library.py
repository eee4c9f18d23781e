"""A library is quiet until the application decides: healkit logs through the standard library.

With no logging configured nothing is printed; the application's ``logging``
configuration shows, silences or routes healkit's events (to JSON through
structlog's ``ProcessorFormatter``). ``import healkit`` loads no console
renderer (rich, pygments).
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import structlog

import healkit
from healkit.testing import refused_url

pytestmark = pytest.mark.anyio

FAILING_CALL = """
import asyncio, logging, sys
import healkit

async def main() -> None:
    async with healkit.Client(entry_points=False) as client:
        try:
            await client.get({url!r}, service="down")
        except healkit.ConnectError:
            pass
    async with healkit.Runtime(entry_points=False):
        pass

{setup}
asyncio.run(main())
"""


def run_failing_call(setup: str = "") -> subprocess.CompletedProcess[str]:
    """Run one failing call and one Runtime in a fresh interpreter after ``setup``."""
    script = FAILING_CALL.format(url=f"{refused_url()}/a", setup=textwrap.dedent(setup))
    return subprocess.run(  # noqa: S603 - this interpreter, a script of ours
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )


def test_nothing_is_printed_when_the_application_configured_no_logging() -> None:
    done = run_failing_call()
    assert done.stdout == ""
    assert done.stderr == ""


def test_basic_config_shows_healkit_events() -> None:
    done = run_failing_call("logging.basicConfig(level=logging.INFO)")
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert "INFO:healkit:healkit.config_applied origin='python' version=1 services=0" in lines
    (failed,) = [line for line in lines if "healkit.call_failed" in line]
    assert failed.startswith("ERROR:healkit:healkit.call_failed service='down' attempt=1 ")
    assert any(line.startswith("WARNING:healkit:healkit.attempt_failed ") for line in lines)


def test_the_healkit_logger_level_silences_warnings() -> None:
    done = run_failing_call(
        """
        logging.basicConfig(level=logging.INFO)
        logging.getLogger("healkit").setLevel(logging.ERROR)
        """
    )
    events = [line.split(":")[2].split()[0] for line in done.stderr.splitlines()]
    assert events == ["healkit.call_failed"]


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """healkit's events rendered as JSON by structlog's ProcessorFormatter, as the docs show."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.JSONRenderer(),
            ]
        )
    )
    top = logging.getLogger("healkit")
    level = top.level
    top.addHandler(handler)
    top.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        top.removeHandler(handler)
        top.setLevel(level)


async def test_processor_formatter_renders_the_events_as_json(json_lines: io.StringIO) -> None:
    config = {"services": {"down": {"endpoints": [refused_url()]}}}
    async with healkit.Client(config=config, entry_points=False) as client:
        with pytest.raises(healkit.ConnectError):
            await client.get("/a?token=secret", service="down", headers={"Authorization": "x"})
    records = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    assert [r["event"] for r in records] == [
        "healkit.config_applied",
        "healkit.attempt_failed",
        "healkit.call_failed",
    ]
    failed = records[-1]
    assert failed["level"] == "error"
    assert failed["logger"] == "healkit"
    assert failed["service"] == "down"
    assert failed["error"] == "ConnectError"
    assert failed["headers"]["Authorization"] != "x"
    assert "secret" not in json_lines.getvalue()


def test_a_plugin_logger_is_under_healkit() -> None:
    plugin_logger = healkit.get_logger("healkit.example")
    assert plugin_logger.stdlib.parent is logging.getLogger("healkit")
    with pytest.raises(ValueError, match="healkit"):
        healkit.get_logger("example")


def test_import_healkit_loads_no_console_renderer() -> None:
    # structlog loads rich (and rich pygments) when rich is installed: healkit imports neither.
    probe = "import sys, healkit; print(sorted(set(sys.argv[1:]) & set(sys.modules)))"
    heavy = ["rich", "pygments", "structlog", "healkit._demo.app"]
    done = subprocess.run(  # noqa: S603 - this interpreter, a script of ours
        [sys.executable, "-c", probe, *heavy],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == "[]"


def test_the_demo_without_rich_says_which_extra_to_install() -> None:
    # rich absent (the `demo` extra not installed): a module set to None cannot be imported.
    code = (
        "import sys; sys.modules['rich'] = None\n"
        "from healkit._cli.entry import main\n"
        "sys.exit(main())"
    )
    ran = subprocess.run(  # noqa: S603 - this interpreter, our own module
        [sys.executable, "-c", code, "demo", "--duration", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (ran.returncode, ran.stderr) == (
        2,
        "healkit: the demo needs rich: pip install 'healkit[demo]'\n",
    )
