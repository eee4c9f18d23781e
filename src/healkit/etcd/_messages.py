"""What healkit and etcd's JSON gateway say to each other.

The public models (:class:`KeyValue`, :class:`RangeResult`, :class:`Compare`,
:class:`PutOp`...) are what :class:`~healkit.etcd.EtcdClient` takes and
returns. The rest is the package's own: the request bodies, and the shape of
every reply the gateway sends, decoded strictly into typed structs. Field
names are the protobuf names (the gateway marshals with ``OrigName``), zero
values are left out, int64 values arrive as JSON strings (decoded with
``strict=False``), keys and values as base64.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Final, Literal, Protocol, Self, TypeVar, final

import msgspec

__all__ = [
    "Compare",
    "DeleteOp",
    "DeleteResult",
    "EtcdStatus",
    "KeyValue",
    "Lease",
    "PutOp",
    "PutResult",
    "RangeOp",
    "RangeResult",
    "TxnResult",
    "WatchEvent",
    "WatchResponse",
    "prefix_range_end",
]

T = TypeVar("T")

Key = bytes | str
"""A key or value: bytes, or a str that is encoded as UTF-8."""

_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_Revision = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


def to_bytes(value: Key, what: str) -> bytes:
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
    raw = bytearray(to_bytes(prefix, "prefix"))
    for index in reversed(range(len(raw))):
        if raw[index] < 0xFF:
            raw[index] += 1
            return bytes(raw[: index + 1])
    return b"\x00"


def key_range(key: Key, *, prefix: bool, range_end: Key | None) -> tuple[bytes, bytes | None]:
    raw = to_bytes(key, "key")
    if prefix and range_end is not None:
        raise ValueError("give prefix=True or range_end, not both")
    if prefix:
        return (raw or b"\x00"), prefix_range_end(raw)
    if not raw:
        raise ValueError("the key must not be empty (use prefix=True for every key)")
    return raw, None if range_end is None else to_bytes(range_end, "range_end")


# -- data types -------------------------------------------------------------------


@final
class KeyValue(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A key and its value as etcd stores them.

    ``gc=False``, as :class:`WatchEvent`: bytes and integers, which cannot make
    a cycle; a revision of 10,000 keys is not 10,000 objects more for the
    garbage collector to promote and walk.
    """

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
class WatchEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
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
    cluster_id: int = 0
    """ID of the etcd cluster that sent it (from the header; 0 if etcd gave none)."""


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
            key=to_bytes(key, "key"), target="mod_revision", operator=operator, operand=revision
        )

    @classmethod
    def create_revision(cls, key: Key, operator: CompareOperator, revision: int) -> Self:
        """Compare the key's creation revision (0 if it does not exist)."""
        return cls(
            key=to_bytes(key, "key"), target="create_revision", operator=operator, operand=revision
        )

    @classmethod
    def version(cls, key: Key, operator: CompareOperator, version: int) -> Self:
        """Compare the key's version (0 if it does not exist)."""
        return cls(key=to_bytes(key, "key"), target="version", operator=operator, operand=version)

    @classmethod
    def value(cls, key: Key, operator: CompareOperator, value: Key) -> Self:
        """Compare the key's value (a missing key makes the comparison fail)."""
        return cls(
            key=to_bytes(key, "key"),
            target="value",
            operator=operator,
            operand=to_bytes(value, "value"),
        )

    @classmethod
    def lease(cls, key: Key, operator: CompareOperator, lease: int) -> Self:
        """Compare the ID of the lease attached to the key (0: none)."""
        return cls(key=to_bytes(key, "key"), target="lease", operator=operator, operand=lease)


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
        key, end = key_range(prefix, prefix=True, range_end=None)
        return cls(key=key, range_end=end, prev_kv=prev_kv)


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
        key, end = key_range(prefix, prefix=True, range_end=None)
        return cls(key=key, range_end=end, limit=limit, keys_only=keys_only)


def put_body(key: bytes, value: bytes, lease: int, *, prev_kv: bool) -> dict[str, object]:
    body: dict[str, object] = {"key": key, "value": value}
    if lease:
        body["lease"] = lease
    if prev_kv:
        body["prev_kv"] = True
    return body


def range_body(key: bytes, range_end: bytes | None, *, prev_kv: bool = False) -> dict[str, object]:
    body: dict[str, object] = {"key": key}
    if range_end is not None:
        body["range_end"] = range_end
    if prev_kv:
        body["prev_kv"] = True
    return body


# -- request bodies ---------------------------------------------------------------


def txn_body(
    compare: Iterable[Compare],
    success: Iterable[PutOp | DeleteOp | RangeOp],
    failure: Iterable[PutOp | DeleteOp | RangeOp],
) -> dict[str, object]:
    """Return the body of ``/v3/kv/txn`` for these comparisons and operations."""
    return {
        "compare": [_compare_body(item) for item in compare],
        "success": [_op_body(item) for item in success],
        "failure": [_op_body(item) for item in failure],
    }


def _compare_body(compare: Compare) -> dict[str, object]:
    body: dict[str, object] = {
        "key": compare.key,
        "target": _TARGETS[compare.target],
        "result": _OPERATORS[compare.operator],
        compare.target: compare.operand,
    }
    if compare.range_end is not None:
        body["range_end"] = compare.range_end
    return body


def _op_body(op: PutOp | DeleteOp | RangeOp) -> dict[str, object]:
    if isinstance(op, PutOp):
        return {"request_put": put_body(op.key, op.value, op.lease, prev_kv=op.prev_kv)}
    if isinstance(op, DeleteOp):
        return {"request_delete_range": range_body(op.key, op.range_end, prev_kv=op.prev_kv)}
    body = range_body(op.key, op.range_end)
    if op.limit:
        body["limit"] = op.limit
    if op.keys_only:
        body["keys_only"] = True
    return {"request_range": body}


# -- what the gateway sends -------------------------------------------------------


class Header(msgspec.Struct, frozen=True):
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


_NO_HEADER: Final = Header()


class Reply(Protocol):
    """A whole reply of the gateway: it carries etcd's header (``None``: an error message)."""

    @property
    def header(self) -> Header | None: ...


R = TypeVar("R", bound=Reply)


class RangeReply(msgspec.Struct, frozen=True):
    header: Header = _NO_HEADER
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


class PutReply(msgspec.Struct, frozen=True):
    header: Header = _NO_HEADER
    prev_kv: KeyValue | None = None

    def result(self) -> PutResult:
        return PutResult(revision=self.header.revision, prev_kv=self.prev_kv)


class DeleteReply(msgspec.Struct, frozen=True):
    header: Header = _NO_HEADER
    deleted: _Revision = 0
    prev_kvs: tuple[KeyValue, ...] = ()

    def result(self) -> DeleteResult:
        return DeleteResult(
            revision=self.header.revision, deleted=self.deleted, prev_kvs=self.prev_kvs
        )


class _ResponseOp(msgspec.Struct, frozen=True):
    response_range: RangeReply | None = None
    response_put: PutReply | None = None
    response_delete_range: DeleteReply | None = None

    def result(self) -> RangeResult | PutResult | DeleteResult:
        if self.response_range is not None:
            return self.response_range.result()
        if self.response_put is not None:
            return self.response_put.result()
        if self.response_delete_range is not None:
            return self.response_delete_range.result()
        raise ValueError("a transaction response holds no range, put or delete result")


class TxnReply(msgspec.Struct, frozen=True):
    header: Header = _NO_HEADER
    succeeded: bool = False
    responses: tuple[_ResponseOp, ...] = ()


class EmptyReply(msgspec.Struct, frozen=True):
    header: Header = _NO_HEADER


class LeaseReply(msgspec.Struct, frozen=True):
    header: Header = _NO_HEADER
    lease_id: _Int64 = msgspec.field(default=0, name="ID")
    ttl: _Int64 = msgspec.field(default=0, name="TTL")
    error: str = ""


class StreamError(msgspec.Struct, frozen=True):
    grpc_code: int = 2
    http_code: int = 0
    message: str = ""


class KeepAliveMessage(msgspec.Struct, frozen=True):
    result: LeaseReply | None = None
    error: StreamError | None = None

    @property
    def header(self) -> Header | None:
        return None if self.result is None else self.result.header


class StatusReply(msgspec.Struct, frozen=True):
    header: Header = _NO_HEADER
    version: str = ""
    db_size: int = msgspec.field(default=0, name="dbSize")
    leader: int = 0


class AuthReply(msgspec.Struct, frozen=True):
    header: Header = _NO_HEADER
    token: str = ""


class GatewayError(msgspec.Struct, frozen=True):
    error: str = ""
    code: int = 2
    message: str = ""


class WatchReply(msgspec.Struct, frozen=True):
    header: Header = _NO_HEADER
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
            cluster_id=self.header.cluster_id,
        )


class WatchMessage(msgspec.Struct, frozen=True):
    result: WatchReply | None = None
    error: StreamError | None = None

    @property
    def header(self) -> Header | None:
        return None if self.result is None else self.result.header


def _decoder(kind: type[T]) -> msgspec.json.Decoder[T]:
    return msgspec.json.Decoder(kind, strict=False)


RANGE_REPLY: Final = _decoder(RangeReply)
PUT_REPLY: Final = _decoder(PutReply)
DELETE_REPLY: Final = _decoder(DeleteReply)
TXN_REPLY: Final = _decoder(TxnReply)
EMPTY_REPLY: Final = _decoder(EmptyReply)
LEASE_REPLY: Final = _decoder(LeaseReply)
KEEPALIVE_MESSAGE: Final = _decoder(KeepAliveMessage)
STATUS_REPLY: Final = _decoder(StatusReply)
AUTH_REPLY: Final = _decoder(AuthReply)
ERROR_REPLY: Final = _decoder(GatewayError)
WATCH_MESSAGE: Final = _decoder(WatchMessage)
ENCODER: Final = msgspec.json.Encoder()
