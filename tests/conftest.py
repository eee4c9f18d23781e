"""Shared fixtures. healkit.testing's own fixtures (fault_server, manual_clock,
anyio_backend) come from its pytest11 entry point."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import healkit
from healkit.testing import capture_events
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Capture healkit's log events during the test (healkit.testing.capture_events)."""
    with capture_events() as events:
        yield events


def service_config(url: str, name: str = "svc", **sections: Any) -> dict[str, Any]:
    """A one-service document pointing at ``url``."""
    return {"services": {name: {"endpoints": [url], **sections}}}


@pytest.fixture
def make_client() -> Callable[..., healkit.Client]:
    """Build a Client with a controlled plugin set (no entry points)."""

    def build(
        config: Any = None,
        *plugins: object,
        timeout: bool = True,
        **kwargs: Any,
    ) -> healkit.Client:
        chosen = [*plugins, TimeoutPlugin()] if timeout else list(plugins)
        return healkit.Client(config=config, plugins=chosen, entry_points=False, **kwargs)

    return build
