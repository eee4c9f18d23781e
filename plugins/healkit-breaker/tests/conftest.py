"""Fixtures of the breaker plugin's tests (healkit.testing adds fault_server, manual_clock)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from breaker_helpers import Events

from healkit.testing import capture_events


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Capture healkit's log events during the test (healkit.testing.capture_events)."""
    with capture_events() as events:
        yield events
