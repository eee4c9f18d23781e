"""Fixtures of the tracing plugin's tests (healkit.testing adds fault_server, manual_clock)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import LogCapture
from tracing_support import Telemetry

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
def logs() -> Iterator[LogCapture]:
    """Capture structlog events, with the trace id processor; the configuration is restored."""
    capture = LogCapture()
    saved = structlog.get_config()
    structlog.configure(processors=[add_trace_ids, capture])
    try:
        yield capture
    finally:
        structlog.configure(**saved)
