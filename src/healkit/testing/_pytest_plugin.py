"""pytest fixtures of healkit.testing, loaded through the ``pytest11`` entry point.

Async fixtures run under anyio's pytest plugin: mark tests ``@pytest.mark.anyio``.
healkit needs asyncio (aiohttp), so ``anyio_backend`` defaults to ``"asyncio"``
here; a ``conftest.py`` fixture of the same name overrides it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from healkit._testmode import set_testing
from healkit.testing._clock import ManualClock
from healkit.testing._cluster import EtcdCluster
from healkit.testing._etcd import EtcdServer
from healkit.testing._faults import FaultServer

__all__ = [
    "anyio_backend",
    "etcd_cluster",
    "etcd_server",
    "fault_server",
    "healkit_testing",
    "manual_clock",
]


@pytest.fixture
def anyio_backend() -> str:
    """Run anyio tests on asyncio, which aiohttp needs."""
    return "asyncio"


@pytest.fixture
async def fault_server() -> AsyncIterator[FaultServer]:
    """Start a :class:`FaultServer` on 127.0.0.1 for the test, and stop it after."""
    async with FaultServer() as server:
        yield server


@pytest.fixture
def manual_clock() -> ManualClock:
    """Return a :class:`ManualClock`; pass it as ``clock=`` to a Client or Runtime."""
    return ManualClock()


@pytest.fixture
async def etcd_server() -> AsyncIterator[EtcdServer]:
    """Start a real etcd (:class:`EtcdServer`) for the test, and stop it after.

    A plain server: no TLS, no auth. For those, start
    ``EtcdServer(tls=True, client_cert_auth=True)`` or ``EtcdServer(auth=True)``
    in the test; ``server.client()`` returns a client set up for either.
    """
    async with EtcdServer() as server:
        yield server


@pytest.fixture
async def etcd_cluster() -> AsyncIterator[EtcdCluster]:
    """Start a real three-member etcd cluster (:class:`EtcdCluster`) for the test; stop it after.

    Give clients ``cluster.urls`` (``cluster.client()`` does); stop, kill and
    start its ``members`` to test leader loss, quorum loss and lagging members.
    """
    async with EtcdCluster() as cluster:
        yield cluster


@pytest.fixture
def healkit_testing() -> Iterator[None]:
    """Turn healkit's test mode on for the test, and restore the previous setting after.

    Retries happen at once, without their backoff sleeps (see
    :func:`healkit.testing.set_testing`). Inside the test,
    ``set_testing(True, attempts=1)`` lowers the attempts too; the fixture
    undoes that as well. For every test of a suite, use it from an
    ``autouse`` fixture of the suite's ``conftest.py``.
    """
    with set_testing(True):
        yield
