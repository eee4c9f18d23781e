"""Fixtures of the breaker plugin's tests (healkit.testing adds fault_server, manual_clock)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog
from breaker_helpers import Events
from structlog.testing import LogCapture


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Capture structlog events during the test; the configuration is restored after."""
    capture = LogCapture()
    saved = structlog.get_config()
    structlog.configure(processors=[capture])
    try:
        yield capture
    finally:
        structlog.configure(**saved)
