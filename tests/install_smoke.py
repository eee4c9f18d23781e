"""What the README's "Use it" example does, against a local server (``nox -s package``).

The package session runs this file with the python of a fresh virtual
environment that holds healkit and its plugins from the built wheels only, so
it imports nothing of the repository. A local aiohttp server stands in for the
payments service. Arguments: the names of the healkit plugins that must be
installed (entry points of the ``healkit`` group), no more and no fewer.

Exits non-zero (an uncaught exception) when anything differs.
"""

from __future__ import annotations

import asyncio
import sys
from importlib.metadata import entry_points
from typing import Any

from aiohttp import web

import healkit


async def charges(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"charged": body["amount"]})


async def call_payments(url: str) -> None:
    config: dict[str, Any] = {
        "defaults": {"timeout": {"connect": 1.0, "read": 5.0, "deadline": 10.0}},
        "services": {"payments": {"endpoints": [url]}},
    }

    @healkit.resilient(service="payments", failures=(ConnectionError,))
    async def charge_via_sdk(amount: int) -> str:
        return f"charged {amount}"

    async with healkit.Client(config=config) as client:
        response = await client.post("/v1/charges", service="payments", json={"amount": 42})
        sdk_result = await charge_via_sdk(42)
    path = response.outcome.path if response.outcome is not None else None
    if (response.status, response.json(), path) != (200, {"charged": 42}, "primary"):
        raise SystemExit(f"unexpected answer: {response.status} {response.text()} ({path})")
    if sdk_result != "charged 42":
        raise SystemExit(f"unexpected result of the decorated function: {sdk_result!r}")


async def main(expected_plugins: set[str]) -> None:
    installed = {entry.name for entry in entry_points(group="healkit")}
    if installed != expected_plugins:
        raise SystemExit(
            f"plugins installed: {sorted(installed)}, expected {sorted(expected_plugins)}"
        )
    app = web.Application()
    app.router.add_post("/v1/charges", charges)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        await call_payments(f"http://{host}:{port}")
    finally:
        await runner.cleanup()
    print("healkit", healkit.__version__, "with", ", ".join(sorted(installed)), "ok")  # noqa: T201


if __name__ == "__main__":
    asyncio.run(main(set(sys.argv[1:])))
