"""Log routing for healkit's own entry points (``healkit demo``, the CLI).

healkit the library never configures logging. Its entry points are
applications, so while one runs it may route healkit's log events to itself
(the demo counts them; ``healkit config watch`` prints rejections) and keep
them from the application's handlers, then put the ``healkit`` logger back.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, final

from healkit._log import ROOT_LOGGER, Event

__all__ = ["LogSink", "routed_logs"]

LogSink = Callable[[str, Mapping[str, Any]], None]
"""Receives each event: the level name in lower case (``"warning"``...) and the event's fields."""


@final
class _SinkHandler(logging.Handler):
    """Hands each healkit event to a :data:`LogSink`."""

    def __init__(self, sink: LogSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        """Pass the record's event (its fields) to the sink; other records are ignored."""
        if isinstance(record.msg, Event):
            self.sink(record.levelname.lower(), record.msg)


@contextlib.contextmanager
def routed_logs(sink: LogSink | None) -> Iterator[None]:
    """Route every healkit event to ``sink`` (or nowhere), and nowhere else, until the block ends.

    The ``healkit`` logger's level, propagation and handlers are put back
    however the block ends.
    """
    top = logging.getLogger(ROOT_LOGGER)
    level, propagate, handlers = top.level, top.propagate, list(top.handlers)
    for handler in handlers:
        top.removeHandler(handler)
    routed = None if sink is None else _SinkHandler(sink)
    if routed is not None:
        top.addHandler(routed)
    top.setLevel(logging.DEBUG if routed is not None else logging.CRITICAL + 1)
    top.propagate = False
    try:
        yield
    finally:
        if routed is not None:
            top.removeHandler(routed)
        for handler in handlers:
            top.addHandler(handler)
        top.setLevel(level)
        top.propagate = propagate
