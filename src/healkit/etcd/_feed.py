"""One watch per namespace and etcd connection set, shared by every source in the process.

Several runtimes in one process (workers, tenants, tests) each have an
:class:`~healkit.etcd.EtcdSource` for the same namespace of the same etcd.
Instead of a watch each, they share a feed: one watch stream on one
connection set of its own, with one liveness probe, one reconnection and one
resynchronization. Each source subscribes and keeps its own semantics (applied
revision, rejections, status, last good documents); it receives, in order:

* :class:`Reset`: every key at one revision, with the feed's first read and
  whenever the feed reads the namespace again (history compacted, etcd
  restored to an older revision, a subscriber fell too far behind or joined
  behind the feed, or asked for it: :meth:`Subscription.resync`);
* :class:`Change`: the events of one revision, whole;
* :class:`Progress`: nothing under the namespace changed up to a revision;
* :class:`Connection`: the watch runs, or etcd could not be reached.

The watch follows etcd's rules (see ``DESIGN.md``, "etcd"): read the prefix
at one revision R, watch from R + 1, resume after a disconnect from the last
revision reached + 1, read again at one revision after a compaction or when
etcd's revision went backwards, reconnect with capped, jittered backoff, and
notice a stream that died silently within the liveness timeout.

A watch that etcd merely confirmed proves nothing: a server that confirms it
and then sends garbage, closes it, answers from another cluster or sends
progress notifications that move nothing would otherwise be retried as fast
as it answers. A watch is *useful* once it delivered a change or a progress
notification that moved the revision, or once its first liveness check
passed (it stayed open and well-formed for a third of the liveness timeout).
Only then does the feed say that the watch runs (:class:`Connection`) and
start its backoff over. Until then each failed attempt waits longer:
:data:`BACKOFF_BASE` seconds after the first, times :data:`BACKOFF_MULTIPLIER`
after each further one, up to :data:`BACKOFF_CAP`, each spread by
±:data:`BACKOFF_JITTER` (gRPC's connection backoff, with etcd's smaller
scale). A failure is logged once, by the sources (``healkit.etcd_unreachable``);
the attempts that fail after it are counted in one ``healkit.etcd_watch_retrying``
line per :data:`SUMMARY_INTERVAL` at most. The backoff and the summaries run
on the clock of the feed's first subscriber (:class:`~healkit.Clock`).

The feed keeps no copy of the keys: what is written under the namespace
(configuration, fleet records, anything anyone with write access puts there)
passes through it and is gone once its subscribers took it, so its memory
does not grow with the namespace. A subscriber that joins a running feed
starts from its own read of the namespace (``start``) when that read is not
older than the revision the feed reached: the changes up to its read, which
the feed hands on too, are older than its state and ignored. One whose read
is older, or that has none, misses changes the feed will not hand on again:
the feed reads the namespace again at one revision and hands that to every
subscriber, as after a compaction (etcd's own answer to a watcher behind its
history: read again, watch from there). A subscriber that falls behind
(:data:`QUEUE_LIMIT`) gets the same: its backlog is dropped, then nothing
until that read.

Feeds are keyed by event loop, connection settings
(:class:`~healkit.etcd._gateway.Settings`: endpoints, credentials, TLS,
timeouts), namespace root and liveness timeout. A feed starts with its first
subscriber and stops (its watch cancelled, its connections closed) when the
last one leaves; a later subscriber starts a new one. The reconnection jitter
is drawn from its first subscriber's ``random``; subscribers share a feed only
when they give the same clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import itertools
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Final, final

import anyio

from healkit._clock import Clock
from healkit._errors import (
    EtcdCompactedError,
    EtcdError,
    EtcdProtocolError,
    EtcdUnavailableError,
)
from healkit._log import get_logger
from healkit.etcd._gateway import Settings
from healkit.etcd._messages import KeyValue, RangeResult, WatchEvent

if TYPE_CHECKING:
    from healkit.etcd._client import EtcdClient
    from healkit.etcd._watch import EtcdWatch

__all__ = ["Change", "Connection", "FeedItem", "Progress", "Reset", "Subscription", "subscribe"]

_logger: Final = get_logger("healkit.etcd")

BACKOFF_BASE: Final = 0.1
"""Seconds between a failed watch attempt and the next, after the first failure (± jitter)."""
BACKOFF_MULTIPLIER: Final = 1.6
"""How much longer the wait grows after each further attempt that failed before it was useful."""
BACKOFF_CAP: Final = 10.0
"""The longest wait between two attempts (± jitter): it is reached after 11 failed attempts."""
BACKOFF_JITTER: Final = 0.2
"""Each wait is drawn uniformly within ± this fraction of itself."""
SUMMARY_INTERVAL: Final = 60.0
"""Seconds (on the feed's clock) between two lines that count the attempts still failing."""
QUEUE_LIMIT: Final = 1000
"""Items a subscriber may have waiting; beyond, they give way to a new read (a :class:`Reset`)."""


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Reset:
    """Every key under the namespace, at one revision."""

    kvs: tuple[KeyValue, ...]
    """The keys, in key order."""
    revision: int
    """The revision they were read at (or reached by the watch)."""
    cluster_id: int
    """The etcd cluster they come from."""
    replace: bool
    """Take this state whatever the revision applied: etcd's revision went backwards."""


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """The events of one revision under the namespace, oldest first."""

    events: tuple[WatchEvent, ...]
    """The events."""
    revision: int
    """Their revision."""


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    """Nothing under the namespace changed up to ``revision``."""

    revision: int
    """The store's revision."""


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Connection:
    """The watch runs (``error`` is ``None``), or etcd could not be reached."""

    error: EtcdError | None
    """Why etcd could not be reached."""


FeedItem = Reset | Change | Progress | Connection

_FeedKey = tuple[Settings, str, float, Clock]
_feeds: Final[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_FeedKey, _Feed]]] = (
    weakref.WeakKeyDictionary()
)


def subscribe(  # noqa: PLR0913 - keyword-only options
    client: Callable[[], EtcdClient],
    settings: Settings,
    root: str,
    *,
    liveness_timeout: float,
    random: Callable[[], float],
    clock: Clock,
    start: RangeResult | None,
) -> Subscription:
    """Follow the keys under ``root`` through the feed of this loop, settings and root.

    Args:
        client: makes the feed's own client (connections), if a new feed starts.
        settings: the connection settings the feed is shared by.
        root: the namespace's key prefix.
        liveness_timeout: see :class:`~healkit.etcd.EtcdSource`.
        random: the jitter of the reconnection backoff, if a new feed starts.
        clock: what the reconnection backoff sleeps on; feeds are shared by clock.
        start: the keys under ``root`` as the subscriber read them: a feed that
            has read nothing yet starts from them and watches from the next revision.

    """
    feeds = _feeds.setdefault(asyncio.get_running_loop(), {})
    key = (settings, root, liveness_timeout, clock)
    feed = feeds.get(key)
    if feed is None:
        feed = _Feed(client(), root, liveness_timeout, random, clock)
        feeds[key] = feed

        def forget(stopped: _Feed = feed) -> None:
            if feeds.get(key) is stopped:
                del feeds[key]

        feed.on_stop(forget)
    return feed.join(start)


@final
class Subscription:
    """One subscriber's view of a feed: its items in order, waiting for it."""

    __slots__ = ("_behind", "_feed", "_items", "_left", "_ready", "_replace")

    def __init__(self, feed: _Feed) -> None:
        self._feed = feed
        self._items: collections.deque[FeedItem] = collections.deque()
        self._ready = asyncio.Event()
        self._left = False
        # Waiting for a Reset: the changes before it do not apply to this subscriber.
        self._behind = False
        # A Reset with ``replace`` was dropped while waiting: the next one replaces.
        self._replace = False

    def push(self, item: FeedItem) -> None:
        """Queue ``item``; a subscriber too far behind waits for a new read of the namespace."""
        if len(self._items) >= QUEUE_LIMIT:
            # Too far behind: the backlog goes; a read of the namespace replaces it.
            self._replace |= any(isinstance(old, Reset) and old.replace for old in self._items)
            self._items.clear()
            connection = self._feed.connection
            if connection is not None and not isinstance(item, Connection):
                self._items.append(connection)
            if not isinstance(item, Reset):
                self.resync()
        if isinstance(item, Reset):
            if self._replace and not item.replace:
                item = dataclasses.replace(item, replace=True)
            self._behind = self._replace = False
        elif self._behind and isinstance(item, Change | Progress):
            return  # older than the Reset to come, which holds it
        self._items.append(item)
        self._ready.set()

    def resync(self) -> None:
        """Drop the changes until the feed's next :class:`Reset`, and have the feed read one.

        For a subscriber whose state is behind the feed's (it joined late, fell
        behind, or needs every key again): the Reset brings it to the feed's
        revision; the changes after it follow.
        """
        self._behind = True
        self._feed.read_again()

    async def next(self) -> FeedItem:
        """Return the next item, waiting for one."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    async def aclose(self) -> None:
        """Leave the feed; the last subscriber to leave stops it and waits for that."""
        if not self._left:
            self._left = True
            await self._feed.leave(self)


@final
class _Feed:
    """The shared watch of one namespace (see the module docstring)."""

    __slots__ = (
        "_client",
        "_clock",
        "_cluster_id",
        "_connection",
        "_failed",
        "_failures",
        "_heard",
        "_liveness",
        "_loaded",
        "_loading",
        "_mismatched",
        "_proven",
        "_random",
        "_reload",
        "_replace",
        "_revision",
        "_root",
        "_stopped",
        "_stream",
        "_subscribers",
        "_summarized",
        "_task",
    )

    def __init__(
        self,
        client: EtcdClient,
        root: str,
        liveness: float,
        random: Callable[[], float],
        clock: Clock,
    ) -> None:
        self._client = client
        self._root = root
        self._liveness = liveness
        self._random = random
        self._clock = clock
        self._subscribers: dict[Subscription, None] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopped: list[Callable[[], None]] = []
        # The revision reached and its cluster; no key is kept (see the module docstring).
        self._revision = 0
        self._cluster_id = 0
        self._loaded = False
        self._reload = True
        self._loading = False
        self._replace = False
        # The last read was made because the watch's history was not the
        # read's, and no watch message has agreed with a read since.
        self._mismatched = False
        self._stream: EtcdWatch | None = None
        self._connection: Connection | None = None
        # Messages the watch stream delivered so far (its sign of life).
        self._heard = 0
        # Whether the watch running now proved useful (see the module docstring).
        self._proven = False
        # Attempts that failed since a watch last proved useful: the backoff's exponent.
        self._failures = 0
        # Since when failed attempts are being counted for a summary line (None:
        # none failed since a watch was useful), and how many failed since.
        self._summarized: float | None = None
        self._failed = 0

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the last subscriber leaves."""
        self._stopped.append(callback)

    @property
    def connection(self) -> Connection | None:
        """The last word on the connection (``None``: none yet)."""
        return self._connection

    def join(self, start: RangeResult | None) -> Subscription:
        """Add a subscriber that starts from ``start``, its own read of the namespace.

        A feed that has read nothing yet takes ``start`` as its state, hands it
        to the subscribers waiting for a first read, and watches from the
        revision after it. A running feed hands on its changes, the older ones
        included (the subscriber ignores what its read holds), if ``start`` is
        not older than the revision it reached; else, or without ``start``,
        the subscriber waits for the feed's next read (:meth:`Subscription.resync`).
        """
        subscription = Subscription(self)
        self._subscribers[subscription] = None
        if start is not None and not self._loaded:
            self._seed(start)
            # Subscribers waiting for the feed's first read get this one.
            reset = Reset(start.kvs, start.revision, start.cluster_id, replace=False)
            for other in self._subscribers:
                if other is not subscription:
                    other.push(reset)
        elif self._loaded and (
            start is None or start.revision < self._revision or start.cluster_id != self._cluster_id
        ):
            subscription.resync()
        if self._connection is not None:
            subscription.push(self._connection)
        if self._task is None:
            # Shared by every subscriber of the loop: in no subscriber's context.
            self._task = asyncio.create_task(
                self._run(), name=f"healkit etcd feed {self._root}", context=contextvars.Context()
            )
        return subscription

    def read_again(self) -> None:
        """Read the namespace again (soon) and hand it to every subscriber as a :class:`Reset`.

        A read under way serves: it is not older than the request. Otherwise
        the watch stops, and the feed reads and watches from there.
        """
        if self._loading or not self._loaded:
            return  # the read under way, or the first one, is the one asked for
        self._reload = True
        stream = self._stream
        if stream is not None:
            self._stream = None
            stream.close_soon()

    async def leave(self, subscription: Subscription) -> None:
        """Remove a subscriber; without any left, stop the watch and close the connections."""
        self._subscribers.pop(subscription, None)
        if self._subscribers:
            return
        for callback in self._stopped:
            callback()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # its cancellation stays its own, not the caller's

    def _broadcast(self, item: FeedItem) -> None:
        if isinstance(item, Connection):
            self._connection = item
        for subscription in list(self._subscribers):
            subscription.push(item)

    # -- following etcd -----------------------------------------------------------------

    async def _run(self) -> None:
        compacted_before = False  # the last attempt ended in a compaction, useless
        try:
            while True:
                self._proven = False
                try:
                    if self._reload:
                        await self._load()
                    await self._follow()
                except EtcdCompactedError as compacted:
                    # Read again at once; but a history compacted again before
                    # any watch was useful is no restore: it waits its turn.
                    again = compacted_before and not self._proven
                    compacted_before = True
                    self._reload = True
                    if again:
                        await self._retry(compacted)
                        continue
                    _logger.warning(
                        "healkit.etcd_compacted",
                        applied_revision=self._revision,
                        compact_revision=compacted.compact_revision,
                    )
                except EtcdError as error:
                    compacted_before = False
                    self._broadcast(Connection(error))
                    await self._retry(error)
                else:
                    compacted_before = False
        finally:
            await self._client.close()

    async def _retry(self, error: EtcdError) -> None:
        """Count a failed attempt, summarize it when it is time, and wait the backoff."""
        self._failures += 1
        delay = self._backoff(self._failures)
        now = self._clock.now()
        if self._summarized is None:
            # The first failure: the sources log it (healkit.etcd_unreachable).
            self._summarized, self._failed = now, 0
        else:
            self._failed += 1
            if now - self._summarized >= SUMMARY_INTERVAL:
                _logger.warning(
                    "healkit.etcd_watch_retrying",
                    attempts=self._failed,
                    seconds=round(now - self._summarized, 3),
                    reason=str(error),
                    retry_in=round(delay, 3),
                )
                self._summarized, self._failed = now, 0
        await self._clock.sleep(delay)

    def _prove(self) -> None:
        """Mark the watch running now useful: say that it runs, and start the backoff over."""
        if self._proven:
            return
        self._proven = True
        self._failures = 0
        self._summarized = None
        if self._connection is None or self._connection.error is not None:
            self._broadcast(Connection(None))

    async def _load(self) -> None:
        """Read every key under the root at one revision; hand it to every subscriber."""
        self._loading = True
        try:
            result = await self._client.range_all(self._root, prefix=True)
        finally:
            self._loading = False
        replace, self._replace = self._replace, False
        self._seed(result)
        self._broadcast(Reset(result.kvs, result.revision, result.cluster_id, replace))

    def _seed(self, result: RangeResult) -> None:
        """Make ``result`` (every key under the root at one revision) the feed's state."""
        self._revision, self._cluster_id = result.revision, result.cluster_id
        self._loaded, self._reload = True, False

    async def _follow(self) -> None:
        async with self._watch_stream() as stream:
            if self._reload:
                return  # asked for a new read while the watch was being created
            self._stream = stream
            try:
                await self._hand_on(stream)
            finally:
                self._stream = None

    async def _hand_on(self, stream: EtcdWatch) -> None:
        """Hand on what ``stream`` delivers until it ends, or etcd's history is not ours."""
        if stream.created_revision < self._revision:
            # etcd was restored from an older backup (or is another cluster): a
            # watch from our next revision would wait for a future that is not ours.
            self._went_back(stream.endpoint, stream.created_revision)
            return
        if self._other_cluster(stream.endpoint, stream.cluster_id):
            return
        async for response in stream:
            self._heard += 1
            if response.revision < self._revision:
                self._went_back(stream.endpoint, response.revision)
                return
            if self._other_cluster(stream.endpoint, response.cluster_id):
                return
            self._mismatched = False
            fresh = [e for e in response.events if e.kv.mod_revision > self._revision]
            # A response can carry several revisions (catching up after a
            # reconnection): each revision is handed on on its own, whole.
            for revision, events in itertools.groupby(fresh, key=lambda e: e.kv.mod_revision):
                self._prove()
                self._revision = revision
                self._broadcast(Change(tuple(events), revision))
            if not response.events and response.revision > self._revision:
                # A progress notification: nothing of ours changed up to there.
                self._prove()
                self._revision = response.revision
                self._broadcast(Progress(response.revision))

    def _other_cluster(self, endpoint: str, cluster_id: int) -> bool:
        """Whether the watch runs on another etcd cluster than the state's; if so, read again.

        The revisions of one cluster mean nothing in another (an endpoint that
        now leads to another cluster, a cluster restored with a new ID and
        its revisions bumped): resuming from our next revision there would mix
        two histories. Everything is read again, as after a restore.
        """
        if not (self._cluster_id and cluster_id) or cluster_id == self._cluster_id:
            return False
        self._mismatch(
            endpoint,
            f"its watch answers from cluster {cluster_id:x}, its read from {self._cluster_id:x}",
        )
        _logger.warning(
            "healkit.etcd_cluster_changed",
            endpoint=endpoint,
            applied_revision=self._revision,
            previous_cluster=f"{self._cluster_id:x}",
            etcd_cluster=f"{cluster_id:x}",
        )
        return True

    def _went_back(self, endpoint: str, etcd_revision: int) -> None:
        self._mismatch(
            endpoint,
            f"its watch is at revision {etcd_revision}, below its read's {self._revision}",
        )
        _logger.warning(
            "healkit.etcd_revision_went_back",
            applied_revision=self._revision,
            etcd_revision=etcd_revision,
        )

    def _mismatch(self, endpoint: str, reason: str) -> None:
        """Read everything again: the watch's history is not the one read.

        Once, that is a restore or a move to another cluster. Again, before
        any watch message agreed with the read made for the first, the
        endpoints do not serve one history (a balancer over two clusters, a
        server that only looks like etcd): reading again at once would loop
        as fast as it answers. That raises :class:`~healkit.EtcdProtocolError`,
        so that the feed says so and reads again after its backoff.
        """
        self._reload = self._replace = True
        if self._mismatched:
            raise EtcdProtocolError(
                f"etcd at {endpoint or 'any endpoint'} does not serve one history: {reason},"
                " again after reading everything again",
                endpoint=endpoint or None,
            )
        self._mismatched = True

    @contextlib.asynccontextmanager
    async def _watch_stream(self) -> AsyncIterator[EtcdWatch]:
        """Open the watch from the next revision, guarded against a silent death.

        The watch must be confirmed within the liveness timeout; while it runs,
        :meth:`_guard` closes it when it is found dead, which ends the
        iteration, and leaving the block raises the reason
        (:class:`~healkit.EtcdUnavailableError`): the feed reconnects.
        """
        watch = self._client.watch(
            self._root, prefix=True, start_revision=self._revision + 1, progress_notify=True
        )
        async with contextlib.AsyncExitStack() as stack:
            try:
                with anyio.fail_after(self._liveness):
                    stream = await stack.enter_async_context(watch)
            except TimeoutError as timeout:
                reason = f"etcd did not confirm the watch within {self._liveness:g} s"
                raise _dead(watch.endpoint, reason) from timeout
            dead: list[EtcdUnavailableError] = []
            guard = asyncio.create_task(self._guard(stream.endpoint, dead, stream.aclose))
            try:
                yield stream
            finally:
                guard.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await guard
            if dead:
                raise dead[0]

    async def _guard(
        self, endpoint: str, dead: list[EtcdUnavailableError], close: Callable[[], Awaitable[None]]
    ) -> None:
        """Close the watch once it is found dead, with the reason in ``dead``.

        Every third of the liveness timeout without a message on the stream, a
        cheap read (the namespace's keys changed since the revision reached)
        goes to etcd. The stream is dead when that read gets no answer within
        a third of the liveness timeout, or when etcd holds a change of the
        namespace that the stream did not deliver by the next check. So a
        silent death is noticed within the liveness timeout. The read is
        linearizable: a member cut off from its cluster's leader, whose watch
        would stay quiet, fails it, and the client moves to another endpoint.
        A check that passes (the stream delivered, or etcd holds nothing it
        missed) proves the watch useful.
        """
        period = self._liveness / 3
        heard = self._heard
        expected = 0  # a revision of the namespace in etcd that the stream must deliver
        while True:
            await anyio.sleep(period)
            if expected > self._revision:
                reason = f"the watch did not deliver revision {expected} that etcd has"
                break
            expected = 0
            if self._heard != heard:
                heard = self._heard
                self._prove()
                continue
            try:
                with anyio.fail_after(period):
                    probe = await self._client.range(
                        self._root,
                        prefix=True,
                        keys_only=True,
                        limit=1,
                        min_mod_revision=self._revision + 1,
                    )
            except TimeoutError:
                reason = f"the watch is silent and etcd did not answer a probe within {period:g} s"
                break
            except EtcdError as error:
                reason = f"the watch is silent and a probe failed: {error.message}"
                break
            if probe.kvs:
                expected = probe.kvs[0].mod_revision
            else:
                self._prove()
        dead.append(_dead(endpoint, reason))
        await close()

    def _backoff(self, failures: int) -> float:
        """Return the wait after ``failures`` failed attempts: growing, capped, jittered."""
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * BACKOFF_MULTIPLIER ** min(failures - 1, 64))
        return ceiling * (1.0 + BACKOFF_JITTER * (2.0 * self._random() - 1.0))


def _dead(endpoint: str, reason: str) -> EtcdUnavailableError:
    """Return the error of a watch stream found dead (the feed reconnects and resumes)."""
    return EtcdUnavailableError(
        f"watch stream from etcd at {endpoint or 'any endpoint'} is dead: {reason}",
        failures=[(endpoint, reason)] if endpoint else [],
        endpoint=endpoint or None,
    )
