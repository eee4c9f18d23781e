"""Test helpers for healkit and for code built on it.

* :class:`FaultServer`: a real aiohttp server on loopback whose paths follow a
  script of faults (latency, status bursts, resets, hangs, truncated and slow
  bodies) and which records every request it handles; :class:`FaultMix`
  cycles or draws (seeded) several faults, and a capacity sheds load.
* :class:`ManualClock`: virtual time; backoff sleeps are instant and exact.
* :func:`refused_url`, :func:`unused_tcp_port`: addresses where nothing listens.
* :class:`ListenError`: the ``OSError`` a server of this kit raises when it
  cannot listen (out of file descriptors...).
* :class:`EtcdServer`: a real etcd on free loopback ports in a temporary
  directory, which can stop, restart, compact and run with TLS or auth
  (:func:`find_etcd_binary` says which etcd binary it runs).
* :class:`EtcdCluster`: a real etcd cluster of three (or more) members on
  loopback, whose members (:class:`EtcdMember`) a test can stop, kill and
  start: lose the leader, lose quorum, bring a member back behind the others.
* :class:`TcpProxy`: a loopback TCP proxy whose connections a test can cut.
* :class:`LoopbackResolver`: every ``*.test`` host name on loopback, so one
  server answers for thousands of distinct hosts.
* :func:`set_testing`, :func:`is_testing`: healkit's process-wide test mode for
  an application's own tests: retries without backoff sleeps, optionally at
  most N attempts.
* :func:`capture_events`: the healkit log events a block logs, as dicts.

With healkit installed, pytest loads the fixtures of
:mod:`healkit.testing._pytest_plugin` (``fault_server``, ``manual_clock``,
``etcd_server``, ``etcd_cluster``, ``healkit_testing``) by itself, through the
``pytest11`` entry point.
"""

from __future__ import annotations

from healkit._testmode import is_testing, set_testing
from healkit.testing._clock import ManualClock
from healkit.testing._cluster import EtcdCluster, EtcdMember
from healkit.testing._etcd import EtcdServer, find_etcd_binary
from healkit.testing._faults import Fault, FaultKind, FaultMix, FaultServer, RecordedRequest
from healkit.testing._logs import capture_events
from healkit.testing._ports import ListenError, refused_url, unused_tcp_port
from healkit.testing._proxy import TcpProxy
from healkit.testing._resolver import LoopbackResolver

__all__ = [
    "EtcdCluster",
    "EtcdMember",
    "EtcdServer",
    "Fault",
    "FaultKind",
    "FaultMix",
    "FaultServer",
    "ListenError",
    "LoopbackResolver",
    "ManualClock",
    "RecordedRequest",
    "TcpProxy",
    "capture_events",
    "find_etcd_binary",
    "is_testing",
    "refused_url",
    "set_testing",
    "unused_tcp_port",
]
