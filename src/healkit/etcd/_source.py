"""Configuration from etcd: one document per service, watched and applied by revision.

Key layout, under ``prefix`` (default ``/healkit/``) and a ``namespace``::

    <prefix><namespace>/defaults                              the defaults document
    <prefix><namespace>/services/<service>                    one document per service
    <prefix><namespace>/channels/<channel>/services/<service> a canary overlay

Documents are JSON or YAML. A client started with ``channel=`` applies that
channel's overlay of a service on top of the service's document, key by key
(a section of the overlay replaces the same section of the service).

The watch follows etcd's rules (see ``DESIGN.md``, "etcd"): read the whole
prefix at one revision R, watch from R + 1, apply each watch response as a
whole and once (each of its revisions on its own, events of one revision
together), resume after a disconnect from the last applied revision + 1,
and resynchronize with one full read when the history was compacted or etcd's
revision went backwards (a restore). Every applied revision is one document
submitted to the runtime; a document of one key that is invalid is rejected
(logged with its key, revision, path and reason) and that key's last good
document stays in force while the others move on. Documents are decoded (within
the source's :class:`~healkit.DocumentLimits`) and validated in a worker thread,
one revision after the other: the event loop keeps serving calls meanwhile.
The source keeps each key's last good document as its bytes
(:class:`~healkit._config.compact.Encoded`), not as a decoded tree: held for
as long as the source runs, a tree would make every full garbage collection
longer; decoded and encoded in one step, it is gone before the collector sees it.

Each key is judged on its own, at every revision that writes it. A document
that is not UTF-8 or not JSON/YAML is rejected as undecodable; a decoded one
is compared with the key's last good document by value *and type* (``true``
is not ``1``, ``2.0`` is not ``2``), so an invalid document never looks
unchanged; when the runtime refuses the whole document, the keys its issues
point at are rejected (or, if they point at no key written in that revision,
every key written in it: together they made the document invalid) and the
rest is submitted again. At start the same rules apply (:meth:`EtcdSource.load_into`):
the runtime starts with every valid document and refuses to start only when
documents exist and none of them is usable. Documents are assembled in the
order their keys were created (:func:`creation_order`), so that of two
services naming one endpoint every instance keeps the same one, and a
document refused only because of other documents is held and judged again
with each later change of the configuration.

The sources of one process that read the same namespace of the same etcd
with the same connection settings share one watch stream (see
:mod:`healkit.etcd._feed`): the first one's bootstrap read starts it, a later
one takes the state it has reached (one document, like a resynchronization)
and the changes after it. What each source applies, rejects and reports stays
its own.

While etcd cannot be reached the configuration in force keeps serving; the
source says so (a log event, :attr:`EtcdSource.status`) and reconnects with
capped, jittered backoff. A watch stream that dies silently (packets dropped,
no reset) is noticed within ``liveness_timeout`` and handled the same way.
With ``snapshot_path`` the state is written to a local file once the bootstrap
read is loaded and after each revision, with the namespace and etcd's cluster
ID, and a runtime of that namespace that starts while etcd is away starts from
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import random
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final, Literal, NoReturn, Protocol, final

import msgspec

from healkit._clock import SYSTEM_CLOCK, Clock
from healkit._config.compact import encoded, opened, plain_document
from healkit._config.formats import DEFAULT_LIMITS, DocumentFormat, DocumentLimits, parse_document
from healkit._config.models import name_problem, service_name_issues
from healkit._config.sources import ConfigSink
from healkit._config.validate import join_path, same_document
from healkit._errors import ConfigError, ConfigIssue, EtcdError
from healkit._log import get_logger
from healkit._offload import off_loop
from healkit.etcd._client import EtcdClient
from healkit.etcd._feed import Change, Progress, Reset, Subscription
from healkit.etcd._messages import KeyValue, RangeResult, WatchEvent
from healkit.events import Connection, EtcdSourceStatus

__all__ = [
    "EtcdSource",
    "EtcdSourceStatus",
    "KeyKind",
    "Listener",
    "creation_order",
    "etcd_prefix",
    "key_role",
    "name_issues",
    "stored_format",
]

_logger: Final = get_logger("healkit.etcd")

DEFAULT_PREFIX: Final = "/healkit/"
DEFAULT_LIVENESS: Final = 10.0
SNAPSHOT_VERSION: Final = 2
SNAPSHOT_MAX_BYTES: Final = 256 * 1024 * 1024
"""The largest snapshot file read or written: 256 MiB, 256 documents at the largest
:class:`~healkit.DocumentLimits` allows by default, or tens of thousands of real ones."""
LOGGED_ISSUES: Final = 20
"""Issues logged for one rejected document; more are counted in one last event."""


class Listener(Protocol):
    """Receives the keys under a listened prefix: every one, or the changes of one revision."""

    def __call__(self, events: Sequence[WatchEvent], revision: int, *, replace: bool) -> None:
        """Take ``events`` as of ``revision``.

        With ``replace`` the events are every key under the prefix at
        ``revision``, as ``PUT`` events (maybe none): what the listener knew of
        the prefix before is to be dropped. Otherwise they are the changes of
        one revision, deletes included.
        """


@final
class _Listening:
    """A listener, its prefix, and whether it has been given the keys there yet."""

    __slots__ = ("listener", "ready", "under")

    def __init__(self, under: bytes, listener: Listener) -> None:
        self.under = under  # the whole prefix, as etcd's keys start
        self.listener = listener
        self.ready = False


class _Snapshot(msgspec.Struct, frozen=True):
    """The snapshot file: what etcd held under one namespace's root, at one revision."""

    version: int
    root: str
    """The namespace's key prefix the documents were read under."""
    cluster_id: int
    """The etcd cluster they were read from."""
    revision: int
    documents: dict[str, str]


KeyKind = Literal["defaults", "service", "overlay", "other"]

DEFAULTS: Final = "defaults"
"""The key of the namespace's defaults, relative to its root."""


def stored_format(document: str | bytes) -> DocumentFormat:
    """Return the format of a document stored in etcd: JSON if it starts with ``{``, else YAML.

    The one rule for instances (:class:`EtcdSource`) and ``healkit config``
    commands, so both read a key the same way.
    """
    return "json" if document.lstrip()[:1] in {"{", b"{"} else "yaml"


def key_role(key: str) -> tuple[KeyKind, str, str]:
    """Classify a key relative to a namespace's root: (kind, service, channel).

    ``defaults``; ``services/<service>``; ``channels/<channel>/services/<service>``
    (an overlay); anything else is ``other`` (health records...). Whatever
    follows ``services/`` is the service's name, also when it is not a valid
    name (``payments/``, ``a/b``, empty): such a key is a document that is
    rejected, never a key silently ignored.
    """
    parts = key.split("/")
    if parts == ["defaults"]:
        return ("defaults", "", "")
    if len(parts) >= 2 and parts[0] == "services":
        return ("service", "/".join(parts[1:]), "")
    if len(parts) >= 4 and parts[0] == "channels" and parts[2] == "services":
        return ("overlay", "/".join(parts[3:]), parts[1])
    return ("other", "", "")


def creation_order(kv: KeyValue) -> tuple[int, bytes]:
    """Sort key of the order documents are judged in: their keys' creation, then key order.

    Of two services that name one endpoint, the one whose key was created
    first (``create_revision``; within one revision, the first in key order)
    keeps it. The one rule of instances, at start and when watching, and of
    ``healkit status`` and ``config push``: a key keeps its place when it is
    written again, and goes last when it is deleted and created again.
    """
    return (kv.create_revision, kv.key)


def name_issues(key: str) -> list[ConfigIssue]:
    """Return the issues of the service name in ``key`` (relative to the root); ``[]``: none.

    A key whose name is not a valid service name is refused alone, with the
    key, before its document is read: judged only in the whole document, the
    issue would lie at ``$.services``, which no key owns, and every key
    written with it would be rejected. The one rule of instances and of
    ``healkit status``, ``config push`` and ``config diff``.
    """
    kind, name, _ = key_role(key)
    return service_name_issues([name]) if kind in {"service", "overlay"} else []


def etcd_prefix(namespace: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Return the key prefix of ``namespace``: ``<prefix><namespace>/``."""
    if not prefix.startswith("/") or not prefix.endswith("/"):
        raise ValueError(f"the etcd prefix must start and end with '/', got {prefix!r}")
    if name_problem(namespace) is not None:
        raise ValueError(
            f"invalid namespace {namespace!r}: letters, digits, '_', '.', '-' (1 to 128)"
        )
    return f"{prefix}{namespace}/"


@final
class EtcdSource:
    """A :class:`~healkit.ConfigSource` reading the documents of a namespace from etcd.

    Args:
        client: the etcd client (the source does not close it).
        namespace: the namespace whose documents this runtime applies.
        prefix: the root of healkit's keys.
        channel: apply this canary channel's overlays.
        snapshot_path: keep the last applied state in this file (written
            atomically, mode 0600), and start from it when etcd is away.
        liveness_timeout: seconds within which a watch stream that went
            silently dead (packets dropped, no reset) is noticed, and the
            longest a new watch may take to be confirmed; the source then
            reconnects and resumes from the last applied revision + 1. Sources
            share a watch only when they have the same liveness timeout.
        random: the random draw for the reconnection jitter (tests fix it); the
            watch shared with other sources (see :meth:`watch`) uses the one of
            the source that started it.
        clock: what the reconnection backoff waits on and its summary lines
            are timed by (tests give a :class:`~healkit.testing.ManualClock`);
            sources share a watch only when they have the same clock.
        limits: what one key's document may cost to decode (see
            :class:`~healkit.DocumentLimits`); beyond, it is rejected like an
            invalid one. Set here, locally: no document in etcd can change them.

    """

    __slots__ = (
        "_changed",
        "_channel",
        "_client",
        "_clock",
        "_cluster_id",
        "_connection",
        "_documents",
        "_from_snapshot",
        "_good",
        "_held",
        "_last_error",
        "_limits",
        "_listeners",
        "_liveness",
        "_random",
        "_rejected",
        "_revision",
        "_root",
        "_sink",
        "_snapshot",
        "_start",
        "_subscription",
        "_wanted",
        "_written",
    )

    def __init__(  # noqa: PLR0913 - keyword-only options
        self,
        client: EtcdClient,
        *,
        namespace: str = "default",
        prefix: str = DEFAULT_PREFIX,
        channel: str | None = None,
        snapshot_path: str | os.PathLike[str] | None = None,
        liveness_timeout: float = DEFAULT_LIVENESS,
        random: Callable[[], float] = random.random,
        clock: Clock = SYSTEM_CLOCK,
        limits: DocumentLimits = DEFAULT_LIMITS,
    ) -> None:
        if not 0 < liveness_timeout < math.inf:
            raise ValueError(f"liveness_timeout must be > 0 seconds, got {liveness_timeout!r}")
        self._client = client
        self._liveness = liveness_timeout
        self._limits = limits
        self._root = etcd_prefix(namespace, prefix)
        if channel is not None and name_problem(channel) is not None:
            raise ValueError(f"invalid channel {channel!r}")
        self._channel = channel
        self._snapshot = None if snapshot_path is None else Path(snapshot_path)
        self._random = random
        self._clock = clock
        # Raw documents by key as etcd has them now, and the last good one of each.
        self._documents: dict[str, str] = {}
        self._good: dict[str, object] = {}
        self._rejected: dict[str, int] = {}
        # The decoded document of each key the runtime refused in the namespace
        # as it was (an endpoint another service holds, defaults that break a
        # service), with its revision: judged again with every later change.
        self._held: dict[str, tuple[object, int]] = {}
        self._revision = 0
        # The etcd cluster the documents in force come from (0: not known yet).
        self._cluster_id = 0
        self._connection: Connection = "connecting"
        self._from_snapshot = False
        self._last_error: str | None = None
        self._changed = asyncio.Event()
        self._sink: ConfigSink | None = None
        # No key that is not configuration is kept: listeners keep what they
        # want of theirs, and a key under no listened prefix is passed over.
        self._listeners: list[_Listening] = []
        # What a watched key must start with to be of use: configuration or listened.
        self._wanted: tuple[bytes, ...] = ()
        self._want()
        self._subscription: Subscription | None = None
        # The bootstrap read, until the watch starts from it.
        self._start: RangeResult | None = None
        # The revision that wrote each configuration key of the bootstrap read
        # (empty from a snapshot file), until the runtime has started.
        self._written: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<EtcdSource {self.origin} revision {self._revision} {self._connection}>"

    @property
    def client(self) -> EtcdClient:
        """The etcd client the source reads through (plugins may write with it)."""
        return self._client

    @property
    def root(self) -> str:
        """The namespace's key prefix, ``<prefix><namespace>/``."""
        return self._root

    @property
    def origin(self) -> str:
        """Where documents come from: the etcd endpoints and the namespace's prefix."""
        return f"etcd {','.join(self._client.endpoints)} {self._root}"

    @property
    def status(self) -> EtcdSourceStatus:
        """The source's view of etcd now."""
        return EtcdSourceStatus(
            connection=self._connection,
            applied_revision=self._revision,
            from_snapshot=self._from_snapshot,
            last_error=self._last_error,
            rejected=dict(self._rejected),
        )

    async def wait_until(self, condition: Callable[[EtcdSourceStatus], bool]) -> EtcdSourceStatus:
        """Return the status as soon as ``condition(status)`` holds.

        The condition is checked now and after every change of the status: a
        revision applied, the connection lost or regained.
        """
        while not condition(status := self.status):
            self._changed.clear()
            await self._changed.wait()
        return status

    def listen(self, prefix: str, listener: Listener) -> Callable[[], None]:
        """Follow the keys under ``<namespace root><prefix>`` through the source's own watch.

        For plugins that keep their state in the namespace (fleet health
        records). ``listener(events, revision, replace=True)`` first gets every
        key there (as ``PUT`` events): at once if the source holds its
        bootstrap read, else as soon as the shared watch has read the
        namespace again; then ``replace=False`` with the events of every
        revision that touches them, in order. After a resynchronization
        (compaction, restore) it gets every key there again, with
        ``replace=True``. The source keeps no copy of these keys: what the
        listener needs of them, it keeps. Configuration keys (``defaults``,
        ``services/``, ``channels/``) are not listened to. An exception of the
        listener is logged and does not stop the source.

        Returns:
            A function that removes the listener.

        """
        if self._role(prefix + "x") is not None or prefix.startswith(("services/", "channels/")):
            raise ValueError(f"{prefix!r} holds configuration keys; listen elsewhere")
        entry = _Listening(self._full(prefix), listener)
        self._listeners.append(entry)
        self._want()
        if self._start is not None:
            self._introduce(entry, self._start.kvs, self._start.revision)
        elif self._subscription is not None:
            self._subscription.resync()  # its keys come with the shared watch's next read
        return functools.partial(self._unlisten, entry)

    def _unlisten(self, entry: _Listening) -> None:
        if entry in self._listeners:
            self._listeners.remove(entry)
            self._want()

    def _want(self) -> None:
        """Say what a watched key must start with to be of use: configuration or listened."""
        prefixes = [self._full(DEFAULTS), self._full("services/")]
        if self._channel is not None:
            prefixes.append(self._full(f"channels/{self._channel}/services/"))
        prefixes.extend(entry.under for entry in self._listeners)
        self._wanted = tuple(prefixes)

    # -- the ConfigSource protocol ------------------------------------------------

    async def load(self) -> object:
        """Read every document of the namespace at one revision; return the whole document.

        An undecodable key is left out (and reported). If etcd cannot be reached
        and a snapshot file exists, its state is used. A runtime starts through
        :meth:`load_into` instead, which also leaves out the keys it rejects.

        Raises:
            EtcdError: etcd cannot be reached and there is no snapshot to start from.
            ConfigError: the snapshot file is unreadable.

        """
        await self._read()
        self._good = {}
        parsed = await self._parse(self._documents)
        for key, document in parsed.items():
            decoded = self._decode(key, document, self._revision)
            if decoded is not None:
                self._good[key] = decoded
        if not self._from_snapshot:
            # The bootstrap read is what the runtime applies now: an instance
            # restarted while etcd is away starts from it, changed since or not.
            await self._persist()
        return plain_document(self._assemble(self._good))

    async def load_into(self, sink: ConfigSink) -> None:
        """Read every document of the namespace at one revision and submit them to ``sink``.

        Each key is judged on its own, as when watching: a key whose document
        cannot be decoded, or that the sink's rejection points at, is rejected
        (logged, listed in :attr:`status` ``rejected``) and the others are
        submitted again without it.

        Raises:
            EtcdError: etcd cannot be reached and there is no snapshot to start from.
            ConfigError: the snapshot file is unreadable, or documents exist and
                every one of them was rejected (nothing usable to start with).

        """
        await self._read()
        documents, self._documents, self._good = self._documents, {}, {}
        try:
            error = await self._apply(documents, self._revision, sink, force=True)
        finally:
            self._written = {}
        if error is None and documents and not self._good:
            issues = [
                ConfigIssue("$", f"{self._root}{key} was rejected at revision {revision}")
                for key, revision in sorted(self._rejected.items())
            ]
            error = ConfigError(issues, origin=f"{self.origin}: no valid document to start with")
        if error is not None:
            raise error

    async def _read(self) -> None:
        """Read the namespace (or the snapshot file when etcd is away) into ``_documents``."""
        try:
            result = await self._client.range_all(self._root, prefix=True)
        except EtcdError as error:
            snapshot = await off_loop(self._read_snapshot)
            if snapshot is None:
                raise
            self._unreachable(error)
            self._from_snapshot = True
            self._start = None
            self._revision = snapshot.revision
            self._cluster_id = snapshot.cluster_id
            self._documents = dict(snapshot.documents)
            self._written = {}
            _logger.warning(
                "healkit.etcd_snapshot_used",
                revision=snapshot.revision,
                path=str(self._snapshot),
                reason=str(error),
            )
        else:
            self._connection = "connected"
            self._revision = result.revision
            self._cluster_id = result.cluster_id
            self._documents = self._config_documents(result.kvs)
            self._written = {self._key(kv): kv.mod_revision for kv in result.kvs}
            self._start = result
            for entry in self._listeners:
                self._introduce(entry, result.kvs, result.revision)

    async def watch(self, sink: ConfigSink) -> None:
        """Apply every change of the namespace, revision by revision, until cancelled.

        The changes come through the watch that every source of the process
        with the same connection settings, namespace, ``liveness_timeout`` and clock
        shares (see ``docs/etcd.md``); what is applied, rejected and reported
        is this source's own.
        """
        self._sink = sink
        if self._connection == "unreachable":
            sink.emit(self.status)  # started from the snapshot: say so at once
        start, self._start = self._start, None
        subscription = self._client.follow(
            self._root,
            liveness_timeout=self._liveness,
            random=self._random,
            clock=self._clock,
            start=start,
        )
        del start  # the bootstrap read holds every key: not for as long as the source runs
        self._subscription = subscription
        if not all(entry.ready for entry in self._listeners):
            subscription.resync()
        try:
            while True:
                item = await subscription.next()
                if isinstance(item, Reset):
                    await self._reset(item, sink)
                elif isinstance(item, Change):
                    if item.revision > self._revision:
                        await self._apply_events(item.events, sink)
                elif isinstance(item, Progress):
                    if item.revision > self._revision:
                        # Nothing of ours changed up to there.
                        self._revision = item.revision
                        self._changed.set()
                elif item.error is None:
                    self._connected()
                else:
                    self._unreachable(item.error)
        finally:
            self._subscription = None
            await subscription.aclose()

    # -- following etcd -----------------------------------------------------------------

    async def _reset(self, reset: Reset, sink: ConfigSink) -> None:
        """Take every key at one revision: apply the difference as one document.

        A state older than the revision applied is skipped (this source read a
        newer one itself; the changes after it follow), unless etcd's revision
        went backwards, or this source started from its snapshot file.
        """
        if reset.revision < self._revision and not (reset.replace or self._from_snapshot):
            if self._subscription is not None and not all(e.ready for e in self._listeners):
                self._subscription.resync()  # a listener waits for a state not older
            return
        # The revisions of another history (a restore, another cluster) tell
        # nothing of when the keys were created: every key is judged again.
        other = reset.replace or (self._from_snapshot and self._cluster_id != reset.cluster_id)
        self._check_cluster(reset.cluster_id)
        for entry in list(self._listeners):
            self._introduce(entry, reset.kvs, reset.revision)
        now = self._config_documents(reset.kvs)
        changed: dict[str, str | None] = {key: None for key in self._documents if key not in now}
        created = {
            self._key(kv) for kv in reset.kvs if other or kv.create_revision > self._revision
        }
        for key in created.intersection(self._documents) if not other else ():
            # Deleted and created again meanwhile: as a watching instance saw
            # the delete, the document of the key before is gone.
            self._good.pop(key, None)
            self._held.pop(key, None)
        changed.update(
            (key, text)
            for key, text in now.items()
            if key in created or self._documents.get(key) != text
        )
        # The keys in the order of their creation now (see _assemble).
        self._documents = {key: self._documents.get(key, text) for key, text in now.items()}
        await self._apply(changed, reset.revision, sink)
        # Only now is what etcd holds in force (applying may await a worker thread).
        self._from_snapshot = False

    async def _apply_events(self, events: Sequence[WatchEvent], sink: ConfigSink) -> None:
        """Apply one revision: configuration as one document, other keys to the listeners.

        A key that is neither configuration nor listened to is passed over on
        its first bytes: nothing of it is decoded or kept.
        """
        revision = max(event.kv.mod_revision for event in events)
        changed: dict[str, str | None] = {}
        others: list[WatchEvent] = []
        wanted = self._wanted
        for event in events:
            if not event.kv.key.startswith(wanted):
                continue
            key = self._key(event.kv)
            if self._role(key) is not None:
                changed[key] = None if event.type == "DELETE" else _text(event.kv)
            else:
                others.append(event)
        self._dispatch(others, revision)
        # Keys created together are kept in key order, as a bootstrap read orders them.
        await self._apply(dict(sorted(changed.items())), revision, sink)

    # -- listeners -----------------------------------------------------------------------

    def _introduce(self, entry: _Listening, kvs: Sequence[KeyValue], revision: int) -> None:
        """Give the listener of ``entry`` every key under its prefix in ``kvs``, at ``revision``."""
        entry.ready = True
        under = entry.under
        current = [WatchEvent(type="PUT", kv=kv) for kv in kvs if kv.key.startswith(under)]
        self._notify(entry.listener, current, revision, replace=True)

    def _dispatch(self, events: Sequence[WatchEvent], revision: int) -> None:
        if not events:
            return
        for entry in list(self._listeners):
            if entry.ready:
                mine = [e for e in events if e.kv.key.startswith(entry.under)]
                if mine:
                    self._notify(entry.listener, mine, revision, replace=False)

    def _notify(
        self, listener: Listener, events: Sequence[WatchEvent], revision: int, *, replace: bool
    ) -> None:
        try:
            listener(events, revision, replace=replace)
        except Exception as error:  # noqa: BLE001 - a listener's bug must not stop the source
            _logger.error(  # noqa: TRY400 - the reason is enough; no traceback in the log
                "healkit.etcd_listener_failed",
                listener=getattr(listener, "__qualname__", repr(listener)),
                error=type(error).__name__,
                reason=str(error),
            )

    async def _apply(
        self,
        changed: Mapping[str, str | None],
        revision: int,
        sink: ConfigSink,
        *,
        force: bool = False,
    ) -> ConfigError | None:
        """Submit the document with ``changed`` keys (``None``: deleted) as of ``revision``.

        A key whose new document cannot be decoded, or that the runtime's
        rejection points at, is rejected and keeps its last good document; the
        others move on. ``force`` submits even an unchanged document (at start).

        Returns:
            The runtime's error if it refused even the last good documents.

        """
        error: ConfigError | None = None
        if changed or force:
            parsed = await self._parse(changed)
            good, refused = self._stage(changed, parsed, revision)
            retried = self._retry(good, changed)
            error = await self._settle(
                good, refused, changed, revision, sink, retried=retried, force=force
            )
            self._good = good
            for key in (changed.keys() | retried) - refused:
                self._rejected.pop(key, None)
                self._held.pop(key, None)
        self._revision = revision
        await self._persist()
        self._changed.set()
        return error

    async def _settle(  # noqa: PLR0913 - one revision's whole state
        self,
        good: dict[str, object],
        refused: set[str],
        changed: Mapping[str, str | None],
        revision: int,
        sink: ConfigSink,
        *,
        retried: set[str],
        force: bool,
    ) -> ConfigError | None:
        """Submit ``good`` until the runtime takes it, rejecting the keys it blames.

        The document is submitted only if it differs (value and type) from the
        last good one. It holds the ``retried`` documents (held, see
        :meth:`_hold`) with this revision's changes: one swap when they fit.
        On a refusal, the retried keys are rejected again if the issues point
        at them alone; else they are set aside, this revision's changes are
        judged without them, and then they are, on their own: a held document
        never costs a change its place. The changed keys the issues point at
        are rejected; if they point at none, the services in force that name
        an endpoint of an older key are (:meth:`_evict`), else every changed
        key still pending: the document was valid before this revision, so
        its changes made it invalid. Each round rejects or sets aside at
        least one key, so this ends.
        """
        origin = f"{self.origin} revision {revision}"
        pending = (set(changed) - refused) | retried
        aside: set[str] = set()  # held documents set aside until the changes are judged
        set_aside = False
        in_force = self._good
        start = force
        while True:
            error = None  # an unchanged document is taken as it is
            if force or not same_document(good, in_force):
                force = False
                error = await sink.submit(self._assemble(good), origin=origin)
            if error is None:
                if not aside:
                    return None
                in_force = dict(good)  # this revision's changes; now the documents set aside
                pending = self._bring_back(aside, good)
                continue
            if not pending:
                refused |= aside
                return error  # the last good documents themselves are refused
            located = self._locate(good, error)
            pointed = pending & located.keys()
            if not set_aside and pending & retried and not (pointed and pointed <= retried):
                # Judge this revision's changes without the held documents first.
                set_aside = True
                aside = pending & retried
                pending -= aside
                self._restore_all(aside, good)
                continue
            evicted = set() if pointed else self._evict(good, pending, located, revision, error)
            if evicted:
                refused |= evicted
                continue
            blamed = pointed or set(pending)
            if (
                start
                and self._defaults_came_later(blamed, pending)
                and await self._without_defaults(good, revision, error, sink)
            ):
                refused.add(DEFAULTS)
                return None
            for key in blamed:
                again = key not in pointed or self._endpoint_held(key, good[key], located[key])
                self._hold(key, good, revision, error, again=again)
            self._restore_all(blamed, good)
            refused |= blamed
            pending -= blamed

    async def _without_defaults(
        self, good: dict[str, object], revision: int, error: ConfigError, sink: ConfigSink
    ) -> bool:
        """Submit ``good`` without the defaults; if taken, reject (and hold) them.

        At start: a running instance applied the services ``error`` blames,
        then rejected the defaults that break them; an instance that starts
        now does too.
        """
        trial = {key: value for key, value in good.items() if key != DEFAULTS}
        origin = f"{self.origin} revision {revision}"
        if await sink.submit(self._assemble(trial), origin=origin) is not None:
            return False
        self._hold(DEFAULTS, good, revision, error, again=True)
        good.pop(DEFAULTS)
        return True

    def _bring_back(self, aside: set[str], good: dict[str, object]) -> set[str]:
        """Put the held documents ``aside`` back into ``good``; return them, emptying ``aside``."""
        for key in aside:
            good[key] = self._held[key][0]
        back = set(aside)
        aside.clear()
        return back

    def _evict(
        self,
        good: dict[str, object],
        pending: set[str],
        located: Mapping[str, Sequence[ConfigIssue]],
        revision: int,
        error: ConfigError,
    ) -> set[str]:
        """Refuse the applied services that name an endpoint of a service whose key is older.

        A pending document (a key older than theirs, written again to name
        that endpoint) takes it from them, as an instance that starts now
        judges: the key created first owns an endpoint. They are refused
        whole (their document in force names it too) and judged again later.
        Return them.
        """
        evicted = [
            key
            for key, issues in located.items()
            if key not in pending
            and issues[0].path.endswith(".endpoints")  # most are not: spared the rest
            and self._endpoint_held(key, good[key], issues)
        ]
        for key in evicted:
            self._hold(key, good, revision, error, again=True)
            good.pop(key)
        return set(evicted)

    def _defaults_came_later(self, blamed: set[str], pending: set[str]) -> bool:
        """Whether the start's ``blamed`` keys were all written before the defaults.

        Only the bootstrap read knows when each key was written (``_written``).
        """
        written = self._written.get(DEFAULTS)
        return (
            written is not None
            and DEFAULTS in pending
            and DEFAULTS not in blamed
            and all(self._written.get(key, written) < written for key in blamed)
        )

    def _hold(
        self,
        key: str,
        good: Mapping[str, object],
        revision: int,
        error: ConfigError,
        *,
        again: bool,
    ) -> None:
        """Reject the document of ``key`` in ``good``; with ``again``, judge it again later.

        ``again``: the runtime refused it because of other documents (an
        endpoint another service holds, defaults that break it once merged);
        a change of those (the service holding the endpoint deleted, the
        defaults changed) can make it valid without it being written again,
        as an instance that starts then finds it. A document invalid on its
        own is not judged again until it is written again.
        """
        held = self._held.pop(key, None)
        if held is not None and held[0] is good[key]:
            revision = held[1]  # retried: it keeps the revision that wrote it
        if again:
            self._held[key] = (good[key], revision)
        self._reject(key, revision, error)

    def _endpoint_held(self, key: str, document: object, issues: Sequence[ConfigIssue]) -> bool:
        """Whether the ``issues`` in the document of ``key`` are all at its list of endpoints.

        That is where the runtime says that an endpoint of the list belongs to
        another service (each endpoint's own problems lie at its index).
        """
        role = self._role(key)
        if role is None or role[0] == "defaults":
            return False
        path = join_path(join_path("$.services", role[1]), "endpoints")
        if not all(issue.path == path for issue in issues):
            return False
        opened_document = opened(document)
        return isinstance(opened_document, dict) and isinstance(
            opened_document.get("endpoints"), list
        )

    def _retry(self, good: dict[str, object], changed: Mapping[str, str | None]) -> set[str]:
        """Put the held documents of keys not in ``changed`` into ``good``; return their keys."""
        retried = {key for key in self._held if key not in changed}
        for key in retried:
            good[key] = self._held[key][0]
        return retried

    def _stage(
        self, changed: Mapping[str, str | None], parsed: Mapping[str, object], revision: int
    ) -> tuple[dict[str, object], set[str]]:
        """Return the good documents with ``changed`` applied, and the keys refused.

        ``parsed`` holds the decoded document of each key ``changed`` to a text.
        """
        good = dict(self._good)
        refused: set[str] = set()
        for key, text in changed.items():
            self._held.pop(key, None)  # judged again now, as written
            if text is None:
                self._documents.pop(key, None)
                good.pop(key, None)
                continue
            self._documents[key] = text
            decoded = self._decode(key, parsed[key], revision)
            if decoded is None:
                refused.add(key)
                self._restore(key, good)
            else:
                good[key] = decoded
        return good, refused

    def _restore_all(self, keys: Iterable[str], good: dict[str, object]) -> None:
        """Put back the last good document of each of ``keys`` in ``good`` (or none)."""
        for key in keys:
            self._restore(key, good)

    def _restore(self, key: str, good: dict[str, object]) -> None:
        """Put back the last good document of ``key`` in ``good`` (or none)."""
        if key in self._good:
            good[key] = self._good[key]
        else:
            good.pop(key, None)

    # -- documents ----------------------------------------------------------------------

    def _key(self, kv: KeyValue) -> str:
        return kv.key.decode("utf-8", "replace")[len(self._root) :]

    def _full(self, key: str) -> bytes:
        return (self._root + key).encode()

    def _config_documents(self, kvs: Sequence[KeyValue]) -> dict[str, str]:
        """Return the configuration keys among ``kvs`` (relative to the root) and their text.

        In :func:`creation_order`, the order in which a watching instance
        keeps them (see :meth:`_assemble`).
        """
        ordered = sorted(kvs, key=creation_order)
        documents = {self._key(kv): _text(kv) for kv in ordered}
        return {key: text for key, text in documents.items() if self._role(key) is not None}

    async def _parse(self, texts: Mapping[str, str | None]) -> dict[str, object]:
        """Decode the documents of ``texts`` (``None``: deleted, skipped) in a worker thread.

        Returns:
            Each key's decoded document, or the :class:`ConfigError` that refused it.

        """
        return await off_loop(functools.partial(self._parse_all, dict(texts)))

    def _parse_all(self, texts: Mapping[str, str | None]) -> dict[str, object]:
        """Decode each document of ``texts`` (in a worker thread: no state of the source).

        A plain document is returned :func:`~healkit._config.compact.encoded`.
        """
        parsed: dict[str, object] = {}
        for key, text in texts.items():
            if text is None:
                continue
            misnamed = name_issues(key)
            if misnamed:
                parsed[key] = ConfigError(misnamed, origin=self._root + key)
                continue
            fmt = stored_format(text)
            try:
                # The bytes as etcd holds them: a value that is not UTF-8 is refused.
                data = text.encode("utf-8", "surrogateescape")
                document = parse_document(
                    data, fmt=fmt, origin=self._root + key, limits=self._limits
                )
            except ConfigError as error:
                parsed[key] = error
            else:
                parsed[key] = encoded(document)  # its tree dropped at once, never kept
        return parsed

    def _decode(self, key: str, parsed: object, revision: int) -> object | None:
        """Return one key's decoded document, or report why it has none and return ``None``."""
        if isinstance(parsed, ConfigError):
            self._reject(key, revision, parsed)
            return None
        return parsed

    def _role(self, key: str) -> tuple[Literal["defaults", "service", "overlay"], str] | None:
        """Return what ``key`` is to this source (``None``: not its configuration)."""
        kind, service, channel = key_role(key)
        if kind == "other" or (kind == "overlay" and channel != self._channel):
            return None
        return kind, service

    def _assemble(self, good: Mapping[str, object]) -> dict[str, object]:
        """Build the whole document from the good document of each key (compact, as kept).

        Services come in the order of ``_documents``: the order their keys
        were created (a key created again comes last), which decides which of
        two services naming one endpoint keeps it, at start and when watching.
        """
        services: dict[str, object] = {}
        overlays: dict[str, object] = {}
        document: dict[str, object] = {"services": services}
        for key in self._documents:
            value = good.get(key, _ABSENT)
            role = self._role(key)
            if value is _ABSENT or role is None:
                continue
            kind, name = role
            if kind == "defaults":
                document["defaults"] = value
            elif kind == "service":
                services[name] = value
            else:
                overlays[name] = value
        for name, overlay in overlays.items():
            base, top = opened(services.get(name, {})), opened(overlay)
            if isinstance(base, dict) and isinstance(top, dict):
                services[name] = encoded({**base, **top})
        return document

    def _locate(
        self, good: Mapping[str, object], error: ConfigError
    ) -> dict[str, list[ConfigIssue]]:
        """Return the issues of ``error`` that lie in the document of each key of ``good``.

        Each issue is read for the key of the document it lies in
        (:func:`_service_of`): a refusal of a namespace of many services with
        an issue in each costs no more than its issues.
        """
        located: dict[str, list[ConfigIssue]] = {}
        for issue in error.issues:
            name = _service_of(issue.path)
            if name is None:
                keys = [DEFAULTS] if issue.path.startswith(_DEFAULTS_PATHS) else []
            else:
                keys = [f"services/{name}"]
                if self._channel is not None:
                    keys.append(f"channels/{self._channel}/services/{name}")
            for key in keys:
                if key in good:
                    located.setdefault(key, []).append(issue)
        return located

    def _document_path(self, key: str) -> str | None:
        """Return the path of the document of ``key`` in the whole document (``None``: none)."""
        role = self._role(key)
        if role is None:
            return None
        kind, name = role
        return "$.defaults" if kind == "defaults" else join_path("$.services", name)

    def _in_document(self, key: str, issue: ConfigIssue) -> bool:
        path = self._document_path(key)
        return path is not None and (
            issue.path == path or issue.path.startswith((f"{path}.", f"{path}["))
        )

    def _reject(self, key: str, revision: int, error: ConfigError) -> None:
        """Log the issues of ``error`` that lie in the document of ``key``.

        If none does (the key's change made another document invalid, such as a
        service merged with new defaults), every issue is logged with the key.
        A document rejected again at the same revision (judged again after
        another key's change) is not logged again. At most
        :data:`LOGGED_ISSUES` issues are logged, then how many more there are.
        """
        if self._rejected.get(key) == revision:
            return
        self._rejected[key] = revision
        role = self._role(key)
        mine = [
            issue
            for issue in error.issues
            if role is None or issue.path == "$" or self._in_document(key, issue)
        ]
        issues = mine or error.issues
        for issue in issues[:LOGGED_ISSUES]:
            _logger.error(
                "healkit.etcd_document_rejected",
                key=self._root + key,
                revision=revision,
                path=issue.path,
                reason=issue.reason,
            )
        if len(issues) > LOGGED_ISSUES:
            # Defaults that break every service of a large namespace: one line
            # per service would flood the log and stall the event loop.
            _logger.error(
                "healkit.etcd_document_rejected",
                key=self._root + key,
                revision=revision,
                path="$",
                reason=f"and {len(issues) - LOGGED_ISSUES} more issues (not logged)",
            )

    # -- connection state ------------------------------------------------------------

    def _connected(self) -> None:
        was = self._connection
        self._connection = "connected"
        self._changed.set()
        if was == "unreachable":
            _logger.info("healkit.etcd_reconnected", applied_revision=self._revision)
            self._publish()

    def _unreachable(self, error: EtcdError) -> None:
        was = self._connection
        self._connection = "unreachable"
        self._last_error = str(error)
        self._changed.set()
        if was != "unreachable":
            _logger.warning(
                "healkit.etcd_unreachable",
                applied_revision=self._revision,
                reason=str(error),
            )
            self._publish()

    def _publish(self) -> None:
        """Hand the status to ``healkit_event`` (metrics count outages from it)."""
        if self._sink is not None:
            self._sink.emit(self.status)

    # -- the snapshot file ---------------------------------------------------------------

    async def _persist(self) -> None:
        """Write the snapshot file, in a worker thread.

        Encoding every document of the namespace and the ``fsync`` grow with
        the namespace and the disk's mood: they must not stall the event loop
        on each revision applied.
        """
        path = self._snapshot
        if path is None:
            return
        write = functools.partial(
            _write_snapshot,
            path,
            self._root,
            self._cluster_id,
            self._revision,
            dict(self._documents),  # the loop may change the source's own after
        )
        # Finished even if the source is cancelled meanwhile (off_loop would
        # abandon it): a runtime that stops waits for the state it applied to
        # be on disk, as when the file was written on the loop; then the
        # cancellation goes on.
        writing = asyncio.ensure_future(asyncio.to_thread(write))
        try:
            await asyncio.shield(writing)
        except asyncio.CancelledError:
            await writing
            raise

    def _read_snapshot(self) -> _Snapshot | None:
        path = self._snapshot
        if path is None:
            return None
        snapshot = _load_snapshot(path)
        if snapshot is None:
            return None
        if snapshot.version != SNAPSHOT_VERSION:
            issue = ConfigIssue("$", f"unknown snapshot version {snapshot.version}")
            raise ConfigError([issue], origin=str(path))
        if snapshot.root != self._root:
            reason = (
                f"the snapshot holds the documents of {snapshot.root}, not of {self._root}:"
                " refusing to start with another namespace's configuration"
                " (give each namespace its own snapshot_path)"
            )
            raise ConfigError([ConfigIssue("$.root", reason)], origin=str(path))
        return snapshot

    def _check_cluster(self, cluster_id: int) -> None:
        """Refuse the snapshot's state as a base when etcd is another cluster than its own.

        The revisions of one cluster mean nothing in another (a restore from a
        backup makes a new cluster too): the state etcd holds replaces the
        snapshot's whole, which the caller does; this says so.
        """
        if self._from_snapshot and self._cluster_id and cluster_id != self._cluster_id:
            _logger.warning(
                "healkit.etcd_snapshot_refused",
                path=str(self._snapshot),
                snapshot_cluster=f"{self._cluster_id:x}",
                etcd_cluster=f"{cluster_id:x}",
                reason="the snapshot was written from another etcd cluster",
            )
        self._cluster_id = cluster_id


_ABSENT: Final = object()
_SERVICES: Final = "$.services."
_QUOTED_SERVICES: Final = '$.services["'
_DEFAULTS_PATHS: Final = ("$.defaults.", "$.defaults[")


def _service_of(path: str) -> str | None:
    """Return the service whose document an issue's ``path`` is in (``None``: none).

    The inverse of :func:`~healkit._config.validate.join_path` for
    ``$.services``: a name is quoted (``$.services["a.b"]``) unless it is an
    identifier, which holds no ``.`` nor ``[``; a valid name needs no escape.
    """
    if path.startswith(_SERVICES):
        start = len(_SERVICES)
        ends = [end for end in (path.find(".", start), path.find("[", start)) if end >= 0]
        return path[start : min(ends, default=len(path))]
    if path.startswith(_QUOTED_SERVICES):
        end = path.find('"]', len(_QUOTED_SERVICES))
        return path[len(_QUOTED_SERVICES) : end] if end >= 0 else None
    return None


def _text(kv: KeyValue) -> str:
    """Return the value of ``kv`` as text; bytes that are not UTF-8 stay, escaped, to be refused."""
    return kv.value.decode("utf-8", "surrogateescape")


def _write_snapshot(
    path: Path, root: str, cluster_id: int, revision: int, documents: Mapping[str, str]
) -> None:
    """Write the snapshot file atomically (a temporary file, fsync, rename); log a failure."""
    snapshot = _Snapshot(
        version=SNAPSHOT_VERSION,
        root=root,
        cluster_id=cluster_id,
        revision=revision,
        documents={k: v for k, v in documents.items() if _storable(v)},
    )
    data = msgspec.json.encode(snapshot)
    if len(data) > SNAPSHOT_MAX_BYTES:  # it would be refused at a start
        _logger.error(
            "healkit.etcd_snapshot_failed",
            path=str(path),
            reason=f"the snapshot would be {len(data):,} bytes, over {SNAPSHOT_MAX_BYTES:,}",
        )
        return
    handle: int | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        Path(temporary).replace(path)
    except OSError as error:
        if handle is not None:
            with contextlib.suppress(OSError):
                Path(temporary).unlink()
        _logger.error(  # noqa: TRY400 - the reason is enough; no traceback in the log
            "healkit.etcd_snapshot_failed", path=str(path), reason=str(error)
        )


def _load_snapshot(path: Path) -> _Snapshot | None:
    """Read and decode the snapshot file, or ``None`` if there is none.

    Whatever can write the file can put anything there: it must be a regular
    file (a FIFO would block the start, a link to ``/dev/zero`` never end),
    at most :data:`SNAPSHOT_MAX_BYTES` long, and well-formed JSON of the
    snapshot's shape in which no object repeats a key.

    Raises:
        ConfigError: the file cannot be read or is refused; the reason says why.

    """
    try:
        data = _snapshot_bytes(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        _refuse_snapshot(path, "$", f"cannot read the etcd snapshot: {reason}")
    try:
        snapshot = msgspec.json.decode(data, type=_Snapshot)
    except msgspec.DecodeError as error:
        _refuse_snapshot(path, "$", f"cannot read the etcd snapshot: {error}")
    # msgspec keeps the last value of a repeated key: one of two roots, revisions
    # or documents of a key would win unseen. The shape is checked: the standard
    # library's decoder, which keeps every key, meets nothing it cannot read.
    outline = json.loads(data, object_pairs_hook=_Pairs)
    repeated = _repeated(outline, "$")
    for key, value in outline:
        if repeated is None and key == "documents" and isinstance(value, _Pairs):
            repeated = _repeated(value, join_path("$", key))
    if repeated is not None:
        where, key = repeated
        _refuse_snapshot(
            path,
            where,
            f"the etcd snapshot repeats the key {key!r} (only one of its values can be meant:"
            " the file was altered)",
        )
    return snapshot


def _snapshot_bytes(path: Path) -> bytes:
    """Read the snapshot file's bytes, refusing what is not a regular file of a bounded size.

    Opened without blocking (a FIFO would wait for a writer), then judged by
    what was opened, not by its name (a link may point anywhere); never more
    than :data:`SNAPSHOT_MAX_BYTES` + 1 bytes read (a file may grow meanwhile).
    """
    handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(handle, "rb") as file:
        status = os.fstat(handle)
        if not stat.S_ISREG(status.st_mode):
            _refuse_snapshot(path, "$", "the etcd snapshot is not a regular file")
        data = b"" if status.st_size > SNAPSHOT_MAX_BYTES else file.read(SNAPSHOT_MAX_BYTES + 1)
        if status.st_size > SNAPSHOT_MAX_BYTES or len(data) > SNAPSHOT_MAX_BYTES:
            size = max(status.st_size, len(data))
            _refuse_snapshot(
                path, "$", f"the etcd snapshot is {size:,} bytes, over {SNAPSHOT_MAX_BYTES:,}"
            )
        return data


def _refuse_snapshot(path: Path, where: str, reason: str) -> NoReturn:
    raise ConfigError([ConfigIssue(where, reason)], origin=str(path))


class _Pairs(list[tuple[str, object]]):
    """A JSON object as the standard library decodes it with every key kept, in order."""


def _repeated(pairs: _Pairs, path: str) -> tuple[str, str] | None:
    """Return the path and the name of the first key ``pairs`` repeats, if any."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return join_path(path, key), key
        seen.add(key)
    return None


def _storable(text: str) -> bool:
    """Whether ``text`` can be written to the snapshot file (it was valid UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
