"""healkit's etcd: the client of etcd's v3 JSON gateway, and the configuration source.

:class:`EtcdSource` is what most applications need: pass it as
``healkit.Runtime(config=EtcdSource(EtcdClient(...), namespace=...))`` and every
instance applies the namespace's documents as they change (see
``docs/etcd.md``). :class:`EtcdClient` is the narrow client it is built on,
public for the CLI and for plugins that keep state in etcd (leases, watches).
The errors (:class:`~healkit.EtcdError` and its subclasses) are in ``healkit``
with the rest of the error tree.
"""

from healkit.etcd._client import EtcdClient
from healkit.etcd._lease import LeaseKeeper
from healkit.etcd._messages import (
    Compare,
    DeleteOp,
    DeleteResult,
    EtcdStatus,
    KeyValue,
    Lease,
    PutOp,
    PutResult,
    RangeOp,
    RangeResult,
    TxnResult,
    WatchEvent,
    WatchResponse,
    prefix_range_end,
)
from healkit.etcd._source import DEFAULT_PREFIX, EtcdSource, EtcdSourceStatus, etcd_prefix
from healkit.etcd._watch import EtcdWatch

__all__ = [
    "DEFAULT_PREFIX",
    "Compare",
    "DeleteOp",
    "DeleteResult",
    "EtcdClient",
    "EtcdSource",
    "EtcdSourceStatus",
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
    "etcd_prefix",
    "prefix_range_end",
]
