"""structlog routing for healkit's own entry points (``healkit demo``, the CLI).

healkit the library never configures logging. Its entry points are
applications, so while one runs it may route healkit's log events to itself
(the demo counts them; ``healkit config watch`` prints rejections) and drop
them from the terminal, then put the previous configuration back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import structlog

__all__ = ["LogSink", "routed_logs"]

LogSink = Callable[[str, Mapping[str, Any]], None]
"""Receives each event: the method name (``"warning"``...) and the event dict."""


@contextlib.contextmanager
def routed_logs(sink: LogSink | None) -> Iterator[None]:
    """Route structlog to ``sink`` (or nowhere), dropping every event, and restore it after.

    The previous configuration is put back, or the unconfigured defaults if
    there was none, however the block ends.
    """
    was_configured = structlog.is_configured()
    saved = structlog.get_config()

    def collect(_logger: object, method: str, event: structlog.typing.EventDict) -> Any:  # noqa: ANN401 - structlog's processor signature
        if sink is not None:
            sink(method, event)
        raise structlog.DropEvent

    structlog.configure(
        processors=[collect],
        wrapper_class=structlog.make_filtering_bound_logger(0),
        logger_factory=structlog.ReturnLoggerFactory(),
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()
