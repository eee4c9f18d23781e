"""Fixtures of the TLS plugin's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from tls_helpers import Events, Material

from healkit.testing import capture_events


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="healkit test CA")


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def material(tmp_path: Path) -> Material:
    return Material(tmp_path)


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Capture healkit's log events during the test (healkit.testing.capture_events)."""
    with capture_events() as events:
        yield events
