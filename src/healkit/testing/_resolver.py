"""A DNS resolver that sends every host of the ``.test`` domain to loopback.

Code that calls many hosts (webhooks, a crawler) needs many distinct host
names in its tests, each a real HTTP connection. ``.test`` is reserved for
testing (RFC 6761) and never resolves on the internet; this resolver gives
every ``*.test`` name the loopback address, so one :class:`FaultServer`
answers for ``http://hook-1.test:PORT``, ``http://hook-2.test:PORT`` and so
on. Other names are refused: a test never leaves the machine by mistake.
"""

from __future__ import annotations

import socket
from typing import Final, final

from aiohttp.abc import AbstractResolver, ResolveResult

__all__ = ["LoopbackResolver"]

_DOMAIN: Final = ".test"


@final
class LoopbackResolver(AbstractResolver):
    """Resolve ``localhost`` and every ``*.test`` host name to ``127.0.0.1``.

    Use it in the session a client runs on::

        connector = aiohttp.TCPConnector(resolver=LoopbackResolver(), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with healkit.Client(session=session) as client:
                await client.get(f"http://hook-7.test:{server.port}/")
    """

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Return the loopback address of ``host``.

        Raises:
            OSError: ``host`` is neither ``localhost`` nor under ``.test``.

        """
        del family
        name = host.rstrip(".").lower()
        if name != "localhost" and not name.endswith(_DOMAIN):
            raise OSError(f"LoopbackResolver resolves only *{_DOMAIN} and localhost, not {host!r}")
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=socket.IPPROTO_TCP,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        """Nothing to release."""
