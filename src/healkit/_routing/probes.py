"""Active health probes: the router's probe scheduler, and one probe request.

While some service has ``routing.probe`` settings, the router runs a
:class:`Prober` (one background task of the runtime). Each endpoint of those
services is scheduled on its own, as Envoy's health checker gives each host its
own timer: its next probe is due ``interval`` of the runtime's clock after its
last one ended, and runs as a task of its own, with the service's TLS context
and within its own time limit. A slow or unanswered probe therefore delays no
other endpoint's probes; an endpoint whose probe still runs is not probed again
until it ends, so at most one probe per configured endpoint is in flight. Each
result goes to the router, which keeps it with the rest of the endpoint's
health (:func:`count_probe` says what a result changes).
"""

from __future__ import annotations

import asyncio
import heapq
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

_Key = tuple[str, str]  # a service, one of its endpoints


@final
class Prober:
    """The router's probes: one scheduler task of the runtime while a service has probes.

    The router hands it each configuration (:meth:`configure`: endpoints no
    longer configured are forgotten, their probes in flight cancelled), starts
    it with the runtime (:meth:`start`) and closes it at shutdown
    (:meth:`close`); each result goes to ``probed``.

    The scheduler keeps, for each endpoint not being probed, the moment its
    next probe is due, in a heap: it sleeps on the runtime's clock until the
    earliest of them, starts the probes due then (one task each, in a task
    group, so that they end with it), and sleeps again. A probe that ends
    makes its endpoint due again ``interval`` later, and wakes the scheduler
    only if that comes before the moment it sleeps until.
    """

    def __init__(self, probed: Probed) -> None:
        self._probed = probed
        self._config: HealkitConfig | None = None
        self._targets: dict[_Key, ProbeSettings] = {}
        self._runtime: Runtime | None = None
        self._tls: CompiledHook | None = None  # healkit_tls_context
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        # The endpoints not being probed, by when their next probe is due: a heap.
        self._due: list[tuple[float, _Key]] = []
        self._running: dict[_Key, asyncio.Task[None]] = {}  # the probes in flight
        self._asleep_until = math.inf  # when the scheduler wakes by itself

    def __repr__(self) -> str:
        return f"<Prober {len(self._targets)} endpoints, {len(self._running)} probing>"

    def configure(
        self,
        config: HealkitConfig,
        services: Sequence[str],
        runtime: Runtime,
        tls: CompiledHook,
    ) -> None:
        """Probe the endpoints of ``services`` (those of ``config`` with probes) from now on.

        ``tls`` is ``healkit_tls_context``, compiled. An endpoint still
        configured keeps its due time, and a probe of it in flight runs on; a
        new one is due at once; the probes in flight of the others are
        cancelled, and nothing of them is kept.
        """
        self._config, self._runtime, self._tls = config, runtime, tls
        targets: dict[_Key, ProbeSettings] = {}
        for name in services:
            plan = routing_plan(config.services[name])
            probe_settings = plan.settings.probe
            if probe_settings is not None:
                for group in plan.groups:
                    targets.update(((name, endpoint), probe_settings) for endpoint in group)
        running = self._running
        for key, task in running.items():
            if key not in targets:
                task.cancel()
        # Built anew, so that tables sized for a larger configuration go with it.
        self._running = {key: task for key, task in running.items() if key in targets}
        due = {key: moment for moment, key in self._due}
        self._due = [(due.get(key, -math.inf), key) for key in targets if key not in self._running]
        heapq.heapify(self._due)
        self._targets = targets
        self._wake.set()

    def start(self, runtime: Runtime) -> None:
        """Run the probe scheduler while some service has probes (it ends when none has)."""
        running = self._task is not None and not self._task.done()
        if not running and self._targets:
            self._task = runtime.start_background(
                "routing probes", lambda: self._probe_forever(runtime.clock)
            )

    def close(self) -> Awaitable[None] | None:
        """Close the probes' HTTP session (``None``: none was opened)."""
        session, self._session = self._session, None
        return None if session is None else session.close()

    async def _probe_forever(self, clock: Clock) -> None:
        """Start each endpoint's probe when it is due on ``clock``; end with the last target."""
        async with asyncio.TaskGroup() as probes:
            while self._targets:
                self._wake.clear()
                now, due = clock.now(), self._due
                while due and due[0][0] <= now:
                    key = heapq.heappop(due)[1]
                    self._running[key] = probes.create_task(self._probe_one(key, clock))
                self._asleep_until = due[0][0] if due else math.inf
                if due:
                    await self._sleep_unless_woken(clock, self._asleep_until)
                else:  # every endpoint is being probed: the first to end wakes this
                    await self._wake.wait()

    async def _probe_one(self, key: _Key, clock: Clock) -> None:
        """Probe one endpoint, hand on the result, and make the endpoint due again."""
        (service, endpoint), settings = key, self._targets[key]
        task = asyncio.current_task()
        try:
            good = await self._probe(service, endpoint, settings)
            if good is not None:
                self._probed(service, endpoint, settings, good)
        finally:
            if self._running.get(key) is task:  # else dropped by a configuration
                del self._running[key]
                moment = clock.now() + self._targets[key].interval
                heapq.heappush(self._due, (moment, key))  # the key kept by the targets
                if moment < self._asleep_until:
                    self._wake.set()

    async def _sleep_unless_woken(self, clock: Clock, moment: float) -> None:
        """Sleep until ``moment`` of ``clock``, or less if woken (configured, a probe ended)."""
        sleeper = asyncio.ensure_future(_sleep_until(clock, moment))
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


async def _sleep_until(clock: Clock, moment: float) -> None:
    """Sleep until ``moment`` of ``clock``, counted from when the sleep begins."""
    await clock.sleep(moment - clock.now())


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
