"""``healkit demo``: an application built on healkit, not part of the library.

Nothing in the library imports this package; the CLI imports the bounds of
its options from here (no dependency) and the rest lazily. Its modules, each a
concern of the demo:

- :mod:`.scenes`: what each scene does to the upstreams and to the configuration (data);
- :mod:`.pki`: the demo's certificates;
- :mod:`.traffic`: the load generator and its counters;
- :mod:`.telemetry`: what the demo observes (typed events through ``healkit_event``,
  the OpenTelemetry SDK in memory with ``--trace``);
- :mod:`.view`: the live view with rich, the summary (table or JSON);
- :mod:`.app`: :func:`~healkit._demo.app.run_demo`, which wires them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, TypeAlias, final

__all__ = ["DEFAULT_DURATION", "MAX_CONCURRENCY", "MAX_DURATION", "DemoError", "Say", "Stopwatch"]

DEFAULT_DURATION: Final = 36.0
"""The default run, in seconds: each default scene plays for as many seconds as its phase lasts."""

MAX_DURATION: Final = 3600.0
"""The longest run, in seconds: an hour shows every scene many times over."""
MAX_CONCURRENCY: Final = 1000
"""The most concurrent callers: far beyond what one loopback upstream needs."""

Say: TypeAlias = Callable[[str, str], None]
"""Shows a notable moment of the run: its text, and a rich style (``""``: plain)."""


class DemoError(Exception):
    """The demo cannot run as asked: an option needs a package that is missing or blocked."""


@final
class Stopwatch:
    """When the run started (``time.monotonic()``), shared by the parts that time it."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        """Start now; :meth:`start` again when the scenes start playing."""
        self.started = time.monotonic()

    def start(self) -> None:
        """Start again from now."""
        self.started = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.started
