"""Fixtures of the TLS plugin's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import trustme
from structlog.testing import LogCapture
from tls_helpers import Events, Material


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
def logs() -> Iterator[LogCapture]:
    """Capture structlog events during the test; the configuration is restored after."""
    capture = LogCapture()
    saved = structlog.get_config()
    structlog.configure(processors=[capture])
    try:
        yield capture
    finally:
        structlog.configure(**saved)
