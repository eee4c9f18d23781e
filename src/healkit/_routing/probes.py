"""Active health probes: the router's probe task, and one probe request.

While some service has ``routing.probe`` settings, the router runs a
:class:`Prober` (one background task of the runtime): it probes each endpoint
of those services every ``interval`` of the runtime's clock, with the service's
TLS context and within its attempt limits, and hands each result to the router,
which keeps it with the rest of the endpoint's health (:func:`count_probe` says
what a result changes).
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, final

import aiohttp

from healkit._errors import PluginError
from healkit._routing.asking import count_failure, first_answer
from healkit._routing.settings import ProbeSettings, routing_plan
from healkit.events import EndpointDown, EndpointReturned

if TYPE_CHECKING:
    from healkit._clock import Clock
    from healkit._config.models import HealkitConfig
    from healkit._plan import CompiledHook
    from healkit._routing.health import Health
    from healkit._runtime import Runtime

__all__ = ["Probed", "Prober", "Target", "count_probe", "probe"]

Target = tuple[str, str, ProbeSettings]
"""What one probe looks at: a service, one of its endpoints, the service's probe settings."""

Probed = Callable[[str, str, ProbeSettings, bool], None]
"""Takes a probe's result: service, endpoint, probe settings, whether it was good."""


@final
class Prober:
    """The router's probes: one background task of the runtime while a service has probes.

    The router hands it each configuration (:meth:`configure`, which wakes the
    task), starts it with the runtime (:meth:`start`) and closes it at
    shutdown (:meth:`close`); each result goes to ``probed``.
    """

    def __init__(self, probed: Probed) -> None:
        self._probed = probed
        self._config: HealkitConfig | None = None
        self._services: Sequence[str] = ()
        self._runtime: Runtime | None = None
        self._tls: CompiledHook | None = None  # healkit_tls_context
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Prober {len(self._services)} services>"

    def configure(
        self,
        config: HealkitConfig,
        services: Sequence[str],
        runtime: Runtime,
        tls: CompiledHook,
    ) -> None:
        """Probe the endpoints of ``services`` (those of ``config`` with probes) from now on.

        ``tls`` is ``healkit_tls_context``, compiled; a running task follows
        the new configuration at once.
        """
        self._config, self._services, self._runtime, self._tls = config, services, runtime, tls
        self._wake.set()

    def start(self, runtime: Runtime) -> None:
        """Run the probe task while some service has probes (it ends when none has)."""
        running = self._task is not None and not self._task.done()
        if not running and self._services:
            self._task = runtime.start_background(
                "routing probes", lambda: self._probe_forever(runtime.clock)
            )

    def close(self) -> Awaitable[None] | None:
        """Close the probes' HTTP session (``None``: none was opened)."""
        session, self._session = self._session, None
        return None if session is None else session.close()

    def _targets(self) -> list[Target]:
        config = self._config
        if config is None:
            return []
        targets: list[Target] = []
        for name in self._services:
            plan = routing_plan(config.services[name])
            probe_settings = plan.settings.probe
            if probe_settings is not None:
                targets.extend(
                    (name, endpoint, probe_settings) for group in plan.groups for endpoint in group
                )
        return targets

    async def _probe_forever(self, clock: Clock) -> None:
        """Probe each endpoint of the services that ask for it, every ``interval`` of ``clock``."""
        due: dict[tuple[str, str], float] = {}
        while targets := self._targets():
            if len(due) > len(targets):  # a configuration dropped some: forget them
                current = {(t[0], t[1]) for t in targets}
                due = {key: moment for key, moment in due.items() if key in current}
            now = clock.now()
            ready = [t for t in targets if due.get((t[0], t[1]), -math.inf) <= now]
            if ready:
                results = await asyncio.gather(*(self._probe(*target) for target in ready))
                finished = clock.now()
                for (service, endpoint, probe_settings), good in zip(ready, results, strict=True):
                    if good is not None:
                        self._probed(service, endpoint, probe_settings, good)
                    due[(service, endpoint)] = finished + probe_settings.interval
            wait = min(due.get((t[0], t[1]), now) for t in targets) - clock.now()
            if wait > 0:
                self._wake.clear()
                await self._sleep_unless_woken(clock, wait)

    async def _sleep_unless_woken(self, clock: Clock, seconds: float) -> None:
        """Sleep ``seconds`` on ``clock``, or less if the configuration changes."""
        sleeper = asyncio.ensure_future(clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _probe(self, service: str, endpoint: str, settings: ProbeSettings) -> bool | None:
        """Probe with the service's TLS context and within its attempt limits.

        ``None``: not probed, the TLS plugin failed (logged as ``healkit.plugin_error``).
        """
        runtime, config = self._runtime, self._config
        if runtime is None or config is None:
            raise RuntimeError("the router probes only once configured")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        try:
            tls = (
                None
                if self._tls is None
                else first_answer(self._tls, ssl.SSLContext, service, refuse=_server_side)
            )
        except PluginError as error:
            # Without the context the probe would not see the endpoint as calls do:
            # skip this one, keep probing (the task ending would stop every probe).
            count_failure(runtime, error)
            return None
        limits = settings.limits(runtime.attempt_timeouts(config.policy(service)))
        return await probe(self._session, endpoint, settings, limits, tls)


def count_probe(
    health: Health,
    target: Target,
    *,
    good: bool,
    now: float,
) -> EndpointDown | EndpointReturned | None:
    """Count a probe's result in ``health``; return the change past a threshold, if any.

    ``healthy_threshold`` good probes in a row bring back a down endpoint, or
    an ejected one whose probes failed since it was ejected, or just before
    (:meth:`~healkit._routing.health.Health.eject`; at ``now``, its
    slow start begins); ``unhealthy_threshold`` failed ones take it down.
    Probes that kept passing while calls failed say nothing of those calls'
    failures ending (a health check that stays up while the service answers
    503): the ejection then runs its time, and calls try the endpoint again.
    """
    service, endpoint, settings = target
    if good:
        health.probes_bad = 0
        health.probes_good += 1
        back = health.down or (health.ejected_until > now and health.probe_failed)
        if back and health.probes_good >= settings.healthy_threshold:
            health.down = False
            health.ejected_until = min(health.ejected_until, now)  # when the ejection ended
            health.failures = 0
            health.returned_at = now
            return EndpointReturned(service=service, endpoint=endpoint, probes=health.probes_good)
        return None
    health.probes_good = 0
    health.probes_bad += 1
    health.probe_failed = True
    if not health.down and health.probes_bad >= settings.unhealthy_threshold:
        health.down = True
        return EndpointDown(service=service, endpoint=endpoint, probes=health.probes_bad)
    return None


def _server_side(context: ssl.SSLContext) -> str | None:
    """Refuse a server's TLS context where a client's is needed (every connection would fail)."""
    if context.protocol == ssl.PROTOCOL_TLS_SERVER:
        return "returned a server-side SSLContext (PROTOCOL_TLS_SERVER), not a client's"
    return None


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
