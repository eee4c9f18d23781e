"""An async etcd v3 client over etcd's JSON gateway.

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
:mod:`healkit._errors`): :class:`~healkit.EtcdUnavailable` when no endpoint can
serve, :class:`~healkit.EtcdAuthError`, :class:`~healkit.EtcdCompacted`,
:class:`~healkit.EtcdRequestError` for any other error reply (with its gRPC
code). Passwords and tokens never appear in messages or logs.

Several endpoints are tried in turn: a request moves on to the next endpoint
when it could not connect (any request), or when the connection broke or the
member answered ``UNAVAILABLE`` (read-only requests only, which are safe to
repeat). The endpoint that answered is used first from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from http import HTTPStatus
from types import TracebackType
from typing import Annotated, Final, Literal, Protocol, Self, TypeVar, final

import aiohttp
import msgspec
import yarl
from aiohttp.connector import AddrInfoType
from aiohttp.http_exceptions import LineTooLong

from healkit._errors import (
    EtcdAuthError,
    EtcdCompacted,
    EtcdError,
    EtcdProtocolError,
    EtcdRequestError,
    EtcdUnavailable,
)
from healkit._log import get_logger

__all__ = [
    "Compare",
    "DeleteOp",
    "DeleteResult",
    "EtcdClient",
    "EtcdStatus",
    "EtcdWatch",
    "KeyValue",
    "Lease",
    "LeaseKeeper",
    "PutOp",
    "PutResult",
    "RangeOp",
    "RangeResult",
    "TxnResult",
    "WatchEvent",
    "WatchResponse",
    "prefix_range_end",
]

logger: Final = get_logger("healkit.etcd")

# gRPC status codes that the gateway puts in its error replies.
_GRPC_INVALID_ARGUMENT: Final = 3
_GRPC_PERMISSION_DENIED: Final = 7
_GRPC_FAILED_PRECONDITION: Final = 9
_GRPC_OUT_OF_RANGE: Final = 11
_GRPC_UNAVAILABLE: Final = 14
_GRPC_UNAUTHENTICATED: Final = 16

# etcd's reasons (api/v3rpc/rpctypes) that decide how an error is classified.
_REASON_COMPACTED: Final = "required revision has been compacted"
_REASON_AUTH_NOT_ENABLED: Final = "authentication is not enabled"
# A token etcd no longer accepts: authenticate again and resend once.
_REASONS_STALE_TOKEN: Final = (
    "invalid auth token",
    "revision of auth store is old",
    "user name is empty",  # auth was enabled after this client found it disabled
)
_REASONS_AUTH: Final = (
    "authentication failed",
    "permission denied",
    "user name is empty",
    "invalid auth token",
    "revision of auth store is old",
    "user name not found",
)

# A canceled watch gives its reason as a formatted gRPC status.
_RPC_ERROR: Final = re.compile(r"rpc error: code = (?P<code>\w+) desc = (?P<desc>.*)", re.DOTALL)
_GRPC_CODES: Final[Mapping[str, int]] = {
    "Canceled": 1,
    "Unknown": 2,
    "InvalidArgument": _GRPC_INVALID_ARGUMENT,
    "DeadlineExceeded": 4,
    "NotFound": 5,
    "AlreadyExists": 6,
    "PermissionDenied": _GRPC_PERMISSION_DENIED,
    "ResourceExhausted": 8,
    "FailedPrecondition": _GRPC_FAILED_PRECONDITION,
    "Aborted": 10,
    "OutOfRange": _GRPC_OUT_OF_RANGE,
    "Unimplemented": 12,
    "Internal": 13,
    "Unavailable": _GRPC_UNAVAILABLE,
    "DataLoss": 15,
    "Unauthenticated": _GRPC_UNAUTHENTICATED,
}

_DEFAULT_MAX_MESSAGE: Final = 64 * 1024 * 1024
_KEEPALIVE_IDLE: Final = 10
_KEEPALIVE_INTERVAL: Final = 5
_KEEPALIVE_COUNT: Final = 3
_READ_CHUNK: Final = 64 * 1024
_SNIPPET: Final = 200

T = TypeVar("T")

Key = bytes | str
"""A key or value: bytes, or a str that is encoded as UTF-8."""

_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_Revision = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


def _bytes(value: Key, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, got {type(value).__name__}")


def prefix_range_end(prefix: Key) -> bytes:
    r"""Return the ``range_end`` that selects every key starting with ``prefix``.

    The last byte below ``0xff`` is incremented and what follows it dropped;
    for an empty prefix (or one of only ``0xff`` bytes) it is ``b"\\x00"``,
    which etcd reads as "to the end of the keyspace".
    """
    raw = bytearray(_bytes(prefix, "prefix"))
    for index in reversed(range(len(raw))):
        if raw[index] < 0xFF:
            raw[index] += 1
            return bytes(raw[: index + 1])
    return b"\x00"


def _key_range(key: Key, *, prefix: bool, range_end: Key | None) -> tuple[bytes, bytes | None]:
    raw = _bytes(key, "key")
    if prefix and range_end is not None:
        raise ValueError("give prefix=True or range_end, not both")
    if prefix:
        return (raw or b"\x00"), prefix_range_end(raw)
    if not raw:
        raise ValueError("the key must not be empty (use prefix=True for every key)")
    return raw, None if range_end is None else _bytes(range_end, "range_end")


# -- data types -------------------------------------------------------------------


@final
class KeyValue(msgspec.Struct, frozen=True, kw_only=True):
    """A key and its value as etcd stores them."""

    key: bytes
    """The key."""
    value: bytes = b""
    """The value (empty in a DELETE event, and when ``keys_only`` was asked)."""
    create_revision: _Revision = 0
    """Revision of the last creation of this key."""
    mod_revision: _Revision = 0
    """Revision of the last modification of this key."""
    version: _Revision = 0
    """How many times the key was written since its creation (0: deleted)."""
    lease: _Int64 = 0
    """ID of the lease attached to the key (0: none)."""


@final
class WatchEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One change seen by a watch."""

    type: Literal["PUT", "DELETE"] = "PUT"
    """``"PUT"`` (created or modified) or ``"DELETE"``."""
    kv: KeyValue
    """The key after the change; for a DELETE only ``key`` and ``mod_revision``."""
    prev_kv: KeyValue | None = None
    """The key before the change, when the watch asked for ``prev_kv``."""


@final
class WatchResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a watch stream; apply its events as a whole.

    etcd never splits the events of one revision over two responses, so after
    a response is applied the state is consistent at :attr:`revision`.
    """

    revision: int
    """The store's revision when the response was sent (the header's revision)."""
    events: tuple[WatchEvent, ...] = ()
    """The changes, oldest first."""
    watch_id: int = 0
    """The ID etcd gave the watch."""
    created: bool = False
    """The response confirming the watch's creation."""
    canceled: bool = False
    """The watch was canceled by etcd (see ``cancel_reason``)."""
    cancel_reason: str = ""
    """Why etcd canceled the watch."""
    compact_revision: int = 0
    """When canceled because the start revision was compacted: the compaction revision."""
    progress_notify: bool = False
    """A progress notification: no events, everything up to ``revision`` was sent."""


@final
class RangeResult(msgspec.Struct, frozen=True, kw_only=True):
    """The keys a range read returned."""

    kvs: tuple[KeyValue, ...]
    """The keys found, in key order (at most ``limit`` of them)."""
    revision: int
    """The store's revision when the range was read (the header's revision).

    A read with ``revision=`` shows the store at that older revision, but this
    stays the current one; :meth:`EtcdClient.range_all` returns the revision
    it read at.
    """
    count: int
    """How many keys the range holds (also those beyond ``limit``)."""
    more: bool = False
    """There are more keys in the range than were returned."""
    cluster_id: int = 0
    """ID of the etcd cluster that answered (0 in a transaction's results)."""


@final
class PutResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of a put."""

    revision: int
    """The revision of the write."""
    prev_kv: KeyValue | None = None
    """The key before the write, when asked for with ``prev_kv`` and the key existed."""


@final
class DeleteResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of a delete."""

    revision: int
    """The store's revision after the delete (unchanged if nothing was deleted)."""
    deleted: int = 0
    """How many keys were deleted."""
    prev_kvs: tuple[KeyValue, ...] = ()
    """The deleted keys, when asked for with ``prev_kv``."""


@final
class TxnResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of a transaction."""

    succeeded: bool
    """Every comparison held, so the ``success`` operations ran (else ``failure``)."""
    revision: int
    """The store's revision after the transaction."""
    responses: tuple[RangeResult | PutResult | DeleteResult, ...] = ()
    """One result per operation that ran, in order."""


@final
class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """A granted lease."""

    id: int
    """The lease ID, to pass as ``lease=`` to :meth:`EtcdClient.put`."""
    ttl: int
    """The TTL etcd granted, in seconds (etcd may raise a very small request)."""


@final
class EtcdStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The status of the etcd member that answered."""

    endpoint: str
    """The endpoint that answered."""
    version: str
    """The member's etcd version, e.g. ``"3.5.1"``."""
    revision: int
    """The store's current revision."""
    leader: int
    """Member ID of the cluster's leader (0: no leader)."""
    member_id: int
    """Member ID of the member that answered."""
    cluster_id: int
    """ID of the cluster."""
    raft_term: int
    """The current raft term."""
    db_size: int
    """Size of the member's database file, in bytes."""


CompareTarget = Literal["version", "create_revision", "mod_revision", "value", "lease"]
CompareOperator = Literal["==", "!=", "<", ">"]

_TARGETS: Final[Mapping[str, str]] = {
    "version": "VERSION",
    "create_revision": "CREATE",
    "mod_revision": "MOD",
    "value": "VALUE",
    "lease": "LEASE",
}
_OPERATORS: Final[Mapping[str, str]] = {
    "==": "EQUAL",
    "!=": "NOT_EQUAL",
    "<": "LESS",
    ">": "GREATER",
}


@final
class Compare(msgspec.Struct, frozen=True, kw_only=True):
    """A condition of a transaction: ``Compare.mod_revision("/k", "==", 42)``.

    Build it with the class methods; ``operand`` is bytes for ``"value"`` and
    an int for every other target. A missing key has version, create_revision
    and mod_revision 0, so ``Compare.version(key, "==", 0)`` means "absent".
    """

    key: bytes
    """The key compared."""
    target: CompareTarget
    """Which property of the key is compared."""
    operator: CompareOperator
    """How the property relates to ``operand``."""
    operand: int | bytes
    """What the property is compared with."""
    range_end: bytes | None = None
    """Compare every key in ``[key, range_end)`` instead of one key."""

    def __post_init__(self) -> None:
        """Check that the operand fits the target and the operator is known."""
        if self.target not in _TARGETS:
            raise ValueError(f"unknown compare target {self.target!r}")
        if self.operator not in _OPERATORS:
            raise ValueError(f"unknown compare operator {self.operator!r}")
        wants_bytes = self.target == "value"
        if isinstance(self.operand, bytes) != wants_bytes or isinstance(self.operand, bool):
            kind = "bytes" if wants_bytes else "an int"
            raise TypeError(f"a {self.target} comparison needs {kind}, got {self.operand!r}")

    @classmethod
    def mod_revision(cls, key: Key, operator: CompareOperator, revision: int) -> Self:
        """Compare the key's last modification revision (0 if it does not exist)."""
        return cls(
            key=_bytes(key, "key"), target="mod_revision", operator=operator, operand=revision
        )

    @classmethod
    def create_revision(cls, key: Key, operator: CompareOperator, revision: int) -> Self:
        """Compare the key's creation revision (0 if it does not exist)."""
        return cls(
            key=_bytes(key, "key"), target="create_revision", operator=operator, operand=revision
        )

    @classmethod
    def version(cls, key: Key, operator: CompareOperator, version: int) -> Self:
        """Compare the key's version (0 if it does not exist)."""
        return cls(key=_bytes(key, "key"), target="version", operator=operator, operand=version)

    @classmethod
    def value(cls, key: Key, operator: CompareOperator, value: Key) -> Self:
        """Compare the key's value (a missing key makes the comparison fail)."""
        return cls(
            key=_bytes(key, "key"),
            target="value",
            operator=operator,
            operand=_bytes(value, "value"),
        )

    @classmethod
    def lease(cls, key: Key, operator: CompareOperator, lease: int) -> Self:
        """Compare the ID of the lease attached to the key (0: none)."""
        return cls(key=_bytes(key, "key"), target="lease", operator=operator, operand=lease)

    def _wire(self) -> dict[str, object]:
        wire: dict[str, object] = {
            "key": self.key,
            "target": _TARGETS[self.target],
            "result": _OPERATORS[self.operator],
            self.target: self.operand,
        }
        if self.range_end is not None:
            wire["range_end"] = self.range_end
        return wire


@final
class PutOp(msgspec.Struct, frozen=True, kw_only=True):
    """A put inside a transaction."""

    key: bytes
    """The key written."""
    value: bytes
    """The value written."""
    lease: int = 0
    """Attach the key to this lease (0: none)."""
    prev_kv: bool = False
    """Return the key as it was before."""

    def _wire(self) -> dict[str, object]:
        return {"request_put": _put_body(self.key, self.value, self.lease, prev_kv=self.prev_kv)}


@final
class DeleteOp(msgspec.Struct, frozen=True, kw_only=True):
    """A delete inside a transaction; ``DeleteOp.prefix(p)`` deletes a whole prefix."""

    key: bytes
    """The key deleted (the start of the range with ``range_end``)."""
    range_end: bytes | None = None
    """Delete every key in ``[key, range_end)``."""
    prev_kv: bool = False
    """Return the deleted keys."""

    @classmethod
    def prefix(cls, prefix: Key, *, prev_kv: bool = False) -> Self:
        """Delete every key that starts with ``prefix``."""
        key, end = _key_range(prefix, prefix=True, range_end=None)
        return cls(key=key, range_end=end, prev_kv=prev_kv)

    def _wire(self) -> dict[str, object]:
        return {"request_delete_range": _range_body(self.key, self.range_end, prev_kv=self.prev_kv)}


@final
class RangeOp(msgspec.Struct, frozen=True, kw_only=True):
    """A read inside a transaction; ``RangeOp.prefix(p)`` reads a whole prefix."""

    key: bytes
    """The key read (the start of the range with ``range_end``)."""
    range_end: bytes | None = None
    """Read every key in ``[key, range_end)``."""
    limit: int = 0
    """Return at most this many keys (0: all)."""
    keys_only: bool = False
    """Return keys without values."""

    @classmethod
    def prefix(cls, prefix: Key, *, limit: int = 0, keys_only: bool = False) -> Self:
        """Read every key that starts with ``prefix``."""
        key, end = _key_range(prefix, prefix=True, range_end=None)
        return cls(key=key, range_end=end, limit=limit, keys_only=keys_only)

    def _wire(self) -> dict[str, object]:
        body = _range_body(self.key, self.range_end)
        if self.limit:
            body["limit"] = self.limit
        if self.keys_only:
            body["keys_only"] = True
        return {"request_range": body}


def _put_body(key: bytes, value: bytes, lease: int, *, prev_kv: bool) -> dict[str, object]:
    body: dict[str, object] = {"key": key, "value": value}
    if lease:
        body["lease"] = lease
    if prev_kv:
        body["prev_kv"] = True
    return body


def _range_body(key: bytes, range_end: bytes | None, *, prev_kv: bool = False) -> dict[str, object]:
    body: dict[str, object] = {"key": key}
    if range_end is not None:
        body["range_end"] = range_end
    if prev_kv:
        body["prev_kv"] = True
    return body


# -- what the gateway sends -------------------------------------------------------
# Field names are the protobuf names (the gateway marshals with OrigName), zero
# values are left out, int64 values are strings (decoded with strict=False).


class _Header(msgspec.Struct, frozen=True):
    cluster_id: int = 0
    member_id: int = 0
    revision: _Revision = 0
    raft_term: int = 0

    def from_etcd(self) -> bool:
        """Whether this is the header an etcd member puts on every reply it sends.

        etcd fills the cluster ID and member ID (never 0) in the header of each
        RPC's reply, and the revision in all but a canceled watch's; the
        replies nested in a transaction carry less, so only a whole reply is
        checked.
        """
        return self.cluster_id > 0 and self.member_id > 0


_NO_HEADER: Final = _Header()


class _Reply(Protocol):
    """A whole reply of the gateway: it carries etcd's header (``None``: an error message)."""

    @property
    def header(self) -> _Header | None: ...


R = TypeVar("R", bound=_Reply)


class _RangeReply(msgspec.Struct, frozen=True):
    header: _Header = _NO_HEADER
    kvs: tuple[KeyValue, ...] = ()
    more: bool = False
    count: _Revision = 0

    def result(self) -> RangeResult:
        return RangeResult(
            kvs=self.kvs,
            revision=self.header.revision,
            count=self.count,
            more=self.more,
            cluster_id=self.header.cluster_id,
        )


class _PutReply(msgspec.Struct, frozen=True):
    header: _Header = _NO_HEADER
    prev_kv: KeyValue | None = None

    def result(self) -> PutResult:
        return PutResult(revision=self.header.revision, prev_kv=self.prev_kv)


class _DeleteReply(msgspec.Struct, frozen=True):
    header: _Header = _NO_HEADER
    deleted: _Revision = 0
    prev_kvs: tuple[KeyValue, ...] = ()

    def result(self) -> DeleteResult:
        return DeleteResult(
            revision=self.header.revision, deleted=self.deleted, prev_kvs=self.prev_kvs
        )


class _ResponseOp(msgspec.Struct, frozen=True):
    response_range: _RangeReply | None = None
    response_put: _PutReply | None = None
    response_delete_range: _DeleteReply | None = None

    def result(self) -> RangeResult | PutResult | DeleteResult:
        if self.response_range is not None:
            return self.response_range.result()
        if self.response_put is not None:
            return self.response_put.result()
        if self.response_delete_range is not None:
            return self.response_delete_range.result()
        raise ValueError("a transaction response holds no range, put or delete result")


class _TxnReply(msgspec.Struct, frozen=True):
    header: _Header = _NO_HEADER
    succeeded: bool = False
    responses: tuple[_ResponseOp, ...] = ()


class _CompactReply(msgspec.Struct, frozen=True):
    header: _Header = _NO_HEADER


class _LeaseReply(msgspec.Struct, frozen=True):
    header: _Header = _NO_HEADER
    lease_id: _Int64 = msgspec.field(default=0, name="ID")
    ttl: _Int64 = msgspec.field(default=0, name="TTL")
    error: str = ""


class _StreamError(msgspec.Struct, frozen=True):
    grpc_code: int = 2
    http_code: int = 0
    message: str = ""


class _KeepAliveMessage(msgspec.Struct, frozen=True):
    result: _LeaseReply | None = None
    error: _StreamError | None = None

    @property
    def header(self) -> _Header | None:
        return None if self.result is None else self.result.header


class _StatusReply(msgspec.Struct, frozen=True):
    header: _Header = _NO_HEADER
    version: str = ""
    db_size: int = msgspec.field(default=0, name="dbSize")
    leader: int = 0


class _AuthReply(msgspec.Struct, frozen=True):
    header: _Header = _NO_HEADER
    token: str = ""


class _GatewayError(msgspec.Struct, frozen=True):
    error: str = ""
    code: int = 2
    message: str = ""


class _WatchReply(msgspec.Struct, frozen=True):
    header: _Header = _NO_HEADER
    watch_id: int = 0
    created: bool = False
    canceled: bool = False
    compact_revision: _Revision = 0
    cancel_reason: str = ""
    events: tuple[WatchEvent, ...] = ()

    def response(self) -> WatchResponse:
        progress = not (
            self.events or self.created or self.canceled or self.compact_revision
        ) and bool(self.header.revision)
        return WatchResponse(
            revision=self.header.revision,
            events=self.events,
            watch_id=self.watch_id,
            created=self.created,
            canceled=self.canceled,
            cancel_reason=self.cancel_reason,
            compact_revision=self.compact_revision,
            progress_notify=progress,
        )


class _WatchMessage(msgspec.Struct, frozen=True):
    result: _WatchReply | None = None
    error: _StreamError | None = None

    @property
    def header(self) -> _Header | None:
        return None if self.result is None else self.result.header


def _decoder(kind: type[T]) -> msgspec.json.Decoder[T]:
    return msgspec.json.Decoder(kind, strict=False)


_RANGE: Final = _decoder(_RangeReply)
_PUT: Final = _decoder(_PutReply)
_DELETE: Final = _decoder(_DeleteReply)
_TXN: Final = _decoder(_TxnReply)
_COMPACT: Final = _decoder(_CompactReply)
_LEASE: Final = _decoder(_LeaseReply)
_KEEPALIVE: Final = _decoder(_KeepAliveMessage)
_STATUS: Final = _decoder(_StatusReply)
_AUTH: Final = _decoder(_AuthReply)
_ERROR: Final = _decoder(_GatewayError)
_WATCH: Final = _decoder(_WatchMessage)
_ENCODER: Final = msgspec.json.Encoder()


# -- errors -----------------------------------------------------------------------


def _classify(code: int, reason: str, *, endpoint: str, path: str) -> EtcdError:
    """Map an error etcd sent (gRPC code and reason) onto the healkit tree."""
    if code == _GRPC_UNAVAILABLE:
        return EtcdUnavailable(
            f"etcd at {endpoint} cannot serve {path}: {reason}",
            failures=[(endpoint, reason)],
            endpoint=endpoint,
        )
    message = f"etcd at {endpoint} refused {path}: {reason} (gRPC code {code})"
    if code == _GRPC_OUT_OF_RANGE and _REASON_COMPACTED in reason:
        return EtcdCompacted(
            message, compact_revision=None, code=code, reason=reason, endpoint=endpoint
        )
    is_auth = code in {_GRPC_UNAUTHENTICATED, _GRPC_PERMISSION_DENIED} or (
        code == _GRPC_INVALID_ARGUMENT and any(text in reason for text in _REASONS_AUTH)
    )
    if is_auth:
        return EtcdAuthError(message, code=code, reason=reason, endpoint=endpoint)
    return EtcdRequestError(message, code=code, reason=reason, endpoint=endpoint)


def _snippet(raw: bytes) -> str:
    text = raw[:_SNIPPET].decode("utf-8", "replace")
    return text + ("..." if len(raw) > _SNIPPET else "")


def _describe(exc: BaseException, endpoint: str = "") -> str:
    """Say what went wrong in one line, for messages and logs.

    aiohttp's connection errors are described from their parts: their own
    text shows the SSL context's ``repr`` (``ssl:<ssl.SSLContext object at
    0x...>``) and ``[None]`` for a cause without a message.
    """
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _describe_connect(exc, tls=endpoint.startswith("https://"))
    text = str(exc)
    name = type(exc).__name__
    if not text and isinstance(exc, TimeoutError):
        text = "timed out"
    return f"{name}: {text}" if text else name


def _describe_connect(exc: aiohttp.ClientConnectorError, *, tls: bool) -> str:
    where = f"{exc.host}:{exc.port}"
    cause = exc.os_error
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        error = exc.certificate_error
        reason = getattr(error, "verify_message", "") or str(error)
        return (
            f"TLS: the certificate of {where} is not trusted: {reason}"
            " (is the CA that signed it the one given as CA file?)"
        )
    if isinstance(cause, ssl.SSLError):
        reason = cause.reason or cause.strerror or type(cause).__name__
        hint = ""
        if reason in {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"}:
            hint = " (the endpoint does not speak TLS: is it plain HTTP? then use http://)"
        return f"TLS handshake with {where} failed: {reason}{hint}"
    if tls and isinstance(cause, ConnectionResetError | EOFError):
        # etcd without TLS drops a TLS hello at once: nothing else resets there.
        return (
            f"{where} closed the connection during the TLS handshake"
            " (does the endpoint speak plain HTTP? then use http://)"
        )
    reason = cause.strerror or str(cause) or type(cause).__name__
    return f"cannot connect to {where}: {reason}"


def _stale_token(error: EtcdError) -> bool:
    return isinstance(error, EtcdAuthError) and any(
        text in error.reason for text in _REASONS_STALE_TOKEN
    )


# Nothing was sent: safe to try the request on another endpoint, whatever it is.
_REQUIRE_LEADER: Final = "Grpc-Metadata-hasleader"
"""The gateway passes it on as the gRPC metadata ``hasleader`` (clientv3's WithRequireLeader)."""
_NOT_SENT: Final = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


def _normalize_endpoint(endpoint: str, *, tls: bool) -> str:
    text = endpoint.strip()
    if "://" not in text:
        text = f"{'https' if tls else 'http'}://{text}"
    try:
        url = yarl.URL(text)
    except ValueError as exc:
        raise ValueError(f"invalid etcd endpoint {endpoint!r}") from exc
    if url.scheme not in {"http", "https"} or not url.host:
        raise ValueError(f"invalid etcd endpoint {endpoint!r}: expected http(s)://HOST:PORT")
    if url.user is not None or url.password is not None:
        raise ValueError("etcd endpoints must not carry credentials; use username= and password=")
    if url.path not in {"", "/"} or url.query_string or url.fragment:
        raise ValueError(f"invalid etcd endpoint {endpoint!r}: no path, query or fragment")
    return str(url.origin())


def _keepalive_socket(addr_info: AddrInfoType) -> socket.socket:
    """Open a client socket with TCP keepalive, so that the kernel notices a vanished peer.

    A watch may be idle for minutes; without keepalive a connection whose
    path silently died stays "open" for ever. Probes start after
    ``_KEEPALIVE_IDLE`` seconds of silence, ``_KEEPALIVE_INTERVAL`` apart, and
    ``_KEEPALIVE_COUNT`` unanswered ones close it (where the OS has the options).
    """
    family, kind, protocol, _, _ = addr_info
    sock = socket.socket(family=family, type=kind, proto=protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", _KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", _KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", _KEEPALIVE_COUNT),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
    return sock


def _tls_context(
    ca_file: str | os.PathLike[str] | None,
    cert_file: str | os.PathLike[str] | None,
    key_file: str | os.PathLike[str] | None,
) -> ssl.SSLContext:
    if key_file is not None and cert_file is None:
        raise ValueError("key_file needs cert_file")
    context = ssl.create_default_context()
    if ca_file is not None:
        with _loading(f"the CA file {os.fspath(ca_file)!r}"):
            context.load_verify_locations(cafile=os.fspath(ca_file))
    if cert_file is not None:
        what = f"the certificate {os.fspath(cert_file)!r}"
        if key_file is not None:
            what += f" with the key {os.fspath(key_file)!r}"
        with _loading(what):
            context.load_cert_chain(
                os.fspath(cert_file), None if key_file is None else os.fspath(key_file)
            )
    return context


@contextlib.contextmanager
def _loading(what: str) -> Iterator[None]:
    """Name the file in the error when ``ssl`` cannot load it (its own error names none)."""
    try:
        yield
    except OSError as exc:  # ssl.SSLError too
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ValueError(f"cannot load {what}: {reason}") from exc


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

    __slots__ = (
        "_auth_task",
        "_closed",
        "_connect_timeout",
        "_endpoints",
        "_max_message",
        "_password",
        "_preferred",
        "_session",
        "_ssl",
        "_timeout",
        "_token",
        "_username",
    )

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
        max_message_bytes: int = _DEFAULT_MAX_MESSAGE,
    ) -> None:
        files = ca_file is not None or cert_file is not None or key_file is not None
        if files and ssl_context is not None:
            raise ValueError("give TLS files or ssl_context, not both")
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        if not (timeout > 0 and connect_timeout > 0):
            raise ValueError("timeout and connect_timeout must be > 0")
        if max_message_bytes <= 0:
            raise ValueError("max_message_bytes must be > 0")
        listed = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not listed:
            raise ValueError("at least one etcd endpoint is needed")
        tls = files or ssl_context is not None
        self._endpoints = tuple(_normalize_endpoint(item, tls=tls) for item in listed)
        if tls and any(item.startswith("http://") for item in self._endpoints):
            raise ValueError("TLS options are given but an endpoint uses http://")
        self._ssl = ssl_context if ssl_context is not None else None
        if files:
            self._ssl = _tls_context(ca_file, cert_file, key_file)
        self._username = username
        self._password = password
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self._connect_timeout = connect_timeout
        self._max_message = max_message_bytes
        self._preferred = 0
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # None: not authenticated yet; "": etcd has auth disabled.
        self._token: str | None = None
        self._auth_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        """Show the endpoints and the user, never the password."""
        user = f" user={self._username!r}" if self._username else ""
        return f"<EtcdClient {', '.join(self._endpoints)}{user}>"

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoints' base URLs, in the order given."""
        return self._endpoints

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Return the client (connections are opened on first use)."""
        self._ensure_session()
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
        self._closed = True
        task, self._auth_task = self._auth_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the EtcdClient is closed")
        if self._session is None:
            # No pool limit: every open watch holds a connection of its own.
            connector = aiohttp.TCPConnector(limit=0, socket_factory=_keepalive_socket)
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"Content-Type": "application/json"},
            )
        return self._session

    def _ssl_option(self) -> ssl.SSLContext | bool:
        return self._ssl if self._ssl is not None else True

    def _order(self) -> list[int]:
        count = len(self._endpoints)
        return [(self._preferred + step) % count for step in range(count)]

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
            EtcdCompacted: ``revision`` is older than the compacted history.
            EtcdRequestError: e.g. ``revision`` is in the future (code 11).

        """
        start, end = _key_range(key, prefix=prefix, range_end=range_end)
        body = _range_body(start, end)
        options = {
            "revision": revision,
            "limit": limit,
            "keys_only": keys_only,
            "count_only": count_only,
            "serializable": serializable,
            "min_mod_revision": min_mod_revision,
        }
        body.update({name: value for name, value in options.items() if value})
        reply = await self._call("/v3/kv/range", body, _RANGE, idempotent=True)
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
            EtcdCompacted: the revision was compacted while paging; read again.

        """
        if page_size <= 0:
            raise ValueError("page_size must be > 0")
        start, end = _key_range(key, prefix=prefix, range_end=range_end)
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
        raw = _bytes(key, "key")
        if not raw:
            raise ValueError("the key must not be empty")
        body = _put_body(raw, _bytes(value, "value"), lease, prev_kv=prev_kv)
        reply = await self._call("/v3/kv/put", body, _PUT, idempotent=False)
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
        start, end = _key_range(key, prefix=prefix, range_end=range_end)
        body = _range_body(start, end, prev_kv=prev_kv)
        reply = await self._call("/v3/kv/deleterange", body, _DELETE, idempotent=False)
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
        body = {
            "compare": [item._wire() for item in compares],  # noqa: SLF001 - same module
            "success": [item._wire() for item in then],  # noqa: SLF001 - same module
            "failure": [item._wire() for item in otherwise],  # noqa: SLF001 - same module
        }
        read_only = all(isinstance(item, RangeOp) for item in [*then, *otherwise])
        path = "/v3/kv/txn"
        reply, endpoint = await self._call_at(path, body, _TXN, idempotent=read_only)
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
            EtcdCompacted: the history is already compacted at or after ``revision``.
            EtcdRequestError: ``revision`` is in the future.

        """
        body: dict[str, object] = {"revision": revision, "physical": physical}
        reply = await self._call("/v3/kv/compaction", body, _COMPACT, idempotent=False)
        return reply.header.revision

    # -- leases --------------------------------------------------------------------

    async def lease_grant(self, ttl: int, *, lease_id: int = 0) -> Lease:
        """Grant a lease of ``ttl`` seconds (``lease_id`` 0: etcd picks the ID)."""
        if ttl <= 0:
            raise ValueError("ttl must be > 0 seconds")
        body = {"TTL": ttl, "ID": lease_id}
        path = "/v3/lease/grant"
        reply, endpoint = await self._call_at(path, body, _LEASE, idempotent=False)
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
        message, endpoint = await self._call_at(path, {"ID": lease_id}, _KEEPALIVE, idempotent=True)
        if message.error is not None:
            raise self._stream_error(message.error, endpoint, path)
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
        await self._call("/v3/lease/revoke", {"ID": lease_id}, _COMPACT, idempotent=False)

    def lease(self, ttl: int) -> LeaseKeeper:
        """Grant a lease and keep it alive while the ``async with`` block runs.

        The lease is refreshed every ``ttl / 3`` seconds in a background task
        and revoked when the block exits. See :class:`LeaseKeeper`.
        """
        return LeaseKeeper(self, ttl)

    # -- cluster -------------------------------------------------------------------

    async def status(self) -> EtcdStatus:
        """Return the status of the first member that answers."""
        reply, endpoint = await self._call_at(
            "/v3/maintenance/status", {}, _STATUS, idempotent=True
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
            idle_timeout: give up (EtcdUnavailable) after this many seconds
                without any message (default: wait for ever).

        Returns:
            An :class:`EtcdWatch`: entering it creates the watch; iterating
            yields each :class:`WatchResponse` whole.

        """
        start, end = _key_range(key, prefix=prefix, range_end=range_end)
        body = _range_body(start, end)
        options = {
            "start_revision": start_revision,
            "prev_kv": prev_kv,
            "progress_notify": progress_notify,
        }
        body.update({name: value for name, value in options.items() if value})
        return EtcdWatch(self, {"create_request": body}, idle_timeout=idle_timeout)

    # -- transport -----------------------------------------------------------------

    async def _call(
        self,
        path: str,
        body: Mapping[str, object],
        decoder: msgspec.json.Decoder[R],
        *,
        idempotent: bool,
    ) -> R:
        reply, _ = await self._call_at(path, body, decoder, idempotent=idempotent)
        return reply

    async def _call_at(
        self,
        path: str,
        body: Mapping[str, object],
        decoder: msgspec.json.Decoder[R],
        *,
        idempotent: bool,
    ) -> tuple[R, str]:
        """Send one request and decode the reply; return it and the endpoint that answered."""
        raw, endpoint = await self._request(path, _ENCODER.encode(body), idempotent=idempotent)
        return self._decode(decoder, raw, path, endpoint), endpoint

    async def _request(self, path: str, payload: bytes, *, idempotent: bool) -> tuple[bytes, str]:
        """Send one request (authenticated, with failover); return the OK body and endpoint."""
        renewed = False
        while True:
            token = await self._auth_token()
            status, raw, endpoint = await self._post(path, payload, token, idempotent=idempotent)
            if status == 200:
                return raw, endpoint
            error = self._reply_error(status, raw, endpoint, path)
            if token and not renewed and _stale_token(error):
                # The token expired or etcd restarted: the request was refused,
                # so it is safe to resend it once with a new token.
                self._forget_token(token)
                renewed = True
                continue
            raise error

    async def _post(
        self, path: str, payload: bytes, token: str | None, *, idempotent: bool
    ) -> tuple[int, bytes, str]:
        """POST to the first endpoint that answers; return status, body and endpoint."""
        session = self._ensure_session()
        headers = {"Authorization": token} if token else None
        failures: list[tuple[str, str]] = []
        reached = False
        cause: BaseException | None = None
        for index in self._order():
            endpoint = self._endpoints[index]
            try:
                async with session.post(
                    endpoint + path,
                    data=payload,
                    headers=headers,
                    timeout=self._timeout,
                    ssl=self._ssl_option(),
                ) as response:
                    raw = await self._read_body(response, endpoint, path)
                    status = response.status
            except _NOT_SENT as exc:
                cause, failure = exc, _describe(exc, endpoint)
            except (aiohttp.ClientError, TimeoutError) as exc:
                cause, failure, reached = exc, _describe(exc, endpoint), True
                if not idempotent:
                    # It may have been applied: never resend it elsewhere.
                    failures.append((endpoint, failure))
                    _log_failure(endpoint, path, failure)
                    break
            else:
                if status >= 500 and idempotent and self._unavailable_reply(raw):
                    reached = True
                    failure = f"HTTP {status}: {_snippet(raw)}"
                else:
                    self._preferred = index
                    return status, raw, endpoint
            failures.append((endpoint, failure))
            _log_failure(endpoint, path, failure)
        tried = "; ".join(f"{endpoint}: {reason}" for endpoint, reason in failures)
        error = EtcdUnavailable(
            f"no etcd endpoint could serve {path} ({tried})",
            failures=failures,
            may_have_reached_server=reached,
        )
        raise error from cause

    async def _read_body(self, response: aiohttp.ClientResponse, endpoint: str, path: str) -> bytes:
        limit = self._max_message
        declared = response.content_length
        if declared is not None and declared > limit:
            raise EtcdProtocolError(
                f"reply from etcd at {endpoint} to {path} is {declared} bytes, over {limit}",
                endpoint=endpoint,
            )
        data = bytearray()
        async for chunk in response.content.iter_chunked(_READ_CHUNK):
            data += chunk
            if len(data) > limit:
                raise EtcdProtocolError(
                    f"reply from etcd at {endpoint} to {path} exceeds {limit} bytes",
                    endpoint=endpoint,
                )
        return bytes(data)

    @staticmethod
    def _unavailable_reply(raw: bytes) -> bool:
        try:
            error = _ERROR.decode(raw)
        except msgspec.DecodeError:
            return False
        return error.code == _GRPC_UNAVAILABLE

    @staticmethod
    def _decode(decoder: msgspec.json.Decoder[R], raw: bytes, path: str, endpoint: str) -> R:
        """Decode a whole reply and check that it is etcd's (its header), or raise."""
        try:
            reply = decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise EtcdProtocolError(
                f"invalid reply from {endpoint} to {path}: {exc} (is it an etcd v3 JSON gateway?)",
                endpoint=endpoint,
            ) from exc
        header = reply.header
        if header is not None and not header.from_etcd():
            raise EtcdProtocolError(
                f"invalid reply from {endpoint} to {path}: no etcd header (cluster ID and"
                f" member ID): {_snippet(raw)!r} (is it an etcd v3 JSON gateway?)",
                endpoint=endpoint,
            )
        return reply

    def _reply_error(self, status: int, raw: bytes, endpoint: str, path: str) -> EtcdError:
        try:
            error = _ERROR.decode(raw)
        except msgspec.DecodeError:
            return EtcdProtocolError(
                f"etcd at {endpoint} answered {path} with HTTP {status}: {_snippet(raw)!r}"
                " (is it an etcd v3 JSON gateway?)",
                endpoint=endpoint,
            )
        return _classify(error.code, error.message or error.error, endpoint=endpoint, path=path)

    @staticmethod
    def _stream_error(error: _StreamError, endpoint: str, path: str) -> EtcdError:
        return _classify(error.grpc_code, error.message, endpoint=endpoint, path=path)

    # -- authentication ------------------------------------------------------------

    async def _auth_token(self) -> str | None:
        """Return the token to send (``None``: no credentials, or auth disabled in etcd)."""
        if self._username is None:
            return None
        while self._token is None:
            task = self._auth_task
            if task is None:
                # One authentication at a time, shared by every request waiting
                # for it; shield() keeps it going if one waiter is cancelled.
                task = asyncio.create_task(self._authenticate())
                task.add_done_callback(self._auth_done)
                self._auth_task = task
            await asyncio.shield(task)
        return self._token or None

    def _auth_done(self, task: asyncio.Task[None]) -> None:
        if self._auth_task is task:
            self._auth_task = None
        if not task.cancelled():
            task.exception()  # retrieved here; every waiter got it through shield()

    def _forget_token(self, token: str) -> None:
        if self._token == token:
            self._token = None

    async def _authenticate(self) -> None:
        path = "/v3/auth/authenticate"
        payload = _ENCODER.encode({"name": self._username, "password": self._password})
        status, raw, endpoint = await self._post(path, payload, None, idempotent=True)
        if status != 200:
            error = self._reply_error(status, raw, endpoint, path)
            if isinstance(error, EtcdRequestError):
                if _REASON_AUTH_NOT_ENABLED in error.reason:
                    self._token = ""
                    return
                raise EtcdAuthError(
                    f"etcd at {endpoint} refused authentication as user {self._username!r}: "
                    f"{error.reason}",
                    code=error.code,
                    reason=error.reason,
                    endpoint=endpoint,
                )
            raise error
        reply = self._decode(_AUTH, raw, path, endpoint)
        if not reply.token:
            raise EtcdProtocolError(f"invalid reply from etcd at {endpoint} to {path}: no token")
        logger.debug("healkit.etcd_authenticated", endpoint=endpoint, user=self._username)
        self._token = reply.token

    # -- watch transport -----------------------------------------------------------

    async def _open_stream(
        self, path: str, payload: bytes, token: str | None, *, idle_timeout: float | None
    ) -> tuple[aiohttp.ClientResponse, str]:
        """Open a streaming POST on the first endpoint that accepts a connection."""
        session = self._ensure_session()
        # etcd's "require leader": a member that has no leader (cut off from its
        # cluster, or the cluster lost quorum) refuses the watch, or cancels it
        # when it loses its leader, instead of confirming a watch it cannot feed.
        headers = {_REQUIRE_LEADER: "true"}
        if token:
            headers["Authorization"] = token
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._connect_timeout, sock_read=idle_timeout
        )
        failures: list[tuple[str, str]] = []
        cause: BaseException | None = None
        reached = False
        for index in self._order():
            endpoint = self._endpoints[index]
            try:
                # A member that accepts the connection but never answers (a dead
                # route, a hung process) counts as one that cannot be reached:
                # the next endpoint is tried, instead of this one again forever.
                async with asyncio.timeout(self._connect_timeout):
                    response = await session.post(
                        endpoint + path,
                        data=payload,
                        headers=headers,
                        timeout=timeout,
                        ssl=self._ssl_option(),
                    )
            except _NOT_SENT as exc:
                failure, cause = _describe(exc, endpoint), exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Creating a watch changes nothing: safe to try the next endpoint.
                failure, cause, reached = _describe(exc, endpoint), exc, True
            else:
                if response.status != HTTPStatus.SERVICE_UNAVAILABLE:
                    self._preferred = index
                    return response, endpoint
                # This member has no leader: another one may have.
                try:
                    raw = await self._read_body(response, endpoint, path)
                finally:
                    response.release()
                failure, reached = f"HTTP 503: {_snippet(raw)}", True
            failures.append((endpoint, failure))
            _log_failure(endpoint, path, failure)
        tried = "; ".join(f"{endpoint}: {reason}" for endpoint, reason in failures)
        raise EtcdUnavailable(
            f"no etcd endpoint could serve {path} ({tried})",
            failures=failures,
            may_have_reached_server=reached,
        ) from cause


def _log_failure(endpoint: str, path: str, reason: str) -> None:
    logger.warning("healkit.etcd_endpoint_failed", endpoint=endpoint, path=path, reason=reason)


# -- watch ------------------------------------------------------------------------


@final
class EtcdWatch:
    """One watch stream: ``async with client.watch(...) as watch: async for r in watch``.

    Entering creates the watch on the first endpoint that accepts it and waits
    for etcd's confirmation (:attr:`created_revision`). Iterating yields every
    further :class:`WatchResponse` whole: events, and progress notifications
    when asked for. Iteration ends only when the watch is closed; everything
    else is an error, after which the watch is closed:

    * :class:`~healkit.EtcdCompacted` with ``compact_revision`` when the start
      revision is older than etcd's history;
    * :class:`~healkit.EtcdUnavailable` when the stream breaks or ends (etcd
      stopped, connection lost, ``idle_timeout`` passed): resume with a new
      watch from the last revision applied, plus one;
    * :class:`~healkit.EtcdAuthError` when etcd refuses the watch;
    * :class:`~healkit.EtcdRequestError` when etcd cancels it for another reason.

    Entering raises the same errors when etcd refuses the watch at once (and
    EtcdUnavailable when no endpoint accepts it).

    Closing (leaving the block, or :meth:`aclose`) drops the connection, which
    cancels the watch in etcd; an iteration waiting in another task then ends.
    An iteration that is cancelled closes the watch too, since part of a
    message may have been read.
    """

    __slots__ = ("_body", "_client", "_closed", "_created", "_endpoint", "_idle", "_response")

    def __init__(
        self, client: EtcdClient, body: Mapping[str, object], *, idle_timeout: float | None
    ) -> None:
        self._client = client
        self._body = body
        self._idle = idle_timeout
        self._response: aiohttp.ClientResponse | None = None
        self._endpoint = ""
        self._created: WatchResponse | None = None
        self._closed = False

    def __repr__(self) -> str:
        """Show the endpoint and the state of the watch."""
        state = "closed" if self._closed else "open" if self._response else "not started"
        return f"<EtcdWatch {self._endpoint or '-'} {state}>"

    @property
    def endpoint(self) -> str:
        """The endpoint the watch runs on (empty before it was created)."""
        return self._endpoint

    @property
    def created_revision(self) -> int:
        """The store's revision when etcd confirmed the watch."""
        if self._created is None:
            raise RuntimeError("the watch was not created yet; use `async with`")
        return self._created.revision

    @property
    def watch_id(self) -> int:
        """The ID etcd gave the watch."""
        if self._created is None:
            raise RuntimeError("the watch was not created yet; use `async with`")
        return self._created.watch_id

    async def __aenter__(self) -> Self:
        """Create the watch; return once etcd confirmed it."""
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the watch."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close the stream (etcd cancels the watch when the connection drops)."""
        self._close()

    def _close(self) -> None:
        self._closed = True
        response, self._response = self._response, None
        if response is not None:
            response.close()

    def __aiter__(self) -> Self:
        """Return the watch itself."""
        return self

    async def __anext__(self) -> WatchResponse:
        """Return the next response of the stream (see the class docs for errors)."""
        if self._closed:
            raise StopAsyncIteration
        if self._response is None:
            await self._open()
        try:
            reply = await self._next_reply()
        except EtcdError:
            if self._closed:
                # aclose() from another task while this one waited: a normal end.
                raise StopAsyncIteration from None
            self._close()
            raise
        except BaseException:
            self._close()
            raise
        if reply.canceled:
            self._close()
            raise self._canceled(reply)
        return reply.response()

    async def _open(self) -> None:
        if self._closed:
            raise RuntimeError("the watch is closed")
        if self._response is not None:
            return
        client = self._client
        payload = _ENCODER.encode(self._body)
        renewed = False
        while True:
            token = await client._auth_token()  # noqa: SLF001 - the client's own helper
            response, endpoint = await client._open_stream(  # noqa: SLF001 - the client's own helper
                "/v3/watch", payload, token, idle_timeout=self._idle
            )
            self._response, self._endpoint = response, endpoint
            try:
                reply = await self._first_reply()
            except BaseException:
                self._close()
                raise
            if reply.canceled:
                error = self._canceled(reply)
                if token and not renewed and isinstance(error, EtcdAuthError):
                    # A stale token shows as "permission denied" on a watch.
                    self._close_response()
                    client._forget_token(token)  # noqa: SLF001 - the client's own helper
                    renewed = True
                    continue
                self._close()
                raise error
            if not reply.created:
                self._close()
                raise EtcdProtocolError(
                    f"etcd at {endpoint} did not confirm the watch: {reply!r}", endpoint=endpoint
                )
            self._created = reply.response()
            return

    async def _first_reply(self) -> _WatchReply:
        response, endpoint, client = self._response, self._endpoint, self._client
        if response is not None and response.status != 200:
            raw = await client._read_body(response, endpoint, "/v3/watch")  # noqa: SLF001
            raise client._reply_error(response.status, raw, endpoint, "/v3/watch")  # noqa: SLF001
        return await self._next_reply()

    def _close_response(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            response.close()

    async def _next_reply(self) -> _WatchReply:
        response = self._response
        if response is None:
            raise RuntimeError("the watch is not open")
        endpoint = self._endpoint
        limit = self._client._max_message  # noqa: SLF001 - the client's own setting
        while True:
            try:
                line = await response.content.readline(max_line_length=limit)
            except LineTooLong as exc:
                raise EtcdProtocolError(
                    f"watch message from etcd at {endpoint} exceeds {limit} bytes",
                    endpoint=endpoint,
                ) from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise EtcdUnavailable(
                    f"watch stream from etcd at {endpoint} broke: {_describe(exc, endpoint)}",
                    failures=[(endpoint, _describe(exc, endpoint))],
                    endpoint=endpoint,
                ) from exc
            if not line:
                raise EtcdUnavailable(
                    f"watch stream from etcd at {endpoint} ended",
                    failures=[(endpoint, "stream ended")],
                    endpoint=endpoint,
                )
            if line.strip():
                break
        message = self._client._decode(_WATCH, line, "/v3/watch", endpoint)  # noqa: SLF001
        if message.error is not None:
            raise self._client._stream_error(message.error, endpoint, "/v3/watch")  # noqa: SLF001
        if message.result is None:
            raise EtcdProtocolError(
                f"invalid watch message from etcd at {endpoint}: no result", endpoint=endpoint
            )
        return message.result

    def _canceled(self, reply: _WatchReply) -> EtcdError:
        endpoint = self._endpoint
        if reply.compact_revision:
            return EtcdCompacted(
                f"etcd at {endpoint} canceled the watch: history compacted at revision "
                f"{reply.compact_revision}",
                compact_revision=reply.compact_revision,
                reason=reply.cancel_reason,
                endpoint=endpoint,
            )
        reason = reply.cancel_reason or "no reason given"
        # etcd words the reason as a gRPC error: "rpc error: code = X desc = Y".
        match = _RPC_ERROR.fullmatch(reason)
        code = None if match is None else _GRPC_CODES.get(match["code"])
        if match is None or code is None:
            message = f"etcd at {endpoint} canceled the watch: {reason}"
            return EtcdRequestError(message, code=None, reason=reason, endpoint=endpoint)
        return _classify(code, match["desc"], endpoint=endpoint, path="/v3/watch")


# -- leases kept alive --------------------------------------------------------------


@final
class LeaseKeeper:
    """A lease granted on entry, refreshed every TTL/3 in the background, revoked on exit.

    ::

        async with etcd.lease(10) as lease:
            await etcd.put("/healkit/prod/health/me", b"up", lease=lease.id)
            ...  # the key lives while the block runs

    When refreshing fails (etcd unreachable) the keeper retries sooner; when
    etcd says the lease is gone, or no refresh succeeded for a whole TTL,
    :attr:`expired` becomes true and :meth:`wait_expired` returns. Re-granting
    and re-writing the keys is the owner's decision. Leaving the block revokes
    the lease unless it expired; a failed revoke is logged, not raised (the
    lease then ends with its TTL).
    """

    __slots__ = ("_client", "_expired", "_last_ok", "_lease", "_refreshes", "_task", "_ttl")

    def __init__(self, client: EtcdClient, ttl: int) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be > 0 seconds")
        self._client = client
        self._ttl = ttl
        self._lease: Lease | None = None
        self._task: asyncio.Task[None] | None = None
        self._expired = asyncio.Event()
        self._refreshes = 0
        self._last_ok = 0.0

    def __repr__(self) -> str:
        """Show the lease ID and whether it is alive."""
        if self._lease is None:
            return "<LeaseKeeper not granted>"
        state = "expired" if self.expired else "alive"
        return f"<LeaseKeeper id={self._lease.id} ttl={self._lease.ttl} {state}>"

    @property
    def id(self) -> int:
        """The lease ID."""
        return self._granted().id

    @property
    def ttl(self) -> int:
        """The TTL etcd granted, in seconds."""
        return self._granted().ttl

    @property
    def expired(self) -> bool:
        """The lease is gone (etcd said so, or no refresh succeeded for a TTL)."""
        return self._expired.is_set()

    @property
    def refreshes(self) -> int:
        """How many refreshes succeeded so far."""
        return self._refreshes

    async def wait_expired(self) -> None:
        """Return once the lease expired (it does not time out by itself)."""
        await self._expired.wait()

    def _granted(self) -> Lease:
        if self._lease is None:
            raise RuntimeError("the lease is granted on entering `async with`")
        return self._lease

    async def __aenter__(self) -> Self:
        """Grant the lease and start refreshing it."""
        if self._lease is not None:
            raise RuntimeError("a LeaseKeeper can be entered only once")
        self._lease = await self._client.lease_grant(self._ttl)
        self._last_ok = time.monotonic()
        self._task = asyncio.create_task(self._keep(self._lease))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop refreshing and revoke the lease (unless it expired)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lease = self._lease
        if lease is None or self.expired:
            return
        try:
            await self._client.lease_revoke(lease.id)
        except EtcdError as error:
            logger.warning(
                "healkit.etcd_lease_revoke_failed",
                lease=lease.id,
                error=type(error).__name__,
                reason=error.message,
            )

    async def _keep(self, lease: Lease) -> None:
        interval = max(lease.ttl / 3, 0.05)
        delay = interval
        while True:
            await asyncio.sleep(delay)
            try:
                remaining = await self._client.lease_keepalive(lease.id)
            except EtcdError as error:
                logger.warning(
                    "healkit.etcd_keepalive_failed",
                    lease=lease.id,
                    error=type(error).__name__,
                    reason=error.message,
                )
                if time.monotonic() - self._last_ok >= lease.ttl:
                    self._expire(lease, "no refresh succeeded for a whole TTL")
                    return
                delay = interval / 3
                continue
            if remaining <= 0:
                self._expire(lease, "etcd no longer knows the lease")
                return
            self._last_ok = time.monotonic()
            self._refreshes += 1
            delay = interval

    def _expire(self, lease: Lease, reason: str) -> None:
        logger.warning("healkit.etcd_lease_expired", lease=lease.id, reason=reason)
        self._expired.set()
