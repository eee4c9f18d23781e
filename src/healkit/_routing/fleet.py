"""Fleet health: what each instance knows of an endpoint, shared through etcd leases.

An instance that takes an endpoint out (ejected by failures, down by probes)
writes a record under its own lease::

    <prefix><namespace>/health/<service>/<endpoint, percent-encoded>/<instance>

and deletes it when the endpoint is back. Reports are coalesced and
rate-limited per instance: what the instance wants published is compared with
what etcd holds under its lease, and the difference is written in one
transaction, at most once per :data:`REPORT_PERIOD` (an endpoint that flaps
out and back within it costs no write). In an ejection storm (a primary dies
and every instance reports it at once) each instance writes once. Every instance follows the records
of the namespace through its ``EtcdSource`` (``source.listen("health/")``), so
it can route around an endpoint before failing on it itself, once at least
``routing.fleet.quorum`` instances (itself included) report it. A dead
instance's records disappear with its lease (refreshed every TTL/3). Only the
records of endpoints of services that share health are kept, at most
:data:`MAX_REPORTERS` instances each: whoever may write a record may write
one for any key. A service that starts sharing health reads the records
again, and one that stops takes back this instance's own.

Next to its reports, each such instance keeps its own view of the services
that share health (every endpoint's local health and breaker state, where its
traffic goes now) in one record under the same lease, for ``healkit status``::

    <prefix><namespace>/instances/<instance>

rewritten when the view changes, at most once per :data:`VIEW_PERIOD`.

This module is the bookkeeping and the etcd side (:class:`FleetHealth`), and
the instance's view with its sharing (:class:`FleetView`); the routing plugin
decides when to report and asks who reported what.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Final, final
from urllib.parse import quote, unquote

import msgspec

from healkit._errors import EtcdError, PluginError
from healkit._log import get_logger
from healkit._routing.asking import count_failure, first_answer
from healkit._routing.health import EndpointStatus
from healkit._routing.settings import RoutingPlan, routing_plan, serving_group
from healkit.etcd import DeleteOp, EtcdSource, PutOp
from healkit.hookspecs import CircuitState

if TYPE_CHECKING:
    from healkit._clock import Clock
    from healkit._config.models import HealkitConfig
    from healkit._plan import CompiledHook
    from healkit._routing.health import Health
    from healkit._runtime import Runtime
    from healkit.etcd import EtcdClient, LeaseKeeper, WatchEvent

__all__ = [
    "HEALTH",
    "INSTANCES",
    "EndpointView",
    "FleetHealth",
    "FleetView",
    "InstanceView",
    "ServiceView",
    "instance_name",
    "parse_record_key",
]

_logger: Final = get_logger("healkit.fleet")
HEALTH: Final = "health/"
INSTANCES: Final = "instances/"
VIEW_PERIOD: Final = 1.0
"""Seconds between two writes of an instance's view, at least (a burst is one write)."""
REPORT_PERIOD: Final = 0.5
"""Seconds between two writes of an instance's reports, at least (a burst is one write)."""
_TXN_OPS: Final = 64
"""Reports per transaction, well under etcd's ``--max-txn-ops`` (128 by default)."""
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.\-]")
RETRY_PAUSE: Final = 1.0
_STATE_LONGEST: Final = 64
"""The longest breaker state a record holds (a longer one is cut)."""
MAX_REPORTERS: Final = 10_000
"""The most instances counted as reporting one endpoint (a bound on hostile input)."""


@final
class EndpointView(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An endpoint as one instance sees it (times are Unix timestamps).

    Attributes:
        endpoint: the endpoint's base URL.
        group: 0 for the primary group, 1 for the first fallback group, ...
        usable: whether this instance sends attempts there now.
        down: whether this instance's probes take it for down.
        ejected_until: when this instance's ejection of it ends (``None``: not ejected).
        fleet_reports: instances (this one included) that report it out.
        breaker: the state of its circuit breaker (``None`` without a breaker plugin).
        breaker_retry_at: when an open breaker may admit a call again.

    """

    endpoint: Annotated[str, msgspec.Meta(max_length=2048)]
    group: Annotated[int, msgspec.Meta(ge=0)]
    usable: bool
    down: bool
    ejected_until: float | None
    fleet_reports: Annotated[int, msgspec.Meta(ge=0)]
    breaker: Annotated[str, msgspec.Meta(max_length=_STATE_LONGEST)] | None
    breaker_retry_at: float | None


@final
class ServiceView(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A service as one instance sees it.

    Attributes:
        endpoints: every endpoint, group by group.
        traffic_group: the group this instance's traffic goes to now
            (``None``: no endpoint is usable; the primary group is tried anyway).
        traffic: the usable endpoints of that group.

    """

    endpoints: tuple[EndpointView, ...]
    traffic_group: Annotated[int, msgspec.Meta(ge=0)] | None
    traffic: tuple[str, ...]


@final
class InstanceView(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The record an instance keeps under ``instances/<instance>``.

    Attributes:
        instance: the instance's name (as in its health records).
        updated: when it was written (Unix time).
        services: the services that share health (``routing.fleet``), by name.

    """

    instance: Annotated[str, msgspec.Meta(max_length=128)]
    updated: float
    services: dict[str, ServiceView]


Describe = Callable[[], tuple[Mapping[str, ServiceView], float | None]]
"""Returns the instance's view of its services, and in how many seconds it
changes by itself (an ejection ending, a breaker's open time passing), if ever."""


def instance_name() -> str:
    """Return a name for this process in health records: host, process, a random part."""
    raw = f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
    return _UNSAFE.sub("-", raw)[:128]


@final
class FleetHealth:
    """The reports of this instance, and those of the fleet as seen in etcd."""

    def __init__(self, instance: str | None = None) -> None:
        self.instance = instance or instance_name()
        # (service, endpoint) -> instances that report it out, from etcd: only the
        # endpoints of the services sharing health (anyone may write other keys).
        self._reports: dict[tuple[str, str], set[str]] = {}
        self._wanted: frozenset[tuple[str, str]] = frozenset()
        # What this instance reports out, and what etcd holds of it under the lease.
        self._mine: set[tuple[str, str]] = set()
        self._published: set[tuple[str, str]] = set()
        self._dirty = asyncio.Event()  # set when _mine may differ from _published
        self._last_report = -math.inf
        # The view: stale when something it shows may have changed.
        self._stale = asyncio.Event()
        self._view_due: float | None = None  # clock time when it changes by itself
        self._last_view: Mapping[str, ServiceView] | None = None
        self._last_write = -math.inf

    def __repr__(self) -> str:
        return f"<FleetHealth {self.instance} {len(self._reports)} endpoints reported>"

    # -- what the router asks ------------------------------------------------------------

    def reporters(self, service: str, endpoint: str) -> int:
        """Return how many instances report ``endpoint`` of ``service`` out."""
        return len(self._reports.get((service, endpoint), ()))

    def others(self, service: str, endpoint: str) -> int:
        """Return how many instances other than this one report ``endpoint`` out."""
        reporters = self._reports.get((service, endpoint), ())
        return len(reporters) - (self.instance in reporters)

    def report(self, service: str, endpoint: str, *, out: bool) -> None:
        """Say (``out=True``) or take back that this instance takes the endpoint out."""
        key = (service, endpoint)
        if (key in self._mine) == out:
            return
        if out:
            self._mine.add(key)
        else:
            self._mine.discard(key)
        self._dirty.set()

    def want(self, wanted: frozenset[tuple[str, str]]) -> bool:
        """Follow the records of the ``(service, endpoint)`` pairs ``wanted`` only.

        Forgets the reports of other pairs, and takes back this instance's own
        (their records are deleted). Returns whether a pair is new: its records
        in etcd, passed over until now, are to be read again (:meth:`forget`,
        then listen again).
        """
        added = not wanted <= self._wanted
        self._wanted = wanted
        reports = self._reports
        for key in [key for key in reports if key not in wanted]:
            del reports[key]
        gone = self._mine - wanted
        if gone:
            self._mine -= gone
            self._dirty.set()
        return added

    def forget(self) -> None:
        """Forget every report heard (the records are about to be heard again)."""
        self._reports.clear()
        self._stale.set()

    def touch(self) -> None:
        """Say that this instance's view may have changed (it is written again if it did)."""
        self._stale.set()

    # -- etcd ------------------------------------------------------------------------

    def heard(self, root: str, events: Sequence[WatchEvent], *, replace: bool) -> None:
        """Take the health records that changed in etcd (a listener of the source).

        With ``replace``, ``events`` are every record there now: those heard before go.
        The view is looked at again only if the reports changed (a record
        heard again, or a read of the namespace finding what was known, does not).
        """
        before = {key: set(found) for key, found in self._reports.items()} if replace else None
        if replace:
            self._reports.clear()
        changed = False
        for event in events:
            parsed = parse_record_key(event.kv.key.decode("utf-8", "replace")[len(root) :])
            if parsed is None:
                continue
            service, endpoint, instance = parsed
            if (service, endpoint) in self._wanted:  # else no service shares health there
                deleted = event.type == "DELETE"
                changed |= self._take((service, endpoint), instance, deleted=deleted)
        if changed if before is None else before != self._reports:
            self._stale.set()

    def _take(self, key: tuple[str, str], instance: str, *, deleted: bool) -> bool:
        """Note ``instance``'s record on ``key`` written or deleted; whether reports changed."""
        reporters = self._reports.get(key)
        if deleted:
            if reporters is None or instance not in reporters:
                return False
            reporters.discard(instance)
            if not reporters:
                del self._reports[key]
            return True
        if reporters is None:
            self._reports[key] = {instance}
            return True
        if instance in reporters or len(reporters) >= MAX_REPORTERS:
            return False
        reporters.add(instance)
        return True

    async def publish_forever(
        self, client: EtcdClient, root: str, ttl: int, describe: Describe, clock: Clock
    ) -> None:
        """Keep this instance's reports and view in etcd under a lease, until cancelled.

        Its pauses (between retries, before the view is written again) are
        ``clock``'s, the runtime's.
        """
        while True:
            try:
                async with client.lease(ttl, clock=clock) as lease:
                    while not lease.expired:
                        # A new lease, or a write etcd did not confirm: write everything again.
                        self._write_all()
                        try:
                            await self._publish(client, root, lease, describe, clock)
                        except _LeaseLostError:
                            raise
                        except EtcdError as error:
                            # The lease may well live on (its keeper says when it does
                            # not): keep it, and its records with it, and try again.
                            self._unavailable(error)
                            await clock.sleep(RETRY_PAUSE)
            except _LeaseLostError:
                _logger.info("healkit.fleet_health_lease_renewed", instance=self.instance)
            except EtcdError as error:
                self._unavailable(error)
                await clock.sleep(RETRY_PAUSE)

    async def _publish(
        self,
        client: EtcdClient,
        root: str,
        lease: LeaseKeeper,
        describe: Describe,
        clock: Clock,
    ) -> None:
        """Write the reports and the view whenever they are due, while the lease lives.

        Raises:
            _LeaseLostError: the lease expired.
            EtcdError: etcd did not take a write.

        """
        while True:
            await self._write_reports(client, root, lease, clock)
            await self._write_view(client, root, lease, describe, clock)
            await self._next(lease, clock)

    def _write_all(self) -> None:
        """Forget what etcd was last told, so that everything is written again."""
        self._published = set()
        self._dirty.set()
        self._last_view = None
        self._stale.set()

    def _unavailable(self, error: EtcdError) -> None:
        _logger.warning(
            "healkit.fleet_health_unavailable",
            instance=self.instance,
            error=type(error).__name__,
            reason=error.message,
        )

    async def _write_reports(
        self, client: EtcdClient, root: str, lease: LeaseKeeper, clock: Clock
    ) -> None:
        """Write the difference between the reports and etcd's records (rate-limited)."""
        now = clock.now()
        if not self._dirty.is_set() or now < self._last_report + REPORT_PERIOD:
            return
        self._dirty.clear()
        mine = set(self._mine)
        ops: list[PutOp | DeleteOp] = [
            PutOp(key=_key(root, *key, self.instance).encode(), value=b"out", lease=lease.id)
            for key in sorted(mine - self._published)
        ]
        ops.extend(
            DeleteOp(key=_key(root, *key, self.instance).encode())
            for key in sorted(self._published - mine)
        )
        if not ops:
            return  # flapped back within the period: nothing to write
        for start in range(0, len(ops), _TXN_OPS):
            await client.txn(success=ops[start : start + _TXN_OPS])
        self._published, self._last_report = mine, now

    async def _write_view(
        self, client: EtcdClient, root: str, lease: LeaseKeeper, describe: Describe, clock: Clock
    ) -> None:
        """Write this instance's view if it may have changed and did (rate-limited)."""
        now = clock.now()
        due = self._view_due is not None and now >= self._view_due
        if not (self._stale.is_set() or due) or now < self._last_write + VIEW_PERIOD:
            return
        self._stale.clear()
        services, changes_in = describe()
        self._view_due = None if changes_in is None else now + changes_in
        if services == self._last_view:
            return
        view = InstanceView(instance=self.instance, updated=time.time(), services=dict(services))
        await client.put(
            root + INSTANCES + self.instance, msgspec.json.encode(view), lease=lease.id
        )
        self._last_view, self._last_write = services, now

    def _view_wait(self, now: float) -> float | None:
        """Seconds from ``now`` until the view is looked at again (``None``: on a change only)."""
        moments = [] if self._view_due is None else [self._view_due]
        if self._stale.is_set():  # changed within VIEW_PERIOD of the last write
            moments.append(now)
        if not moments:
            return None
        return max(min(moments), self._last_write + VIEW_PERIOD, now) - now

    async def _next(self, lease: LeaseKeeper, clock: Clock) -> None:
        """Wait until the reports or the view are to be written.

        Raises:
            _LeaseLostError: the lease expired first.

        """
        now = clock.now()
        expiry = asyncio.ensure_future(lease.wait_expired())
        waiting: set[asyncio.Future[Any]] = {expiry}
        moments: list[float] = []
        if self._dirty.is_set():  # changed within REPORT_PERIOD of the last write
            moments.append(max(self._last_report + REPORT_PERIOD - now, 0.0))
        else:
            waiting.add(asyncio.ensure_future(self._dirty.wait()))
        if not self._stale.is_set():
            waiting.add(asyncio.ensure_future(self._stale.wait()))
        view = self._view_wait(now)
        if view is not None:
            moments.append(view)
        if moments:
            waiting.add(asyncio.ensure_future(clock.sleep(min(moments))))
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiting:
                waiter.cancel()
        if expiry in done:
            raise _LeaseLostError


Statuses = Callable[[str, RoutingPlan, float], tuple[EndpointStatus, ...]]
"""The router's endpoints of a service, group by group, as seen at a moment of its clock."""


@final
class FleetView:
    """The view this instance shares of the services that share health (``instances/``).

    The router hands it each configuration (:meth:`configure`) and starts it
    with the runtime (:meth:`start`); the view reads the router's endpoint
    statuses (``statuses``) and health records (``health``) and asks
    ``healkit_circuit_state`` of the breaker plugins.
    """

    def __init__(
        self,
        fleet: FleetHealth,
        health: Mapping[tuple[str, str], Health],
        statuses: Statuses,
    ) -> None:
        self._fleet = fleet
        self._health = health
        self._statuses = statuses
        self._config: HealkitConfig | None = None
        self._fleets: Mapping[str, int] = {}
        self._runtime: Runtime | None = None
        self._circuits: CompiledHook | None = None  # healkit_circuit_state
        self._sharing: asyncio.Task[None] | None = None
        self._unlisten: Callable[[], None] | None = None  # the source's health/ listener
        self._following: EtcdSource | None = None
        self._wall_offset = 0.0  # Unix time minus the runtime clock

    def __repr__(self) -> str:
        return f"<FleetView {self._fleet.instance} {len(self._fleets)} services>"

    def configure(
        self,
        config: HealkitConfig,
        fleets: Mapping[str, int],
        runtime: Runtime,
        circuits: CompiledHook,
    ) -> None:
        """Show the services of ``config`` that share health (``fleets``: their record TTL).

        ``circuits`` is ``healkit_circuit_state``, compiled.
        """
        self._config, self._fleets, self._runtime = config, fleets, runtime
        self._circuits = circuits
        wanted = frozenset(
            (name, endpoint)
            for name in fleets
            for endpoint in routing_plan(config.services[name]).group_of
            if endpoint is not None
        )
        if self._fleet.want(wanted) and self._following is not None:
            self._follow(self._following)

    def start(self, runtime: Runtime) -> None:
        """Publish and follow fleet health through the etcd source, once it is asked for."""
        if self._config is None or (self._sharing is not None and not self._sharing.done()):
            return
        fleets = self._fleets
        source = runtime.source
        if not fleets or not isinstance(source, EtcdSource):
            return  # no etcd source: health stays local
        client, root = source.client, source.root
        ttl = min(fleets.values())
        fleet_health = self._fleet
        self._wall_offset = time.time() - runtime.clock.now()
        self._follow(source)
        self._sharing = runtime.start_background(
            "routing fleet health",
            lambda: fleet_health.publish_forever(client, root, ttl, self.describe, runtime.clock),
        )

    def _follow(self, source: EtcdSource) -> None:
        """Hear the health records of ``source`` from scratch (once: listened to again)."""
        if self._unlisten is not None:
            self._unlisten()
        fleet_health, root = self._fleet, source.root
        fleet_health.forget()
        self._following = source
        self._unlisten = source.listen(
            HEALTH,
            lambda events, _revision, *, replace: fleet_health.heard(root, events, replace=replace),
        )

    def describe(self) -> tuple[dict[str, ServiceView], float | None]:
        """Return how this instance sees the services that share health, and when that changes.

        Times are Unix timestamps; the second value is in how many seconds an
        ejection ends or an open breaker may admit calls again, if ever.
        """
        config, runtime = self._config, self._runtime
        if config is None:
            return {}, None
        now = runtime.clock.now() if runtime is not None else 0.0
        upcoming: list[float] = []
        view: dict[str, ServiceView] = {}
        for name in self._fleets:
            plan = routing_plan(config.services[name])
            seen = self._statuses(name, plan, now)
            served = serving_group(plan.groups, {e.endpoint for e in seen if e.usable}.__contains__)
            traffic_group, traffic = (None, ()) if served is None else (served[0], tuple(served[1]))
            endpoints: list[EndpointView] = []
            for status in seen:
                health = self._health.get((name, status.endpoint))
                ejected_until = -math.inf if health is None else health.ejected_until
                breaker, retry_at = self._breaker_of(name, status.endpoint)
                upcoming.extend(t for t in (ejected_until, retry_at) if now < t < math.inf)
                endpoints.append(
                    EndpointView(
                        endpoint=status.endpoint,
                        group=status.group,
                        usable=status.usable,
                        down=status.down,
                        ejected_until=self._wall(ejected_until, now),
                        fleet_reports=status.fleet_reports,
                        breaker=breaker,
                        breaker_retry_at=self._wall(retry_at, now),
                    )
                )
            view[name] = ServiceView(
                endpoints=tuple(endpoints), traffic_group=traffic_group, traffic=traffic
            )
        return view, (min(upcoming) - now if upcoming else None)

    def _breaker_of(self, service: str, endpoint: str) -> tuple[str | None, float]:
        """Return the endpoint's circuit state, and when it may admit calls again.

        Asks ``healkit_circuit_state``: any breaker plugin may answer. A plugin
        that fails is logged and the state left unknown (``None``), so that the
        fleet view is still published; a state is cut to what a record holds.
        """
        circuits = self._circuits
        try:
            found = (
                None
                if circuits is None
                else first_answer(circuits, CircuitState, service, endpoint)
            )
        except PluginError as error:
            count_failure(self._runtime, error)
            return None, -math.inf
        if found is None:
            return None, -math.inf
        retry_at = -math.inf if found.retry_at is None else found.retry_at
        return found.state[:_STATE_LONGEST], retry_at

    def _wall(self, moment: float, now: float) -> float | None:
        """Return a future moment of the runtime clock in Unix time (``None``: past or never)."""
        if not now < moment < math.inf:
            return None
        return round(moment + self._wall_offset, 3)


class _LeaseLostError(EtcdError):
    """The lease expired: grant a new one and publish again."""

    def __init__(self) -> None:
        super().__init__("the fleet health lease expired")


def _key(root: str, service: str, endpoint: str, instance: str) -> str:
    return f"{root}{HEALTH}{service}/{quote(endpoint, safe='')}/{instance}"


def parse_record_key(relative: str) -> tuple[str, str, str] | None:
    """Return (service, endpoint, instance) of a health record key, relative to the root."""
    if not relative.startswith(HEALTH):
        return None
    parts = relative[len(HEALTH) :].split("/")
    if len(parts) != 3 or not all(parts):
        return None
    service, endpoint, instance = parts
    return service, unquote(endpoint), instance
