"""The API's private globals are read only in the opentelemetry-api versions verified to keep them.

The global providers can be set once per process, so what depends on setting
them runs in a process of its own.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from healkit_tracing import _providers


def run(script: str, *path: Path) -> str:
    """Run ``script`` in a new interpreter (``path`` first on sys.path); return its last line."""
    prelude = "".join(f"import sys; sys.path.insert(0, {str(p)!r})\n" for p in path)
    done = subprocess.run(  # noqa: S603 - this interpreter, a script of this file
        [sys.executable, "-c", prelude + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1]


def test_the_installed_api_is_a_verified_one() -> None:
    # If this fails, a new opentelemetry-api is installed: read its trace and
    # metrics globals (see VERIFIED_API), then widen the range. Until then the
    # plugin reads nothing private and pays the API's no-op cost on every call.
    assert _providers.API_VERSION is not None
    assert _providers.VERIFIED_API[0] <= _providers.API_VERSION < _providers.VERIFIED_API[1]
    assert _providers.READABLE


GLOBALS_FOLLOW_THE_API = """
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from healkit_tracing._providers import Kind, Sinks, globals_unset, meter_kind, tracer_kind

assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
assert globals_unset()
sinks = Sinks(tracer_kind(None), meter_kind(None))
assert sinks.dormant
assert (tracer_kind(None), meter_kind(None)) == (Kind.UNSET, Kind.UNSET)

tracer_provider = TracerProvider()
trace.set_tracer_provider(tracer_provider)
assert trace.get_tracer_provider() is tracer_provider
assert not globals_unset()
sinks.refresh()
assert (sinks.spans, sinks.metrics, sinks.watching, sinks.dormant) == (True, False, True, False)
assert tracer_kind(None) is Kind.MAY
assert meter_kind(None) is Kind.UNSET

meter_provider = MeterProvider()
metrics.set_meter_provider(meter_provider)
assert metrics.get_meter_provider() is meter_provider
sinks.refresh()
assert (sinks.spans, sinks.metrics, sinks.watching) == (True, True, False)
assert meter_kind(None) is Kind.MAY
meter_provider.shutdown()
tracer_provider.shutdown()
print("ok")
"""


def test_the_private_globals_follow_the_public_api() -> None:
    # What the plugin reads privately changes exactly when the public getters do.
    assert run(GLOBALS_FOLLOW_THE_API) == "ok"


UNVERIFIED_API = """
import asyncio

from opentelemetry import metrics, trace

import healkit
from healkit.testing import FaultServer
from healkit_tracing import TracingPlugin, _providers
from healkit_tracing._providers import Kind, meter_kind, tracer_kind

assert _providers.API_VERSION == (99, 0)
assert not _providers.READABLE
# Nothing private is read: the unset proxies are treated as providers that may record.
assert (tracer_kind(None), meter_kind(None)) == (Kind.MAY, Kind.MAY)


async def main() -> None:
    async with FaultServer() as server:
        config = {"services": {"svc": {"endpoints": [server.url]}}}
        async with healkit.Client(
            config=config, plugins=[TracingPlugin()], entry_points=False
        ) as client:
            assert not client.runtime._plan.idle_hooks  # every hook runs: the API's no-op cost
            response = await client.get("/x", service="svc")
    assert response.status == 200
    assert "traceparent" not in server.requests[0].headers  # the proxies record nothing


asyncio.run(main())
print("ok")
"""


def test_an_unverified_api_version_reads_nothing_private(tmp_path: Path) -> None:
    # An opentelemetry-api 99.0 as far as the package metadata says (found first on sys.path).
    info = tmp_path / "opentelemetry_api-99.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: opentelemetry-api\nVersion: 99.0.0\n"
    )
    assert run(UNVERIFIED_API, tmp_path) == "ok"
