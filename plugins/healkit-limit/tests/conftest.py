"""Fixtures of the limit plugin's tests (healkit.testing adds fault_server, manual_clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from limit_helpers import GatedServer


@pytest.fixture
async def gated() -> AsyncIterator[GatedServer]:
    """A loopback upstream that holds requests until ``gated.gate`` is set."""
    async with GatedServer() as server:
        yield server
