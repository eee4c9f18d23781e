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

from healkit._config import Seconds

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
        timeout: seconds a probe may take (at most ``interval``).
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
    timeout: Seconds = 2.0
    healthy_threshold: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2
    unhealthy_threshold: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    slow_start: Annotated[float, msgspec.Meta(ge=0, le=3600.0)] = 0.0

    def __post_init__(self) -> None:
        """Reject a timeout longer than the interval: a probe ends before the next starts."""
        if self.timeout > self.interval:
            raise ValueError(
                f"timeout ({self.timeout}s) must not exceed interval ({self.interval}s)"
            )

    def good(self, status: int) -> bool:
        """Whether a probe answered with ``status`` is good."""
        return status in self.expect if self.expect else status in _SUCCESS


async def probe(
    session: aiohttp.ClientSession,
    endpoint: str,
    settings: ProbeSettings,
    tls: ssl.SSLContext | None,
) -> bool:
    """Probe ``endpoint`` once; return whether it answered as expected in time."""
    url = endpoint + settings.path  # endpoints keep no trailing "/"; paths start with one
    try:
        async with session.request(
            settings.method,
            url,
            timeout=aiohttp.ClientTimeout(total=settings.timeout),
            allow_redirects=False,
            ssl=tls if tls is not None else True,
        ) as response:
            return settings.good(response.status)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
