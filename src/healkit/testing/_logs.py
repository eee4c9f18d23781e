"""Capturing healkit's log events in tests: :func:`capture_events`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, final

from healkit._log import ROOT_LOGGER, Event

__all__ = ["capture_events"]


@final
class _Collector(logging.Handler):
    """Appends each healkit event, with its ``log_level``, to a list."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        super().__init__()
        self.entries = entries

    def emit(self, record: logging.LogRecord) -> None:
        """Keep a copy of the record's event; records that are not healkit events are ignored."""
        if isinstance(record.msg, Event):
            self.entries.append({**record.msg, "log_level": record.levelname.lower()})


@contextlib.contextmanager
def capture_events(level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """Collect the healkit events logged in the block, as dicts, in order.

    Each entry is an event's fields (``event`` is its name) plus ``log_level``
    (``"warning"``...), as ``structlog.testing.capture_logs()`` gives them.
    While the block runs, the ``healkit`` logger's level is ``level``: events
    below it are neither built nor collected, as under an application's
    configuration at that level. The level is put back after; the
    application's own handlers still receive the events.

    Example::

        with capture_events() as events:
            ...
        assert [e["event"] for e in events] == ["healkit.call_failed"]

    """
    entries: list[dict[str, Any]] = []
    collector = _Collector(entries)
    top = logging.getLogger(ROOT_LOGGER)
    previous = top.level
    top.setLevel(level)
    top.addHandler(collector)
    try:
        yield entries
    finally:
        top.removeHandler(collector)
        top.setLevel(previous)
