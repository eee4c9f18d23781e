"""The etcd client: etcd's KV, transaction, lease and status calls over the gateway.

healkit speaks to etcd itself, through the gRPC JSON gateway that every etcd
3.4 and 3.5 member serves on its client port (``POST /v3/kv/range`` and
friends), with aiohttp. No gRPC stack is needed and TLS is aiohttp's. The
interface is deliberately narrow::

    async with EtcdClient(["http://127.0.0.1:2379"]) as etcd:
        await etcd.put("/healkit/prod/defaults", b"{}")
        snapshot = await etcd.range_all("/healkit/prod/", prefix=True)
        async with etcd.watch(
            "/healkit/prod/", prefix=True, start_revision=snapshot.revision + 1
        ) as watch:
            async for response in watch:
                ...  # apply response.events as a whole

What the gateway sends is validated: int64 values arrive as JSON strings, keys
and values as base64, and any reply of another shape is an
:class:`~healkit.EtcdProtocolError`. Errors are typed (see
:mod:`healkit._errors`): :class:`~healkit.EtcdUnavailableError` when no endpoint can
serve, :class:`~healkit.EtcdAuthError`, :class:`~healkit.EtcdCompactedError`,
:class:`~healkit.EtcdRequestError` for any other error reply (with its gRPC
code). Passwords and tokens never appear in messages or logs.

Each method builds its request and reads its result; the session, endpoint
failover, authentication and decoding are the :class:`~healkit.etcd._gateway.Gateway`'s.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Self, final

from healkit._clock import SYSTEM_CLOCK, Clock
from healkit._errors import EtcdProtocolError, EtcdRequestError
from healkit.etcd._feed import Subscription, subscribe
from healkit.etcd._gateway import DEFAULT_MAX_MESSAGE, Gateway, Settings, settings, stream_error
from healkit.etcd._lease import LeaseKeeper
from healkit.etcd._messages import (
    DELETE_REPLY,
    EMPTY_REPLY,
    KEEPALIVE_MESSAGE,
    LEASE_REPLY,
    PUT_REPLY,
    RANGE_REPLY,
    STATUS_REPLY,
    TXN_REPLY,
    Compare,
    DeleteOp,
    DeleteResult,
    EtcdStatus,
    Key,
    KeyValue,
    Lease,
    PutOp,
    PutResult,
    RangeOp,
    RangeResult,
    TxnResult,
    key_range,
    put_body,
    range_body,
    to_bytes,
    txn_body,
)
from healkit.etcd._watch import EtcdWatch

__all__ = ["EtcdClient"]

# -- the client -------------------------------------------------------------------


@final
class EtcdClient:
    """An async etcd v3 client speaking etcd's JSON gateway.

    Use it as an async context manager (or call :meth:`close`). All methods are
    coroutines except :meth:`watch` and :meth:`lease`, which return async
    context managers. Keys and values are bytes, or str encoded as UTF-8.

    Args:
        endpoints: one or more etcd client URLs (``http://127.0.0.1:2379``,
            ``https://etcd-0:2379``); ``HOST:PORT`` is taken as http, or as
            https when TLS files are given. Tried in order; the one that last
            answered is tried first.
        username: with ``password``, authenticate: the token etcd returns is
            sent with every request and renewed once when etcd rejects it.
        password: the user's password; it is sent only to
            ``/v3/auth/authenticate`` and never logged.
        ca_file: PEM bundle of the CAs that signed the etcd server certificates
            (default: the system's trust store).
        cert_file: PEM client certificate (chain) for etcd's
            ``--client-cert-auth``; ``key_file`` is its private key, unless the
            certificate file holds it too.
        key_file: see ``cert_file``.
        ssl_context: a ready :class:`ssl.SSLContext` instead of the TLS files.
        timeout: seconds a request (not a watch) may take as a whole, per endpoint.
        connect_timeout: seconds to connect to one endpoint; for a watch, also
            the longest the endpoint may take to start answering before the
            next endpoint is tried.
        max_message_bytes: the largest reply or watch message accepted.

    """

    __slots__ = ("_gateway",)

    def __init__(  # noqa: PLR0913 - keyword-only connection options
        self,
        endpoints: str | Sequence[str],
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        self._gateway = Gateway(
            settings(
                endpoints,
                username=username,
                password=password,
                ca_file=ca_file,
                cert_file=cert_file,
                key_file=key_file,
                ssl_context=ssl_context,
                timeout=timeout,
                connect_timeout=connect_timeout,
                max_message_bytes=max_message_bytes,
            )
        )

    def __repr__(self) -> str:
        """Show the endpoints and the user, never the password."""
        options = self._gateway.settings
        user = f" user={options.username!r}" if options.username else ""
        return f"<EtcdClient {', '.join(options.endpoints)}{user}>"

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoints' base URLs, in the order given."""
        return self._gateway.settings.endpoints

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Return the client (connections are opened on first use)."""
        self._gateway.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client."""
        await self.close()

    async def close(self) -> None:
        """Close every connection, open watches included. The client cannot be reused."""
        await self._gateway.close()

    # -- key-value -----------------------------------------------------------------

    async def get(self, key: Key, *, revision: int = 0) -> KeyValue | None:
        """Return ``key`` (at ``revision``; 0: the latest), or ``None`` if absent."""
        result = await self.range(key, revision=revision)
        return result.kvs[0] if result.kvs else None

    async def range(  # noqa: PLR0913 - keyword-only options of etcd's RangeRequest
        self,
        key: Key,
        *,
        prefix: bool = False,
        range_end: Key | None = None,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        serializable: bool = False,
        min_mod_revision: int = 0,
    ) -> RangeResult:
        """Read one key, a prefix (``prefix=True``) or ``[key, range_end)``.

        Args:
            key: the key, or the prefix / start of the range.
            prefix: read every key that starts with ``key`` (``""``: every key).
            range_end: read every key in ``[key, range_end)``.
            revision: read the store as it was at this revision (0: latest).
            limit: return at most this many keys (0: all); ``more`` says if
                there are more. :meth:`range_all` pages through for you.
            keys_only: leave the values out.
            count_only: return only ``count``.
            serializable: let the member answer from its local state
                without a quorum read (faster, maybe stale).
            min_mod_revision: return only the keys last modified at or after
                this revision (0: all); ``count`` still counts every key.

        Raises:
            EtcdCompactedError: ``revision`` is older than the compacted history.
            EtcdRequestError: e.g. ``revision`` is in the future (code 11).

        """
        start, end = key_range(key, prefix=prefix, range_end=range_end)
        body = range_body(start, end)
        options = {
            "revision": revision,
            "limit": limit,
            "keys_only": keys_only,
            "count_only": count_only,
            "serializable": serializable,
            "min_mod_revision": min_mod_revision,
        }
        body.update({name: value for name, value in options.items() if value})
        reply, _ = await self._gateway.call("/v3/kv/range", body, RANGE_REPLY, idempotent=True)
        return reply.result()

    async def range_all(
        self,
        key: Key,
        *,
        prefix: bool = False,
        range_end: Key | None = None,
        revision: int = 0,
        page_size: int = 1000,
    ) -> RangeResult:
        """Read a whole range in pages of ``page_size`` keys, all at one revision.

        The first page fixes the revision (unless ``revision`` is given), every
        further page is read at that same revision, continuing after the last
        key of the page before. The result holds every key, with ``revision``
        the revision read at: watch from ``revision + 1`` to follow changes.

        Raises:
            EtcdCompactedError: the revision was compacted while paging; read again.

        """
        if page_size <= 0:
            raise ValueError("page_size must be > 0")
        start, end = key_range(key, prefix=prefix, range_end=range_end)
        kvs: list[KeyValue] = []
        page = await self.range(start, range_end=end, revision=revision, limit=page_size)
        # The header carries the store's current revision; a read pinned to an
        # older one keeps that one.
        at, count = (revision or page.revision), page.count
        kvs.extend(page.kvs)
        while page.more and page.kvs:
            following = page.kvs[-1].key + b"\x00"
            page = await self.range(following, range_end=end, revision=at, limit=page_size)
            kvs.extend(page.kvs)
        return RangeResult(
            kvs=tuple(kvs), revision=at, count=count, more=False, cluster_id=page.cluster_id
        )

    async def put(
        self, key: Key, value: Key, *, lease: int = 0, prev_kv: bool = False
    ) -> PutResult:
        """Write ``value`` at ``key``, attached to ``lease`` if given.

        With ``prev_kv=True`` the result carries the key as it was before.
        """
        raw = to_bytes(key, "key")
        if not raw:
            raise ValueError("the key must not be empty")
        body = put_body(raw, to_bytes(value, "value"), lease, prev_kv=prev_kv)
        reply, _ = await self._gateway.call("/v3/kv/put", body, PUT_REPLY, idempotent=False)
        return reply.result()

    async def delete(
        self,
        key: Key,
        *,
        prefix: bool = False,
        range_end: Key | None = None,
        prev_kv: bool = False,
    ) -> DeleteResult:
        """Delete one key, a prefix (``prefix=True``) or ``[key, range_end)``."""
        start, end = key_range(key, prefix=prefix, range_end=range_end)
        body = range_body(start, end, prev_kv=prev_kv)
        reply, _ = await self._gateway.call(
            "/v3/kv/deleterange", body, DELETE_REPLY, idempotent=False
        )
        return reply.result()

    async def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[PutOp | DeleteOp | RangeOp] = (),
        failure: Iterable[PutOp | DeleteOp | RangeOp] = (),
    ) -> TxnResult:
        """Run ``success`` if every comparison holds, else ``failure``, atomically.

        A safe push guards a write with the revision it was based on::

            result = await etcd.txn(
                [Compare.mod_revision(key, "==", seen.mod_revision)],
                [PutOp(key=key, value=document)],
            )
            if not result.succeeded: ...  # someone else wrote first
        """
        compares, then, otherwise = list(compare), list(success), list(failure)
        body = txn_body(compares, then, otherwise)
        read_only = all(isinstance(item, RangeOp) for item in [*then, *otherwise])
        path = "/v3/kv/txn"
        reply, endpoint = await self._gateway.call(path, body, TXN_REPLY, idempotent=read_only)
        try:
            responses = tuple(item.result() for item in reply.responses)
        except ValueError as exc:
            raise EtcdProtocolError(
                f"invalid reply from etcd at {endpoint} to {path}: {exc}", endpoint=endpoint
            ) from exc
        return TxnResult(
            succeeded=reply.succeeded, revision=reply.header.revision, responses=responses
        )

    async def compact(self, revision: int, *, physical: bool = True) -> int:
        """Discard the history before ``revision``; return the store's revision.

        With ``physical=True`` (the default) etcd returns once the old
        revisions are really gone.

        Raises:
            EtcdCompactedError: the history is already compacted at or after ``revision``.
            EtcdRequestError: ``revision`` is in the future.

        """
        body: dict[str, object] = {"revision": revision, "physical": physical}
        reply, _ = await self._gateway.call(
            "/v3/kv/compaction", body, EMPTY_REPLY, idempotent=False
        )
        return reply.header.revision

    # -- leases --------------------------------------------------------------------

    async def lease_grant(self, ttl: int, *, lease_id: int = 0) -> Lease:
        """Grant a lease of ``ttl`` seconds (``lease_id`` 0: etcd picks the ID)."""
        if ttl <= 0:
            raise ValueError("ttl must be > 0 seconds")
        body = {"TTL": ttl, "ID": lease_id}
        path = "/v3/lease/grant"
        reply, endpoint = await self._gateway.call(path, body, LEASE_REPLY, idempotent=False)
        if reply.error:
            raise EtcdRequestError(
                f"etcd at {endpoint} refused to grant a lease: {reply.error}",
                code=None,
                reason=reply.error,
                endpoint=endpoint,
            )
        if reply.lease_id <= 0 or reply.ttl <= 0:
            raise EtcdProtocolError(
                f"invalid reply from etcd at {endpoint} to {path}: no lease ID or TTL",
                endpoint=endpoint,
            )
        return Lease(id=reply.lease_id, ttl=reply.ttl)

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh the lease once; return its new TTL in seconds, 0 if it no longer exists."""
        # A streaming RPC: one request, one reply, and errors inside the stream.
        path = "/v3/lease/keepalive"
        message, endpoint = await self._gateway.call(
            path, {"ID": lease_id}, KEEPALIVE_MESSAGE, idempotent=True
        )
        if message.error is not None:
            raise stream_error(message.error, endpoint, path)
        if message.result is None:
            raise EtcdProtocolError(
                f"invalid reply from etcd at {endpoint} to {path}: no result", endpoint=endpoint
            )
        return max(message.result.ttl, 0)

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke the lease: every key attached to it is deleted.

        Raises:
            EtcdRequestError: the lease does not exist (any more), code 5.

        """
        await self._gateway.call(
            "/v3/lease/revoke", {"ID": lease_id}, EMPTY_REPLY, idempotent=False
        )

    def lease(self, ttl: int, *, clock: Clock = SYSTEM_CLOCK) -> LeaseKeeper:
        """Grant a lease and keep it alive while the ``async with`` block runs.

        The lease is refreshed every ``ttl / 3`` seconds of ``clock`` in a
        background task and revoked when the block exits. See :class:`LeaseKeeper`.
        """
        return LeaseKeeper(self, ttl, clock=clock)

    # -- cluster -------------------------------------------------------------------

    async def status(self) -> EtcdStatus:
        """Return the status of the first member that answers."""
        reply, endpoint = await self._gateway.call(
            "/v3/maintenance/status", {}, STATUS_REPLY, idempotent=True
        )
        header = reply.header
        return EtcdStatus(
            endpoint=endpoint,
            version=reply.version,
            revision=header.revision,
            leader=reply.leader,
            member_id=header.member_id,
            cluster_id=header.cluster_id,
            raft_term=header.raft_term,
            db_size=reply.db_size,
        )

    # -- watch ---------------------------------------------------------------------

    def follow(
        self,
        prefix: str,
        *,
        liveness_timeout: float,
        random: Callable[[], float],
        clock: Clock = SYSTEM_CLOCK,
        start: RangeResult | None = None,
    ) -> Subscription:
        """Follow every key under ``prefix`` through the one watch this process shares for it.

        Every client in the event loop with the same endpoints, credentials,
        TLS and timeouts that follows the same prefix (with the same
        ``liveness_timeout`` and ``clock``) shares one watch stream, on connections of its
        own that stay open until the last subscriber leaves. The watch keeps
        no key: a subscription gets each later revision's events whole, from
        the revision the watch has reached (ignore those ``start`` holds), and
        every key at one revision (a :class:`~healkit.etcd._feed.Reset`) with
        the watch's first read and whenever it reads again; without ``start``,
        or with one older than the watch's revision, it waits for such a read.
        See :class:`~healkit.etcd.EtcdSource`, its user, for the rules it
        follows. Close it with ``await subscription.aclose()``.

        Args:
            prefix: the keys' prefix (a namespace's root).
            liveness_timeout: seconds within which a stream that died silently
                is noticed (see :class:`~healkit.etcd.EtcdSource`).
            random: the jitter of the reconnection backoff, if this starts the watch.
            clock: what the reconnection backoff waits on (tests give a
                :class:`~healkit.testing.ManualClock`).
            start: what the caller read under ``prefix`` (:meth:`range_all`): if
                this starts the watch, it watches from the revision after it.

        """
        options = self._gateway.settings
        return subscribe(
            functools.partial(_client_with, options),
            options,
            prefix,
            liveness_timeout=liveness_timeout,
            random=random,
            clock=clock,
            start=start,
        )

    def watch(  # noqa: PLR0913 - keyword-only options of etcd's WatchCreateRequest
        self,
        key: Key,
        *,
        prefix: bool = False,
        range_end: Key | None = None,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
        idle_timeout: float | None = None,
    ) -> EtcdWatch:
        """Watch one key, a prefix or a range; use it with ``async with``.

        Args:
            key: the key, or the prefix / start of the range.
            prefix: watch every key that starts with ``key``.
            range_end: watch every key in ``[key, range_end)``.
            start_revision: send the history from this revision on (0: only
                changes from now). Pass the revision you read at, plus one.
            prev_kv: each event carries the key as it was before.
            progress_notify: etcd sends empty responses with the current
                revision when nothing changed for a while.
            idle_timeout: give up (EtcdUnavailableError) after this many seconds
                without any message (default: wait for ever).

        Returns:
            An :class:`EtcdWatch`: entering it creates the watch; iterating
            yields each :class:`WatchResponse` whole.

        """
        start, end = key_range(key, prefix=prefix, range_end=range_end)
        body = range_body(start, end)
        options = {
            "start_revision": start_revision,
            "prev_kv": prev_kv,
            "progress_notify": progress_notify,
        }
        body.update({name: value for name, value in options.items() if value})
        return EtcdWatch(self._gateway, {"create_request": body}, idle_timeout=idle_timeout)


def _client_with(options: Settings) -> EtcdClient:
    """Return a new client with the same connection settings (the TLS context itself)."""
    return EtcdClient(
        options.endpoints,
        username=options.username,
        password=options.password,
        ssl_context=options.ssl_context,
        timeout=options.timeout,
        connect_timeout=options.connect_timeout,
        max_message_bytes=options.max_message_bytes,
    )
