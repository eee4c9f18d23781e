"""Fixtures of the tracing plugin's tests (healkit.testing adds fault_server, manual_clock)."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog
from tracing_support import Telemetry

from healkit.testing import Fault, FaultServer
from healkit_tracing import add_trace_ids


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """SDK providers with in-memory exporters; no span may be left open by the test."""
    found = Telemetry()
    try:
        yield found
        assert not found.open_spans.open, f"spans left open: {list(found.open_spans.open.values())}"
    finally:
        found.shutdown()


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Capture every event, healkit's and the application's, as the docs configure logging.

    structlog over the standard library; one handler on the root logger whose
    ``ProcessorFormatter`` adds the trace ids, so healkit's events (standard
    library records) and the application's structlog events get them alike.
    """
    entries: list[dict[str, Any]] = []

    def collect(_logger: object, method: str, event: Any) -> str:
        entries.append({**event, "log_level": method})
        return ""

    handler = logging.StreamHandler(io.StringIO())
    # healkit's events and the test's ("app"), not asyncio's debug messages.
    handler.addFilter(lambda record: record.name.partition(".")[0] in {"healkit", "app"})
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                add_trace_ids,
                collect,
            ]
        )
    )
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    was_configured = structlog.is_configured()
    saved = structlog.get_config()
    structlog.configure(
        processors=[structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    try:
        yield entries
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


@pytest.fixture
async def silent() -> AsyncIterator[FaultServer]:
    """An upstream that reads each request and never answers."""
    async with FaultServer() as server:
        server.set_default(Fault.blackhole())
        yield server
