"""Active health probes: settings, and one probe request.

The routing plugin runs the probes (one background task of the runtime) and
keeps their results with the rest of an endpoint's health; this module says
what a probe is and makes one.
"""

from __future__ import annotations

import ssl
from typing import Annotated, Final, Literal, final

import aiohttp
import msgspec

from healkit._config.models import Seconds, Timeouts

__all__ = ["ProbeSettings", "probe"]

_SUCCESS: Final = range(200, 400)

Status = Annotated[int, msgspec.Meta(ge=100, le=599)]


@final
class ProbeSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``routing.probe`` table: how a service's endpoints are probed.

    Attributes:
        method: ``HEAD`` (nothing to read), ``GET`` or ``OPTIONS``.
        path: the path probed below each endpoint.
        expect: the statuses of a good probe; empty: any 2xx or 3xx.
        interval: seconds between two probes of an endpoint.
        timeout: seconds a probe may take (at most ``interval``); by default
            the service's attempt limit (the ``timeout`` plugin's ``attempt``),
            capped by ``interval``. A probe also keeps to the service's
            ``connect`` and ``read`` limits.
        healthy_threshold: good probes in a row that bring a down or ejected
            endpoint back.
        unhealthy_threshold: failed probes in a row that take an endpoint down.
        slow_start: seconds over which an endpoint that came back gets its
            share of traffic gradually (0: at once).

    """

    method: Literal["HEAD", "GET", "OPTIONS"] = "HEAD"
    path: Annotated[str, msgspec.Meta(pattern=r"^/[^\s#]*$", max_length=2048)] = "/"
    expect: tuple[Status, ...] = ()
    interval: Seconds = 5.0
    timeout: Seconds | None = None
    healthy_threshold: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2
    unhealthy_threshold: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    slow_start: Annotated[float, msgspec.Meta(ge=0, le=3600.0)] = 0.0

    def __post_init__(self) -> None:
        """Reject a timeout longer than the interval: a probe ends before the next starts."""
        if self.timeout is not None and self.timeout > self.interval:
            raise ValueError(
                f"timeout ({self.timeout}s) must not exceed interval ({self.interval}s)"
            )

    def limits(self, service: Timeouts) -> aiohttp.ClientTimeout:
        """Return a probe's limits: the service's attempt limits, within this table's."""
        total = min(service.total, self.interval if self.timeout is None else self.timeout)
        return aiohttp.ClientTimeout(
            total=total, connect=min(service.connect, total), sock_read=min(service.read, total)
        )

    def good(self, status: int) -> bool:
        """Whether a probe answered with ``status`` is good."""
        return status in self.expect if self.expect else status in _SUCCESS


async def probe(
    session: aiohttp.ClientSession,
    endpoint: str,
    settings: ProbeSettings,
    limits: aiohttp.ClientTimeout,
    tls: ssl.SSLContext | None,
) -> bool:
    """Probe ``endpoint`` once within ``limits``; return whether it answered as expected."""
    url = endpoint + settings.path  # endpoints keep no trailing "/"; paths start with one
    try:
        async with session.request(
            settings.method,
            url,
            timeout=limits,
            allow_redirects=False,
            ssl=tls if tls is not None else True,
        ) as response:
            return settings.good(response.status)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
