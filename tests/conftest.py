"""Shared fixtures. healkit.testing's own fixtures (fault_server, manual_clock,
anyio_backend) come from its pytest11 entry point."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import LogCapture

import healkit
from healkit_timeout import TimeoutPlugin

pytestmark = pytest.mark.anyio


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Capture structlog events emitted during the test."""
    capture = LogCapture()
    saved = structlog.get_config()
    structlog.configure(processors=[capture])
    try:
        yield capture
    finally:
        structlog.configure(**saved)


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
